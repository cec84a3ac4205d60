// What the proxy keeps per database it serves: its service connection (the role that owns the
// steadytext objects), the one-time install/upgrade, the daemon secret, the runtime keys of its
// steadytext_config (reloaded on NOTIFY) and its one service writer: answers into its steadytext_cache,
// counters into its stats, entries into its logs, for every path (the daemon endpoint's writes too,
// after it has answered: writeLater).
//
// Everything here runs with the service role's privileges, so none of it may find an object another role
// created: every connection pins its search_path (serviceConnection), every steadytext object is named
// with its schema, every function call's parameters are typed.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import { RuntimeConfigSource, type RuntimeConfig } from '../config/runtime.js';
import type { Engine, IdentityOptions } from '../inference/engine.js';
import { callbackTransport } from './evaluate.js';
import { installSql, quoteIdent } from './install.js';
import { sessionQueryable, type Queryable, type Statement } from './handover.js';
import { commitThenUnlock, StandingWakes, TRY_LOCK, UNLOCK } from './standing-wakes.js';
import { MAINTENANCE_EVERY_MS, maintain } from './maintenance.js';
import type { SessionContext } from '../proxy/interceptor.js';
import { cacheRow, entryKey, insertCacheRows, registerModels, serviceConnection, type CacheEntry, type ModelIdentity, type ModelRole } from './store.js';

export interface DatabaseRegistryOptions {
  serviceUrl: string;
  /** Schema of the steadytext objects (default "public"). */
  schema?: string;
  autoInstall: boolean;
  /** Log a warning when the service role is a superuser (default true; a pool worker leaves it to the primary). */
  superuserWarning?: boolean;
  /** Where the database reaches the daemon endpoint; undefined when it is off. */
  daemon?: { host: string; port: number };
  engine: Engine;
  logger: Logger;
  /**
   * The service URL for one database (a pgbouncer.ini's [databases] entry may send it to another host, port
   * or database name); default: serviceUrl with its database name replaced.
   */
  serviceUrlFor?: (database: string) => string;
  /** How often each database it installs is maintained (sql/maintenance.ts); default MAINTENANCE_EVERY_MS. */
  maintenanceEveryMs?: number;
}

export class DatabaseRegistry {
  private readonly dbs = new Map<string, Database>();
  private readonly warned = new Set<string>();
  constructor(readonly opts: DatabaseRegistryOptions) {}

  get schema(): string { return this.opts.schema ?? 'public'; }

  /** Warns once per database when the service role is a superuser (see checkServiceRole). */
  warnIfSuperuser(database: string, role: string, superuser: boolean): void {
    if (!superuser || this.opts.superuserWarning === false || this.warned.has(database)) return;
    this.warned.add(database);
    this.opts.logger.warn({ database, role }, superuserAdvice(role, database));
  }

  /**
   * At start: the warning above for the service URL's own database, before any client arrives. Quiet
   * when the database cannot be reached (it is checked again when a database is first used).
   */
  async checkServiceRole(): Promise<void> {
    const database = decodeURIComponent(new URL(this.opts.serviceUrl).pathname.slice(1)) || undefined;
    const c = new pg.Client({ ...serviceConnection(this.opts.serviceUrl, 'pg-steadytext check'), connectionTimeoutMillis: 10_000 });
    c.on('error', () => {});
    try {
      await c.connect();
      const r = (await c.query(SERVICE_ROLE_SQL)).rows[0];
      // PGlite (the embedded database) has no other role: its one superuser is everyone's.
      if (!oneSession(r.version)) this.warnIfSuperuser(database ?? r.db, r.role, r.superuser);
    } catch (err) {
      this.opts.logger.debug({ err }, 'could not check the service role at start');
    } finally {
      await c.end().catch(() => {});
    }
  }

