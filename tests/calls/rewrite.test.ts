// Splicing the answer argument into client SQL, checked by the real PostgreSQL: the spliced statement must
// return exactly the answer text, whatever it contains, with standard_conforming_strings on or off.
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import pg from 'pg';
import { findCalls, isParseFailure, loadParser, type StatementCalls } from '../../proxy/calls.js';
import { appendArgument, appendArguments, insertAll, quoteLiteral } from '../../proxy/rewrite-sql.js';

const dbName = `calls_rewrite_${process.pid}_${Date.now() % 100000}`;
let admin: pg.Client;
let db: pg.Client;

beforeAll(async () => {
  await loadParser();
  admin = new pg.Client(inject('db').adminUrl);
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  const url = new URL(inject('db').adminUrl);
  url.pathname = `/${dbName}`;
  db = new pg.Client(url.toString());
  await db.connect();
  await db.query(`
    CREATE FUNCTION steadytext_generate(prompt text, max_tokens int DEFAULT NULL, seed int DEFAULT NULL,
      temperature float DEFAULT NULL, model_size text DEFAULT NULL, _steadytext_answer text DEFAULT NULL)
      RETURNS text LANGUAGE sql AS 'SELECT _steadytext_answer';
    CREATE FUNCTION steadytext_version(_steadytext_answer text DEFAULT NULL) RETURNS text LANGUAGE sql AS 'SELECT _steadytext_answer';
    CREATE TABLE docs (id int, body text);
    INSERT INTO docs VALUES (1, 'one'), (2, 'two');`);
});

afterAll(async () => {
  await db?.end();
  await admin?.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
  await admin?.end();
});

function parse(sql: string, scs = true): StatementCalls[] {
  const r = findCalls(Buffer.from(sql), { standardConformingStrings: scs });
  if (isParseFailure(r)) throw new Error(`${r.failure}: ${r.message}`);
  return r;
}

/** A deterministic PRNG so failures reproduce. */
function rng(seed: number) {
  return () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff; };
}
const PIECES = ["'", "''", '\\', "\\'", '$$', '$a$', '$_steadytext$', "E'", 'U&', '\\0041', '--', '/*', '*/', ';', ')', '(', ',',
  '"', '`', '\n', '\r\n', '\t', ' ', 'é', '😀', '日本語', '\u2028', '\u00a0', '\ufeff', 'x', 'SELECT', ':=', '=>', '%s', '\\\\', '\u0001', '\u007f'];
function nastyText(len: number, seed: number): string {
  const r = rng(seed);
  let s = '';
  while (s.length < len) s += PIECES[Math.floor(r() * PIECES.length)];
  return s;
}

const NASTY = [
  '', ' ', "'", "''", '\\', '\\\\', "\\'", "'\\", '$$', '$$ $$', '$a$ x $a$', "'); DROP TABLE docs; --",
  "x', _steadytext_answer => 'y", "E'\\''", 'back\\slash and \'quote\'', '-- not a comment', '/* not a comment */',
  'line1\nline2\r\nline3\ttab', 'unicode: é ü 日本語 😀 \u2028', '\u0001\u001f\u007f', 'U&"\\0041"', '%s %I %L', ':= =>',
  nastyText(2000, 1), nastyText(100_000, 2),
];

describe('quoteLiteral', () => {
  test('rejects what PostgreSQL text cannot hold', () => {
    expect(() => quoteLiteral('a\0b')).toThrow(/NUL/);
    expect(() => quoteLiteral('a\ud800b')).toThrow(/surrogate/);
  });

  for (const scs of ['on', 'off']) {
    test(`every nasty text reads back exactly (standard_conforming_strings ${scs})`, async () => {
      await db.query(`SET standard_conforming_strings = ${scs}; SET escape_string_warning = off`);
      try {
        const sql = "SELECT steadytext_generate('Write about AI', max_tokens := 100) AS a";
        const [st] = parse(sql, scs === 'on');
        for (const text of NASTY) {
          const out = appendArgument(Buffer.from(sql), st.calls[0], quoteLiteral(text));
          const r = await db.query(out.toString('utf8'));
          expect(r.rows).toHaveLength(1);
          expect(r.rows[0].a === text, `text of ${text.length} chars`).toBe(true);
        }
      } finally {
        await db.query('RESET standard_conforming_strings; RESET escape_string_warning');
      }
    });
  }
});

