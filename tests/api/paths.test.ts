// The SQL API through the real proxy: the rewrite path (constant arguments evaluated by the proxy),
// the callback path (calls the proxy cannot see), and that both give the same bytes.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { startStack, type Stack } from './helpers.js';

let s: Stack;
let c: pg.Client;
beforeAll(async () => {
  s = await startStack();
  c = await s.connect();
});
afterAll(() => s?.stop());

const one = async (sql: string, params: unknown[] = [], client = c) => (await client.query(sql, params)).rows[0];

describe('rewrite path', () => {
  test('a literal call is answered by the proxy with what the engine gives, with config defaults', async () => {
    const before = s.daemon.stats().requests;
    const { t } = await one(`SELECT steadytext_generate('The capital of France is') AS t`);
    const direct = await s.engine.generate({ prompt: 'The capital of France is', maxTokens: 512, seed: 42, temperature: 0 });
    expect(t).toBe(direct);
    expect(t.length).toBeGreaterThan(0);
    expect(s.daemon.stats().requests).toBe(before); // the database did not have to call back
  });

  test('named arguments, casts, parameters and named prepared statements reused with new values', async () => {
    const p = 'Write a short poem about a robot:';
    const want = await s.engine.generate({ prompt: p, maxTokens: 100, seed: 123, temperature: 0 });
    expect((await one(`SELECT steadytext_generate('Write a short poem about a robot:', max_tokens := 100, seed := 123) AS t`)).t).toBe(want);
    expect((await one(`SELECT steadytext_generate($1, max_tokens => $2::int, seed => 123) AS t`, [p, 100])).t).toBe(want);
    for (const [prompt, n] of [['alpha', 5], ['beta', 7], ['alpha', 5]] as const) {
      const r = await c.query({ name: 'gen', text: 'SELECT steadytext_generate($1, $2) AS t', values: [prompt, n] });
      expect(r.rows[0].t).toBe(await s.engine.generate({ prompt, maxTokens: n, seed: 42, temperature: 0 }));
    }
  });

  test('calls in INSERT VALUES, UPDATE SET, WHERE, ORDER BY, CTEs and subqueries; several statements at once', async () => {
    await c.query('CREATE TABLE items (id serial primary key, name text, embedding vector(1024))');
    await c.query(`INSERT INTO items (name, embedding) VALUES ('city', steadytext_embed('A bustling metropolis')), ('sea', steadytext_embed('The quiet ocean'));
                   UPDATE items SET name = steadytext_generate('rename', max_tokens := 3) WHERE id = 2`);
    const direct = await s.engine.embed({ text: 'A bustling metropolis' });
    const stored = await one(`SELECT embedding::text AS e FROM items WHERE name = 'city'`);
    expect(Float32Array.from(JSON.parse(stored.e))).toEqual(direct);
    const ranked = await c.query(`WITH q AS (SELECT steadytext_embed('A bustling metropolis') AS v)
      SELECT name FROM items, q WHERE embedding <=> (SELECT v FROM q) < 2 ORDER BY embedding <=> steadytext_embed('A bustling metropolis') LIMIT 5`);
    expect(ranked.rows[0].name).toBe('city');
    expect((await one('SELECT name FROM items WHERE id = 2')).name).toBe(await s.engine.generate({ prompt: 'rename', maxTokens: 3, seed: 42, temperature: 0 }));
  });

  test('PREPARE and EXECUTE keep working', async () => {
    await c.query(`PREPARE embed_stmt (TEXT) AS SELECT steadytext_embed($1)::text AS e`);
    const r = await one(`EXECUTE embed_stmt('Machine learning concepts')`);
    expect(Float32Array.from(JSON.parse(r.e))).toEqual(await s.engine.embed({ text: 'Machine learning concepts' }));
    await c.query('DEALLOCATE embed_stmt');
  });

  test('prompts and outputs with quotes, $$, backslashes, semicolons, unicode and 100 kB round-trip exactly', async () => {
    const nasty = [`it's`, `$$; DROP TABLE items; --`, `back\\slash \\' E'\\x41'`, `日本語 😀 é`, `$tag$ x $tag$`, `a;b;c`, 'x y;'.repeat(500)];
    for (const p of nasty) {
      const want = await s.engine.generate({ prompt: p, maxTokens: 8, seed: 42, temperature: 0 });
      expect((await one(`SELECT steadytext_generate($1, 8) AS t`, [p])).t).toBe(want);
      const lit = `E'${p.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`;
      expect((await one(`SELECT steadytext_generate(${lit}, 8) AS t`)).t).toBe(want);
    }
    expect((await one('SELECT count(*)::int AS n FROM items')).n).toBe(2);
    // 100 kB does not fit the tiny model's context: the error names the prompt's exact token count,
    // so the text reached the engine intact, through both protocols.
    const big = `'quoted' $$ \\ ; 😀 `.repeat(5_000);
    const want = await s.engine.generate({ prompt: big, maxTokens: 8, seed: 42, temperature: 0 }).catch((e) => e);
    const lit = `E'${big.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`;
    for (const [sql, params] of [[`SELECT steadytext_generate($1, 8)`, [big]], [`SELECT steadytext_generate(${lit}, 8)`, []]] as const) {
      const got = await c.query(sql, [...params]).catch((e) => e);
      expect(got.code).toBe('54000');
      expect(got.message).toContain(want.message);
    }
  });
});

