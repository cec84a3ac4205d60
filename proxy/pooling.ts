// What a client session needs from the pooler to log in (pgBouncer's client.c login half): which
// authentication the client gets (auth_type, auth_hba_file, auth_file), the welcome parameters of its
// pool, and whether it asked for the admin console.
import type { Logger } from 'pino';
import { matchHba, parseSecret, type HbaRule, type PoolerConfig, type Secret } from '../config/pgbouncer.js';
import { ClientAuth, type ClientAuthMethod } from './auth.js';
import { PoolError, Pooler, poolError, type Pool, type PoolClient, type PoolDatabase, type PooledServer } from './pool.js';
import { StatementCache } from './prepared.js';
import { SqlState } from './protocol.js';
import { parseUpstreamUrl, type UpstreamTarget } from './upstream.js';
import { tlsCiphers, tlsVersions } from './client-tls.js';
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

/** What the client's socket says of it, for the methods that rest on it (cert, peer) and hba's hostssl. */
export interface ClientIdentity {
  tls: boolean;
  /** The names of its verified TLS certificate (null: none). */
  certNames: string[] | null;
  /** The OS user id at the other end of a Unix socket (null: TCP, or unknown). */
  peerUid: number | null;
}

export interface PoolingEnv {
  readonly pooler: Pooler;
  readonly statements: StatementCache;
  isConsole(database: string): boolean;
  /** How this client authenticates, or why it may not log in at all. */
  authenticator(user: string, database: string, address: string, who: ClientIdentity): ClientAuth | PoolError | Promise<ClientAuth | PoolError>;
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
    const sslmode = host.startsWith('/') ? 'disable' : st.serverTlsSslmode || 'prefer';
    const q = new URLSearchParams({ host, port: String(port), sslmode });
    // As pgBouncer: only verify-ca and verify-full check the server's certificate (libpq's require would with a CA).
    if (st.serverTlsCaFile && sslmode.startsWith('verify-')) q.set('sslrootcert', st.serverTlsCaFile);
    if (st.serverTlsCertFile) q.set('sslcert', st.serverTlsCertFile);
    if (st.serverTlsKeyFile) q.set('sslkey', st.serverTlsKeyFile);
    const t = parseUpstreamUrl(`postgres://x/?${q.toString()}`);
    if (t.tls) Object.assign(t.tls, tlsVersions('server_tls_protocols', st.serverTlsProtocols), { ciphers: tlsCiphers('server_tls_ciphers', st.serverTlsCiphers) });
    return t;
  });
}

/** Where a CancelRequest for another peer's key goes ([peers]: host, a directory for its Unix socket, and port). */
export function peerTarget(peer: { host: string; port: number }): UpstreamTarget {
  const q = new URLSearchParams({ host: peer.host, port: String(peer.port), sslmode: 'disable' });
  return parseUpstreamUrl(`postgres://x/?${q.toString()}`);
}

export interface PoolingOptions {
  config: PoolerConfig;
  defaultTarget: UpstreamTarget;
  logger: Logger;
  /** The admin console (console.ts), when present. */
  console?: (session: { id: number }, user: string, address: string, own: boolean) => ConsoleLink | PoolError;
  /** The rules of auth_hba_file, read by the caller (auth_type = hba). */
  hba?: HbaRule[];
  /**
   * In a worker process (pool-limits.ts): the primary's answer on the client the pooler admitted just before,
   * which the authentication waits for (max_client_conn and the client limits count every worker's clients).
   */
  admission?: { ticket(database: string, user: string): Promise<PoolError | null> | null };
  /** Transaction pools hand server connections between clients in the native hub (Pooler.handoff); default on. */
  handoff?: boolean;
}

/** What auth_query says of a user: its secret, found without a usable one (NULL password), or no such user. */
type Lookup = { found: true; secret: Secret | null } | { found: false };

/**
 * pgBouncer makes no pool for a user it does not know (nor lists the user): the one made for this client's
 * login goes again while it is unused. A forced user's pool is the database's own and stays.
 */
function forgetPool(db: PoolDatabase | null, user: string): void {
  if (db === null || db.entry.user) return;
  const p = db.pools.get(user);
  if (p && p.size === 0 && p.clients.size <= 1 && p.waiters.length === 0) db.pools.delete(user);
}

/** pgBouncer's "bouncer config error": the client hears only that, the log says why. */
function configError(pooler: Pooler, why: string): PoolError {
  pooler.pgbLog.line('ERROR', why);
  return poolError('bouncer config error');
}

/**
 * pgBouncer's prepare_auth_database: where auth_query runs. The entry's auth_dbname, else the global one, else
 * the client's own database; `db` null is the admin console, which cannot run it itself.
 */
function authDatabase(pooler: Pooler, db: PoolDatabase | null): PoolDatabase | PoolError {
  const name = db?.entry.authDbname || pooler.settings.authDbname || null;
  if (name === null && db !== null) return db;
  if (name === null || name === 'pgbouncer') return configError(pooler, 'cannot use the reserved "pgbouncer" database as an auth_dbname');
  const authDb = pooler.database(name);
  if (authDb === null) return configError(pooler, `authentication database "${name}" is not configured.`);
  if (authDb.disabled) return poolError(`authentication database "${name}" is disabled`);
  return authDb;
}

