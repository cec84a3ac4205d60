import { beforeAll, describe, expect, test } from 'vitest';
import {
  findCalls, isParseFailure, loadParser, MAX_PARSE_BYTES, type ParseFailure, type StatementCalls, type SteadyCall,
} from '../../sql/calls.js';
import { DAEMON_OPS, functionOfOp, isComputing, isManagement, servedByProxy, STEADYTEXT_FUNCTIONS } from '../../sql/signatures.js';

beforeAll(loadParser);

function stmts(sql: string | Buffer, opts?: { standardConformingStrings?: boolean }): StatementCalls[] {
  const r = findCalls(Buffer.isBuffer(sql) ? sql : Buffer.from(sql), opts);
  if (isParseFailure(r)) throw new Error(`unexpected failure: ${r.failure} ${r.message}`);
  return r;
}
function failure(sql: string | Buffer, opts?: { standardConformingStrings?: boolean }): ParseFailure {
  const r = findCalls(Buffer.isBuffer(sql) ? sql : Buffer.from(sql), opts);
  if (!isParseFailure(r)) throw new Error('expected a parse failure');
  return r;
}
function calls(sql: string): SteadyCall[] {
  const s = stmts(sql);
  expect(s).toHaveLength(1);
  return s[0].calls;
}
const slice = (sql: string, a: number, b: number) => Buffer.from(sql).toString('utf8', a, b);
/** The texts of each argument of the only call. */
function argTexts(sql: string): string[] {
  const [c] = calls(sql);
  return c.args.map((a) => slice(sql, a.start, a.end));
}

