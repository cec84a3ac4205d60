// Installing and upgrading the SQL objects: idempotent, concurrent-safe, upgrades in place.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { installSql, SqlInstallError } from '../../sql/install.js';
import { MIGRATIONS, SQL_VERSION } from '../../sql/version.js';
import { createRole, dropRole, freshDatabase, pgError, type TestDatabase } from './helpers.js';

const DEFAULTS: Record<string, string> = {
  daemon_host: 'localhost', daemon_port: '5557', daemon_timeout_ms: '30000', default_max_tokens: '512',
  default_seed: '42', default_model_size: 'small', cache_enabled: 'true', cache_ttl_seconds: '3600',
  debug_mode: 'false', daemon_auto_start: 'true', connection_pool_size: '4',
};

const USER_FUNCTIONS = [
  'steadytext_generate', 'steadytext_embed', 'steadytext_generate_stream', 'steadytext_daemon_status',
  'steadytext_daemon_start', 'steadytext_daemon_stop', 'steadytext_daemon_restart', 'steadytext_version',
  'steadytext_model_info', 'steadytext_config_get', 'steadytext_config_set', 'steadytext_cache_key',
];

const dbs: TestDatabase[] = [];
const fresh = async (template?: string) => {
  const db = await freshDatabase('st_install', template);
  dbs.push(db);
  return db;
};
afterAll(async () => {
  for (const db of dbs) await db.drop();
});

