// The in-band callback transport (issue 13): with dblink dropped and the daemon endpoint closed, calls the
// proxy cannot see (the seed's PL/pgSQL functions and a trigger) ask the proxy through the client's own
// connection and get the bytes the rewrite path gives. A notice raised by the session itself with the same
// text computes and stores nothing; without a proxy in between, a miss fails with a clear error.
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import pg from 'pg';
import { cancelThroughProxy, inbandStack, type Stack } from '../api/helpers.js';
import { eventually } from '../proxy/helpers.js';
import { standingKey } from '../../sql/standing-wakes.js';
import { countTaken as countTakenBy, createRole, DETERMINISTIC_EXPAND, dropRole, EXPAND, freshCache, pgError } from './helpers.js';

let s: Stack;
let direct: pg.Client;

async function cacheRows(): Promise<number> {
  return (await direct.query('SELECT count(*)::int AS n FROM steadytext_cache')).rows[0].n as number;
}

/** The answer the rewrite path gives (the proxy sees the call with constant arguments), then forgotten. */
async function rewritten(sql: string, params: unknown[] = []): Promise<string> {
  const c = await s.connect();
  try {
    return (await c.query(sql, params)).rows[0].v as string;
  } finally {
    await c.end();
  }
}

const fresh = () => freshCache(s, direct);

/** A `notes` table of `n` rows whose bodies name `label`, so that each misses. */
async function notes(label: string, n = 24): Promise<void> {
  await direct.query(`
    CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text NOT NULL, emb vector(1024));
    TRUNCATE notes;`);
  await direct.query(`INSERT INTO notes (id, body) SELECT i, $1 || ' ' || i FROM generate_series(1, $2::int) i`, [label, n]);
}

/** Counts the in-band requests the proxy takes (from any session) until the test ends. */
const countTaken = () => countTakenBy(s.interceptor);

/** A client through the proxy that records the notices it receives. */
async function client(url = s.url()): Promise<{ c: pg.Client; notices: { message?: string }[] }> {
  const c = await s.connect(url);
  const notices: { message?: string }[] = [];
  c.on('notice', (n) => notices.push(n));
  // A test that fails midway leaves no block open: its locks would hold the next test's TRUNCATE forever.
  onTestFinished(() => void c.end().catch(() => {}));
  return { c, notices };
}

beforeAll(async () => {
  // What the issue asks for: no dblink, no daemon endpoint. callback_transport stays 'auto'.
  ({ s, direct } = await inbandStack('st_inband'));
  await direct.query(DETERMINISTIC_EXPAND);
  await direct.query(`
    CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL, emb vector(1024));
    CREATE FUNCTION docs_embed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.emb := steadytext_embed(NEW.body);
        RETURN NEW;
    END $$;
    CREATE TRIGGER docs_embed BEFORE INSERT ON docs FOR EACH ROW EXECUTE FUNCTION docs_embed();

    CREATE FUNCTION wrap_embed(t text) RETURNS vector LANGUAGE plpgsql AS $$
    BEGIN RETURN steadytext_embed(t); END $$;

    CREATE FUNCTION wrap_model_info() RETURNS int LANGUAGE plpgsql AS $$
    BEGIN RETURN (SELECT count(*) FROM steadytext_model_info()); END $$;`);
}, 180_000);

afterAll(async () => {
  await direct?.end();
  await s?.stop();
});

