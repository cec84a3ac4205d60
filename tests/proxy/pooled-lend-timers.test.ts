// Lending (pooled-session.ts) and the pooler's timers and console: while a client's transaction-pooled
// connection is lent to the native relay, client_idle_timeout, idle_transaction_timeout, query_timeout,
// server_lifetime and SUSPEND/RESUME must act as they do on a connection JS holds (pgBouncer's janitor and
// admin commands). Real clients through the real proxy against the real cluster; each case first checks the
// connection is lent, so it tests the relay's side and not the plain JS path.
import { describe, expect, test } from 'vitest';
import pg from 'pg';
import type { PoolingEnv } from '../../proxy/pooling.js';
import { loadNativeRelay } from '../../proxy/relay.js';
import type { ProxyServer } from '../../proxy/server.js';
import { adminQuery, appName, eventually, startPoolingProxy, testDb } from './helpers.js';

interface Pooled {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  url(database?: string): string;
  close(): Promise<void>;
}

/** A transaction pooler with the native relay and one server connection, plus the given settings. */
async function pooledProxy(pgbouncer: Record<string, string | number>, userSettings?: string): Promise<Pooled> {
  const r = testDb().roles.scram;
  const { proxy, pooling, closeConsole } = await startPoolingProxy({
    authType: 'scram-sha-256',
    user: r.user,
    password: r.password,
    pgbouncer: { admin_users: r.user, pool_mode: 'transaction', default_pool_size: 1, max_client_conn: 50, ...pgbouncer },
    users: userSettings === undefined ? undefined : { [r.user]: userSettings },
    proxy: { nativeRelay: 'on' },
  });
  return {
    proxy,
    pooling,
    url: (database = 'postgres') =>
      `postgres://${encodeURIComponent(r.user)}:${encodeURIComponent(r.password)}@127.0.0.1:${proxy.address.port}/${database}`,
    async close() {
      await proxy.close(0);
      pooling.pooler.close();
      closeConsole();
    },
  };
}

/** A client that records how its connection ended: the server's error (pgBouncer's FATAL) and the close. */
interface Watched {
  c: pg.Client;
  errors: Error[];
  ended: () => boolean;
}

async function connect(p: Pooled, app?: string, database = 'postgres'): Promise<Watched> {
  const c = new pg.Client({ connectionString: p.url(database), application_name: app });
  const errors: Error[] = [];
  let ended = false;
  c.on('error', (e) => errors.push(e));
  c.on('end', () => (ended = true));
  await c.connect();
  return { c, errors, ended: () => ended };
}

const pool = (p: Pooled) => [...p.pooling.pooler.pools()][0];
const pid = async (c: pg.Client): Promise<number> => (await c.query('select pg_backend_pid() as pid')).rows[0].pid;

/** Two queries: the first transaction end lends the connection, the second runs in the relay; then it must be lent. */
async function lent(p: Pooled, c: pg.Client): Promise<number> {
  await c.query('select 1');
  const id = await pid(c);
  expect(pool(p).lent.size).toBe(1);
  return id;
}

const alive = async (backend: number) => (await adminQuery('select 1 from pg_stat_activity where pid = $1', [backend])).length > 0;

