// Pooling through real clients against the real cluster: transaction, statement and session mode from a
// pgbouncer.ini, server connections shared, prepared statements and settings following each client,
// pinning, limits and pgBouncer's errors.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import type { ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';
import { eventually, silentLogger, startTestProxy, testDb } from './helpers.js';

interface Pooled {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  url(user?: 'scram' | 'md5', database?: string): string;
}

/** A pooling proxy from an ini written for the test cluster. */
async function pooledProxy(pgbouncer: Record<string, string | number>, databases: Record<string, string> = {}, users: ('scram' | 'md5')[] = ['scram', 'md5']): Promise<Pooled> {
  const db = testDb();
  const dir = mkdtempSync(join(tmpdir(), 'pooling-'));
  const q = (s: string) => `"${s.replaceAll('"', '""')}"`;
  writeFileSync(join(dir, 'userlist.txt'), [
    ...users.map((u) => `${q(db.roles[u].user)} ${q(db.roles[u].password)}`),
    `"postgres" "postgres"`,
  ].join('\n') + '\n');
  const dbLines = { postgres: `host=${db.host} port=${db.port} dbname=postgres`, ...databases };
  writeFileSync(join(dir, 'pgbouncer.ini'), [
    '[databases]',
    ...Object.entries(dbLines).map(([k, v]) => `${k} = ${v}`),
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    'listen_port = 6432',
    'unix_socket_dir =',
    'auth_type = scram-sha-256',
    `auth_file = ${join(dir, 'userlist.txt')}`,
    ...Object.entries(pgbouncer).map(([k, v]) => `${k} = ${v}`),
  ].join('\n') + '\n');
  const config = loadPgBouncerConfig(join(dir, 'pgbouncer.ini'));
  const pooling = createPooling({ config, defaultTarget: parseUpstreamUrl(`postgres://${db.host}:${db.port}/?sslmode=disable`), logger: silentLogger });
  const proxy = await startTestProxy({ pooling });
  return {
    proxy,
    pooling,
    url(user = 'scram', database = 'postgres') {
      const r = db.roles[user];
      return `postgres://${encodeURIComponent(r.user)}:${encodeURIComponent(r.password)}@127.0.0.1:${proxy.address.port}/${database}`;
    },
  };
}

async function connect(url: string, extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url, ...extra });
  c.on('error', () => {});
  await c.connect();
  return c;
}

