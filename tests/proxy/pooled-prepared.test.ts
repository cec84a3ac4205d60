// Pooled prepared statements, timeouts and counters as pgBouncer 1.24 has them (src/prepare.c, janitor.c,
// stats): a Bind of a name the client never prepared ends it, a refused Parse keeps its name, DEALLOCATE ALL
// counts once the server did it, max_prepared_statements read at each use, idle_transaction_timeout from
// the server's last ReadyForQuery, SHOW STATS' query/transaction/assignment counts, one id numbering for
// clients and servers, server_lifetime = 0. Beyond pgBouncer: SQL PREPARE / EXECUTE / DEALLOCATE follow the
// client across server connections without pinning it, in one namespace with the protocol's named
// statements, and a statement whose result type changed (0A000) is prepared again outside a transaction block.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import type { PoolingEnv } from '../../proxy/pooling.js';
import { bind as bindMessage, close, execute, parse, query, readDataRow, SYNC } from '../../proxy/protocol.js';
import type { ProxyServer } from '../../proxy/server.js';
import { RawClient, adminQuery, appName, frontend, startPoolingProxy, startupPacket } from './helpers.js';

interface Pooled {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  session(): Promise<RawClient>;
  /** A node-postgres client through the proxy as trust_user (database 'pgbouncer': the console). */
  pg(app?: string, database?: string): Promise<pg.Client>;
  close(): Promise<void>;
}

/** A pooling proxy (auth_type trust, trust_user) from an ini written for the test cluster. */
async function pooledProxy(pgbouncer: Record<string, string | number>): Promise<Pooled> {
  // With the admin console (SHOW CLIENTS), reading the sessions of this proxy.
  const { proxy, pooling, closeConsole } = await startPoolingProxy({ authType: 'trust', user: 'trust_user', password: '', pgbouncer });
  return {
    proxy,
    pooling,
    async session() {
      const c = await RawClient.open(proxy.address.port);
      c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: appName('pooled-prepared') }));
      await c.waitFor('Z');
      c.messages.length = 0;
      return c;
    },
    async pg(app = appName('pooled-prepared'), database = 'postgres') {
      const c = new pg.Client({ host: '127.0.0.1', port: proxy.address.port, user: 'trust_user', database, application_name: app });
      c.on('error', () => {});
      await c.connect();
      return c;
    },
    async close() {
      await proxy.close(0);
      pooling.pooler.close();
      closeConsole();
    },
  };
}

/** Sends, then waits for `n` more ReadyForQuery; returns the messages that came meanwhile. */
async function exchange(c: RawClient, bytes: Buffer[], n = 1): Promise<{ type: string; bytes: Buffer }[]> {
  const from = c.messages.length;
  const z = c.count('Z');
  c.write(Buffer.concat(bytes));
  await c.waitForCount('Z', z + n);
  return c.messages.slice(from);
}

const bind = (portal: string, statement: string, params: Buffer[]) => bindMessage({ portal, statement, paramFormats: [], params, resultFormats: [] });
const text = (m: { bytes: Buffer }) => readDataRow(m.bytes)[0]?.toString();
const errors = (ms: { type: string; bytes: Buffer }[]) => ms.filter((m) => m.type === 'E').map((m) => m.bytes.toString('latin1'));

function pool(p: Pooled) {
  return [...p.pooling.pooler.databases.get('postgres')!.pools.values()][0];
}