describe.runIf(loadNativeRelay().relay !== null)('a lent connection meets the pooler timers and SUSPEND', () => {
  test('client_idle_timeout closes an idle lent client; its connection goes back to the pool for another', async () => {
    const p = await pooledProxy({ client_idle_timeout: 1 });
    try {
      const app = appName('lend-idle');
      const a = await connect(p, app);
      const backend = await lent(p, a.c);
      // Busy in the relay (no hand-off to JS) for longer than the limit: the relay's reads count as activity.
      const exits = p.proxy.stats().totals.relayExits;
      for (const until = Date.now() + 2_500; Date.now() < until;) {
        expect((await a.c.query('select 2 as v')).rows[0].v).toBe(2);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(p.proxy.stats().totals.relayExits).toBe(exits);
      expect(a.ended()).toBe(false);
      expect(pool(p).lent.size).toBe(1);
      await eventually(a.ended, 10_000, 'the idle client closed');
      expect(a.errors.map((e) => e.message).join()).toMatch(/client_idle_timeout/);
      expect(pool(p).lent.size).toBe(0);
      const admin = await connect(p, undefined, 'pgbouncer');
      try {
        const clients = (await admin.c.query('SHOW CLIENTS')).rows;
        expect(clients.filter((r) => r.application_name === app)).toEqual([]);
        const servers = (await admin.c.query('SHOW SERVERS')).rows.filter((r) => r.database === 'postgres');
        expect(servers.map((r) => [r.state, r.remote_pid])).toEqual([['idle', backend]]);
      } finally {
        await admin.c.end();
      }
      // Back in the pool, clean: the next client gets that very connection.
      const b = await connect(p);
      expect(await pid(b.c)).toBe(backend);
      expect((await b.c.query('select 5 as v')).rows[0].v).toBe(5);
      await b.c.end();
    } finally {
      await p.close();
    }
  });

  test('server_idle_timeout closes a lent connection idle past it; the client stays and gets a new one', async () => {
    const p = await pooledProxy({ server_idle_timeout: 1 });
    try {
      const a = await connect(p, appName('lend-server-idle'));
      const backend = await lent(p, a.c);
      await eventually(async () => !(await alive(backend)), 15_000, 'the idle lent connection closed');
      expect(a.ended()).toBe(false);
      expect(pool(p).lent.size).toBe(0);
      const next = await lent(p, a.c);
      expect(next).not.toBe(backend);
      expect((await a.c.query('select 7 as v')).rows[0].v).toBe(7);
      await a.c.end();
    } finally {
      await p.close();
    }
  });

  test('a [users] client_idle_timeout acts on that user\'s lent client, the global one being off', async () => {
    const p = await pooledProxy({ client_idle_timeout: 0 }, 'client_idle_timeout=1');
    try {
      const a = await connect(p, appName('lend-user-idle'));
      await lent(p, a.c);
      await eventually(a.ended, 10_000, 'the idle client closed');
      expect(a.errors.map((e) => e.message).join()).toMatch(/client_idle_timeout/);
      expect(pool(p).lent.size).toBe(0);
    } finally {
      await p.close();
    }
  });

  test('idle_transaction_timeout ends a client idle in a transaction block the relay runs; no transaction is left on the server', async () => {
    const p = await pooledProxy({ idle_transaction_timeout: 1 });
    try {
      const a = await connect(p, appName('lend-idle-tx'));
      const backend = await lent(p, a.c);
      const exits = p.proxy.stats().totals.relayExits;
      await a.c.query('begin');
      const xid = (await a.c.query('select txid_current() as x')).rows[0].x;
      // BEGIN ran in the relay: the connection is still lent, inside the block.
      expect(p.proxy.stats().totals.relayExits).toBe(exits);
      expect(pool(p).lent.size).toBe(1);
      // A statement longer than the limit is not idleness (the timer counts from the server's last ReadyForQuery).
      expect((await a.c.query('select pg_sleep(2), 9 as v')).rows[0].v).toBe(9);
      expect(a.ended()).toBe(false);
      await eventually(a.ended, 10_000, 'the client idle in its transaction closed');
      expect(a.errors.map((e) => e.message).join()).toMatch(/idle transaction timeout/);
      // The connection in a transaction is not reused: its backend goes, and with it the transaction.
      await eventually(async () => !(await alive(backend)), 10_000, 'the backend of the abandoned transaction gone');
      const b = await connect(p);
      // A simple query (one message): in a transaction of its own, now() is this statement's start.
      const r = (await b.c.query('select pg_backend_pid() as pid, now() = statement_timestamp() as fresh, txid_current_if_assigned() as assigned'))
        .rows[0];
      expect(r.pid).not.toBe(backend);
      expect(r.fresh).toBe(true);
      expect(r.assigned).toBeNull();
      expect((await b.c.query('select txid_status($1) as old', [xid])).rows[0].old).toBe('aborted');
      await b.c.end();
    } finally {
      await p.close();
    }
  });

  test('query_timeout ends a lent client whose query runs too long, and the statement stops on the server', async () => {
    const p = await pooledProxy({ query_timeout: 1 });
    try {
      const a = await connect(p, appName('lend-query-timeout'));
      await lent(p, a.c);
      // Quiet between transactions past the limit: the pool takes the connection back, the client stays.
      await eventually(() => pool(p).lent.size === 0, 10_000, 'the quiet lent connection taken back');
      expect(a.ended()).toBe(false);
      const backend = await lent(p, a.c);
      const exits = p.proxy.stats().totals.relayExits;
      const slow = a.c.query('select pg_sleep(30)');
      // The statement runs from the relay (no hand-off back yet) before the timer acts.
      await eventually(
        async () => (await adminQuery('select 1 from pg_stat_activity where pid = $1 and query like $2', [backend, '%pg_sleep(30)%'])).length > 0,
      );
      expect(p.proxy.stats().totals.relayExits).toBe(exits);
      await expect(slow).rejects.toThrow(/query timeout/);
      await eventually(a.ended, 10_000, 'the client closed');
      // pgBouncer cancels and closes the server connection: the sleep does not go on holding a backend.
      await eventually(
        async () => (await adminQuery('select 1 from pg_stat_activity where pid = $1 and state = $2', [backend, 'active'])).length === 0,
        10_000,
        'the sleep stopped',
      );
      const b = await connect(p);
      expect((await b.c.query('select 6 as v')).rows[0].v).toBe(6);
      await b.c.end();
    } finally {
      await p.close();
    }
  });

  test('server_lifetime: a lent connection past its lifetime is closed between transactions, never inside one; the client goes on', async () => {
    const p = await pooledProxy({ server_lifetime: 2 });
    try {
      const app = appName('lend-lifetime');
      const a = await connect(p, app);
      const first = await lent(p, a.c);
      await eventually(async () => (await pid(a.c)) !== first, 15_000, 'a new server connection');
      await eventually(async () => !(await alive(first)), 10_000, 'the old backend closed');
      const second = await pid(a.c);
      expect(pool(p).lent.size).toBe(1);
      // The client's own startup parameter follows it to the new connection.
      expect((await a.c.query(`select current_setting('application_name') as app`)).rows[0].app).toBe(app);
      const admin = await connect(p, undefined, 'pgbouncer');
      try {
        const servers = (await admin.c.query('SHOW SERVERS')).rows.filter((r) => r.database === 'postgres');
        expect(servers.map((r) => r.remote_pid)).toEqual([second]);
      } finally {
        await admin.c.end();
      }
      // Inside a transaction block the connection outlives its lifetime until the block ends.
      const exits = p.proxy.stats().totals.relayExits;
      await a.c.query('begin');
      const xid = (await a.c.query('select txid_current() as x')).rows[0].x;
      expect(p.proxy.stats().totals.relayExits).toBe(exits);
      expect(pool(p).lent.size).toBe(1);
      await eventually(() => pool(p).lent.size === 0, 15_000, 'the lent connection taken back at its lifetime');
      expect(await pid(a.c)).toBe(second);
      expect((await a.c.query('select txid_current() as x')).rows[0].x).toBe(xid);
      await a.c.query('commit');
      const third = await pid(a.c);
      expect(third).not.toBe(second);
      await eventually(async () => !(await alive(second)), 10_000, 'the expired backend closed');
      expect((await a.c.query('select 8 as v')).rows[0].v).toBe(8);
      expect(a.errors).toEqual([]);
      await a.c.end();
    } finally {
      await p.close();
    }
  });

  test('SUSPEND with a lent client: its next query waits, and RESUME runs it with the right result', async () => {
    const p = await pooledProxy({});
    try {
      const admin = await connect(p, undefined, 'pgbouncer');
      const a = await connect(p, appName('lend-suspend'));
      await lent(p, a.c);
      await admin.c.query('SUSPEND');
      expect(pool(p).lent.size).toBe(0);
      let done = false;
      const q = a.c.query('select $1::int * 3 as v', [7]).finally(() => (done = true));
      // The query is held: the client waits for the suspended pool, no answer came.
      await eventually(() => pool(p).waiters.length === 1, 5_000, 'the client waiting');
      expect(done).toBe(false);
      expect((await admin.c.query('SHOW STATE')).rows).toContainEqual({ key: 'suspended', value: 'yes' });
      await admin.c.query('RESUME');
      expect((await q).rows[0].v).toBe(21);
      expect((await a.c.query('select 4 as v')).rows[0].v).toBe(4);
      expect(a.errors).toEqual([]);
      await a.c.end();
      await admin.c.end();
    } finally {
      await p.close();
    }
  });
});
