// Issue 10, item 8: one call, one answer, whichever path serves it. For a corpus of argument forms
// (casts that change the text, escapes, Unicode escapes, dollar quotes, typmods, odd numerals, float
// arithmetic, NULLs, named arguments, parameters of every kind, binary parameters), the statement sent
// through the proxy (which may serve it ahead) must give the same text, or fail with the same SQLSTATE,
// as the same statement run inside a PL/pgSQL function (EXECUTE: the proxy never sees the call, the SQL
// function answers it through the callback path). Between the two runs steadytext_cache is emptied, so
// the second run cannot reuse what the first one stored.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { startStack, type Stack } from '../api/helpers.js';
import { direct, installed, outcome } from './helpers.js';

let s: Stack;
let c: pg.Client;
beforeAll(async () => {
  s = await startStack('st_agree');
  await installed(s);
  c = await s.connect();
  // NULL and omitted max_tokens take this default: short answers keep the corpus quick.
  await c.query(`SELECT steadytext_config_set('default_max_tokens', '7')`);
  await c.query(`CREATE FUNCTION cb(q text) RETURNS text LANGUAGE plpgsql AS $$
    DECLARE r text;
    BEGIN
      EXECUTE q INTO r;
      RETURN r;
    END $$`);
});
afterAll(() => s?.stop());

type Result = { text: string | null } | { sqlstate: string };

const settle = async (p: Promise<pg.QueryResult>): Promise<Result> => {
  const r = await outcome(p);
  return 'ok' in r ? { text: (Object.values(r.ok.rows[0])[0] as string | null) ?? null } : { sqlstate: r.error.code };
};

/** Through the proxy as written, then (cache emptied) through the PL/pgSQL wrapper: the two results. */
async function bothPaths(sql: string, values?: unknown[], callbackSql = sql): Promise<{ proxy: Result; callback: Result }> {
  const proxy = await settle(values ? c.query(sql, values) : c.query(sql));
  await direct(s, 'DELETE FROM steadytext_cache');
  const callback = await settle(c.query('SELECT cb($1) AS t', [callbackSql]));
  await direct(s, 'DELETE FROM steadytext_cache');
  return { proxy, callback };
}

const NAME70 = 'n'.repeat(35) + 'é'.repeat(35); // 105 bytes: ::name keeps 63 of them (a whole character)

// Arguments of steadytext_generate(...), each run as SELECT steadytext_generate(<args>).
const GENERATE_ARGS: string[] = [
  // the five
  `1e3::text, 5`, `.5::text, 5`, `'abc'::"char", 5`, `'abc   '::bpchar, 5`, `'${NAME70}'::name, 5`,
  // string forms
  String.raw`E'tab\there \\ \'q\' \x41\101\u00e9', 5`, String.raw`U&'d\0061t\+000061 \00e9', 5`, `U&'x!0061y' UESCAPE '!', 5`,
  `$$dollar 'quoted' \\ $$, 5`, `$tag$ $$ nested $$ $tag$, 5`, `'  x  '::varchar(3), 5`, `'abcdef'::varchar(2), 5`,
  `'abc'::char(6), 5`, `'abc'::character varying, 5`, `'x' COLLATE "C", 5`, `'line1\nline2', 5`, `'a' 'b', 5`,
  `'it''s', 5`, `'', 5`, `' ', 5`, `'日本語 😀', 5`,
  // max_tokens forms
  `'p', 007`, `'p', '007'`, `'p', ' 7 '`, `'p', '+7'`, `'p', 7::int2`, `'p', 7::smallint`, `'p', 7.0::int`, `'p', 6.5::int`,
  `'p', '1e1'::int`, `'p', '0x10'`, `'p', '1_000'`, `'p', 7.5`, `'p', 0`, `'p', -1`, `'p', 2147483648`, `'p', '7'::text::int`,
  // seed forms
  `'p', 5, 042`, `'p', 5, '  43 '`, `'p', 5, -1`, `'p', 5, 2147483647`, `'p', 5, 3000000000`,
  // temperature forms
  `'p', 5, 42, 0.1+0.2`, `'p', 5, 42, 0.3`, `'p', 5, 42, '0.1'::float4`, `'p', 5, 42, 5e-1`, `'p', 5, 42, '.5'`,
  `'p', 5, 42, '1e-320'`, `'p', 5, 42, '-0'`, `'p', 5, 42, 'NaN'`, `'p', 5, 42, 'Infinity'`, `'p', 5, 42, -0.5`, `'p', 5, 42, 1/3::float8`,
  // model_size
  `'p', 5, 42, 0, 'small'`, `'p', 5, 42, 0, ' small'`, `'p', 5, 42, 0, 'large'`, `'p', 5, 42, 0, ''`,
  // NULLs and defaults
  `NULL`, `NULL::text, 5`, `'p', NULL`, `'p', NULL::int, NULL, NULL, NULL`, `'p'`,
  // named arguments, mixed
  `prompt := 'p', max_tokens := 5`, `max_tokens => 5, prompt => 'p'`, `'p', seed => 7, max_tokens => 4`, `'p', temperature => 0.5, max_tokens => 4`,
  `'p', model_size => 'small', max_tokens => 3`, `'p', max_tokens => NULL`,
  // expressions the proxy cannot read
  `'a' || 'b', 5`, `lower('ABC'), 2 + 3`, `(SELECT 'sub'), 5`, `repeat('ab', 3), length('four')`,
];

