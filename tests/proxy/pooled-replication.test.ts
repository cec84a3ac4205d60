// Replication clients through the pooler, as pgBouncer 1.23+ passes them: each gets a server connection of its
// own, opened with `replication` and its startup parameters, relayed as is (replication commands, COPY streams,
// SQL on logical connections), counted against the pool and closed when the client leaves. On a cluster of its
// own: the shared one has no wal_level=logical nor replication lines in pg_hba.conf.
import { appendFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import pg from 'pg';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createConsole } from '../../proxy/console-host.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import type { ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';
import { startCluster, type Cluster } from '../setup/cluster.js';
import { run, silentLogger, startTestProxy } from './helpers.js';

const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

let cluster: Cluster;
let proxy: ProxyServer;
let pooling: PoolingEnv;
let dir: string;
let logfile: string;

/** Superuser SQL on the cluster itself. */
async function direct<T extends pg.QueryResultRow = pg.QueryResultRow>(sql: string): Promise<T[]> {
  const c = new pg.Client(cluster.adminUrl);
  await c.connect();
  try {
    return (await c.query<T>(sql)).rows;
  } finally {
    await c.end();
  }
}

/** node-postgres sends `replication` in the startup packet (its typings do not list it). */
type Options = Partial<pg.ClientConfig> & { replication?: string };

/** A client through the proxy (database `db`, a pool of the ini), replication as given. */
async function connect(db: string, extra: Options = {}, user = 'postgres', password = 'postgres'): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.address.port, user, password, database: db, ...extra });
  c.on('error', () => {});
  await c.connect();
  return c;
}

/** Server connections of the cluster with this application_name (walsenders included). */
async function backends(app: string): Promise<number> {
  const rows = await direct<{ n: number }>(`select count(*)::int as n from pg_stat_activity where application_name = '${app}'`);
  return rows[0].n;
}

const pgbLog = () => (existsSync(logfile) ? readFileSync(logfile, 'utf8') : '');
const count = (text: string, needle: string) => text.split(needle).length - 1;

beforeAll(async () => {
  cluster = await startCluster();
  // Logical decoding and replication connections for postgres and scram_user (who lacks the REPLICATION role).
  await direct(`ALTER SYSTEM SET wal_level = logical`);
  const hba = (await direct<{ hba_file: string }>('show hba_file'))[0].hba_file;
  appendFileSync(hba, '\nhost replication postgres 127.0.0.1/32 scram-sha-256\nhost replication scram_user 127.0.0.1/32 scram-sha-256\n');
  await cluster.restart!();
  dir = mkdtempSync(join(tmpdir(), 'pooled-repl-'));
  logfile = join(dir, 'pgb.log');
  const r = cluster.roles.scram;
  writeFileSync(join(dir, 'users.txt'), `"postgres" "postgres"\n"${r.user}" "${r.password}"\n`);
  const at = `host=${cluster.host} port=${cluster.port} dbname=postgres`;
  writeFileSync(join(dir, 'p.ini'), [
    '[databases]',
    `postgres = ${at}`,
    `one = ${at} pool_size=1`,
    `stmt = ${at} pool_mode=statement`,
    // pg_basebackup and pg_receivewal always ask for database "replication" (the server ignores it on a physical connection).
    `replication = host=${cluster.host} port=${cluster.port} dbname=replication`,
    '[pgbouncer]', 'unix_socket_dir =', 'auth_type = scram-sha-256', `auth_file = ${join(dir, 'users.txt')}`,
    'pool_mode = transaction', 'default_pool_size = 4', 'max_prepared_statements = 100', 'query_wait_timeout = 60',
    `logfile = ${logfile}`, 'admin_users = postgres',
    // As pgBouncer's own test.ini: small kernel buffers, so that writes meet EAGAIN and the streams' backpressure is exercised.
    'tcp_socket_buffer = 4096',
  ].join('\n'));
  // The admin console reads the sessions lazily: the proxy starts after createPooling, which takes the console.
  const console = createConsole({
    pooler: () => pooling.pooler,
    sessions: () => (proxy ? proxy.sessions() : []),
    configFile: join(dir, 'p.ini'),
    reload: () => {},
    shutdown: () => {},
    logger: silentLogger,
  });
  pooling = createPooling({ config: loadPgBouncerConfig(join(dir, 'p.ini')), defaultTarget: parseUpstreamUrl(`postgres://${cluster.host}:${cluster.port}/?sslmode=disable`), logger: silentLogger, console });
  proxy = await startTestProxy({ pooling });
}, 120_000);

