// The statement classifier of transaction pooling: the prefilter lets pgbench-style traffic through without
// the parser; the parser's answers on the statements that matter and on those that only look like them;
// and, against the real server, that what is reported replays to the same settings and prepared statements,
// and that what is reported as unparseable or as nothing is what the server does too.
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import pg from 'pg';
import {
  loadStatementParser,
  MAX_EFFECTS_PARSE_BYTES,
  parserRuns,
  prefilterHits,
  statementEffects,
  type EffectsOptions,
  type StatementEffects,
} from '../../proxy/statement-effects.js';

const effects = (sql: string, opts?: EffectsOptions) => statementEffects(Buffer.from(sql), 0, Buffer.byteLength(sql), opts);
const hits = (sql: string) => prefilterHits(Buffer.from(sql), 0, Buffer.byteLength(sql));

const NONE: StatementEffects = {
  sets: [],
  unknownSet: false,
  discard: null,
  prepares: [],
  executes: [],
  deallocates: [],
  pins: [],
  unpins: [],
  txControl: false,
};
const only = (over: Partial<StatementEffects>): StatementEffects => ({ ...NONE, ...over });
const UNEXAMINED = only({
  unknownSet: true,
  pins: ['advisory', 'temp', 'hold', 'listen', 'load'],
  unpins: ['unlisten', 'advisory_unlock', 'close', 'drop'],
  txControl: true,
});

// What pgbench sends: -S, -N and the default TPC-B-like script, as simple-protocol text and as -M prepared Parse text.
const PGBENCH = [
  'SELECT abalance FROM pgbench_accounts WHERE aid = 81234;',
  'UPDATE pgbench_accounts SET abalance = abalance + -1337 WHERE aid = 81234;',
  'UPDATE pgbench_tellers SET tbalance = tbalance + -1337 WHERE tid = 3;',
  'UPDATE pgbench_branches SET bbalance = bbalance + -1337 WHERE bid = 1;',
  'INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 81234, -1337, CURRENT_TIMESTAMP);',
  'SELECT abalance FROM pgbench_accounts WHERE aid = $1',
  'UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2',
  'INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)',
];
/** Each a syntax error for PostgreSQL too (checked against the server below). */
const UNPARSEABLE = [
  'SET search_path =',
  'PREPARE p AS',
  'SELEC pg_advisory_lock(1)',
  'LISTEN',
  "SELECT 'unterminated; DISCARD ALL",
  'SET search_path = a, user',
];

const PGBENCH_TX = ['BEGIN;', 'END;', 'BEGIN', 'COMMIT', 'start transaction', 'rollback work;  '];

describe('before loadStatementParser', () => {
  test('classifying is refused with a clear error', () => {
    expect(() => effects('SELECT 1')).toThrow(/loadStatementParser/);
  });
});

