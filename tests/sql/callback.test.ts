// The callback path end to end with the real engine on the tiny models: calls the proxy cannot see
// (PL/pgSQL, as in the seed's examples) reach the daemon through dblink and return exactly what the
// engine returns when asked directly; the answers land in steadytext_cache for later calls.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import type { Engine } from '../../inference/engine.js';
import { startDaemon, type DaemonHandle } from '../../sql/daemon/server.js';
import { DatabaseRegistry, prepareDatabase } from '../../sql/databases.js';
import { parseVectorText, streamChunks } from '../../sql/answers.js';
import { cacheKey, embedParams, generateParams } from '../../sql/cache-key.js';
import { createRole, dropRole, freshDatabase, pgError, silentLogger, tinyEngine, type TestDatabase } from './helpers.js';

let db: TestDatabase;
let engine: Engine;
let daemon: DaemonHandle;
let databases: DatabaseRegistry;
let c: pg.Client;
const start = (port: number, secret: string) => startDaemon({ listen: { host: '127.0.0.1', port }, secret, engine, databaseFor: (name) => databases.get(name), logger: silentLogger });
beforeAll(async () => {
  db = await freshDatabase('st_callback');
  engine = await tinyEngine();
  const { secret } = await prepareDatabase(db.url);
  databases = new DatabaseRegistry({ serviceUrl: db.url, autoInstall: false, engine, logger: silentLogger });
  daemon = await start(0, secret);
  await prepareDatabase(db.url, { daemonHost: '127.0.0.1', daemonPort: daemon.address.port });
  c = await db.connect();
  // This suite is the dblink transport's: no in-band fallback when the daemon is away (tests/sql/inband.test.ts).
  await c.query(`SELECT steadytext_config_set('callback_transport', 'dblink')`);
  // The seed's examples, verbatim.
  await c.query(`
    CREATE OR REPLACE FUNCTION deterministic_expand(topic TEXT, seed INT DEFAULT 42) RETURNS TEXT AS $$
    BEGIN
        RETURN steadytext_generate('Write a detailed explanation about ' || topic, max_tokens := 200, seed := seed);
    END;
    $$ LANGUAGE plpgsql;

    CREATE TABLE products (
        id SERIAL PRIMARY KEY, name TEXT NOT NULL, description TEXT, category TEXT, price DECIMAL(10,2),
        embedding VECTOR(1024), created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    );

    CREATE OR REPLACE FUNCTION add_product(p_name TEXT, p_description TEXT, p_category TEXT, p_price DECIMAL) RETURNS INTEGER AS $$
    DECLARE
        v_id INTEGER;
        v_combined_text TEXT;
    BEGIN
        v_combined_text := p_name || ' ' || p_description || ' Category: ' || p_category;
        INSERT INTO products (name, description, category, price, embedding)
        VALUES (p_name, p_description, p_category, p_price, steadytext_embed(v_combined_text))
        RETURNING id INTO v_id;
        RETURN v_id;
    END;
    $$ LANGUAGE plpgsql;

    CREATE OR REPLACE FUNCTION search_products(query_text TEXT, limit_results INT DEFAULT 10, category_filter TEXT DEFAULT NULL)
    RETURNS TABLE(product_id INT, product_name TEXT, product_description TEXT, similarity FLOAT) AS $$
    DECLARE
        query_embedding VECTOR(1024);
    BEGIN
        query_embedding := steadytext_embed(query_text);
        RETURN QUERY
        SELECT p.id AS product_id, p.name AS product_name, p.description AS product_description,
               1 - (p.embedding <=> query_embedding) AS similarity
        FROM products p
        WHERE (category_filter IS NULL OR p.category = category_filter)
        ORDER BY p.embedding <=> query_embedding
        LIMIT limit_results;
    END;
    $$ LANGUAGE plpgsql;`);
}, 180_000);
afterAll(async () => {
  await daemon?.close();
  await databases?.close();
  await engine?.close();
  await db?.drop();
});

const cosine = (a: Float32Array, b: Float32Array) => {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
};