describe('prepared statements in transaction mode, as pgBouncer', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, max_prepared_statements: 10 });
  });
  afterAll(() => p.close());

  test('a Bind or Describe of a name the client never prepared ends it: "prepared statement did not exist"', async () => {
    for (const msg of [bind('', 'never_prepared', []), frontend('D', 'Snever_prepared\0')]) {
      const c = await p.session();
      c.write(Buffer.concat([msg, SYNC]));
      await c.waitClosed();
      expect(c.error()).toMatchObject({ S: 'FATAL', C: '08P01', M: 'prepared statement did not exist' });
    }
  });

  test('a Parse the server refused or skipped keeps its name: a Bind prepares it again, a new Parse may take it', async () => {
    const c = await p.session();
    // psycopg's pipeline: the second Parse is skipped after the first one's error, and the client binds it later.
    let got = await exchange(c, [parse('bad', 'select * from no_such_table_pooled_prepared'), parse('skipped', 'select 2'), SYNC]);
    expect(errors(got)).toHaveLength(1);
    got = await exchange(c, [bind('', 'skipped', []), execute(''), SYNC]);
    expect(got.filter((m) => m.type === 'D').map(text)).toEqual(['2']);
    got = await exchange(c, [parse('bad', 'select 3'), bind('', 'bad', []), execute(''), SYNC]);
    expect(got.filter((m) => m.type === 'D').map(text)).toEqual(['3']);
    // A name in use: PostgreSQL's error (pgBouncer would close the client), and the session goes on.
    got = await exchange(c, [parse('bad', 'select 4'), SYNC]);
    expect(errors(got).join()).toContain('prepared statement "bad" already exists');
    got = await exchange(c, [bind('', 'bad', []), execute(''), SYNC]);
    expect(got.filter((m) => m.type === 'D').map(text)).toEqual(['3']);
    c.destroy();
  });

  test('DEALLOCATE ALL forgets the client statements once the server has done it', async () => {
    const c = await p.session();
    await exchange(c, [parse('s', 'select 5'), bind('', 's', []), execute(''), SYNC]);
    // Refused in a failed transaction: nothing is forgotten.
    await exchange(c, [query('begin')]);
    await exchange(c, [query('select 1/0')]);
    await exchange(c, [query('deallocate all')]);
    await exchange(c, [query('rollback')]);
    let got = await exchange(c, [bind('', 's', []), execute(''), SYNC]);
    expect(got.filter((m) => m.type === 'D').map(text)).toEqual(['5']);
    got = await exchange(c, [query('deallocate all')]);
    expect(errors(got)).toEqual([]);
    c.write(Buffer.concat([bind('', 's', []), execute(''), SYNC]));
    await c.waitClosed();
    expect(
      c.messages
        .filter((m) => m.type === 'E')
        .at(-1)
        ?.bytes.toString('latin1'),
    ).toContain('prepared statement did not exist');
  });

  test('max_prepared_statements is read at each use (SET in the console takes effect at once)', async () => {
    const st = p.pooling.pooler.settings as { maxPreparedStatements: number };
    const c = await p.session();
    const count = async () => text((await exchange(c, [query('select count(*) from pg_prepared_statements')])).find((m) => m.type === 'D')!);
    await exchange(c, [query('deallocate all')]);
    st.maxPreparedStatements = 1;
    for (let i = 0; i < 3; i++) await exchange(c, [parse(`a${i}`, `select ${i} as a`), bind('', `a${i}`, []), execute(''), SYNC]);
    expect(await count()).toBe('1');
    st.maxPreparedStatements = 3;
    for (let i = 0; i < 3; i++) await exchange(c, [parse(`b${i}`, `select ${i} as b`), bind('', `b${i}`, []), execute(''), SYNC]);
    expect(await count()).toBe('3');
    // Disabled: names go to the server as the client wrote them.
    st.maxPreparedStatements = 0;
    const got = await exchange(c, [bind('', 'b0', []), execute(''), SYNC]);
    expect(errors(got).join()).toContain('prepared statement "b0" does not exist');
    st.maxPreparedStatements = 10;
    c.destroy();
  });

  test("SHOW STATS' counts: a request per ReadyForQuery, a transaction per block, an assignment per server connection given", async () => {
    const s = pool(p).stats;
    const before = { q: s.queryCount, x: s.xactCount, a: s.serverAssignmentCount };
    const c = await p.session();
    await exchange(c, [query('select 1')]);
    await exchange(c, [query('begin')]);
    await exchange(c, [parse('', 'select 1'), bind('', '', []), execute(''), SYNC]);
    await exchange(c, [query('commit')]);
    // A pipeline of two Syncs: two requests.
    await exchange(c, [parse('', 'select 1'), bind('', '', []), execute(''), SYNC, bind('', '', []), execute(''), SYNC], 2);
    pool(p).syncLent(); // what the native relay ran of a lent connection (the console and metrics sync the same way)
    expect({ q: s.queryCount - before.q, x: s.xactCount - before.x }).toEqual({ q: 5, x: 3 });
    expect(s.serverAssignmentCount - before.a).toBeGreaterThanOrEqual(3);
    c.destroy();
  });
});

