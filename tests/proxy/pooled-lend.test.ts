// Lending (pooled-session.ts): in transaction mode a client whose transaction ends while nobody waits keeps
// its server connection, in the native relay, until the pool needs it back. Real clients through the real
// proxy against the real cluster: the relay runs the transactions (its counters say so), a second client is
// served through reclaim with a pool of one, settings never leak, and what the pooler must see leaves the relay.
import { connect as netConnect } from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import type { PoolingEnv } from '../../proxy/pooling.js';
import { cancelRequest } from '../../proxy/protocol.js';
import { loadNativeRelay } from '../../proxy/relay.js';
import type { ProxyServer } from '../../proxy/server.js';
import { eventually, startPoolingProxy, testDb } from './helpers.js';

interface Pooled {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  url(database?: string): string;
  closeConsole(): void;
}

async function pooledProxy(pgbouncer: Record<string, string | number>): Promise<Pooled> {
  const db = testDb();
  const r = db.roles.scram;
  const { proxy, pooling, closeConsole } = await startPoolingProxy({
    authType: 'scram-sha-256', user: r.user, password: r.password, pgbouncer: { admin_users: r.user, ...pgbouncer }, proxy: { nativeRelay: 'on' },
  });
  return {
    proxy,
    pooling,
    url: (database = 'postgres') => `postgres://${encodeURIComponent(r.user)}:${encodeURIComponent(r.password)}@127.0.0.1:${proxy.address.port}/${database}`,
    closeConsole,
  };
}

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => {});
  await c.connect();
  return c;
}

/** A CancelRequest with the key the proxy gave this client, on a connection of its own. */
function cancel(p: Pooled, c: pg.Client): Promise<void> {
  const key = c as unknown as { processID: number; secretKey: number };
  const secret = Buffer.alloc(4);
  secret.writeInt32BE(key.secretKey);
  return new Promise((resolve) => {
    const s = netConnect(p.proxy.address.port, '127.0.0.1', () => s.end(cancelRequest(key.processID, secret)));
    s.on('close', () => resolve());
    s.on('error', () => resolve());
  });
}

const pool = (p: Pooled) => [...p.pooling.pooler.pools()][0];

