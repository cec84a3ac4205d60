// The answer contract and the database side of the cache, with no daemon anywhere: a given
// _steadytext_answer comes back untouched; otherwise defaults resolve, the cache answers, and a miss
// fails with an error that says what to do.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { createServer } from 'node:net';
import { cacheKey, embedParams, generateParams } from '../../sql/cache-key.js';
import { errorAnswer, wrapAnswer } from '../../sql/answers.js';
import { installSql } from '../../sql/install.js';
import { freshDatabase, pgError, type TestDatabase } from './helpers.js';

let db: TestDatabase;
let c: pg.Client;
let deadPort: number;
beforeAll(async () => {
  db = await freshDatabase('st_answer');
  c = await db.connect();
  await installSql(c);
  await c.query(`INSERT INTO steadytext_daemon_secret (secret) VALUES ('0123456789abcdef0123')`);
  // A port nobody listens on: any call that tries the callback path fails loudly.
  deadPort = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  await c.query(`SELECT steadytext_config_set('daemon_host', '127.0.0.1'), steadytext_config_set('daemon_port', $1)`, [String(deadPort)]);
});
afterAll(() => db?.drop());

const one = async (sql: string, params: unknown[] = []) => (await c.query(sql, params)).rows[0];
const sqlCounters = async () => one(`SELECT (SELECT last_value FROM steadytext_sql_cache_hits) AS h, (SELECT last_value FROM steadytext_sql_cache_misses) AS m`);

describe('_steadytext_answer carrying an error', () => {
  it('is raised by the function itself, with its SQLSTATE, message and hint, and aborts the transaction', async () => {
    await c.query('BEGIN');
    const err = await c.query(`SELECT steadytext_generate('p', _steadytext_answer => $1)`, [errorAnswer('53000', 'engine overloaded', 'retry later')]).catch((e) => e);
    expect(err).toMatchObject({ code: '53000', message: 'engine overloaded', hint: 'retry later' });
    expect((await c.query('SELECT 1').catch((e) => e)).code).toBe('25P02');
    await c.query('ROLLBACK');
    for (const f of ['steadytext_embed', 'steadytext_generate_stream']) {
      const e = await c.query(`SELECT * FROM ${f}('p', _steadytext_answer => $1)`, [errorAnswer('22023', `${f}: bad`)]).catch((x) => x);
      expect(e).toMatchObject({ code: '22023', message: `${f}: bad` });
    }
  });

  it('an answer that itself starts with SOH survives the escape', async () => {
    const text = '\x01\x01odd';
    expect((await one(`SELECT steadytext_generate('p', _steadytext_answer => $1) AS a`, [wrapAnswer(text)])).a).toBe(text);
    expect((await one(`SELECT steadytext_generate('p', _steadytext_answer => $1) AS a`, [wrapAnswer('plain')])).a).toBe('plain');
  });
});