describe('timeouts and ids', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'session', idle_transaction_timeout: 1, server_lifetime: 0 });
  });
  afterAll(() => p.close());

  test("idle_transaction_timeout counts from the server's last ReadyForQuery, not the client's last message", async () => {
    const c = await p.session();
    await exchange(c, [query('begin')]);
    await exchange(c, [query('select pg_sleep(1.3)')]);
    await new Promise((r) => setTimeout(r, 400));
    const got = await exchange(c, [query('select 1')]);
    expect(errors(got)).toEqual([]);
    await c.waitClosed(4_000);
    expect(c.error()).toMatchObject({ S: 'FATAL', M: 'idle transaction timeout' });
  });

  test('clients and servers are numbered from one counter; server_lifetime = 0 closes a connection after its client', async () => {
    const pids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await p.session();
      const got = await exchange(c, [query('select pg_backend_pid()')]);
      pids.push(text(got.find((m) => m.type === 'D')!)!);
      const session = p.proxy.sessions().find((s) => s.pooled?.server)!;
      expect(session.pooled!.server!.id).toBeGreaterThan(session.id);
      const ids = p.proxy.sessions().map((s) => s.id);
      expect(ids).not.toContain(session.pooled!.server!.id);
      c.write(Buffer.from([0x58, 0, 0, 0, 4]));
      await c.waitClosed();
    }
    expect(pids[0]).not.toBe(pids[1]);
  });
});

const pid = async (c: pg.Client) => (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0].pid;

/**
 * Opens a transaction on another client over the server connection with backend `pid` (pool of two: at most
 * two tries), so that the next transaction of anyone else lands on the other one. Returns the holder.
 */
async function hold(p: Pooled, on: number): Promise<pg.Client> {
  const first = await p.pg();
  await first.query('begin');
  if ((await pid(first)) === on) return first;
  const second = await p.pg();
  await second.query('begin');
  expect(await pid(second)).toBe(on);
  await first.query('commit');
  await first.end();
  return second;
}

async function letGo(c: pg.Client): Promise<void> {
  await c.query('commit');
  await c.end();
}

/** Messages of a raw exchange by type. */
const rows = (ms: { type: string; bytes: Buffer }[]) =>
  ms.filter((m) => m.type === 'D').map((m) => readDataRow(m.bytes).map((v) => v?.toString() ?? null));

