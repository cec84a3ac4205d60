// The SQL API through a pooling proxy (pgbouncer.ini: session, transaction, statement mode; 2 server
// connections, several clients at once): every path gives the bytes the non-pooled proxy gives. Before
// each check the cache is emptied and the interceptor forgets what it stored, so each path really runs
// under pooling; the daemon's request count tells which path answered (unchanged: served by the proxy
// ahead of the statement; grown: the function called back).
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import { streamChunks } from '../../sql/answers.js';
import { startStack, type Stack } from './helpers.js';

const POOL_SIZE = 2;
const CLIENTS = 4;
const NAMES = ['alpha', 'beta', 'gamma', 'delta', 'epsilon'];

const GEN = `select steadytext_generate('hello', 8) as v`;
const GEN_EXT = 'select steadytext_generate($1, $2) as v';
const EMB = `select steadytext_embed('hello')::text as v`;
const EMB_EXT = 'select steadytext_embed($1)::text as v';
const PREFETCH = 'select id, steadytext_generate(name, 8) as v from items order by id';
const PREFETCH_TEMP = 'select id, steadytext_generate(name, 8) as v from block_items order by id';
const STREAM = `select * from steadytext_generate_stream('hello', 8) as v`;
const PID = 'select pg_backend_pid() as v';

interface Reference {
  gen: string;
  emb: string;
  rows: { id: number; v: string }[];
  chunks: string[];
}

let s: Stack;
let ref: Reference;

const requests = () => s.daemon.stats().requests;
const value = async (c: pg.Client, sql: string | pg.QueryConfig, params?: unknown[]) => (await c.query(sql as string, params)).rows[0].v as unknown;
const column = async (c: pg.Client, sql: string) => (await c.query(sql)).rows.map((r) => r.v as string);

/** A prefetch inside a transaction block, over a temporary table only that block's connection can read. */
async function inBlock(c: pg.Client): Promise<{ rows: unknown[]; samePid: boolean }> {
  await c.query('BEGIN');
  const first = await value(c, PID);
  await c.query('CREATE TEMP TABLE block_items ON COMMIT DROP AS SELECT * FROM items');
  const rows = (await c.query(PREFETCH_TEMP)).rows;
  const last = await value(c, PID);
  await c.query('COMMIT');
  return { rows, samePid: first === last };
}

/** Empties steadytext_cache and the proxy's memory of it: the next call must be served again. */
async function fresh(): Promise<void> {
  const c = new pg.Client(s.directUrl);
  await c.connect();
  try {
    await c.query('TRUNCATE steadytext_cache');
  } finally {
    await c.end();
  }
  s.interceptor.forgetStored();
}

/** Runs `work` on `n` clients of `url` at once, each ending its session when done. */
async function together<T>(url: string, n: number, work: (c: pg.Client, i: number) => Promise<T>): Promise<T[]> {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const c = new pg.Client(url);
      c.on('error', () => {});
      await c.connect();
      try {
        return await work(c, i);
      } finally {
        await c.end().catch(() => {});
      }
    }),
  );
}

beforeAll(async () => {
  s = await startStack('st_pooled');
  await s.databases.get(s.database).ready();
  const c = new pg.Client(s.directUrl);
  await c.connect();
  try {
    await c.query('CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)');
    await c.query('INSERT INTO items SELECT i, n FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i)', [NAMES]);
    await c.query(`CREATE FUNCTION pooled_plpgsql_gen(p text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_generate(p, 8); END $$`);
    await c.query(`CREATE FUNCTION pooled_sql_gen(p text) RETURNS text LANGUAGE sql AS $$ SELECT steadytext_generate(p, 8) $$`);
    // The callback path needs dblink in the database (the install step creates it where available).
    expect((await c.query(`SELECT count(*)::int AS n FROM pg_extension WHERE extname = 'dblink'`)).rows[0].n).toBe(1);
  } finally {
    await c.end();
  }

  // The reference: the same calls through the proxy without pooling, each served by the proxy itself.
  const plain = await s.connect();
  await fresh();
  const before = requests();
  const gen = (await value(plain, GEN)) as string;
  expect(await value(plain, GEN_EXT, ['hello', 8])).toBe(gen);
  const emb = (await value(plain, EMB)) as string;
  expect(await value(plain, EMB_EXT, ['hello'])).toBe(emb);
  const rows = (await plain.query(PREFETCH)).rows as Reference['rows'];
  expect(requests()).toBe(before);
  await fresh();
  expect(await inBlock(plain)).toEqual({ rows, samePid: true });
  expect(requests()).toBe(before);
  await fresh();
  const chunks = await column(plain, STREAM);
  expect(requests()).toBe(before);
  ref = { gen, emb, rows, chunks };
  // And what the engine gives for them.
  const generate = (prompt: string) => s.engine.generate({ prompt, maxTokens: 8, seed: 42, temperature: 0 });
  expect(gen).toBe(await generate('hello'));
  expect(Float32Array.from(JSON.parse(emb) as number[])).toEqual(await s.engine.embed({ text: 'hello' }));
  expect(rows).toEqual(await Promise.all(NAMES.map(async (n, i) => ({ id: i + 1, v: await generate(n) }))));
  expect(chunks).toEqual(streamChunks(gen));
});
afterAll(() => s?.stop());