/** pgBouncer's auth_query: the user's secret, read through a connection of auth_user in the auth database. */
async function authQuery(pooler: Pooler, authDb: PoolDatabase, query: string, authUser: string, user: string): Promise<Lookup> {
  const pool = pooler.pool(authDb, authUser);
  const server = await new Promise<PooledServer>((resolve, reject) => {
    const got = pool.acquire({ id: 0, poolFailed: reject }, resolve);
    if (got !== null) resolve(got);
  });
  const r = await server.runInternal(query, [user]);
  const row = r.rows[0];
  // As pgBouncer: the connection that answered wrongly is closed, and the client is told the config is wrong.
  const wrong = !r.ok ? `error in auth_query: ${r.error?.S ?? 'ERROR'}: ${r.error?.M ?? 'unknown error'}` : row && row.length !== 2 ? `expected 2 columns from auth_query, not ${row.length}` : row && row[0] === null ? 'auth_query response contained null user name' : null;
  pool.release(server, wrong === null);
  if (wrong !== null) throw configError(pooler, `S: ${wrong}`);
  if (!row) return { found: false };
  const text = row[1]?.toString();
  // A NULL password: the user exists, and no password will ever match (trust still lets it in).
  return { found: true, secret: text === undefined ? null : parseSecret(text) };
}

export function createPooling(opts: PoolingOptions): PoolingEnv {
  const pooler: Pooler = new Pooler({
    config: opts.config,
    defaultTarget: opts.defaultTarget,
    logger: opts.logger,
    targetsFor: (entry, fallback) => targetsFor(entry, fallback, pooler.settings),
  });
  pooler.handoff = opts.handoff ?? true;
  const statements = new StatementCache();
  const env: PoolingEnv = {
    pooler,
    statements,
    isConsole: (database) => database === 'pgbouncer',
    authenticator(user, database, address, { tls }) {
      const st = pooler.settings;
      // How the client authenticates: auth_type, or the hba rule (looked up after the user, as pgBouncer does).
      const methodFor = (): ClientAuthMethod | PoolError => {
        let method: string = st.authType;
        if (method === 'hba') {
          const rule = matchHba(opts.hba ?? [], { local: address.startsWith('/') || address.startsWith('?'), ssl: tls, database, user, address: address.replace(/:\d+$/, '') });
          if (rule === null) return new PoolError({ severity: 'FATAL', code: SqlState.InvalidAuthorizationSpecification, message: `no pg_hba.conf entry for host "${address}", user "${user}", database "${database}"` });
          method = rule.method === 'password' ? 'plain' : rule.method;
        }
        if (method === 'reject') return new PoolError({ severity: 'FATAL', code: SqlState.InvalidAuthorizationSpecification, message: 'login rejected' });
        // cert: the proxy's listener certifies the client's certificate on the ClientAuth (server.ts).
        if (method !== 'trust' && method !== 'any' && method !== 'plain' && method !== 'md5' && method !== 'scram-sha-256' && method !== 'cert' && method !== 'peer') {
          return new PoolError({ severity: 'FATAL', code: SqlState.FeatureNotSupported, message: `auth_type ${method} is not supported by pg-steadytext`, hint: 'Use trust, plain, md5, scram-sha-256 or hba.' });
        }
        return method;
      };
      const auth = (lookup: Lookup): ClientAuth | PoolError => {
        const m = methodFor();
        if (m instanceof PoolError) return m;
        return new ClientAuth({ method: m, user, secret: lookup.found ? lookup.secret : null, known: lookup.found });
      };
      const known = pooler.config.authFile.get(user);
      if (known) return auth({ found: true, secret: known });
      if (st.authType === 'any') return auth({ found: false });
      // The console ("pgbouncer") runs auth_query with the global auth_user; a database the pooler does not
      // have (pgBouncer's fake one: "no such database" comes after the authentication) runs none.
      const console = database === 'pgbouncer';
      const db = console ? null : pooler.database(database);
      const authUser = (console ? null : db?.entry.authUser) ?? st.authUser;
      if (!authUser || (!console && db === null)) {
        pooler.pgbLog.line('LOG', `no such user: ${user}`);
        forgetPool(db, user);
        return auth({ found: false });
      }
      const authDb = authDatabase(pooler, db);
      if (authDb instanceof PoolError) return authDb;
      return authQuery(pooler, authDb, db?.entry.authQuery ?? st.authQuery, authUser, user).then(
        (lookup) => {
          // As pgBouncer (handle_auth_query_response): a user auth_query does not find is refused at once.
          if (!lookup.found) {
            forgetPool(db, user);
            return poolError('no such user');
          }
          // Server logins of this user's pools use what was found.
          if (lookup.secret) pooler.dynamicSecrets.set(user, lookup.secret);
          else pooler.dynamicSecrets.delete(user);
          return auth(lookup);
        },
        (err: unknown) => (err instanceof PoolError ? err : new PoolError({ severity: 'FATAL', code: SqlState.ConnectionFailure, message: `auth_query failed: ${String(err)}` })),
      );
    },
    welcome(pool) {
      if (pool.welcome) return Promise.resolve(pool.welcome);
      return new Promise((resolve, reject) => {
        const probe: PoolClient = { id: 0, poolFailed: (err) => reject(err) };
        const done = (s: PooledServer) => {
          pool.release(s, true);
          resolve(pool.welcome ?? new Map(s.params));
        };
        const got = pool.acquire(probe, done);
        if (got !== null) done(got);
      });
    },
    consoleFor(session, user, address, own) {
      if (!opts.console) return new PoolError({ severity: 'FATAL', code: SqlState.ProtocolViolation, message: 'no such database: pgbouncer' });
      return opts.console(session, user, address, own);
    },
  };
  const admission = opts.admission;
  if (!admission) return env;
  const authenticate: PoolingEnv['authenticator'] = (user, database, address, who) => env.authenticator(user, database, address, who);
  return {
    ...env,
    authenticator(user, database, address, who) {
      const admitted = admission.ticket(database, user);
      if (admitted === null) return authenticate(user, database, address, who);
      return admitted.then((refused) => refused ?? authenticate(user, database, address, who));
    },
  };
}