  /** The service URL for one database: the configured one with its database name replaced. */
  serviceUrlFor(database: string): string {
    if (this.opts.serviceUrlFor) return this.opts.serviceUrlFor(database);
    const u = new URL(this.opts.serviceUrl);
    u.pathname = '/' + encodeURIComponent(database);
    return u.toString();
  }

  /** The database's entry if the proxy already serves it (a lookup that starts nothing). */
  find(database: string): Database | undefined {
    return this.dbs.get(database);
  }

  get(database: string): Database {
    let d = this.dbs.get(database);
    if (!d) this.dbs.set(database, d = new Database(database, this));
    return d;
  }

  /**
   * A reloaded pgbouncer.ini: databases whose service URL it changes (moved to another host, port or name)
   * are let go (their service connections end once their pending writes are in) and met again at their new
   * place on next use, installed there if need be. Returns the names moved.
   */
  retarget(serviceUrlFor: (database: string) => string): string[] {
    this.opts.serviceUrlFor = serviceUrlFor;
    const moved: string[] = [];
    for (const [name, d] of this.dbs) {
      if (this.serviceUrlFor(name) === d.url) continue;
      this.dbs.delete(name);
      moved.push(name);
      d.close().catch((err: unknown) => this.opts.logger.warn({ err, database: name }, 'could not close the service connections of a moved database'));
    }
    if (moved.length) this.opts.logger.info({ databases: moved }, 'service connections follow the reloaded configuration');
    return moved;
  }

  /** Every daemon secret known so far (the daemon accepts any of them). */
  *secrets(): Iterable<string> {
    for (const d of this.dbs.values()) if (d.secret) yield d.secret;
  }

  async close(): Promise<void> {
    await Promise.all([...this.dbs.values()].map((d) => d.close()));
  }
}

/** What to do about a superuser service role: logged once per database, and said by `pg-steadytext doctor`. */
export function superuserAdvice(role: string, database: string): string {
  return `the proxy's service role "${role}" is a superuser: whatever a bug or a hostile object in database "${database}" gets the service role to run, ` +
    'runs as a superuser. Give the proxy a role of its own that is no superuser and owns the schema of the steadytext objects ' +
    '(README: "Running with a non-superuser service role"), and pass it with --service-url and --schema.';
}

const SERVICE_ROLE_SQL = `SELECT CURRENT_USER::pg_catalog.text AS role, pg_catalog.current_database()::pg_catalog.text AS db,
  pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on' AS superuser, pg_catalog.version() AS version`;

/** PGlite (what version() says, as migration 008 reads it): one backend session for every connection. */
const oneSession = (version: unknown): boolean => String(version).includes('PGlite');

/** How stale a one-session database's config may be (Database.single: no listener tells of changes). */
const SINGLE_CONFIG_MS = 1000;

/** Backoff of the config listener's reconnects: 250 ms doubling to 30 s. */
const LISTENER_RETRY_MS = [250, 30_000] as const;

export class Database {
  /** The service connections (search_path pinned: name every object with its schema, type every parameter). */
  readonly pool: pg.Pool;
  /** Where they go. */
  readonly url: string;
  readonly runtime: RuntimeConfigSource;
  /** Schema of the steadytext objects. */
  readonly schema: string;
  secret: string | undefined;
  /** The dblink extension is installed (the callback transport 'auto' then prefers it). */
  dblink = false;
  /**
   * One backend session for every connection (PGlite, the embedded default): while a client's block or batch
   * is open there, the service connection waits behind it, so what the proxy writes for that client's statement
   * goes through the client's own connection (via), and nothing on a client's path waits for the service
   * connection (config, counters). Read from version() when the database is prepared.
   */
  single = false;
  private configReadAt = 0;
  private prepared: Promise<void> | undefined;
  private listener: pg.Client | undefined;
  /** The in-band calls' standing wake-up locks, held on the listener while it lives (standing-wakes.ts). */
  standing: StandingWakes | undefined;
  private listenerRetry: ReturnType<typeof setTimeout> | undefined;
  private listenerFailures = 0;
  private registered = new Map<string, string>();
  private readonly log: Logger;
  private readonly s: string;
  private closed = false;
  private counters: Record<string, number> = {};
  private counterTimer: ReturnType<typeof setTimeout> | undefined;
  private maintenanceTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly pending = new Set<Promise<void>>();