describe('SQL PREPARE, EXECUTE and DEALLOCATE follow the client, in one namespace with the protocol, without a pin', () => {
  let p: Pooled;
  let admin: pg.Client;
  const app = appName('sql-prepare');
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 2, max_prepared_statements: 10, admin_users: 'trust_user' });
    admin = await p.pg(appName('sql-prepare-console'), 'pgbouncer');
  });
  afterAll(async () => {
    await admin.end();
    await p.close();
  });

  const pinned = async () =>
    (await admin.query<{ application_name: string; pinned: string }>('SHOW CLIENTS')).rows.find((r) => r.application_name === app)?.pinned;

  test('PREPARE with parameter types in one transaction, EXECUTE in a later one on another server connection', async () => {
    const a = await p.pg(app);
    await a.query('begin');
    await a.query('prepare typed(numeric, text) as select pg_typeof($1)::text as t1, $2 || $1 as s, pg_backend_pid() as pid');
    const first = await pid(a);
    await a.query('commit');
    // Once the statement was read back after the transaction, the client holds no server connection.
    await expect.poll(pinned).toBe('');
    const holder = await hold(p, first);
    const r = (await a.query('execute typed(1, $$x$$)')).rows[0];
    // The types as written: numeric, not the integer a literal 1 would infer.
    expect(r).toMatchObject({ t1: 'numeric', s: 'x1' });
    expect(r.pid).not.toBe(first);
    await letGo(holder);
    // Back on the first connection, and the second again: the same statement everywhere.
    for (let i = 0; i < 4; i++) expect((await a.query(`execute typed(${i}.5, 'y')`)).rows[0]).toMatchObject({ t1: 'numeric', s: `y${i}.5` });
    await expect.poll(pinned).toBe('');
    expect(p.proxy.sessions().find((x) => x.context?.applicationName === app)?.pooled?.pins.size).toBe(0);
    await a.end();
  });

  test('a statement the protocol prepared runs by SQL EXECUTE, and one SQL prepared by a Bind of its name', async () => {
    const a = await p.pg(app);
    // node-postgres: Parse with a name, then Bind.
    const named = await a.query({ name: 'proto_stmt', text: 'select $1::int * 3 as v, pg_backend_pid() as pid', values: [2] });
    expect(named.rows[0].v).toBe(6);
    const holder = await hold(p, named.rows[0].pid);
    const r = (await a.query('execute proto_stmt(5)')).rows[0];
    expect(r.v).toBe(15);
    expect(r.pid).not.toBe(named.rows[0].pid);
    await letGo(holder);
    await a.end();

    // SQL PREPARE, then the protocol's Bind of that name (a raw client: drivers bind only names they parsed).
    const c = await p.session();
    let got = await exchange(c, [query('prepare sql_stmt(int) as select $1 + 100, pg_backend_pid()')]);
    expect(errors(got)).toEqual([]);
    got = await exchange(c, [query('select pg_backend_pid()')]);
    const where = Number(rows(got)[0][0]);
    const holder2 = await hold(p, where);
    got = await exchange(c, [bind('', 'sql_stmt', [Buffer.from('7')]), execute(''), SYNC]);
    expect(errors(got)).toEqual([]);
    const [[v, backend]] = rows(got);
    expect(v).toBe('107');
    expect(Number(backend)).not.toBe(where);
    // Describe of the statement too: its parameter type is the one PREPARE gave (int4).
    got = await exchange(c, [frontend('D', 'Ssql_stmt\0'), SYNC]);
    const t = got.find((m) => m.type === 't')!;
    expect(t.bytes.readInt16BE(5)).toBe(1);
    expect(t.bytes.readUInt32BE(7)).toBe(23);
    await letGo(holder2);
    c.destroy();
  });

  test('DEALLOCATE forgets a statement wherever it was prepared, of the protocol or SQL; DEALLOCATE ALL all of them', async () => {
    const a = await p.pg(app);
    await a.query({ name: 'gone_proto', text: 'select 1 as v' });
    await a.query('prepare gone_sql as select 2 as v');
    const first = await pid(a);
    const holder = await hold(p, first);
    await a.query('deallocate gone_proto');
    await a.query('deallocate gone_sql');
    await letGo(holder);
    for (let i = 0; i < 3; i++) {
      await expect(a.query('execute gone_sql')).rejects.toThrow('prepared statement "gone_sql" does not exist');
      await expect(a.query('execute gone_proto')).rejects.toThrow('prepared statement "gone_proto" does not exist');
    }
    // Prepared again under the same names, with other text: the new ones run, on either connection.
    await a.query('prepare gone_sql as select 3 as v');
    await a.query('prepare gone_proto as select 4 as v');
    for (let i = 0; i < 3; i++) expect((await a.query('execute gone_sql')).rows[0].v + (await a.query('execute gone_proto')).rows[0].v).toBe(7);
    await a.query('deallocate all');
    await expect(a.query('execute gone_sql')).rejects.toThrow('does not exist');
    // A failed PREPARE (a name in use) leaves the statement as it was.
    await a.query('prepare dup as select 5 as v');
    await expect(a.query('prepare dup as select 6 as v')).rejects.toThrow('prepared statement "dup" already exists');
    const h = await hold(p, await pid(a));
    expect((await a.query('execute dup')).rows[0].v).toBe(5);
    await letGo(h);
    await a.end();
  });

  test('the same name in two clients means each its own statement; nothing of a client stays behind on the server connections', async () => {
    const clients = await Promise.all(Array.from({ length: 6 }, () => p.pg(app)));
    await Promise.all(
      clients.map(async (c, i) => {
        await c.query(`prepare mine(int) as select $1 + ${i * 1000} as v`);
        for (let k = 0; k < 5; k++) {
          expect((await c.query(`execute mine(${k})`)).rows[0].v).toBe(k + i * 1000);
          expect((await c.query({ name: 'mine2', text: `select ${i} as who` })).rows[0].who).toBe(i);
        }
        await c.query('deallocate mine');
      }),
    );
    await Promise.all(clients.map((c) => c.end()));
    // Each server connection, when next lent: no statement of a client under the client's own name.
    const probes = await Promise.all([p.pg(), p.pg()]);
    await Promise.all(probes.map((c) => c.query('begin')));
    for (const c of probes) {
      const left = await c.query(`select name from pg_prepared_statements where name !~ '^PGST_'`);
      expect(left.rows).toEqual([]);
    }
    await Promise.all(probes.map((c) => letGo(c)));
  });

  test("within the transaction of a SQL PREPARE, the protocol's Parse, Bind and Close of that name go to the server as they are", async () => {
    const c = await p.session();
    await exchange(c, [query('begin')]);
    await exchange(c, [query('prepare u as select 11')]);
    // The server, which holds the SQL's statement, answers: the name is taken.
    let got = await exchange(c, [parse('u', 'select 12'), SYNC]);
    expect(errors(got).join()).toContain('prepared statement "u" already exists');
    await exchange(c, [query('rollback')]);
    got = await exchange(c, [query('select pg_backend_pid()')]);
    const holder = await hold(p, Number(rows(got)[0][0]));
    // Read back after the transaction: the SQL's statement, bound on the other connection.
    got = await exchange(c, [bind('', 'u', []), execute(''), SYNC]);
    expect(rows(got)).toEqual([['11']]);
    await letGo(holder);
    // Closed by the protocol in the transaction that made it: gone there and after.
    await exchange(c, [query('begin')]);
    await exchange(c, [query('prepare v as select 13')]);
    got = await exchange(c, [close('S', 'v'), SYNC]);
    expect(errors(got)).toEqual([]);
    await exchange(c, [query('commit')]);
    got = await exchange(c, [query('execute v')]);
    expect(errors(got).join()).toContain('prepared statement "v" does not exist');
    c.destroy();
  });

  test('EXECUTE from a Parse (extended protocol, as psycopg and asyncpg send SQL) and PREPARE inside a transaction', async () => {
    const a = await p.pg(app);
    await a.query('prepare via_parse(int) as select $1 * 10 as v');
    const holder = await hold(p, await pid(a));
    // Parse/Bind/Execute: EXECUTE in an unnamed Parse's text.
    expect((await a.query({ text: 'execute via_parse(4)', queryMode: 'extended' } as pg.QueryConfig)).rows[0].v).toBe(40);
    await letGo(holder);
    await a.query('begin');
    await a.query('prepare in_tx as select 9 as v');
    expect((await a.query('execute in_tx')).rows[0].v).toBe(9);
    await a.query('rollback'); // PREPARE is not transactional: the statement stays, as in PostgreSQL
    const h = await hold(p, await pid(a));
    expect((await a.query('execute in_tx')).rows[0].v).toBe(9);
    await letGo(h);
    await a.end();
  });
});