describe('callback path and agreement between paths', () => {
  test('a PL/pgSQL function (invisible to the proxy) gets the same bytes as the rewrite path', async () => {
    await c.query(`CREATE OR REPLACE FUNCTION deterministic_expand(topic TEXT, seed INT DEFAULT 42) RETURNS TEXT AS $$
      BEGIN RETURN steadytext_generate('Write a detailed explanation about ' || topic, max_tokens := 20, seed := seed); END;
      $$ LANGUAGE plpgsql`);
    const before = s.daemon.stats().requests;
    const viaCallback = (await one(`SELECT deterministic_expand('quantum computing', 123) AS t`)).t;
    expect(s.daemon.stats().requests).toBeGreaterThan(before);
    const viaRewrite = (await one(`SELECT steadytext_generate('Write a detailed explanation about quantum computing', max_tokens := 20, seed := 123) AS t`)).t;
    expect(viaCallback).toBe(viaRewrite);
    const emb = await c.query(`CREATE OR REPLACE FUNCTION emb(t text) RETURNS vector AS $$ BEGIN RETURN steadytext_embed(t); END $$ LANGUAGE plpgsql;
      SELECT emb('same text')::text = steadytext_embed('same text')::text AS same`);
    expect((emb as unknown as pg.QueryResult[])[1].rows[0].same).toBe(true);
  });
});

