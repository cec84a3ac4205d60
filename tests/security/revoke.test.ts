// Issue 10, item 2: a role without EXECUTE on a steadytext function never obtains an answer through the
// proxy. Nothing is computed (engine), cached (steadytext_cache) or made readable (current_query(),
// pg_prepared_statements, pg_stat_activity) for a call the current role may not make, whatever changed
// the role or its privileges before the call (SET ROLE in an earlier message, GRANT / REVOKE by another
// session), on both protocols and on the prefetch path; and a function of the role's own that shadows
// the installed one on its search_path is left alone.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { startStack, type Stack } from '../api/helpers.js';
import { cacheRows, createRole, direct, dropRoles, engineRequests, generate, installed, sqlstate } from './helpers.js';

const GENERATE = 'steadytext_generate(text, integer, integer, double precision, text)';
const EMBED = 'steadytext_embed(text, integer, text)';

let s: Stack;
let plain: { user: string; password: string }; // no EXECUTE on steadytext_generate / steadytext_embed
let allowed: { user: string; password: string }; // EXECUTE granted to it by name
const roles: string[] = [];

beforeAll(async () => {
  s = await startStack('st_revoke');
  await installed(s);
  plain = await createRole('st_plain');
  allowed = await createRole('st_allowed');
  roles.push(plain.user, allowed.user);
  await direct(s, `REVOKE EXECUTE ON FUNCTION ${GENERATE} FROM PUBLIC;
                   REVOKE EXECUTE ON FUNCTION ${EMBED} FROM PUBLIC;
                   GRANT EXECUTE ON FUNCTION ${GENERATE} TO ${allowed.user};
                   GRANT ${plain.user} TO ${allowed.user}`);
});
afterAll(async () => {
  await s?.stop();
  await dropRoles(...roles);
});

/** Every text value of a result, for "the answer appears nowhere". */
const texts = (r: pg.QueryResult | pg.QueryResult[]): string =>
  (Array.isArray(r) ? r : [r]).flatMap((x) => x.rows.flatMap((row) => Object.values(row).map((v) => String(v)))).join('\n');

/** Asserts that no answer for this prompt was computed or stored since `before` engine requests. */
async function nothingFor(prompt: string, before: number, ...seen: string[]): Promise<void> {
  expect(engineRequests(s)).toBe(before);
  expect(await cacheRows(s, prompt)).toBe(0);
  // The answer it would have been (computed last, so the engine's own cache cannot hide work above).
  const answer = await generate(s, prompt, 6);
  expect(answer.trim().length).toBeGreaterThan(0);
  for (const text of seen) {
    expect(text).not.toContain('_steadytext_answer');
    expect(text).not.toContain(answer);
  }
}

