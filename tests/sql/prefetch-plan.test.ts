// Prefetch derivation checked against real tables: stub steadytext functions log every call they get, so the
// argument tuples the statement really used can be compared with what the derived query returns.
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import pg from 'pg';
import { findCalls, isParseFailure, loadParser, type StatementCalls } from '../../sql/calls.js';
import { derivePrefetch, type PrefetchPlan } from '../../sql/prefetch-plan.js';
import { safetySql } from '../../sql/prefetch.js';

const dbName = `calls_prefetch_${process.pid}_${Date.now() % 100000}`;
let admin: pg.Client;
let db: pg.Client;

const SIG: Record<string, string[]> = {
  steadytext_generate: ['prompt', 'max_tokens', 'seed', 'temperature', 'model_size'],
  steadytext_embed: ['text', 'seed', 'model_size'],
};

beforeAll(async () => {
  await loadParser();
  admin = new pg.Client(inject('db').adminUrl);
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  const url = new URL(inject('db').adminUrl);
  url.pathname = `/${dbName}`;
  db = new pg.Client(url.toString());
  await db.connect();
  await db.query(String.raw`
    CREATE TABLE call_log (fn text, args text[]);
    CREATE FUNCTION steadytext_generate(prompt text, max_tokens int DEFAULT NULL, seed int DEFAULT NULL,
      temperature float DEFAULT NULL, model_size text DEFAULT NULL, _steadytext_answer text DEFAULT NULL)
      RETURNS text LANGUAGE plpgsql AS $$
      BEGIN
        INSERT INTO call_log VALUES ('steadytext_generate', ARRAY[$1, $2::text, $3::text, $4::text, $5]);
        RETURN 'g:' || coalesce($1, '');
      END $$;
    CREATE FUNCTION steadytext_embed(text text, seed int DEFAULT NULL, model_size text DEFAULT NULL,
      _steadytext_answer text DEFAULT NULL) RETURNS text LANGUAGE plpgsql AS $$
      BEGIN
        INSERT INTO call_log VALUES ('steadytext_embed', ARRAY[$1, $2::text, $3]);
        RETURN 'e:' || coalesce($1, '');
      END $$;
    CREATE FUNCTION my_check(int) RETURNS boolean LANGUAGE sql AS 'SELECT true';
    CREATE TABLE cats (id int PRIMARY KEY, name text);
    INSERT INTO cats VALUES (1, 'news'), (2, 'blog'), (3, 'it''s é');
    CREATE TABLE docs (id int PRIMARY KEY, cat int, body text, emb text, note text);
    INSERT INTO docs SELECT i, 1 + i % 3, CASE WHEN i % 4 = 0 THEN NULL ELSE 'body ' || (i % 7) || ' é''\' END,
      CASE WHEN i % 2 = 0 THEN 'done' END, NULL FROM generate_series(1, 40) i;
    CREATE TABLE products (id serial PRIMARY KEY, name text, description text, embedding text);
    INSERT INTO products (name, description, embedding)
      SELECT 'p' || i, 'desc ' || (i % 5), CASE WHEN i % 3 = 0 THEN 'x' END FROM generate_series(1, 30) i;
    CREATE TABLE outt (id int, g text);`);
});

afterAll(async () => {
  await db?.end();
  await admin?.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
  await admin?.end();
});

function statement(sql: string): StatementCalls {
  const r = findCalls(Buffer.from(sql));
  if (isParseFailure(r)) throw new Error(`${r.failure}: ${r.message}`);
  return r[r.length - 1];
}

/** The derived query's tuples, as `fn|[args in signature order]`. */
async function derivedTuples(sql: string, st: StatementCalls, plan: PrefetchPlan, params: unknown[]): Promise<Set<string>> {
  const r = await db.query({ text: plan.sql, values: plan.params.map((n) => params[n - 1]), rowMode: 'array' });
  const out = new Set<string>();
  for (const row of r.rows as unknown[][]) {
    for (const pc of plan.calls) {
      const call = st.calls[pc.call];
      const sig = SIG[pc.fn];
      const tuple: (string | null)[] = sig.map(() => null);
      call.args.forEach((a, i) => {
        const v = row[pc.argColumns[i]];
        tuple[a.name ? sig.indexOf(a.name) : a.position] = v === null ? null : typeof v === 'string' ? v : JSON.stringify(v);
      });
      out.add(`${pc.fn}|${JSON.stringify(tuple)}`);
    }
  }
  return out;
}

