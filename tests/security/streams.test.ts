// Issue 10, item 9: every statement over steadytext_generate_stream returns, through the proxy, what the
// SQL function returns in the database (the same statement run on a direct connection, where the
// function answers through the callback path): aggregates, LIMIT/OFFSET, WITH ORDINALITY, WHERE, joins,
// LATERAL, subqueries, CTEs, set operations, the call in the select list, INSERT ... SELECT, both
// protocols. A plain read of the stream still sends its chunks while they are being generated.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import { streamChunks } from '../../sql/answers.js';
import { startStack, type Stack } from '../api/helpers.js';
import { direct, installed } from './helpers.js';

let s: Stack;
let c: pg.Client; // through the proxy
let d: pg.Client; // straight to the database
beforeAll(async () => {
  s = await startStack('st_streams');
  await installed(s);
  c = await s.connect();
  d = new pg.Client(s.directUrl);
  d.on('error', () => {});
  await d.connect();
  await d.query('CREATE TABLE sink (n int, chunk text)');
});
afterAll(async () => {
  await d?.end().catch(() => {});
  await s?.stop();
});

interface Shape { command: string; rowCount: number | null; fields: [string, number][]; rows: unknown[][] }

const shape = (r: pg.QueryResult): Shape => ({
  command: r.command, rowCount: r.rowCount, fields: r.fields.map((f) => [f.name, f.dataTypeID]), rows: r.rows as unknown[][],
});

async function run(client: pg.Client, sql: string, values?: unknown[]): Promise<Shape | { sqlstate: string }> {
  try {
    return shape(await client.query({ text: sql, values, rowMode: 'array' }));
  } catch (e) {
    return { sqlstate: (e as { code?: string }).code ?? String(e) };
  }
}

/** The statement straight to the database, then (nothing cached) through the proxy. */
async function bothWays(sql: string, values?: unknown[]) {
  await direct(s, 'DELETE FROM steadytext_cache');
  const inDatabase = await run(d, sql, values);
  await direct(s, 'DELETE FROM steadytext_cache');
  const viaProxy = await run(c, sql, values);
  return { inDatabase, viaProxy };
}

const P = `'Tell me a story about streams'`;
const STREAM = `steadytext_generate_stream(${P}, 40)`;

const SHAPES: string[] = [
  `SELECT * FROM ${STREAM}`,
  `SELECT * FROM ${STREAM} AS chunk`,
  `SELECT count(*) FROM ${STREAM}`,
  `SELECT count(*) AS n, sum(length(x)) AS len FROM ${STREAM} AS x`,
  `SELECT string_agg(x, '') FROM ${STREAM} AS x`,
  `SELECT string_agg(x, '|' ORDER BY x DESC) FROM ${STREAM} AS x`,
  `SELECT * FROM ${STREAM} LIMIT 3`,
  `SELECT * FROM ${STREAM} OFFSET 2`,
  `SELECT * FROM ${STREAM} LIMIT 2 OFFSET 1`,
  `SELECT * FROM ${STREAM} FETCH FIRST 1 ROW ONLY`,
  `SELECT * FROM ${STREAM} WITH ORDINALITY AS t(chunk, n)`,
  `SELECT n FROM ${STREAM} WITH ORDINALITY AS t(chunk, n) WHERE chunk LIKE ' %'`,
  `SELECT x FROM ${STREAM} AS x WHERE length(x) > 3`,
  `SELECT x FROM ${STREAM} AS x WHERE false`,
  `SELECT * FROM ${STREAM} ORDER BY 1`,
  `SELECT DISTINCT x FROM ${STREAM} AS x ORDER BY x`,
  `SELECT upper(x), length(x) FROM ${STREAM} AS x`,
  `SELECT *, 1 AS one FROM ${STREAM}`,
  `SELECT x.* FROM ${STREAM} AS x`,
  `SELECT x AS renamed FROM ${STREAM} AS x`,
  `SELECT a.x, b.n FROM ${STREAM} AS a(x) CROSS JOIN generate_series(1, 2) AS b(n)`,
  `SELECT a.x FROM ${STREAM} AS a(x) JOIN (VALUES (' the')) AS v(w) ON a.x = v.w`,
  `SELECT t.id, c FROM (VALUES (1), (2)) AS t(id), LATERAL ${STREAM} AS c`,
  `SELECT (SELECT count(*) FROM ${STREAM}) AS n`,
  `SELECT * FROM (SELECT * FROM ${STREAM}) AS sub`,
  `SELECT EXISTS (SELECT FROM ${STREAM})`,
  `WITH s AS (SELECT * FROM ${STREAM}) SELECT count(*) FROM s`,
  `WITH s AS MATERIALIZED (SELECT * FROM ${STREAM} AS x) SELECT x FROM s`,
  `SELECT * FROM ${STREAM} UNION ALL SELECT 'end'`,
  `SELECT x FROM ${STREAM} AS x EXCEPT SELECT ' the' ORDER BY 1`,
  `SELECT ${STREAM}`,
  `SELECT ${STREAM} AS x, 1 AS one`,
  `SELECT count(*) FROM (SELECT ${STREAM}) AS t`,
  `SELECT * FROM ROWS FROM (${STREAM}, generate_series(1, 3)) AS r(x, n)`,
  `SELECT * FROM ${STREAM} FOR UPDATE`,
];