describe('a role without EXECUTE', () => {
  test('a call the planner removes: current_query() shows the statement as sent, nothing computed', async () => {
    const c = await s.connect(s.url(plain.user, plain.password));
    const before = engineRequests(s);
    const sql = `SELECT current_query() AS q WHERE true OR steadytext_generate('P-removed', 6) IS NULL`;
    const r = await c.query(sql);
    expect(r.rows).toEqual([{ q: sql }]);
    // Two statements in one message: the call in the second may not be computed either.
    const multi = `SELECT 1 AS one; SELECT current_query() AS q WHERE true OR steadytext_generate('P-removed', 6) IS NULL`;
    const rs = (await c.query(multi)) as unknown as pg.QueryResult[];
    expect(rs[1].rows).toEqual([{ q: multi }]);
    await nothingFor('P-removed', before, texts(r), texts(rs));
  });

  test('the same through the extended protocol', async () => {
    const c = await s.connect(s.url(plain.user, plain.password));
    const before = engineRequests(s);
    const sql = 'SELECT current_query() AS q WHERE true OR steadytext_generate($1, 6) IS NULL';
    const r = await c.query(sql, ['P-removed-ext']);
    expect(r.rows).toEqual([{ q: sql }]);
    expect(await sqlstate(c.query('SELECT steadytext_generate($1, $2)', ['P-ext', 6]))).toBe('42501');
    expect(await sqlstate(c.query({ name: 'named', text: 'SELECT steadytext_generate($1::text, $2::int)', values: ['P-ext', 6] }))).toBe('42501');
    await nothingFor('P-removed-ext', before, texts(r));
    await nothingFor('P-ext', before + 1);
  });

  test('PREPARE: pg_prepared_statements holds the statement as sent, and EXECUTE computes nothing', async () => {
    const c = await s.connect(s.url(plain.user, plain.password));
    const before = engineRequests(s);
    const prep = `PREPARE leak AS SELECT current_query() AS q WHERE true OR steadytext_generate('P-prepared', 6) IS NULL`;
    await c.query(prep);
    const ps = await c.query(`SELECT statement FROM pg_prepared_statements WHERE name = 'leak'`);
    expect(ps.rows).toEqual([{ statement: prep }]);
    const ex = await c.query('EXECUTE leak');
    expect(ex.rows).toEqual([{ q: 'EXECUTE leak' }]); // current_query() is the client's EXECUTE
    await c.query(`PREPARE direct_call AS SELECT steadytext_generate('P-prepared', 6)`);
    expect(await sqlstate(c.query('EXECUTE direct_call'))).toBe('42501');
    await nothingFor('P-prepared', before, texts(ps), texts(ex));
  });

  test('pg_stat_activity of the same role, while the statement runs and after it', async () => {
    const a = await s.connect(s.url(plain.user, plain.password));
    const b = await s.connect(s.url(plain.user, plain.password));
    const pid = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    const before = engineRequests(s);
    // pg_sleep keeps the statement running long enough to be seen running.
    const sql = `SELECT pg_sleep(1.5) AS slept WHERE true OR steadytext_generate('P-activity', 6) IS NULL`;
    const running = a.query(sql);
    const seen: string[] = [];
    await expect.poll(async () => {
      const r = await b.query('SELECT state, query FROM pg_stat_activity WHERE pid = $1', [pid]);
      seen.push(texts(r));
      return r.rows[0]?.state === 'active' && r.rows[0]?.query === sql;
    }, { timeout: 5_000, interval: 50, message: 'the statement seen running' }).toBe(true);
    await running;
    const after = await b.query('SELECT query FROM pg_stat_activity WHERE pid = $1', [pid]);
    expect(after.rows).toEqual([{ query: sql }]);
    await nothingFor('P-activity', before, ...seen, texts(after));
  });

  test('a direct call fails with 42501 and computes nothing', async () => {
    const c = await s.connect(s.url(plain.user, plain.password));
    const before = engineRequests(s);
    expect(await sqlstate(c.query(`SELECT steadytext_generate('P-direct', 6)`))).toBe('42501');
    await nothingFor('P-direct', before);
  });

  test('prefetch path: a column argument read with SELECT on the table, no EXECUTE on steadytext_embed', async () => {
    await direct(s, `CREATE TABLE docs (t text); INSERT INTO docs VALUES ('doc one'), ('doc two'), ('doc three');
                     GRANT SELECT ON docs TO ${plain.user}`);
    const c = await s.connect(s.url(plain.user, plain.password));
    const before = engineRequests(s);
    expect(await sqlstate(c.query('SELECT steadytext_embed(t) FROM docs'))).toBe('42501');
    expect(await sqlstate(c.query(`SELECT steadytext_generate('Summarize: ' || t, 6) FROM docs`))).toBe('42501');
    expect(engineRequests(s)).toBe(before);
    expect(await cacheRows(s, 'doc one', 'doc two', 'doc three', 'Summarize: doc one', 'Summarize: doc two', 'Summarize: doc three')).toBe(0);
  });
});