afterAll(async () => {
  await proxy?.close(0);
  pooling?.pooler.close();
  await cluster?.stop();
});

test('logical: the server connection has the client startup parameters and options, runs replication commands and SQL, and closes when the client leaves', async () => {
  const c = await connect('postgres', { replication: 'database', application_name: 'repl-logical', options: '-c enable_seqscan=off' });
  expect((await c.query('show application_name')).rows[0].application_name).toBe('repl-logical');
  // Not a reported parameter: only the client's own startup options can have set it.
  expect((await c.query('show enable_seqscan')).rows[0].enable_seqscan).toBe('off');
  const ident = await c.query('IDENTIFY_SYSTEM');
  expect(ident.rows[0].systemid).toMatch(/^\d+$/);
  expect(ident.rows[0].dbname).toBe('postgres');
  const ws = await direct<{ backend_type: string }>(`select backend_type from pg_stat_activity where application_name = 'repl-logical'`);
  expect(ws.map((w) => w.backend_type)).toEqual(['walsender']);
  // The console shows the client and its server connection as logical replication, as pgBouncer does.
  const admin = await connect('pgbouncer');
  const clients = (await admin.query('SHOW CLIENTS')).rows as { application_name: string; replication: string }[];
  expect(clients.find((r) => r.application_name === 'repl-logical')?.replication).toBe('logical');
  const servers = (await admin.query('SHOW SERVERS')).rows as { replication: string }[];
  expect(servers.map((r) => r.replication)).toContain('logical');
  await admin.end();
  // A normal client of the same pool is unaffected and never gets the walsender.
  const n = await connect('postgres', { application_name: 'repl-normal' });
  expect((await n.query(`select backend_type from pg_stat_activity where pid = pg_backend_pid()`)).rows[0].backend_type).toBe('client backend');
  await n.end();
  await c.end();
  await expect.poll(() => backends('repl-logical'), { timeout: 5_000 }).toBe(0);
  expect(pgbLog()).toContain('replication client disconnected');
});

