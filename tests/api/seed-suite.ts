// The seed document's suite, run by seed.test.ts (dblink and the daemon endpoint) and seed-inband.test.ts
// (the in-band callback, in each isolation level). Every SQL block of the seed document (tests/fixtures/seed/pg_steadytext.md, the product's contract), in
// order, statement by statement as psql sends them, through the proxy against PostgreSQL with pgvector:
// one test per block, named after it, on one stack (a block builds on the blocks before it). Blocks that
// are API signatures or error output, not SQL, do not parse and are not run; nor are the statements in
// OUT_OF_SCOPE. A statement the document shows a result for is checked right where it runs (CHECKS).
import { seedBlocks } from '../fixtures/seed.js';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type pg from 'pg';
import { findCalls, isParseFailure, loadParser } from '../../sql/calls.js';
import type { Stack } from './helpers.js';

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
  'CREATE EXTENSION IF NOT EXISTS plpython3u': "plpython3u: the original extension's language, never used by pg-steadytext",
};
const outOfScope = (sql: string) => Object.hasOwn(OUT_OF_SCOPE, sql.replace(/\s+/g, ' ').replace(/;$/, ''));

/** The process that answers steadytext calls (this one, unless the variant runs the CLI: SeedVariant.pid). */
let proxyPid = process.pid;

interface Result {
  sql: string;
  rows: Record<string, unknown>[];
  fields: string[];
}

/**
 * The documented results, each checked on the first statement that starts with `start` (or, with `every`,
 * on each of them): `earlier` holds what the statements before it returned.
 */
const CHECKS: { start: string; every?: boolean; check(r: Result, earlier: readonly Result[]): void }[] = [
  {
    start: `SELECT steadytext_generate('The capital of France is')`,
    check(r) {
      // Text generation gives text.
      const capital = r.rows[0].steadytext_generate;
      expect(typeof capital).toBe('string');
      expect((capital as string).length).toBeGreaterThan(0);
    },
  },
  {
    start: `SELECT deterministic_expand('quantum computing', 123)`,
    every: true,
    check(r, earlier) {
      // The same call twice gives the same bytes.
      expect(typeof r.rows[0].deterministic_expand).toBe('string');
      for (const e of earlier.filter((x) => x.sql.startsWith(`SELECT deterministic_expand('quantum computing', 123)`)))
        expect(r.rows[0].deterministic_expand).toBe(e.rows[0].deterministic_expand);
    },
  },
  {
    start: `SELECT deterministic_expand('quantum computing', 456)`,
    check(r) {
      expect(typeof r.rows[0].deterministic_expand).toBe('string');
    },
  },
  {
    start: 'SELECT name, 1 - (embedding <=>',
    check(r) {
      // Vector search: similarity of the item to itself is 1 and it ranks first.
      expect(r.rows[0]).toMatchObject({ name: 'A futuristic city' });
      expect(r.rows[0].similarity as number).toBeCloseTo(1, 5);
    },
  },
  {
    start: 'SELECT * FROM steadytext_daemon_status()',
    check(r) {
      // Daemon status: the seed's columns, live values.
      expect(r.fields).toEqual(['running', 'pid', 'host', 'port', 'uptime_seconds', 'requests_processed', 'errors_count', 'avg_latency_ms']);
      expect(r.rows[0].running).toBe(true);
      expect(r.rows[0].pid).toBe(proxyPid);
    },
  },
  {
    start: 'SELECT steadytext_daemon_stop()',
    check(r) {
      expect(r.rows[0].steadytext_daemon_stop).toBe(true);
    },
  },
  {
    start: 'SELECT * FROM steadytext_config',
    check(r) {
      // The config table holds every key of the seed.
      expect(r.rows.map((x) => x.key)).toEqual(
        expect.arrayContaining([
          'daemon_host',
          'daemon_port',
          'daemon_timeout_ms',
          'default_max_tokens',
          'default_seed',
          'default_model_size',
          'cache_enabled',
          'cache_ttl_seconds',
          'debug_mode',
          'daemon_auto_start',
          'connection_pool_size',
        ]),
      );
    },
  },
  {
    start: `SELECT * FROM search_products('sustainable drinking container', 5)`,
    check(r) {
      // Semantic search over products, with its similarity (its order: see the last test).
      expect(r.fields).toEqual(['product_id', 'product_name', 'product_description', 'similarity']);
    },
  },
  {
    start: 'SELECT * FROM batch_generate_summaries(',
    check(r) {
      expect(r.rows).toHaveLength(3);
      for (const x of r.rows) expect(typeof x.summary).toBe('string');
    },
  },
  {
    start: 'SELECT \n    cache_hits::float / (cache_hits + cache_misses) AS hit_rate',
    check(r) {
      // Stats: the hit rate is a number between 0 and 1.
      const rate = r.rows[0].hit_rate as number;
      expect(rate).toBeGreaterThanOrEqual(0);
      expect(rate).toBeLessThanOrEqual(1);
    },
  },
  {
    start: 'SELECT * FROM steadytext_metrics',
    check(r) {
      // The metrics view of the best practices section reads live values.
      expect(r.rows[0].daemon_running).toBe(true);
    },
  },
];