test('the proxy itself serves a plain literal call (the comparison below exercises both paths)', async () => {
  const before = s.daemon.stats().requests;
  const { proxy, callback } = await bothPaths(`SELECT steadytext_generate('served ahead', 5) AS t`);
  expect(proxy).toEqual(callback);
  expect(s.daemon.stats().requests).toBe(before + 1); // the callback run only
});

describe('steadytext_generate: the proxy agrees with the callback path', () => {
  test.each(GENERATE_ARGS)('steadytext_generate(%s)', async (args) => {
    const sql = `SELECT steadytext_generate(${args}) AS t`;
    const { proxy, callback } = await bothPaths(sql);
    expect(proxy).toEqual(callback);
  });
});

describe('steadytext_embed: the proxy agrees with the callback path', () => {
  test.each([
    `'abc   '::bpchar`, `1e3::text`, `'abc'::"char"`, `'${NAME70}'::name`, String.raw`E'a\tb'`, String.raw`U&'\00e9'`,
    `'  x  '::varchar(3)`, `'p', 007`, `'p', '1e1'::int`, `'p', -1`, `'p', seed => 5`, `NULL`, `'p', 42, 'large'`,
  ])('steadytext_embed(%s)', async (args) => {
    const sql = `SELECT steadytext_embed(${args})::text AS t`;
    const { proxy, callback } = await bothPaths(sql);
    expect(proxy).toEqual(callback);
  });
});

