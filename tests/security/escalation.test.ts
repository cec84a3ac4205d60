// Privilege escalation through the proxy's service connections (issue 10, security item 1). Everything the
// proxy runs as its own role (the install, the stats and log writes, the cache writes, the config reload,
// the daemon's writes) must never reach an object another role created: not an overload in the install
// schema or in public, not a shadow of a built-in, not a schema named after the service role (first on
// its default search_path). Hostile roles here plant such objects, each of which records who ran it and
// tries to make its author a superuser; the real proxy (install, daemon, interceptor, service writes) then
// serves the database, and the record must stay empty.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import pino from 'pino';
import { createEngine, type Engine } from '../../inference/engine.js';
import { startCore } from '../../sql/core.js';
import type { DaemonHandle } from '../../sql/daemon/server.js';
import type { DatabaseRegistry } from '../../sql/databases.js';
import { startProxy, type ProxyServer } from '../../proxy/server.js';
import { createSteadytextInterceptor } from '../../sql/interceptor.js';
import { SqlInstallError } from '../../sql/install.js';
import type { CacheEntry } from '../../sql/store.js';
import { tinyModels } from '../fixtures/models.js';
import { adminQuery, createRole, dropRole, freshDatabase, type TestDatabase } from '../sql/helpers.js';

/** The proxy as `serve` starts it, for one database, with its log records kept. */
interface Served {
  databases: DatabaseRegistry;
  daemon: DaemonHandle;
  proxy: ProxyServer;
  engine: Engine;
  logs: Record<string, unknown>[];
  /** URL through the proxy for a role. */
  url(user: string, password: string): string;
  stop(): Promise<void>;
}

async function serve(db: TestDatabase, serviceUrl: string, schema?: string): Promise<Served> {
  const logs: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const models = await tinyModels();
  const engine = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, autoDownload: false, cacheBytes: 0, logger });
  const { databases, daemon } = await startCore({ engine, serviceUrl, schema, autoInstall: true, daemonListen: { host: '127.0.0.1', port: 0 }, logger });
  const interceptor = createSteadytextInterceptor({ engine, databases, daemon: daemon!.address, logger });
  await interceptor.ready;
  const u = new URL(db.url);
  const proxy = await startProxy({
    listen: { host: '127.0.0.1', port: 0 }, upstream: `postgres://${u.hostname}:${u.port}/postgres?sslmode=disable`,
    maxMessageBytes: 64 * 1024 * 1024, shutdownGraceMs: 1000, connectTimeoutMs: 3000, logger, interceptor,
  });
  return {
    databases, daemon: daemon!, proxy, engine, logs,
    url(user, password) {
      const p = new URL(db.urlAs(user, password));
      p.hostname = proxy.address.host;
      p.port = String(proxy.address.port);
      return p.toString();
    },
    async stop() {
      await proxy.close(100);
      await databases.get(db.name).ready().catch(() => {});
      await daemon!.close();
      await databases.close();
      await engine.close();
    },
  };
}

/**
 * Objects a hostile role plants: each records (current_user, what) in <home>.pwned and, run by a
 * superuser, makes `attacker` one. `where` maps a schema to what is planted there.
 */
function trapSql(home: string, attacker: string): string {
  return `
    CREATE TABLE ${home}.pwned (who text, what text, at timestamptz DEFAULT clock_timestamp());
    GRANT INSERT ON ${home}.pwned TO PUBLIC;
    CREATE FUNCTION ${home}.trap(what text) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO ${home}.pwned (who, what) VALUES (current_user, what);
      IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', '${attacker}');
      END IF;
    END $$;
    GRANT EXECUTE ON FUNCTION ${home}.trap(text) TO PUBLIC;`;
}