describe('prefilter', () => {
  test('passes pgbench statements and other ordinary DML', () => {
    for (const s of [
      ...PGBENCH,
      'UPDATE t\nSET x = 1',
      'INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = excluded.x',
      'ALTER ROLE r SET search_path = x',
      'SELECT template, attempt, temperature, tempo, settings, config FROM t',
      'SELECT U& "x", "U&x"',
      '',
    ]) {
      expect(hits(s), s).toBe(false);
    }
  });

  test('flags each leading word in any case, after blanks, comments and any `;`', () => {
    for (const w of ['SET', 'reset', 'Discard', 'PREPARE', 'EXECUTE', 'DEALLOCATE', 'LISTEN', 'UNLISTEN', 'LOAD', 'CLOSE', 'DROP', 'DECLARE']) {
      for (const s of [`${w} x`, `  \n\t${w} x`, `/* a /* nested */ b */${w} x`, `-- c\n${w} x`, `SELECT 1;${w} x`, `SELECT 1; -- c\r${w} x`]) {
        expect(hits(s), s).toBe(true);
      }
    }
    for (const w of ['BEGIN', 'start', 'COMMIT', 'END', 'ROLLBACK', 'ABORT', 'SAVEPOINT', 'RELEASE']) expect(hits(`${w};`), w).toBe(true);
    for (const s of ['SETTINGS x', 'SELECT 1; setx', 'SELECT 1 /* unterminated SET x']) expect(hits(s), s).toBe(false);
  });

  test('flags the words that occur inside statements, and U&"', () => {
    for (const s of [
      'CREATE TEMP TABLE t (a int)',
      'create temporary view v as select 1',
      'SELECT 1 INTO TEMP t',
      'CREATE TABLE pg_temp.t (a int)',
      'CREATE TABLE "PG_TEMP_3".t (a int)',
      'SELECT pg_advisory_lock(1)',
      'SELECT pg_catalog."PG_TRY_ADVISORY_LOCK"(1)',
      "SELECT set_config('a', 'b', false)",
      'EXPLAIN ANALYZE EXECUTE p',
      "UPDATE pg_settings SET setting = '1' WHERE name = 'x'",
      'SELECT U&"\\0061"()',
      'SELECT u&"x"()',
    ]) {
      expect(hits(s), s).toBe(true);
    }
  });

  test('reads only the given range', () => {
    const b = Buffer.from('LISTEN a;SELECT 1 ;LISTEN b');
    expect(prefilterHits(b, 9, 18)).toBe(false);
    expect(prefilterHits(b, 9, b.length)).toBe(true);
    expect(prefilterHits(b, 1, 9)).toBe(false);
  });

  test('pgbench statements are decided without the parser', async () => {
    await loadStatementParser();
    const before = parserRuns();
    for (const s of PGBENCH) expect(effects(s), s).toBeNull();
    for (const s of PGBENCH_TX) expect(effects(s), s).toEqual(only({ txControl: true }));
    expect(parserRuns()).toBe(before);
    expect(effects('BEGIN ISOLATION LEVEL SERIALIZABLE')).toEqual(only({ txControl: true }));
    expect(parserRuns()).toBe(before + 1);
  });
});