describe('finding calls', () => {
  test('a plain call: name, parentheses, literal argument', () => {
    const sql = "SELECT steadytext_generate('The capital of France is')";
    const [c] = calls(sql);
    expect(c).toMatchObject({ fn: 'steadytext_generate', schema: null, kind: 'const', clause: 'target', plain: true });
    expect(slice(sql, c.start, c.end)).toBe("steadytext_generate('The capital of France is')");
    expect(sql[c.open]).toBe('(');
    expect(sql[c.close]).toBe(')');
    expect(c.end).toBe(c.close + 1);
    expect(c.args[0]).toMatchObject({ position: 0, name: null, kind: 'const', value: { literal: 'The capital of France is', type: 'string' } });
  });

  test('every steadytext function of the signature table is recognised, and nothing else', () => {
    const fns = [...STEADYTEXT_FUNCTIONS];
    expect(fns).toHaveLength(11);
    const sql = `SELECT ${fns.map((f) => `${f}()`).join(', ')}, steadytext_other(), my_steadytext_generate(), steadytext_cache()`;
    expect(calls(sql).map((c) => c.fn)).toEqual(fns);
  });

  test('the signature table: kinds, and the daemon op of each function the proxy serves', () => {
    expect(STEADYTEXT_FUNCTIONS.filter(isComputing)).toEqual(['steadytext_generate', 'steadytext_embed', 'steadytext_generate_stream']);
    expect(STEADYTEXT_FUNCTIONS.filter(isManagement).sort()).toEqual(['steadytext_daemon_restart', 'steadytext_daemon_start',
      'steadytext_daemon_status', 'steadytext_daemon_stop', 'steadytext_model_info']);
    expect(STEADYTEXT_FUNCTIONS.filter((f) => !servedByProxy(f)).sort()).toEqual(['steadytext_config_get', 'steadytext_config_set', 'steadytext_version']);
    expect(Object.fromEntries(DAEMON_OPS.map((op) => [op, functionOfOp(op)]))).toEqual({
      generate: 'steadytext_generate', generate_stream: 'steadytext_generate_stream', embed: 'steadytext_embed',
      status: 'steadytext_daemon_status', model_info: 'steadytext_model_info', start: 'steadytext_daemon_start',
      stop: 'steadytext_daemon_stop', restart: 'steadytext_daemon_restart',
    });
    expect(functionOfOp('nope')).toBeUndefined();
    expect(functionOfOp('toString')).toBeUndefined();
  });

  test('named arguments with := and => give the same shape; quoted names resolve', () => {
    for (const op of [':=', '=>']) {
      const sql = `SELECT steadytext_generate('p', max_tokens ${op} 100, "seed" ${op} $1::int, temperature${op}0.5)`;
      const [c] = calls(sql);
      expect(c.args.map((a) => a.name)).toEqual([null, 'max_tokens', 'seed', 'temperature']);
      expect(c.args.map((a) => slice(sql, a.start, a.end))).toEqual(["'p'", `max_tokens ${op} 100`, `"seed" ${op} $1::int`, `temperature${op}0.5`]);
      expect(c.args.map((a) => slice(sql, a.valueStart, a.end))).toEqual(["'p'", '100', '$1::int', '0.5']);
      expect(c.args[1].value).toEqual({ literal: '100', type: 'integer' });
      expect(c.args[2].value).toEqual({ param: 1, cast: 'int4' });
      expect(c.args[3].value).toEqual({ literal: '0.5', type: 'float' });
      expect(c.params).toEqual([1]);
      expect(c.kind).toBe('const');
    }
  });

  test('schema-qualified, any case, quoted and U& identifiers', () => {
    const cases: [string, string | null][] = [
      ["SELECT public.steadytext_embed('x')", 'public'],
      ["SELECT \"public\".\"steadytext_embed\"('x')", 'public'],
      ["SELECT Public . /* c */ STEADYTEXT_EMBED ('x')", 'public'],
      ["SELECT SteadyText_Embed('x')", null],
      ["SELECT U&\"steady\\0074ext_embed\"('x')", null],
      ["SELECT U&\"steady!0074ext_embed\" UESCAPE '!' ('x')", null],
      ["SELECT mydb.st.steadytext_embed('x')", 'st'],
    ];
    for (const [sql, schema] of cases) {
      const [c] = calls(sql);
      expect(c.fn, sql).toBe('steadytext_embed');
      expect(c.schema, sql).toBe(schema);
      expect(slice(sql, c.close, c.end)).toBe(')');
      expect(argTexts(sql)).toEqual(["'x'"]);
    }
    // A quoted identifier spelled differently is another function.
    expect(calls("SELECT \"STEADYTEXT_EMBED\"('x')")).toEqual([]);
  });

  test('text that merely looks like a call is never reported', () => {
    const sql = [
      "SELECT 'steadytext_generate(1)', $$steadytext_generate($$, $t$ steadytext_embed('x') $t$,",
      "E'\\' steadytext_generate(\\'', U&'steadytext_generate(', \"steadytext_generate(\" -- steadytext_generate(",
      ", 1 /* steadytext_generate( /* nested */ steadytext_embed( */ FROM t WHERE steadytext_generate IS NULL",
    ].join('\n');
    expect(calls(sql)).toEqual([]);
  });

  test('nested parentheses, strings with parentheses and commas, dollar quotes, E strings', () => {
    const sql = "SELECT steadytext_generate('a)(,' || upper($$),($$) || (E'\\')' || 'x'), max_tokens := (1+2)*3, seed => (ARRAY[1,(2)])[1])";
    expect(argTexts(sql)).toEqual(["'a)(,' || upper($$),($$) || (E'\\')' || 'x')", 'max_tokens := (1+2)*3', 'seed => (ARRAY[1,(2)])[1]']);
    expect(calls(sql)[0].kind).toBe('const');
  });

  test('byte offsets, not character offsets, after multi-byte text', () => {
    const sql = "SELECT 'héllo 😀 日本', /* ü */ steadytext_generate('ünï 😀', max_tokens := 5) AS \"ü\"";
    const buf = Buffer.from(sql);
    const [c] = calls(sql);
    expect(c.start).toBe(buf.indexOf('steadytext_generate'));
    expect(c.start).not.toBe(sql.indexOf('steadytext_generate'));
    expect(buf[c.close]).toBe(0x29);
    expect(buf.toString('utf8', c.args[0].start, c.args[0].end)).toBe("'ünï 😀'");
    expect(c.args[0].value).toEqual({ literal: 'ünï 😀', type: 'string' });
  });

  test('comments inside the argument list stay out of the argument ranges', () => {
    const sql = "SELECT steadytext_generate( /* a, ( */ 'x' /* b ) */ , -- c, )\n 5 -- d\n)";
    expect(argTexts(sql)).toEqual(["'x'", '5']);
    const [c] = calls(sql);
    expect(sql[c.close]).toBe(')');
    expect(c.close).toBe(sql.length - 1);
  });

  test('zero-argument calls', () => {
    const sql = 'SELECT steadytext_version( ), steadytext_daemon_status()';
    const cs = calls(sql);
    expect(cs.map((c) => [c.args.length, c.kind, slice(sql, c.start, c.end)])).toEqual([
      [0, 'const', 'steadytext_version( )'], [0, 'const', 'steadytext_daemon_status()'],
    ]);
  });

  test('nested steadytext calls: the inner one is const and marked, the outer one depends on it', () => {
    const sql = "SELECT steadytext_generate(steadytext_generate('x'), max_tokens := 5)";
    const [outer, inner] = calls(sql);
    expect(outer).toMatchObject({ kind: 'row', inCall: false });
    expect(inner).toMatchObject({ kind: 'const', inCall: true });
    expect(inner.start).toBeGreaterThan(outer.start);
    expect(inner.close).toBeLessThan(outer.close);
    expect(slice(sql, outer.args[0].start, outer.args[0].end)).toBe("steadytext_generate('x')");
  });

  test('const and row arguments', () => {
    const cases: [string, 'const' | 'row', number[]][] = [
      ["'a' || $1", 'const', [1]],
      ['100::int', 'const', []],
      ["upper('x')", 'const', []],
      ["pg_catalog.lower($2) || format('%s', $1)", 'const', [1, 2]],
      ["CASE WHEN $1 > 0 THEN 'a' ELSE 'b' END", 'const', [1]],
      ["coalesce($1, 'x')", 'const', [1]],
      ["ARRAY['a', 'b']::text[]", 'const', []],
      ["'x' COLLATE \"C\"", 'const', []],
      ["-1", 'const', []],
      ['NULL', 'const', []],
      ['(1 + $3) * 2', 'const', [3]],
      ['body', 'row', []],
      ['t.body || $1', 'row', [1]],
      ['random()::text', 'row', []],
      ['now()::text', 'row', []],
      ['current_user', 'row', []],
      ['(SELECT 1)', 'row', []],
      ["myschema.upper('x')", 'row', []],
      ["my_prompt('x')", 'row', []],
      ["string_agg('x', ',')", 'row', []],
    ];
    for (const [expr, kind, params] of cases) {
      const [c] = calls(`SELECT steadytext_generate(${expr}) FROM t`);
      expect([c.args[0].kind, c.args[0].params], expr).toEqual([kind, params]);
      expect(c.kind, expr).toBe(kind);
    }
  });

  test('literal values and casts', () => {
    const v = (expr: string) => calls(`SELECT steadytext_generate(${expr})`)[0].args[0].value;
    expect(v("'it''s'")).toEqual({ literal: "it's", type: 'string' });
    expect(v("E'a\\nb'")).toEqual({ literal: 'a\nb', type: 'string' });
    expect(v("U&'d\\0061t'")).toEqual({ literal: 'dat', type: 'string' });
    expect(v('0')).toEqual({ literal: '0', type: 'integer' });
    expect(v('false')).toEqual({ literal: 'false', type: 'boolean' });
    expect(v('true')).toEqual({ literal: 'true', type: 'boolean' });
    expect(v('NULL')).toEqual({ literal: null, type: 'null' });
    expect(v("'5'::text")).toEqual({ literal: '5', type: 'string', cast: 'text' });
    expect(v('$7')).toEqual({ param: 7 });
    expect(v("'abcdef'::varchar(3)")).toBeUndefined(); // a typmod changes the value
    expect(v("'a' || 'b'")).toBeUndefined();
  });

  test('where the call sits', () => {
    const at = (sql: string) => calls(sql).map((c) => [c.clause, c.inCte, c.inSubquery]);
    expect(at("SELECT steadytext_generate('a') FROM t")).toEqual([['target', false, false]]);
    expect(at("SELECT 1 FROM t WHERE x = steadytext_generate('a')")).toEqual([['where', false, false]]);
    expect(at("SELECT 1 FROM t ORDER BY steadytext_embed('a') <=> e")).toEqual([['order_by', false, false]]);
    expect(at("SELECT 1 FROM t GROUP BY steadytext_generate(a) HAVING steadytext_generate('b') > ''"))
      .toEqual([['group_by', false, false], ['having', false, false]]);
    expect(at("SELECT 1 LIMIT length(steadytext_generate('a'))")).toEqual([['limit', false, false]]);
    expect(at("INSERT INTO t VALUES (1, steadytext_embed('a'))")).toEqual([['values', false, false]]);
    expect(at("UPDATE t SET e = steadytext_embed(b) RETURNING steadytext_generate('r')"))
      .toEqual([['set', false, false], ['returning', false, false]]);
    expect(at("DELETE FROM t USING steadytext_generate_stream('a') s WHERE t.b = s RETURNING 1")).toEqual([['from_function', false, false]]);
    expect(at("WITH c AS (SELECT steadytext_generate('a') AS g) SELECT * FROM c")).toEqual([['target', true, false]]);
    expect(at("SELECT (SELECT steadytext_generate(b) FROM u) FROM t")).toEqual([['target', false, true]]);
    expect(at("SELECT * FROM (SELECT steadytext_embed(b) FROM u) s")).toEqual([['target', false, true]]);
    expect(at('SELECT * FROM steadytext_daemon_status()')).toEqual([['from_function', false, false]]);
    expect(at("SELECT * FROM steadytext_generate_stream('Write a story about AI')")).toEqual([['from_function', false, false]]);
    expect(at("SELECT * FROM t JOIN u ON u.x = steadytext_generate('a')")).toEqual([['join', false, false]]);
    expect(at("INSERT INTO t SELECT steadytext_generate(b) FROM u ON CONFLICT (id) DO UPDATE SET g = steadytext_generate('c')"))
      .toEqual([['target', false, false], ['on_conflict', false, false]]);
  });

  test('calls that cannot take an appended argument are marked', () => {
    const plain = (sql: string) => calls(sql).map((c) => c.plain);
    expect(plain("SELECT steadytext_generate(VARIADIC ARRAY['a'])")).toEqual([false]);
    expect(plain("SELECT steadytext_generate(b ORDER BY c) FROM t")).toEqual([false]);
    expect(plain("SELECT steadytext_generate(DISTINCT b) FROM t")).toEqual([false]);
    expect(plain("SELECT steadytext_generate(b) OVER () FROM t")).toEqual([false]);
    expect(plain("SELECT steadytext_generate('a', _steadytext_answer => 'forged')")).toEqual([false]);
    expect(calls("SELECT steadytext_generate('a', _steadytext_answer => 'forged')")[0].why).toMatch(/_steadytext_answer/);
  });
});