/** Shadows in a schema named after the service role: exact signatures, first on its default search_path. */
function userSchemaShadows(schema: string, home: string): string {
  return `
    CREATE FUNCTION ${schema}.steadytext_stats_bump(deltas jsonb) RETURNS void LANGUAGE sql AS $$ SELECT ${home}.trap('"$user".steadytext_stats_bump') $$;
    CREATE FUNCTION ${schema}.steadytext_log(level text, event text, message text DEFAULT NULL, details jsonb DEFAULT NULL) RETURNS void
      LANGUAGE sql AS $$ SELECT ${home}.trap('"$user".steadytext_log') $$;
    CREATE FUNCTION ${schema}.pg_advisory_lock(text, text) RETURNS void LANGUAGE sql AS $$ SELECT ${home}.trap('"$user".pg_advisory_lock') $$;
    CREATE VIEW ${schema}.steadytext_config AS
      SELECT k AS key, v AS value FROM (VALUES ('default_seed'::text, '1'::text)) AS c(k, v), LATERAL (SELECT ${home}.trap('"$user".steadytext_config')) AS t;
    CREATE VIEW ${schema}.steadytext_daemon_secret AS
      SELECT 1 AS id, 'x'::text AS secret FROM (SELECT ${home}.trap('"$user".steadytext_daemon_secret')) AS t;
    GRANT USAGE ON SCHEMA ${schema} TO PUBLIC;
    GRANT SELECT ON ${schema}.steadytext_config, ${schema}.steadytext_daemon_secret TO PUBLIC;`;
}

const isSuper = async (role: string) => (await adminQuery('SELECT rolsuper FROM pg_roles WHERE rolname = $1', [role])).rows[0].rolsuper as boolean;