describe('installSql', () => {
  let db: TestDatabase;
  let c: pg.Client;
  beforeAll(async () => {
    db = await fresh();
    c = await db.connect();
  });

  it('installs every migration, then a second run is a no-op', async () => {
    const first = await installSql(c);
    expect(first).toMatchObject({ version: SQL_VERSION, installed: true, migrated: MIGRATIONS.map((m) => m.id), dblink: true, schema: 'public' });
    const objects = async () => (await c.query(`
      SELECT p.oid::regprocedure::text AS sig, p.proacl::text AS acl FROM pg_proc p WHERE p.proname LIKE '%steadytext%'
      UNION ALL SELECT c.oid::regclass::text, c.relacl::text FROM pg_class c WHERE c.relname LIKE 'steadytext%'
      ORDER BY 1`)).rows;
    const before = await objects();
    const second = await installSql(c);
    expect(second).toEqual({ version: SQL_VERSION, installed: false, migrated: [], dblink: true, schema: 'public' });
    expect(await objects()).toEqual(before);
    expect((await c.query('SELECT steadytext_version() AS v')).rows[0].v).toBe(SQL_VERSION);
    expect((await c.query('SELECT migration FROM steadytext_meta ORDER BY 1')).rows.map((r) => r.migration)).toEqual(MIGRATIONS.map((m) => m.id));
  });

  it('creates every config key with its default and a description', async () => {
    const rows = (await c.query('SELECT key, value, description FROM steadytext_config')).rows;
    const got = Object.fromEntries(rows.map((r) => [r.key, r.value]));
    expect(got).toEqual(DEFAULTS);
    for (const r of rows) expect(r.description).toMatch(/\w{4,}/);
  });

  it('has one function per user-facing name (GRANT ... ON FUNCTION name works without a signature)', async () => {
    const rows = (await c.query(`SELECT proname, count(*)::int AS n FROM pg_proc WHERE proname = ANY($1) GROUP BY proname`, [USER_FUNCTIONS])).rows;
    expect(Object.fromEntries(rows.map((r) => [r.proname, r.n]))).toEqual(Object.fromEntries(USER_FUNCTIONS.map((f) => [f, 1])));
    const role = await createRole('st_grantee');
    try {
      await c.query(`GRANT EXECUTE ON FUNCTION steadytext_generate TO ${role.user}`);
      await c.query(`REVOKE EXECUTE ON FUNCTION steadytext_daemon_stop FROM ${role.user}`);
    } finally {
      await dropRole(role.user, [db]);
    }
  });

  it('pins search_path on every SECURITY DEFINER function and keeps internal helpers from PUBLIC', async () => {
    const rows = (await c.query(`
      SELECT proname, prosecdef, array_to_string(proconfig, ';') AS config,
             has_function_privilege('public', oid, 'EXECUTE') AS public_exec
        FROM pg_proc WHERE proname LIKE '%steadytext%' AND pronamespace = 'public'::regnamespace`)).rows;
    expect(rows.length).toBeGreaterThan(15);
    for (const r of rows) {
      if (r.prosecdef) expect(r.config, r.proname).toBe('search_path=pg_catalog, public, pg_temp');
      const internal = r.proname.startsWith('_') || ['steadytext_stats_bump', 'steadytext_log', 'steadytext_cache_evict'].includes(r.proname);
      expect(r.public_exec, r.proname).toBe(!internal);
    }
    expect(rows.filter((r) => r.public_exec).map((r) => r.proname).sort()).toEqual([...USER_FUNCTIONS].sort());
  });

  it('every function that computes takes a trailing _steadytext_answer text default null', async () => {
    const rows = (await c.query(`
      SELECT proname, (proargnames)[pronargs] AS last, pg_get_function_arguments(oid) AS args
        FROM pg_proc WHERE proname = ANY($1)`, [[
      'steadytext_generate', 'steadytext_embed', 'steadytext_generate_stream', 'steadytext_daemon_status',
      'steadytext_daemon_start', 'steadytext_daemon_stop', 'steadytext_daemon_restart', 'steadytext_model_info']])).rows;
    expect(rows).toHaveLength(8);
    for (const r of rows) {
      expect(r.last, r.proname).toBe('_steadytext_answer');
      expect(r.args, r.proname).toMatch(/_steadytext_answer text DEFAULT NULL::text$/);
    }
    const sig = (name: string) => c.query(`SELECT pg_get_function_arguments(oid) AS a, pg_get_function_result(oid) AS r FROM pg_proc WHERE proname = $1`, [name]).then((x) => x.rows[0]);
    expect(await sig('steadytext_generate')).toEqual({
      a: 'prompt text, max_tokens integer DEFAULT NULL::integer, seed integer DEFAULT NULL::integer, temperature double precision DEFAULT NULL::double precision, model_size text DEFAULT NULL::text, _steadytext_answer text DEFAULT NULL::text',
      r: 'text',
    });
    expect(await sig('steadytext_embed')).toEqual({
      a: 'text text, seed integer DEFAULT NULL::integer, model_size text DEFAULT NULL::text, _steadytext_answer text DEFAULT NULL::text',
      r: 'vector',
    });
    expect((await sig('steadytext_generate_stream')).r).toBe('SETOF text');
    expect((await sig('steadytext_daemon_status')).r).toBe(
      'TABLE(running boolean, pid integer, host text, port integer, uptime_seconds integer, requests_processed bigint, errors_count bigint, avg_latency_ms double precision)');
    expect((await sig('steadytext_model_info')).r).toBe('TABLE(model_type text, model_size text, loaded boolean, memory_mb integer)');
  });

  it('concurrent installers serialise on the advisory lock: one installs, the others find it done', async () => {
    const other = await fresh();
    const clients = await Promise.all([1, 2, 3].map(() => other.connect()));
    const results = await Promise.all(clients.map((x) => installSql(x)));
    expect(results.filter((r) => r.installed)).toHaveLength(1);
    expect(results.flatMap((r) => r.migrated)).toEqual(MIGRATIONS.map((m) => m.id));
    await Promise.all(clients.map((x) => x.end()));
  });
});