describe('_steadytext_answer given: returned as is, nothing else happens', () => {
  it('every computing function returns the answer, cast to its type', async () => {
    const before = await sqlCounters();
    const weird = `it's "quoted" \\ $$ ; DROP TABLE x; -- 😀 日本`;
    expect((await one(`SELECT steadytext_generate('p', _steadytext_answer => $1) AS a`, [weird])).a).toBe(weird);
    expect((await one(`SELECT steadytext_generate('p', 10, 1, 0.5, 'large', $1) AS a`, ['positional'])).a).toBe('positional');
    // Argument checks are part of the work: skipped when the answer is given.
    expect((await one(`SELECT steadytext_generate('p', max_tokens => -1, _steadytext_answer => 'x') AS a`)).a).toBe('x');
    expect((await one(`SELECT steadytext_embed('t', _steadytext_answer => '[0.5,-1,2e-3]')::text AS a`)).a).toBe('[0.5,-1,0.002]');
    expect((await one(`SELECT vector_dims(steadytext_embed('t', 7, 'small', $1)) AS d`, [`[${Array(1024).fill('0.1').join(',')}]`])).d).toBe(1024);
    expect((await c.query(`SELECT * FROM steadytext_generate_stream('p', _steadytext_answer => $1) AS s`, [JSON.stringify(['Hel', 'lo', ' 😀'])])).rows.map((r) => r.s))
      .toEqual(['Hel', 'lo', ' 😀']);
    expect((await c.query(`SELECT * FROM steadytext_generate_stream('p', _steadytext_answer => '[]')`)).rows).toEqual([]);
    expect(await one(`SELECT * FROM steadytext_daemon_status(_steadytext_answer => $1)`, [JSON.stringify({
      running: true, pid: 42, host: 'h', port: 1, uptime_seconds: 3, requests_processed: 4, errors_count: 0, avg_latency_ms: 1.5,
    })])).toEqual({ running: true, pid: 42, host: 'h', port: 1, uptime_seconds: 3, requests_processed: '4', errors_count: '0', avg_latency_ms: 1.5 });
    for (const f of ['start', 'stop', 'restart']) {
      expect((await one(`SELECT steadytext_daemon_${f}(_steadytext_answer => 'true') AS b`)).b).toBe(true);
      expect((await one(`SELECT steadytext_daemon_${f}('false') AS b`)).b).toBe(false);
    }
    expect((await c.query(`SELECT * FROM steadytext_model_info(_steadytext_answer => $1)`, [JSON.stringify([
      { model_type: 'generation', model_size: 'small', loaded: true, memory_mb: 12 },
      { model_type: 'embedding', model_size: 'small', loaded: false, memory_mb: 0 },
    ])])).rows).toEqual([
      { model_type: 'generation', model_size: 'small', loaded: true, memory_mb: 12 },
      { model_type: 'embedding', model_size: 'small', loaded: false, memory_mb: 0 },
    ]);
    expect(await sqlCounters()).toEqual(before); // no cache lookup happened
  });

  it('works in a read-only transaction and inside PL/pgSQL', async () => {
    await c.query('BEGIN READ ONLY');
    expect((await one(`SELECT steadytext_generate('p', _steadytext_answer => 'ro') AS a`)).a).toBe('ro');
    await c.query('COMMIT');
    await c.query(`CREATE FUNCTION wrap(t text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_generate(t, _steadytext_answer => upper(t)); END $$`);
    expect((await one(`SELECT wrap('abc') AS a`)).a).toBe('ABC');
  });

  it('a NULL input gives NULL without work', async () => {
    expect((await one(`SELECT steadytext_generate(NULL) AS a`)).a).toBeNull();
    expect((await one(`SELECT steadytext_embed(NULL) AS a`)).a).toBeNull();
    expect((await c.query(`SELECT * FROM steadytext_generate_stream(NULL)`)).rows).toEqual([]);
  });
});