describe('in-band callback without dblink or daemon endpoint', () => {
  test('a PL/pgSQL call gives the rewrite path’s bytes, in autocommit, and the request never reaches the client', async () => {
    await fresh();
    const { c, notices } = await client();
    const got = (await c.query(`SELECT deterministic_expand('gravity') AS v`)).rows[0].v as string;
    await c.end();
    expect(notices.filter((n) => n.message?.includes('steadytext'))).toEqual([]);
    await s.databases.get(s.database).flush(); // the answer's cache row is written after the answer
    expect(await cacheRows()).toBeGreaterThan(0);
    await fresh();
    const want = await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND('gravity')]);
    expect(got).toBe(want);
    expect(got.length).toBeGreaterThan(0);
  });

  test('inside a transaction block and through the extended protocol', async () => {
    await fresh();
    const { c } = await client();
    await c.query('BEGIN');
    const inBlock = (await c.query('SELECT deterministic_expand($1) AS v', ['tides'])).rows[0].v as string;
    const again = (await c.query(`SELECT deterministic_expand('tides') AS v`)).rows[0].v as string;
    await c.query('COMMIT');
    await c.end();
    await fresh();
    const want = await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND('tides')]);
    expect(inBlock).toBe(want);
    expect(again).toBe(want);
  });

  test('a trigger embeds each inserted row', async () => {
    await fresh();
    const { c } = await client();
    const bodies = Array.from({ length: 12 }, (_, i) => `document number ${i}`);
    await c.query('INSERT INTO docs (id, body) SELECT i, b FROM unnest($1::text[]) WITH ORDINALITY AS t(b, i)', [bodies]);
    const rows = (await c.query('SELECT id, body, emb::text AS emb FROM docs ORDER BY id')).rows as { body: string; emb: string }[];
    await c.end();
    expect(rows).toHaveLength(bodies.length);
    await fresh();
    for (const r of [rows[0], rows[rows.length - 1]]) {
      expect(r.emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [r.body]));
    }
  });

  test.each(['REPEATABLE READ', 'SERIALIZABLE'])('%s: the answer comes through a large object, no retry needed', async (level) => {
    await fresh();
    const { c } = await client();
    await c.query(`BEGIN ISOLATION LEVEL ${level}`);
    await c.query('SELECT count(*) FROM docs'); // the snapshot is taken before the answer exists
    const got = (await c.query('SELECT deterministic_expand($1) AS v', [`comets ${level}`])).rows[0].v as string;
    await c.query('COMMIT');
    await c.end();
    await fresh();
    expect(got).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND(`comets ${level}`)]));
    // The reader removed its large object.
    expect((await direct.query('SELECT count(*)::int AS n FROM pg_largeobject_metadata')).rows[0].n).toBe(0);
  });

  // Before a session asks in-band, only blocks that may be read-only are fenced (sql/read-only-blocks.ts): there a
  // miss stops the statement at once, and without the fence the whole block would fail with 40001.
  test.each([
    ['session', 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY', null, 'simple'],
    ['transaction', 'START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE', null, 'simple'],
    ['session', 'BEGIN', 'SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY', 'extended'],
    ['transaction', 'BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY', null, 'extended'],
    // Made read-only by a statement of its own after the block began.
    ['session', ['BEGIN ISOLATION LEVEL REPEATABLE READ', 'SET TRANSACTION READ ONLY'], null, 'simple'],
    ['transaction', ['BEGIN ISOLATION LEVEL SERIALIZABLE', 'SELECT 1', 'SET TRANSACTION READ ONLY'], null, 'extended'],
  ] as const)('a session’s first read-only block (%s mode, %s, %s, %s protocol) is fenced: its miss is run again, no 40001', async (mode, begin, session, protocol) => {
    await fresh();
    const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
    const { c, notices } = await client(url);
    if (session !== null) await c.query(session);
    const topic = `first read-only block ${mode} ${typeof begin === 'string' ? begin : begin.join('; ')} ${protocol}`;
    const taken = countTaken();
    for (const q of typeof begin === 'string' ? [begin] : begin) await c.query(q);
    const sql = `SELECT deterministic_expand(${protocol === 'simple' ? `'${topic}'` : '$1::text'}) AS v`;
    const got = (await c.query(sql, protocol === 'simple' ? [] : [topic])).rows[0].v as string;
    // Still in the block, still read-only: the rerun went back to the fence, not out of the transaction.
    expect((await c.query('SHOW transaction_read_only')).rows[0].transaction_read_only).toBe('on');
    await c.query('COMMIT');
    await c.end();
    expect(notices).toEqual([]);
    expect(taken.n).toBe(1);
    await fresh();
    expect(got).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND(topic)]));
  });

  test('a read-only REPEATABLE READ statement outside a block is stopped at its first miss and run again: no 40001', async () => {
    await fresh();
    const { c, notices } = await client();
    await c.query(`SET default_transaction_isolation = 'repeatable read'`);
    await c.query('SET default_transaction_read_only = on');
    const taken = countTaken();
    const got = (await c.query(`SELECT deterministic_expand('read only, autocommit') AS v`)).rows[0].v as string;
    await c.end();
    expect(notices).toEqual([]);
    expect(taken.n).toBe(1);
    await fresh();
    expect(got).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND('read only, autocommit')]));
  });

  test.each(['REPEATABLE READ READ ONLY', 'REPEATABLE READ', 'SERIALIZABLE READ ONLY'])(
    'in a %s block of a session that asked in-band, a statement missing row after row gets its answers in the session and runs again',
    async (level) => {
      await fresh();
      await notes(`snapshot ${level}`, 8);
      const { c, notices } = await client();
      await c.query(`SELECT deterministic_expand('before the block, ${level}') AS v`);
      const taken = countTaken();
      await c.query(`BEGIN ISOLATION LEVEL ${level}`);
      const r = await c.query('SELECT id, wrap_embed(body)::text AS emb FROM notes ORDER BY 2');
      // A single call too, and the same call again: found in the session.
      const one = (await c.query(`SELECT deterministic_expand('in the block, ${level}') AS v`)).rows[0].v as string;
      await c.query('COMMIT');
      await c.end();
      expect(notices).toEqual([]);
      expect(r.rows).toHaveLength(8);
      expect(new Set(r.rows.map((x: { id: number }) => x.id)).size).toBe(8);
      // Read-only: the first miss stops the statement. Read-write: the first is answered through a large object, the second stops it.
      expect(taken.n).toBe(level.endsWith('READ ONLY') ? 2 : 3);
      await fresh();
      const third = r.rows.find((x: { id: number }) => x.id === 3) as { emb: string };
      expect(third.emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [`snapshot ${level} 3`]));
      expect(one).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND(`in the block, ${level}`)]));
    },
  );

  test.each(['session', 'transaction'] as const)(
    'a block’s first statement answered miss by miss, then a fenced one stopped and gathered (%s mode): the cleanup never waits on the rows the block took',
    async (mode) => {
      await fresh();
      await notes(`took before the fence ${mode}`, 12);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const { c, notices } = await client(url);
      const taken = countTaken();
      await c.query('BEGIN');
      // The session's first in-band requests: unfenced, each answered miss by miss (as cache rows).
      expect((await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id <= $1', [6])).rowCount).toBe(6);
      expect(taken.n).toBe(6);
      // A call the proxy cannot see whose answer is no cache row: taken from the mailbox by this open block.
      expect((await c.query('SELECT wrap_model_info() AS n')).rows[0].n).toBeGreaterThan(0);
      expect(taken.n).toBe(7);
      // Fenced now: stopped at its second miss, gathered, run again. The stopped attempt's leftovers are cleared
      // on the service connection, which used to wait on the row above, held by this block: a deadlock.
      expect((await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id > $1', [6])).rowCount).toBe(6);
      expect(taken.n).toBe(9);
      await c.query('COMMIT');
      await c.end();
      expect(notices).toEqual([]);
      const rows = (await direct.query('SELECT body, emb::text AS emb FROM notes ORDER BY id')).rows as { body: string; emb: string | null }[];
      expect(rows.every((row) => row.emb !== null)).toBe(true);
      await fresh();
      expect(rows[9].emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [rows[9].body]));
    },
  );

  test('a management call twice in one block: the second answer is written in the block, not waiting on the row the first took', async () => {
    const { c } = await client();
    await c.query('BEGIN');
    await c.query('CREATE TEMP TABLE wrote_something (x int)'); // the block has a transaction id: it can hold row locks
    expect((await c.query('SELECT steadytext_daemon_stop() AS v')).rows[0].v).toBe(true);
    expect((await c.query('SELECT steadytext_daemon_stop() AS v')).rows[0].v).toBe(true);
    expect((await c.query('SELECT steadytext_daemon_start() AS v')).rows[0].v).toBe(true);
    expect((await c.query('SELECT steadytext_daemon_start() AS v')).rows[0].v).toBe(true);
    await c.query('COMMIT');
    expect((await c.query('SELECT running FROM steadytext_daemon_status()')).rows[0].running).toBe(true);
    await c.end();
  });

  test('a role that may not write the answers, in a block that has written: its visible calls are answered and the block goes on', async () => {
    await fresh();
    const role = await createRole('st_inband_plain');
    try {
      await direct.query(`GRANT CREATE ON SCHEMA public TO ${role.user}`);
      const { c, notices } = await client(s.url(role.user, role.password));
      await c.query('BEGIN');
      await c.query('CREATE TABLE plain_scratch (x int)'); // the block has a transaction id now
      // Its answers cannot go through its own connection (it may not write steadytext_cache): the service connection's.
      const one = (await c.query(`SELECT steadytext_generate('plain role, in a block', 8) AS v`)).rows[0].v as string;
      const two = (await c.query({ text: `SELECT steadytext_generate('plain role, in a block, extended', 8) AS v`, queryMode: 'extended' } as pg.QueryConfig)).rows[0].v as string;
      await c.query('INSERT INTO plain_scratch VALUES (1)');
      await c.query('COMMIT');
      await c.end();
      expect(notices).toEqual([]);
      await fresh();
      expect(one).toBe(await rewritten(`SELECT steadytext_generate('plain role, in a block', 8) AS v`));
      expect(two).toBe(await rewritten(`SELECT steadytext_generate('plain role, in a block, extended', 8) AS v`));
    } finally {
      await direct.query('DROP TABLE IF EXISTS plain_scratch');
      await direct.query(`REVOKE CREATE ON SCHEMA public FROM ${role.user}`);
      await dropRole(role.user);
    }
  });

  test.each(['session', 'transaction'] as const)(
    'in a REPEATABLE READ READ ONLY block, a parameterized statement with visible calls on columns (extended protocol, %s mode) is fenced, gathered and run again',
    async (mode) => {
      await fresh();
      await notes(`visible in a snapshot ${mode}`, 8);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const { c, notices } = await client(url);
      await c.query(`SELECT deterministic_expand('before the snapshot block, ${mode}') AS v`);
      const taken = countTaken();
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      // The interceptor sees the calls (the Parse and the Bind go through hooks, the Bind's asking the session
      // whether the role may call them) but cannot serve them ahead of an older snapshot.
      const r = await c.query(`SELECT id, steadytext_embed(body)::text AS emb, steadytext_embed('one constant') IS NOT NULL AS k FROM notes WHERE id <= $1 ORDER BY id`, [8]);
      await c.query('COMMIT');
      await c.end();
      expect(notices).toEqual([]);
      expect(r.rows.map((x: { id: number }) => x.id)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(r.rows.every((x: { k: boolean }) => x.k)).toBe(true);
      // The first miss stops the statement (read-only); the rest are gathered with it in one round.
      expect(taken.n).toBe(1);
      await fresh();
      expect((r.rows[4] as { emb: string }).emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [`visible in a snapshot ${mode} 5`]));
    },
  );

  test('a 100,000-row SELECT whose last row calls through a PL/pgSQL wrapper streams, and the last row is right', async () => {
    await fresh();
    const { c } = await client();
    const rows = (await c.query(`SELECT i, CASE WHEN i = 100000 THEN deterministic_expand('the last row') END AS v FROM generate_series(1, 100000) AS i`)).rows as { i: number; v: string | null }[];
    await c.end();
    expect(rows).toHaveLength(100000);
    expect(rows.slice(0, -1).every((r) => r.v === null)).toBe(true);
    await fresh();
    expect(rows[99999].v).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND('the last row')]));
  });

  test('a waiting call blocks on the proxy’s advisory lock instead of polling, and wakes once the answer is committed', async () => {
    await fresh();
    const db = s.databases.get(s.database);
    // Instrumentation only: the proxy hands the answer over (and lets go of the lock) once the test saw the caller wait.
    await rewritten(`SELECT steadytext_generate('warm the model up', max_tokens := 4) AS v`);
    let seen!: () => void;
    const caught = new Promise<void>((r) => (seen = r));
    const handOver = db.commitThenWake.bind(db);
    const keys: number[] = [];
    db.commitThenWake = async (holder, key, sql) => {
      keys.push(key);
      await caught;
      return handOver(holder, key, sql);
    };
    try {
      const { c } = await client();
      const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
      await c.query("SET track_functions = 'all'");
      await c.query('BEGIN');
      const call = c.query(`SELECT deterministic_expand('lighthouses') AS v`);
      let waiting: { objid: string; holder: number }[] = [];
      for (let i = 0; i < 1000 && waiting.length === 0; i++) {
        waiting = (await direct.query(`
          SELECT w.objid::text AS objid, h.pid AS holder FROM pg_locks w
            JOIN pg_locks h ON h.locktype = 'advisory' AND h.classid = w.classid AND h.objid = w.objid AND h.granted
           WHERE w.locktype = 'advisory' AND w.classid = 1398031704 AND w.pid = $1 AND NOT w.granted`, [pid])).rows;
        if (waiting.length === 0) await new Promise((r) => setTimeout(r, 20));
      }
      expect(waiting).toHaveLength(1);
      const listener = (await direct.query(`SELECT pid FROM pg_stat_activity WHERE application_name = 'pg-steadytext config listener' AND datname = current_database()`)).rows;
      expect(listener.map((r) => r.pid)).toContain(waiting[0].holder);
      await new Promise((r) => setTimeout(r, 300));
      seen();
      const got = (await call).rows[0].v as string;
      const takes = (await c.query(`SELECT pg_stat_get_xact_function_calls('_steadytext_mailbox_take(text)'::regprocedure) AS n`)).rows[0].n as number;
      await c.query('COMMIT');
      await c.end();
      // Held a further 300 ms after the wait was seen: polling every 4 ms would have looked 75 times more.
      expect(Number(takes)).toBeLessThan(20);
      expect(keys.map((k) => (k >>> 0).toString())).toContain(waiting[0].objid);
      await fresh();
      expect(got).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND('lighthouses')]));
    } finally {
      db.commitThenWake = handOver;
    }
  });

  test('once a backend asked, its next waiting calls block on a standing lock from the start; a new nonce, a lost listener, an ended backend', async () => {
    await fresh();
    const db = s.databases.get(s.database);
    await rewritten(`SELECT steadytext_generate('warm the model up', max_tokens := 4) AS v`);
    // Instrumentation only: which requests had a lock taken for them as they were accepted.
    const taken: number[] = [];
    const holdWake = db.holdWake.bind(db);
    db.holdWake = (key) => {
      taken.push(key);
      return holdWake(key);
    };
    onTestFinished(() => {
      db.holdWake = holdWake;
    });
    const listenerPid = async () => (await direct.query(`SELECT pid FROM pg_stat_activity WHERE application_name = 'pg-steadytext config listener' AND datname = current_database()`)).rows[0]?.pid as number | undefined;
    const standingHeld = async () => (await direct.query(`SELECT l.objid::text AS objid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.classid = 1398031705 AND l.granted AND l.mode = 'ExclusiveLock' AND a.application_name = 'pg-steadytext config listener'`)).rows.map((r) => r.objid as string);
    // A bound, not a timing: under the whole suite's load the listener's round trips queue behind other tests'.
    // Not met, it says whose standing locks there were.
    const until = (what: () => Promise<boolean>) =>
      eventually(what, 20_000, 'a standing lock state').catch(async (err: Error) => {
        const locks = (await direct.query(`SELECT l.pid, l.objid::text AS objid, l.granted, a.application_name AS app FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.classid = 1398031705`)).rows;
        throw new Error(`${err.message}: ${JSON.stringify({ locks, listener: await listenerPid() })}`);
      });
    const expected = async (t: string) => { await fresh(); return rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND(t)]); };

    const { c } = await client();
    const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
    const before = new Set(await standingHeld());
    const first = (await c.query(`SELECT deterministic_expand('standing one') AS v`)).rows[0].v as string;
    expect(taken).toHaveLength(1); // its first request: a lock taken for it
    await until(async () => (await standingHeld()).some((k) => !before.has(k)));
    const key = (await standingHeld()).find((k) => !before.has(k))!;

    // The second call waits on that lock while the answer is computed (held back here until the wait is seen).
    const standing = db.standing!;
    const commit = standing.commitThenWake.bind(standing);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    standing.commitThenWake = async (p, w) => {
      await gate;
      return commit(p, w);
    };
    onTestFinished(() => {
      standing.commitThenWake = commit;
    });
    const second = c.query(`SELECT deterministic_expand('standing two') AS v`);
    await until(async () => (await direct.query(`SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 1398031705 AND objid::text = $1 AND pid = $2 AND NOT granted`, [key, pid])).rowCount === 1);
    release();
    const got = (await second).rows[0].v as string;
    expect(taken).toHaveLength(1); // no lock taken for it
    expect(await standingHeld()).toContain(key); // taken again behind the woken call
    const third = (await c.query(`SELECT deterministic_expand('standing three') AS v`)).rows[0].v as string;
    expect(taken).toHaveLength(1);

    // A new nonce (RESET ALL, DISCARD ALL, or the session's own SET): asked the old way once, then standing again.
    await c.query('RESET ALL');
    const fourth = (await c.query(`SELECT deterministic_expand('standing four') AS v`)).rows[0].v as string;
    expect(taken).toHaveLength(2);
    await until(async () => !(await standingHeld()).includes(key)); // the old nonce's lock let go
    await c.query(`SET steadytext.wake_nonce = '0123456789abcdef0123456789abcdef'`);
    const fifth = (await c.query(`SELECT deterministic_expand('standing five') AS v`)).rows[0].v as string;
    expect(taken).toHaveLength(3);

    // The listener lost: its locks with it; the calls go the old way until it is back.
    const old = await listenerPid();
    await direct.query('SELECT pg_terminate_backend($1)', [old]);
    await until(async () => { const p = await listenerPid(); return p !== undefined && p !== old; });
    const sixth = (await c.query(`SELECT deterministic_expand('standing six') AS v`)).rows[0].v as string;
    expect(taken.length).toBeGreaterThanOrEqual(3);

    // The backend ended: its standing lock is let go at the next sweep. Its own lock: under load another test's
    // straggling call may have one taken for its (live) backend meanwhile.
    const sixthKey = String(standingKey(db.secret!, pid, '0123456789abcdef0123456789abcdef') >>> 0); // pg_locks.objid is unsigned
    await until(async () => (await standingHeld()).includes(sixthKey));
    await c.end();
    await until(async () => (await direct.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount === 0);
    await db.standing!.sweep(db.pool);
    expect(await standingHeld()).not.toContain(sixthKey);

    for (const [v, t] of [[first, 'standing one'], [got, 'standing two'], [third, 'standing three'], [fourth, 'standing four'], [fifth, 'standing five'], [sixth, 'standing six']]) {
      expect(v).toBe(await expected(t));
    }
  });

  test('a waiting call whose answer is a cache row reads that row: no mailbox entry, nothing written by the caller, the rewrite path’s bytes', async () => {
    await fresh();
    await direct.query(`
      CREATE OR REPLACE FUNCTION wrap_stream(p text) RETURNS text LANGUAGE plpgsql AS $$
      BEGIN RETURN (SELECT string_agg(c, '|') FROM steadytext_generate_stream(p, 12) AS c); END $$`);
    // Both models' identities registered, as after any first call: the functions' lookups have a key to send.
    await rewritten(`SELECT steadytext_generate('warm up', 4) AS v`);
    await rewritten(`SELECT steadytext_embed('warm up')::text AS v`);
    await fresh();
    const { c, notices } = await client();
    const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
    // What a read-only caller leaves in the mailbox is removed whatever happens here (later tests count it).
    onTestFinished(async () => void await direct.query('DELETE FROM steadytext_mailbox WHERE backend_pid = $1', [pid]));
    const inbandRows = async () => (await direct.query(
      `SELECT count(*)::int AS n FROM steadytext_mailbox WHERE backend_pid = $1 AND topic LIKE 'inband:%'`, [pid])).rows[0].n as number;
    // READ ONLY: an answer taken from the mailbox would stay there (a read-only caller only reads it).
    await c.query('BEGIN READ ONLY');
    // A quote and a backslash in the row's prompt: its INSERT is sent with the values inlined.
    const topic = "harbour's \\ walls";
    const generated = (await c.query('SELECT deterministic_expand($1) AS v', [topic])).rows[0].v as string;
    const embedded = (await c.query(`SELECT wrap_embed('harbour cranes')::text AS v`)).rows[0].v as string;
    const streamed = (await c.query(`SELECT wrap_stream('harbour tides') AS v`)).rows[0].v as string;
    const wrote = (await c.query('SELECT pg_current_xact_id_if_assigned() AS x')).rows[0].x as string | null;
    await c.query('COMMIT');
    expect(notices).toEqual([]);
    expect(wrote).toBeNull();
    expect(await inbandRows()).toBe(0);
    // Committed before the caller woke, not written later: there without waiting for the proxy's writes.
    expect(await cacheRows()).toBe(3);
    // Not cached (cache_enabled off): the answer still comes, through the mailbox.
    await direct.query(`SELECT steadytext_config_set('cache_enabled', 'false')`);
    try {
      await c.query('BEGIN READ ONLY');
      const uncached = (await c.query(`SELECT deterministic_expand('harbours, not cached') AS v`)).rows[0].v as string;
      await c.query('COMMIT');
      expect(await inbandRows()).toBe(1);
      await fresh();
      expect(uncached).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND('harbours, not cached')]));
    } finally {
      await direct.query(`SELECT steadytext_config_set('cache_enabled', 'true')`);
    }
    await c.end();
    await fresh();
    expect(generated).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND(topic)]));
    expect(embedded).toBe(await rewritten(`SELECT steadytext_embed('harbour cranes')::text AS v`));
    expect(streamed).toBe(await rewritten(`SELECT string_agg(c, '|') AS v FROM steadytext_generate_stream('harbour tides', 12) AS c`));
    expect(streamed.split('|').length).toBeGreaterThan(1);
  });

  test('an embedding whose cache row is removed between the hand-over and its read is asked for again', async () => {
    await rewritten(`SELECT steadytext_embed('warm up')::text AS v`); // the identity registered: the function sends its key
    await fresh();
    const original = (await direct.query(`SELECT pg_get_functiondef('_steadytext_inband_embedding(text, integer)'::regprocedure) AS d`)).rows[0].d as string;
    // Stands for an administrator's DELETE committed right then, once: the row is not there when it is read.
    await direct.query(`
      CREATE OR REPLACE FUNCTION _steadytext_inband_embedding(p_cache_key text, p_ttl_seconds integer) RETURNS vector
      LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp AS $$
      BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'vanished_once') THEN
              CREATE TABLE public.vanished_once ();
              RETURN NULL;
          END IF;
          RETURN (SELECT c.embedding FROM steadytext_cache c WHERE c.cache_key = p_cache_key
                   AND greatest(c.created_at, c.last_accessed) > now() - make_interval(secs => p_ttl_seconds));
      END $$`);
    // Miss by miss: the second ask is answered where it stands, not by running the statement again.
    await direct.query(`SELECT steadytext_config_set('inband_rerun', 'false')`);
    const taken = countTaken();
    try {
      const { c } = await client();
      await c.query('SELECT 1');
      const got = (await c.query(`SELECT wrap_embed('removed in between')::text AS v`)).rows[0].v as string;
      await c.end();
      expect(taken.n).toBe(2);
      expect((await direct.query(`SELECT count(*)::int AS n FROM pg_class WHERE relname = 'vanished_once'`)).rows[0].n).toBe(1);
      await fresh();
      expect(got).toBe(await rewritten(`SELECT steadytext_embed('removed in between')::text AS v`));
    } finally {
      await direct.query(original);
      await direct.query('DROP TABLE IF EXISTS vanished_once');
      await direct.query(`SELECT steadytext_config_set('inband_rerun', 'true')`);
    }
  });

  test('the owning role’s block that removed the cache row it then asks for: the answer comes through the mailbox, no deadlock', async () => {
    await rewritten(`SELECT steadytext_embed('warm up')::text AS v`); // the identity registered: the function sends its key
    await fresh();
    const { c } = await client(); // as the owning role, which may write steadytext_cache
    const want = (await c.query(`SELECT wrap_embed('taken by the block')::text AS v`)).rows[0].v as string;
    expect(await cacheRows()).toBe(1);
    await c.query('BEGIN');
    // The block holds the row (deleted, not committed): the proxy's hand-over as a cache row would wait on it.
    expect((await c.query('DELETE FROM steadytext_cache')).rowCount).toBe(1);
    const got = (await c.query(`SELECT wrap_embed('taken by the block')::text AS v`)).rows[0].v as string;
    await c.query('COMMIT');
    expect(got).toBe(want);
  });

  test.each(['session', 'transaction'] as const)(
    'an UPDATE missing on every row (%s mode) is stopped, its calls gathered and answered together, and run again',
    async (mode) => {
      await fresh();
      await notes(`note ${mode}`);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const taken = countTaken();
      const { c, notices } = await client(url);
      await c.query('SELECT 1'); // the session's first Query: what follows is kept for a rerun
      const r = await c.query('UPDATE notes SET emb = wrap_embed(body)');
      await c.end();
      expect(r.rowCount).toBe(24);
      expect(notices).toEqual([]);
      // Two misses asked one by one (the second stops the statement), the other 22 gathered in one dry run.
      expect(taken.n).toBe(2);
      const rows = (await direct.query('SELECT body, emb::text AS emb FROM notes ORDER BY id')).rows as { body: string; emb: string | null }[];
      expect(rows.every((row) => row.emb !== null)).toBe(true);
      await fresh();
      for (const row of [rows[0], rows[11], rows[23]]) {
        expect(row.emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [row.body]));
      }
    },
  );

  // Session mode runs through the native relay (which keeps the exchange in C), transaction mode through JS.
  test.each(['session', 'transaction'] as const)(
    'the same UPDATE as a driver sends a parameterized statement (extended protocol, %s mode) is gathered too',
    async (mode) => {
      await fresh();
      await notes(`extended ${mode}`);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const taken = countTaken();
      const { c, notices } = await client(url);
      await c.query('SELECT 1');
      // node-postgres: Parse (unnamed), Bind, Describe portal, Execute, Sync, in one write.
      const r = await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id <= $1', [24]);
      expect(r.rowCount).toBe(24);
      // The session goes on as usual: the unnamed statement re-parsed, nothing left over.
      expect((await c.query('SELECT $1::int AS two', [2])).rows).toEqual([{ two: 2 }]);
      await c.end();
      expect(notices).toEqual([]);
      expect(taken.n).toBe(2);
      const rows = (await direct.query('SELECT body, emb::text AS emb FROM notes ORDER BY id')).rows as { body: string; emb: string | null }[];
      expect(rows.every((row) => row.emb !== null)).toBe(true);
      await fresh();
      for (const row of [rows[0], rows[23]]) {
        expect(row.emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [row.body]));
      }
    },
  );

  test.each(['session', 'transaction'] as const)(
    'a named statement is never run again (the first attempt created it): each miss answered where it stands (%s mode)',
    async (mode) => {
      await fresh();
      await notes(`named ${mode}`);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const taken = countTaken();
      const { c, notices } = await client(url);
      await c.query('SELECT 1');
      const r = await c.query({ name: 'embed_some', text: 'UPDATE notes SET emb = wrap_embed(body) WHERE id <= $1', values: [4] });
      await c.end();
      expect(r.rowCount).toBe(4);
      expect(notices).toEqual([]);
      expect(taken.n).toBe(4);
      expect((await direct.query('SELECT count(*)::int AS n FROM notes WHERE emb IS NOT NULL')).rows[0].n).toBe(4);
    },
  );

  test.each(['session', 'transaction'] as const)(
    'a parameterized SELECT computing every row before the first (extended protocol, %s mode): gathered, one RowDescription, each row once',
    async (mode) => {
      await fresh();
      await notes(`sorted ${mode}`);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const taken = countTaken();
      const { c, notices } = await client(url);
      await c.query('SELECT 1');
      // Sorted by the call's result: every row's call runs before the first row goes out.
      const r = await c.query('SELECT id, wrap_embed(body)::text AS emb FROM notes WHERE id <= $1 ORDER BY 2', [24]);
      await c.end();
      expect(notices).toEqual([]);
      expect(r.fields.map((f) => f.name)).toEqual(['id', 'emb']);
      expect(r.rows).toHaveLength(24);
      expect(new Set(r.rows.map((x: { id: number }) => x.id)).size).toBe(24);
      expect(taken.n).toBe(2);
      const some = r.rows.find((x: { id: number }) => x.id === 7) as { emb: string };
      await fresh();
      expect(some.emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [`sorted ${mode} 7`]));
    },
  );

  test.each(['session', 'transaction'] as const)(
    'inside a transaction block (%s mode), once the session asked in-band, a statement missing row after row is fenced, gathered and run again',
    async (mode) => {
      await fresh();
      await notes(`in a block ${mode}`);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const { c, notices } = await client(url);
      await c.query(`SELECT deterministic_expand('fences ${mode}') AS v`); // the session's first in-band call
      const taken = countTaken();
      await c.query('BEGIN');
      await c.query('SAVEPOINT mine');
      const r = await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id <= 12');
      expect(r.rowCount).toBe(12);
      // Two asked one by one (the second stopped it), the other ten gathered.
      expect(taken.n).toBe(2);
      // The client's own savepoint is intact around the fence: rolling back to it undoes the UPDATE.
      await c.query('ROLLBACK TO SAVEPOINT mine');
      expect((await c.query('SELECT count(*)::int AS n FROM notes WHERE emb IS NOT NULL')).rows[0].n).toBe(0);
      // Run again, it finds every answer cached: no request at all.
      await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id <= 12');
      expect(taken.n).toBe(2);
      // A fenced statement's own error fails the block as usual, and ROLLBACK ends it.
      expect(await pgError(c.query('SELECT 1 / (id - id) FROM notes'))).toMatchObject({ code: '22012' });
      expect(await pgError(c.query('SELECT 1'))).toMatchObject({ code: '25P02' });
      await c.query('ROLLBACK');
      await c.query('BEGIN');
      await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id > 12');
      await c.query('COMMIT');
      expect(taken.n).toBe(4);
      // Nothing of the fences reached the client, and none is left behind.
      expect(notices).toEqual([]);
      await c.query('BEGIN');
      await c.query('SELECT count(wrap_embed(body)) FROM notes');
      expect(await pgError(c.query('RELEASE SAVEPOINT steadytext_fence'))).toMatchObject({ code: '3B001' });
      await c.query('ROLLBACK');
      await c.end();
      const rows = (await direct.query('SELECT body, emb::text AS emb FROM notes ORDER BY id')).rows as { body: string; emb: string | null }[];
      expect(rows.map((row) => row.emb === null)).toEqual([...Array(12).fill(true), ...Array(12).fill(false)]);
      await fresh();
      expect(rows[20].emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [rows[20].body]));
    },
  );

  test.each(['session', 'transaction'] as const)(
    'inside a transaction block, a parameterized statement (extended protocol, %s mode) is fenced and gathered too',
    async (mode) => {
      await fresh();
      await notes(`extended in a block ${mode}`);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const { c, notices } = await client(url);
      await c.query(`SELECT deterministic_expand('fences, extended ${mode}') AS v`);
      const taken = countTaken();
      await c.query('BEGIN');
      await c.query('SAVEPOINT mine');
      const r = await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id <= $1', [12]);
      expect(r.rowCount).toBe(12);
      expect(taken.n).toBe(2);
      // The client's savepoint holds around the fence, and none of the proxy's is left.
      await c.query('ROLLBACK TO SAVEPOINT mine');
      expect((await c.query('SELECT count(*)::int AS n FROM notes WHERE emb IS NOT NULL AND id <= $1', [24])).rows[0].n).toBe(0);
      const again = await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id > $1', [12]);
      expect(again.rowCount).toBe(12);
      expect(taken.n).toBe(4);
      expect(await pgError(c.query('RELEASE SAVEPOINT steadytext_fence'))).toMatchObject({ code: '3B001' });
      await c.query('ROLLBACK TO SAVEPOINT mine');
      await c.query('UPDATE notes SET emb = wrap_embed(body) WHERE id > $1', [12]);
      await c.query('COMMIT');
      await c.end();
      expect(taken.n).toBe(4); // answered from the cache the first run filled
      expect(notices).toEqual([]);
      const rows = (await direct.query('SELECT body, emb::text AS emb FROM notes ORDER BY id')).rows as { body: string; emb: string | null }[];
      expect(rows.map((row) => row.emb === null)).toEqual([...Array(12).fill(true), ...Array(12).fill(false)]);
      await fresh();
      expect(rows[15].emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [rows[15].body]));
    },
  );

  test.each(['session', 'transaction'] as const)(
    'SELECT of a PL/pgSQL batch function (%s mode): only its RowDescription reached the client, so it is gathered too, and the client sees one',
    async (mode) => {
      await fresh();
      await notes(`batch ${mode}`);
      await direct.query(`
        CREATE OR REPLACE FUNCTION embed_all_notes() RETURNS integer LANGUAGE plpgsql AS $$
        DECLARE n integer := 0; r record;
        BEGIN
          FOR r IN SELECT id, body FROM notes ORDER BY id LOOP
            UPDATE notes SET emb = steadytext_embed(r.body) WHERE id = r.id;
            n := n + 1;
          END LOOP;
          RETURN n;
        END $$;`);
      const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
      const taken = countTaken();
      const { c, notices } = await client(url);
      await c.query('SELECT 1');
      const r = await c.query('SELECT embed_all_notes() AS n');
      // One RowDescription (pg would fail on a second), one row.
      expect(r.fields.map((f) => f.name)).toEqual(['n']);
      expect(r.rows).toEqual([{ n: 24 }]);
      expect(notices).toEqual([]);
      expect((await c.query('SELECT 2 AS two')).rows).toEqual([{ two: 2 }]);
      await c.end();
      expect(taken.n).toBe(2);
      const rows = (await direct.query('SELECT body, emb::text AS emb FROM notes ORDER BY id')).rows as { body: string; emb: string | null }[];
      expect(rows.every((row) => row.emb !== null)).toBe(true);
      await fresh();
      expect(rows[5].emb).toBe(await rewritten('SELECT steadytext_embed($1)::text AS v', [rows[5].body]));
    },
  );

  test.each(['session', 'transaction'] as const)('a SELECT that computes every row before the first goes out (%s mode) is gathered, and the client gets each row once', async (mode) => {
    await fresh();
    const url = mode === 'session' ? s.url() : await s.pooledUrl('transaction', 2);
    const { c, notices } = await client(url);
    await c.query('SELECT 1');
    // ORDER BY a computed column: every row's call runs before the sort gives the first row.
    const r = await c.query('SELECT id, wrap_embed(body)::text AS emb FROM notes ORDER BY md5(body) LIMIT 6');
    await c.end();
    expect(notices).toEqual([]);
    expect(r.rows).toHaveLength(6);
    expect(new Set(r.rows.map((x: { id: number }) => x.id)).size).toBe(6);
  });

  test.each(['autocommit', 'a transaction block'] as const)('a client that cancels while its statement’s calls are gathered gets 57014, and the statement left nothing (%s)', async (where) => {
    await fresh();
    await direct.query(`
      DROP TABLE IF EXISTS notes_cancel;
      CREATE TABLE notes_cancel (id int PRIMARY KEY, body text NOT NULL, emb vector(1024));
      INSERT INTO notes_cancel (id, body) SELECT i, 'cancelled note ' || i FROM generate_series(1, 12) i;`);
    // The last row, locked elsewhere: the first attempt stops at its second miss before it, the dry run waits for it.
    const taken = countTaken();
    const blocker = new pg.Client(s.directUrl);
    await blocker.connect();
    await blocker.query('BEGIN');
    await blocker.query('SELECT 1 FROM notes_cancel WHERE id = 12 FOR UPDATE');
    try {
      const { c } = await client();
      const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
      if (where === 'a transaction block') {
        await c.query(`SELECT deterministic_expand('cancelled in a block') AS v`); // the session asks in-band: blocks are fenced
        taken.n = 0;
        await c.query('BEGIN');
      }
      const running = c.query('UPDATE notes_cancel SET emb = wrap_embed(body)').then(() => null, (e: { code?: string }) => e);
      let waiting = false;
      for (let i = 0; i < 500 && !waiting; i++) {
        // A row lock (not the advisory lock a waiting call blocks on while the proxy computes).
        const r = await direct.query(`SELECT query FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock' AND wait_event IN ('transactionid', 'tuple')`, [pid]);
        waiting = r.rows.length === 1;
        if (!waiting) await new Promise((res) => setTimeout(res, 20));
      }
      expect(waiting).toBe(true);
      // It waits inside the proxy's dry run: the first attempt asked twice and was stopped at its second miss.
      expect(taken.n).toBe(2);
      await cancelThroughProxy(s, c);
      expect((await running)?.code).toBe('57014');
      if (where === 'a transaction block') {
        // The gathering had rolled the block back to the fence; it is failed again, as the client was told.
        expect(await pgError(c.query('SELECT 1 AS one'))).toMatchObject({ code: '25P02' });
        await c.query('ROLLBACK');
      }
      expect((await c.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      await c.end();
    } finally {
      await blocker.query('ROLLBACK');
      await blocker.end();
    }
    expect((await direct.query('SELECT count(*)::int AS n FROM notes_cancel WHERE emb IS NOT NULL')).rows[0].n).toBe(0);
  });

  test('a SELECT whose rows began to reach the client is never run again: each miss is answered where it stands', async () => {
    await fresh();
    const taken = countTaken();
    const { c, notices } = await client();
    await c.query('SELECT 1');
    const rows = (await c.query('SELECT id, wrap_embed(body)::text AS emb FROM notes ORDER BY id LIMIT 6')).rows as { emb: string }[];
    await c.end();
    expect(notices).toEqual([]);
    expect(rows).toHaveLength(6);
    expect(rows.every((r) => r.emb.startsWith('['))).toBe(true);
    // Its RowDescription went to the client before the first miss: nothing to stop, every miss asked on its own.
    expect(taken.n).toBe(6);
  });

  test('under transaction pooling the request follows the server connection the statement runs on', async () => {
    await fresh();
    const url = await s.pooledUrl('transaction', 2);
    const clients = await Promise.all([0, 1, 2].map(() => client(url)));
    const got = await Promise.all(clients.map(({ c }, i) => c.query('SELECT deterministic_expand($1) AS v', [`pool topic ${i}`])));
    await Promise.all(clients.map(({ c }) => c.end()));
    await fresh();
    for (let i = 0; i < 3; i++) {
      expect(got[i].rows[0].v).toBe(await rewritten(`SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v`, [EXPAND(`pool topic ${i}`)]));
    }
  });
});

