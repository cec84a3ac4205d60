// steadytext_generate_stream through the proxy: rows reach the client while the text is being generated,
// and they are the same rows, whichever path served them.
import { afterAll, beforeAll, expect, test } from 'vitest';
import pg from 'pg';
import { streamChunks } from '../../sql/answers.js';
import { startStack, type Stack } from './helpers.js';

let s: Stack;
let c: pg.Client;
beforeAll(async () => {
  s = await startStack('st_stream');
  c = await s.connect();
});
afterAll(() => s?.stop());

const busy = () => s.engine.status().models.filter((m) => m.role === 'generation').reduce((n, m) => n + m.active, 0);

test('each chunk is a DataRow sent as soon as it is generated; the rows join to the generated text', async () => {
  const prompt = 'Write a story about AI';
  const seenWhileBusy: boolean[] = [];
  const rows: string[] = [];
  const q = new pg.Query(`SELECT * FROM steadytext_generate_stream('${prompt}', 300) AS chunk`);
  q.on('row', (r: { chunk: string }) => { rows.push(r.chunk); seenWhileBusy.push(busy() > 0); });
  const done = new Promise((resolve, reject) => { q.on('end', resolve); q.on('error', reject); });
  c.query(q);
  const result = (await done) as pg.QueryResult;
  const text = await s.engine.generate({ prompt, maxTokens: 300, seed: 42, temperature: 0 });
  expect(rows).toEqual(streamChunks(text));
  expect(rows.join('')).toBe(text);
  expect(result.rowCount).toBe(rows.length);
  expect(result.fields.map((f) => f.name)).toEqual(['chunk']);
  expect(seenWhileBusy[0]).toBe(true); // the first row arrived while the model was still generating
});

test('the same rows through the callback path and inside a transaction', async () => {
  await c.query(`CREATE FUNCTION chunks(p text) RETURNS SETOF text LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY SELECT * FROM steadytext_generate_stream(p, 40); END $$`);
  const viaCallback = (await c.query(`SELECT * FROM chunks('Tell me about databases') AS x`)).rows.map((r) => r.x);
  await c.query('BEGIN');
  const viaStream = (await c.query(`SELECT * FROM steadytext_generate_stream('Tell me about databases', 40) AS x`)).rows.map((r) => r.x);
  expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  await c.query('COMMIT');
  expect(viaStream).toEqual(viaCallback);
});

test('an error before or during the stream is a PostgreSQL error and the session goes on', async () => {
  const e = await c.query(`SELECT * FROM steadytext_generate_stream('', 10)`).catch((x) => x);
  expect(e.code).toBe('22023');
  await c.query('BEGIN');
  const denied = await c.query(`SELECT * FROM steadytext_generate_stream('x', 100000)`).catch((x) => x);
  expect(denied.code).toBe('22023');
  expect((await c.query('SELECT 1').catch((x) => x)).code).toBe('25P02');
  await c.query('ROLLBACK');
  expect((await c.query('SELECT 2 AS two')).rows[0].two).toBe(2);
});