/** The tuples the statement really passed, from the stub's log; the statement is rolled back. */
async function loggedTuples(run: () => Promise<unknown>): Promise<Set<string>> {
  await db.query('BEGIN');
  try {
    await db.query('DELETE FROM call_log');
    await run();
    const r = await db.query('SELECT fn, args FROM call_log');
    return new Set(r.rows.map((x) => `${x.fn}|${JSON.stringify(x.args)}`));
  } finally {
    await db.query('ROLLBACK');
  }
}

async function check(sql: string, params: unknown[], mode: 'exact' | 'superset', run?: () => Promise<unknown>) {
  const st = statement(sql);
  const plan = derivePrefetch(Buffer.from(sql), st);
  expect(plan, sql).not.toBeNull();
  const derived = await derivedTuples(sql, st, plan!, params);
  const logged = await loggedTuples(run ?? (() => db.query(sql, params)));
  expect(logged.size, `the statement calls something: ${sql}`).toBeGreaterThan(0);
  for (const t of logged) expect(derived.has(t), `${t} missing from ${plan!.sql}`).toBe(true);
  if (mode === 'exact') expect(derived.size).toBe(logged.size);
  return plan!;
}

describe('derived prefetch queries return the argument tuples the statement uses', () => {
  test('UPDATE ... SET c = steadytext_embed(body) WHERE ...', async () => {
    const plan = await check('UPDATE docs SET emb = steadytext_embed(body) WHERE emb IS NULL', [], 'exact');
    expect(plan.sql).toBe('SELECT (body)::pg_catalog.text FROM docs WHERE emb IS NULL');
    expect(plan.calls).toEqual([{ fn: 'steadytext_embed', call: 0, argColumns: [0] }]);
  });

  test("SELECT steadytext_generate('Summarize: ' || body) FROM t WHERE ... with $n kept", async () => {
    const plan = await check("SELECT steadytext_generate('Summarize: ' || body) FROM docs WHERE id > $1", [10], 'exact');
    expect(plan.params).toEqual([1]);
  });

  test('joins and ORDER BY (dropped)', async () => {
    await check(`SELECT d.id, steadytext_generate(d.body || ' / ' || c.name, max_tokens := 16) FROM docs d
      JOIN cats c ON c.id = d.cat WHERE c.name <> 'blog' ORDER BY d.id`, [], 'exact');
  });

  test('the seed document batch: WITH batch AS (...) UPDATE p SET ... FROM batch b WHERE p.id = b.id', async () => {
    const plan = await check(`-- Batch processing for better throughput
WITH batch AS (
    SELECT id, description
    FROM products
    WHERE embedding IS NULL
    LIMIT 1000
)
UPDATE products p
SET embedding = steadytext_embed(b.description)
FROM batch b
WHERE p.id = b.id`, [], 'exact');
    expect(plan.sql).toContain('SELECT (b.description)::pg_catalog.text FROM products p, batch b');
  });

  test('INSERT ... SELECT with named arguments, ON CONFLICT-free, RETURNING', async () => {
    await check('INSERT INTO outt (id, g) SELECT id, steadytext_generate(body, seed := 7) FROM docs WHERE cat = $1 RETURNING id', [1], 'exact');
  });

  test('INSERT with an outer WITH', async () => {
    await check('WITH src AS (SELECT id, body FROM docs WHERE id < 5) INSERT INTO outt SELECT id, steadytext_generate(body) FROM src', [], 'exact');
  });

  test('SELECT with its own WITH', async () => {
    await check('WITH x AS (SELECT * FROM docs WHERE cat = 2) SELECT steadytext_embed(body) FROM x', [], 'exact');
  });

  test('GROUP BY with an aggregate in the argument keeps the grouping', async () => {
    const plan = await check(`SELECT cat, steadytext_generate(string_agg(coalesce(body, '-'), ',' ORDER BY id))
      FROM docs GROUP BY cat HAVING count(*) > 1`, [], 'exact');
    expect(plan.sql).toContain('GROUP BY cat HAVING');
  });

  test('a call inside an aggregate runs per row: the grouping is dropped', async () => {
    const plan = await check(`SELECT cat, string_agg(steadytext_generate(body), ',') FROM docs GROUP BY cat HAVING count(*) > 100`, [], 'superset');
    expect(plan.sql).not.toContain('GROUP');
  });

  test('window function in the argument', async () => {
    await check('SELECT steadytext_generate(lag(body) OVER (ORDER BY id)) FROM docs', [], 'exact');
  });

  test('DISTINCT ON is dropped (superset)', async () => {
    await check('SELECT DISTINCT ON (cat) cat, steadytext_generate(body) FROM docs ORDER BY cat, id', [], 'superset');
  });

  test('PREPARE with declared types: the types become casts, $2 used twice', async () => {
    const sql = "PREPARE up (text, int) AS UPDATE docs SET note = steadytext_generate($1 || coalesce(body, ''), max_tokens := $2) WHERE cat = $2";
    const plan = await check(sql, ['P: ', 2], 'exact', async () => {
      await db.query(sql);
      try { await db.query("EXECUTE up('P: ', 2)"); } finally { await db.query('DEALLOCATE up'); }
    });
    expect(plan.sql).toContain('($1::text)');
    expect(plan.sql).toContain('::pg_catalog.text');
  });

  test('UPDATE with alias, FROM, several calls, RETURNING', async () => {
    const plan = await check(`UPDATE docs d SET emb = steadytext_embed(d.body, seed := c.id), note = steadytext_generate(c.name, temperature := 0.5)
      FROM cats c WHERE c.id = d.cat AND d.id < 20 RETURNING d.id`, [], 'exact');
    expect(plan.calls.map((c) => c.fn)).toEqual(['steadytext_embed', 'steadytext_generate']);
  });

  test('UPDATE ONLY ... AS alias', async () => {
    await check('UPDATE ONLY docs AS d SET note = steadytext_generate(d.body) WHERE d.cat = 1', [], 'exact');
  });

  test('EXPLAIN ANALYZE runs the statement, so it is prefetched too', async () => {
    await check('EXPLAIN ANALYZE SELECT steadytext_generate(body) FROM docs WHERE cat = 3', [], 'exact');
  });

  test('comments, strings with ) and ;, subqueries in WHERE, FOR UPDATE (dropped)', async () => {
    await check(`SELECT steadytext_generate(body) /* ; ) */ FROM docs -- x )
      WHERE coalesce(body, '') <> 'it''s ) ;' AND id IN (SELECT id FROM docs WHERE cat = 2) ORDER BY 1 FOR UPDATE`, [], 'exact');
  });

  test('unused parameters are left out and the rest renumbered; untyped $n get the argument type', async () => {
    const plan = await check('UPDATE docs SET note = $1, emb = steadytext_embed(body, seed := $3) WHERE cat = $2', ['n', 2, 42], 'exact');
    expect(plan.params).toEqual([3, 2]);
    expect(plan.sql).toBe('SELECT (body)::pg_catalog.text, ($1)::pg_catalog.int4 FROM docs WHERE cat = $2');
  });

  test('multi-byte text before and inside the statement', async () => {
    await check("SELECT 'é 😀', steadytext_generate(coalesce(body, '') || ' ü') FROM docs /* 日本 */ WHERE coalesce(body, '') <> '日本'", [], 'exact');
  });

  test('one column per distinct argument text', async () => {
    const sql = "SELECT steadytext_generate(body), steadytext_embed(body), steadytext_generate(body, max_tokens := 5) FROM docs";
    const plan = await check(sql, [], 'exact');
    expect(plan.calls.map((c) => c.argColumns)).toEqual([[0], [0], [0, 1]]);
  });
});