describe('generation through the callback path', () => {
  it('a PL/pgSQL function calling steadytext_generate returns what the engine returns directly', async () => {
    const sql = (await c.query(`SELECT deterministic_expand('quantum computing', 123) AS t`)).rows[0].t as string;
    const direct = await engine.generate({ prompt: 'Write a detailed explanation about quantum computing', maxTokens: 200, seed: 123, temperature: 0, modelSize: 'small' });
    expect(direct.length).toBeGreaterThan(10);
    expect(sql).toBe(direct);
    expect((await c.query(`SELECT deterministic_expand('quantum computing', 123) AS t`)).rows[0].t).toBe(direct);
  });

  it('sampling with a seed matches too, and the answer is cached under the shared key', async () => {
    await c.query(`CREATE FUNCTION sampled(p text, s int) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_generate(p, max_tokens := 40, seed := s, temperature := 0.8); END $$`);
    const a = (await c.query(`SELECT sampled('Once upon a time', 7) AS t`)).rows[0].t;
    const b = (await c.query(`SELECT sampled('Once upon a time', 8) AS t`)).rows[0].t;
    expect(a).toBe(await engine.generate({ prompt: 'Once upon a time', maxTokens: 40, seed: 7, temperature: 0.8 }));
    expect(b).toBe(await engine.generate({ prompt: 'Once upon a time', maxTokens: 40, seed: 8, temperature: 0.8 }));
    expect(a).not.toBe(b);
    await daemon.flush();
    const identity = await engine.modelIdentity('generation', 'small');
    const row = (await c.query(`SELECT response, model_identity FROM steadytext_cache WHERE cache_key = $1`, [cacheKey('generate', identity, generateParams(40, 7, 0.8), 'Once upon a time')])).rows[0];
    expect(row).toEqual({ response: a, model_identity: identity });
    expect((await c.query(`SELECT identity FROM steadytext_models WHERE role = 'generation' AND size = 'small'`)).rows[0].identity).toBe(identity);
  });

  it('steadytext_generate_stream returns chunks that join to the generated text', async () => {
    const rows = (await c.query(`SELECT * FROM steadytext_generate_stream('Tell me about rivers', 30)`)).rows.map((r) => r.steadytext_generate_stream as string);
    const text = await engine.generate({ prompt: 'Tell me about rivers', maxTokens: 30, seed: 42, temperature: 0 });
    expect(rows.join('')).toBe(text);
    expect(rows).toEqual(streamChunks(text));
  });

  it('engine argument errors come back as 22023 with the engine\'s message', async () => {
    const e = await pgError(c.query(`SELECT steadytext_generate('x', max_tokens := 100000)`));
    expect(e.code).toBe('22023');
    expect(e.message).toMatch(/^steadytext_generate: max_tokens must be an integer from 1 to 8192/);
    const u = await pgError(c.query(`SELECT steadytext_generate('x', model_size := 'enormous')`));
    expect(u.code).toBe('22023');
    expect(u.message).toMatch(/unknown generation model 'enormous'/);
  });

  it('daemon_timeout_ms bounds a callback (57014)', async () => {
    await c.query(`SELECT steadytext_config_set('daemon_timeout_ms', '20')`);
    try {
      const e = await pgError(c.query(`SELECT steadytext_generate('a long story please', max_tokens := 4000, seed := 5, temperature := 0.9)`));
      expect(e.code).toBe('57014');
      expect(e.hint).toMatch(/daemon_timeout_ms/);
    } finally {
      await c.query(`SELECT steadytext_config_set('daemon_timeout_ms', '30000')`);
    }
  });
});

describe('embeddings through the callback path', () => {
  it('steadytext_embed returns the engine\'s vector bit for bit', async () => {
    const text = 'PostgreSQL database';
    const v = parseVectorText((await c.query(`SELECT steadytext_embed($1)::text AS v`, [text])).rows[0].v);
    const direct = await engine.embed({ text, seed: 42 });
    expect(v.length).toBe(1024);
    expect(Buffer.from(v.buffer).equals(Buffer.from(direct.buffer, direct.byteOffset, direct.byteLength))).toBe(true);
  });

  it('the seed\'s add_product / search_products flow works and ranks by the engine\'s vectors', async () => {
    const products = [
      ['Eco-Friendly Water Bottle', 'Stainless steel water bottle with vacuum insulation', 'Kitchenware', 24.99],
      ['Trail Running Shoes', 'Lightweight shoes with grippy soles for muddy trails', 'Footwear', 89.5],
      ['Bamboo Cutting Board', 'Sustainable bamboo board for chopping vegetables', 'Kitchenware', 19],
      ['Insulated Coffee Mug', 'Keeps drinks hot for hours, dishwasher safe', 'Kitchenware', 14.25],
    ] as const;
    const ids: number[] = [];
    for (const p of products) ids.push((await c.query(`SELECT * FROM add_product($1, $2, $3, $4) AS id`, [...p])).rows[0].id);
    expect(ids).toEqual([1, 2, 3, 4]);
    const got = (await c.query(`SELECT * FROM search_products('sustainable drinking container', 5)`)).rows;
    expect(got).toHaveLength(4);

    const q = await engine.embed({ text: 'sustainable drinking container' });
    const expected = await Promise.all(products.map(async ([name, description, category], i) => ({
      product_id: ids[i], product_name: name, product_description: description,
      similarity: cosine(await engine.embed({ text: `${name} ${description} Category: ${category}` }), q),
    })));
    expected.sort((a, b) => b.similarity - a.similarity);
    expect(got.map((r) => r.product_id)).toEqual(expected.map((r) => r.product_id));
    got.forEach((r, i) => expect(r.similarity).toBeCloseTo(expected[i].similarity, 5));
    const kitchen = (await c.query(`SELECT product_id FROM search_products('sustainable drinking container', 2, 'Kitchenware')`)).rows;
    expect(kitchen).toHaveLength(2);
  });
});

