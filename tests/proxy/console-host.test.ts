// The admin console over the live pooler: a pooling proxy from an ini against the test cluster, with the
// console wired in (console-host.ts). psql and node-postgres log in to database pgbouncer as an admin user and
// as a stats user; what SHOW answers is checked against real traffic, and what the commands do against what
// the pooled clients then see. Each test uses a database entry of its own (all pointing at postgres), so its
// pool starts empty and the counts are exact.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ShutdownMode } from '../../proxy/console.js';
import type { ConsoleFactory } from '../../proxy/console-host.js';
import type { PoolingEnv } from '../../proxy/pooling.js';
import type { ProxyServer } from '../../proxy/server.js';
import { adminQuery, poolingFromIni, psql, testDb } from './helpers.js';

type Who = 'admin' | 'stats' | 'other';

interface Env {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  console: ConsoleFactory;
  ini: string;
  shutdowns: ShutdownMode[];
  login(who: Who): { user: string; password: string };
  url(who: Who, database: string): string;
  close(): Promise<void>;
}

/** Database entries of the main proxy: one per test, so each test's pool starts empty. */
const DATABASES = ['pools', 'pinned', 'stats', 'config', 'pause', 'suspend', 'reconnect', 'killclient', 'kill', 'disable', 'psql'];

/** A pooling proxy with the console, from an ini written for the test cluster (admin: scram_user, stats: md5_user). */
async function consoleProxy(settings: Record<string, string | number>): Promise<Env> {
  const db = testDb();
  const dir = mkdtempSync(join(tmpdir(), 'console-host-'));
  const q = (s: string) => `"${s.replaceAll('"', '""')}"`;
  const logins: Record<Who, { user: string; password: string }> = {
    admin: db.roles.scram,
    stats: db.roles.md5,
    other: { user: 'postgres', password: 'postgres' },
  };
  writeFileSync(join(dir, 'userlist.txt'), Object.values(logins).map((l) => `${q(l.user)} ${q(l.password)}`).join('\n') + '\n');
  const ini = join(dir, 'pgbouncer.ini');
  writeFileSync(
    ini,
    [
      '[databases]',
      ...DATABASES.map((name) => `${name} = host=${db.host} port=${db.port} dbname=postgres`),
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      'unix_socket_dir =',
      `auth_file = ${join(dir, 'userlist.txt')}`,
      `admin_users = ${logins.admin.user}`,
      `stats_users = ${logins.stats.user}`,
      'pool_mode = transaction',
      'default_pool_size = 2',
      ...Object.entries(settings).map(([k, v]) => `${k} = ${v}`),
    ].join('\n') + '\n',
  );
  const shutdowns: ShutdownMode[] = [];
  const { proxy: p, pooling, console } = await poolingFromIni(ini, { shutdown: (mode) => void shutdowns.push(mode) });
  return {
    proxy: p,
    pooling,
    console,
    ini,
    shutdowns,
    login: (who) => logins[who],
    url(who, database) {
      const l = logins[who];
      return `postgres://${encodeURIComponent(l.user)}:${encodeURIComponent(l.password)}@127.0.0.1:${p.address.port}/${database}`;
    },
    async close() {
      await p.close(0);
      pooling.pooler.close();
      console.close();
    },
  };
}

async function connect(url: string, extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url, ...extra });
  c.on('error', () => {});
  await c.connect();
  return c;
}

/** One row of a SHOW by a column's value (null when absent). */
async function rowOf(c: pg.Client, show: string, column: string, value: string | number): Promise<Record<string, any> | null> {
  const rows = (await c.query(`SHOW ${show}`)).rows;
  return rows.find((r) => r[column] === value) ?? null;
}