  constructor(readonly name: string, private readonly reg: DatabaseRegistry) {
    this.log = reg.opts.logger.child({ database: name });
    this.schema = reg.schema;
    this.s = quoteIdent(this.schema);
    // Asynchronous commit: what the service writer commits (cache rows, answers handed over, counters, logs)
    // is visible to other sessions at once, which is all a waiting statement needs, without a WAL flush each
    // (measured here: 4.3 ms a commit, against 0.2 ms); a crash loses at most answers that are computed again,
    // and a client statement that used one flushes the WAL past it when it commits.
    this.url = reg.serviceUrlFor(name);
    // lock_timeout: a row a client's open block holds (an answer's mailbox topic it took) is never waited on for
    // long, since that block may be waiting on the statement this write is for; the write fails and the call asks.
    this.pool = new pg.Pool({ ...serviceConnection(this.url, 'pg-steadytext service', ['synchronous_commit=off', 'lock_timeout=2s']), max: 4, idleTimeoutMillis: 30_000 });
    this.pool.on('error', (err) => this.log.warn({ err }, 'service connection failed'));
    const readConfig = `SELECT key, value FROM ${quoteIdent(this.schema)}.steadytext_config`;
    this.runtime = new RuntimeConfigSource(async () => (await this.pool.query(readConfig)).rows);
  }

  /** Installs or upgrades the SQL objects once, and starts listening for config changes. */
  ready(): Promise<void> {
    return (this.prepared ??= this.prepare().catch((err) => {
      this.prepared = undefined; // a later session tries again (database down, role fixed...)
      throw err;
    }));
  }

  private async prepare(): Promise<void> {
    if (this.reg.opts.autoInstall) {
      const r = await prepareDatabase(this.url, {
        daemonHost: this.reg.opts.daemon?.host, daemonPort: this.reg.opts.daemon?.port, schema: this.schema, logger: this.log,
      });
      this.secret = r.secret;
      this.dblink = r.dblink;
      if (r.migrated.length) this.log.info({ version: r.version, migrated: r.migrated, schema: this.schema }, 'steadytext SQL objects installed');
    } else {
      this.secret = (await this.pool.query(`SELECT secret FROM ${this.s}.steadytext_daemon_secret WHERE id OPERATOR(pg_catalog.=) 1`)
        .catch(() => ({ rows: [] as { secret: string }[] }))).rows[0]?.secret;
      this.dblink = (await this.pool.query(`SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'dblink'`)).rowCount === 1;
    }
    const who = (await this.pool.query(SERVICE_ROLE_SQL)).rows[0];
    this.single = oneSession(who.version);
    // PGlite is one database with one superuser, reached only through this proxy: no other role to guard against.
    if (!this.single) this.reg.warnIfSuperuser(this.name, who.role, who.superuser);
    // A LISTEN there would deliver the NOTIFY to whichever client runs at that moment: config is re-read instead.
    if (!this.single) await this.openListener();
    const cfg = await this.runtime.get();
    this.lastConfig = cfg;
    this.configReadAt = Date.now();
    const daemonOn = this.reg.opts.daemon !== undefined;
    this.log.info({ callbackTransport: callbackTransport(cfg, this.dblink, daemonOn), configured: cfg.callbackTransport, dblink: this.dblink, daemonEndpoint: daemonOn },
      'callback transport of calls the proxy cannot see');
    // The proxy that installs the objects keeps their tables in bounds (a worker process leaves it to the primary).
    if (this.reg.opts.autoInstall) this.scheduleMaintenance(Math.min(60_000, this.maintenanceEvery()));
  }

