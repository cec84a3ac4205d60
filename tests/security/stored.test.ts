// Issue 10, item 5: nothing that outlives a statement holds an answer. Each form that stores a definition
// (views, materialized views, also under EXPLAIN ANALYZE, rules, column defaults, policies, triggers'
// WHEN, CREATE FUNCTION ... BEGIN ATOMIC, PREPARE, DECLARE CURSOR) is run through the proxy with a
// steadytext call of constant arguments; the stored definition, read back from the catalogs, holds the
// call as written and neither the answer nor `_steadytext_answer`. Forms that store data (CREATE TABLE
// AS, SELECT INTO, COPY (query)) hold the right answer. What is stored keeps answering with the
// configuration at the time it runs: after steadytext_config_set('default_max_tokens', ...), EXECUTE of a
// prepared statement, a view, a REFRESH and a BEGIN ATOMIC function return the new answer.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { startStack, type Stack } from '../api/helpers.js';
import { fe, generate, installed, outcome, rawPipeline } from './helpers.js';

let s: Stack;
let c: pg.Client;
let admin: pg.Client; // changes the configuration from another session
beforeAll(async () => {
  s = await startStack('st_stored');
  await installed(s);
  c = await s.connect();
  admin = await s.connect();
  await admin.query(`SELECT steadytext_config_set('default_max_tokens', '6')`);
  await c.query(`CREATE TABLE t (id int, body text); INSERT INTO t VALUES (1, 'one');
                 CREATE FUNCTION trig() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$`);
});
afterAll(() => s?.stop());

const one = async (sql: string, params: unknown[] = []) => Object.values((await c.query(sql, params)).rows[0] ?? {})[0] as string;

/** The definition holds the call as written, and no answer. */
async function holdsNoAnswer(definition: string, prompt: string, maxTokens = 6): Promise<void> {
  const answer = await generate(s, prompt, maxTokens);
  expect(answer.trim().length).toBeGreaterThan(0);
  expect(definition).toContain(prompt);
  expect(definition).toContain('steadytext_generate');
  expect(definition).not.toContain('_steadytext_answer');
  expect(definition).not.toContain(answer);
}

describe('stored definitions hold the call, not its answer', () => {
  test('CREATE VIEW', async () => {
    await c.query(`CREATE VIEW v AS SELECT steadytext_generate('S-view', 6) AS x`);
    await holdsNoAnswer(await one(`SELECT pg_get_viewdef('v'::regclass)`), 'S-view');
    expect(await one('SELECT x FROM v')).toBe(await generate(s, 'S-view', 6));
  });

  test('CREATE MATERIALIZED VIEW, also under EXPLAIN ANALYZE', async () => {
    await c.query(`CREATE MATERIALIZED VIEW mv AS SELECT steadytext_generate('S-matview', 6) AS x`);
    await holdsNoAnswer(await one(`SELECT pg_get_viewdef('mv'::regclass)`), 'S-matview');
    expect(await one('SELECT x FROM mv')).toBe(await generate(s, 'S-matview', 6));
    await c.query(`EXPLAIN ANALYZE CREATE MATERIALIZED VIEW mv2 AS SELECT steadytext_generate('S-explain', 6) AS x`);
    await holdsNoAnswer(await one(`SELECT pg_get_viewdef('mv2'::regclass)`), 'S-explain');
    expect(await one('SELECT x FROM mv2')).toBe(await generate(s, 'S-explain', 6));
  });

  test('CREATE RULE', async () => {
    await c.query(`CREATE TABLE ruled (x text);
      CREATE RULE r AS ON INSERT TO ruled DO ALSO SELECT steadytext_generate('S-rule', 6)`);
    await holdsNoAnswer(await one(`SELECT pg_get_ruledef(oid) FROM pg_rewrite WHERE rulename = 'r'`), 'S-rule');
  });

  test('a column default', async () => {
    await c.query(`CREATE TABLE defaulted (id int, x text DEFAULT steadytext_generate('S-default', 6))`);
    await holdsNoAnswer(await one(`SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'defaulted'::regclass`), 'S-default');
    await c.query(`ALTER TABLE t ALTER COLUMN body SET DEFAULT steadytext_generate('S-alter-default', 6)`);
    await holdsNoAnswer(await one(`SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 't'::regclass`), 'S-alter-default');
    await c.query('INSERT INTO defaulted (id) VALUES (1)');
    expect(await one('SELECT x FROM defaulted')).toBe(await generate(s, 'S-default', 6));
  });

  test('a generated column: PostgreSQL refuses the STABLE function itself', async () => {
    const r = await outcome(c.query(`CREATE TABLE gen (x text GENERATED ALWAYS AS (steadytext_generate('S-generated', 6)) STORED)`));
    expect(r).toMatchObject({ error: { code: '42P17', message: 'generation expression is not immutable' } });
  });

  test('CREATE POLICY', async () => {
    await c.query(`CREATE POLICY p ON t USING (steadytext_generate('S-policy', 6) IS NOT NULL)
                                     WITH CHECK (steadytext_generate('S-policy-check', 6) <> '')`);
    const [row] = (await c.query(`SELECT pg_get_expr(polqual, polrelid) AS q, pg_get_expr(polwithcheck, polrelid) AS w FROM pg_policy WHERE polname = 'p'`)).rows;
    await holdsNoAnswer(row.q, 'S-policy');
    await holdsNoAnswer(row.w, 'S-policy-check');
    await holdsNoAnswer(await one(`SELECT qual FROM pg_policies WHERE policyname = 'p'`), 'S-policy');
  });

  test('a trigger\'s WHEN', async () => {
    await c.query(`CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW WHEN (steadytext_generate('S-trigger', 6) IS NOT NULL) EXECUTE FUNCTION trig()`);
    await holdsNoAnswer(await one(`SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'tr'`), 'S-trigger');
  });

  test('CREATE FUNCTION ... BEGIN ATOMIC, and a SQL function body', async () => {
    await c.query(`CREATE FUNCTION atomic_gen() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT steadytext_generate('S-atomic', 6); END`);
    await holdsNoAnswer(await one(`SELECT pg_get_functiondef('atomic_gen'::regproc)`), 'S-atomic');
    expect(await one('SELECT atomic_gen()')).toBe(await generate(s, 'S-atomic', 6));
    await c.query(`CREATE FUNCTION return_gen() RETURNS text LANGUAGE sql RETURN steadytext_generate('S-return', 6)`);
    await holdsNoAnswer(await one(`SELECT pg_get_functiondef('return_gen'::regproc)`), 'S-return');
  });

  test('PREPARE: pg_prepared_statements holds the statement as sent', async () => {
    const prep = `PREPARE stored_p AS SELECT steadytext_generate('S-prepare', 6)`;
    await c.query(prep);
    expect(await one(`SELECT statement FROM pg_prepared_statements WHERE name = 'stored_p'`)).toBe(prep);
    await holdsNoAnswer(prep, 'S-prepare');
    expect(await one('EXECUTE stored_p')).toBe(await generate(s, 'S-prepare', 6));
    await c.query('DEALLOCATE stored_p');
  });

  test('DECLARE CURSOR: pg_cursors holds the statement as sent', async () => {
    await c.query('BEGIN');
    const decl = `DECLARE cur CURSOR FOR SELECT steadytext_generate('S-cursor', 6) AS x`;
    await c.query(decl);
    expect(await one(`SELECT statement FROM pg_cursors WHERE name = 'cur'`)).toBe(decl);
    await holdsNoAnswer(decl, 'S-cursor');
    expect(await one('FETCH cur')).toBe(await generate(s, 'S-cursor', 6));
    await c.query('COMMIT');
  });
});

