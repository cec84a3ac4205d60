// The listener: accepts client connections and gives each its session (client.ts), which gets its own
// upstream connection. Also stats and graceful shutdown: stop accepting, let sessions finish what they
// are running within the grace period, then end the rest with FATAL 57P01.
import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { CancelRegistry } from './cancel.js';
import { ClientSession, type SessionEnv, type Totals } from './client.js';
import type { Interceptor } from './interceptor.js';
import { adoptAccepted } from './read-buffer.js';
import { loadNativeRelay, type NativeRelay, type NativeRelayMode } from './relay.js';
import { parseUpstreamUrl } from './upstream.js';

export interface ProxyOptions {
  /** Where to listen; port 0 picks a free port (see ProxyServer.address). */
  listen: { host: string; port: number };
  /**
   * postgres:// URL of the database. Host, port (or a Unix socket directory as host), sslmode (disable,
   * allow, prefer, require, verify-ca, verify-full; default prefer), sslrootcert, sslcert, sslkey.
   * User, password and database come from each client.
   */
  upstream: string;
  /** PEM certificate and key: clients may then use TLS (SSLRequest answered 'S'); else 'N'. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Largest client message accepted; longer ones end the session with 54000. */
  maxMessageBytes: number;
  /** Default grace period of close(). */
  shutdownGraceMs: number;
  /** Upstream TCP connect + TLS handshake limit. */
  connectTimeoutMs: number;
  logger: Logger;
  interceptor?: Interceptor;
  /** The cancel keys' registry; a worker process passes one that routes other workers' keys (proxy/workers.ts). */
  cancels?: CancelRegistry;
  /**
   * auto (default): idle plaintext sessions are relayed by the native relay when it is built, in JS
   * otherwise; on: refuse to start without it; off: always JS.
   */
  nativeRelay?: NativeRelayMode;
}

export interface ProxyStats {
  /** Sessions open now (including those still authenticating). */
  clients: number;
  /** Bytes held in memory for all sessions now (writes not yet taken by the kernel, partial messages). */
  buffered: number;
  totals: Totals & { cancelsForwarded: number; cancelsIgnored: number };
}

export interface ProxyServer {
  address: { host: string; port: number };
  stats(): ProxyStats;
  /**
   * Stops accepting, lets running queries and open transactions finish for up to `graceMs` (default
   * shutdownGraceMs), then ends the remaining sessions with FATAL 57P01. Resolves when all are closed.
   */
  close(graceMs?: number): Promise<void>;
}

export async function startProxy(opts: ProxyOptions): Promise<ProxyServer> {
  const log = opts.logger;
  const target = parseUpstreamUrl(opts.upstream);
  const secureContext = opts.tls ? createSecureContext({ cert: opts.tls.cert, key: opts.tls.key }) : undefined;
  const sessions = new Set<ClientSession>();
  const cancels = opts.cancels ?? new CancelRegistry();
  const totals: Totals = {
    accepted: 0,
    closed: 0,
    bytesFromClients: 0,
    bytesFromUpstream: 0,
    protocolErrors: 0,
    upstreamFailures: 0,
    intercepted: 0,
    rewritten: 0,
    relayStarts: 0,
    relayExits: 0,
  };
  let nativeRelay: NativeRelay | null = null;
  const relayMode = opts.nativeRelay ?? 'auto';
  if (relayMode !== 'off') {
    const { relay, why } = loadNativeRelay();
    if (relay === null && relayMode === 'on') throw new Error(`native relay is required (nativeRelay on) but not available: ${why}`);
    if (relay === null) log.warn({ why }, 'native relay not available: relaying in JS, which costs more CPU per message');
    nativeRelay = relay;
  }
  let nextId = 1;
  let closing: Promise<void> | null = null;
  let allClosed: (() => void) | null = null;

  const env: SessionEnv = {
    target,
    secureContext,
    maxMessageBytes: opts.maxMessageBytes,
    connectTimeoutMs: opts.connectTimeoutMs,
    logger: log,
    interceptor: opts.interceptor,
    cancels,
    totals,
    nativeRelay,
    onClosed(session) {
      sessions.delete(session);
      if (sessions.size === 0) allClosed?.();
    },
  };

  const server: Server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (accepted: Socket) => {
    if (closing) {
      accepted.destroy();
      return;
    }
    totals.accepted++;
    const { sock: socket, input } = adoptAccepted(accepted, true);
    try {
      sessions.add(new ClientSession(nextId++, socket, env, input));
    } catch (err) {
      log.error({ err }, 'could not start a session');
      socket.destroy();
    }
  });
  server.on('error', (err) => log.error({ err }, 'listener error'));

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(opts.listen.port, opts.listen.host, () => {
      server.removeListener('error', onError);
      resolve();
    });
  });
  const bound = server.address();
  const address = {
    host: typeof bound === 'object' && bound ? bound.address : opts.listen.host,
    port: typeof bound === 'object' && bound ? bound.port : opts.listen.port,
  };
  log.info({ listen: `${address.host}:${address.port}`, upstream: target.display, sslmode: target.sslmode, tls: !!secureContext, relay: nativeRelay ? 'native' : 'js' }, 'proxy listening');

  async function shutdown(graceMs: number): Promise<void> {
    log.info({ sessions: sessions.size, graceMs }, 'proxy shutting down');
    const listenerClosed = new Promise<void>((resolve) => server.close(() => resolve()));
    const drained = new Promise<void>((resolve) => {
      allClosed = resolve;
      if (sessions.size === 0) resolve();
    });
    for (const s of [...sessions]) s.shutdown();
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'grace'>((resolve) => {
      timer = setTimeout(() => resolve('grace'), Math.max(0, graceMs));
    });
    if ((await Promise.race([drained, graceOver])) === 'grace') {
      log.warn({ sessions: sessions.size }, 'grace period over: terminating remaining sessions');
      for (const s of [...sessions]) s.terminate();
    }
    clearTimeout(timer);
    await drained;
    await listenerClosed;
    log.info('proxy stopped');
  }

  return {
    address,
    stats: () => {
      const t = { ...totals, cancelsForwarded: cancels.forwarded, cancelsIgnored: cancels.ignored };
      let buffered = 0;
      for (const s of sessions) {
        buffered += s.buffered;
        const r = s.relayBytes;
        t.bytesFromClients += r.fromClient;
        t.bytesFromUpstream += r.fromServer;
      }
      return { clients: sessions.size, buffered, totals: t };
    },
    close(graceMs = opts.shutdownGraceMs) {
      closing ??= shutdown(graceMs);
      return closing;
    },
  };
}
