// pg-steadytext/proxy: the PostgreSQL wire proxy and its interception seam, with no steadytext in it.
//   import { startProxy } from 'pg-steadytext/proxy';
//   const proxy = await startProxy({ listen: { host: '127.0.0.1', port: 6432 }, upstream: 'postgres://localhost:5432/postgres', ... });
// An Interceptor (see proxy/interceptor.ts for the contract) sees every Query and Parse that names steadytext.
export { startProxy, type ProxyOptions, type ProxyServer, type ProxyStats } from './server.js';
export type { InterceptedMessage, Interceptor, Outbound, ResponseHandler, Rewrite, SessionContext } from './interceptor.js';
export type { TxStatus } from './protocol.js';
export type { NativeRelayMode } from './relay.js';