describe('a statement whose result type changed is prepared again (0A000) outside a transaction block', () => {
  let p: Pooled;
  const table = `pp_replan_${process.pid}`;
  beforeAll(async () => {
    // One server connection: the statement's stale copy is where the client runs it next.
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, max_prepared_statements: 10 });
    await adminQuery(
      `drop table if exists ${table}; create table ${table}(a int); insert into ${table} values (1); grant select on ${table} to trust_user`,
    );
  });
  afterAll(async () => {
    await p.close();
    await adminQuery(`drop table if exists ${table}`);
  });

  const alter = (col: string) => adminQuery(`alter table ${table} add column ${col} int default 7`);

  test('a named statement of the protocol: the next Bind outside a block gets the new columns, not the error', async () => {
    const a = await p.pg();
    const q = { name: 'replan_proto', text: `select * from ${table}` };
    expect((await a.query(q)).rows).toEqual([{ a: 1 }]);
    await alter('b');
    expect((await a.query(q)).rows).toEqual([{ a: 1, b: 7 }]);
    // Another client sharing the statement (same text) finds it fresh too.
    const other = await p.pg();
    expect((await other.query({ name: 'x', text: q.text })).rows).toEqual([{ a: 1, b: 7 }]);
    await other.end();
    // Inside a transaction block the client gets PostgreSQL's error; after the rollback it runs again.
    await alter('c');
    await a.query('begin');
    await expect(a.query(q)).rejects.toMatchObject({ code: '0A000', message: 'cached plan must not change result type' });
    await a.query('rollback');
    expect((await a.query(q)).rows).toEqual([{ a: 1, b: 7, c: 7 }]);
    await a.end();
  });

  test('SQL EXECUTE of a PREPAREd statement: run again with the new columns; inside a block the error', async () => {
    const a = await p.pg();
    await a.query(`prepare replan_sql as select * from ${table}`);
    const before = (await a.query('execute replan_sql')).rows[0];
    await alter('d');
    expect((await a.query('execute replan_sql')).rows[0]).toEqual({ ...before, d: 7 });
    await alter('e');
    await a.query('begin');
    await expect(a.query('execute replan_sql')).rejects.toMatchObject({ code: '0A000' });
    await a.query('rollback');
    expect((await a.query('execute replan_sql')).rows[0]).toEqual({ ...before, d: 7, e: 7 });
    await alter('f');
    expect((await a.query('execute replan_sql')).rows[0]).toMatchObject({ f: 7 });
    await a.end();
  });

  test('pipelined exchanges after the failing one, or work before it in its exchange: the error, not a retry', async () => {
    const c = await p.session();
    await exchange(c, [parse('pipe', `select * from ${table}`), bind('', 'pipe', []), execute(''), SYNC]);
    await alter('g');
    // Two exchanges in one write: the first's error cannot be run again behind the second.
    let got = await exchange(c, [bind('', 'pipe', []), execute(''), SYNC, query('select 42')], 2);
    expect(errors(got).join()).toContain('cached plan must not change result type');
    expect(rows(got)).toEqual([['42']]);
    // Recovered once alone: the new columns.
    got = await exchange(c, [bind('', 'pipe', []), execute(''), SYNC]);
    expect(errors(got)).toEqual([]);
    expect(rows(got)[0]).toHaveLength(7); // a, b ... g
    // An Execute before the Bind in the same exchange: its work would be lost to the retry.
    await alter('h');
    got = await exchange(c, [parse('', 'select 1'), bind('', '', []), execute(''), bind('', 'pipe', []), execute(''), SYNC]);
    expect(errors(got).join()).toContain('cached plan must not change result type');
    // Flushed before its Sync: the client may wait for the answer before it syncs, so it gets the error now.
    await alter('i');
    const from = c.messages.length;
    c.write(Buffer.concat([bind('', 'pipe', []), execute(''), frontend('H')]));
    await c.until(() => c.messages.slice(from).some((m) => m.type === 'E'), 5_000, 'the error before the Sync');
    await exchange(c, [SYNC]);
    expect(errors(c.messages.slice(from)).join()).toContain('cached plan must not change result type');
    c.destroy();
  });
});