describe('each shape over the stream returns what the database returns', () => {
  test('the plain read is the generated text in chunks (sanity of the reference)', async () => {
    const text = await s.engine.generate({ prompt: 'Tell me a story about streams', maxTokens: 40, seed: 42, temperature: 0 });
    const { inDatabase, viaProxy } = await bothWays(`SELECT * FROM ${STREAM}`);
    expect(streamChunks(text).length).toBeGreaterThan(3);
    expect((inDatabase as Shape).rows).toEqual(streamChunks(text).map((x) => [x]));
    expect(viaProxy).toEqual(inDatabase);
  });

  test.each(SHAPES)('%s', async (sql) => {
    const { inDatabase, viaProxy } = await bothWays(sql);
    expect(viaProxy).toEqual(inDatabase);
  });

  test('INSERT ... SELECT over the stream, then the table', async () => {
    const sql = `INSERT INTO sink SELECT n::int, x FROM ${STREAM} WITH ORDINALITY AS t(x, n) RETURNING n`;
    const { inDatabase, viaProxy } = await bothWays(sql);
    expect(viaProxy).toEqual(inDatabase);
    const rows = (await d.query('SELECT n, chunk FROM sink ORDER BY n, chunk')).rows;
    expect(rows.length).toBe(2 * (inDatabase as Shape).rows.length);
    // The two inserts wrote the same chunks.
    expect(rows.filter((_, i) => i % 2 === 0)).toEqual(rows.filter((_, i) => i % 2 === 1));
  });

  test('parameters (extended protocol), plain and aggregated', async () => {
    for (const sql of [
      'SELECT * FROM steadytext_generate_stream($1, $2)', 'SELECT count(*) FROM steadytext_generate_stream($1, $2)',
      'SELECT string_agg(x, $3) FROM steadytext_generate_stream($1, $2) AS x', 'SELECT * FROM steadytext_generate_stream($1, $2) LIMIT 2',
    ]) {
      const values = sql.includes('$3') ? ['Tell me a story about streams', 40, '/'] : ['Tell me a story about streams', 40];
      const { inDatabase, viaProxy } = await bothWays(sql, values);
      expect(viaProxy, sql).toEqual(inDatabase);
    }
  });

  test('two statements in one message, and inside a transaction', async () => {
    const multi = `SELECT count(*) FROM ${STREAM}; SELECT * FROM ${STREAM} LIMIT 1`;
    await direct(s, 'DELETE FROM steadytext_cache');
    const dm = (await d.query(multi)) as unknown as pg.QueryResult[];
    await direct(s, 'DELETE FROM steadytext_cache');
    const pm = (await c.query(multi)) as unknown as pg.QueryResult[];
    expect(pm.map((r) => r.rows)).toEqual(dm.map((r) => r.rows));
    await c.query('BEGIN');
    try {
      for (const sql of [`SELECT count(*) FROM ${STREAM}`, `SELECT * FROM ${STREAM}`]) {
        await direct(s, 'DELETE FROM steadytext_cache');
        expect(shape(await c.query({ text: sql, rowMode: 'array' }))).toEqual(await run(d, sql));
      }
    } finally {
      await c.query('ROLLBACK');
    }
  });
});

describe('chunks are sent while they are generated where the shape allows it', () => {
  const busy = () => s.engine.status().models.filter((m) => m.role === 'generation').reduce((n, m) => n + m.active, 0);

  test.each([
    `SELECT * FROM steadytext_generate_stream('A long story about rivers', 300)`,
    `SELECT chunk FROM steadytext_generate_stream('A long story about mountains', 300) AS chunk`,
  ])('%s', async (sql) => {
    await direct(s, 'DELETE FROM steadytext_cache');
    s.engine.clearCache();
    const seenWhileBusy: boolean[] = [];
    const rows: unknown[][] = [];
    const q = new pg.Query({ text: sql, rowMode: 'array' } as pg.QueryConfig);
    q.on('row', (r: unknown[]) => { rows.push(r); seenWhileBusy.push(busy() > 0); });
    const done = new Promise((resolve, reject) => { q.on('end', resolve); q.on('error', reject); });
    c.query(q);
    const result = (await done) as pg.QueryResult;
    expect(result.rowCount).toBe(rows.length);
    expect(rows.length).toBeGreaterThan(10);
    expect(seenWhileBusy[0]).toBe(true); // the first row arrived while the model was still generating
    expect(rows).toEqual((await run(d, sql) as Shape).rows);
  });
});