describe('statementEffects', () => {
  beforeAll(loadStatementParser);

  test('keywords inside literals, comments, dollar quotes and quoted identifiers have no effect', () => {
    for (const s of [
      "SELECT 'SET a = 1; LISTEN c'",
      "SELECT E'x\\'; DISCARD ALL; --'",
      'SELECT 1 /* ; DISCARD ALL */',
      'SELECT 1 -- ; PREPARE p AS SELECT 1',
      'SELECT $$; DEALLOCATE ALL$$',
      "SELECT $fn$ CREATE TEMP TABLE t (); SELECT pg_advisory_lock(1) $fn$, 'set_config(''a'', ''b'', false)'",
      'SELECT "execute", "temp" FROM "pg_advisory_lock"',
      'SELECT x AS "pg_temp"',
    ]) {
      expect(hits(s), s).toBe(true);
      expect(effects(s), s).toBeNull();
    }
  });

  test('SET and RESET: names as PostgreSQL canonicalises them, values as set_config takes them', () => {
    const cases: [string, StatementEffects['sets']][] = [
      ['SET search_path = a, "B"', [{ name: 'search_path', value: 'a, "B"' }]],
      ['SET search_path TO "select", abort, "$user", \'x y\'', [{ name: 'search_path', value: '"select", abort, "$user", "x y"' }]],
      ["SET TIME ZONE 'UTC'", [{ name: 'timezone', value: 'UTC' }]],
      ['SET TIME ZONE -7', [{ name: 'timezone', value: '-7' }]],
      ['SET TIME ZONE LOCAL', [{ name: 'timezone', value: null }]],
      ['SET SESSION DateStyle = ISO, DMY', [{ name: 'datestyle', value: 'iso, dmy' }]],
      ['set statement_timeout = 0', [{ name: 'statement_timeout', value: '0' }]],
      ['SET extra_float_digits TO 1.5', [{ name: 'extra_float_digits', value: '1.5' }]],
      ['SET "MyApp.User" = \'ünï\'', [{ name: 'myapp.user', value: 'ünï' }]],
      ["SET NAMES 'UTF8'", [{ name: 'client_encoding', value: 'UTF8' }]],
      ["SET SCHEMA 'My Schema'", [{ name: 'search_path', value: '"My Schema"' }]],
      ['SET XML OPTION DOCUMENT', [{ name: 'xmloption', value: 'DOCUMENT' }]],
      ['SET work_mem TO DEFAULT', [{ name: 'work_mem', value: null }]],
      ['RESET search_path', [{ name: 'search_path', value: null }]],
      ['RESET ALL', [{ name: '*', value: null }]],
      ['SET ROLE bob', [{ name: 'role', value: 'bob' }]],
      ['SET ROLE NONE', [{ name: 'role', value: 'none' }]],
      ['RESET ROLE', [{ name: 'role', value: null }]],
      ["SET SESSION AUTHORIZATION 'alice'", [{ name: 'session_authorization', value: 'alice' }]],
      ['SET SESSION AUTHORIZATION DEFAULT', [{ name: 'session_authorization', value: null }]],
      [
        'SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY',
        [
          { name: 'default_transaction_isolation', value: 'serializable' },
          { name: 'default_transaction_read_only', value: '1' },
        ],
      ],
      [
        'SET a.b = 1; RESET a.b; SET a.b = 2',
        [
          { name: 'a.b', value: '1' },
          { name: 'a.b', value: null },
          { name: 'a.b', value: '2' },
        ],
      ],
    ];
    for (const [s, sets] of cases) expect(effects(s), s).toEqual(only({ sets }));
  });

  test('SET LOCAL, SET TRANSACTION, SET CONSTRAINTS, FROM CURRENT and SET clauses of other statements set nothing', () => {
    for (const s of [
      'SET LOCAL search_path = a',
      'SET LOCAL TIME ZONE 7',
      'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE',
      'SET CONSTRAINTS ALL DEFERRED',
      'SET work_mem FROM CURRENT',
      'UPDATE t SET x = 1; UPDATE u SET y = 2',
      'CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = a RETURN 1',
      'ALTER FUNCTION f() SET search_path = a; ALTER FUNCTION f() RESET ALL',
    ]) {
      expect(effects(s), s).toBeNull();
    }
  });

  test('SET TIME ZONE INTERVAL is a setting change without a reproducible value', () => {
    expect(effects("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE")).toEqual(only({ unknownSet: true }));
  });

  test('set_config: a session-level call with constant arguments, evaluated once, is a set; a local one is nothing', () => {
    const cases: [string, StatementEffects['sets']][] = [
      ["SELECT pg_catalog.set_config('search_path', '', false)", [{ name: 'search_path', value: '' }]],
      [
        "select set_config('TimeZone', 'UTC', 'off'), set_config('a.b', NULL, false::boolean)",
        [
          { name: 'timezone', value: 'UTC' },
          { name: 'a.b', value: null },
        ],
      ],
      ["SELECT set_config('a.b', 'c'::text, ' F ')", [{ name: 'a.b', value: 'c' }]],
      ["SELECT set_config('a.b', 'c', NULL)", [{ name: 'a.b', value: 'c' }]],
      ["SELECT U&\"set_\\0063onfig\"('a.b', 'c', false)", [{ name: 'a.b', value: 'c' }]],
    ];
    for (const [s, sets] of cases) expect(effects(s), s).toEqual(only({ sets }));
    for (const s of ["SELECT set_config('a.b', 'c', true)", "SELECT set_config('a.b', $1, 't') FROM t WHERE x"]) expect(effects(s), s).toBeNull();
  });

  test('set_config that may change a setting in a way no value says is unknownSet', () => {
    for (const s of [
      "SELECT set_config('a.b', $1, false)",
      "SELECT set_config($1, 'c', false)",
      "SELECT set_config('a.b', 'c', $1)",
      "SELECT set_config('a.b', 'c' || 'd', false)",
      "SELECT set_config(setting_name => 'a.b', new_value => 'c', is_local => false)",
      "SELECT set_config('a.b', 'c', false) FROM t",
      "SELECT set_config('a.b', 'c', false) WHERE $1",
      "SELECT set_config('a.b', 'c', false) LIMIT 0",
      "SELECT CASE WHEN $1 THEN set_config('a.b', 'c', false) END",
      "SELECT 1 UNION SELECT set_config('a.b', 'c', false)::int",
      "SELECT app.set_config('a.b', 'c', false)",
      "EXPLAIN ANALYZE SELECT set_config('a.b', 'c', false)",
      "UPDATE pg_catalog.pg_settings SET setting = 'on' WHERE name = 'enable_seqscan'",
    ]) {
      expect(effects(s), s).toEqual(only({ unknownSet: true }));
    }
  });

  test('PREPARE: the name, the inner statement and the parameter types exactly as written', () => {
    expect(effects('PREPARE p (int, numeric(10, 2), text[], "MyType") AS SELECT $1, $2, $3, $4')).toEqual(
      only({ prepares: [{ name: 'p', text: 'SELECT $1, $2, $3, $4', paramTypes: ['int', 'numeric(10, 2)', 'text[]', '"MyType"'] }] }),
    );
    expect(effects('PREPARE "Q" ( int /* a */ , double precision ) AS /* lead */ SELECT $1 -- tail\n;')).toEqual(
      only({ prepares: [{ name: 'Q', text: 'SELECT $1', paramTypes: ['int', 'double precision'] }] }),
    );
    expect(effects('PREPARE ins AS INSERT INTO t VALUES (1) RETURNING *')).toEqual(
      only({ prepares: [{ name: 'ins', text: 'INSERT INTO t VALUES (1) RETURNING *', paramTypes: [] }] }),
    );
  });

  test('PREPARE after multibyte text: offsets are UTF-8 bytes', () => {
    expect(effects("SELECT 'ünïcödé ☃ 𝄞'; PREPARE größe(text) AS SELECT $1 || '→'; SELECT 'ü'")).toEqual(
      only({ prepares: [{ name: 'größe', text: "SELECT $1 || '→'", paramTypes: ['text'] }] }),
    );
    // A Query message: the range starts after the header and ends with the terminator.
    const msg = Buffer.concat([Buffer.from('Q\0\0\0\0'), Buffer.from("/* é */ PREPARE p AS SELECT 'ü'"), Buffer.from([0])]);
    expect(statementEffects(msg, 5, msg.length)).toEqual(only({ prepares: [{ name: 'p', text: "SELECT 'ü'", paramTypes: [] }] }));
    // Text before the range is not read, multibyte or not.
    const b = Buffer.from("é'; PREPARE q AS SELECT 1");
    expect(statementEffects(b, 4, b.length)).toEqual(only({ prepares: [{ name: 'q', text: 'SELECT 1', paramTypes: [] }] }));
  });

  test('EXECUTE (also under EXPLAIN and CREATE TABLE AS) and DEALLOCATE', () => {
    expect(effects('EXECUTE p(1, \'a\'); EXPLAIN ANALYZE EXECUTE q; CREATE TABLE t AS EXECUTE "R"')).toEqual(only({ executes: ['p', 'q', 'R'] }));
    expect(effects('DEALLOCATE p; DEALLOCATE PREPARE "Q"; DEALLOCATE ALL')).toEqual(only({ deallocates: ['p', 'Q', '*'] }));
    expect(effects("PREPARE TRANSACTION 'x'")).toEqual(only({ txControl: true }));
  });

  test('executeAlone: the text is one statement whose only effect is one EXECUTE (the pooler may run it again)', () => {
    for (const sql of ['EXECUTE p(1)', ' execute "P" ;', 'EXPLAIN (ANALYZE) EXECUTE p', 'CREATE TABLE t AS EXECUTE p(2)', '/* c */ EXECUTE p -- d']) {
      expect(effects(sql)?.executeAlone, sql).toBe(true);
      expect(effects(sql)?.executes).toHaveLength(1);
    }
    for (const sql of [
      'SELECT 1; EXECUTE p',
      'EXECUTE p; SELECT 1',
      'EXECUTE p; EXECUTE q',
      'CREATE TEMP TABLE t AS EXECUTE p',
      'PREPARE p AS SELECT 1',
      "SELECT set_config('a.b', '1', false)",
    ]) {
      expect(effects(sql)?.executeAlone, sql).toBeUndefined();
    }
  });

  test('DISCARD', () => {
    expect(effects('DISCARD ALL')).toEqual(only({ discard: 'all' }));
    expect(effects('DISCARD PLANS')).toEqual(only({ discard: 'plans' }));
    expect(effects('discard temporary')).toEqual(only({ discard: 'temp' }));
    expect(effects('DISCARD SEQUENCES')).toEqual(only({ discard: 'sequences' }));
    expect(effects('DISCARD TEMP; DISCARD PLANS')).toEqual(only({ discard: 'temp' }));
    expect(effects('DISCARD PLANS; DISCARD ALL; DISCARD TEMP')).toEqual(only({ discard: 'all' }));
  });

  test('advisory locks: session-level ones pin, transaction-level ones do not, unlocks may unpin', () => {
    for (const s of [
      'SELECT pg_advisory_lock(1)',
      'SELECT pg_advisory_lock_shared(1, 2)',
      'SELECT pg_try_advisory_lock(1)',
      'select PG_TRY_ADVISORY_LOCK_SHARED(1)',
      'SELECT pg_catalog."pg_advisory_lock"(42)',
      'SELECT U&"pg_advisory_lo\\0063k"(1)',
      'SELECT id FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1',
      'SELECT * FROM pg_advisory_lock(7)',
    ]) {
      expect(effects(s), s).toEqual(only({ pins: ['advisory'] }));
    }
    for (const s of ['SELECT pg_advisory_xact_lock(1)', 'SELECT pg_try_advisory_xact_lock_shared(1)', "SELECT 'pg_advisory_lock(1)'"]) {
      expect(effects(s), s).toBeNull();
    }
    for (const s of ['SELECT pg_advisory_unlock(1)', 'SELECT pg_advisory_unlock_shared(1)', 'SELECT pg_advisory_unlock_all()']) {
      expect(effects(s), s).toEqual(only({ unpins: ['advisory_unlock'] }));
    }
  });

  test('temporary objects pin unless they are dropped at commit', () => {
    for (const s of [
      'CREATE TEMP TABLE t (a int)',
      'CREATE TEMPORARY VIEW v AS SELECT 1',
      'CREATE LOCAL TEMPORARY TABLE t (a int)',
      'CREATE TEMP SEQUENCE s',
      'CREATE TEMP TABLE t AS SELECT 1',
      'SELECT 1 AS a INTO TEMP t',
      'SELECT 1 AS a INTO TEMPORARY TABLE t',
      'CREATE TABLE pg_temp.t (a int)',
      'CREATE VIEW pg_temp.v AS SELECT 1',
      'CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql RETURN 1',
      'CREATE TYPE pg_temp.pair AS (a int, b int)',
      'EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1',
    ]) {
      expect(effects(s), s).toEqual(only({ pins: ['temp'] }));
    }
    for (const s of [
      'CREATE TEMP TABLE t (a int) ON COMMIT DROP',
      'CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1',
      'CREATE TABLE template (a int)',
    ]) {
      expect(effects(s), s).toBeNull();
    }
  });

  test('held cursors, LISTEN, LOAD pin; UNLISTEN, CLOSE, DROP may unpin', () => {
    expect(effects('DECLARE c CURSOR WITH HOLD FOR SELECT 1')).toEqual(only({ pins: ['hold'] }));
    expect(effects('DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1')).toEqual(only({ pins: ['hold'] }));
    expect(effects('DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1; DECLARE d CURSOR FOR SELECT 2')).toBeNull();
    expect(effects("LISTEN ch; LOAD 'auto_explain'; LISTEN other")).toEqual(only({ pins: ['listen', 'load'] }));
    expect(effects('UNLISTEN *; CLOSE ALL; CLOSE c; DROP TABLE t; DROP OWNED BY bob')).toEqual(only({ unpins: ['unlisten', 'close', 'drop'] }));
  });

  test('transaction control', () => {
    for (const s of [
      'BEGIN ISOLATION LEVEL REPEATABLE READ',
      'START TRANSACTION READ ONLY',
      'COMMIT AND CHAIN',
      'SAVEPOINT s',
      'ROLLBACK TO SAVEPOINT s',
      'RELEASE s',
      "COMMIT PREPARED 'x'",
      "ROLLBACK PREPARED 'x'",
      'ABORT; BEGIN',
    ]) {
      expect(effects(s), s).toEqual(only({ txControl: true }));
    }
  });

  test('expressions stored to run later are not looked into', () => {
    for (const s of [
      'CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC SELECT pg_advisory_lock(1); END',
      "CREATE VIEW v AS SELECT set_config('a.b', 'c', false)",
      'CREATE RULE r AS ON INSERT TO t DO ALSO SELECT pg_advisory_lock(1)',
      'CREATE POLICY p ON t USING (pg_try_advisory_lock(id))',
    ]) {
      expect(effects(s), s).toBeNull();
    }
    expect(effects('PREPARE p AS SELECT pg_advisory_lock(1)')).toEqual(
      only({ prepares: [{ name: 'p', text: 'SELECT pg_advisory_lock(1)', paramTypes: [] }] }),
    );
  });

  test('a multi-statement string is classified as a whole', () => {
    expect(
      effects(
        'BEGIN; SET a.b = 1; SELECT pg_advisory_lock(1); LISTEN ch; PREPARE p(int) AS SELECT $1; EXECUTE p(1); DEALLOCATE p; ' +
          "DISCARD TEMP; CREATE TEMP TABLE t (); SELECT set_config('a.c', $1, false); UNLISTEN ch; COMMIT",
      ),
    ).toEqual({
      sets: [{ name: 'a.b', value: '1' }],
      unknownSet: true,
      discard: 'temp',
      prepares: [{ name: 'p', text: 'SELECT $1', paramTypes: ['int'] }],
      executes: ['p'],
      deallocates: ['p'],
      pins: ['advisory', 'listen', 'temp'],
      unpins: ['unlisten'],
      txControl: true,
    });
  });

  test('unparseable text is null (the server reports the error)', () => {
    for (const s of UNPARSEABLE) expect(effects(s), s).toBeNull();
  });

  test('text the parser cannot take faithfully gets the safe answer', () => {
    const big = `SELECT '${'x'.repeat(MAX_EFFECTS_PARSE_BYTES)}'; LISTEN ch`;
    expect(effects(big)).toEqual(UNEXAMINED);
    const latin1 = Buffer.concat([Buffer.from("SET application_name = 'caf"), Buffer.from([0xe9]), Buffer.from("'")]);
    expect(statementEffects(latin1)).toEqual(UNEXAMINED);
    // With standard_conforming_strings off the backslash escapes the quote: one SET, no LISTEN (see the server test below).
    const s = "SET application_name = 'a\\'; LISTEN ch; --'";
    expect(effects(s)).toEqual(only({ sets: [{ name: 'application_name', value: 'a\\' }], pins: ['listen'] }));
    expect(effects(s, { standardConformingStrings: false })).toEqual(UNEXAMINED);
    expect(effects("SET application_name = E'a\\''; LISTEN ch", { standardConformingStrings: false })).toEqual(
      only({ sets: [{ name: 'application_name', value: "a'" }], pins: ['listen'] }),
    );
  });

  test('a range outside the buffer is refused; text stops at a NUL', () => {
    const b = Buffer.from('LISTEN ch');
    expect(() => statementEffects(b, 3, 2)).toThrow(RangeError);
    expect(() => statementEffects(b, 0, 10)).toThrow(RangeError);
    expect(() => statementEffects(b, -1, 2)).toThrow(RangeError);
    expect(() => statementEffects(b, 0.5, 2)).toThrow(RangeError);
    expect(statementEffects(Buffer.from('SELECT 1\0LISTEN ch'))).toBeNull();
    expect(statementEffects(Buffer.from('\0LISTEN ch'))).toBeNull();
  });
});