  private maintenanceEvery(): number {
    return this.reg.opts.maintenanceEveryMs ?? MAINTENANCE_EVERY_MS;
  }

  private scheduleMaintenance(ms: number): void {
    if (this.closed || this.maintenanceTimer !== undefined) return;
    this.maintenanceTimer = setTimeout(() => {
      this.maintenanceTimer = undefined;
      void this.maintain().finally(() => this.scheduleMaintenance(this.maintenanceEvery()));
    }, ms).unref();
  }

  /** Evicts expired cache rows and old log and mailbox entries (sql/maintenance.ts); never throws. */
  async maintain(): Promise<void> {
    try {
      const gone = await maintain(this.pool, this.schema);
      if (gone.cache + gone.logs + gone.debugLogs + gone.mailbox > 0) this.log.info(gone, 'expired cache rows and old log entries removed');
    } catch (err) {
      if (!this.closed) this.log.warn({ err }, 'could not remove expired cache rows and old log entries; tried again later');
    }
  }

  /**
   * LISTENs for steadytext_config_set's NOTIFY on a connection of its own. When that connection is lost
   * (database restart, pg_terminate_backend), config is re-read on every call until a new one listens:
   * it is reopened with backoff, and what changed in between is re-read once it is back.
   */
  private async openListener(): Promise<void> {
    // Asynchronous commit as on the pool: commitThenWake commits in-band answers on this connection, pipelined
    // (the answer's write and the unlock after it in one round trip), where the standing wake-up locks are held
    // too (standing-wakes.ts). A cache row the asking client's own open block holds (the owning role deleted it)
    // would be waited for while the client waits for the answer: given up on at once instead (lock_timeout), and
    // the mailbox answers (inband.ts).
    const l = new pg.Client({
      ...serviceConnection(this.url, 'pg-steadytext config listener', ['synchronous_commit=off', 'lock_timeout=10ms']),
      pipeline: true,
    });
    let live = false; // from LISTEN on; failures before that reject this call instead
    const onLost = (err?: Error) => {
      if (!live) return;
      live = false;
      if (this.listener === l) {
        this.listener = undefined;
        this.standing = undefined; // its locks went with it
      }
      this.runtime.markStale();
      if (this.closed) return;
      this.log.warn({ err }, 'config listener lost; config is re-read on every call until it is back');
      this.scheduleListener();
    };
    l.on('notification', () => this.runtime.markStale());
    l.on('error', onLost);
    l.on('end', () => onLost());
    try {
      await l.connect();
      await l.query('LISTEN steadytext_config');
    } catch (err) {
      await l.end().catch(() => {});
      throw err;
    }
    if (this.closed) {
      await l.end().catch(() => {});
      return;
    }
    live = true;
    this.listener = l;
    this.standing = new StandingWakes(l, () => this.secret);
    this.listenerFailures = 0;
    this.runtime.markStale(); // whatever changed while no one listened
  }

  private scheduleListener(): void {
    if (this.closed || this.listenerRetry) return;
    const [first, max] = LISTENER_RETRY_MS;
    const delay = Math.min(max, first * 2 ** this.listenerFailures);
    this.listenerRetry = setTimeout(() => {
      this.listenerRetry = undefined;
      if (this.closed) return;
      this.openListener().then(
        () => { if (this.listener) this.log.info('config listener back'); },
        (err) => {
          this.listenerFailures++;
          this.log.debug({ err, failures: this.listenerFailures }, 'config listener could not reconnect; retrying');
          this.scheduleListener();
        });
    }, delay);
    this.listenerRetry.unref();
  }

  async config(): Promise<RuntimeConfig> {
    await this.ready();
    if (this.single) return this.singleConfig();
    const cfg = await this.runtime.get();
    if (!this.listener) this.runtime.markStale();
    return cfg;
  }