async function until(pred: () => Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const entry = (prompt: string): CacheEntry => ({ op: 'generate', identity: 'test-identity', prompt, maxTokens: 4, seed: 1, temperature: 0, response: `answer to ${prompt}` });

/**
 * Every service path, as the proxy runs them: a session through the proxy (rewrite), a call the proxy
 * cannot see (callback: the daemon's writer), cache writes, stats, logs, and a config change made by
 * another session. Returns what the database got, so a test can check that the paths did their work.
 */
async function runServicePaths(s: Served, db: TestDatabase, schema: string, client: { user: string; password: string }) {
  const q = `"${schema}"`;
  const d = s.databases.get(db.name);
  await d.ready();
  const su = await db.connect();
  try {
    await su.query(`SELECT ${q}.steadytext_config_set('debug_mode', 'true')`);
    // A session through the proxy (the interceptor's paths), as a client role.
    const c = new pg.Client(s.url(client.user, client.password));
    c.on('error', () => {});
    await c.connect();
    try {
      const r = await c.query(`SELECT ${q}.steadytext_generate('through the proxy', 4) AS a`);
      expect(typeof r.rows[0].a).toBe('string');
    } finally {
      await c.end();
    }
    // The callback path: straight to the database, the function asks the daemon through dblink.
    const cb = await su.query(`SELECT ${q}.steadytext_generate('asked through dblink', 5, 7) AS a`);
    expect(typeof cb.rows[0].a).toBe('string');
    await s.daemon.flush();
    // The database's service writes directly.
    await d.identity('generation', 'small');
    await d.store([entry('one')]);
    await d.store(Array.from({ length: 1500 }, (_, i) => entry(`bulk ${i}`))); // more than one INSERT, in a transaction
    d.logEvent('error', 'escalation_test', 'an error entry', { n: 1 });
    d.count({ requests: 3 });
    await d.flushCounters();
    // A config change by another session reaches this proxy (NOTIFY, then the reload).
    await d.runtime.get();
    await su.query(`SELECT ${q}.steadytext_config_set('default_max_tokens', '77')`);
    await until(async () => (await d.runtime.get()).defaultMaxTokens === 77, 'the config change');
    await until(async () => (await su.query(`SELECT count(*)::int AS n FROM ${q}.steadytext_logs WHERE event = 'escalation_test'`)).rows[0].n === 1, 'the log entry');
    return {
      counters: Object.fromEntries((await su.query(`SELECT name, value::int AS v FROM ${q}.steadytext_counters`)).rows.map((r) => [r.name, r.v])),
      cacheRows: (await su.query(`SELECT count(*)::int AS n FROM ${q}.steadytext_cache`)).rows[0].n as number,
      debugLogs: (await su.query(`SELECT count(*)::int AS n FROM ${q}.steadytext_debug_logs`)).rows[0].n as number,
    };
  } finally {
    await su.end();
  }
}

describe('a database owner plants overloads and shadows for the superuser service role', () => {
  let db: TestDatabase;
  let owner: { user: string; password: string };
  let s: Served;
  let paths: Awaited<ReturnType<typeof runServicePaths>>;
  let pathsFailed: unknown; // checked after the record of planted objects run, which says more

  beforeAll(async () => {
    owner = await createRole('st_hostile_owner');
    db = await freshDatabase('st_escalation');
    await db.query(`ALTER DATABASE ${db.name} OWNER TO ${owner.user}`);
    // As the owner: it creates in public (pg_database_owner owns it) and creates schemas (it owns the database).
    const h = await db.connect(db.urlAs(owner.user, owner.password));
    await h.query(`CREATE SCHEMA hostile; GRANT USAGE ON SCHEMA hostile TO PUBLIC; ${trapSql('hostile', owner.user)}`);
    await h.query(`
      -- Overloads the untyped calls preferred: text beats jsonb, (text, text) beats (int4, int4).
      CREATE FUNCTION public.steadytext_stats_bump(text) RETURNS void LANGUAGE sql AS $$ SELECT hostile.trap('public.steadytext_stats_bump(text)') $$;
      CREATE FUNCTION public.steadytext_log(text, text, text, text) RETURNS void LANGUAGE sql AS $$ SELECT hostile.trap('public.steadytext_log(text,text,text,text)') $$;
      CREATE FUNCTION public.pg_advisory_lock(text, text) RETURNS void LANGUAGE sql AS $$ SELECT hostile.trap('public.pg_advisory_lock(text,text)') $$;
      CREATE FUNCTION public.pg_advisory_unlock(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT hostile.trap('public.pg_advisory_unlock(text,text)'); SELECT true $$;
      -- A schema named after the service role: "$user" puts it first on the service role's default search_path.
      CREATE SCHEMA postgres;
      ${userSchemaShadows('postgres', 'hostile')}`);
    await h.end();
    // The service role of the README's quick start: the superuser, with the objects in a schema of its own.
    s = await serve(db, db.url, 'steadytext');
    await runServicePaths(s, db, 'steadytext', owner).then((r) => { paths = r; }, (e: unknown) => { pathsFailed = e ?? new Error('failed'); });
  }, 120_000);

  afterAll(async () => {
    await s?.stop();
    await db?.drop();
    if (owner) {
      await adminQuery(`ALTER ROLE ${owner.user} NOSUPERUSER`).catch(() => {});
      await dropRole(owner.user);
    }
  });

  it('no planted object ran during install, stats, log, cache and config writes, callbacks or the proxied session', async () => {
    expect(await db.query('SELECT who, what FROM hostile.pwned')).toEqual([]);
    expect(await isSuper(owner.user)).toBe(false);
    if (pathsFailed) throw pathsFailed instanceof Error ? pathsFailed : new Error(JSON.stringify(pathsFailed));
    expect(paths.cacheRows).toBeGreaterThanOrEqual(1502);
    expect(paths.counters.requests).toBeGreaterThanOrEqual(3);
    expect(paths.counters.callback_requests).toBeGreaterThanOrEqual(1);
    expect(paths.debugLogs).toBeGreaterThanOrEqual(1);
    expect(await db.query('SELECT who, what FROM hostile.pwned')).toEqual([]);
    expect(await isSuper(owner.user)).toBe(false);
  });

  it('the objects are owned by the service role, in a schema the database owner cannot create in', async () => {
    const rows = await db.query(`SELECT nspowner::regrole::text AS owner, has_schema_privilege($1, oid, 'CREATE') AS owner_creates
      FROM pg_namespace WHERE nspname = 'steadytext'`, [owner.user]);
    expect(rows).toEqual([{ owner: 'postgres', owner_creates: false }]);
    const owners = await db.query(`SELECT DISTINCT p.proowner::regrole::text AS o FROM pg_proc p WHERE p.pronamespace = 'steadytext'::regnamespace`);
    expect(owners).toEqual([{ o: 'postgres' }]);
  });

  it('warns once that the service role is a superuser, saying why and how to fix it', async () => {
    const warned = s.logs.filter((l) => l.level === 40 && /is a superuser/.test(String(l.msg)));
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ database: db.name, role: 'postgres' });
    expect(String(warned[0].msg)).toMatch(/runs as a superuser/);
    expect(String(warned[0].msg)).toMatch(/Running with a non-superuser service role/);
    expect(String(warned[0].msg)).toMatch(/--service-url and --schema/);
  });

  it('public, where the owner creates, is refused', async () => {
    const other = await serve(db, db.url);
    try {
      const e = await other.databases.get(db.name).ready().then(() => undefined, (x: unknown) => x);
      expect(e).toBeInstanceOf(SqlInstallError);
      expect((e as SqlInstallError).code).toBe('UNSAFE_SCHEMA');
      expect((e as SqlInstallError).message).toContain(`the owner of database "${db.name}", through pg_database_owner, owns it`);
      expect(await db.query(`SELECT to_regclass('public.steadytext_config') AS r`)).toEqual([{ r: null }]);
      expect(await db.query('SELECT who, what FROM hostile.pwned')).toEqual([]);
    } finally {
      await other.stop();
    }
  });
});

