// The daemon endpoint: the callback path. When a steadytext_* function runs where the proxy cannot see
// it (PL/pgSQL, triggers, views) and finds no cached answer, it connects here through dblink, as if this
// were a PostgreSQL server, and sends one JSON request as a simple query (session.ts). We answer with one
// text row, or an ErrorResponse whose SQLSTATE dblink re-raises in the caller (responder.ts). Only the SQL
// objects know the password (steadytext_daemon_secret), so nothing else can use the engine through this door.
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type pino from 'pino';
import { errorResponse } from '../../proxy/protocol.js';
import { WireError } from '../errors.js';
import { Responder, type DaemonEngine, type ServiceWriter } from './responder.js';
import { DaemonSession, type SessionHost } from './session.js';

export type { DaemonEngine, ServiceWriter };

export interface DaemonOptions {
  listen: { host: string; port: number };
  /** The password the SQL objects send; a function when a proxy serves several databases, each with its own. */
  secret: string | (() => Iterable<string>);
  engine: DaemonEngine;
  /**
   * The service writer (sql/databases.ts Database) of the database a request comes from: answers go into
   * its steadytext_cache, counters and logs into its stats and logs. Undefined (or none): nothing is written.
   */
  databaseFor?: (name: string) => ServiceWriter | undefined;
  logger: pino.Logger;
  /** Connections served at once (default 1000; each callback in progress holds one). */
  maxConnections?: number;
}

export interface DaemonStats {
  requests: number;
  errors: number;
  avgLatencyMs: number | null;
  connections: number;
  startedAt: Date;
}

export interface DaemonHandle {
  address: { host: string; port: number };
  /** Waits until the cache rows, counters and logs queued so far are written. */
  flush(): Promise<void>;
  stats(): DaemonStats;
  close(): Promise<void>;
}

export async function startDaemon(opts: DaemonOptions): Promise<DaemonHandle> {
  const log = opts.logger.child({ component: 'daemon' });
  const address = { host: opts.listen.host, port: opts.listen.port }; // the bound port once listening
  const responder = new Responder({ engine: opts.engine, log, address, databaseFor: opts.databaseFor });
  const host: SessionHost = {
    log, sessions: new Set(), keys: new Map(), secretMatches: secretMatcher(opts.secret),
    respond: (text, call) => responder.respond(text, call),
  };
  const maxConnections = opts.maxConnections ?? 1000;
  let closing = false;
  const server = createServer((socket) => {
    if (closing || host.sessions.size >= maxConnections) refuse(socket);
    else new DaemonSession(socket, host);
  });
  address.port = await listen(server, opts.listen);
  log.info({ host: address.host, port: address.port }, 'daemon endpoint listening');
  const startedAt = new Date();

  return {
    address,
    flush: () => responder.flush(),
    stats: () => ({ ...responder.stats(), connections: host.sessions.size, startedAt }),
    async close() {
      if (closing) return;
      closing = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of [...host.sessions]) s.close();
      });
      await responder.flush();
    },
  };
}

/** Compares SHA-256 digests in constant time, against every secret when there are several. */
export function secretMatcher(secret: string | (() => Iterable<string>)): (given: Buffer) => boolean {
  const digest = (x: string) => createHash('sha256').update(x, 'utf8').digest();
  if (typeof secret === 'string') {
    const fixed = digest(secret);
    return (given) => timingSafeEqual(given, fixed);
  }
  return (given) => {
    let ok = false;
    for (const s of secret()) ok = timingSafeEqual(given, digest(s)) || ok;
    return ok;
  };
}

function refuse(socket: Socket): void {
  socket.on('error', () => {});
  socket.end(errorResponse(new WireError('53300', 'sorry, too many connections to the pg-steadytext daemon', undefined, undefined, 'FATAL')));
}

async function listen(server: Server, at: { host: string; port: number }): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => { server.off('error', reject); resolve(); });
  });
  return (server.address() as AddressInfo).port;
}