describe('the role at the time of the call', () => {
  test('SET ROLE to a role without EXECUTE, in an earlier message or earlier in the same one', async () => {
    const c = await s.connect(s.url(allowed.user, allowed.password));
    const ok = (await c.query(`SELECT steadytext_generate('P-allowed', 6) AS t`)).rows[0].t;
    expect(ok).toBe(await generate(s, 'P-allowed', 6));
    await c.query(`SET ROLE ${plain.user}`);
    let before = engineRequests(s);
    expect(await sqlstate(c.query(`SELECT steadytext_generate('P-set-role', 6)`))).toBe('42501');
    const r = await c.query(`SELECT current_query() AS q WHERE true OR steadytext_generate('P-set-role', 6) IS NULL`);
    expect(r.rows[0].q).not.toContain('_steadytext_answer');
    await nothingFor('P-set-role', before, texts(r));
    await c.query('RESET ROLE');
    before = engineRequests(s);
    expect(await sqlstate(c.query(`SET ROLE ${plain.user}; SELECT steadytext_generate('P-set-role-same', 6)`))).toBe('42501');
    await nothingFor('P-set-role-same', before);
    // A transaction-local SET ROLE, then the call, each its own message.
    await c.query('RESET ROLE');
    await c.query('BEGIN');
    await c.query(`SET LOCAL ROLE ${plain.user}`);
    before = engineRequests(s);
    expect(await sqlstate(c.query(`SELECT steadytext_generate('P-set-local', 6)`))).toBe('42501');
    await c.query('ROLLBACK');
    await nothingFor('P-set-local', before);
  });

  test('a REVOKE by another session takes effect on the next call of an open session', async () => {
    const u = await createRole('st_revoked');
    roles.push(u.user);
    await direct(s, `GRANT EXECUTE ON FUNCTION ${GENERATE} TO ${u.user}`);
    const c = await s.connect(s.url(u.user, u.password));
    expect((await c.query(`SELECT steadytext_generate('P-before-revoke', 6) AS t`)).rows[0].t).toBe(await generate(s, 'P-before-revoke', 6));
    expect(await cacheRows(s, 'P-before-revoke')).toBe(1);
    await direct(s, `REVOKE EXECUTE ON FUNCTION ${GENERATE} FROM ${u.user}`);
    const before = engineRequests(s);
    expect(await sqlstate(c.query(`SELECT steadytext_generate('P-after-revoke', 6)`))).toBe('42501');
    expect(await sqlstate(c.query('SELECT steadytext_generate($1, $2)', ['P-after-revoke', 6]))).toBe('42501');
    expect(await sqlstate(c.query(`SELECT steadytext_generate('P-before-revoke', 6)`))).toBe('42501');
    await nothingFor('P-after-revoke', before);
  });

  test('a GRANT by another session takes effect on the next call, served by the proxy', async () => {
    const u = await createRole('st_granted');
    roles.push(u.user);
    const c = await s.connect(s.url(u.user, u.password));
    const before = engineRequests(s);
    expect(await sqlstate(c.query(`SELECT steadytext_generate('P-granted', 6)`))).toBe('42501');
    expect(engineRequests(s)).toBe(before);
    expect(await cacheRows(s, 'P-granted')).toBe(0);
    await direct(s, `GRANT EXECUTE ON FUNCTION ${GENERATE} TO ${u.user}`);
    const callbacks = s.daemon.stats().requests;
    expect((await c.query(`SELECT steadytext_generate('P-granted', 6) AS t`)).rows[0].t).toBe(await generate(s, 'P-granted', 6));
    expect((await c.query('SELECT steadytext_generate($1, $2) AS t', ['P-granted-ext', 6])).rows[0].t).toBe(await generate(s, 'P-granted-ext', 6));
    expect(await cacheRows(s, 'P-granted', 'P-granted-ext')).toBe(2);
    expect(s.daemon.stats().requests).toBe(callbacks); // the proxy computed both ahead: no callback
  });
});