describe('no derivation when it would not be safe or there is nothing to prefetch', () => {
  const none = [
    'WITH d AS (DELETE FROM outt RETURNING id) UPDATE docs SET emb = steadytext_embed(body) FROM d WHERE docs.id = d.id',
    "SELECT steadytext_generate(body) FROM docs WHERE steadytext_generate('x') IS NULL",
    'UPDATE docs SET emb = steadytext_embed(body) WHERE CURRENT OF c',
    "SELECT steadytext_generate('constant') FROM docs",
    "SELECT steadytext_generate(body) FROM docs UNION SELECT 'x'",
    'SELECT steadytext_generate(cat::text) AS g, count(*) FROM docs GROUP BY 1',
    'SELECT (cat % 2) AS parity, steadytext_generate((cat % 2)::text) FROM docs GROUP BY parity',
    'SELECT (SELECT steadytext_generate(body) FROM docs LIMIT 1)',
    'WITH s AS (SELECT steadytext_generate(body) FROM docs) SELECT * FROM s',
    'WITH s AS (SELECT id FROM docs FOR UPDATE) UPDATE docs SET emb = steadytext_embed(body) FROM s WHERE s.id = docs.id',
    'CREATE VIEW v AS SELECT steadytext_generate(body) FROM docs',
    'EXPLAIN SELECT steadytext_generate(body) FROM docs',
    'INSERT INTO outt VALUES (1, steadytext_generate((SELECT body FROM docs LIMIT 1)))',
    'SELECT steadytext_generate(VARIADIC ARRAY[body]) FROM docs',
    'DELETE FROM docs WHERE id = 1 RETURNING steadytext_generate(body)',
    'SELECT * FROM steadytext_daemon_status()',
    "SELECT steadytext_generate(body) FROM docs WHERE _steadytext_cache_lookup('a', 'b', 'c', 'd', 'e', 1) IS NULL",
    // Only the first rows are evaluated: nothing beyond them may be computed.
    'SELECT steadytext_embed(body) FROM docs LIMIT 1',
    'SELECT steadytext_embed(body) FROM docs ORDER BY id LIMIT $1',
    'SELECT steadytext_embed(body) FROM docs OFFSET 5',
    'SELECT steadytext_embed(body) FROM docs ORDER BY id FETCH FIRST 2 ROWS ONLY',
    'SELECT steadytext_embed(body) FROM docs ORDER BY id FETCH FIRST 2 ROWS WITH TIES',
    'SELECT steadytext_embed(g::text) FROM generate_series(1, 25000000) g LIMIT 1',
    'INSERT INTO outt SELECT id, steadytext_generate(body) FROM docs ORDER BY id LIMIT 3',
    'EXPLAIN ANALYZE SELECT steadytext_embed(body) FROM docs LIMIT 1',
    'PREPARE lim AS SELECT steadytext_embed(body) FROM docs LIMIT 1',
    'WITH x AS (SELECT * FROM docs) SELECT steadytext_embed(body) FROM x LIMIT 1',
    'SELECT EXISTS (SELECT steadytext_embed(body) FROM docs)',
    // Calls that only some rows evaluate.
    "SELECT CASE WHEN cat = 1 THEN steadytext_generate(body) END FROM docs",
    "SELECT CASE cat WHEN 1 THEN 'x' ELSE steadytext_generate(body) END FROM docs",
    'UPDATE docs SET note = coalesce(note, steadytext_generate(body))',
    'SELECT (cat = 1 AND steadytext_generate(body) IS NOT NULL) FROM docs',
    "SELECT 'x' IN ('y', steadytext_generate(body)) FROM docs",
    'SELECT cat, string_agg(steadytext_generate(body), \',\') FILTER (WHERE id > 3) FROM docs GROUP BY cat',
  ];
  test.each(none)('%s', (sql) => {
    expect(derivePrefetch(Buffer.from(sql), statement(sql))).toBeNull();
  });

  test('a call outside the conditional part is still derived, the conditional one left out', () => {
    const sql = 'SELECT steadytext_generate(body), CASE WHEN cat = 1 THEN steadytext_embed(body) END FROM docs';
    const plan = derivePrefetch(Buffer.from(sql), statement(sql));
    expect(plan?.calls.map((c) => c.fn)).toEqual(['steadytext_generate']);
  });
});