describe('0A000 at a Describe of the statement, outside a transaction block: prepared again, the exchange run again', () => {
  let p: Pooled;
  const table = `pp_replan_d_${process.pid}`;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, max_prepared_statements: 10 });
    await adminQuery(
      `drop table if exists ${table}; create table ${table}(a int); insert into ${table} values (1); grant select on ${table} to trust_user`,
    );
  });
  afterAll(async () => {
    await p.close();
    await adminQuery(`drop table if exists ${table}`);
  });

  const alter = (col: string) => adminQuery(`alter table ${table} add column ${col} int default 7`);
  const describeS = (name: string) => frontend('D', `S${name}\0`);
  const describeP = (name: string) => frontend('D', `P${name}\0`);
  /** Columns of the exchange's RowDescriptions. */
  const columns = (ms: { type: string; bytes: Buffer }[]) => ms.filter((m) => m.type === 'T').map((m) => m.bytes.readInt16BE(5));

  test('Describe S alone (pgx, asyncpg), and Describe S then Bind, Describe P, Execute: the new columns, not the error', async () => {
    const c = await p.session();
    await exchange(c, [parse('dsc', `select * from ${table}`), SYNC]);
    await alter('b');
    let got = await exchange(c, [describeS('dsc'), SYNC]);
    expect(errors(got)).toEqual([]);
    expect(got.map((m) => m.type).join('')).toBe('tTZ');
    expect(columns(got)).toEqual([2]);
    await alter('c');
    got = await exchange(c, [describeS('dsc'), bind('', 'dsc', []), describeP(''), execute(''), SYNC]);
    expect(errors(got)).toEqual([]);
    expect(got.map((m) => m.type).join('')).toBe('tT2TDCZ');
    expect(columns(got)).toEqual([3, 3]);
    expect(rows(got)).toEqual([['1', '7', '7']]);
    // A Bind of the statement afterwards finds its copy fresh.
    got = await exchange(c, [bind('', 'dsc', []), execute(''), SYNC]);
    expect(rows(got)).toEqual([['1', '7', '7']]);
    c.destroy();
  });

  test("a Parse the proxy answers itself (another client's copy, stale) then Describe S: no error on the client's Parse", async () => {
    const a = await p.session();
    await exchange(a, [parse('first', `select *, 1 as one from ${table}`), SYNC]);
    await alter('d');
    const b = await p.session();
    const got = await exchange(b, [parse('second', `select *, 1 as one from ${table}`), describeS('second'), SYNC]);
    expect(errors(got)).toEqual([]);
    expect(got.map((m) => m.type).join('')).toBe('1tTZ');
    a.destroy();
    b.destroy();
  });

  test('inside a transaction block, or with work before it in its exchange, the client gets the error', async () => {
    const c = await p.session();
    await exchange(c, [parse('dsc2', `select * from ${table}`), SYNC]);
    await alter('e');
    await exchange(c, [query('begin')]);
    let got = await exchange(c, [describeS('dsc2'), SYNC]);
    expect(errors(got).join()).toContain('cached plan must not change result type');
    await exchange(c, [query('rollback')]);
    got = await exchange(c, [parse('', 'select 1'), bind('', '', []), execute(''), describeS('dsc2'), SYNC]);
    expect(errors(got).join()).toContain('cached plan must not change result type');
    // Alone again: recovered.
    got = await exchange(c, [describeS('dsc2'), SYNC]);
    expect(errors(got)).toEqual([]);
    c.destroy();
  });
});

