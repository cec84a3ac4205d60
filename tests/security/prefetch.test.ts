// The prefetch path runs a query derived from the client's statement before the statement itself. These
// tests hold it to what it may do, through the real proxy against the real cluster: it never computes
// what the statement cannot need (LIMIT), reads at most prefetch-max-values rows, runs no user code that
// the session's catalog does not vouch for (volatile functions, operators, views, domain CHECKs, a
// function shadowing a built-in), leaves no effect behind (read-only, rolled back), and stops computing
// on statement_timeout, on the client's cancel and on pg_cancel_backend of its backend.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import pg from 'pg';
import { startProxy, type ProxyServer } from '../../proxy/server.js';
import { createSteadytextInterceptor } from '../../sql/interceptor.js';
import { cancelThroughProxy, silent, startStack, type Stack } from '../api/helpers.js';

let s: Stack;
let c: pg.Client; // through the proxy
let direct: pg.Client; // straight to the database
beforeAll(async () => {
  s = await startStack('st_sec_prefetch');
  c = await s.connect();
  direct = new pg.Client(s.directUrl);
  await direct.connect();
  await c.query(String.raw`
    CREATE TABLE docs (id int PRIMARY KEY, body text);
    INSERT INTO docs SELECT i, 'document ' || i FROM generate_series(1, 40) i;
    CREATE TABLE calls (what text);
    CREATE FUNCTION note_call(what text) RETURNS boolean LANGUAGE sql VOLATILE
      AS $$ INSERT INTO public.calls VALUES (what) RETURNING true $$;
    -- A volatile overload of a name the proxy used to trust (age() is a pg_catalog function).
    CREATE FUNCTION age(id integer) RETURNS boolean LANGUAGE sql VOLATILE AS $$ SELECT public.note_call('age') $$;
    CREATE FUNCTION noted_eq(a integer, b integer) RETURNS boolean LANGUAGE sql VOLATILE
      AS $$ SELECT public.note_call('operator') AND a = b $$;
    CREATE OPERATOR === (leftarg = integer, rightarg = integer, function = noted_eq);
    CREATE VIEW noted_docs AS SELECT id, body FROM docs WHERE note_call('view');
    CREATE DOMAIN noted_text AS text CHECK (note_call('domain'));
    CREATE SCHEMA shadow;
    CREATE FUNCTION shadow.lower(t text) RETURNS text LANGUAGE sql VOLATILE
      AS $$ SELECT CASE WHEN public.note_call('lower') THEN pg_catalog.lower(t) END $$;
    -- Declared STABLE, yet each tries an effect: only the fence (read-only, rolled back) stops these.
    CREATE SEQUENCE prefetch_seq;
    CREATE FUNCTION isfinite(id integer) RETURNS boolean LANGUAGE plpgsql STABLE
      AS $$ BEGIN PERFORM nextval('public.prefetch_seq'); RETURN true; END $$;
    CREATE FUNCTION justify_days(id integer) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
      BEGIN
        PERFORM set_config('prefetch.seen', (coalesce(nullif(current_setting('prefetch.seen', true), ''), '0')::int + 1)::text, false);
        RETURN true;
      END $$;`);
});
afterAll(async () => {
  await direct?.end();
  await s?.stop();
});

const stats = async (client = c) => (await client.query(
  'SELECT prefetch_requests::int AS p, callback_requests::int AS cb FROM steadytext_stats')).rows[0] as { p: number; cb: number };