describe('forms that store data hold the right answer', () => {
  test('CREATE TABLE AS and SELECT INTO', async () => {
    await c.query(`CREATE TABLE ctas AS SELECT steadytext_generate('S-ctas', 6) AS x`);
    expect(await one('SELECT x FROM ctas')).toBe(await generate(s, 'S-ctas', 6));
    await c.query(`SELECT steadytext_generate('S-into', 6) AS x INTO selected_into`);
    expect(await one('SELECT x FROM selected_into')).toBe(await generate(s, 'S-into', 6));
  });

  test('COPY (query) TO STDOUT', async () => {
    const [st] = await rawPipeline(s, fe.query(`COPY (SELECT steadytext_generate('S-copy', 6)) TO STDOUT (FORMAT csv)`), 1);
    expect(st.error).toBeUndefined();
    const want = await generate(s, 'S-copy', 6);
    const csv = /[",\n\r]/.test(want) || want === '' ? `"${want.replaceAll('"', '""')}"` : want;
    expect(st.rows.map((r) => r[0]!.toString('utf8')).join('')).toBe(`${csv}\n`);
  });
});

describe('what is stored answers with the configuration in force when it runs', () => {
  test('PREPARE, a view, a REFRESH, and a BEGIN ATOMIC function after default_max_tokens changes', async () => {
    await c.query(`PREPARE later AS SELECT steadytext_generate('S-config')`);
    await c.query(`CREATE VIEW later_v AS SELECT steadytext_generate('S-config-view') AS x`);
    await c.query(`CREATE MATERIALIZED VIEW later_mv AS SELECT steadytext_generate('S-config-mv') AS x`);
    await c.query(`CREATE FUNCTION later_f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT steadytext_generate('S-config-fn'); END`);
    expect(await one('EXECUTE later')).toBe(await generate(s, 'S-config', 6));
    expect(await one('SELECT x FROM later_v')).toBe(await generate(s, 'S-config-view', 6));
    expect(await one('SELECT x FROM later_mv')).toBe(await generate(s, 'S-config-mv', 6));
    expect(await one('SELECT later_f()')).toBe(await generate(s, 'S-config-fn', 6));
    try {
      await admin.query(`SELECT steadytext_config_set('default_max_tokens', '3')`);
      expect(await one('EXECUTE later')).toBe(await generate(s, 'S-config', 3));
      expect(await one('SELECT x FROM later_v')).toBe(await generate(s, 'S-config-view', 3));
      await c.query('REFRESH MATERIALIZED VIEW later_mv');
      expect(await one('SELECT x FROM later_mv')).toBe(await generate(s, 'S-config-mv', 3));
      expect(await one('SELECT later_f()')).toBe(await generate(s, 'S-config-fn', 3));
    } finally {
      await admin.query(`SELECT steadytext_config_set('default_max_tokens', '6')`);
    }
  });
});
