// The prefetch path (calls that take column values), cancel of a running generation, and a client that
// leaves during one.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { cancelThroughProxy, startStack, type Stack } from './helpers.js';

let s: Stack;
let c: pg.Client;
beforeAll(async () => {
  s = await startStack('st_prefetch');
  c = await s.connect();
  await c.query(`CREATE TABLE docs (id int primary key, body text, emb vector(1024), summary text)`);
  await c.query(`INSERT INTO docs SELECT i, 'document number ' || (i % 40) || ' about topic ' || i, NULL, NULL FROM generate_series(1, 60) i`);
});
afterAll(() => s?.stop());

const stats = async () => (await c.query('SELECT prefetch_requests::int AS p, callback_requests::int AS cb FROM steadytext_stats')).rows[0];

describe('prefetch', () => {
  test('a bulk UPDATE is computed by the proxy before it runs: no callbacks, the same vectors as the engine', async () => {
    const callbacks = s.daemon.stats().requests;
    const r = await c.query('UPDATE docs SET emb = steadytext_embed(body) WHERE emb IS NULL');
    expect(r.rowCount).toBe(60);
    expect(s.daemon.stats().requests).toBe(callbacks);
    const rows = (await c.query('SELECT body, emb::text AS e FROM docs ORDER BY id')).rows;
    for (const row of rows.slice(0, 10)) {
      expect(Float32Array.from(JSON.parse(row.e))).toEqual(await s.engine.embed({ text: row.body }));
    }
    expect((await stats()).p).toBeGreaterThanOrEqual(60);
  });

  test('a SELECT over rows, inside a transaction, gives what the callback path gives', async () => {
    await c.query('BEGIN');
    const viaPrefetch = (await c.query(`SELECT id, steadytext_generate('Summarize: ' || body, 6) AS t FROM docs WHERE id <= 12 ORDER BY id`)).rows;
    await c.query('COMMIT');
    await c.query(`CREATE FUNCTION summ(b text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_generate('Summarize: ' || b, 6); END $$`);
    await c.query(`SELECT steadytext_config_set('cache_enabled', 'false')`); // force real callbacks
    const viaCallback = (await c.query(`SELECT id, summ(body) AS t FROM docs WHERE id <= 12 ORDER BY id`)).rows;
    await c.query(`SELECT steadytext_config_set('cache_enabled', 'true')`);
    expect(viaPrefetch).toEqual(viaCallback);
  });

  test("the derived query runs with the client's privileges: no read access, no answers computed, the native error", async () => {
    await c.query(`CREATE TABLE secrets (s text); INSERT INTO secrets VALUES ('top secret plan');
      DROP ROLE IF EXISTS prefetch_user; CREATE ROLE prefetch_user LOGIN PASSWORD 'pw'; GRANT USAGE ON SCHEMA public TO prefetch_user`);
    const u = await s.connect(s.url('prefetch_user', 'pw'));
    await u.query('BEGIN');
    const err = await u.query('SELECT steadytext_embed(s) FROM secrets').catch((e) => e);
    expect(err.code).toBe('42501');
    await u.query('ROLLBACK');
    const leaked = await c.query(`SELECT count(*)::int AS n FROM steadytext_cache WHERE prompt = 'top secret plan'`);
    expect(leaked.rows[0].n).toBe(0);
  });
});

describe('bulk prefetch', () => {
  test('more distinct rows than the engine queue holds: every one prefetched, none left to callbacks or errors', async () => {
    // A queue of 8 and 300 rows: a prefetch that submitted everything at once would be refused (OVERLOADED).
    const small = await startStack('st_bulk', { engine: { maxQueue: 8 } });
    try {
      const b = await small.connect();
      await b.query(`CREATE TABLE items (id int primary key, body text, emb vector(1024))`);
      await b.query(`INSERT INTO items SELECT i, 'item ' || i || ' in aisle ' || (i % 7), NULL FROM generate_series(1, 300) i`);
      const r = await b.query('UPDATE items SET emb = steadytext_embed(body) WHERE emb IS NULL');
      expect(r.rowCount).toBe(300);
      expect(small.daemon.stats().requests).toBe(0);
      const st = (await b.query('SELECT prefetch_requests::int AS p, callback_requests::int AS cb, errors::int AS e FROM steadytext_stats')).rows[0];
      expect(st).toEqual({ p: 300, cb: 0, e: 0 });
      expect((await b.query(`SELECT count(*)::int AS n FROM steadytext_cache WHERE operation = 'embed'`)).rows[0].n).toBe(300);
      const row = (await b.query('SELECT body, emb::text AS e FROM items WHERE id = 300')).rows[0];
      expect(Float32Array.from(JSON.parse(row.e))).toEqual(await small.engine.embed({ text: row.body }));
    } finally {
      await small.stop();
    }
  });
});


const generationBusy = () => s.engine.status().models.filter((m) => m.role === 'generation').reduce((n, m) => n + m.active + m.queued, 0);

describe('cancel and disconnect', () => {
  test('cancel stops a running generation: 57014, the engine is free, the session goes on', async () => {
    const other = await s.connect();
    const q = other.query(`SELECT steadytext_generate('Tell a very long story', max_tokens := 4000, temperature := 0.9, seed := 7)`).catch((e) => e);
    await expect.poll(generationBusy, { timeout: 10_000, interval: 10, message: 'the generation reaches the engine' }).toBeGreaterThan(0);
    const t0 = Date.now();
    await cancelThroughProxy(s, other);
    const err = await q;
    const ms = Date.now() - t0;
    expect(err?.code, `the query ended with ${err instanceof Error ? err.message : JSON.stringify(err?.rows)}`).toBe('57014');
    console.log(`cancel took ${ms} ms`);
    // The statement never reached the database, so no cancel may follow it there to hit the next one: the
    // next statement runs long enough (pg_sleep) that a stray cancel would end it.
    expect((await other.query('SELECT pg_sleep(0.3), 1 AS ok')).rows[0].ok).toBe(1);
    // The error can reach the client a moment before the engine has unwound the aborted generation.
    await expect.poll(generationBusy, { timeout: 2_000, interval: 10, message: 'the engine free after the cancel' }).toBe(0);
  });

  test('a client that disconnects during a generation frees the engine', async () => {
    const gone = await s.connect();
    const errorsBefore = s.engine.status().errorsCount;
    void gone.query(`SELECT steadytext_generate('Another very long story', max_tokens := 4000, temperature := 0.9, seed := 8)`).catch(() => {});
    await expect.poll(generationBusy, { timeout: 10_000, interval: 10, message: 'the generation reaches the engine' }).toBeGreaterThan(0);
    (gone as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    const t0 = Date.now();
    await expect.poll(generationBusy, { timeout: 10_000, interval: 10, message: 'the engine free after the client left' }).toBe(0);
    // Stopped (counted as an error by the engine), not run to its end.
    expect(s.engine.status().errorsCount).toBe(errorsBefore + 1);
    console.log(`engine free ${Date.now() - t0} ms after the client left`);
  });
});
