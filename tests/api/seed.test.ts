// Every SQL block of the seed document (tests/fixtures/seed/pg_steadytext.md, the product's contract), in
// order, statement by statement as psql sends them, through the proxy against PostgreSQL with pgvector.
// Blocks that are API signatures or error output, not SQL, do not parse and are not run; nor are the
// statements in OUT_OF_SCOPE.
import { seedSqlBlocks } from '../fixtures/seed.js';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type pg from 'pg';
import { findCalls, isParseFailure, loadParser } from '../../sql/calls.js';
import { startStack, type Stack } from './helpers.js';


// Where the document contradicts itself, PostgreSQL answers as it would without the proxy: the
// migration guide adds a column an earlier section created, and the index guide creates one index name twice.
const NATIVE_ERRORS: Record<string, string> = {
  'ALTER TABLE products ADD COLUMN embedding VECTOR(1024)': '42701',
  'CREATE INDEX idx_embedding ON products \nUSING ivfflat (embedding vector_cosine_ops)\nWITH (lists = 1000)': '42P07',
};

// Statements that need what the product never needs, with the reason: not run, so that no test depends
// on it. The document's install block creates plpython3u, the language of the original extension; the
// proxy answers every call without a server-side language, and many servers (the pgvector image) lack it.
const OUT_OF_SCOPE: Record<string, string> = {
  'CREATE EXTENSION IF NOT EXISTS plpython3u': 'plpython3u: the original extension\'s language, never used by pg-steadytext',
};
const outOfScope = (sql: string) => Object.hasOwn(OUT_OF_SCOPE, sql.replace(/\s+/g, ' ').replace(/;$/, ''));

let s: Stack;
let c: pg.Client;
beforeAll(async () => {
  await loadParser();
  // The document itself sets daemon_host/daemon_port to the defaults, so the daemon listens there.
  s = await startStack('st_seed', { daemonPort: 5557 });
  c = await s.connect();
  await c.query('DROP ROLE IF EXISTS ai_user').catch(() => {});
}, 120_000);
afterAll(async () => {
  await s?.stop();
});

/** The statements of the document's SQL blocks, in order. */
function seedStatements(): string[] {
  const out: string[] = [];
  for (const block of seedSqlBlocks()) {
    const buf = Buffer.from(block, 'utf8');
    const stmts = findCalls(buf);
    if (isParseFailure(stmts)) continue;
    for (const st of stmts) {
      const sql = buf.subarray(st.start, st.end).toString('utf8').trim();
      // The comment-only tail of a block is not a statement.
      if (sql.replace(/--.*$/gm, '').trim()) out.push(sql);
    }
  }
  return out;
}

test('the statements left out are exactly those OUT_OF_SCOPE names, and nothing run needs plpython', () => {
  const statements = seedStatements();
  expect(statements.filter(outOfScope).map((x) => x.replace(/;$/, ''))).toEqual(Object.keys(OUT_OF_SCOPE));
  expect(statements.filter((x) => !outOfScope(x) && /plpython/i.test(x))).toEqual([]);
});