describe('the plan names what the catalog must vouch for', () => {
  test('functions (also as casts), operators with the implicit comparisons, cast types, relations with the UPDATE target', () => {
    const sql = `UPDATE docs d SET emb = steadytext_embed(lower(d.body)::varchar || x.y::my_domain)
      FROM other.tab x WHERE d.id OPERATOR(ops.===) x.id AND d.cat BETWEEN 1 AND 2 AND my_check(d.id)`;
    const plan = derivePrefetch(Buffer.from(sql), statement(sql))!;
    expect(plan.objects.functions).toHaveLength(2);
    expect(plan.objects.functions).toEqual(expect.arrayContaining([{ schema: null, name: 'lower' }, { schema: null, name: 'my_check' }]));
    expect(plan.objects.types).toEqual(expect.arrayContaining([{ schema: null, name: 'lower' }, { schema: 'pg_catalog', name: 'varchar' },
      { schema: null, name: 'my_domain' }, { schema: null, name: 'my_check' }]));
    expect(plan.objects.operators).toEqual(expect.arrayContaining([{ schema: 'ops', name: '===' }, { schema: null, name: '||' },
      { schema: null, name: '=' }, { schema: null, name: '<=' }, { schema: null, name: '>=' }]));
    expect(plan.objects.relations).toHaveLength(2);
    expect(plan.objects.relations).toEqual(expect.arrayContaining([{ schema: null, name: 'docs' }, { schema: 'other', name: 'tab' }]));
  });

  test('user functions in FROM and WHERE are derived: the session decides', () => {
    for (const sql of ['UPDATE docs SET emb = steadytext_embed(body) WHERE my_check(id)',
      'UPDATE docs SET emb = steadytext_embed(body) FROM public.my_table_fn() f']) {
      expect(derivePrefetch(Buffer.from(sql), statement(sql)), sql).not.toBeNull();
    }
  });
});