describe.each(['session', 'transaction', 'statement'] as const)('%s pooling', (mode) => {
  let url: string;
  beforeAll(async () => {
    url = await s.pooledUrl(mode, POOL_SIZE);
  });

  test('serve ahead: literals, parameters and a named prepared statement give the non-pooled bytes', async () => {
    await fresh();
    const before = requests();
    const got = await together(url, CLIENTS, async (c) => {
      const out = {
        gen: await value(c, GEN),
        genExt: await value(c, GEN_EXT, ['hello', 8]),
        emb: await value(c, EMB),
        embExt: await value(c, EMB_EXT, ['hello']),
        named: [] as unknown[],
      };
      // Prepared once per client, bound again on whichever server connection the client holds then.
      for (let k = 0; k < 3; k++) out.named.push(await value(c, { name: 'pooled_gen', text: GEN_EXT, values: ['hello', 8] }));
      return out;
    });
    for (const g of got) expect(g).toEqual({ gen: ref.gen, genExt: ref.gen, emb: ref.emb, embExt: ref.emb, named: [ref.gen, ref.gen, ref.gen] });
    expect(requests()).toBe(before);
  });

  test('prefetch: a column-valued call over a table, while other clients take turns on the connections', async () => {
    await fresh();
    const before = requests();
    const got = await together(url, CLIENTS, async (c) => {
      const pids: number[] = [];
      const results: unknown[] = [];
      for (let k = 0; k < 3; k++) {
        pids.push((await value(c, PID)) as number);
        results.push((await c.query(PREFETCH)).rows);
      }
      pids.push((await value(c, PID)) as number);
      return { pids, results };
    });
    for (const g of got) expect(g.results).toEqual([ref.rows, ref.rows, ref.rows]);
    expect(requests()).toBe(before);
    const all = new Set(got.flatMap((g) => g.pids));
    expect(all.size).toBeLessThanOrEqual(POOL_SIZE);
    if (mode === 'session') for (const g of got) expect(new Set(g.pids).size).toBe(1);
    // Between statements the connection went back to the pool and came back as another one.
    else expect(got.some((g) => new Set(g.pids).size > 1)).toBe(true);
  });

  test('streaming: steadytext_generate_stream sends the non-pooled chunks', async () => {
    await fresh();
    const before = requests();
    const got = await together(url, CLIENTS, (c) => column(c, STREAM));
    for (const chunks of got) expect(chunks).toEqual(ref.chunks);
    expect(requests()).toBe(before);
  });

  test('callback: calls inside SQL and PL/pgSQL functions reach the daemon through dblink, same answer', async () => {
    await fresh();
    const before = requests();
    const got = await together(url, CLIENTS, async (c) => [await value(c, `select pooled_plpgsql_gen('hello') as v`), await value(c, `select pooled_sql_gen('hello') as v`)]);
    for (const g of got) expect(g).toEqual([ref.gen, ref.gen]);
    expect(requests()).toBeGreaterThan(before);
  });

  if (mode === 'statement') {
    test('a transaction block is refused with pgBouncer\'s error; a single statement still works', async () => {
      const c = new pg.Client(url);
      c.on('error', () => {});
      await c.connect();
      await expect(c.query('begin')).rejects.toThrow('transaction blocks not allowed in statement pooling mode');
      await c.end().catch(() => {});
      const [v] = await together(url, 1, (d) => value(d, GEN));
      expect(v).toBe(ref.gen);
    });
  } else {
    test('prefetch inside BEGIN … COMMIT: the derived query reads a temporary table only the block\'s connection has', async () => {
      await fresh();
      const before = requests();
      const got = await together(url, CLIENTS, inBlock);
      for (const g of got) expect(g).toEqual({ rows: ref.rows, samePid: true });
      // Every row was prefetched: the function found them all in the cache.
      expect(requests()).toBe(before);
    });
  }
});
