// What the proxy keeps per database it serves: its service connection (the role that owns the
// steadytext objects), the one-time install/upgrade, the daemon secret, the runtime keys of its
// steadytext_config (reloaded on NOTIFY) and the writes of answers into its steadytext_cache.
import pg from 'pg';
import type { Logger } from 'pino';
import { RuntimeConfigSource, type RuntimeConfig } from '../config/runtime.js';
import type { Engine } from '../inference/engine.js';
import { entryKey, registerModels, type CacheEntry, type ModelRole } from '../sql/store.js';
import { prepareDatabase } from './daemon.js';

export interface DatabaseRegistryOptions {
  serviceUrl: string;
  autoInstall: boolean;
  /** Where the database reaches the daemon endpoint; undefined when it is off. */
  daemon?: { host: string; port: number };
  engine: Engine;
  logger: Logger;
}

export class DatabaseRegistry {
  private readonly dbs = new Map<string, Database>();
  constructor(readonly opts: DatabaseRegistryOptions) {}

  /** The service URL for one database: the configured one with its database name replaced. */
  serviceUrlFor(database: string): string {
    const u = new URL(this.opts.serviceUrl);
    u.pathname = '/' + encodeURIComponent(database);
    return u.toString();
  }

  get(database: string): Database {
    let d = this.dbs.get(database);
    if (!d) this.dbs.set(database, d = new Database(database, this));
    return d;
  }

  /** Every daemon secret known so far (the daemon accepts any of them). */
  *secrets(): Iterable<string> {
    for (const d of this.dbs.values()) if (d.secret) yield d.secret;
  }

  async close(): Promise<void> {
    await Promise.all([...this.dbs.values()].map((d) => d.close()));
  }
}