describe('PUBLIC may create in public (a database upgraded from before PostgreSQL 15)', () => {
  let db: TestDatabase;
  let hostile: { user: string; password: string };
  let s: Served;

  beforeAll(async () => {
    hostile = await createRole('st_hostile');
    db = await freshDatabase('st_public_create');
    // As in PostgreSQL 14 and before; the role may also create schemas of its own (any name).
    await db.query(`GRANT CREATE ON SCHEMA public TO PUBLIC; GRANT CREATE ON DATABASE ${db.name} TO ${hostile.user}`);
    const h = await db.connect(db.urlAs(hostile.user, hostile.password));
    await h.query(`CREATE SCHEMA postgres; ${trapSql('postgres', hostile.user)} ${userSchemaShadows('postgres', 'postgres')}`);
    await h.end();
    s = await serve(db, db.url);
  }, 120_000);

  afterAll(async () => {
    await s?.stop();
    await db?.drop();
    if (hostile) {
      await adminQuery(`ALTER ROLE ${hostile.user} NOSUPERUSER`).catch(() => {});
      await dropRole(hostile.user);
    }
  });

  it('the install is refused with an error that says how to fix it, and nothing is installed', async () => {
    const e = await s.databases.get(db.name).ready().then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(SqlInstallError);
    expect((e as SqlInstallError).code).toBe('UNSAFE_SCHEMA');
    expect((e as SqlInstallError).message).toContain('PUBLIC (every role) holds CREATE on it');
    expect((e as SqlInstallError).message).toContain('REVOKE CREATE ON SCHEMA "public" FROM PUBLIC');
    expect(await db.query(`SELECT to_regclass('public.steadytext_config') AS r`)).toEqual([{ r: null }]);
    expect(await db.query('SELECT who, what FROM postgres.pwned')).toEqual([]);
  });

  it('after REVOKE CREATE ... FROM PUBLIC the next use installs, and the schema named after the service role is never reached', async () => {
    await db.query('REVOKE CREATE ON SCHEMA public FROM PUBLIC');
    const paths = await runServicePaths(s, db, 'public', hostile).catch(async (e: unknown) => {
      expect(await db.query('SELECT who, what FROM postgres.pwned')).toEqual([]); // says more than e
      throw e;
    });
    expect(paths.cacheRows).toBeGreaterThanOrEqual(1502);
    expect(paths.counters.requests).toBeGreaterThanOrEqual(3);
    expect(await db.query('SELECT who, what FROM postgres.pwned')).toEqual([]);
    expect(await isSuper(hostile.user)).toBe(false);
  });
});

describe("the README's non-superuser service role", () => {
  let db: TestDatabase;
  let svc: { user: string; password: string };
  let app: { user: string; password: string };
  let s: Served;

  beforeAll(async () => {
    svc = await createRole('st_service');
    app = await createRole('st_app');
    db = await freshDatabase('st_nonsuper');
    // What the README has an administrator run (pgvector and dblink are in template1's public already).
    await db.query(`CREATE SCHEMA steadytext AUTHORIZATION ${svc.user}; GRANT USAGE ON SCHEMA steadytext TO ${app.user}`);
    s = await serve(db, db.urlAs(svc.user, svc.password), 'steadytext');
  }, 120_000);

  afterAll(async () => {
    await s?.stop();
    await db?.drop();
    if (svc) await dropRole(svc.user);
    if (app) await dropRole(app.user);
  });

  it('installs into its own schema and serves every path, without the superuser warning', async () => {
    const paths = await runServicePaths(s, db, 'steadytext', app);
    expect(paths.cacheRows).toBeGreaterThanOrEqual(1502);
    expect(paths.counters.callback_requests).toBeGreaterThanOrEqual(1);
    const owners = await db.query(`SELECT DISTINCT relowner::regrole::text AS o FROM pg_class WHERE relnamespace = 'steadytext'::regnamespace`);
    expect(owners).toEqual([{ o: svc.user }]);
    expect(s.logs.filter((l) => /is a superuser/.test(String(l.msg)))).toEqual([]);
  });
});