describe.runIf(loadNativeRelay().relay !== null)('lending a transaction-pooled connection to the native relay', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, max_client_conn: 50 });
  });
  afterAll(async () => {
    await p.proxy.close(0);
    p.pooling.pooler.close();
    p.closeConsole();
  });

  test('transactions run in the relay, counted in SHOW STATS terms', async () => {
    const a = await connect(p.url());
    await a.query('select 1');
    const before = p.proxy.stats().totals.relayStarts;
    const stats0 = { ...pool(p).stats };
    for (let i = 0; i < 20; i++) {
      const r = await a.query('select $1::int + 1 as v', [i]);
      expect(r.rows[0].v).toBe(i + 1);
    }
    const totals = p.proxy.stats().totals;
    // One hand-off carried all twenty (the client kept its connection: nobody waited).
    expect(totals.relayStarts - before).toBeLessThanOrEqual(1);
    expect(pool(p).lent.size).toBe(1);
    pool(p).syncLent();
    const st = pool(p).stats;
    expect(st.xactCount - stats0.xactCount).toBe(20);
    expect(st.queryCount - stats0.queryCount).toBe(20);
    expect(st.bytesReceived).toBeGreaterThan(stats0.bytesReceived);
    expect(st.bytesSent).toBeGreaterThan(stats0.bytesSent);
    await a.end();
  });

  test('a second client is served with a pool of one: the lent connection is reclaimed, nothing leaks', async () => {
    const a = await connect(p.url());
    const b = await connect(p.url());
    await a.query(`set application_name = 'lend-a'`);
    await a.query('select 1');
    for (let i = 0; i < 10; i++) {
      const [ra, rb] = await Promise.all([
        a.query(`select current_setting('application_name') as app, pg_backend_pid() as pid`),
        b.query(`select current_setting('application_name') as app, pg_backend_pid() as pid`),
      ]);
      expect(ra.rows[0].app).toBe('lend-a');
      expect(rb.rows[0].app).not.toBe('lend-a');
      expect(ra.rows[0].pid).toBe(rb.rows[0].pid); // one server connection, taking turns
    }
    // Sequential: the idle lent connection goes to the other client at once.
    for (let i = 0; i < 5; i++) {
      expect((await b.query(`select current_setting('application_name') as app`)).rows[0].app).not.toBe('lend-a');
      expect((await a.query(`select current_setting('application_name') as app`)).rows[0].app).toBe('lend-a');
    }
    await Promise.all([a.end(), b.end()]);
  });

  test('a SET inside a lent session goes to JS and follows the client', async () => {
    const a = await connect(p.url());
    await a.query('select 1');
    await a.query('select 2');
    expect(pool(p).lent.size).toBe(1);
    const exits = p.proxy.stats().totals.relayExits;
    await a.query(`set search_path = lend_schema, public`);
    expect(p.proxy.stats().totals.relayExits).toBeGreaterThan(exits);
    const b = await connect(p.url());
    expect((await b.query(`select current_setting('search_path') as sp`)).rows[0].sp).not.toBe('lend_schema, public');
    expect((await a.query(`select current_setting('search_path') as sp`)).rows[0].sp).toBe('lend_schema, public');
    await Promise.all([a.end(), b.end()]);
  });

  test('a transaction block runs in the relay; a waiter gets the connection at its end', async () => {
    const a = await connect(p.url());
    await a.query('select 1');
    await a.query('begin');
    await a.query('create temp table if not exists never_here (x int) on commit drop');
    const b = await connect(p.url());
    const bDone = b.query('select 42 as v');
    await new Promise((r) => setTimeout(r, 100));
    expect(pool(p).waiters.length).toBe(1); // a is inside its transaction: b waits
    await a.query('commit');
    expect((await bDone).rows[0].v).toBe(42);
    await Promise.all([a.end(), b.end()]);
  });

  test('SHOW POOLS, SERVERS and STATS: a lent connection is idle between transactions, active inside one, its transactions counted', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const poolRow = async () => (await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres');
    const xacts = async () => Number((await admin.query('SHOW STATS')).rows.find((r) => r.database === 'postgres').total_xact_count);
    const a = await connect(p.url());
    await a.query('select 1');
    await a.query('select 1');
    expect(pool(p).lent.size).toBe(1);
    const idle = await poolRow();
    expect([idle.sv_idle, idle.sv_active]).toEqual([1, 0]);
    const servers = (await admin.query('SHOW SERVERS')).rows.filter((r) => r.database === 'postgres');
    expect(servers.map((r) => [r.state, r.link])).toEqual([['idle', '']]);
    const before = await xacts();
    for (let i = 0; i < 7; i++) await a.query('select $1::int', [i]);
    expect((await xacts()) - before).toBe(7);
    await a.query('begin');
    const inTx = await poolRow();
    expect([inTx.sv_idle, inTx.sv_active]).toEqual([0, 1]);
    await a.query('commit');
    expect(pool(p).lent.size).toBe(1); // BEGIN and COMMIT ran in the relay too
    await a.end();
    await admin.end();
  });

  test('PAUSE takes a lent connection back and closes it; RESUME serves the client again', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const a = await connect(p.url());
    await a.query('select 1');
    await a.query('select 1');
    expect(pool(p).lent.size).toBe(1);
    await admin.query('PAUSE postgres');
    expect(pool(p).lent.size).toBe(0);
    expect(pool(p).size).toBe(0);
    const q = a.query('select 7 as v');
    await admin.query('RESUME postgres');
    expect((await q).rows[0].v).toBe(7);
    await a.end();
    await admin.end();
  });

  test('RECONNECT: a lent connection is closed and the client gets a new one', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const a = await connect(p.url());
    await a.query('select 1');
    const pid = (await a.query('select pg_backend_pid() as pid')).rows[0].pid;
    expect(pool(p).lent.size).toBe(1);
    await admin.query('RECONNECT postgres');
    await eventually(async () => (await a.query('select pg_backend_pid() as pid')).rows[0].pid !== pid);
    await a.end();
    await admin.end();
  });

  test('a cancel reaches the statement a lent connection runs in the relay', async () => {
    const a = await connect(p.url());
    await a.query('select 1');
    await a.query('select 1');
    expect(pool(p).lent.size).toBe(1);
    const slow = a.query('select pg_sleep(30)');
    await new Promise((r) => setTimeout(r, 200));
    await cancel(p, a);
    await expect(slow).rejects.toThrow(/cancel/);
    expect((await a.query('select 3 as v')).rows[0].v).toBe(3);
    await a.end();
  });
});
