// What a client session needs from the pooler to log in (pgBouncer's client.c login half): which
// authentication the client gets (auth_type, auth_hba_file, auth_file), the welcome parameters of its
// pool, and whether it asked for the admin console.
import type { Logger } from 'pino';
import { matchHba, parseSecret, type HbaRule, type PoolerConfig, type Secret } from '../config/pgbouncer.js';
import { ClientAuth } from './auth.js';
import { PoolError, Pooler, type Pool, type PoolClient, type PoolDatabase, type PooledServer } from './pool.js';
import { StatementCache } from './prepared.js';
import { SqlState } from './protocol.js';
import { parseUpstreamUrl, type UpstreamTarget } from './upstream.js';
import type { DatabaseEntry, PoolerSettings } from '../config/pgbouncer.js';
import type { Socket } from 'node:net';

/** A console session the client session hands its socket to. */
export interface ConsoleLink {
  /** After authentication: the console owns the conversation. `early`: client bytes already read; `closed`: it is over. */
  start(sock: Socket, early: Buffer, closed: () => void): void;
  /** Client bytes read after start (the session reads the socket: it may read through a ReadBuffer, which emits no 'data'). */
  data(chunk: Buffer): void;
  close: () => void;
}

export interface PoolingEnv {
  readonly pooler: Pooler;
  readonly statements: StatementCache;
  isConsole(database: string): boolean;
  /** How this client authenticates, or why it may not log in at all. */
  authenticator(user: string, database: string, address: string, tls: boolean): ClientAuth | PoolError | Promise<ClientAuth | PoolError>;
  /** The ParameterStatus set a client of the pool is welcomed with (a server login if none is known yet). */
  welcome(pool: Pool): Promise<Map<string, string>>;
  /** own: the client is the proxy's own OS user on a Unix socket, logging in as "pgbouncer" (admin, no password). */
  consoleFor(session: { id: number }, user: string, address: string, own: boolean): ConsoleLink | PoolError;
}

/**
 * Where a [databases] entry points, as pgBouncer reads it: host, a comma-separated list of hosts (a directory:
 * its Unix socket; default the fallback's host), port (default 5432, or the fallback's), server_tls_sslmode
 * and its files. One target per host, in the entry's order.
 */
export function targetsFor(entry: DatabaseEntry, fallback: UpstreamTarget, st: PoolerSettings): UpstreamTarget[] {
  const hosts = (entry.host ?? fallback.host).split(',').map((h) => h.trim()).filter(Boolean);
  const port = entry.port ?? fallback.port;
  return (hosts.length > 0 ? hosts : [fallback.host]).map((host) => {
    const q = new URLSearchParams({ host, port: String(port), sslmode: host.startsWith('/') ? 'disable' : st.serverTlsSslmode || 'prefer' });
    if (st.serverTlsCaFile) q.set('sslrootcert', st.serverTlsCaFile);
    if (st.serverTlsCertFile) q.set('sslcert', st.serverTlsCertFile);
    if (st.serverTlsKeyFile) q.set('sslkey', st.serverTlsKeyFile);
    return parseUpstreamUrl(`postgres://x/?${q.toString()}`);
  });
}

export interface PoolingOptions {
  config: PoolerConfig;
  defaultTarget: UpstreamTarget;
  logger: Logger;
  /** The admin console (console.ts), when present. */
  console?: (session: { id: number }, user: string, address: string, own: boolean) => ConsoleLink | PoolError;
  /** The rules of auth_hba_file, read by the caller (auth_type = hba). */
  hba?: HbaRule[];
}