describe("the session's catalog decides what the derived query may run", () => {
  beforeAll(async () => {
    await db.query(String.raw`
      CREATE TABLE note_log (what text);
      CREATE FUNCTION noted(t text) RETURNS boolean LANGUAGE sql VOLATILE AS $$ INSERT INTO note_log VALUES (t) RETURNING true $$;
      CREATE FUNCTION pure(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper(t) $$;
      CREATE FUNCTION calls_steadytext(t text) RETURNS text LANGUAGE sql STABLE AS $$ SELECT t || 'steadytext_embed' $$;
      CREATE FUNCTION eq_noted(a int, b int) RETURNS boolean LANGUAGE sql VOLATILE AS $$ SELECT noted('op') AND a = b $$;
      CREATE OPERATOR === (leftarg = int, rightarg = int, function = eq_noted);
      CREATE FUNCTION eq_pure(a int, b int) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT a = b $$;
      CREATE OPERATOR ==== (leftarg = int, rightarg = int, function = eq_pure);
      CREATE VIEW docs_view AS SELECT * FROM docs;
      CREATE MATERIALIZED VIEW docs_mat AS SELECT * FROM docs;
      CREATE DOMAIN checked_text AS text CHECK (noted(VALUE));
      CREATE DOMAIN plain_text AS text NOT NULL;
      CREATE DOMAIN checked_again AS checked_text;
      CREATE TABLE guarded (id int, body text);
      ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
      CREATE TABLE parent_t (id int, body text);
      CREATE TABLE child_t () INHERITS (parent_t);
      CREATE FUNCTION sum_noted(s int, v int) RETURNS int LANGUAGE sql VOLATILE AS $$ SELECT s + v $$;
      CREATE AGGREGATE noted_sum(int) (sfunc = sum_noted, stype = int, initcond = '0');
      CREATE FUNCTION takes_domain(t checked_text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT t $$;
      CREATE SCHEMA shadow;
      CREATE FUNCTION shadow.lower(t text) RETURNS text LANGUAGE sql VOLATILE AS $$ SELECT pg_catalog.lower(t) $$;`);
  });

  /** Whether the session may run the plan's derived query; statement_timeout comes along. */
  async function allowed(sql: string, searchPath = 'public'): Promise<boolean> {
    const plan = derivePrefetch(Buffer.from(sql), statement(sql));
    expect(plan, sql).not.toBeNull();
    await db.query('BEGIN READ ONLY');
    try {
      await db.query(`SET LOCAL search_path = ${searchPath}; SET LOCAL statement_timeout = '7s'`);
      const r = await db.query({ text: safetySql(plan!.objects), rowMode: 'array' });
      expect(r.rows[0][0]).toBe('7000');
      return r.rows[0][1] as boolean;
    } finally {
      await db.query('ROLLBACK');
    }
  }

  test.each([
    'UPDATE docs SET emb = steadytext_embed(body) WHERE emb IS NULL',
    'UPDATE docs SET emb = steadytext_embed(lower(body)) WHERE cat = 2',
    'UPDATE docs SET emb = steadytext_embed(pure(body)) WHERE id ==== cat',
    'SELECT steadytext_embed(body::plain_text) FROM docs',
    'SELECT steadytext_embed(body) FROM docs JOIN cats ON cats.id = docs.cat',
    'SELECT steadytext_embed(body) FROM parent_t',
    "SELECT steadytext_generate(string_agg(body, ',')) FROM docs GROUP BY cat",
  ])('allowed: %s', async (sql) => {
    expect(await allowed(sql)).toBe(true);
  });

  test.each([
    ['a volatile function', "UPDATE docs SET emb = steadytext_embed(body) WHERE noted('w')"],
    ['a volatile function in FROM', "SELECT steadytext_embed(body) FROM docs, noted('f') n"],
    ['volatile built-ins too', 'SELECT steadytext_embed(body) FROM docs WHERE random() < 2'],
    ['a function that calls steadytext', 'SELECT steadytext_embed(calls_steadytext(body)) FROM docs'],
    ['an operator backed by a volatile function', 'UPDATE docs SET emb = steadytext_embed(body) WHERE id === id'],
    ['a view', 'SELECT steadytext_embed(body) FROM docs_view'],
    ['a materialized view', 'SELECT steadytext_embed(body) FROM docs_mat'],
    ['row level security', 'SELECT steadytext_embed(body) FROM guarded'],
    ['a cast to a domain with a CHECK', 'SELECT steadytext_embed(body::checked_text) FROM docs'],
    ['a cast to a domain over that domain', 'SELECT steadytext_embed(body::checked_again) FROM docs'],
    ['a function-style cast to that domain', 'SELECT steadytext_embed(checked_text(body)) FROM docs'],
    ['an argument coerced to that domain', 'SELECT steadytext_embed(takes_domain(body)) FROM docs'],
    ['an aggregate with a volatile transition function', 'SELECT steadytext_generate(noted_sum(id)::text) FROM docs GROUP BY cat'],
  ])('refused: %s', async (_, sql) => {
    expect(await allowed(sql)).toBe(false);
  });

  test('a function shadowing lower() earlier on the search_path', async () => {
    const sql = 'UPDATE docs SET emb = steadytext_embed(lower(body)) WHERE cat = 2';
    expect(await allowed(sql, 'public')).toBe(true);
    expect(await allowed(sql, 'shadow, pg_catalog, public')).toBe(false);
  });

  test('a cast with a volatile function anywhere in the database', async () => {
    await db.query('BEGIN');
    try {
      await db.query(`CREATE FUNCTION noisy_cast(x cats) RETURNS int LANGUAGE sql VOLATILE AS $$ SELECT 1 $$;
        CREATE CAST (cats AS int) WITH FUNCTION noisy_cast(cats)`);
      const plan = derivePrefetch(Buffer.from('SELECT steadytext_embed(body) FROM docs'), statement('SELECT steadytext_embed(body) FROM docs'))!;
      expect((await db.query({ text: safetySql(plan.objects), rowMode: 'array' })).rows[0][1]).toBe(false);
    } finally {
      await db.query('ROLLBACK');
    }
  });

  test("names are passed in ASCII whatever they spell, and the check's meaning survives a hostile search_path", async () => {
    await db.query('BEGIN');
    try {
      await db.query(`CREATE SCHEMA evil; CREATE FUNCTION evil.nameeq(a name, b name) RETURNS boolean LANGUAGE sql AS 'SELECT false';
        CREATE OPERATOR evil.= (leftarg = name, rightarg = name, function = evil.nameeq);
        CREATE TABLE "tåble ""q'" (body text)`);
      await db.query('SET LOCAL search_path = evil, pg_catalog, public');
      const sql = `SELECT steadytext_embed(body) FROM "tåble ""q'" WHERE noted(body)`;
      const plan = derivePrefetch(Buffer.from(sql), statement(sql))!;
      expect(plan.objects.relations).toEqual([{ schema: null, name: `tåble "q'` }]);
      expect(safetySql(plan.objects)).toMatch(/^[\x20-\x7e\n]*$/);
      expect((await db.query({ text: safetySql(plan.objects), rowMode: 'array' })).rows[0][1]).toBe(false);
    } finally {
      await db.query('ROLLBACK');
    }
  });
});