describe('upgrades', () => {
  it('an older migration level upgrades in place, keeping config, cache rows and grants', async () => {
    const db = await fresh();
    const c = await db.connect();
    const old = await installSql(c, { target: MIGRATIONS[0].id });
    expect(old).toMatchObject({ installed: true, migrated: [MIGRATIONS[0].id], version: MIGRATIONS[0].version });
    expect((await c.query('SELECT steadytext_version() AS v')).rows[0].v).toBe(MIGRATIONS[0].version);
    expect((await c.query(`SELECT to_regclass('steadytext_stats') AS r`)).rows[0].r).toBeNull();

    await c.query(`SELECT steadytext_config_set('default_seed', '7'), steadytext_config_set('daemon_port', '6001'), steadytext_config_set('my_key', 'mine')`);
    await c.query(`INSERT INTO steadytext_models (role, size, identity) VALUES ('generation', 'small', 'gen-id')`);
    await c.query(`INSERT INTO steadytext_cache (cache_key, operation, model_identity, prompt, response) VALUES ('k1', 'generate', 'gen-id', 'p', 'kept answer')`);
    await c.query(`INSERT INTO steadytext_daemon_secret (secret) VALUES ('0123456789abcdef0123')`);
    const role = await createRole('st_upgrade');
    try {
      await c.query('REVOKE EXECUTE ON FUNCTION steadytext_generate FROM PUBLIC');
      await c.query(`GRANT EXECUTE ON FUNCTION steadytext_generate TO ${role.user}`);

      const up = await installSql(c);
      expect(up).toMatchObject({ installed: true, migrated: MIGRATIONS.slice(1).map((m) => m.id), version: SQL_VERSION });
      expect((await c.query('SELECT steadytext_version() AS v')).rows[0].v).toBe(SQL_VERSION);
      const cfg = Object.fromEntries((await c.query('SELECT key, value FROM steadytext_config')).rows.map((r) => [r.key, r.value]));
      expect(cfg).toEqual({ ...DEFAULTS, default_seed: '7', daemon_port: '6001', my_key: 'mine' });
      expect((await c.query(`SELECT response FROM steadytext_cache WHERE cache_key = 'k1'`)).rows).toEqual([{ response: 'kept answer' }]);
      expect((await c.query('SELECT secret FROM steadytext_daemon_secret')).rows).toEqual([{ secret: '0123456789abcdef0123' }]);
      expect((await c.query(`SELECT identity FROM steadytext_models`)).rows).toEqual([{ identity: 'gen-id' }]);
      const priv = (await c.query(`SELECT has_function_privilege('public', 'steadytext_generate(text,integer,integer,double precision,text,text)', 'EXECUTE') AS pub,
                                          has_function_privilege($1, 'steadytext_generate(text,integer,integer,double precision,text,text)', 'EXECUTE') AS mine`, [role.user])).rows[0];
      expect(priv).toEqual({ pub: false, mine: true });
      // What the new level added works on the old data.
      expect((await c.query('SELECT requests FROM steadytext_stats')).rows).toHaveLength(1);
      expect((await installSql(c)).installed).toBe(false);
    } finally {
      await c.end();
      await dropRole(role.user, [db]);
    }
  });
});

describe('schemas and prerequisites', () => {
  it('installs into another schema, with USAGE for PUBLIC and functions pinned to it', async () => {
    const db = await fresh();
    const c = await db.connect();
    const r = await installSql(c, { schema: 'steady text' });
    expect(r).toMatchObject({ installed: true, schema: 'steady text' });
    expect((await c.query(`SELECT to_regclass('public.steadytext_config') AS r`)).rows[0].r).toBeNull();
    expect((await c.query(`SELECT "steady text".steadytext_config_get('daemon_port') AS v`)).rows[0].v).toBe('5557');
    expect((await c.query(`SELECT "steady text".steadytext_embed('x', _steadytext_answer => '[1,2]')::text AS v`)).rows[0].v).toBe('[1,2]');
    expect((await c.query(`SELECT has_schema_privilege('public', 'steady text', 'USAGE') AS u`)).rows[0].u).toBe(true);
    // The caller's search_path cannot redirect what the SECURITY DEFINER functions read.
    await c.query(`CREATE TEMP TABLE steadytext_config (key text, value text); INSERT INTO steadytext_config VALUES ('daemon_port', '1')`);
    await c.query(`SET search_path = pg_temp, public`);
    expect((await c.query(`SELECT "steady text".steadytext_config_get('daemon_port') AS v`)).rows[0].v).toBe('5557');
    await c.end();
  });

  it('creates pgvector when the role may, and says how to get it when it may not', async () => {
    const bare = await fresh('template0');
    const role = await createRole('st_novector');
    try {
      const c = await bare.connect(bare.urlAs(role.user, role.password));
      const e = await installSql(c).then(() => undefined, (x) => x);
      expect(e).toBeInstanceOf(SqlInstallError);
      expect(e.code).toBe('PGVECTOR_MISSING');
      expect(e.message).toMatch(/needs pgvector: the "vector" extension is not installed in database "st_install_\w+" and role "st_novector_\w+" cannot create it/);
      expect(e.message).toMatch(/CREATE EXTENSION vector/);
      await c.end();

      const su = await bare.connect();
      const ok = await installSql(su);
      expect(ok.installed).toBe(true);
      expect((await su.query(`SELECT extname FROM pg_extension WHERE extname = 'vector'`)).rowCount).toBe(1);
      await su.end();
    } finally {
      await dropRole(role.user, [bare]);
    }
  });

  it('works without dblink when asked not to create it (callbacks then explain what is missing)', async () => {
    const db = await fresh('template0');
    const c = await db.connect();
    const r = await installSql(c, { dblink: false });
    expect(r.dblink).toBe(false);
    await c.query(`INSERT INTO steadytext_daemon_secret (secret) VALUES ('0123456789abcdef0123')`);
    const e = await pgError(c.query(`SELECT steadytext_generate('hello')`));
    expect(e.code).toBe('55000');
    expect(e.message).toMatch(/steadytext_generate has no cached answer and cannot call the pg-steadytext daemon: the dblink extension is not installed/);
    expect(e.hint).toMatch(/CREATE EXTENSION dblink/);
    await c.end();
  });
});