describe('statements', () => {
  test('several statements: byte ranges without the semicolons, kinds', () => {
    const sql = "/* hi */ SELECT steadytext_generate('é;'); ;; UPDATE t SET e = steadytext_embed(b) ; DELETE FROM t -- bye\n";
    const s = stmts(sql);
    expect(s.map((x) => [x.index, x.kind, slice(sql, x.start, x.end), x.calls.length])).toEqual([
      [0, 'select', "SELECT steadytext_generate('é;')", 1],
      [1, 'update', 'UPDATE t SET e = steadytext_embed(b) ', 1],
      [2, 'delete', 'DELETE FROM t -- bye\n', 0],
    ]);
    expect(s[1].calls[0].kind).toBe('row');
  });

  test('statement kinds and whether calls may be rewritten', () => {
    const k = (sql: string) => stmts(sql).map((s) => [s.kind, s.rewritable, s.calls.length]);
    expect(k("SELECT steadytext_generate('a')")).toEqual([['select', true, 1]]);
    expect(k("INSERT INTO t VALUES (steadytext_embed('a'))")).toEqual([['insert', true, 1]]);
    expect(k("DELETE FROM t WHERE b = steadytext_generate('a')")).toEqual([['delete', true, 1]]);
    expect(k("CALL p(steadytext_generate('x'))")).toEqual([['call', true, 1]]);
    expect(k('CALL steadytext_daemon_restart()')).toEqual([['call', true, 1]]);
    expect(k("EXPLAIN SELECT steadytext_generate('x')")).toEqual([['explain', false, 1]]);
    expect(k("EXPLAIN ANALYZE SELECT steadytext_generate('x')")).toEqual([['explain', true, 1]]);
    expect(k("EXPLAIN (ANALYZE, BUFFERS) SELECT steadytext_generate('x')")).toEqual([['explain', true, 1]]);
    expect(k("EXPLAIN (ANALYZE off) SELECT steadytext_generate('x')")).toEqual([['explain', false, 1]]);
    expect(k("CREATE VIEW v AS SELECT steadytext_generate('x')")).toEqual([['create_view', false, 1]]);
    expect(k("CREATE MATERIALIZED VIEW v AS SELECT steadytext_generate('x')")).toEqual([['other', false, 1]]);
    expect(k("CREATE TABLE t2 AS SELECT steadytext_generate(b) FROM t")).toEqual([['other', true, 1]]);
    expect(k("CREATE TABLE t (a text DEFAULT steadytext_generate('x'))")).toEqual([['other', false, 1]]);
    expect(k("ALTER TABLE t ADD COLUMN e text DEFAULT steadytext_generate('x')")).toEqual([['other', false, 1]]);
    expect(k('CREATE INDEX ON t ((steadytext_embed(b)))')).toEqual([['other', false, 1]]);
    expect(k("CREATE TRIGGER g BEFORE INSERT ON t FOR EACH ROW WHEN (steadytext_generate(NEW.a) IS NULL) EXECUTE FUNCTION f()"))
      .toEqual([['other', false, 1]]);
    expect(k("CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_generate('x'); END $$"))
      .toEqual([['create_function', false, 0]]);
    expect(k("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT steadytext_generate(''x'')'"))
      .toEqual([['create_function', false, 0]]);
    expect(k("CREATE FUNCTION f(p text DEFAULT steadytext_generate('x')) RETURNS text BEGIN ATOMIC SELECT steadytext_generate(p); END"))
      .toEqual([['create_function', false, 2]]);
    expect(k("DO $$ BEGIN PERFORM steadytext_generate('x'); END $$")).toEqual([['do', false, 0]]);
    expect(k("DECLARE c CURSOR WITH HOLD FOR SELECT steadytext_generate(b) FROM t")).toEqual([['other', true, 1]]);
    expect(k("COPY (SELECT steadytext_embed(b) FROM t) TO STDOUT")).toEqual([['other', true, 1]]);
    expect(stmts("CREATE VIEW v AS SELECT steadytext_generate('x')")[0].reason).toMatch(/view/);
  });

  test('PREPARE and EXECUTE carry what a rewrite needs', () => {
    const sql = 'PREPARE generate_stmt (TEXT, INT) AS\n    SELECT steadytext_generate($1, max_tokens := $2); EXECUTE generate_stmt(\'Write about AI\', 100); PREPARE "Q" AS SELECT steadytext_embed($1); EXECUTE "Q"(upper($1))';
    const [p, e, p2, e2] = stmts(sql);
    expect(p.prepare).toMatchObject({ name: 'generate_stmt', types: 2 });
    expect(slice(sql, p.prepare!.typesOpen!, p.prepare!.typesClose! + 1)).toBe('(TEXT, INT)');
    expect(slice(sql, p.prepare!.queryStart, p.end)).toBe('SELECT steadytext_generate($1, max_tokens := $2)');
    expect(p.calls[0]).toMatchObject({ kind: 'const', params: [1, 2] });
    expect(p.maxParam).toBe(2);
    expect(e.execute).toMatchObject({ name: 'generate_stmt' });
    expect(e.execute!.args.map((a) => a.value)).toEqual([{ literal: 'Write about AI', type: 'string' }, { literal: '100', type: 'integer' }]);
    expect(slice(sql, e.execute!.close!, e.execute!.close! + 1)).toBe(')');
    expect(p2.prepare).toMatchObject({ name: 'Q', types: 0, typesOpen: null, typesClose: null });
    expect(slice(sql, p2.start, p2.prepare!.nameEnd)).toBe('PREPARE "Q"');
    expect(e2.execute!.args[0]).toMatchObject({ kind: 'const', params: [1] });
    expect(stmts('EXECUTE q')[0].execute).toEqual({ name: 'q', args: [], open: null, close: null });
  });

  test('maxParam counts every $n of the statement', () => {
    expect(stmts("SELECT steadytext_generate($1) FROM t WHERE a = $5 AND b = $2")[0].maxParam).toBe(5);
  });

  test('empty and comment-only input', () => {
    expect(stmts('')).toEqual([]);
    expect(stmts('-- nothing\n/* here */')).toEqual([]);
  });
});