describe('transaction mode', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 3, max_client_conn: 600 });
  });
  afterAll(async () => {
    await p.proxy.close(0);
    p.pooling.pooler.close();
  });

  test('many clients share the pool: at most pool_size server connections, every answer right', async () => {
    const clients = await Promise.all(Array.from({ length: 30 }, () => connect(p.url())));
    const pids = new Set<number>();
    await Promise.all(
      clients.map(async (c, i) => {
        for (let k = 0; k < 5; k++) {
          const r = await c.query('select $1::int * 2 as v, pg_backend_pid() as pid', [i * 10 + k]);
          expect(r.rows[0].v).toBe((i * 10 + k) * 2);
          pids.add(r.rows[0].pid);
        }
      }),
    );
    expect(pids.size).toBeGreaterThan(0);
    expect(pids.size).toBeLessThanOrEqual(3);
    await Promise.all(clients.map((c) => c.end()));
  });

  test('named prepared statements follow each client across server connections', async () => {
    const clients = await Promise.all(Array.from({ length: 12 }, () => connect(p.url())));
    await Promise.all(
      clients.map(async (c, i) => {
        for (let k = 0; k < 6; k++) {
          // Same name, different text per client: identity is the text, never the client's name.
          const r = await c.query({ name: 'stmt', text: `select $1::int + ${i} as v`, values: [k] });
          expect(r.rows[0].v).toBe(k + i);
          const r2 = await c.query({ name: 'shared', text: 'select $1::text as t', values: [`c${i}`] });
          expect(r2.rows[0].t).toBe(`c${i}`);
        }
      }),
    );
    await Promise.all(clients.map((c) => c.end()));
  });

  test('SET follows the client; SET LOCAL and rolled-back SETs do not; nothing leaks to another client', async () => {
    const a = await connect(p.url());
    const b = await connect(p.url());
    await a.query(`set application_name = 'client-a'`);
    await a.query(`set search_path = a_schema, public`);
    await a.query('begin');
    await a.query(`set local statement_timeout = '7s'`);
    await a.query(`set extra_float_digits = 1`);
    await a.query('rollback');
    for (let i = 0; i < 8; i++) {
      // Other traffic moves connections between clients.
      await Promise.all([b.query('select 1'), a.query('select 1')]);
      const ra = await a.query(`select current_setting('application_name') as app, current_setting('search_path') as sp, current_setting('statement_timeout') as st, current_setting('extra_float_digits') as efd`);
      expect(ra.rows[0]).toEqual({ app: 'client-a', sp: 'a_schema, public', st: '0', efd: '1' });
      const rb = await b.query(`select current_setting('application_name') as app, current_setting('search_path') as sp`);
      expect(rb.rows[0].app).not.toBe('client-a');
      expect(rb.rows[0].sp).toBe('"$user", public');
    }
    await Promise.all([a.end(), b.end()]);
  });

  test('a temporary table pins the client to its server connection until it is dropped', async () => {
    const a = await connect(p.url());
    const others = await Promise.all(Array.from({ length: 4 }, () => connect(p.url())));
    await a.query('create temp table t_pin(x int)');
    const pinned = () => p.proxy.sessions().find((s) => s.pooled?.pins.size);
    expect(pinned()?.pooled?.pinReason).toBe('temp');
    for (let i = 0; i < 5; i++) {
      await Promise.all(others.map((o) => o.query('select 1')));
      await a.query('insert into t_pin values ($1)', [i]);
    }
    expect((await a.query('select count(*)::int as n from t_pin')).rows[0].n).toBe(5);
    await a.query('drop table t_pin');
    // The check runs after the client has its answer.
    await expect.poll(() => pinned()).toBeUndefined();
    await Promise.all([a.end(), ...others.map((o) => o.end())]);
  });

  test('a session advisory lock pins until it is unlocked', async () => {
    const a = await connect(p.url());
    await a.query('select pg_advisory_lock(4242)');
    const s = p.proxy.sessions().find((x) => x.pooled?.pins.has('advisory'));
    expect(s).toBeDefined();
    await a.query('select pg_advisory_unlock(4242)');
    await expect.poll(() => s!.pooled!.pins.size).toBe(0);
    await a.end();
  });

  test('no such database: pgBouncer\'s error', async () => {
    await expect(connect(p.url('scram', 'nosuchdb'))).rejects.toThrow('no such database: nosuchdb');
  });

  test('a wrong password is refused by the proxy itself', async () => {
    const u = new URL(p.url());
    u.password = 'wrong';
    // pgBouncer's words for a failed SCRAM exchange.
    await expect(connect(u.toString())).rejects.toThrow('SASL authentication failed');
  });
});