test('every SQL block of the seed document runs through the proxy with the documented results', async () => {
  const results: { sql: string; rows: Record<string, unknown>[]; fields: string[] }[] = [];
  let ran = 0;
  for (const sql of seedStatements()) {
    if (outOfScope(sql)) continue;
    ran++;
    const native = Object.entries(NATIVE_ERRORS).find(([k]) => sql.replace(/\s+/g, ' ') === k.replace(/\s+/g, ' '))?.[1];
    try {
      const r = await c.query(sql);
      expect(native, `expected ${native} from: ${sql}`).toBeUndefined();
      results.push({ sql, rows: r.rows ?? [], fields: (r.fields ?? []).map((f) => f.name) });
    } catch (e) {
      if ((e as { code?: string }).code !== native) throw new Error(`seed statement failed: ${sql}\n${(e as Error).message}`);
    }
  }
  expect(ran).toBeGreaterThan(60);

  const find = (start: string) => {
    const r = results.find((x) => x.sql.startsWith(start));
    if (!r) throw new Error(`no result for ${start}`);
    return r;
  };
  // Text generation gives text; the same call twice gives the same bytes.
  const capital = find(`SELECT steadytext_generate('The capital of France is')`).rows[0].steadytext_generate;
  expect(typeof capital).toBe('string');
  expect((capital as string).length).toBeGreaterThan(0);
  const [a, b] = results.filter((x) => x.sql.startsWith(`SELECT deterministic_expand('quantum computing', 123)`)).map((x) => x.rows[0].deterministic_expand);
  expect(a).toBe(b);
  const other = results.find((x) => x.sql.startsWith(`SELECT deterministic_expand('quantum computing', 456)`))!.rows[0].deterministic_expand;
  expect(typeof other).toBe('string');
  // Vector search: similarity of the item to itself is 1 and it ranks first.
  const sim = find('SELECT name, 1 - (embedding <=>').rows;
  expect(sim[0]).toMatchObject({ name: 'A futuristic city' });
  expect(sim[0].similarity as number).toBeCloseTo(1, 5);
  // Daemon status: the seed's columns, live values.
  const status = find('SELECT * FROM steadytext_daemon_status()');
  expect(status.fields).toEqual(['running', 'pid', 'host', 'port', 'uptime_seconds', 'requests_processed', 'errors_count', 'avg_latency_ms']);
  expect(status.rows[0].running).toBe(true);
  expect(status.rows[0].pid).toBe(process.pid);
  expect(find('SELECT steadytext_daemon_stop()').rows[0].steadytext_daemon_stop).toBe(true);
  // Config table holds every key of the seed.
  const keys = find('SELECT * FROM steadytext_config').rows.map((r) => r.key);
  expect(keys).toEqual(expect.arrayContaining(['daemon_host', 'daemon_port', 'daemon_timeout_ms', 'default_max_tokens', 'default_seed',
    'default_model_size', 'cache_enabled', 'cache_ttl_seconds', 'debug_mode', 'daemon_auto_start', 'connection_pool_size']));
  // Semantic search over products found the one added, with its similarity.
  const search = find(`SELECT * FROM search_products('sustainable drinking container', 5)`);
  expect(search.fields).toEqual(['product_id', 'product_name', 'product_description', 'similarity']);
  // The document's ivfflat index was built on an empty table, so pgvector's approximate scan finds nothing
  // (as it would without the proxy); ordering by similarity is checked with an exact scan.
  await c.query(`SELECT add_product('Steel Thermos', 'Keeps coffee hot', 'Kitchenware', 30), add_product('Desk Lamp', 'LED light', 'Office', 20)`);
  await c.query('SET enable_indexscan = off');
  const exact = (await c.query(`SELECT * FROM search_products('sustainable drinking container', 5)`)).rows;
  await c.query('RESET enable_indexscan');
  expect(exact.map((r) => r.product_name)).toEqual(expect.arrayContaining(['Eco-Friendly Water Bottle', 'Steel Thermos', 'Desk Lamp']));
  const sims = exact.map((r) => r.similarity as number);
  expect(sims).toEqual([...sims].sort((x, y) => y - x));
  // Batch functions.
  const summaries = find('SELECT * FROM batch_generate_summaries(').rows;
  expect(summaries).toHaveLength(3);
  for (const r of summaries) expect(typeof r.summary).toBe('string');
  // Stats: hit rate is a number between 0 and 1.
  const rate = find('SELECT \n    cache_hits::float / (cache_hits + cache_misses) AS hit_rate').rows[0].hit_rate as number;
  expect(rate).toBeGreaterThanOrEqual(0);
  expect(rate).toBeLessThanOrEqual(1);
  // The stored embeddings are real 1024-dim unit vectors.
  const dims = await c.query(`SELECT vector_dims(embedding) AS d, round(vector_norm(embedding)::numeric, 4) AS n FROM products WHERE embedding IS NOT NULL`);
  expect(dims.rows.length).toBeGreaterThan(0);
  for (const r of dims.rows) expect(r).toEqual({ d: 1024, n: '1.0000' });
  // The metrics view of the best practices section reads live values.
  const metrics = find('SELECT * FROM steadytext_metrics').rows[0];
  expect(metrics.daemon_running).toBe(true);
}, 300_000);

// When the run above fails early, the stack stops while the first-use install its session began is still
// running; dropping the database under that install used to surface as unhandled 57P01 errors.
test('a stack stopped while its first-use install runs stops without unhandled errors', async () => {
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  try {
    for (let i = 0; i < 2; i++) {
      const early = await startStack('st_seed_early');
      await early.connect();
      await early.stop();
    }
    await new Promise((r) => setTimeout(r, 200)); // a late 'error' event
  } finally {
    process.off('uncaughtException', onUncaught);
  }
  expect(uncaught).toEqual([]);
}, 60_000);