describe('appendArgument(s)', () => {
  test('without the answer argument the stub returns NULL (the splice is what answers)', async () => {
    expect((await db.query("SELECT steadytext_generate('x') AS a")).rows[0].a).toBeNull();
  });

  test('several calls at once: nested, zero-argument, comments and unicode around them', async () => {
    const sql = "SELECT /* é ( */ steadytext_generate('a' -- c )\n) AS x, 'ü)' AS u,\n"
      + "  steadytext_generate(steadytext_generate('b'), max_tokens => 5 /* ) */) AS y, steadytext_version( ) AS v";
    const [st] = parse(sql);
    expect(st.calls.map((c) => c.fn)).toEqual(['steadytext_generate', 'steadytext_generate', 'steadytext_generate', 'steadytext_version']);
    const answers = ["x's answer", 'outer \\ answer', 'inner $$ answer', 'v 😀'];
    const out = appendArguments(Buffer.from(sql), st.calls.map((call, i) => ({ call, argSql: quoteLiteral(answers[i]) })));
    const r = await db.query(out.toString('utf8'));
    expect(r.rows[0]).toEqual({ x: "x's answer", u: 'ü)', y: 'outer \\ answer', v: 'v 😀' });
    expect(out.toString('utf8')).toContain('/* é ( */'); // the client's text is kept, comments included
  });

  test('in a row context and in WHERE', async () => {
    const sql = "SELECT id, steadytext_generate('p') AS g FROM docs WHERE body <> steadytext_generate('q') ORDER BY id";
    const [st] = parse(sql);
    const out = appendArguments(Buffer.from(sql), [
      { call: st.calls[0], argSql: quoteLiteral('G') }, { call: st.calls[1], argSql: quoteLiteral('one') },
    ]);
    expect((await db.query(out.toString('utf8'))).rows).toEqual([{ id: 2, g: 'G' }]);
  });

  test('extended protocol: the answer as an extra bound parameter', async () => {
    const sql = 'SELECT steadytext_generate($1, max_tokens := $2) AS a';
    const [st] = parse(sql);
    const out = appendArgument(Buffer.from(sql), st.calls[0], `$${st.maxParam + 1}`);
    for (const text of NASTY.slice(0, 12)) {
      const r = await db.query(out.toString('utf8'), ['Write about AI', 100, text]);
      expect(r.rows[0].a).toBe(text);
    }
  });

  test('simple-protocol multi-statement buffer: each statement gets its own answers', async () => {
    const sql = "SELECT steadytext_generate('a') AS a; SELECT 'x;' AS q, steadytext_generate('b;') AS b";
    const sts = parse(sql);
    const calls = sts.flatMap((s) => s.calls);
    const out = appendArguments(Buffer.from(sql), calls.map((call, i) => ({ call, argSql: quoteLiteral(`A${i}`) })));
    const r = (await db.query(out.toString('utf8'))) as unknown as pg.QueryResult[];
    expect(r.map((x) => x.rows[0])).toEqual([{ a: 'A0' }, { q: 'x;', b: 'A1' }]);
  });

  test('PREPARE gets an extra parameter, EXECUTE passes the answer', async () => {
    const sql = 'PREPARE gen (TEXT, INT) AS SELECT steadytext_generate($1, max_tokens := $2) AS a';
    const [p] = parse(sql);
    const n = p.maxParam + 1;
    const prep = insertAll(Buffer.from(sql), [
      { at: p.prepare!.typesClose!, text: ', text' },
      { at: p.calls[0].close, text: `, _steadytext_answer => $${n}` },
    ]);
    await db.query(prep.toString('utf8'));
    const ex = "EXECUTE gen('Write about AI', 100)";
    const [e] = parse(ex);
    const exOut = insertAll(Buffer.from(ex), [{ at: e.execute!.close!, text: `, ${quoteLiteral("it's $$ done")}` }]);
    expect((await db.query(exOut.toString('utf8'))).rows[0].a).toBe("it's $$ done");
    await db.query('DEALLOCATE gen');
  });

  test('a buffer that does not match the call is refused', () => {
    const sql = "SELECT steadytext_generate('a')";
    const [st] = parse(sql);
    expect(() => appendArgument(Buffer.from(`  ${sql}`), st.calls[0], "'x'")).toThrow(/do not match/);
    const [np] = parse("SELECT steadytext_generate(VARIADIC ARRAY['a'])");
    expect(() => appendArgument(Buffer.from("SELECT steadytext_generate(VARIADIC ARRAY['a'])"), np.calls[0], "'x'")).toThrow();
  });

  test('the PG15 server accepts what the PG18 parser rejects: such statements are forwarded unchanged', async () => {
    const sql = 'SELECT steadytext_generate(body) AS g FROM docs AS system_user ORDER BY 1';
    expect(isParseFailure(findCalls(Buffer.from(sql)))).toBe(true);
    expect((await db.query(sql)).rows).toEqual([{ g: null }, { g: null }]);
  });
});