describe('auth_query', () => {
  test('a user missing from auth_file is looked up through auth_user, and its pool logs in with the secret found', async () => {
    const p = await pooledProxy({ pool_mode: 'transaction', auth_type: 'md5', auth_user: 'postgres' }, {}, ['scram']);
    try {
      const c = await connect(p.url('md5'));
      expect((await c.query('select current_user as u')).rows[0].u).toBe(testDb().roles.md5.user);
      await c.end();
      const u = new URL(p.url('md5'));
      u.password = 'wrong';
      await expect(connect(u.toString())).rejects.toThrow('password authentication failed');
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });

  test('as pgBouncer: a user it does not find gets "no such user"; one found with a NULL password passes trust only; a bad auth_dbname is a config error', async () => {
    const db = testDb();
    const md5 = db.roles.md5.user;
    // The md5 role is found, with a NULL password; nobody else is.
    const query = `SELECT usename, NULL::text FROM (VALUES ('${md5}'::text)) v(usename) WHERE usename = $1`;
    const outcome = (url: string) => connect(url).then((c) => c.end().then(() => 'logged in'), (e: Error) => e.message);
    for (const authType of ['trust', 'md5']) {
      const p = await pooledProxy({ auth_type: authType, auth_user: 'postgres', auth_query: query }, { badauth: `host=${db.host} port=${db.port} dbname=postgres auth_dbname=nosuchdb` }, ['scram']);
      try {
        const nobody = new URL(p.url('md5'));
        nobody.username = 'nobody';
        expect(await outcome(nobody.toString())).toBe('no such user');
        const found = await outcome(p.url('md5'));
        // trust: past the proxy's own authentication (the server's login may still want a password the pooler lacks).
        if (authType === 'trust') expect(found).not.toMatch(/authentication failed|no such user/);
        else expect(found).toBe('password authentication failed');
        expect(await outcome(p.url('md5', 'badauth'))).toBe('bouncer config error');
      } finally {
        await p.proxy.close(0);
        p.pooling.pooler.close();
      }
    }
  });
});

describe('statement mode and limits', () => {
  test('statement mode refuses transaction blocks', async () => {
    const p = await pooledProxy({ pool_mode: 'statement', default_pool_size: 2 });
    try {
      const c = await connect(p.url());
      expect((await c.query('select 41 + 1 as v')).rows[0].v).toBe(42);
      await expect(c.query('begin')).rejects.toThrow('transaction blocks not allowed in statement pooling mode');
      await c.end().catch(() => {});
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });

  test('max_client_conn: the client beyond it gets pgBouncer\'s error', async () => {
    const p = await pooledProxy({ pool_mode: 'transaction', max_client_conn: 2 });
    try {
      const a = await connect(p.url());
      const b = await connect(p.url());
      await expect(connect(p.url())).rejects.toThrow('no more connections allowed (max_client_conn)');
      await Promise.all([a.end(), b.end()]);
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });

  test('query_wait_timeout: a client that cannot get a connection in time is told so', async () => {
    const p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, query_wait_timeout: 1 });
    try {
      const holder = await connect(p.url());
      await holder.query('begin');
      await holder.query('select 1');
      const waiter = await connect(p.url());
      await expect(waiter.query('select 1')).rejects.toThrow('query_wait_timeout');
      await holder.query('commit');
      await holder.end();
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });
});

describe('server_reset_query_always and client_login_timeout', () => {
  test('in transaction mode the reset query runs after every transaction only with server_reset_query_always', async () => {
    // The reset query counts its runs on the server connection, in a setting of its own.
    const count = "select set_config('steadytext_test.resets', (coalesce(nullif(current_setting('steadytext_test.resets', true), ''), '0')::int + 1)::text, false)";
    for (const always of [0, 1]) {
      const p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, server_reset_query: count, server_reset_query_always: always });
      try {
        const a = await connect(p.url());
        const b = await connect(p.url());
        const seen: number[] = [];
        for (const c of [a, b, a, b]) {
          const r = await c.query("select coalesce(nullif(current_setting('steadytext_test.resets', true), ''), '0')::int as n");
          seen.push(r.rows[0].n as number);
        }
        const steps = seen.slice(1).map((n, i) => n - seen[i]);
        expect({ always, steps }).toEqual({ always, steps: always ? [1, 1, 1] : [0, 0, 0] });
        await Promise.all([a.end(), b.end()]);
      } finally {
        await p.proxy.close(0);
        p.pooling.pooler.close();
      }
    }
  });

  test('prepared statements (protocol and SQL) survive a reset after every transaction, whether the reset discards them or not', async () => {
    for (const reset of ['DISCARD ALL', 'DEALLOCATE ALL', 'select 1', 'RESET ALL']) {
      const p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, server_reset_query: reset, server_reset_query_always: 1 });
      try {
        const a = await connect(p.url());
        const b = await connect(p.url());
        for (const c of [a, b]) await c.query('prepare plus_one as select $1::int + 1 as v');
        for (let i = 0; i < 3; i++) {
          for (const c of [a, b]) {
            const r = await c.query({ name: 'twice', text: 'select $1::int * 2 as v', values: [i] });
            expect({ reset, v: r.rows[0].v }).toEqual({ reset, v: i * 2 });
            const sql = await c.query(`execute plus_one(${i})`);
            expect({ reset, v: sql.rows[0].v }).toEqual({ reset, v: i + 1 });
          }
        }
        await Promise.all([a.end(), b.end()]);
      } finally {
        await p.proxy.close(0);
        p.pooling.pooler.close();
      }
    }
  });

  test("a client's settings do not reach the next client, whether the reset query resets them or not", async () => {
    for (const reset of ['select 1', 'DISCARD ALL', 'RESET ALL', 'RESET work_mem']) {
      const p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, server_reset_query: reset, server_reset_query_always: 1 });
      try {
        const a = await connect(p.url());
        await a.query('set search_path = leaked_schema');
        await a.query("set work_mem = '7MB'");
        const b = await connect(p.url());
        const defaults = (await b.query("select current_setting('search_path') as sp, current_setting('work_mem') as wm")).rows[0];
        expect({ reset, ...defaults }).toEqual({ reset, sp: '"$user", public', wm: '4MB' });
        const mine = (await a.query("select current_setting('search_path') as sp, current_setting('work_mem') as wm")).rows[0];
        expect({ reset, ...mine }).toEqual({ reset, sp: 'leaked_schema', wm: '7MB' });
        await Promise.all([a.end(), b.end()]);
      } finally {
        await p.proxy.close(0);
        p.pooling.pooler.close();
      }
    }
  });

  test('client_login_timeout: a client that never finishes its login is told so and closed', async () => {
    const p = await pooledProxy({ pool_mode: 'transaction', client_login_timeout: 1 });
    try {
      const received = await new Promise<Buffer>((resolve, reject) => {
        const chunks: Buffer[] = [];
        const s = netConnect(p.proxy.address.port, '127.0.0.1');
        s.on('data', (d) => chunks.push(d));
        s.on('close', () => resolve(Buffer.concat(chunks)));
        s.on('error', reject);
        setTimeout(() => reject(new Error('still open after 10 s')), 10_000).unref();
      });
      expect(received[0]).toBe('E'.charCodeAt(0));
      expect(received.toString('latin1')).toContain('C08P01\0');
      expect(received.toString('latin1')).toContain('Mclient_login_timeout\0');
      // The pooler goes on: a client that logs in is served.
      const c = await connect(p.url());
      expect((await c.query('select 1 as v')).rows[0].v).toBe(1);
      await c.end();
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });
});