describe('failures: forward unchanged', () => {
  test('syntax the PG18 grammar rejects, with the byte position', () => {
    // Valid in PostgreSQL 15 (system_user became a keyword in 16).
    const sql = "SELECT 'é', steadytext_generate(x) FROM t AS system_user";
    const f = failure(sql);
    expect(f.failure).toBe('syntax');
    expect(f.position).toBe(Buffer.from(sql).indexOf('system_user'));
    expect(failure("SELECT steadytext_generate('x'").failure).toBe('syntax');
  });

  test('statements over the cap are not parsed', () => {
    const big = Buffer.from(`SELECT steadytext_generate('${'x'.repeat(MAX_PARSE_BYTES)}')`);
    expect(failure(big).failure).toBe('too_large');
    const fits = Buffer.from(`SELECT steadytext_generate('${'x'.repeat(MAX_PARSE_BYTES - 100)}')`);
    expect(stmts(fits)[0].calls).toHaveLength(1);
  });

  test('bytes that are not UTF-8, and NUL', () => {
    expect(failure(Buffer.from([...Buffer.from("SELECT steadytext_generate('"), 0xe9, ...Buffer.from("')")])).failure).toBe('encoding');
    expect(failure(Buffer.from("SELECT steadytext_generate('a\0')")).failure).toBe('encoding');
  });

  test('standard_conforming_strings off: a backslash in a plain string makes the lexing ambiguous', () => {
    // The parser (scs on) sees two calls; a server with scs off sees one string 'a\'), steadytext_generate('.
    const sql = "SELECT steadytext_generate('a\\'), steadytext_generate(' || ')";
    expect(stmts(sql)[0].calls).toHaveLength(2);
    expect(failure(sql, { standardConformingStrings: false }).failure).toBe('scs_backslash');
    // E'' strings and strings without backslashes lex the same either way.
    expect(stmts("SELECT steadytext_generate(E'a\\'b', 'c')", { standardConformingStrings: false })[0].calls).toHaveLength(1);
    expect(stmts("SELECT steadytext_generate('c') -- \\", { standardConformingStrings: false })[0].calls).toHaveLength(1);
  });

  test('findCalls before loadParser resolves is not silent', async () => {
    // Already loaded here; a second load is shared and harmless.
    await loadParser();
    expect(stmts('SELECT 1')).toHaveLength(1);
  });
});