test('answers are handed over with asynchronous commit (visible at once, no WAL flush per answer), search_path still pinned', async () => {
  const pool = s.databases.get(s.database).pool;
  expect((await pool.query('SHOW synchronous_commit')).rows[0].synchronous_commit).toBe('off');
  expect((await pool.query('SHOW search_path')).rows[0].search_path).toMatch(/^pg_catalog/);
});

describe('what the in-band transport refuses', () => {
  test('an answer handed over in the session must verify: one the session altered itself is ignored, and it ends with the transaction', async () => {
    await fresh();
    const { c } = await client();
    await c.query(`SELECT deterministic_expand('warm up the session') AS v`);
    await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const truth = (await c.query(`SELECT deterministic_expand('handed over') AS v`)).rows[0].v as string;
    // Placeholder settings are not in pg_settings: each of the 256 names looked at.
    const given = (await c.query(`
      SELECT name, current_setting(name, true) AS setting
        FROM (SELECT 'steadytext.answers_' || lpad(to_hex(i), 2, '0') AS name FROM generate_series(0, 255) i) n
       WHERE coalesce(current_setting(name, true), '') <> ''`)).rows as { name: string; setting: string }[];
    await c.query('COMMIT');
    expect(given).toHaveLength(1);
    expect((await c.query(`SELECT coalesce(current_setting($1, true), '') AS v`, [given[0].name])).rows[0].v).toBe('');
    // The same key and signature, another answer: a session may set this, but it does not verify.
    const entries = JSON.parse(given[0].setting) as Record<string, string>;
    const [key, signed] = Object.entries(entries)[0];
    await fresh();
    await c.query('BEGIN');
    await c.query('SELECT set_config($1, $2, true)', [given[0].name, JSON.stringify({ [key]: signed.slice(0, 64) + 'forged answer' })]);
    const got = (await c.query(`SELECT deterministic_expand('handed over') AS v`)).rows[0].v as string;
    await c.query('COMMIT');
    await c.query(`SELECT set_config($1, 'not json', false)`, [given[0].name]); // nor does garbage break a call
    expect((await c.query(`SELECT deterministic_expand('handed over') AS v`)).rows[0].v).toBe(truth);
    await c.end();
    expect(got).toBe(truth);
    expect(truth).not.toContain('forged');
  });

  test('a notice forged by the session computes nothing, stores nothing, and reaches the client as raised', async () => {
    await fresh();
    const mailbox = async () => (await direct.query('SELECT count(*)::int AS n FROM steadytext_mailbox')).rows[0].n as number;
    const before = await mailbox();
    const pid = (await direct.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
    const { c, notices } = await client();
    const request = JSON.stringify({
      op: 'generate', prompt: 'forged prompt', max_tokens: 8, seed: 42, id: 'a'.repeat(32), database: s.database, backend_pid: pid,
    });
    await c.query(`DO $$ BEGIN RAISE INFO 'steadytext:inband' USING DETAIL = ${literal(request)}, HINT = ${literal('0'.repeat(64))}; END $$`);
    await c.end();
    expect(notices.map((n) => n.message)).toContain('steadytext:inband');
    // Give a wrongly accepted request time to land before looking.
    await new Promise((r) => setTimeout(r, 300));
    expect(await cacheRows()).toBe(0);
    expect(await mailbox()).toBe(before);
  });

  test('a signed request replayed by a role that may not call the function computes and stores nothing', async () => {
    await fresh();
    // A genuine request, captured where no proxy hides it: straight to the database.
    await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '300')`);
    const captured: { detail?: string; hint?: string; message?: string }[] = [];
    const onNotice = (n: { detail?: string; hint?: string; message?: string }) => captured.push(n);
    direct.on('notice', onNotice);
    try {
      await pgError(direct.query(`SELECT deterministic_expand('replayed secret topic') AS v`));
    } finally {
      direct.off('notice', onNotice);
      await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '30000')`);
    }
    const signed = captured.find((n) => n.message === 'steadytext:inband');
    expect(signed?.detail).toContain('replayed secret topic');
    await fresh();
    const role = await createRole('st_inband_denied');
    try {
      await direct.query(`REVOKE EXECUTE ON FUNCTION steadytext_generate FROM PUBLIC`);
      const { c, notices } = await client(s.url(role.user, role.password));
      // Its own call is refused by the database, before anything is asked.
      expect((await pgError(c.query(`SELECT deterministic_expand('replayed secret topic') AS v`))).code).toBe('42501');
      // The replay comes from another backend than the one that signed it: not answered, shown as raised.
      await c.query(`DO $$ BEGIN RAISE INFO 'steadytext:inband' USING DETAIL = ${literal(signed!.detail!)}, HINT = ${literal(signed!.hint!)}; END $$`);
      await c.end();
      expect(notices.map((n) => n.message)).toContain('steadytext:inband');
      await new Promise((r) => setTimeout(r, 300));
      expect((await direct.query('SELECT prompt FROM steadytext_cache')).rows).toEqual([]);
      expect((await direct.query(`SELECT count(*)::int AS n FROM steadytext_mailbox WHERE topic LIKE 'inband:%'`)).rows[0].n).toBe(0);
    } finally {
      await direct.query(`GRANT EXECUTE ON FUNCTION steadytext_generate TO PUBLIC`);
      await dropRole(role.user);
    }
  });

  test('straight to the database, with no proxy to answer, a miss fails with an error that says so', async () => {
    await fresh();
    await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '700')`);
    try {
      const e = await pgError(direct.query(`SELECT deterministic_expand('no proxy here') AS v`));
      expect(e.code).toBe('57014');
      expect(e.message).toMatch(/no pg-steadytext proxy answered within 700 ms/);
      expect(e.hint).toMatch(/Connect through the pg-steadytext proxy/);
    } finally {
      await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '30000')`);
    }
  });

  test('straight to the database, steadytext_daemon_status() and steadytext_model_info() report no daemon instead of failing', async () => {
    const notices: string[] = [];
    const onNotice = (n: { message?: string }) => notices.push(n.message ?? '');
    direct.on('notice', onNotice);
    try {
      const status = (await direct.query('SELECT running, pid FROM steadytext_daemon_status()')).rows;
      expect(status).toEqual([{ running: false, pid: null }]);
      const models = (await direct.query('SELECT model_type, loaded FROM steadytext_model_info()')).rows as { model_type: string; loaded: boolean }[];
      // What the proxy registered, none known to be loaded.
      expect(models.length).toBe((await direct.query('SELECT count(*)::int AS n FROM steadytext_models')).rows[0].n);
      expect(models.every((m) => !m.loaded)).toBe(true);
    } finally {
      direct.off('notice', onNotice);
    }
    // Besides the requests themselves (no proxy keeps them from this client), each says why.
    expect(notices.filter((m) => /no pg-steadytext proxy answered within 2000 ms/.test(m))).toHaveLength(2);
    // Through the proxy, the same functions answer.
    const c = await s.connect();
    expect((await c.query('SELECT running FROM steadytext_daemon_status()')).rows).toEqual([{ running: true }]);
    await c.end();
  });

  test('steadytext_daemon_status() says the database reaches the proxy in-band', async () => {
    await direct.query(`SELECT steadytext_config_set('callback_transport', 'inband')`);
    try {
      const { c } = await client();
      // The config listener's NOTIFY reaches the proxy asynchronously: ask until it took effect.
      let row: { host: string; port: number | null } | undefined;
      for (let i = 0; i < 100 && row?.host !== 'in-band'; i++) {
        row = (await c.query('SELECT host, port FROM steadytext_daemon_status()')).rows[0] as typeof row;
        if (row?.host !== 'in-band') await new Promise((r) => setTimeout(r, 20));
      }
      await c.end();
      expect(row).toEqual({ host: 'in-band', port: null });
    } finally {
      await direct.query(`SELECT steadytext_config_set('callback_transport', 'auto')`);
    }
  });

  test('callback_transport takes auto, dblink or inband only', async () => {
    const e = await pgError(direct.query(`SELECT steadytext_config_set('callback_transport', 'carrier pigeon')`));
    expect(e.code).toBe('22023');
    expect(e.message).toMatch(/callback_transport must be auto, dblink or inband/);
    await direct.query(`SELECT steadytext_config_set('callback_transport', ' INBAND ')`);
    expect((await direct.query(`SELECT steadytext_config_get('callback_transport') AS v`)).rows[0].v).toBe('inband');
    await direct.query(`SELECT steadytext_config_set('callback_transport', 'auto')`);
  });

  test('inband_rerun takes true or false; false answers a statement missing row after row miss by miss', async () => {
    const e = await pgError(direct.query(`SELECT steadytext_config_set('inband_rerun', 'sometimes')`));
    expect(e.code).toBe('22023');
    expect(e.message).toMatch(/inband_rerun must be true or false/);
    await direct.query(`SELECT steadytext_config_set('inband_rerun', ' OFF ')`);
    try {
      expect((await direct.query(`SELECT steadytext_config_get('inband_rerun') AS v`)).rows[0].v).toBe('false');
      await fresh();
      await notes('rerun off');
      const taken = countTaken();
      const { c } = await client();
      await c.query('SELECT 1');
      expect((await c.query('UPDATE notes SET emb = wrap_embed(body)')).rowCount).toBe(24);
      await c.end();
      expect(taken.n).toBe(24);
    } finally {
      await direct.query(`SELECT steadytext_config_set('inband_rerun', 'true')`);
    }
  });
});

function literal(v: string): string {
  return `'${v.replaceAll("'", "''")}'`;
}