describe('privileges', () => {
  let db: TestDatabase;
  let role: { user: string; password: string };
  let u: pg.Client;
  beforeAll(async () => {
    db = await fresh();
    const c = await db.connect();
    await installSql(c);
    await c.query(`INSERT INTO steadytext_daemon_secret (secret) VALUES ('0123456789abcdef0123')`);
    await c.end();
    role = await createRole('st_priv');
    u = await db.connect(db.urlAs(role.user, role.password));
  });
  afterAll(async () => {
    await u?.end();
    await dropRole(role.user, [db]);
  });

  it('a non-owner can neither read nor write the cache (42501); stats and config stay readable', async () => {
    await u.query('SELECT * FROM steadytext_stats');
    await u.query('SELECT * FROM steadytext_config');
    for (const sql of [
      'SELECT count(*) FROM steadytext_cache',
      'SELECT * FROM steadytext_logs',
      `INSERT INTO steadytext_cache (cache_key, operation, model_identity, response) VALUES ('evil', 'generate', 'x', 'poison')`,
      `UPDATE steadytext_cache SET response = 'poison'`,
      `DELETE FROM steadytext_cache`,
      `INSERT INTO steadytext_models VALUES ('generation', 'small', 'evil')`,
      `UPDATE steadytext_config SET value = '1' WHERE key = 'daemon_port'`,
    ]) {
      expect((await pgError(u.query(sql))).code, sql).toBe('42501');
    }
  });

  it('the daemon secret and the internal helpers are out of reach', async () => {
    expect((await pgError(u.query('SELECT * FROM steadytext_daemon_secret'))).code).toBe('42501');
    expect((await pgError(u.query(`SELECT _steadytext_daemon_call('x', '{"op":"status"}')`))).code).toBe('42501');
    expect((await pgError(u.query(`SELECT steadytext_stats_bump('{"requests": 1000}')`))).code).toBe('42501');
    expect((await pgError(u.query(`SELECT steadytext_log('error', 'spam', 'x')`))).code).toBe('42501');
    expect((await pgError(u.query(`SELECT steadytext_cache_evict()`))).code).toBe('42501');
  });

  it('REVOKE EXECUTE ... FROM PUBLIC takes the function away; GRANT gives it back', async () => {
    const call = `SELECT steadytext_generate('hi', _steadytext_answer => 'answer') AS a`;
    expect((await u.query(call)).rows[0].a).toBe('answer');
    await db.query('REVOKE EXECUTE ON FUNCTION steadytext_generate FROM PUBLIC');
    const e = await pgError(u.query(call));
    expect(e.code).toBe('42501');
    expect(e.message).toMatch(/permission denied for function steadytext_generate/);
    await db.query(`GRANT EXECUTE ON FUNCTION steadytext_generate TO ${role.user}`);
    expect((await u.query(call)).rows[0].a).toBe('answer');
    await db.query('GRANT EXECUTE ON FUNCTION steadytext_generate TO PUBLIC');
  });
});