describe('_steadytext_answer NULL: defaults, cache, callback', () => {
  const GEN_ID = 'gen-identity-1';
  const EMB_ID = 'emb-identity-1';
  beforeAll(async () => {
    await c.query(`INSERT INTO steadytext_models (role, size, identity) VALUES ('generation', 'small', $1), ('embedding', 'small', $2), ('generation', 'large', 'gen-large')`, [GEN_ID, EMB_ID]);
  });
  const putGenerate = (op: string, identity: string, params: string, prompt: string, response: string) =>
    c.query(`INSERT INTO steadytext_cache (cache_key, operation, model_identity, params, prompt, response) VALUES ($1, $2, $3, '{}', $4, $5)
             ON CONFLICT (cache_key) DO UPDATE SET response = EXCLUDED.response, created_at = now()`, [cacheKey(op, identity, params, prompt), op, identity, prompt, response]);

  it('a cached answer is found under the key the TypeScript side computes, with defaults from steadytext_config', async () => {
    await putGenerate('generate', GEN_ID, generateParams(512, 42, 0), 'The capital of France is', 'Paris.');
    expect((await one(`SELECT steadytext_generate('The capital of France is') AS a`)).a).toBe('Paris.');
    expect((await one(`SELECT steadytext_generate('The capital of France is', 512, 42, 0, 'small') AS a`)).a).toBe('Paris.');

    await putGenerate('generate', GEN_ID, generateParams(100, 123, 0.7), 'poem', 'sampled poem');
    expect((await one(`SELECT steadytext_generate('poem', max_tokens := 100, seed := 123, temperature := 0.7) AS a`)).a).toBe('sampled poem');
    await putGenerate('generate', 'gen-large', generateParams(512, 42, 0), 'big', 'from large');
    expect((await one(`SELECT steadytext_generate('big', model_size => 'large') AS a`)).a).toBe('from large');

    const v = `[${Array.from({ length: 1024 }, (_, i) => ((i % 7) - 3) / 8).join(',')}]`;
    await c.query(`INSERT INTO steadytext_cache (cache_key, operation, model_identity, prompt, embedding) VALUES ($1, 'embed', $2, 'doc', $3)`,
      [cacheKey('embed', EMB_ID, embedParams(42), 'doc'), EMB_ID, v]);
    expect((await one(`SELECT steadytext_embed('doc')::text = $1::vector::text AS same`, [v])).same).toBe(true);

    await putGenerate('generate_stream', GEN_ID, generateParams(16, 42, 0), 'stream me', JSON.stringify(['a', ' b', ' c']));
    expect((await c.query(`SELECT * FROM steadytext_generate_stream('stream me', 16)`)).rows.map((r) => Object.values(r)[0])).toEqual(['a', ' b', ' c']);
  });

  it('config defaults are part of the key: another default_seed misses', async () => {
    await c.query(`SELECT steadytext_config_set('default_seed', '7')`);
    try {
      const e = await pgError(c.query(`SELECT steadytext_generate('The capital of France is')`));
      expect(e.code).toBe('08001');
      await putGenerate('generate', GEN_ID, generateParams(512, 7, 0), 'The capital of France is', 'Paris (seed 7).');
      expect((await one(`SELECT steadytext_generate('The capital of France is') AS a`)).a).toBe('Paris (seed 7).');
    } finally {
      await c.query(`SELECT steadytext_config_set('default_seed', '42')`);
    }
  });

  it('counts hits and misses made in the database in steadytext_stats', async () => {
    const before = await one('SELECT cache_hits, cache_misses, requests FROM steadytext_stats');
    await c.query(`SELECT steadytext_generate('The capital of France is')`);
    await pgError(c.query(`SELECT steadytext_generate('never cached')`));
    const after = await one('SELECT cache_hits, cache_misses, requests FROM steadytext_stats');
    expect(Number(after.cache_hits) - Number(before.cache_hits)).toBe(1);
    expect(Number(after.cache_misses) - Number(before.cache_misses)).toBe(1);
    expect(Number(after.requests) - Number(before.requests)).toBe(2);
    // Counting needs no write lock: a read-only transaction still gets its answers.
    await c.query('BEGIN READ ONLY');
    expect((await one(`SELECT steadytext_generate('The capital of France is') AS a`)).a).toBe('Paris.');
    await c.query('COMMIT');
  });

  it('honours cache_ttl_seconds and cache_enabled', async () => {
    const key = cacheKey('generate', GEN_ID, generateParams(512, 42, 0), 'The capital of France is');
    await c.query(`UPDATE steadytext_cache SET created_at = now() - interval '2 hours' WHERE cache_key = $1`, [key]);
    expect((await pgError(c.query(`SELECT steadytext_generate('The capital of France is')`))).code).toBe('08001');
    await c.query(`SELECT steadytext_config_set('cache_ttl_seconds', '86400')`);
    expect((await one(`SELECT steadytext_generate('The capital of France is') AS a`)).a).toBe('Paris.');
    await c.query(`SELECT steadytext_config_set('cache_ttl_seconds', '3600')`);
    await c.query(`UPDATE steadytext_cache SET last_accessed = now() WHERE cache_key = $1`, [key]);
    expect((await one(`SELECT steadytext_generate('The capital of France is') AS a`)).a).toBe('Paris.');

    await c.query(`SELECT steadytext_config_set('cache_enabled', 'false')`);
    try {
      expect((await pgError(c.query(`SELECT steadytext_generate('The capital of France is')`))).code).toBe('08001');
    } finally {
      await c.query(`SELECT steadytext_config_set('cache_enabled', 'true')`);
    }
  });

  it('a model size the proxy never registered skips the cache and asks the daemon', async () => {
    await putGenerate('generate', 'whatever', generateParams(512, 42, 0), 'x', 'never used');
    const e = await pgError(c.query(`SELECT steadytext_generate('x', model_size => 'unregistered')`));
    expect(e.code).toBe('08001');
  });

  it('rejects bad arguments with 22023 before any other work', async () => {
    for (const [sql, msg] of [
      [`SELECT steadytext_generate('p', max_tokens => 0)`, /steadytext_generate: max_tokens must be a positive integer, got 0/],
      [`SELECT steadytext_generate('p', seed => -1)`, /seed must be an integer >= 0, got -1/],
      [`SELECT steadytext_generate('p', temperature => -0.5)`, /temperature must be a finite number >= 0/],
      [`SELECT steadytext_generate('p', temperature => 'NaN')`, /temperature must be a finite number >= 0/],
      [`SELECT steadytext_generate('p', temperature => 'Infinity')`, /temperature must be a finite number >= 0/],
      [`SELECT steadytext_embed('p', seed => -3)`, /steadytext_embed: seed must be an integer >= 0/],
      [`SELECT steadytext_generate('p', model_size => ' ')`, /model_size must be small, large or a model name/],
    ] as const) {
      const e = await pgError(c.query(sql));
      expect(e.code, sql).toBe('22023');
      expect(e.message, sql).toMatch(msg);
    }
  });

  it('an unreachable daemon fails with 08001 naming the address and how to fix it', async () => {
    const e = await pgError(c.query(`SELECT steadytext_generate('not cached anywhere')`));
    expect(e.code).toBe('08001');
    expect(e.message).toContain(`steadytext_generate could not reach the pg-steadytext daemon at 127.0.0.1:${deadPort}: `);
    expect(e.message).toMatch(/Connection refused/);
    expect(e.hint).toMatch(/Start the pg-steadytext proxy.*steadytext_config_set\('daemon_host', \.\.\.\).*steadytext_config_set\('daemon_port', \.\.\.\)/);
    const e2 = await pgError(c.query(`SELECT steadytext_embed('not cached either')`));
    expect(e2.message).toMatch(/^steadytext_embed could not reach/);
  });

  it('status and model info still answer without a daemon', async () => {
    const s = await one('SELECT * FROM steadytext_daemon_status()');
    expect(s).toMatchObject({ running: false, pid: null, host: '127.0.0.1', port: deadPort });
    const m = (await c.query('SELECT * FROM steadytext_model_info()')).rows;
    expect(m).toEqual([
      { model_type: 'embedding', model_size: 'small', loaded: false, memory_mb: null },
      { model_type: 'generation', model_size: 'large', loaded: false, memory_mb: null },
      { model_type: 'generation', model_size: 'small', loaded: false, memory_mb: null },
    ]);
    expect((await pgError(c.query('SELECT steadytext_daemon_start()'))).code).toBe('08001');
  });

  it('without dblink a miss says dblink is missing (55000)', async () => {
    await c.query('DROP EXTENSION dblink');
    try {
      const e = await pgError(c.query(`SELECT steadytext_generate('not cached anywhere')`));
      expect(e.code).toBe('55000');
      expect(e.message).toMatch(/dblink extension is not installed in database st_answer_/);
      expect(e.hint).toMatch(/CREATE EXTENSION dblink/);
      // Cached answers and given answers do not need it.
      expect((await one(`SELECT steadytext_generate('The capital of France is') AS a`)).a).toBe('Paris.');
      expect((await one(`SELECT * FROM steadytext_daemon_status()`)).running).toBe(false);
    } finally {
      await c.query('CREATE EXTENSION dblink');
    }
  });

  it('without a daemon secret a miss says the proxy has not prepared the database (55000)', async () => {
    await c.query('DELETE FROM steadytext_daemon_secret');
    const e = await pgError(c.query(`SELECT steadytext_generate('not cached anywhere')`));
    expect(e.code).toBe('55000');
    expect(e.message).toMatch(/no daemon secret/);
    await c.query(`INSERT INTO steadytext_daemon_secret (secret) VALUES ('0123456789abcdef0123')`);
  });

  it('is STABLE, so a vector index scan evaluates ORDER BY embedding <=> steadytext_embed(...) once, not per row', async () => {
    expect((await one(`SELECT provolatile FROM pg_proc WHERE proname = 'steadytext_embed'`)).provolatile).toBe('s');
    await c.query(`CREATE TABLE items (id int, embedding vector(1024))`);
    await c.query(`INSERT INTO items SELECT g, (SELECT array_agg(((g * 31 + i) % 17 - 8)::real) FROM generate_series(1, 1024) i)::vector FROM generate_series(1, 300) g`);
    await c.query(`CREATE INDEX ON items USING hnsw (embedding vector_cosine_ops)`);
    await c.query('ANALYZE items');
    await c.query('SET enable_seqscan = off');
    try {
      const plan = (await c.query(`EXPLAIN SELECT id FROM items ORDER BY embedding <=> steadytext_embed('doc') LIMIT 3`)).rows.map((r) => r['QUERY PLAN']).join('\n');
      expect(plan).toMatch(/Index Scan using items_embedding_idx/);
      const before = Number((await sqlCounters()).h);
      expect((await c.query(`SELECT id FROM items ORDER BY embedding <=> steadytext_embed('doc') LIMIT 3`)).rows).toHaveLength(3);
      expect(Number((await sqlCounters()).h) - before).toBeLessThan(5); // the cached 'doc' vector, looked up once or twice
    } finally {
      await c.query('RESET enable_seqscan');
    }
  });
});