test('logical in transaction mode: one connection throughout, and no SQL of the proxy after SET or PREPARE', async () => {
  const c = await connect('postgres', { replication: 'database', application_name: 'repl-tx' });
  const pid = (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
  const lastQuery = async () => (await direct<{ query: string }>(`select query from pg_stat_activity where pid = ${pid}`))[0].query;
  // On a pooled connection a SET is read back, and a PREPARE checked for pins, after the transaction.
  await c.query('set work_mem = 12345');
  await new Promise((r) => setTimeout(r, 300));
  expect(await lastQuery()).toBe('set work_mem = 12345');
  await c.query('prepare p as select 2 as v');
  await new Promise((r) => setTimeout(r, 300));
  expect(await lastQuery()).toBe('prepare p as select 2 as v');
  expect((await c.query('execute p')).rows[0].v).toBe(2);
  expect((await c.query('select pg_backend_pid() as p')).rows[0].p).toBe(pid);
  expect((await c.query('show work_mem')).rows[0].work_mem).toBe('12345kB');
  await c.end();
});

test('logical in statement mode: a transaction block is allowed on the replication connection', async () => {
  const c = await connect('stmt', { replication: 'database' });
  await c.query('begin');
  expect((await c.query('select 7 as v')).rows[0].v).toBe(7);
  await c.query('commit');
  await c.end();
});

test('physical: replication commands are relayed, SQL gets the walsender error, startup parameters apply', async () => {
  const conninfo = `host=127.0.0.1 port=${proxy.address.port} user=postgres dbname=postgres replication=true application_name=repl-phys sslmode=disable`;
  const env = { PGPASSWORD: 'postgres' };
  const ident = await run(join(PG_BIN, 'psql'), ['-X', '-At', '-d', conninfo, '-c', 'IDENTIFY_SYSTEM'], env);
  expect(ident.stderr).toBe('');
  expect(ident.stdout).toMatch(/^\d+\|1\|[0-9A-F]+\/[0-9A-F]+\|$/m);
  const sql = await run(join(PG_BIN, 'psql'), ['-X', '-At', '-d', conninfo, '-c', 'select 1'], env);
  expect(sql.stderr).toContain('cannot execute SQL commands in WAL sender for physical replication');
  const app = await run(join(PG_BIN, 'psql'), ['-X', '-At', '-d', conninfo, '-c', 'SHOW application_name'], env);
  expect(app.stdout.trim()).toBe('repl-phys');
});

test('pg_basebackup streams a base backup through the pooler', async () => {
  const out = mkdtempSync(join(tmpdir(), 'pooled-repl-bb-'));
  const target = join(out, 'data');
  const r = await run(join(PG_BIN, 'pg_basebackup'), ['-d', `host=127.0.0.1 port=${proxy.address.port} user=postgres sslmode=disable`, '--checkpoint=fast', '-D', target, '-X', 'stream'], { PGPASSWORD: 'postgres' });
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(readdirSync(target)).toContain('PG_VERSION');
  expect(readdirSync(join(target, 'pg_wal')).length).toBeGreaterThan(0);
}, 60_000);

test('pg_recvlogical streams decoded changes (COPY both ways) through the pooler', async () => {
  await direct(`create table if not exists repl_t(a int)`);
  await direct(`select pg_create_logical_replication_slot('repl_slot', 'test_decoding')`);
  await direct(`insert into repl_t values (42)`);
  const end = (await direct<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn'))[0].lsn;
  const r = await run(join(PG_BIN, 'pg_recvlogical'), ['-d', `host=127.0.0.1 port=${proxy.address.port} user=postgres dbname=postgres sslmode=disable`, '--slot=repl_slot', '--start', '--no-loop', `--endpos=${end}`, '-f', '-'], { PGPASSWORD: 'postgres' });
  expect(r.code).toBe(0);
  expect(r.stdout).toContain('table public.repl_t: INSERT: a[integer]:42');
  await direct(`select pg_drop_replication_slot('repl_slot')`);
}, 30_000);

test('a replication connection counts against pool_size: an idle connection is evicted for it, the next replication client waits', async () => {
  // Fill the pool of one with a normal connection, left idle.
  const n = await connect('one', { application_name: 'repl-pool-normal' });
  await n.query('select 1');
  expect(await backends('repl-pool-normal')).toBe(1);
  const before = count(pgbLog(), 'closing because: evicted');
  const a = await connect('one', { replication: 'database', application_name: 'repl-pool-a' });
  expect(count(pgbLog(), 'closing because: evicted')).toBe(before + 1);
  await expect.poll(() => backends('repl-pool-normal'), { timeout: 5_000 }).toBe(0);
  // The pool is full with a's connection: b waits until a leaves.
  let bIn = false;
  const b = connect('one', { replication: 'database', application_name: 'repl-pool-b' }).then((c) => ((bIn = true), c));
  await new Promise((r) => setTimeout(r, 700));
  expect(bIn).toBe(false);
  expect(await backends('repl-pool-b')).toBe(0);
  // The normal client waits too (its statement needs a connection), and is served once b is done.
  const normal = n.query('select 5 as v');
  await a.end();
  const bc = await b;
  expect((await bc.query('IDENTIFY_SYSTEM')).rows).toHaveLength(1);
  await bc.end();
  expect((await normal).rows[0].v).toBe(5);
  await n.end();
  await expect.poll(async () => (await backends('repl-pool-a')) + (await backends('repl-pool-b')), { timeout: 5_000 }).toBe(0);
}, 30_000);

test('a login the server refuses for replication ends that client with "login failed"; normal clients go on', async () => {
  const r = cluster.roles.scram;
  const before = count(pgbLog(), 'closing because: login failed (age');
  const err = await connect('postgres', { replication: 'database' }, r.user, r.password).then(
    () => null,
    (e: Error) => e,
  );
  expect(err?.message).toBe('login failed');
  const log = pgbLog();
  expect(log).toContain('must be superuser or replication role to start walsender');
  // The server connection's and the client's lines.
  expect(count(log, 'closing because: login failed (age')).toBe(before + 2);
  const ok = await connect('postgres', {}, r.user, r.password);
  expect((await ok.query('select 1 as v')).rows[0].v).toBe(1);
  await ok.end();
});