  /** One session (single): the config last read, read again in the background at most once a second. */
  private async singleConfig(): Promise<RuntimeConfig> {
    const now = Date.now();
    if (now - this.configReadAt >= SINGLE_CONFIG_MS) {
      this.configReadAt = now;
      this.runtime.markStale();
      const reading = this.runtime.get();
      if (this.lastConfig === undefined) this.lastConfig = await reading;
      else reading.then((c) => (this.lastConfig = c), (err: unknown) => this.log.warn({ err }, 'could not read steadytext_config'));
    }
    return this.lastConfig!;
  }
  private lastConfig: RuntimeConfig | undefined;

  /**
   * Where the proxy's writes for a statement of `ctx` go: the service pool, or on a one-session database the
   * client's own connection (sessionQueryable; `inBatch`: inside its extended-protocol batch). `own`: the
   * client's connection on any database, for writes that could wait on locks the client's open block holds.
   */
  via(ctx: SessionContext | undefined, inBatch = false, own = false): Queryable {
    return (this.single || own) && ctx ? sessionQueryable(ctx, inBatch) : this.pool;
  }

  /**
   * The in-band wake-up (migration 006): a session-level advisory lock on `key`, taken on the config listener's
   * connection while an in-band request is worked on; the function that asked blocks on it and wakes when it
   * is let go. Null when no lock is held (no live listener, another session holds the key): the function polls.
   */
  async holdWake(key: number): Promise<pg.Client | null> {
    const l = this.listener;
    if (!l) return null;
    try {
      const r = await l.query(TRY_LOCK, [WAKE_CLASS, key]);
      return r.rows[0]?.held === true ? l : null;
    } catch {
      return null;
    }
  }

  /** commitThenUnlock with holdWake's lock: the function waiting on it wakes to the committed answer. */
  async commitThenWake(holder: pg.Client, key: number, write: Statement): Promise<void> {
    await commitThenUnlock(holder, write, WAKE_CLASS, key);
  }

  /** Lets go of holdWake's lock with nothing to commit: what waits on it wakes. */
  async wake(holder: pg.Client, key: number): Promise<void> {
    await holder.query(UNLOCK, [WAKE_CLASS, key]).catch(() => {});
  }

  /** The model identity the SQL functions look up for (role, size), registered on first sight. */
  async identity(role: ModelRole, size: string, opts?: IdentityOptions, q: Queryable = this.pool): Promise<string> {
    const id = await this.reg.opts.engine.modelIdentity(role, size, opts);
    const k = `${role}\0${size}`;
    if (this.registered.get(k) === id) return id;
    const write = () => registerModels(q, [{ role, size, identity: id }], this.schema);
    // One session, and no client's connection to write through: the service connection may have to wait for a
    // client's block to end, so not here. A call meanwhile misses the cache and is answered in-band.
    if (this.single && q === this.pool) this.writeLater('model registration', write);
    else await write();
    this.registered.set(k, id);
    return id;
  }

  /** Stores answers in steadytext_cache (committed before this resolves: prefetch relies on it). */
  async store(entries: CacheEntry[], q: Queryable = this.pool): Promise<void> {
    if (entries.length === 0) return;
    // One row per key, the last entry winning as with one INSERT after another: a multi-row
    // ON CONFLICT DO UPDATE must not touch the same row twice.
    const rows = [...new Map(entries.map((e) => [entryKey(e), e] as const))].map(([key, e]) => cacheRow(key, e));
    const chunks: unknown[][][] = [];
    for (let i = 0; i < rows.length; i += STORE_CHUNK_ROWS) chunks.push(rows.slice(i, i + STORE_CHUNK_ROWS));
    // Multi-row INSERTs: one round trip per chunk instead of one per entry (~0.4 ms each, 1024-float vectors).
    if (chunks.length === 1 || q !== this.pool) {
      // On the client's connection (via): its transaction, if any, is theirs to end; a part stored is a cache.
      for (const chunk of chunks) await q.query(insertCacheRows(this.schema, chunk.length), chunk.flat());
      return;
    }
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      for (const chunk of chunks) await c.query(insertCacheRows(this.schema, chunk.length), chunk.flat());
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  }