describe('randomised: argument ranges match what was written', () => {
  const EXPRS = ["'a)(,'", '$$x)($$', "E'\\')'", "upper('(')", '(1+2)', 'ARRAY[1,(2)]', '$1', 'body', '(SELECT 1, 2)',
    "'é😀'", '"co,l"', 'x::text', "CASE WHEN a THEN ')' END", '$q$,$q$', "U&'\\0041'", "f(a, (b), 'c,')", 't.body || $2',
    "'it''s'", "coalesce(NULL, ',')", "'a' -- ),\n || 'b'", "'x' /* ) */ || 'y'"];
  const GAPS = ['', ' ', '\n', ' /* ( , */ ', ' -- ) ,\n', '\t'];
  const PREFIX = ['', "'é', ", '/* ü ( */ ', '1, ', '"日本", ', "$$steadytext_generate($$, "];
  const SUFFIX = ['', ' AS x', " || 'a'", '::text', ', 2', ' IS NULL', ' FROM t'];
  const NAMES = ['max_tokens', 'seed', '"Temp"', 'model_size'];
  let seed = 7;
  const pick = <T>(xs: T[]): T => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return xs[seed % xs.length]; };

  test('500 generated calls', () => {
    for (let n = 0; n < 500; n++) {
      const nargs = [0, 1, 2, 3, 4][n % 5];
      let sql = `SELECT ${pick(PREFIX)}${pick(GAPS)}steadytext_generate${pick(['', ' '])}(`;
      const expected: { name: string | null; value: string; start: number }[] = [];
      for (let i = 0; i < nargs; i++) {
        sql += pick(GAPS);
        const name = i > 0 && n % 2 ? pick(NAMES) : null;
        const start = Buffer.byteLength(sql);
        if (name) sql += `${name} ${pick([':=', '=>'])} `;
        const value = pick(EXPRS);
        expected.push({ name: name && (name.startsWith('"') ? name.slice(1, -1) : name), value, start });
        sql += value + pick(GAPS) + (i < nargs - 1 ? ',' : '');
      }
      const close = Buffer.byteLength(sql);
      sql += `)${pick(SUFFIX)}`;
      // Named arguments must be distinct and follow positional ones for the grammar; skip duplicates.
      const names = expected.filter((e) => e.name).map((e) => e.name);
      if (new Set(names).size !== names.length) continue;
      const r = findCalls(Buffer.from(sql));
      if (isParseFailure(r)) throw new Error(`${r.message}\n${sql}`);
      const [c] = r[0].calls.filter((x) => x.fn === 'steadytext_generate');
      expect(c.close, sql).toBe(close);
      expect(c.args.map((a) => [a.name, a.start, slice(sql, a.valueStart, a.end)]), sql)
        .toEqual(expected.map((e) => [e.name, e.start, e.value]));
    }
  });
});