const logged = async () => (await direct.query('SELECT count(*)::int AS n FROM calls')).rows[0].n as number;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Drops a client's connection at once (the proxy then ends its session and whatever it computes). */
const destroy = (client: pg.Client) => (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();

/** How often the statement alone runs the logging code: run straight on the database, rolled back. */
async function alone(sql: string, searchPath = 'public'): Promise<number> {
  await direct.query('BEGIN');
  try {
    await direct.query(`SET LOCAL search_path = ${searchPath}; DELETE FROM calls`);
    await direct.query(sql);
    return await logged();
  } finally {
    await direct.query('ROLLBACK');
  }
}

describe('nothing the statement cannot need is computed', () => {
  test('LIMIT 1 over 200,000 generated rows: one value computed, at once', async () => {
    const own = await s.connect();
    try {
      const before = s.engine.status().requestsProcessed;
      const t0 = Date.now();
      const q = own.query('SELECT steadytext_embed(g::text) AS e FROM generate_series(1, 200000) g LIMIT 1');
      const r = await Promise.race([q, sleep(15_000).then(() => 'still running')]); // a deadline, not a wait
      expect(r, 'the statement ends in seconds, not after 200,000 embeddings').not.toBe('still running');
      console.log(`LIMIT 1 took ${Date.now() - t0} ms`);
      expect(s.engine.status().requestsProcessed - before).toBeLessThanOrEqual(1);
      expect((await stats()).p).toBe(0);
    } finally {
      destroy(own);
    }
  }, 30_000);
});

describe('prefetch-max-values', () => {
  let capped: ProxyServer;
  let cc: pg.Client;
  beforeAll(async () => {
    // A second proxy over the same engine and database, with a limit of 50 rows.
    const interceptor = createSteadytextInterceptor({ engine: s.engine, databases: s.databases, daemon: s.daemon.address, logger: silent, prefetchMaxValues: 50 });
    await interceptor.ready;
    const up = new URL(s.directUrl);
    capped = await startProxy({
      listen: { host: '127.0.0.1', port: 0 }, upstream: `postgres://${up.hostname}:${up.port}/postgres?sslmode=disable`,
      maxMessageBytes: 64 * 1024 * 1024, shutdownGraceMs: 1000, connectTimeoutMs: 3000, logger: silent, interceptor,
    });
    const u = new URL(s.directUrl);
    u.port = String(capped.address.port);
    cc = new pg.Client(u.toString());
    cc.on('error', () => {});
    await cc.connect();
  });
  afterAll(async () => {
    await cc?.end().catch(() => {});
    await capped?.close(100);
  });

  test('past 50 rows the database computes the rest, with the same answers', async () => {
    await cc.query(`CREATE TABLE many (id int PRIMARY KEY, body text, emb vector(1024));
      INSERT INTO many SELECT i, 'row ' || i || ' of many', NULL FROM generate_series(1, 120) i`);
    const before = await stats(cc);
    const callbacks = s.daemon.stats().requests;
    const r = await cc.query('UPDATE many SET emb = steadytext_embed(body)');
    expect(r.rowCount).toBe(120);
    expect((await stats(cc)).p - before.p).toBe(50);
    expect(s.daemon.stats().requests - callbacks).toBe(70);
    const row = (await cc.query('SELECT body, emb::text AS e FROM many WHERE id = 120')).rows[0];
    expect(Float32Array.from(JSON.parse(row.e))).toEqual(await s.engine.embed({ text: row.body }));
  });
});

describe('the derived query runs no user code a second time', () => {
  beforeEach(async () => {
    await direct.query('DELETE FROM calls');
  });

  test.each([
    ['a volatile function in WHERE (an overload of a trusted name)', 'SELECT steadytext_embed(body) FROM docs WHERE age(id)', 'public'],
    ['a user-defined operator', 'SELECT steadytext_embed(body) FROM docs WHERE id === id', 'public'],
    ['a view over a volatile function', 'SELECT steadytext_embed(body) FROM noted_docs', 'public'],
    ['a domain CHECK that calls a logging function', 'SELECT steadytext_embed(body::noted_text) FROM docs', 'public'],
    ['a function shadowing lower() earlier on search_path', 'SELECT steadytext_embed(lower(body)) FROM docs', 'shadow, pg_catalog, public'],
  ])('%s runs exactly as often as the statement alone runs it', async (_, sql, searchPath) => {
    const expected = await alone(sql, searchPath);
    expect(expected).toBeGreaterThanOrEqual(40);
    await c.query(`SET search_path = ${searchPath}`);
    try {
      await c.query(sql);
    } finally {
      await c.query('RESET search_path');
    }
    expect(await logged()).toBe(expected);
  });

  test('in autocommit nothing is committed apart from the statement: a failing statement leaves no log', async () => {
    const err = await c.query('UPDATE docs SET body = steadytext_generate(body, max_tokens := 4), id = 1 WHERE id === id').catch((e) => e);
    expect(err.code).toBe('23505');
    expect(await logged()).toBe(0);
    const err2 = await c.query('UPDATE docs SET body = steadytext_generate(body, max_tokens := 4), id = 1 WHERE age(id)').catch((e) => e);
    expect(err2.code).toBe('23505');
    expect(await logged()).toBe(0);
  });

  test('a STABLE function that advances a sequence: the read-only fence refuses the effect', async () => {
    const sql = 'SELECT steadytext_embed(body) FROM docs WHERE isfinite(id)';
    const seq = async () => Number((await direct.query(`SELECT last_value FROM prefetch_seq`)).rows[0].last_value);
    await direct.query(`SELECT nextval('prefetch_seq')`);
    const start = await seq();
    await direct.query(sql);
    const once = (await seq()) - start;
    expect(once).toBeGreaterThanOrEqual(40);
    await c.query(sql);
    expect((await seq()) - start).toBe(2 * once);
  });

  test('a STABLE function that changes a session setting: the fence is rolled back, in autocommit and in a transaction block', async () => {
    const sql = 'SELECT steadytext_embed(body) FROM docs WHERE justify_days(id)';
    const seen = async () => Number((await c.query(`SELECT current_setting('prefetch.seen', true) AS v`)).rows[0].v || 0);
    const start = await seen();
    await c.query(sql);
    expect((await seen()) - start).toBe(40);
    await c.query('BEGIN');
    await c.query(sql);
    expect((await seen()) - start).toBe(80);
    await c.query('COMMIT');
  });

  test('inside a transaction block the fence is a savepoint: prefetch still serves, the transaction keeps its work and stays read-write', async () => {
    await c.query('CREATE TABLE tx_docs (id int PRIMARY KEY, body text, emb vector(1024))');
    await c.query(`INSERT INTO tx_docs SELECT i, 'in a transaction ' || i, NULL FROM generate_series(1, 30) i`);
    const before = await stats();
    const callbacks = s.daemon.stats().requests;
    await c.query('BEGIN');
    await c.query(`INSERT INTO tx_docs VALUES (31, 'written before', NULL)`);
    await c.query('UPDATE tx_docs SET emb = steadytext_embed(body)');
    await c.query(`INSERT INTO tx_docs VALUES (32, 'written after', NULL)`);
    expect((await c.query('SHOW transaction_read_only')).rows[0].transaction_read_only).toBe('off');
    await c.query('COMMIT');
    expect((await stats()).p - before.p).toBe(31);
    expect(s.daemon.stats().requests).toBe(callbacks);
    expect((await direct.query('SELECT count(*)::int AS n FROM tx_docs WHERE emb IS NOT NULL')).rows[0].n).toBe(31);
  });
});


const generationBusy = () => s.engine.status().models.filter((m) => m.role === 'generation').reduce((n, m) => n + m.active + m.queued, 0);

describe('the compute phase stops', () => {
  // 150 long generations, a few tenths of a second each on the fixture model: far more than any test waits.
  const LONG = `SELECT steadytext_generate(body, max_tokens := 1000, temperature := 0.9, seed := %SEED%) FROM docs`;
  let seed = 100;
  const long = () => LONG.replace('%SEED%', String(seed++));

  beforeAll(async () => {
    await c.query(`INSERT INTO docs SELECT i, 'document ' || i FROM generate_series(41, 150) i`);
  });

  /** Runs the long statement on a fresh session; stops it once the prefetch began computing. */
  async function interrupted(how: (client: pg.Client, pid: number) => Promise<void>, setup = '') {
    const client = await s.connect();
    const pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    if (setup) await client.query(setup);
    const before = await stats();
    const q = client.query(long()).then(() => ({ code: 'none' }), (e) => e);
    // Computing: the engine has the prefetch's requests, and the backend waits in the statement a cancel hits.
    await expect.poll(generationBusy, { timeout: 10_000, interval: 10, message: 'the prefetch computing' }).toBeGreaterThan(0);
    await expect.poll(async () => (await direct.query('SELECT query FROM pg_stat_activity WHERE pid = $1', [pid])).rows[0]?.query as string,
      { timeout: 10_000, interval: 10, message: "the backend in the prefetch's wait" }).toContain('computing prefetched answers');
    await how(client, pid);
    await expect.poll(generationBusy, { timeout: 10_000, interval: 10, message: 'the engine free once the statement is stopped' }).toBe(0);
    // A deadline, not a wait: a statement still running after 10 s fails the test with 'still running'.
    const err = await Promise.race([q, sleep(10_000).then(() => ({ code: 'still running' }))]);
    const after = await stats();
    destroy(client);
    await expect.poll(generationBusy, { timeout: 10_000, interval: 10, message: 'the engine free after the session ended' }).toBe(0);
    return { err, prefetched: after.p - before.p };
  }

  test('pg_cancel_backend of its backend while the proxy computes: the prefetch stops and the statement ends with 57014', async () => {
    const r = await interrupted((_, pid) => direct.query('SELECT pg_cancel_backend($1)', [pid]).then(() => {}));
    console.log('pg_cancel_backend', { ...r, err: r.err.message });
    expect(r.prefetched).toBeLessThan(30);
    expect(r.err.code).toBe('57014');
  }, 60_000);

  test("the client's cancel while the proxy computes: the prefetch stops and the statement ends with 57014", async () => {
    const r = await interrupted((client) => cancelThroughProxy(s, client));
    console.log('client cancel', { ...r, err: r.err.message });
    expect(r.prefetched).toBeLessThan(30);
    expect(r.err.code).toBe('57014');
  }, 60_000);

  test('statement_timeout elapsed since the prefetch began: it stops computing, the statement times out as it would alone', async () => {
    const r = await interrupted(async () => {}, "SET statement_timeout = '1500ms'");
    console.log('statement_timeout', { ...r, err: r.err.message });
    expect(r.err.code).toBe('57014');
    expect(r.err.message).toMatch(/statement timeout/);
    expect(r.prefetched).toBeLessThan(30);
  }, 60_000);
});