describe('against the server', () => {
  const db = inject('db');
  const open: pg.Client[] = [];
  async function connect(): Promise<pg.Client> {
    const c = new pg.Client(db.adminUrl);
    open.push(c);
    await c.connect();
    return c;
  }
  const setting = async (c: pg.Client, name: string) => (await c.query('SELECT current_setting($1) AS v', [name])).rows[0].v as string;
  let a: pg.Client;
  let b: pg.Client;

  beforeAll(async () => {
    await loadStatementParser();
    a = await connect();
    b = await connect();
  });
  afterAll(async () => {
    await Promise.all(open.map((c) => c.end()));
  });

  test('each reported set, replayed with set_config on another session, gives the same setting', async () => {
    const cases: [before: string, sql: string][] = [
      ['', 'SET search_path = a, "B", "select", abort, "$user", \'x y\''],
      ['', "SET search_path TO 'a, b'"],
      ['', "SET SCHEMA 'My Schema'"],
      ['', "SET TIME ZONE 'America/New_York'"],
      ['', 'SET TIME ZONE -7'],
      ['', 'SET TIME ZONE 5.5'],
      ["SET TIME ZONE 'Asia/Tokyo'", 'SET TIME ZONE LOCAL'],
      ['', 'SET DateStyle = ISO, DMY'],
      ['', "SET application_name = 'it''s é'"],
      ["SET statement_timeout = '5s'", 'SET statement_timeout = 0'],
      ['', 'SET extra_float_digits = -3'],
      ['', 'SET XML OPTION DOCUMENT'],
      ['', "SET NAMES 'UTF8'"],
      ['', 'SET enable_seqscan = off'],
      ['', 'SET temp_tablespaces = pg_default'],
      ['', 'SET "MyApp.Mixed" = \'v\''],
      ['', 'SET ROLE pg_monitor'],
      ["SET work_mem = '1MB'", 'SET work_mem TO DEFAULT'],
      ["SET work_mem = '1MB'", 'RESET work_mem'],
      ['', 'SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE'],
      ['', "SELECT pg_catalog.set_config('search_path', '', false)"],
      ['', "SELECT set_config('x.y', 'z', ' Of')"],
    ];
    for (const [before, sql] of cases) {
      const e = effects(sql);
      expect(e?.sets.length, sql).toBeGreaterThan(0);
      expect(e?.unknownSet, sql).toBe(false);
      for (const c of [a, b]) await c.query('DISCARD ALL');
      if (before) for (const c of [a, b]) await c.query(before);
      await a.query(sql);
      for (const { name, value } of e!.sets) await b.query('SELECT set_config($1, $2, false)', [name, value]);
      for (const { name } of e!.sets) expect(await setting(b, name), `${sql}: ${name}`).toBe(await setting(a, name));
    }
  });

  test("set_config's is_local NULL lasts for the session, true only for the transaction, as classified", async () => {
    await a.query('DISCARD ALL');
    for (const [name, isLocal, kept] of [
      ['x.kept', 'NULL', true],
      ['x.gone', 'true', false],
    ] as const) {
      const sql = `SELECT set_config('${name}', 'yes', ${isLocal})`;
      await a.query(`BEGIN; ${sql}; COMMIT`);
      expect((await a.query("SELECT coalesce(current_setting($1, true), '') AS v", [name])).rows[0].v, sql).toBe(kept ? 'yes' : '');
      expect(effects(sql), sql).toEqual(kept ? only({ sets: [{ name, value: 'yes' }] }) : null);
    }
  });

  test('each reported PREPARE, replayed on another session, prepares the same statement', async () => {
    const cases: [sql: string, execute: string][] = [
      ['PREPARE q1 (int, numeric(10, 2), text[], "varchar") AS SELECT $1 + 1, $2 * 2, $3[1], $4 -- tail', "(1, 2.5, '{a,b}', 'v')"],
      ["SELECT 'ünïcödé ☃'; PREPARE größe(text) AS SELECT $1 || '→' /* done */", "('x')"],
      ['PREPARE "Q 3" AS VALUES (1), (2)', ''],
    ];
    for (const [sql, execute] of cases) {
      for (const c of [a, b]) await c.query('DISCARD ALL');
      const [p] = effects(sql)!.prepares;
      await a.query(sql);
      const name = `"${p.name.replaceAll('"', '""')}"`;
      await b.query(`PREPARE ${name}${p.paramTypes.length ? `(${p.paramTypes.join(', ')})` : ''} AS ${p.text}`);
      const described = 'SELECT name, parameter_types::text FROM pg_prepared_statements';
      expect((await b.query(described)).rows, sql).toEqual((await a.query(described)).rows);
      const run = `EXECUTE ${name}${execute}`;
      expect((await b.query(run)).rows, sql).toEqual((await a.query(run)).rows);
    }
  });

  test('what is classified as unparseable is a syntax error for the server', async () => {
    for (const s of UNPARSEABLE) await expect(a.query(s), s).rejects.toMatchObject({ code: '42601' });
  });

  test('with standard_conforming_strings off the server lexes differently from the parser: hence the safe answer', async () => {
    const c = await connect();
    await c.query('SET standard_conforming_strings = off; SET escape_string_warning = off');
    await c.query("SET application_name = 'a\\'; LISTEN ch; --'");
    expect((await c.query('SELECT current_setting($1) AS v', ['application_name'])).rows[0].v).toBe("a'; LISTEN ch; --");
    expect((await c.query('SELECT count(*)::int AS n FROM pg_listening_channels()')).rows[0].n).toBe(0);
  });
});
