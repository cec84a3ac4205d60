// The embedded database's templates (scripts/pglite-template.mjs): a new data directory restored from the one made
// with the steadytext objects installed is, once the start has prepared it (prepareDatabase, as the CLI does), the
// same database as one restored from the bare template and installed at start: the same objects, grants, config and
// migrations recorded, with nothing left to migrate; what is each instance's own (the daemon secret) is its own. A data
// directory is restored by the worker (embedded/pglite-worker.ts restore()), the same as PGlite restores one in memory.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startEmbedded, type Embedded } from '../../embedded/index.js';
import { prepareDatabase, type Prepared } from '../../sql/databases.js';
import { SQL_VERSION } from '../../sql/version.js';

const ROOT = join(import.meta.dirname, '../..');

/** Everything the install makes, as text: objects with their definitions and grants, and the rows it writes. */
const SNAPSHOT = `SELECT pg_catalog.jsonb_build_object(
  'schemas', (SELECT jsonb_agg(jsonb_build_array(nspname, nspowner::regrole::text, nspacl::text) ORDER BY nspname) FROM pg_namespace WHERE nspname !~ '^pg_(toast|temp)'),
  'extensions', (SELECT jsonb_agg(jsonb_build_array(extname, extversion, extnamespace::regnamespace::text) ORDER BY extname) FROM pg_extension),
  'relations', (SELECT jsonb_agg(jsonb_build_array(c.relname, c.relkind, c.relowner::regrole::text, c.relacl::text, c.reloptions::text,
      (SELECT jsonb_agg(jsonb_build_array(a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attnum)
         FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
      CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END) ORDER BY c.relname)
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace),
  'indexes', (SELECT jsonb_agg(indexdef ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'),
  'functions', (SELECT jsonb_agg(jsonb_build_array(p.oid::regprocedure::text, p.proowner::regrole::text, p.proacl::text, p.prosecdef, p.proconfig::text, md5(pg_get_functiondef(p.oid)))
      ORDER BY p.oid::regprocedure::text) FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prokind <> 'a'),
  'triggers', (SELECT jsonb_agg(pg_get_triggerdef(oid) ORDER BY tgname) FROM pg_trigger WHERE NOT tgisinternal),
  'roles', (SELECT jsonb_agg(rolname ORDER BY rolname) FROM pg_roles),
  'default_acl', (SELECT jsonb_agg(defaclacl::text ORDER BY defaclacl::text) FROM pg_default_acl),
  'meta', (SELECT jsonb_agg(jsonb_build_array(migration, version, checksum) ORDER BY migration) FROM steadytext_meta),
  'config', (SELECT jsonb_agg(jsonb_build_array(key, value) ORDER BY key) FROM steadytext_config),
  'rows', (SELECT jsonb_object_agg(c.relname, (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM public.%I', c.relname), false, true, '')))[1]::text)
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'),
  'version', steadytext_version())::text AS s`;

interface Started {
  db: Embedded;
  from: unknown;
  prepared: Prepared;
  snapshot: unknown;
  secret: string;
}

const running: Embedded[] = [];
afterAll(async () => {
  await Promise.all(running.map((d) => d.stop()));
});

/** A new data directory, started from the template `objects` picks, prepared as the CLI's start prepares it. */
async function start(objects: string | undefined, memory = false): Promise<Started> {
  const logged: object[] = [];
  const db = await startEmbedded({
    dataDir: memory ? null : join(mkdtempSync(join(tmpdir(), 'st-template-')), 'pgdata'),
    objects,
    logger: { info: (o) => logged.push(o), error: () => {} },
    onCrash: () => {},
  }).ready;
  running.push(db);
  const prepared = await prepareDatabase(db.url);
  const c = new pg.Client(db.url);
  await c.connect();
  try {
    const snapshot = JSON.parse((await c.query<{ s: string }>(SNAPSHOT)).rows[0].s) as unknown;
    const secret = (await c.query<{ secret: string }>('SELECT secret FROM steadytext_daemon_secret')).rows[0].secret;
    return { db, from: (logged.find((o) => 'from' in o) as { from?: unknown } | undefined)?.from, prepared, snapshot, secret };
  } finally {
    await c.end();
  }
}

describe('a new embedded database from the template with the steadytext objects', () => {
  let objects: string;
  let bare: Started;
  let made: Started;
  beforeAll(async () => {
    // As npm install and prepare run it; it makes what is missing only.
    const r = spawnSync(process.execPath, [join(ROOT, 'scripts/pglite-template.mjs')], { cwd: ROOT, encoding: 'utf8', timeout: 170_000 });
    expect(r.stderr).toBe('');
    const names = readdirSync(ROOT).filter((f) => /^pglite-template-[\d.]+-sql-.+\.tar\.gz$/.test(f));
    expect(names).toHaveLength(1); // the script keeps the one of the current migrations only
    objects = /^pglite-template-[\d.]+-(sql-.+)\.tar\.gz$/.exec(names[0])![1];
    [bare, made] = await Promise.all([start(undefined), start(objects)]);
  }, 240_000);

  test('is named for the objects it holds, and a new directory starts from it', () => {
    expect(objects.startsWith(`sql-${SQL_VERSION}-`)).toBe(true);
    expect(made.from).toBe(join(ROOT, `pglite-template-${/pglite-template-([\d.]+)-/.exec(String(made.from))?.[1]}-${objects}.tar.gz`));
    expect(bare.from).toMatch(/pglite-template-[\d.]+\.tar\.gz$/);
  });

  test('the start finds them at the current version and migrates nothing; from the bare template it installs them all', () => {
    expect(made.prepared.migrated).toEqual([]);
    expect(made.prepared.version).toBe(SQL_VERSION);
    expect(bare.prepared.migrated.length).toBeGreaterThan(0);
    expect(bare.prepared.version).toBe(SQL_VERSION);
  });

  test('the same database as one installed at start: objects, grants, config, migrations recorded, rows', () => {
    const s = made.snapshot as Record<string, unknown[] | null>;
    for (const k of ['relations', 'functions', 'meta', 'config', 'extensions']) expect(s[k]?.length, k).toBeGreaterThan(0);
    expect(made.snapshot).toEqual(bare.snapshot);
  });

  test("the daemon secret is each instance's own, made at its first start", async () => {
    const again = await start(objects);
    expect(new Set([bare.secret, made.secret, again.secret]).size).toBe(3);
    expect(made.secret).toMatch(/^[0-9a-f]{64}$/);
  });

  test('restored into a data directory by the worker, the same database as PGlite restores in memory', async () => {
    const inMemory = await start(objects, true);
    expect(inMemory.prepared.migrated).toEqual([]);
    expect(inMemory.snapshot).toEqual(made.snapshot);
  });

  test('a label no template was made for starts from the bare one, and the start installs everything', async () => {
    const other = await start('sql-0.0.0-000000000000');
    expect(other.from).toBe(bare.from);
    expect(other.prepared.migrated).toEqual(bare.prepared.migrated);
  });
});