export class Database {
  readonly pool: pg.Pool;
  readonly runtime: RuntimeConfigSource;
  secret: string | undefined;
  private prepared: Promise<void> | undefined;
  private listener: pg.Client | undefined;
  private registered = new Map<string, string>();
  private readonly log: Logger;
  private closed = false;
  private counters: Record<string, number> = {};
  private counterTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(readonly name: string, private readonly reg: DatabaseRegistry) {
    this.log = reg.opts.logger.child({ database: name });
    this.pool = new pg.Pool({ connectionString: reg.serviceUrlFor(name), max: 4, idleTimeoutMillis: 30_000, application_name: 'pg-steadytext service' } as pg.PoolConfig);
    this.pool.on('error', (err) => this.log.warn({ err }, 'service connection failed'));
    this.runtime = new RuntimeConfigSource((sql) => this.pool.query(sql));
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
      const r = await prepareDatabase(this.reg.serviceUrlFor(this.name), {
        daemonHost: this.reg.opts.daemon?.host, daemonPort: this.reg.opts.daemon?.port, logger: this.log,
      });
      this.secret = r.secret;
      if (r.migrated.length) this.log.info({ version: r.version, migrated: r.migrated }, 'steadytext SQL objects installed');
    } else {
      this.secret = (await this.pool.query('SELECT secret FROM steadytext_daemon_secret WHERE id = 1').catch(() => ({ rows: [] as { secret: string }[] }))).rows[0]?.secret;
    }
    const l = new pg.Client({ connectionString: this.reg.serviceUrlFor(this.name), application_name: 'pg-steadytext config listener' } as pg.ClientConfig);
    l.on('notification', () => this.runtime.markStale());
    l.on('error', (err) => {
      this.log.warn({ err }, 'config listener lost; config is re-read on every call until it is back');
      this.listener = undefined;
      this.runtime.markStale();
    });
    await l.connect();
    await l.query('LISTEN steadytext_config');
    if (this.closed) await l.end(); else this.listener = l;
  }

  async config(): Promise<RuntimeConfig> {
    await this.ready();
    const cfg = await this.runtime.get();
    if (!this.listener) this.runtime.markStale();
    return cfg;
  }

  /** The model identity the SQL functions look up for (role, size), registered on first sight. */
  async identity(role: ModelRole, size: string): Promise<string> {
    const id = await this.reg.opts.engine.modelIdentity(role, size);
    const k = `${role}\0${size}`;
    if (this.registered.get(k) !== id) {
      await registerModels(this.pool, [{ role, size, identity: id }]);
      this.registered.set(k, id);
    }
    return id;
  }

  /** Stores answers in steadytext_cache (committed before this resolves: prefetch relies on it). */
  async store(entries: CacheEntry[]): Promise<void> {
    if (entries.length === 0) return;
    // One row per key, the last entry winning as with one INSERT after another: a multi-row
    // ON CONFLICT DO UPDATE must not touch the same row twice.
    const rows = [...new Map(entries.map((e) => [entryKey(e), e] as const))].map(([key, e]) => cacheRow(key, e));
    const chunks: unknown[][][] = [];
    for (let i = 0; i < rows.length; i += STORE_CHUNK_ROWS) chunks.push(rows.slice(i, i + STORE_CHUNK_ROWS));
    // Multi-row INSERTs: one round trip per chunk instead of one per entry (~0.4 ms each, 1024-float vectors).
    if (chunks.length === 1) {
      await this.pool.query(insertCacheRows(chunks[0].length), chunks[0].flat());
      return;
    }
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      for (const chunk of chunks) await c.query(insertCacheRows(chunk.length), chunk.flat());
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  }

  /** An entry of steadytext_logs (or steadytext_debug_logs, which keeps it only while debug_mode is on). */
  logEvent(level: 'debug' | 'info' | 'warning' | 'error', event: string, message: string, details: object): void {
    this.pool.query('SELECT steadytext_log($1, $2, $3, $4)', [level, event, message, JSON.stringify(details)])
      .catch((err) => this.log.debug({ err }, 'could not write steadytext_logs'));
  }

  /** Adds to steadytext_stats; written within a second, or at once by flushCounters(). */
  count(deltas: Record<string, number>): void {
    for (const [k, v] of Object.entries(deltas)) if (v) this.counters[k] = (this.counters[k] ?? 0) + v;
    this.counterTimer ??= setTimeout(() => void this.flushCounters(), 1000).unref();
  }

  async flushCounters(): Promise<void> {
    if (this.counterTimer) clearTimeout(this.counterTimer);
    this.counterTimer = undefined;
    const deltas = this.counters;
    if (Object.keys(deltas).length === 0) return;
    this.counters = {};
    await this.pool.query('SELECT steadytext_stats_bump($1)', [JSON.stringify(deltas)])
      .catch((err) => this.log.warn({ err }, 'could not write steadytext_stats counters'));
  }

  async close(): Promise<void> {
    await this.flushCounters();
    this.closed = true;
    await this.listener?.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }
}

// Parameters are untyped, so each takes its column's type (the embedding's vector, wherever pgvector lives).
// 7 per row; PostgreSQL allows 65535 per statement.
const STORE_CHUNK_ROWS = 1000;

/** The columns storeCacheEntry (sql/store.ts) writes for one entry, in insertCacheRows' order. */
function cacheRow(key: string, e: CacheEntry): unknown[] {
  return e.op === 'embed'
    ? [key, e.op, e.identity, JSON.stringify({ seed: e.seed }), e.text, null, e.embedding]
    : [key, e.op, e.identity, JSON.stringify({ max_tokens: e.maxTokens, seed: e.seed, temperature: e.temperature }), e.prompt, e.response, null];
}

function insertCacheRows(n: number): string {
  const values = Array.from({ length: n }, (_, r) => `(${Array.from({ length: 7 }, (_, c) => `$${r * 7 + c + 1}`).join(', ')})`);
  return `INSERT INTO public.steadytext_cache (cache_key, operation, model_identity, params, prompt, response, embedding)
     VALUES ${values.join(', ')}
     ON CONFLICT (cache_key) DO UPDATE SET response = EXCLUDED.response, embedding = EXCLUDED.embedding, created_at = now()`;
}