describe('parameters (extended protocol): the proxy agrees with the same values written as literals', () => {
  // [statement with parameters, values, the same statement with the values as literals]
  const cases: [string, unknown[], string][] = [
    [`SELECT steadytext_generate($1, $2) AS t`, ['p', 5], `SELECT steadytext_generate('p', '5') AS t`],
    [`SELECT steadytext_generate($1, $2) AS t`, ['p', ' 5 '], `SELECT steadytext_generate('p', ' 5 ') AS t`],
    [`SELECT steadytext_generate($1, $2) AS t`, ['p', '1e1'], `SELECT steadytext_generate('p', '1e1') AS t`],
    [`SELECT steadytext_generate($1, $2) AS t`, ['p', '0x10'], `SELECT steadytext_generate('p', '0x10') AS t`],
    [`SELECT steadytext_generate($1, $2) AS t`, ['p', '5.0'], `SELECT steadytext_generate('p', '5.0') AS t`],
    [`SELECT steadytext_generate($1::text, $2::int) AS t`, ['abc   ', 4], `SELECT steadytext_generate('abc   '::text, 4) AS t`],
    [`SELECT steadytext_generate($1::bpchar, $2::int) AS t`, ['abc   ', 4], `SELECT steadytext_generate('abc   '::bpchar, 4) AS t`],
    [`SELECT steadytext_generate($1::"char", $2::int) AS t`, ['abc', 4], `SELECT steadytext_generate('abc'::"char", 4) AS t`],
    [`SELECT steadytext_generate($1::name, $2::int) AS t`, [NAME70, 4], `SELECT steadytext_generate('${NAME70}'::name, 4) AS t`],
    [`SELECT steadytext_generate($1::varchar(3), $2::int) AS t`, ['  x  ', 4], `SELECT steadytext_generate('  x  '::varchar(3), 4) AS t`],
    [`SELECT steadytext_generate($1::unknown, $2) AS t`, ['p', 4], `SELECT steadytext_generate('p'::unknown, '4') AS t`],
    [`SELECT steadytext_generate($1, $2::int2) AS t`, ['p', 4], `SELECT steadytext_generate('p', 4::int2) AS t`],
    [`SELECT steadytext_generate($1, $2::numeric::int) AS t`, ['p', '4.5'], `SELECT steadytext_generate('p', 4.5::numeric::int) AS t`],
    [`SELECT steadytext_generate($1, 4, $2) AS t`, ['p', '042'], `SELECT steadytext_generate('p', 4, '042') AS t`],
    [`SELECT steadytext_generate($1, 4, 42, $2) AS t`, ['p', '0.1'], `SELECT steadytext_generate('p', 4, 42, '0.1') AS t`],
    [`SELECT steadytext_generate($1, 4, 42, $2::float4) AS t`, ['p', '0.1'], `SELECT steadytext_generate('p', 4, 42, '0.1'::float4) AS t`],
    [`SELECT steadytext_generate($1, 4, 42, $2) AS t`, ['p', '1e-320'], `SELECT steadytext_generate('p', 4, 42, '1e-320') AS t`],
    [`SELECT steadytext_generate($1, 4, 42, $2) AS t`, ['p', 'NaN'], `SELECT steadytext_generate('p', 4, 42, 'NaN') AS t`],
    [`SELECT steadytext_generate($1, $2) AS t`, [null, 4], `SELECT steadytext_generate(NULL, 4) AS t`],
    [`SELECT steadytext_generate($1, $2) AS t`, ['p', null], `SELECT steadytext_generate('p', NULL) AS t`],
    [`SELECT steadytext_generate(max_tokens => $2, prompt => $1) AS t`, ['p', 3], `SELECT steadytext_generate(max_tokens => 3, prompt => 'p') AS t`],
    [`SELECT steadytext_generate($1 || '', $2) AS t`, ['p', 3], `SELECT steadytext_generate('p' || '', 3) AS t`],
    [`SELECT steadytext_embed($1)::text AS t`, ['abc   '], `SELECT steadytext_embed('abc   ')::text AS t`],
    [`SELECT steadytext_embed($1::bpchar)::text AS t`, ['abc   '], `SELECT steadytext_embed('abc   '::bpchar)::text AS t`],
    // Buffers go as binary parameters.
    [`SELECT steadytext_generate($1::text, $2::int) AS t`, [Buffer.from('bin p'), Buffer.from([0, 0, 0, 4])], `SELECT steadytext_generate('bin p', 4) AS t`],
    [`SELECT steadytext_generate($1, $2) AS t`, [Buffer.from('bin q'), Buffer.from([0, 0, 0, 3])], `SELECT steadytext_generate('bin q', 3) AS t`],
    [`SELECT steadytext_generate($1::text, $2::int8::int) AS t`, [Buffer.from('bin r'), Buffer.from([0, 0, 0, 0, 0, 0, 0, 3])], `SELECT steadytext_generate('bin r', 3) AS t`],
    [`SELECT steadytext_generate($1::text, 3, 42, $2::float8) AS t`, [Buffer.from('bin s'), (() => { const b = Buffer.alloc(8); b.writeDoubleBE(0.1); return b; })()],
      `SELECT steadytext_generate('bin s', 3, 42, '0.1'::float8) AS t`],
    [`SELECT steadytext_generate($1::text, 3, 42, $2::float4) AS t`, [Buffer.from('bin t'), (() => { const b = Buffer.alloc(4); b.writeFloatBE(0.1); return b; })()],
      `SELECT steadytext_generate('bin t', 3, 42, '0.1'::float4) AS t`],
  ];

  test.each(cases)('%s with %j', async (sql, values, literal) => {
    const { proxy, callback } = await bothPaths(sql, values, literal);
    expect(proxy).toEqual(callback);
    // A named (reused) prepared statement too: the second run is served from what the first stored.
    const named = { name: `agree_${Math.abs(hash(sql + JSON.stringify(values)))}`, text: sql, values };
    const first = await settle(c.query(named));
    const second = await settle(c.query(named));
    await direct(s, 'DELETE FROM steadytext_cache');
    expect(first).toEqual(callback);
    expect(second).toEqual(callback);
  });
});

function hash(x: string): number {
  let h = 0;
  for (let i = 0; i < x.length; i++) h = (h * 31 + x.charCodeAt(i)) | 0;
  return h;
}
