// Issue 10, item 10: the proxy changes a database only when asked. A fresh database without the vector
// and dblink extensions (TEMPLATE template0: template1 of the test cluster has them) gets nothing from
// sessions that connect and run ordinary SQL through the proxy, on either protocol; the steadytext
// objects (and the extensions they need) appear on the first statement that names steadytext, or on
// CREATE EXTENSION pg_steadytext.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, onTestFinished, test, vi } from 'vitest';
import pg from 'pg';
import { startStack, type Stack } from '../api/helpers.js';
import { adminQuery } from '../sql/helpers.js';
import { createRole, dropRoles } from './helpers.js';

let s: Stack;
const created: string[] = [];
const roles: string[] = [];
beforeAll(async () => {
  s = await startStack('st_firstuse');
});
afterAll(async () => {
  await s?.stop();
  for (const db of created) await adminQuery(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch(() => undefined);
  await dropRoles(...roles);
});

async function freshDatabase(): Promise<string> {
  const name = `st_fresh_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name} TEMPLATE template0`);
  created.push(name);
  return name;
}

const at = (url: string, db: string) => { const u = new URL(url); u.pathname = `/${db}`; return u.toString(); };

/** What the database holds besides the built-ins: extensions, functions and relations outside the system schemas. */
async function footprint(db: string): Promise<{ extensions: string[]; functions: string[]; relations: string[] }> {
  const c = new pg.Client(at(s.directUrl, db));
  await c.connect();
  try {
    const ext = await c.query(`SELECT extname FROM pg_extension ORDER BY 1`);
    const fns = await c.query(`SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`);
    const rels = await c.query(`SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1`);
    return { extensions: ext.rows.map((r) => r.extname), functions: fns.rows.map((r) => r.proname), relations: rels.rows.map((r) => r.relname) };
  } finally {
    await c.end();
  }
}

/** Ordinary work through the proxy: simple and extended protocol, DDL, named prepared statements, a transaction. */
async function ordinaryWork(c: pg.Client): Promise<void> {
  expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  await c.query('CREATE TABLE mine (id int primary key, body text)');
  await c.query('INSERT INTO mine VALUES ($1, $2)', [1, 'one']);
  expect((await c.query({ name: 'get', text: 'SELECT body FROM mine WHERE id = $1', values: [1] })).rows).toEqual([{ body: 'one' }]);
  expect((await c.query({ name: 'get', text: 'SELECT body FROM mine WHERE id = $1', values: [1] })).rows).toEqual([{ body: 'one' }]);
  await c.query('BEGIN; UPDATE mine SET body = upper(body); COMMIT');
  await c.query(`PREPARE q AS SELECT count(*) FROM mine; EXECUTE q; DEALLOCATE q`);
}

describe('connecting and ordinary SQL change nothing', () => {
  test('a superuser session, then a plain role\'s session, leave no extension, function or table behind', async () => {
    const db = await freshDatabase();
    const before = await footprint(db);
    expect(before.extensions).toEqual(['plpgsql']);
    // Whatever the proxy does to a database (install, config listener, cache writes) starts from its registry.
    const asked = vi.spyOn(s.databases, 'get');
    onTestFinished(() => asked.mockRestore());
    const c = await s.connect(at(s.url(), db));
    await ordinaryWork(c);
    const u = await createRole('st_fu');
    roles.push(u.user);
    await adminQuery(`GRANT ALL ON DATABASE ${db} TO ${u.user}`);
    const p = await s.connect(at(s.url(u.user, u.password), db));
    expect((await p.query('SELECT current_user AS u')).rows).toEqual([{ u: u.user }]);
    // Nothing was started for this database, in the background or otherwise: the registry was never asked
    // about it, and no connection of the proxy's own is open to it.
    expect(asked.mock.calls.filter(([name]) => name === db)).toEqual([]);
    expect((await adminQuery(`SELECT application_name FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'pg-steadytext%'`, [db])).rows).toEqual([]);
    await c.end();
    await p.end();
    const after = await footprint(db);
    expect(after.extensions).toEqual(before.extensions);
    expect(after.functions).toEqual(before.functions);
    expect(after.relations).toEqual(['mine', 'mine_pkey']);
  });
});

describe('the first statement that names steadytext installs', () => {
  test('SELECT steadytext_version()', async () => {
    const db = await freshDatabase();
    const c = await s.connect(at(s.url(), db));
    await ordinaryWork(c);
    expect((await footprint(db)).functions).toEqual([]);
    const v = (await c.query('SELECT steadytext_version() AS v')).rows[0].v;
    expect(typeof v).toBe('string');
    const after = await footprint(db);
    expect(after.extensions).toEqual(expect.arrayContaining(['plpgsql', 'vector']));
    expect(after.functions).toEqual(expect.arrayContaining(['steadytext_generate', 'steadytext_embed', 'steadytext_version', 'steadytext_config_set']));
    expect(after.relations).toEqual(expect.arrayContaining(['steadytext_config', 'steadytext_cache', 'mine']));
    // And it works there.
    const t = (await c.query(`SELECT steadytext_generate('first use', 4) AS t`)).rows[0].t;
    expect(t).toBe(await s.engine.generate({ prompt: 'first use', maxTokens: 4, seed: 42, temperature: 0 }));
  });

  test('CREATE EXTENSION pg_steadytext', async () => {
    const db = await freshDatabase();
    const c = await s.connect(at(s.url(), db));
    await ordinaryWork(c);
    expect((await footprint(db)).functions).toEqual([]);
    const r = await c.query('CREATE EXTENSION pg_steadytext');
    expect(r.command).toBe('CREATE');
    const after = await footprint(db);
    expect(after.extensions).toEqual(expect.arrayContaining(['plpgsql', 'vector']));
    expect(after.functions).toEqual(expect.arrayContaining(['steadytext_generate', 'steadytext_embed', 'steadytext_version']));
    expect((await c.query('CREATE EXTENSION IF NOT EXISTS pg_steadytext')).command).toBe('CREATE');
    // Through the extended protocol too (a driver or migration tool), and the stand-in's notice is never shown.
    const notices: string[] = [];
    c.on('notice', (n) => notices.push(n.message ?? ''));
    expect((await c.query({ text: 'CREATE EXTENSION pg_steadytext', queryMode: 'extended' } as pg.QueryConfig)).command).toBe('CREATE');
    expect((await c.query({ name: 'ext', text: 'CREATE EXTENSION IF NOT EXISTS pg_steadytext' })).command).toBe('CREATE');
    expect((await c.query({ name: 'ext', text: 'CREATE EXTENSION IF NOT EXISTS pg_steadytext' })).command).toBe('CREATE');
    expect((await c.query('CREATE EXTENSION pg_steadytext')).command).toBe('CREATE');
    expect(notices).toEqual([]);
  });
});