describe('errors and privileges', () => {
  test('an engine error is a PostgreSQL error with its SQLSTATE, inside the transaction, and the session goes on', async () => {
    await c.query('BEGIN');
    const err = await c.query(`SELECT steadytext_generate('x', max_tokens := 100000)`).catch((e) => e);
    expect(err.code).toBe('22023');
    expect(err.message).toMatch(/max_tokens/);
    expect((await c.query('SELECT 1').catch((e) => e)).code).toBe('25P02');
    await c.query('ROLLBACK');
    const e2 = await c.query(`SELECT steadytext_embed('')`).catch((e) => e);
    expect(e2.code).toBe('22023');
    expect((await one('SELECT 1 AS ok')).ok).toBe(1);
  });

  test('REVOKE EXECUTE is enforced through the proxy (42501), and a client cannot write the cache', async () => {
    await c.query(`DROP ROLE IF EXISTS ai_paths_user; CREATE ROLE ai_paths_user LOGIN PASSWORD 'ai'; GRANT USAGE ON SCHEMA public TO ai_paths_user`);
    const u = await s.connect(s.url('ai_paths_user', 'ai'));
    expect((await one(`SELECT steadytext_generate('hi', 4) AS t`, [], u)).t).toBeTypeOf('string');
    await c.query('REVOKE EXECUTE ON FUNCTION steadytext_generate FROM ai_paths_user, PUBLIC');
    const denied = await u.query(`SELECT steadytext_generate('hi', 4)`).catch((e) => e);
    expect(denied.code).toBe('42501');
    const forged = await u.query(`INSERT INTO steadytext_cache (cache_key, operation, model_identity, prompt, response) VALUES ('k', 'generate', 'x', 'p', 'fake')`).catch((e) => e);
    expect(forged.code).toBe('42501');
    // Nor read other roles' prompts and answers, or the logs; its own calls still find their cached answers.
    for (const t of ['steadytext_cache', 'steadytext_logs', 'steadytext_debug_logs']) {
      expect((await u.query(`SELECT * FROM ${t} LIMIT 1`).catch((e) => e)).code).toBe('42501');
    }
    await c.query(`CREATE OR REPLACE FUNCTION emb_fn(t text) RETURNS vector LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_embed(t); END $$`);
    const direct = (await one(`SELECT steadytext_embed('private cache')::text AS v`, [], u)).v;
    expect((await one(`SELECT emb_fn('private cache')::text AS v`, [], u)).v).toBe(direct);
    await c.query('GRANT EXECUTE ON FUNCTION steadytext_generate TO PUBLIC');
  });

  test('after steadytext_daemon_stop the next call loads the models again, unless daemon_auto_start is false', async () => {
    expect((await one('SELECT steadytext_daemon_stop() AS ok')).ok).toBe(true);
    expect((await one(`SELECT steadytext_generate('after stop', 3) AS t`)).t).toBe(await s.engine.generate({ prompt: 'after stop', maxTokens: 3, seed: 42, temperature: 0 }));
    await c.query(`SELECT steadytext_config_set('daemon_auto_start', 'false')`);
    await one('SELECT steadytext_daemon_stop() AS ok');
    const err = await c.query(`SELECT steadytext_generate('while stopped', 3)`).catch((e) => e);
    expect(err.code).toBe('55000');
    expect(err.hint).toMatch(/steadytext_daemon_start/);
    expect((await one('SELECT steadytext_daemon_start() AS ok')).ok).toBe(true);
    expect((await one(`SELECT steadytext_generate('while stopped', 3) AS t`)).t).toBeTypeOf('string');
    await c.query(`SELECT steadytext_config_set('daemon_auto_start', 'true')`);
  });

  test('failures land in steadytext_logs; debug entries only while debug_mode is on', async () => {
    await c.query(`SELECT steadytext_generate('x', max_tokens := -5)`).catch(() => {});
    // Log writes are asynchronous (and a debug entry is kept only if debug_mode is still on when it is
    // written): wait for each before going on.
    const waitFor = (sql: string) =>
      expect.poll(async () => Number((await one(sql)).n), { timeout: 5_000, interval: 25, message: sql }).toBeGreaterThanOrEqual(1);
    await c.query(`SELECT steadytext_config_set('debug_mode', 'true')`);
    await one(`SELECT steadytext_generate('debug me', 3) AS t`);
    await waitFor(`SELECT count(*) AS n FROM steadytext_debug_logs WHERE event = 'rewrite'`);
    await c.query(`SELECT steadytext_config_set('debug_mode', 'false')`);
    await one(`SELECT steadytext_generate('quiet now', 3) AS t`);
    await waitFor(`SELECT count(*) AS n FROM steadytext_logs WHERE level = 'error'`);
    const errors = (await c.query(`SELECT * FROM steadytext_logs WHERE level = 'error' ORDER BY timestamp DESC`)).rows;
    expect(errors[0]).toMatchObject({ event: 'rewrite_error' });
    expect(errors[0].timestamp).toBeInstanceOf(Date);
    const debug = (await c.query(`SELECT details->>'fn' AS fn, message FROM steadytext_debug_logs WHERE event = 'rewrite'`)).rows;
    expect(debug.length).toBe(1);
  });

  test('a config change takes effect on the next call in every open session', async () => {
    const other = await s.connect();
    await one(`SELECT steadytext_generate('config probe') AS t`, [], other); // warm the other session
    await c.query(`SELECT steadytext_config_set('default_max_tokens', '3')`);
    const t = (await one(`SELECT steadytext_generate('config probe') AS t`, [], other)).t;
    expect(t).toBe(await s.engine.generate({ prompt: 'config probe', maxTokens: 3, seed: 42, temperature: 0 }));
    await c.query(`SELECT steadytext_config_set('default_max_tokens', '512')`);
  });
});