  /** An entry of steadytext_logs (or steadytext_debug_logs, which keeps it only while debug_mode is on), written later. */
  logEvent(level: 'debug' | 'info' | 'warning' | 'error', event: string, message: string, details: object): void {
    this.writeLater('log write', () => this.pool.query(
      `SELECT ${this.s}.steadytext_log($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text, $4::pg_catalog.jsonb)`,
      [level, event, message, JSON.stringify(details)]));
  }

  /**
   * Runs a write off the caller's path (the daemon answers first, writes after). At most
   * MAX_PENDING_WRITES wait at once: beyond that a write is dropped with a warning. flush() waits for them.
   */
  writeLater(what: string, write: () => Promise<unknown>): void {
    if (this.pending.size >= MAX_PENDING_WRITES) {
      this.log.warn({ what }, 'service writes are backing up; dropping one');
      return;
    }
    const p: Promise<void> = Promise.resolve().then(write).then(
      () => undefined,
      (err) => this.log.warn({ err, what }, 'service write failed'),
    ).finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  /** Waits until what was queued so far is written: the counters, and every writeLater() started. */
  async flush(): Promise<void> {
    await this.flushCounters();
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  /** Adds to steadytext_stats; written within a second, or at once by flushCounters(). */
  count(deltas: Record<string, number>): void {
    for (const [k, v] of Object.entries(deltas)) if (v) this.counters[k] = (this.counters[k] ?? 0) + v;
    this.counterTimer ??= setTimeout(() => void this.flushCounters(), 1000).unref();
  }

  async flushCounters(q: Queryable = this.pool): Promise<void> {
    if (this.counterTimer) clearTimeout(this.counterTimer);
    this.counterTimer = undefined;
    const deltas = this.counters;
    // A flush under way (the timer's) holds counters too: a reader of steadytext_stats waits for it as well, unless
    // it reads through a client's connection (one session: the pool's flush may itself wait for that client).
    const before = q === this.pool ? this.countersFlushing : Promise.resolve();
    if (Object.keys(deltas).length === 0) return before;
    this.counters = {};
    const mine = before.then(() => q.query(`SELECT ${this.s}.steadytext_stats_bump($1::pg_catalog.jsonb)`, [JSON.stringify(deltas)]))
      .then(() => {}, (err) => this.log.warn({ err }, 'could not write steadytext_stats counters'));
    this.countersFlushing = mine;
    return mine;
  }

  private countersFlushing: Promise<void> = Promise.resolve();

  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    if (this.maintenanceTimer) clearTimeout(this.maintenanceTimer);
    this.maintenanceTimer = undefined;
    if (this.listenerRetry) clearTimeout(this.listenerRetry);
    this.listenerRetry = undefined;
    await this.listener?.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }
}

/** The advisory lock class of the in-band wake-up ('STEX'), as in sql/migrations/006_inband_wake.sql. */
export const WAKE_CLASS = 1398031704;

/** Writes waiting at once (writeLater) before more are dropped. */
const MAX_PENDING_WRITES = 1000;

// 7 parameters per row (insertCacheRows); PostgreSQL allows 65535 per statement.
const STORE_CHUNK_ROWS = 1000;

// ---------------------------------------------------------------------------------------------------
// Preparation of a database: at first use (Database.ready), by `pg-steadytext install`, and in tests

export interface PrepareOptions {
  /** Where the database reaches the daemon endpoint (dblink runs on the database server). */
  daemonHost?: string;
  daemonPort?: number;
  schema?: string;
  /** Model identities to register in steadytext_models (Database.identity also registers them on first use). */
  identities?: ModelIdentity[];
  /**
   * Whether to write daemonHost/daemonPort into steadytext_config: 'if-default' (default) only replaces
   * the built-in defaults, so an address an administrator set is kept; 'always'; 'never'.
   */
  advertise?: 'if-default' | 'always' | 'never';
  logger?: Logger;
}

export interface Prepared { secret: string; version: string; dblink: boolean; migrated: string[]; schema: string; role: string; superuser: boolean }

/**
 * Installs or upgrades the SQL objects, creates the daemon secret on first use (or reads the existing
 * one: every proxy of a database shares it), registers model identities and the daemon address.
 * The service role must own the steadytext objects (it created them, or is a member of their owner), and
 * be the only role besides superusers that can create objects in their schema (installSql refuses otherwise).
 */
export async function prepareDatabase(serviceUrl: string, o: PrepareOptions = {}): Promise<Prepared> {
  const client = new pg.Client(serviceConnection(serviceUrl, 'pg-steadytext install'));
  // A connection lost mid-install fails the query in progress; without a listener it would also crash the process.
  client.on('error', (err) => o.logger?.warn({ err }, 'install connection lost'));
  await client.connect();
  try {
    const res = await installSql(client, { schema: o.schema });
    const secret = await daemonSecret(client, res.schema);
    await registerModels(client, o.identities ?? [], res.schema);
    await advertiseDaemon(client, res.schema, o);
    const who = (await client.query(SERVICE_ROLE_SQL)).rows[0];
    return { secret, version: res.version, dblink: res.dblink, migrated: res.migrated, schema: res.schema, role: who.role, superuser: who.superuser };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The database's daemon secret, created on first use. */
async function daemonSecret(client: pg.Client, schema: string): Promise<string> {
  const s = quoteIdent(schema);
  try {
    await client.query(`INSERT INTO ${s}.steadytext_daemon_secret (id, secret) VALUES (1, $1::pg_catalog.text) ON CONFLICT (id) DO NOTHING`, [randomBytes(32).toString('hex')]);
    return (await client.query(`SELECT secret FROM ${s}.steadytext_daemon_secret WHERE id OPERATOR(pg_catalog.=) 1`)).rows[0].secret;
  } catch (e) {
    if ((e as { code?: string }).code === '42501') {
      throw new Error(`pg-steadytext: the service role cannot read ${schema}.steadytext_daemon_secret: connect the proxy's service URL as the role that owns the steadytext objects (or a member of it)`, { cause: e });
    }
    throw e;
  }
}

/** Writes where the daemon listens into steadytext_config, as PrepareOptions.advertise says. */
async function advertiseDaemon(client: pg.Client, schema: string, o: PrepareOptions): Promise<void> {
  const mode = o.advertise ?? 'if-default';
  if (mode === 'never') return;
  const s = quoteIdent(schema);
  const wildcard = (h?: string) => !h || h === '0.0.0.0' || h === '::' || h === '*';
  const wants: Array<[string, string | undefined, string]> = [
    ['daemon_host', wildcard(o.daemonHost) ? undefined : o.daemonHost, 'localhost'],
    ['daemon_port', o.daemonPort === undefined ? undefined : String(o.daemonPort), '5557'],
  ];
  for (const [key, value, builtin] of wants) {
    if (value === undefined) continue;
    const cur = (await client.query(`SELECT value FROM ${s}.steadytext_config WHERE key OPERATOR(pg_catalog.=) $1::pg_catalog.text`, [key])).rows[0]?.value;
    if (cur === value || (mode === 'if-default' && cur !== undefined && cur !== builtin)) continue;
    await client.query(`SELECT ${s}.steadytext_config_set($1::pg_catalog.text, $2::pg_catalog.text)`, [key, value]);
    o.logger?.info({ key, value }, 'daemon address written to steadytext_config');
  }
}