describe('disable_pqexec and max_packet_size', () => {
  test('disable_pqexec: a simple Query ends the client with pgBouncer\'s error, in every pool mode, also after transactions the native relay ran; the extended protocol works', async () => {
    for (const mode of ['session', 'transaction', 'statement']) {
      const p = await pooledProxy({ pool_mode: mode, default_pool_size: 2, disable_pqexec: 1 });
      try {
        const c = await connect(p.url());
        // node-postgres sends a query with parameters through the extended protocol: allowed.
        for (let i = 0; i < 5; i++) expect((await c.query('select $1::int + 1 as v', [i])).rows[0].v).toBe(i + 1);
        const ended = new Promise<void>((resolve) => c.once('end', () => resolve()));
        await expect(c.query('select 1')).rejects.toMatchObject({ code: '08P01', message: 'PQexec disallowed' });
        await ended;
        // Other clients go on.
        const d = await connect(p.url());
        expect((await d.query('select $1::text as v', ['still here'])).rows[0].v).toBe('still here');
        await d.end();
      } finally {
        await p.proxy.close(0);
        p.pooling.pooler.close();
      }
    }
    // Off (the default): simple Queries as ever.
    const p = await pooledProxy({ pool_mode: 'transaction' });
    try {
      const c = await connect(p.url());
      expect((await c.query('select 1 as v; select 2 as v')).length).toBe(2);
      await c.end();
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });

  test('max_packet_size: a larger client message ends that client with a clear error; smaller ones pass', async () => {
    const p = await pooledProxy({ pool_mode: 'transaction', max_packet_size: 65536 });
    try {
      const c = await connect(p.url());
      expect((await c.query('select length($1::text) as n', ['x'.repeat(60_000)])).rows[0].n).toBe(60_000);
      await expect(c.query('select length($1::text) as n', ['x'.repeat(70_000)])).rejects.toMatchObject({
        code: '54000',
        message: expect.stringContaining('the proxy accepts at most 65536 (max_packet_size)'),
      });
      const d = await connect(p.url());
      expect((await d.query('select 1 as v')).rows[0].v).toBe(1);
      await d.end();
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });
});

describe('application_name_add_host and server_round_robin', () => {
  test("application_name_add_host: the client's address after its application_name, as pgBouncer writes it", async () => {
    const p = await pooledProxy({ pool_mode: 'transaction', application_name_add_host: 1 });
    try {
      const c = await connect(p.url(), { application_name: 'billing' });
      const local = (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;
      expect((await c.query("select current_setting('application_name') as v")).rows[0].v).toBe(`billing - 127.0.0.1:${local}`);
      const anonymous = await connect(p.url());
      const port = (anonymous as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;
      expect((await anonymous.query("select current_setting('application_name') as v")).rows[0].v).toBe(`app - 127.0.0.1:${port}`);
      await Promise.all([c.end(), anonymous.end()]);
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });

  test('server_round_robin: each transaction takes the connection used longest ago; by default the last used', async () => {
    for (const roundRobin of [0, 1]) {
      const p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 3, min_pool_size: 3, server_round_robin: roundRobin });
      try {
        const c = await connect(p.url());
        await c.query('select 1');
        const pool = [...p.pooling.pooler.pools()][0];
        await eventually(() => pool.size === 3 && pool.opening === 0, 10_000, 'min_pool_size connections');
        const pids: number[] = [];
        for (let i = 0; i < 6; i++) pids.push((await c.query('select pg_backend_pid() as pid')).rows[0].pid as number);
        if (roundRobin) {
          expect(new Set(pids).size).toBe(3);
          expect(pids.slice(3)).toEqual(pids.slice(0, 3)); // in turn
        } else {
          expect(new Set(pids).size).toBe(1);
        }
        await c.end();
      } finally {
        await p.proxy.close(0);
        p.pooling.pooler.close();
      }
    }
  });
});

describe('autodb_idle_timeout', () => {
  test('databases made from "*" are forgotten once idle that long; one in use stays; a name used again is made anew', async () => {
    const db = testDb();
    const p = await pooledProxy({ pool_mode: 'transaction', autodb_idle_timeout: 1, server_idle_timeout: 1 }, { '*': `host=${db.host} port=${db.port} dbname=postgres` });
    try {
      const names = () => [...p.pooling.pooler.databases.keys()].sort();
      const kept = await connect(p.url('scram', 'auto_kept'));
      expect((await kept.query('select current_database() as d')).rows[0].d).toBe('postgres');
      // Clients naming databases nobody uses again, half with a wrong password (refused before any server connection);
      // the others' server connections close after server_idle_timeout, and then their databases are idle.
      for (let i = 0; i < 20; i++) {
        const c = new pg.Client({ connectionString: p.url('scram', `auto_gone_${i}`).replace(/:[^:@]*@/, i % 2 ? ':wrong@' : '$&') });
        c.on('error', () => {});
        if (i % 2 === 0) {
          await c.connect();
          await c.end();
        } else {
          await expect(c.connect()).rejects.toThrow();
        }
      }
      expect(names().filter((n) => n.startsWith('auto_gone_'))).toHaveLength(20);
      await eventually(() => !names().some((n) => n.startsWith('auto_gone_')), 10_000, 'idle auto-databases forgotten');
      // The database in use stays, and still serves; a forgotten name is made again when used.
      expect(names()).toContain('auto_kept');
      expect((await kept.query('select 1 as v')).rows[0].v).toBe(1);
      const again = await connect(p.url('scram', 'auto_gone_0'));
      expect((await again.query('select 2 as v')).rows[0].v).toBe(2);
      await Promise.all([kept.end(), again.end()]);
    } finally {
      await p.proxy.close(0);
      p.pooling.pooler.close();
    }
  });
});

describe('500 clients on a pool of 10', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 10, max_client_conn: 1000, query_wait_timeout: 120 });
  });
  afterAll(async () => {
    await p.proxy.close(0);
    p.pooling.pooler.close();
  });

  test('prepared statements, SQL PREPARE, SET, SET LOCAL, temporary tables and advisory locks: every result right, nothing leaks, pins released', async () => {
    const N = 500;
    const clients: pg.Client[] = [];
    for (let i = 0; i < N; i += 50) clients.push(...(await Promise.all(Array.from({ length: Math.min(50, N - i) }, () => connect(p.url())))));
    const pids = new Set<number>();
    await Promise.all(
      clients.map(async (c, i) => {
        await c.query(`set application_name = 'c${i}'`);
        const named = await c.query({ name: 'plus', text: 'select $1::int + 1 as v, current_setting($2) as app, pg_backend_pid() as pid', values: [i, 'application_name'] });
        expect(named.rows[0]).toMatchObject({ v: i + 1, app: `c${i}` });
        pids.add(named.rows[0].pid);
        await c.query(`prepare triple(int) as select $1 * 3 as v`);
        expect((await c.query(`execute triple(${i})`)).rows[0].v).toBe(i * 3);
        await c.query('deallocate triple');
        await c.query('begin');
        await c.query(`set local application_name = 'local${i}'`);
        expect((await c.query(`select current_setting('application_name') as app`)).rows[0].app).toBe(`local${i}`);
        await c.query('commit');
        await c.query(`create temp table mine(x int)`);
        await c.query(`insert into mine values (${i})`);
        expect((await c.query('select x from mine')).rows).toEqual([{ x: i }]);
        await c.query('drop table mine');
        await c.query(`select pg_advisory_lock(${100000 + i})`);
        expect((await c.query(`select count(*)::int as n from pg_locks where locktype = 'advisory' and objid = ${100000 + i} and pid = pg_backend_pid()`)).rows[0].n).toBe(1);
        await c.query(`select pg_advisory_unlock(${100000 + i})`);
        const again = await c.query({ name: 'plus', text: 'select $1::int + 1 as v, current_setting($2) as app, pg_backend_pid() as pid', values: [i * 2, 'application_name'] });
        expect(again.rows[0]).toMatchObject({ v: i * 2 + 1, app: `c${i}` });
      }),
    );
    expect(pids.size).toBeLessThanOrEqual(10);
    await expect.poll(() => p.proxy.sessions().filter((s) => s.pooled?.pins.size).length).toBe(0);
    // Nothing a client left behind on a server connection: no temp tables, locks or SQL prepared statements.
    const left = await Promise.all(clients.slice(0, 20).map((c) => c.query(`select (select count(*) from pg_prepared_statements where from_sql)::int as ps, (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())::int as locks`)));
    for (const r of left) expect(r.rows[0]).toEqual({ ps: 0, locks: 0 });
    await Promise.all(clients.map((c) => c.end()));
  }, 120_000);
});