describe('the console over a live pooler', () => {
  let env: Env;
  let admin: pg.Client;
  /** The pool of the admin user on `database`, as `c` sees it (a console waiting for PAUSE answers nothing else). */
  const pool = async (database: string, c = admin) => {
    const rows = (await c.query('SHOW POOLS')).rows;
    return rows.find((r) => r.database === database && r.user === env.login('admin').user);
  };
  const clientNamed = async (app: string) => rowOf(admin, 'CLIENTS', 'application_name', app);

  beforeAll(async () => {
    env = await consoleProxy({});
    admin = await connect(env.url('admin', 'pgbouncer'));
  });
  afterAll(async () => {
    await admin?.end();
    await env?.close();
  });

  test('a user in neither admin_users nor stats_users is refused before any password; a wrong password fails', async () => {
    await expect(connect(env.url('other', 'pgbouncer'))).rejects.toThrow('not allowed');
    const u = new URL(env.url('admin', 'pgbouncer'));
    u.password = 'wrong';
    // The console login authenticates against auth_file as pooled clients do (md5, the default auth_type).
    await expect(connect(u.toString())).rejects.toThrow('password authentication failed');
  });

  test('SHOW POOLS, CLIENTS and SERVERS after real traffic: one client in a transaction, one between', async () => {
    const a = await connect(env.url('admin', 'pools'), { application_name: 'holder' });
    const b = await connect(env.url('admin', 'pools'), { application_name: 'idler' });
    await a.query('begin');
    const pid = (await a.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    await b.query('select 1');
    const p = await pool('pools');
    expect(p).toMatchObject({ cl_active: 2, cl_waiting: 0, sv_active: 1, pool_mode: 'transaction' });
    expect(p.sv_idle + p.sv_used).toBe(1);
    // The console counts itself in its own pool.
    expect(await rowOf(admin, 'POOLS', 'database', 'pgbouncer')).toMatchObject({ user: 'pgbouncer', cl_active: 1, pool_mode: 'statement' });

    const holder = (await clientNamed('holder'))!;
    expect(holder).toMatchObject({ type: 'C', user: env.login('admin').user, database: 'pools', state: 'active', addr: '127.0.0.1', pinned: 'transaction' });
    expect(holder.port).toBe((a as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort);
    expect((await clientNamed('idler'))!).toMatchObject({ state: 'active', link: '', pinned: '' });
    const servers = (await admin.query('SHOW SERVERS')).rows.filter((r) => r.database === 'pools');
    const linked = servers.find((s) => s.link === holder.ptr);
    expect(linked).toMatchObject({ state: 'active', user: env.login('admin').user, remote_pid: pid, port: testDb().port });
    expect(holder.link).toBe(linked!.ptr);

    await a.query('commit');
    await expect.poll(async () => (await pool('pools')).sv_active).toBe(0);
    expect((await clientNamed('holder'))!).toMatchObject({ link: '', pinned: '' });
    await Promise.all([a.end(), b.end()]);
    await expect.poll(async () => (await pool('pools')).cl_active).toBe(0);
  });

  test('SHOW CLIENTS names why a client holding a temp table keeps its connection', async () => {
    const c = await connect(env.url('admin', 'pinned'), { application_name: 'temp-holder' });
    await c.query('create temp table console_pin(x int)');
    await expect.poll(async () => (await clientNamed('temp-holder'))?.pinned).toBe('temporary object');
    expect((await clientNamed('temp-holder'))!.link).not.toBe('');
    await c.query('drop table console_pin');
    await expect.poll(async () => (await clientNamed('temp-holder'))?.pinned).toBe('');
    await c.end();
  });

  test('SHOW STATS counts the transactions and queries of the database; a stats user may read it, not command', async () => {
    const stats = await connect(env.url('stats', 'pgbouncer'));
    const before = await rowOf(stats, 'STATS', 'database', 'stats');
    const c = await connect(env.url('admin', 'stats'));
    for (let i = 0; i < 5; i++) await c.query('select 1');
    await c.query('begin');
    await c.query('select 2');
    await c.query('commit');
    const after = (await rowOf(stats, 'STATS', 'database', 'stats'))!;
    // numeric columns arrive as text.
    expect(Number(after.total_xact_count) - Number(before?.total_xact_count ?? 0)).toBe(6);
    expect(Number(after.total_query_count) - Number(before?.total_query_count ?? 0)).toBe(8);
    expect(Number(after.total_xact_time)).toBeGreaterThan(0);
    const totals = (await stats.query('SHOW TOTALS')).rows.find((r) => r.name === 'total_xact_count');
    expect(Number(totals.value)).toBeGreaterThanOrEqual(6);
    await expect(stats.query('PAUSE')).rejects.toThrow('admin access needed');
    await expect(stats.query('SHOW FDS')).rejects.toThrow('admin access needed');
    await Promise.all([c.end(), stats.end()]);
  });

  test('SHOW CONFIG, then SET: the setting changes in the pooler (a waiting client gets a third connection)', async () => {
    expect(await rowOf(admin, 'CONFIG', 'key', 'default_pool_size')).toEqual({ key: 'default_pool_size', value: '2', default: '20', changeable: 'yes' });
    expect(await rowOf(admin, 'CONFIG', 'key', 'listen_port')).toMatchObject({ changeable: 'no' });
    const clients = await Promise.all([1, 2, 3].map(() => connect(env.url('admin', 'config'))));
    await clients[0].query('begin');
    await clients[0].query('select 1');
    await clients[1].query('begin');
    await clients[1].query('select 1');
    const third = clients[2].query('select 3 as v');
    await expect.poll(async () => (await pool('config')).cl_waiting).toBe(1);

    await admin.query('SET default_pool_size = 3');
    expect(await rowOf(admin, 'CONFIG', 'key', 'default_pool_size')).toMatchObject({ value: '3' });
    expect(env.pooling.pooler.settings.defaultPoolSize).toBe(3);
    expect((await third).rows[0].v).toBe(3);
    expect((await pool('config')).sv_active + (await pool('config')).sv_idle + (await pool('config')).sv_used).toBe(3);

    await expect(admin.query('SET no_such_setting = 1')).rejects.toThrow('SET failed');
    await expect(admin.query("SET query_wait_timeout = 'soon'")).rejects.toThrow('SET failed');
    // A setting read only at start: pgBouncer accepts the SET and changes nothing.
    await admin.query('SET listen_port = 7777');
    expect(await rowOf(admin, 'CONFIG', 'key', 'listen_port')).toMatchObject({ value: '6432' });
    await admin.query('SET default_pool_size = 2');
    await Promise.all(clients.map((c) => c.query('rollback').catch(() => {})));
    await Promise.all(clients.map((c) => c.end()));
  });

  test('PAUSE waits for the transaction in progress; a client that asks meanwhile is served after RESUME', async () => {
    const other = await connect(env.url('admin', 'pgbouncer'));
    const a = await connect(env.url('admin', 'pause'));
    const b = await connect(env.url('admin', 'pause'), { application_name: 'pause-waiter' });
    await a.query('begin');
    await a.query('select 1');
    let paused = false;
    const pausing = admin.query('PAUSE pause').then(() => (paused = true));
    await expect.poll(async () => (await rowOf(other, 'DATABASES', 'name', 'pause'))?.paused).toBe(1);
    // The transaction still holds its connection: no answer yet.
    expect((await pool('pause', other)).sv_active).toBe(1);
    expect(paused).toBe(false);
    await a.query('commit');
    await pausing;
    // Paused, the database's connections are let go.
    await expect.poll(async () => pool('pause')).toMatchObject({ sv_active: 0, sv_idle: 0, sv_used: 0 });

    let answered = false;
    const asking = b.query('select 42 as v').then((r) => {
      answered = true;
      return r;
    });
    await expect.poll(async () => (await pool('pause')).cl_waiting).toBe(1);
    const waiter = (await clientNamed('pause-waiter'))!;
    expect(waiter.state).toBe('waiting');
    expect(answered).toBe(false);

    await expect(admin.query('RESUME pause')).resolves.toBeDefined();
    expect((await asking).rows[0].v).toBe(42);
    await expect(admin.query('RESUME pause')).rejects.toThrow('database pause is not paused');

    // The whole pooler: SHOW STATE follows, RESUME ends it.
    await admin.query('PAUSE');
    expect((await other.query('SHOW STATE')).rows).toContainEqual({ key: 'paused', value: 'yes' });
    await expect(other.query('PAUSE')).rejects.toThrow('already suspended/paused');
    await admin.query('RESUME');
    expect((await other.query('SHOW STATE')).rows).toContainEqual({ key: 'active', value: 'yes' });
    expect((await b.query('select 7 as v')).rows[0].v).toBe(7);
    await Promise.all([a.end(), b.end(), other.end()]);
  });

  test('SUSPEND keeps the connections but lends none until RESUME', async () => {
    const c = await connect(env.url('admin', 'suspend'));
    await c.query('select 1');
    await admin.query('SUSPEND');
    expect((await admin.query('SHOW STATE')).rows).toContainEqual({ key: 'suspended', value: 'yes' });
    expect((await pool('suspend')).sv_idle + (await pool('suspend')).sv_used).toBe(1);
    let answered = false;
    const asking = c.query('select 9 as v').then((r) => {
      answered = true;
      return r;
    });
    await expect.poll(async () => (await pool('suspend')).cl_waiting).toBe(1);
    expect(answered).toBe(false);
    await expect(admin.query('PAUSE')).rejects.toThrow('already suspended/paused');
    await admin.query('RESUME');
    expect((await asking).rows[0].v).toBe(9);
    await c.end();
  });

  test('RECONNECT closes server connections as they come back; WAIT_CLOSE answers once they are gone', async () => {
    const a = await connect(env.url('admin', 'reconnect'));
    await a.query('begin');
    const pid = (await a.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    await admin.query('RECONNECT reconnect');
    const server = (await rowOf(admin, 'SERVERS', 'remote_pid', pid))!;
    expect(server.close_needed).toBe(1);
    let closed = false;
    const waiting = admin.query('WAIT_CLOSE reconnect').then(() => (closed = true));
    // WAIT_CLOSE holds the console's later messages back: a second console sees the server still open.
    const other = await connect(env.url('admin', 'pgbouncer'));
    expect(await rowOf(other, 'SERVERS', 'remote_pid', pid)).not.toBeNull();
    expect(closed).toBe(false);
    await a.query('commit');
    await waiting;
    expect(await rowOf(other, 'SERVERS', 'remote_pid', pid)).toBeNull();
    await expect.poll(async () => (await adminQuery('select count(*)::int as n from pg_stat_activity where pid = $1', [pid]))[0].n).toBe(0);
    expect((await a.query('select pg_backend_pid() as pid')).rows[0].pid).not.toBe(pid);
    await Promise.all([a.end(), other.end()]);
  });

  test('KILL_CLIENT ends that client with pgBouncer\'s words, and no other', async () => {
    const victim = await connect(env.url('admin', 'killclient'), { application_name: 'victim' });
    const bystander = await connect(env.url('admin', 'killclient'), { application_name: 'bystander' });
    const id = (await clientNamed('victim'))!.id as number;
    const error = new Promise<Error>((resolve) => victim.once('error', resolve));
    await admin.query(`KILL_CLIENT ${id}`);
    expect((await error).message).toBe('admin forced disconnect');
    await expect.poll(async () => clientNamed('victim')).toBeNull();
    expect((await bystander.query('select 1 as v')).rows[0].v).toBe(1);
    await expect(admin.query('KILL_CLIENT 99999999')).rejects.toThrow('client not found');
    await bystander.end();
  });

  test('KILL closes the database\'s clients and servers and leaves it paused until RESUME', async () => {
    const c = await connect(env.url('admin', 'kill'));
    await c.query('select 1');
    const error = new Promise<Error>((resolve) => c.once('error', resolve));
    await admin.query('KILL kill');
    expect((await error).message).toBe('database removed');
    expect(await rowOf(admin, 'DATABASES', 'name', 'kill')).toMatchObject({ paused: 1, current_connections: 0 });
    await admin.query('RESUME kill');
    const again = await connect(env.url('admin', 'kill'));
    expect((await again.query('select 5 as v')).rows[0].v).toBe(5);
    await again.end();
  });

  test('DISABLE refuses new logins to the database, clients already in carry on; ENABLE lets them in again', async () => {
    const inside = await connect(env.url('admin', 'disable'));
    await admin.query('DISABLE disable');
    expect(await rowOf(admin, 'DATABASES', 'name', 'disable')).toMatchObject({ disabled: 1 });
    await expect(connect(env.url('admin', 'disable'))).rejects.toThrow('database "disable" is disabled');
    expect((await inside.query('select 1 as v')).rows[0].v).toBe(1);
    await expect(admin.query('DISABLE nosuchdb')).rejects.toThrow('no such database: nosuchdb');
    await admin.query('ENABLE disable');
    const later = await connect(env.url('admin', 'disable'));
    await Promise.all([inside.end(), later.end()]);
  });

  test('psql as the admin and as the stats user; node-postgres prepared statements (the extended protocol)', async () => {
    const c = await connect(env.url('admin', 'psql'));
    await c.query('select 1');
    const login = (who: Who) => ({ host: '127.0.0.1', port: env.proxy.address.port, ...env.login(who), db: 'pgbouncer' });
    const r = await psql(login('admin'), ['-A', '-t', '-F', '|', '-c', 'SHOW POOLS']);
    expect(r.stderr).toBe('');
    expect(r.stdout.split('\n')).toContainEqual(expect.stringMatching(new RegExp(`^psql\\|${env.login('admin').user}\\|1\\|0\\|`)));
    const s = await psql(login('stats'), ['-A', '-t', '-c', 'SHOW DATABASES', '-c', 'RECONNECT']);
    expect(s.stdout).toContain('psql|');
    expect(s.stderr).toContain('admin access needed');
    const refused = await psql(login('other'), ['-c', 'SHOW POOLS']);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('not allowed');

    const prepared = await admin.query({ name: 'pools', text: 'SHOW POOLS' });
    expect(prepared.rows.find((p) => p.database === 'psql')).toMatchObject({ cl_active: 1 });
    await c.end();
  });
});

describe('auth_type any, RELOAD and SHUTDOWN', () => {
  let env: Env;
  beforeAll(async () => {
    env = await consoleProxy({ auth_type: 'any', stats_period: 1 });
  });
  afterAll(async () => {
    await env?.close();
  });

  test('auth_type any lets any user in with SHOW only; admin_users still decides who commands', async () => {
    const anyone = await connect(env.url('other', 'pgbouncer'));
    expect((await anyone.query('SHOW VERSION')).rows[0].version).toBe('PgBouncer 1.24.1');
    await expect(anyone.query('RELOAD')).rejects.toThrow('admin access needed');
    const admin = await connect(env.url('admin', 'pgbouncer'));
    await admin.query('RELOAD');
    await Promise.all([anyone.end(), admin.end()]);
  });

  test('RELOAD reads the ini again: SHOW CONFIG shows the new value, a SET is gone', async () => {
    const admin = await connect(env.url('admin', 'pgbouncer'));
    await admin.query('SET query_wait_timeout = 33');
    expect(await rowOf(admin, 'CONFIG', 'key', 'query_wait_timeout')).toMatchObject({ value: '33' });
    writeFileSync(env.ini, readFileSync(env.ini, 'utf8').replace('default_pool_size = 2', 'default_pool_size = 9'));
    await admin.query('RELOAD');
    expect(await rowOf(admin, 'CONFIG', 'key', 'default_pool_size')).toMatchObject({ value: '9' });
    expect(await rowOf(admin, 'CONFIG', 'key', 'query_wait_timeout')).toMatchObject({ value: '120' });
    writeFileSync(env.ini, readFileSync(env.ini, 'utf8') + 'max_client_conn = many\n');
    const notice = new Promise<Error>((resolve) => admin.once('notice', resolve));
    const reload = await admin.query('RELOAD');
    expect(reload.command).toBe('RELOAD');
    expect((await notice).message).toMatch(/^configuration not reloaded, still using the old one: .*max_client_conn/);
    expect(await rowOf(admin, 'CONFIG', 'key', 'default_pool_size')).toMatchObject({ value: '9' });
    await admin.end();
  });

  test('SHUTDOWN WAIT_FOR_CLIENTS answers, hands the mode on, and RESUME is refused from then on', async () => {
    const admin = await connect(env.url('admin', 'pgbouncer'));
    const r = await admin.query('SHUTDOWN WAIT_FOR_CLIENTS');
    expect(r.command).toBe('SHUTDOWN');
    await expect.poll(() => env.shutdowns).toEqual(['wait_for_clients']);
    await admin.query('PAUSE');
    await expect(admin.query('RESUME')).rejects.toThrow('pooler is shutting down');
    await admin.end();
  });
});