describe('a role with EXECUTE', () => {
  test('gets the answer as the call\'s value only: not in current_query(), pg_stat_activity or the handover tables', async () => {
    const c = await s.connect(s.url(allowed.user, allowed.password));
    const b = await s.connect(s.url(allowed.user, allowed.password));
    const pid = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    const sql = `SELECT steadytext_generate('P-visible', 6) AS t, current_query() AS q`;
    const r = await c.query(sql);
    expect(r.rows).toEqual([{ t: await generate(s, 'P-visible', 6), q: sql }]);
    expect((await b.query('SELECT query FROM pg_stat_activity WHERE pid = $1', [pid])).rows).toEqual([{ query: sql }]);
    const ext = await c.query('SELECT steadytext_generate($1, $2) AS t, current_query() AS q', ['P-visible-ext', 6]);
    expect(ext.rows).toEqual([{ t: await generate(s, 'P-visible-ext', 6), q: 'SELECT steadytext_generate($1, $2) AS t, current_query() AS q' }]);
    expect(await sqlstate(c.query('SELECT count(*) FROM steadytext_cache'))).toBe('42501');
    expect(await sqlstate(c.query('SELECT count(*) FROM steadytext_mailbox'))).toBe('42501');
  });

  test('a SECURITY DEFINER function of a role without EXECUTE cannot call it for the caller', async () => {
    await direct(s, `CREATE FUNCTION public.definer_gen(p text) RETURNS text LANGUAGE sql SECURITY DEFINER
                       AS $$ SELECT public.steadytext_generate(p, 6) $$;
                     ALTER FUNCTION public.definer_gen(text) OWNER TO ${plain.user}`);
    const c = await s.connect(s.url(allowed.user, allowed.password));
    const before = engineRequests(s);
    expect(await sqlstate(c.query(`SELECT definer_gen('P-definer')`))).toBe('42501');
    await nothingFor('P-definer', before);
  });

  test('a SECURITY DEFINER function of a role with EXECUTE answers a caller without it (the callback path)', async () => {
    await direct(s, `CREATE FUNCTION public.delegate_gen(p text) RETURNS text LANGUAGE sql SECURITY DEFINER
                       AS $$ SELECT public.steadytext_generate(p, 6) $$`);
    const c = await s.connect(s.url(plain.user, plain.password));
    expect((await c.query(`SELECT delegate_gen('P-delegated') AS t`)).rows[0].t).toBe(await generate(s, 'P-delegated', 6));
  });
});

describe('a function of the role shadowing the installed one', () => {
  test('the role\'s own steadytext_generate runs, and the proxy computes nothing for it', async () => {
    const u = await createRole('st_shadow');
    roles.push(u.user);
    await direct(s, `GRANT CREATE ON DATABASE ${s.database} TO ${u.user}; GRANT EXECUTE ON FUNCTION ${GENERATE} TO ${u.user}`);
    const c = await s.connect(s.url(u.user, u.password));
    await c.query(`CREATE SCHEMA mine;
      CREATE FUNCTION mine.steadytext_generate(prompt text, max_tokens integer DEFAULT NULL, seed integer DEFAULT NULL,
        temperature double precision DEFAULT NULL, model_size text DEFAULT NULL)
      RETURNS text LANGUAGE sql AS $$ SELECT 'mine:' || prompt $$`);
    await c.query('SET search_path = mine, public');
    const before = engineRequests(s);
    expect((await c.query(`SELECT steadytext_generate('P-shadow', 6) AS t`)).rows).toEqual([{ t: 'mine:P-shadow' }]);
    expect((await c.query('SELECT steadytext_generate($1, $2) AS t', ['P-shadow', 6])).rows).toEqual([{ t: 'mine:P-shadow' }]);
    expect((await c.query(`SET search_path = mine, public; SELECT steadytext_generate('P-shadow', 6) AS t`) as unknown as pg.QueryResult[])[1].rows)
      .toEqual([{ t: 'mine:P-shadow' }]);
    await nothingFor('P-shadow', before);
    // Qualified, the installed function is meant: the proxy serves it.
    expect((await c.query(`SELECT public.steadytext_generate('P-qualified', 6) AS t`)).rows[0].t).toBe(await generate(s, 'P-qualified', 6));
  });
});