describe('an SQL EXECUTE as the text of a named protocol statement runs on whichever server connection it lands', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 2, max_prepared_statements: 10 });
  });
  afterAll(() => p.close());

  test('of a statement SQL PREPAREd, and of one the protocol prepared', async () => {
    const a = await p.pg();
    await a.query('prepare s1(int) as select $1 * 2 as v, pg_backend_pid() as pid');
    const first = (await a.query({ name: 'p1', text: 'execute s1(21)' })).rows[0];
    expect(first.v).toBe(42);
    const holder = await hold(p, first.pid);
    const other = (await a.query({ name: 'p1', text: 'execute s1(21)' })).rows[0];
    expect(other).toMatchObject({ v: 42 });
    expect(other.pid).not.toBe(first.pid);
    // The protocol's own statement, EXECUTEd from another named statement on the connection held before.
    const proto = (await a.query({ name: 's2', text: 'select $1::int + 1 as v, pg_backend_pid() as pid', values: [1] })).rows[0];
    expect(proto.v).toBe(2);
    await letGo(holder);
    const holder2 = await hold(p, proto.pid);
    const r = (await a.query({ name: 'p2', text: 'execute s2(9)' })).rows[0];
    expect(r.v).toBe(10);
    expect(r.pid).not.toBe(proto.pid);
    await letGo(holder2);
    // Both named statements on both connections, a few times over.
    for (let i = 0; i < 4; i++) {
      expect((await a.query({ name: 'p1', text: 'execute s1(21)' })).rows[0].v).toBe(42);
      expect((await a.query({ name: 'p2', text: 'execute s2(9)' })).rows[0].v).toBe(10);
    }
    await a.end();
  });

  test('two clients, the same named statement text, each its own EXECUTEd statement of that name', async () => {
    const clients = await Promise.all([p.pg(), p.pg(), p.pg()]);
    await Promise.all(clients.map((c, i) => c.query(`prepare mine as select ${i} as who`)));
    for (let k = 0; k < 4; k++) {
      const got = await Promise.all(clients.map(async (c) => (await c.query({ name: 'runs_mine', text: 'execute mine' })).rows[0].who));
      expect(got).toEqual([0, 1, 2]);
    }
    await Promise.all(clients.map((c) => c.end()));
  });

  test('a Describe of the statement on another connection, and the EXECUTEd name deallocated', async () => {
    const c = await p.session();
    await exchange(c, [query('prepare s3 as select 5 as five, pg_backend_pid()')]);
    let got = await exchange(c, [parse('p3', 'execute s3'), SYNC]);
    expect(errors(got)).toEqual([]);
    got = await exchange(c, [query('select pg_backend_pid()')]);
    const holder = await hold(p, Number(rows(got)[0][0]));
    got = await exchange(c, [frontend('D', 'Sp3\0'), bind('', 'p3', []), execute(''), SYNC]);
    expect(errors(got)).toEqual([]);
    expect(got.filter((m) => m.type === 'T').map((m) => m.bytes.readInt16BE(5))).toEqual([2]);
    expect(rows(got)[0][0]).toBe('5');
    await letGo(holder);
    await exchange(c, [query('deallocate s3')]);
    got = await exchange(c, [bind('', 'p3', []), execute(''), SYNC]);
    expect(errors(got).join()).toContain('prepared statement "s3" does not exist');
    c.destroy();
  });
});