describe('refuses a schema where roles other than the service role can create objects', () => {
  const installError = (p: Promise<unknown>) => p.then(() => { throw new Error('expected installSql to refuse'); }, (e) => e as SqlInstallError);
  const installed = async (db: TestDatabase, schema: string) =>
    (await db.query(`SELECT to_regclass($1) AS r`, [`"${schema}".steadytext_config`]))[0].r !== null;

  it('PUBLIC holding CREATE on public (every database upgraded from before PostgreSQL 15): refused, fixed by REVOKE', async () => {
    const db = await fresh();
    await db.query('GRANT CREATE ON SCHEMA public TO PUBLIC');
    const c = await db.connect();
    const e = await installError(installSql(c));
    expect(e).toBeInstanceOf(SqlInstallError);
    expect(e.code).toBe('UNSAFE_SCHEMA');
    expect(e.message).toMatch(/will not install into schema "public" of database "st_install_\w+": roles other than the service role "postgres" can create objects there \(PUBLIC \(every role\) holds CREATE on it\)/);
    expect(e.message).toMatch(/would run with the service role's privileges/);
    expect(e.message).toContain('REVOKE CREATE ON SCHEMA "public" FROM PUBLIC');
    expect(e.message).toContain('CREATE SCHEMA steadytext AUTHORIZATION "postgres", then start the proxy with --schema steadytext');
    expect(await installed(db, 'public')).toBe(false);
    // The caller's session is left as it was.
    expect((await c.query('SHOW search_path')).rows[0].search_path).toBe('"$user", public');

    await db.query('REVOKE CREATE ON SCHEMA public FROM PUBLIC');
    expect((await installSql(c)).installed).toBe(true);
    await c.end();
  });

  it('a role granted CREATE, directly or through a group, or owning the schema: refused, naming it and the fix', async () => {
    const db = await fresh();
    const x = await createRole('st_creator');
    try {
      const c = await db.connect();
      await db.query(`GRANT CREATE ON SCHEMA public TO ${x.user}`);
      let e = await installError(installSql(c));
      expect(e.code).toBe('UNSAFE_SCHEMA');
      expect(e.message).toContain(`role "${x.user}" holds CREATE on it`);
      expect(e.message).toContain(`REVOKE CREATE ON SCHEMA "public" FROM "${x.user}"`);
      await db.query(`REVOKE CREATE ON SCHEMA public FROM ${x.user}`);

      await db.query(`CREATE ROLE ${x.user}_group NOLOGIN; GRANT ${x.user}_group TO ${x.user}; CREATE SCHEMA grouped; GRANT CREATE ON SCHEMA grouped TO ${x.user}_group`);
      e = await installError(installSql(c, { schema: 'grouped' }));
      expect(e.code).toBe('UNSAFE_SCHEMA');
      expect(e.message).toContain(`role "${x.user}_group" (which "${x.user}" can act as) holds CREATE on it`);

      await db.query(`CREATE SCHEMA theirs AUTHORIZATION ${x.user}`);
      e = await installError(installSql(c, { schema: 'theirs' }));
      expect(e.code).toBe('UNSAFE_SCHEMA');
      expect(e.message).toContain(`role "${x.user}" owns it`);
      expect(e.message).toContain('ALTER SCHEMA "theirs" OWNER TO "postgres"');
      expect(await installed(db, 'theirs')).toBe(false);
      await c.end();
      await db.query(`DROP SCHEMA theirs, grouped; DROP OWNED BY ${x.user}_group; DROP ROLE ${x.user}_group`);
    } finally {
      await dropRole(x.user, [db]);
    }
  });

  it("another role owning the database owns public too: refused there, a schema of the service role's own works; the owner itself may install in public", async () => {
    const db = await fresh();
    const owner = await createRole('st_dbowner');
    try {
      await db.query(`ALTER DATABASE ${db.name} OWNER TO ${owner.user}`);
      const su = await db.connect();
      const e = await installError(installSql(su));
      expect(e.code).toBe('UNSAFE_SCHEMA');
      expect(e.message).toContain(`the owner of database "${db.name}", through pg_database_owner, owns it`);
      const r = await installSql(su, { schema: 'steadytext' });
      expect(r).toMatchObject({ installed: true, schema: 'steadytext' });
      expect((await su.query(`SELECT nspowner::regrole::text AS o FROM pg_namespace WHERE nspname = 'steadytext'`)).rows[0].o).toBe('postgres');
      await su.end();

      const own = await db.connect(db.urlAs(owner.user, owner.password));
      expect(await installSql(own)).toMatchObject({ installed: true, schema: 'public' });
      expect((await own.query(`SELECT relowner::regrole::text AS o FROM pg_class WHERE oid = 'public.steadytext_cache'::regclass`)).rows[0].o).toBe(owner.user);
      await own.end();
    } finally {
      await db.query(`ALTER DATABASE ${db.name} OWNER TO postgres`);
      await dropRole(owner.user, [db]);
    }
  });

  it('objects already there that belong to a role the service role cannot act as, or that others can act as: refused', async () => {
    const db = await fresh();
    const svc = await createRole('st_svc');
    const other = await createRole('st_other');
    try {
      // Installed by the superuser; later a non-superuser service role is given CREATE on the schema.
      const su = await db.connect();
      await installSql(su, { schema: 'st_super' });
      await su.query(`GRANT CREATE ON SCHEMA st_super TO ${svc.user}`);
      const s = await db.connect(db.urlAs(svc.user, svc.password));
      let e = await installError(installSql(s, { schema: 'st_super' }));
      expect(e.code).toBe('WRONG_OWNER');
      expect(e.message).toMatch(/the steadytext objects in schema "st_super" \(.*\) belong to role "postgres", and the service role "st_svc_\w+" can neither act as it nor own them/);
      expect(e.message).toContain('Connect the proxy\'s service URL (--service-url) as "postgres"');

      // Installed as a group role that both the service role and another login role belong to.
      await su.query(`CREATE ROLE ${svc.user}_o NOLOGIN; GRANT ${svc.user}_o TO ${svc.user}, ${other.user};
        CREATE SCHEMA st_group AUTHORIZATION ${svc.user}; GRANT USAGE, CREATE ON SCHEMA st_group TO ${svc.user}_o; SET ROLE ${svc.user}_o`);
      await installSql(su, { schema: 'st_group' });
      await su.query(`RESET ROLE; REVOKE CREATE ON SCHEMA st_group FROM ${svc.user}_o`);
      e = await installError(installSql(s, { schema: 'st_group' }));
      expect(e.code).toBe('WRONG_OWNER');
      expect(e.message).toContain(`belong to role "${svc.user}_o", which "${other.user}" can act as besides the service role "${svc.user}"`);
      await su.query(`REVOKE ${svc.user}_o FROM ${other.user}`);
      expect(await installSql(s, { schema: 'st_group' })).toMatchObject({ installed: false, schema: 'st_group' });
      await s.end();
      await su.query(`DROP SCHEMA st_group, st_super CASCADE; DROP ROLE ${svc.user}_o`);
      await su.end();
    } finally {
      await dropRole(svc.user, [db]);
      await dropRole(other.user, [db]);
    }
  });

  it('functions another role created before CREATE was revoked: refused, since the SECURITY DEFINER functions look names up there', async () => {
    const db = await fresh();
    const x = await createRole('st_planter');
    try {
      await db.query(`GRANT CREATE ON SCHEMA public TO ${x.user}`);
      const planter = await db.connect(db.urlAs(x.user, x.password));
      // A better match than pg_catalog.format(text, VARIADIC "any") for format('%s', some_text).
      await planter.query(`CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql AS 'SELECT $2'`);
      await planter.end();
      await db.query(`REVOKE CREATE ON SCHEMA public FROM ${x.user}`);
      const c = await db.connect();
      const e = await installError(installSql(c));
      expect(e.code).toBe('UNSAFE_SCHEMA');
      expect(e.message).toContain(`will not install into schema "public": it holds functions or operators of roles other than the service role "postgres" (role "${x.user}" owns public.format(text,text))`);
      expect(e.message).toContain('ALTER FUNCTION ... SET SCHEMA');
      await db.query('DROP FUNCTION public.format(text, text)');
      expect((await installSql(c)).installed).toBe(true);
      await c.end();
    } finally {
      await dropRole(x.user, [db]);
    }
  });

  it('a service role that may not create in the schema is told how to get one it may', async () => {
    const db = await fresh();
    const svc = await createRole('st_nocreate');
    try {
      const s = await db.connect(db.urlAs(svc.user, svc.password));
      const e = await installError(installSql(s));
      expect(e.code).toBe('NO_PRIVILEGE');
      expect(e.message).toContain(`the service role "${svc.user}" may not create the steadytext objects in schema "public"`);
      expect(e.message).toContain(`CREATE SCHEMA steadytext AUTHORIZATION "${svc.user}"`);
      await s.end();
    } finally {
      await dropRole(svc.user, [db]);
    }
  });
});