/** The statements of each SQL block that parses, in order (the comment-only tail of a block is none). */
function seedStatements() {
  return seedBlocks().flatMap((block) => {
    const buf = Buffer.from(block.sql, 'utf8');
    const stmts = findCalls(buf);
    if (isParseFailure(stmts)) return [];
    const statements = stmts.map((st) => buf.subarray(st.start, st.end).toString('utf8').trim()).filter((sql) => sql.replace(/--.*$/gm, '').trim());
    return [{ ...block, statements }];
  });
}

await loadParser();
const blocks = seedStatements();

export interface SeedVariant {
  /** The stack the document runs on. */
  start(): Promise<Stack>;
  /** The URL its one client connects to (default: through the proxy as the superuser). */
  url?(s: Stack): string;
  /** Each statement through the extended protocol (Parse, Bind, Describe, Execute, Sync), as drivers send them. */
  extended?: boolean;
  /** Each statement inside its own transaction block (BEGIN, the statement, COMMIT; ROLLBACK after an error). */
  inBlock?: boolean;
  /** The pid of the process serving the stack, when not this one. */
  pid?(s: Stack): number;
}

/** Defines the suite's tests on the stack `v` starts (call inside a describe() for several variants in one file). */
export function seedSuite(v: SeedVariant): void {
  const results: Result[] = [];
  const checked = new Set<string>();

  let s: Stack;
  let c: pg.Client;
  beforeAll(async () => {
    s = await v.start();
    proxyPid = v.pid?.(s) ?? process.pid;
    c = await s.connect(v.url?.(s));
    await c.query('DROP ROLE IF EXISTS ai_user').catch(() => {});
  }, 120_000);
  afterAll(async () => {
    await s?.stop();
  });

  test('the statements left out are exactly those OUT_OF_SCOPE names, and nothing run needs plpython', () => {
    const statements = blocks.flatMap((b) => b.statements);
    expect(statements.filter(outOfScope).map((x) => x.replace(/;$/, ''))).toEqual(Object.keys(OUT_OF_SCOPE));
    expect(statements.filter((x) => !outOfScope(x) && /plpython/i.test(x))).toEqual([]);
    expect(statements.filter((x) => !outOfScope(x)).length).toBeGreaterThan(60);
  });

  for (const block of blocks.filter((b) => b.statements.some((x) => !outOfScope(x)))) {
    test(`block ${block.index}: ${block.heading} (pg_steadytext.md:${block.line})`, async () => {
      for (const sql of block.statements) {
        if (outOfScope(sql)) continue;
        const native = Object.entries(NATIVE_ERRORS).find(([k]) => sql.replace(/\s+/g, ' ') === k.replace(/\s+/g, ' '))?.[1];
        let r: pg.QueryResult;
        if (v.inBlock) await c.query('BEGIN');
        try {
          r = await c.query(v.extended ? ({ text: sql, queryMode: 'extended' } as pg.QueryConfig) : sql);
          if (v.inBlock) await c.query('COMMIT');
        } catch (e) {
          if (v.inBlock) await c.query('ROLLBACK');
          if ((e as { code?: string }).code !== native) throw new Error(`seed statement failed: ${sql}\n${(e as Error).message}`, { cause: e });
          continue;
        }
        expect(native, `expected ${native} from: ${sql}`).toBeUndefined();
        const result = { sql, rows: r.rows ?? [], fields: (r.fields ?? []).map((f) => f.name) };
        for (const k of CHECKS.filter((x) => sql.startsWith(x.start) && (x.every || !checked.has(x.start)))) {
          checked.add(k.start);
          k.check(result, results);
        }
        results.push(result);
      }
    }, 120_000);
  }

  test('after the whole document: every documented result was checked, search ranks by similarity, embeddings are unit vectors', async () => {
    expect([...checked].sort()).toEqual(CHECKS.map((k) => k.start).sort());
    // The document's ivfflat index was built on an empty table, so pgvector's approximate scan finds nothing
    // (as it would without the proxy); ordering by similarity is checked with an exact scan.
    await c.query(`SELECT add_product('Steel Thermos', 'Keeps coffee hot', 'Kitchenware', 30), add_product('Desk Lamp', 'LED light', 'Office', 20)`);
    await c.query('SET enable_indexscan = off');
    const exact = (await c.query(`SELECT * FROM search_products('sustainable drinking container', 5)`)).rows;
    await c.query('RESET enable_indexscan');
    expect(exact.map((r) => r.product_name)).toEqual(expect.arrayContaining(['Eco-Friendly Water Bottle', 'Steel Thermos', 'Desk Lamp']));
    const sims = exact.map((r) => r.similarity as number);
    expect(sims).toEqual([...sims].sort((x, y) => y - x));
    // The stored embeddings are real 1024-dim unit vectors.
    const dims = await c.query(
      `SELECT vector_dims(embedding) AS d, round(vector_norm(embedding)::numeric, 4) AS n FROM products WHERE embedding IS NOT NULL`,
    );
    expect(dims.rows.length).toBeGreaterThan(0);
    for (const r of dims.rows) expect(r).toEqual({ d: 1024, n: '1.0000' });
  });
}
