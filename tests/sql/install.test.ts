// Installing and upgrading the SQL objects: idempotent, concurrent-safe, upgrades in place.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { installSql, SqlInstallError } from '../../sql/install.js';
import { registerModels, storeCacheEntry } from '../../sql/store.js';
import { MIGRATIONS, SQL_VERSION } from '../../sql/version.js';
import { identityArguments, SIGNATURES, sqlArguments, STEADYTEXT_FUNCTIONS, type Parameter } from '../../sql/signatures.js';
import { createRole, dropRole, freshDatabase, pgError, type TestDatabase } from './helpers.js';

const DEFAULTS: Record<string, string> = {
  daemon_host: 'localhost', daemon_port: '5557', daemon_timeout_ms: '30000', default_max_tokens: '512',
  default_seed: '42', default_model_size: 'small', cache_enabled: 'true', cache_ttl_seconds: '3600',
  debug_mode: 'false', daemon_auto_start: 'true', connection_pool_size: '4', callback_transport: 'auto', inband_rerun: 'true',
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

  it('pins search_path on every SECURITY DEFINER function; PUBLIC runs what reads and computes, not administration or internal helpers', async () => {
    const rows = (await c.query(`
      SELECT proname, prosecdef, array_to_string(proconfig, ';') AS config,
             has_function_privilege('public', oid, 'EXECUTE') AS public_exec,
             has_function_privilege(proowner, oid, 'EXECUTE') AS owner_exec
        FROM pg_proc WHERE proname LIKE '%steadytext%' AND pronamespace = 'public'::regnamespace`)).rows;
    expect(rows.length).toBeGreaterThan(25);
    for (const r of rows) {
      if (r.prosecdef) expect(r.config, r.proname).toBe('search_path=pg_catalog, public, pg_temp;standard_conforming_strings=on');
      // Whatever the caller set, every function reads its own literals (regexes, conninfo quoting) as standard strings.
      expect(r.config ?? '', r.proname).toContain('standard_conforming_strings=on');
      expect(r.owner_exec, r.proname).toBe(true);
    }
    const byName = new Map(rows.map((r) => [r.proname as string, r]));
    // Reading and computing: every role, until an administrator REVOKEs it.
    const open = ['steadytext_generate', 'steadytext_embed', 'steadytext_generate_stream', 'steadytext_daemon_status',
      'steadytext_model_info', 'steadytext_config_get', 'steadytext_version', 'steadytext_cache_key'];
    // Administration (issue 10): the owning role and whoever it GRANTs EXECUTE.
    const admin = ['steadytext_config_set', 'steadytext_daemon_start', 'steadytext_daemon_stop', 'steadytext_daemon_restart'];
    expect([...open, ...admin].sort()).toEqual([...USER_FUNCTIONS].sort());
    // The level-1 signatures, kept for views and functions created against them: SECURITY INVOKER, so
    // running them takes EXECUTE on the function they call as well.
    const legacy = ['generate', 'embed', 'generate_stream', 'daemon_status', 'model_info', 'daemon_start', 'daemon_stop', 'daemon_restart']
      .map((f) => `_steadytext_v1_${f}`);
    for (const f of legacy) expect(byName.get(f)?.prosecdef, f).toBe(false);
    expect(rows.filter((r) => r.public_exec).map((r) => r.proname).sort()).toEqual([...open, ...legacy].sort());
    for (const f of [...admin, '_steadytext_mailbox_read', '_steadytext_mailbox_take', '_steadytext_raise_posted', '_steadytext_lookup_ttl', '_steadytext_daemon_call',
      '_steadytext_dblink_call', '_steadytext_inband_call', '_steadytext_inband_lo_take', '_steadytext_inband_lo_put',
      '_steadytext_inband_sweep', '_steadytext_hmac', '_steadytext_config_check',
      'steadytext_stats_bump', 'steadytext_log', 'steadytext_cache_evict']) {
      expect(byName.get(f)?.public_exec, f).toBe(false);
    }
  });

  it("every function has exactly the seed's signature, so the seed's GRANT, REVOKE, COMMENT and ALTER FUNCTION name it", async () => {
    // The signature table (sql/signatures.ts) is the seed's signatures: the installed objects must agree with it.
    const SEED = Object.fromEntries(STEADYTEXT_FUNCTIONS.map((fn) => {
      const params: readonly Parameter[] = SIGNATURES[fn].params;
      return [fn, { args: sqlArguments(fn), names: params.map((p) => p.name), types: params.map((p) => p.type), result: SIGNATURES[fn].returns }];
    }));
    const rows = (await c.query(`
      SELECT proname, pg_get_function_arguments(oid) AS args, pg_get_function_result(oid) AS result,
             pg_get_function_identity_arguments(oid) AS ident,
             coalesce((proargnames)[1:pronargs], '{}') AS names,
             ARRAY(SELECT format_type(t, NULL) FROM unnest(proargtypes) WITH ORDINALITY AS a(t, i) ORDER BY i) AS types
        FROM pg_proc WHERE proname = ANY($1) AND pronamespace = 'public'::regnamespace`, [Object.keys(SEED)])).rows;
    expect(rows.map((r) => r.proname).sort()).toEqual(Object.keys(SEED).sort());
    for (const r of rows) {
      const want = SEED[r.proname];
      expect({ args: r.args, names: r.names, types: r.types, result: r.result }, r.proname).toEqual(want);
      expect(r.ident, r.proname).toBe(identityArguments(r.proname));
    }

    // The seed's own statements, with its signatures, work and take effect.
    const role = await createRole('st_seedsql');
    try {
      await c.query(`GRANT EXECUTE ON FUNCTION steadytext_daemon_stop() TO ${role.user}`);
      await c.query(`REVOKE EXECUTE ON FUNCTION steadytext_generate(text, integer, integer, double precision, text) FROM PUBLIC`);
      const may = async () => (await c.query(`SELECT has_function_privilege($1, 'steadytext_daemon_stop()', 'EXECUTE') AS stop,
        has_function_privilege($1, 'steadytext_generate(text, integer, integer, double precision, text)', 'EXECUTE') AS gen`, [role.user])).rows[0];
      expect(await may()).toEqual({ stop: true, gen: false });
      await c.query(`REVOKE EXECUTE ON FUNCTION steadytext_daemon_stop() FROM ${role.user}`);
      await c.query(`GRANT EXECUTE ON FUNCTION steadytext_generate(text, integer, integer, double precision, text) TO PUBLIC`);
      expect(await may()).toEqual({ stop: false, gen: true });

      await c.query(`COMMENT ON FUNCTION steadytext_embed(text, integer, text) IS 'our embeddings'`);
      expect((await c.query(`SELECT obj_description('steadytext_embed(text, integer, text)'::regprocedure, 'pg_proc') AS d`)).rows[0].d).toBe('our embeddings');
      await c.query(`COMMENT ON FUNCTION steadytext_embed(text, integer, text) IS NULL`);

      await c.query(`ALTER FUNCTION steadytext_generate_stream(text, integer, integer) SET work_mem = '8MB'`);
      await c.query(`ALTER FUNCTION steadytext_generate_stream(text, integer, integer) COST 500`);
      expect((await c.query(`SELECT proconfig, procost FROM pg_proc WHERE oid = 'steadytext_generate_stream(text, integer, integer)'::regprocedure`)).rows[0])
        .toEqual({ proconfig: ['search_path=pg_catalog, public, pg_temp', 'standard_conforming_strings=on', 'work_mem=8MB'], procost: 500 });
      await c.query(`ALTER FUNCTION steadytext_generate_stream(text, integer, integer) RESET work_mem`);
      await c.query(`ALTER FUNCTION steadytext_generate_stream(text, integer, integer) COST 100`);
      expect((await c.query(`SELECT proconfig FROM pg_proc WHERE oid = 'steadytext_generate_stream(text, integer, integer)'::regprocedure`)).rows[0].proconfig)
        .toEqual(['search_path=pg_catalog, public, pg_temp', 'standard_conforming_strings=on']);
    } finally {
      await dropRole(role.user, [db]);
    }
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
  it('an older migration level upgrades in place, keeping config, cache rows, models and the secret', async () => {
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
    try {
      const up = await installSql(c);
      expect(up).toMatchObject({ installed: true, migrated: MIGRATIONS.slice(1).map((m) => m.id), version: SQL_VERSION });
      expect((await c.query('SELECT steadytext_version() AS v')).rows[0].v).toBe(SQL_VERSION);
      const cfg = Object.fromEntries((await c.query('SELECT key, value FROM steadytext_config')).rows.map((r) => [r.key, r.value]));
      expect(cfg).toEqual({ ...DEFAULTS, default_seed: '7', daemon_port: '6001', my_key: 'mine' });
      expect((await c.query(`SELECT response FROM steadytext_cache WHERE cache_key = 'k1'`)).rows).toEqual([{ response: 'kept answer' }]);
      expect((await c.query('SELECT secret FROM steadytext_daemon_secret')).rows).toEqual([{ secret: '0123456789abcdef0123' }]);
      expect((await c.query(`SELECT identity FROM steadytext_models`)).rows).toEqual([{ identity: 'gen-id' }]);
      // What the later levels added works on the old data.
      expect((await c.query('SELECT requests FROM steadytext_stats')).rows).toHaveLength(1);
      expect((await c.query('SELECT count(*)::int AS n FROM steadytext_mailbox')).rows[0].n).toBe(0);
      expect((await installSql(c)).installed).toBe(false);
    } finally {
      await c.end();
    }
  });

  // Level 3 -> 4 renames each level-1 function to _steadytext_v1_* (same OID, so everything bound to it
  // follows: views, rules, defaults, its ACL, its comment) and creates the seed-signature function anew.
  // What carries over, then: a view (bound by OID) now calls _steadytext_v1_*, whose level-3 ACL it keeps,
  // and which calls the new function as the caller (SECURITY INVOKER); a PL/pgSQL function (resolved by
  // name at run time) calls the new function directly. GRANTs and REVOKEs on the user's own view and
  // function are untouched. GRANTs and REVOKEs made on the level-3 functions themselves stay on the
  // _steadytext_v1_* functions; the last test says what the new functions should inherit.
  describe('from level 3, with user objects built on the level-3 functions', () => {
    let db: TestDatabase;
    let su: pg.Client;
    let user: { user: string; password: string };
    let other: { user: string; password: string };
    const v = `[${Array.from({ length: 1024 }, (_, i) => (i % 5) / 4).join(',')}]`;
    beforeAll(async () => {
      db = await fresh();
      su = await db.connect();
      const level3 = MIGRATIONS.findIndex((m) => m.id === '003_private_cache');
      expect(level3).toBeGreaterThan(0);
      expect(await installSql(su, { target: MIGRATIONS[level3].id })).toMatchObject({ installed: true, version: MIGRATIONS[level3].version });
      user = await createRole('st_upuser');
      other = await createRole('st_upother');
      await registerModels(su, [{ role: 'generation', size: 'small', identity: 'gen-id' }, { role: 'embedding', size: 'small', identity: 'emb-id' }]);
      await storeCacheEntry(su, { op: 'generate', identity: 'gen-id', prompt: 'x', maxTokens: 512, seed: 42, temperature: 0, response: 'answer to x' });
      await storeCacheEntry(su, { op: 'embed', identity: 'emb-id', text: 'doc', seed: 42, embedding: v });
      await su.query(`
        CREATE VIEW generated AS SELECT steadytext_generate('x') AS g;
        GRANT SELECT ON generated TO PUBLIC;
        CREATE FUNCTION embed_it(t text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_embed(t)::text; END $$;
        REVOKE EXECUTE ON FUNCTION embed_it(text) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION embed_it(text) TO ${user.user};
        REVOKE EXECUTE ON FUNCTION steadytext_generate FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION steadytext_generate TO ${user.user};
        GRANT EXECUTE ON FUNCTION steadytext_daemon_stop TO ${user.user};
        COMMENT ON FUNCTION steadytext_generate IS 'level 3 comment'`);
      // They work at level 3 already.
      expect((await su.query('SELECT g FROM generated')).rows).toEqual([{ g: 'answer to x' }]);
      expect((await su.query(`SELECT embed_it('doc') = $1::vector::text AS same`, [v])).rows[0].same).toBe(true);

      expect(await installSql(su)).toMatchObject({ installed: true, migrated: MIGRATIONS.slice(level3 + 1).map((m) => m.id), version: SQL_VERSION });
    });
    afterAll(async () => {
      await su?.end();
      for (const r of [user, other]) if (r) await dropRole(r.user, [db]);
    });

    it('the view and the function still work, for the owner and for the role they were granted to', async () => {
      expect((await su.query('SELECT g FROM generated')).rows).toEqual([{ g: 'answer to x' }]);
      expect((await su.query(`SELECT embed_it('doc') = $1::vector::text AS same`, [v])).rows[0].same).toBe(true);
      // The view is bound to the renamed level-1 function; the PL/pgSQL function finds the new one by name.
      expect((await su.query(`SELECT pg_get_viewdef('generated'::regclass) AS d`)).rows[0].d).toMatch(/_steadytext_v1_generate\('x'::text\)/);
      const u = await db.connect(db.urlAs(user.user, user.password));
      try {
        expect((await u.query('SELECT g FROM generated')).rows).toEqual([{ g: 'answer to x' }]);
        expect((await u.query(`SELECT embed_it('doc') = $1::vector::text AS same`, [v])).rows[0].same).toBe(true);
      } finally {
        await u.end();
      }
    });

    it('their own grants and the level-3 ACL still decide who may use them', async () => {
      const o = await db.connect(db.urlAs(other.user, other.password));
      try {
        expect((await pgError(o.query(`SELECT embed_it('doc')`))).code).toBe('42501');
        // The view is open to PUBLIC, the level-3 generate was not: the ACL came along with the renamed function.
        const e = await pgError(o.query('SELECT g FROM generated'));
        expect(e.code).toBe('42501');
        expect(e.message).toMatch(/permission denied for function _steadytext_v1_generate/);
      } finally {
        await o.end();
      }
      const acl = (await su.query(`SELECT has_function_privilege('public', '_steadytext_v1_generate(text, integer, integer, double precision, text, text)', 'EXECUTE') AS pub,
        has_function_privilege($1, '_steadytext_v1_generate(text, integer, integer, double precision, text, text)', 'EXECUTE') AS mine,
        obj_description('_steadytext_v1_generate(text, integer, integer, double precision, text, text)'::regprocedure, 'pg_proc') AS comment`, [user.user])).rows[0];
      expect(acl).toEqual({ pub: false, mine: true, comment: 'level 3 comment' });
    });

    // Fails on SQL objects 1.3.0: 004 creates the new functions with default privileges, so a REVOKE from
    // PUBLIC made at level 3 is lost (every role may generate again, through the proxy too, which checks
    // EXECUTE on the new function) and a GRANT to a role is dropped. See the report accompanying this test.
    it('EXECUTE granted or revoked on a level-3 function holds on the function that replaces it', async () => {
      const may = async (who: string, fn: string) => (await su.query(`SELECT has_function_privilege($1, $2, 'EXECUTE') AS ok`, [who, fn])).rows[0].ok;
      const generate = 'steadytext_generate(text, integer, integer, double precision, text)';
      expect({ pub: await may('public', generate), mine: await may(user.user, generate) }).toEqual({ pub: false, mine: true });
      // Administration is not PUBLIC's from level 4 on, but a role the owner granted it keeps it.
      expect({ pub: await may('public', 'steadytext_daemon_stop()'), mine: await may(user.user, 'steadytext_daemon_stop()') }).toEqual({ pub: false, mine: true });
      // Untouched at level 3: the level-4 defaults.
      expect(await may('public', 'steadytext_embed(text, integer, text)')).toBe(true);
      expect(await may('public', 'steadytext_daemon_start()')).toBe(false);
    });
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
    // Handed-over answers are read from that schema's cache and mailbox.
    await registerModels(c, [{ role: 'embedding', size: 'small', identity: 'emb-id' }], 'steady text');
    await storeCacheEntry(c, { op: 'embed', identity: 'emb-id', text: 'x', seed: 42, embedding: '[1,2]' }, 'steady text');
    expect((await c.query(`SELECT "steady text".steadytext_embed('x')::text AS v`)).rows[0].v).toBe('[1,2]');
    await c.query(`INSERT INTO "steady text".steadytext_mailbox (backend_pid, topic, answer) VALUES (pg_backend_pid(), 'status', '{"running": true, "pid": 3}')`);
    expect((await c.query(`SELECT running, pid FROM "steady text".steadytext_daemon_status()`)).rows[0]).toEqual({ running: true, pid: 3 });
    expect((await c.query(`SELECT has_schema_privilege('public', 'steady text', 'USAGE') AS u`)).rows[0].u).toBe(true);
    // The caller's search_path cannot redirect what the SECURITY DEFINER functions read.
    await c.query(`CREATE TEMP TABLE steadytext_config (key text, value text); INSERT INTO steadytext_config VALUES ('daemon_port', '1')`);
    await c.query(`CREATE TEMP TABLE steadytext_mailbox (backend_pid int, topic text, answer text, created_at timestamptz DEFAULT now());
      INSERT INTO steadytext_mailbox VALUES (pg_backend_pid(), 'status', '{"running": false, "pid": 666}')`);
    await c.query(`CREATE TEMP TABLE steadytext_cache (LIKE "steady text".steadytext_cache); INSERT INTO steadytext_cache SELECT * FROM "steady text".steadytext_cache; UPDATE steadytext_cache SET embedding = '[6,6]'`);
    await c.query(`SET search_path = pg_temp, public`);
    expect((await c.query(`SELECT "steady text".steadytext_config_get('daemon_port') AS v`)).rows[0].v).toBe('5557');
    expect((await c.query(`SELECT running, pid FROM "steady text".steadytext_daemon_status()`)).rows[0]).toEqual({ running: true, pid: 3 });
    expect((await c.query(`SELECT "steady text".steadytext_embed('x')::text AS v`)).rows[0].v).toBe('[1,2]');
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
    // Asked for dblink explicitly (auto would ask in-band: tests/sql/inband.test.ts).
    await c.query(`SELECT steadytext_config_set('callback_transport', 'dblink')`);
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

  it('REVOKE EXECUTE ... FROM PUBLIC takes the function away, handed-over answers included; GRANT gives it back', async () => {
    await db.query(`INSERT INTO steadytext_models (role, size, identity) VALUES ('generation', 'small', 'gen-id')`);
    const owner = await db.connect();
    try {
      await storeCacheEntry(owner, { op: 'generate', identity: 'gen-id', prompt: 'hi', maxTokens: 512, seed: 42, temperature: 0, response: 'answer' });
    } finally {
      await owner.end();
    }
    const call = `SELECT steadytext_generate('hi') AS a`;
    expect((await u.query(call)).rows[0].a).toBe('answer');
    await db.query('REVOKE EXECUTE ON FUNCTION steadytext_generate(text, integer, integer, double precision, text) FROM PUBLIC');
    try {
      const e = await pgError(u.query(call));
      expect(e.code).toBe('42501');
      expect(e.message).toMatch(/permission denied for function steadytext_generate/);
      await db.query(`GRANT EXECUTE ON FUNCTION steadytext_generate(text, integer, integer, double precision, text) TO ${role.user}`);
      expect((await u.query(call)).rows[0].a).toBe('answer');
      await db.query(`REVOKE EXECUTE ON FUNCTION steadytext_generate(text, integer, integer, double precision, text) FROM ${role.user}`);
      expect((await pgError(u.query(call))).code).toBe('42501');
    } finally {
      await db.query('GRANT EXECUTE ON FUNCTION steadytext_generate(text, integer, integer, double precision, text) TO PUBLIC');
    }
    expect((await u.query(call)).rows[0].a).toBe('answer');
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