/** pgBouncer's auth_query: the user's secret, read through a connection of auth_user (null: no such user). */
async function authQuery(pooler: Pooler, db: PoolDatabase, authUser: string, user: string): Promise<Secret | null> {
  const st = pooler.settings;
  const authDb = pooler.database(db.entry.authDbname ?? (st.authDbname || db.name)) ?? db;
  const pool = pooler.pool(authDb, authUser);
  const server = await new Promise<PooledServer>((resolve, reject) => {
    const got = pool.acquire({ id: 0, poolFailed: reject });
    if (got instanceof Promise) got.then(resolve, reject);
    else resolve(got);
  });
  const r = await server.runInternal(db.entry.authQuery ?? st.authQuery, [user]);
  pool.release(server, r.ok);
  if (!r.ok) {
    throw new PoolError({ severity: 'FATAL', code: SqlState.ProtocolViolation, message: `auth_query failed: ${r.error?.M ?? 'unknown error'}` });
  }
  const row = r.rows[0];
  const text = row?.[1]?.toString();
  return text ? parseSecret(text) : null;
}

export function createPooling(opts: PoolingOptions): PoolingEnv {
  const pooler: Pooler = new Pooler({
    config: opts.config,
    defaultTarget: opts.defaultTarget,
    logger: opts.logger,
    targetsFor: (entry, fallback) => targetsFor(entry, fallback, pooler.settings),
  });
  const statements = new StatementCache();
  return {
    pooler,
    statements,
    isConsole: (database) => database === 'pgbouncer',
    authenticator(user, database, address, tls) {
      const st = pooler.settings;
      let method: string = st.authType;
      if (method === 'hba') {
        const rule = matchHba(opts.hba ?? [], { local: address.startsWith('/') || address.startsWith('?'), ssl: tls, database, user, address: address.replace(/:\d+$/, '') });
        if (rule === null) return new PoolError({ severity: 'FATAL', code: SqlState.InvalidAuthorizationSpecification, message: `no pg_hba.conf entry for host "${address}", user "${user}", database "${database}"` });
        method = rule.method === 'password' ? 'plain' : rule.method;
      }
      if (method === 'reject') return new PoolError({ severity: 'FATAL', code: SqlState.InvalidAuthorizationSpecification, message: 'login rejected' });
      if (method !== 'trust' && method !== 'any' && method !== 'plain' && method !== 'md5' && method !== 'scram-sha-256') {
        return new PoolError({ severity: 'FATAL', code: SqlState.FeatureNotSupported, message: `auth_type ${method} is not supported by pg-steadytext`, hint: 'Use trust, plain, md5, scram-sha-256 or hba.' });
      }
      const m = method;
      const known = pooler.config.authFile.get(user);
      // The console is no database of the pool: nothing is looked up or registered for it.
      const db = database === 'pgbouncer' ? null : pooler.database(database);
      const authUser = db?.entry.authUser ?? st.authUser;
      if (known || m === 'any' || !authUser || !db) return new ClientAuth({ method: m, user, secret: known ?? null });
      return authQuery(pooler, db, authUser, user).then(
        (secret) => {
          if (secret) pooler.dynamicSecrets.set(user, secret); // server logins of this user's pool use it
          return new ClientAuth({ method: m, user, secret });
        },
        (err: unknown) => (err instanceof PoolError ? err : new PoolError({ severity: 'FATAL', code: SqlState.ConnectionFailure, message: `auth_query failed: ${String(err)}` })),
      );
    },
    welcome(pool) {
      if (pool.welcome) return Promise.resolve(pool.welcome);
      return new Promise((resolve, reject) => {
        const probe: PoolClient = { id: 0, poolFailed: (err) => reject(err) };
        const got = pool.acquire(probe);
        const done = (s: Awaited<typeof got>) => {
          pool.release(s, true);
          resolve(pool.welcome ?? new Map(s.params));
        };
        if (got instanceof Promise) got.then(done, reject);
        else done(got);
      });
    },
    consoleFor(session, user, address, own) {
      if (!opts.console) return new PoolError({ severity: 'FATAL', code: SqlState.ProtocolViolation, message: 'no such database: pgbouncer' });
      return opts.console(session, user, address, own);
    },
  };
}