describe('the cache and the daemon', () => {
  it('answers cached by the daemon keep being served while the daemon is away', async () => {
    await c.query(`SELECT deterministic_expand('relational algebra')`);
    await c.query(`SELECT steadytext_embed('cached vector')`);
    await daemon.flush();
    const expand = (await c.query(`SELECT deterministic_expand('relational algebra') AS t`)).rows[0].t;
    const embedding = (await c.query(`SELECT steadytext_embed('cached vector')::text AS v`)).rows[0].v;
    const identity = await engine.modelIdentity('embedding', 'small');
    expect((await c.query(`SELECT count(*)::int AS n FROM steadytext_cache WHERE cache_key = $1`, [cacheKey('embed', identity, embedParams(42), 'cached vector')])).rows[0].n).toBe(1);

    const port = daemon.address.port;
    const { secret } = await prepareDatabase(db.url);
    await daemon.close();
    try {
      const fresh = await db.connect();
      expect((await fresh.query(`SELECT deterministic_expand('relational algebra') AS t`)).rows[0].t).toBe(expand);
      expect((await fresh.query(`SELECT steadytext_embed('cached vector')::text AS v`)).rows[0].v).toBe(embedding);
      const miss = await pgError(fresh.query(`SELECT deterministic_expand('something new')`));
      expect(miss.code).toBe('08001');
      expect(miss.message).toContain(`steadytext_generate could not reach the pg-steadytext daemon at 127.0.0.1:${port}`);
      expect((await fresh.query('SELECT running FROM steadytext_daemon_status()')).rows[0].running).toBe(false);
      await fresh.end();
    } finally {
      daemon = await start(port, secret);
    }
  });

  it('status and model info describe the running engine; stop and start manage its models', async () => {
    const s = (await c.query('SELECT * FROM steadytext_daemon_status()')).rows[0];
    expect(s).toMatchObject({ running: true, pid: process.pid, host: '127.0.0.1', port: daemon.address.port });
    expect(Number(s.requests_processed)).toBeGreaterThan(0);
    const info = (await c.query('SELECT * FROM steadytext_model_info() WHERE loaded')).rows.map((r) => r.model_type).sort();
    expect(info).toEqual(['embedding', 'generation']);
    expect((await c.query('SELECT steadytext_daemon_stop() AS ok')).rows[0].ok).toBe(true);
    expect((await c.query('SELECT running FROM steadytext_daemon_status()')).rows[0].running).toBe(false);
    expect((await c.query('SELECT count(*)::int AS n FROM steadytext_model_info() WHERE loaded')).rows[0].n).toBe(0);
    expect((await c.query('SELECT steadytext_daemon_start() AS ok')).rows[0].ok).toBe(true);
    expect((await c.query('SELECT running FROM steadytext_daemon_status()')).rows[0].running).toBe(true);
    expect((await c.query(`SELECT deterministic_expand('after restart', 1) AS t`)).rows[0].t)
      .toBe(await engine.generate({ prompt: 'Write a detailed explanation about after restart', maxTokens: 200, seed: 1 }));
  });
});

describe('privileges on the callback path', () => {
  it('a plain role gets callback answers; after REVOKE ... FROM PUBLIC it gets 42501 until granted', async () => {
    const role = await createRole('st_cb');
    const u = await db.connect(db.urlAs(role.user, role.password));
    try {
      const mine = (await u.query(`SELECT deterministic_expand('graph theory', 9) AS t`)).rows[0].t;
      expect(mine).toBe(await engine.generate({ prompt: 'Write a detailed explanation about graph theory', maxTokens: 200, seed: 9 }));
      expect((await pgError(u.query('SELECT * FROM steadytext_daemon_secret'))).code).toBe('42501');
      await db.query('REVOKE EXECUTE ON FUNCTION steadytext_generate FROM PUBLIC');
      const e = await pgError(u.query(`SELECT deterministic_expand('graph theory', 9)`));
      expect(e.code).toBe('42501');
      expect(e.message).toMatch(/permission denied for function steadytext_generate/);
      await db.query(`GRANT EXECUTE ON FUNCTION steadytext_generate TO ${role.user}`);
      expect((await u.query(`SELECT deterministic_expand('graph theory', 9) AS t`)).rows[0].t).toBe(mine);
    } finally {
      await db.query('GRANT EXECUTE ON FUNCTION steadytext_generate TO PUBLIC');
      await u.end();
      await dropRole(role.user, [db]);
    }
  });
});