describe('SQL PREPARE in a client encoding other than UTF-8 follows the client byte for byte', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 2, max_prepared_statements: 10 });
  });
  afterAll(() => p.close());

  async function session(encoding: string): Promise<RawClient> {
    const c = await RawClient.open(p.proxy.address.port);
    c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: appName('pooled-latin1'), client_encoding: encoding }));
    await c.waitFor('Z');
    c.messages.length = 0;
    return c;
  }
  const latin1 = (s: string) => Buffer.from(s, 'latin1');
  const values = (ms: { type: string; bytes: Buffer }[]) =>
    ms.filter((m) => m.type === 'D').map((m) => readDataRow(m.bytes).map((v) => v?.toString('latin1')));

  test('LATIN1: the PREPARE read back and replayed on another server connection gives the same bytes', async () => {
    const c = await session('LATIN1');
    let got = await exchange(c, [
      query(latin1("prepare lat(text) as select 'caf\xe9 \xe0 ' || $1 as v, length('caf\xe9') as n, pg_backend_pid() as pid")),
    ]);
    expect(errors(got)).toEqual([]);
    got = await exchange(c, [query(latin1("execute lat('\xfc')"))]);
    const [[v, n, where]] = values(got);
    expect([v, n]).toEqual(['caf\xe9 \xe0 \xfc', '4']);
    const holder = await hold(p, Number(where));
    got = await exchange(c, [query(latin1("execute lat('\xfc')"))]);
    expect(errors(got)).toEqual([]);
    const [[v2, n2, where2]] = values(got);
    expect([v2, n2]).toEqual([v, n]);
    expect(where2).not.toBe(where);
    // The protocol's Bind of it there too.
    got = await exchange(c, [bind('', 'lat', [latin1('\xdf')]), execute(''), SYNC]);
    expect(values(got).map((r) => r.slice(0, 2))).toEqual([['caf\xe9 \xe0 \xdf', '4']]);
    await letGo(holder);
    expect(p.proxy.sessions().find((s) => s.pooled?.statements.get('lat'))?.pooled?.pins.size).toBe(0);
    c.destroy();
  });

  test('the same bytes from a LATIN1 and a UTF-8 client are two statements: each its own text', async () => {
    const text = Buffer.from("select length('\u00e9') as n, '\u00e9' as v", 'utf8'); // in LATIN1: two characters, Ã©
    const l = await session('LATIN1');
    const u = await session('UTF8');
    for (let i = 0; i < 3; i++) {
      for (const [c, n] of [
        [l, '2'],
        [u, '1'],
      ] as const) {
        const got = await exchange(c, [...(i === 0 ? [parse('enc', text)] : []), bind('', 'enc', []), execute(''), SYNC]);
        expect(errors(got)).toEqual([]);
        expect(values(got)).toEqual([[n, '\xc3\xa9']]);
      }
    }
    l.destroy();
    u.destroy();
  });
});
