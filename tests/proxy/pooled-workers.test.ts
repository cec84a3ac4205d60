// Pooling with worker processes: `pg-steadytext pgbouncer CONFIG.ini` with `workers = 2` in [steadytext], as a
// real child process in front of the test cluster. The limits count across the workers (pool size, max_client_conn),
// a worker whose clients wait gets a connection another worker holds, a CancelRequest accepted by one worker
// cancels the query of a client on the other, and the console's commands and SHOWs cover both workers.
// Which worker a client is on: the high bits of its BackendKeyData pid (proxy/cancel.ts), and the parity of its
// SHOW CLIENTS id (proxy/socket-id.ts).
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterEach, describe, expect, test } from 'vitest';
import { workerOfPid } from '../../proxy/cancel.js';
import { cancelRequest } from '../../proxy/protocol.js';
import { freePort } from '../setup/cluster.js';
import { adminQuery, spawnCli, testDb } from './helpers.js';

/** Clients log in with trust; md5_user's server logins take its password from the auth_file. */
const USERS = (): [string, string][] => [['trust_user', ''], [testDb().roles.md5.user, testDb().roles.md5.password]];

interface Bouncer {
  dir: string;
  port: number;
  ini: string;
  child: ChildProcess;
  output(): string;
  alive(): boolean;
  exited(): Promise<number | null>;
}

const started: { bouncers: Bouncer[]; clients: pg.Client[] } = { bouncers: [], clients: [] };

afterEach(async () => {
  await Promise.all(started.clients.map((c) => c.end().catch(() => {})));
  for (const b of started.bouncers) {
    // The primary's SIGKILL leaves the workers: they stop when their channel to it closes.
    if (b.alive()) b.child.kill('SIGKILL');
    await b.exited();
    rmSync(b.dir, { recursive: true, force: true });
  }
  started.bouncers = [];
  started.clients = [];
});

function iniText(databases: Record<string, string>, settings: Record<string, string | number>, steadytext: string[] = []): string {
  return [
    '[databases]',
    ...Object.entries(databases).map(([k, v]) => `${k} = ${v}`),
    '[pgbouncer]',
    ...Object.entries(settings).map(([k, v]) => `${k} = ${v}`),
    '[steadytext]',
    'workers = 2',
    'daemon_listen = off',
    ...steadytext,
  ].join('\n') + '\n';
}

/** pg-steadytext as pgBouncer with two workers; resolves once the primary wrote its pidfile (all workers listen then). */
async function startBouncer(databases: Record<string, string>, extra: Record<string, string | number>, staleSocket = false, steadytext: string[] = []): Promise<Bouncer> {
  const dir = mkdtempSync(join(tmpdir(), 'pgb-workers-'));
  const port = await freePort();
  // What a crashed run leaves: the socket's file, which binding the path again would fail on.
  if (staleSocket) writeFileSync(join(dir, `.s.PGSQL.${port}`), '');
  writeFileSync(join(dir, 'userlist.txt'), USERS().map(([u, p]) => `"${u}" "${p}"`).join('\n') + '\n');
  const settings = {
    listen_addr: '127.0.0.1',
    listen_port: port,
    unix_socket_dir: dir,
    pidfile: join(dir, 'pgb.pid'),
    auth_type: 'trust',
    auth_file: join(dir, 'userlist.txt'),
    admin_users: 'trust_user',
    pool_mode: 'transaction',
    ...extra,
  };
  const ini = join(dir, 'pgbouncer.ini');
  writeFileSync(ini, iniText(databases, settings, steadytext));
  const { child, output } = spawnCli(['pgbouncer', ini], { PGSTEADYTEXT_LOG_FORMAT: 'json', PGSTEADYTEXT_LOG_LEVEL: 'info' });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const b: Bouncer = {
    dir,
    port,
    ini,
    child,
    output,
    alive: () => child.exitCode === null && child.signalCode === null,
    exited: () => exit,
  };
  started.bouncers.push(b);
  const pidfile = join(dir, 'pgb.pid');
  const deadline = Date.now() + 60_000;
  while (!existsSync(pidfile) || readFileSync(pidfile, 'utf8').trim() !== String(child.pid)) {
    if (!b.alive()) throw new Error(`pg-steadytext pgbouncer exited (${child.exitCode}) before it was ready:\n${output()}`);
    if (Date.now() > deadline) throw new Error(`pg-steadytext pgbouncer not ready after 60 s:\n${output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return b;
}

async function connect(b: Bouncer, database = 'postgres', user = 'trust_user', host = '127.0.0.1'): Promise<pg.Client> {
  const c = new pg.Client({ host, port: b.port, user, database });
  c.on('error', () => {});
  started.clients.push(c);
  await c.connect();
  return c;
}

/** The worker a client is on, from the cancel key the proxy gave it. */
const workerOf = (c: pg.Client) => workerOfPid((c as unknown as { processID: number }).processID);

/** The client's own port, as SHOW CLIENTS lists it. */
const localPort = (c: pg.Client) => (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;

/** The pid of each worker's latest process, from the log's 'proxy listening' lines (pino's pid and our worker). */
function workerPids(b: Bouncer): Map<number, number> {
  const pids = new Map<number, number>();
  for (const line of b.output().split('\n')) {
    if (!line.startsWith('{')) continue;
    let r: { msg?: string; worker?: number; pid?: number };
    try {
      r = JSON.parse(line);
    } catch {
      continue;
    }
    if (r.msg === 'proxy listening' && typeof r.worker === 'number' && typeof r.pid === 'number') pids.set(r.worker, r.pid);
  }
  return pids;
}

/** SIGKILLs a worker's process; resolves with its successor's pid once that one listens. */
async function crashWorker(b: Bouncer, worker: number): Promise<number> {
  const old = workerPids(b).get(worker);
  expect(old).toBeDefined();
  process.kill(old!, 'SIGKILL');
  await expect.poll(() => workerPids(b).get(worker), { timeout: 30_000 }).not.toBe(old);
  expect(b.output()).toContain('worker exited unexpectedly; restarting');
  return workerPids(b).get(worker)!;
}

/** A console session on the given worker (its own SHOW CLIENTS row's id tells the worker). */
async function consoleOn(b: Bouncer, worker: number): Promise<pg.Client> {
  for (let i = 0; i < 8; i++) {
    const c = await connect(b, 'pgbouncer');
    const own = (await c.query('SHOW CLIENTS')).rows.find((r) => Number(r.port) === localPort(c));
    if (Number(own?.id) % 2 === worker) return c;
    await c.end();
  }
  throw new Error(`no console login reached worker ${worker}`);
}

/**
 * Logins to a paused database (logging in needs a server connection: they wait), started one at a time until both
 * workers have one waiting, as the console's SHOW SOCKETS lists them (cl_login; the id's parity is the worker).
 */
async function loginsWaiting(b: Bouncer, admin: pg.Client, database: string): Promise<Promise<pg.Client | Error>[]> {
  const listed = async () => (await admin.query('SHOW SOCKETS')).rows.filter((r) => r.type === 'C' && r.database === database);
  const logins: Promise<pg.Client | Error>[] = [];
  while (new Set((await listed()).map((r) => Number(r.id) % 2)).size < 2) {
    if (logins.length >= 8) throw new Error('logins never reached both workers');
    logins.push(connect(b, database).then((c) => c, (e: Error) => e));
    await expect.poll(async () => (await listed()).length, { timeout: 10_000 }).toBe(logins.length);
  }
  // None has got through, in either worker.
  const settled = await Promise.race([...logins.map((l) => l.then(() => 'a login got through')), new Promise((r) => setImmediate(() => r('all waiting')))]);
  expect(settled).toBe('all waiting');
  return logins;
}

/** Clients connected one after another until both workers have one (the listener hands connections out in turn). */
async function onBothWorkers(b: Bouncer, database = 'postgres', otherUser = 'trust_user'): Promise<[pg.Client, pg.Client]> {
  const first = await connect(b, database);
  for (let i = 0; i < 4; i++) {
    const other = await connect(b, database, otherUser);
    if (workerOf(other) !== workerOf(first)) return [first, other];
  }
  throw new Error('connections never reached the second worker');
}

function target(extra = ''): string {
  return `host=${testDb().host} port=${testDb().port} dbname=postgres ${extra}`.trim();
}

/** The test cluster's server connections made for this bouncer (its [databases] entry sets their application_name). */
async function serverCount(app: string): Promise<number> {
  const rows = await adminQuery<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1', [app]);
  return Number(rows[0].n);
}

const appName = () => `pgw_${randomBytes(4).toString('hex')}`;

/** Samples the server connection count until `work` settles; resolves with the highest seen. */
async function peakWhile(app: string, work: Promise<unknown>): Promise<number> {
  let done = false;
  void work.finally(() => (done = true)).catch(() => {});
  let peak = 0;
  while (!done) {
    peak = Math.max(peak, await serverCount(app));
    await new Promise((r) => setTimeout(r, 20));
  }
  await work;
  return Math.max(peak, await serverCount(app));
}

describe('pooling with --workers: one set of limits', () => {
  test('default_pool_size = 2 with 2 workers: 20 clients sleeping in transactions never have more than 2 server connections', async () => {
    const app = appName();
    const b = await startBouncer({ postgres: target(`application_name=${app}`) }, { default_pool_size: 2 });
    const clients = await Promise.all(Array.from({ length: 20 }, () => connect(b)));
    expect(new Set(clients.map(workerOf)).size).toBe(2);
    const work = Promise.all(
      clients.map(async (c, i) => {
        for (let round = 0; round < 2; round++) {
          await c.query('BEGIN');
          const r = await c.query('SELECT pg_sleep(0.05), $1::int AS i', [i]);
          await c.query('COMMIT');
          expect(r.rows[0].i).toBe(i);
        }
      }),
    );
    const peak = await peakWhile(app, work);
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(2);
  });

  test('a worker whose clients wait takes the pool\'s only connection from the other worker, idle or busy', async () => {
    const app = appName();
    const b = await startBouncer({ postgres: target(`application_name=${app}`) }, { default_pool_size: 1, query_wait_timeout: 60 });
    const [a, other] = await onBothWorkers(b);
    // a's worker opens the one connection, which then sits idle there.
    expect((await a.query('SELECT 1 AS v')).rows[0].v).toBe(1);
    expect(await serverCount(app)).toBe(1);
    // The other worker's client gets it: the idle one is closed for it.
    expect((await other.query('SELECT 2 AS v')).rows[0].v).toBe(2);
    // Now a keeps its worker's (new) connection busy, one transaction after another: the other still gets its turn.
    let stop = false;
    const busy = (async () => {
      while (!stop) await a.query('SELECT pg_sleep(0.01)');
    })();
    const turn = (async () => {
      for (let i = 0; i < 3; i++) expect((await other.query('SELECT $1::int AS v', [i])).rows[0].v).toBe(i);
    })().finally(() => (stop = true));
    const peak = await peakWhile(app, Promise.all([busy, turn]));
    expect(peak).toBeLessThanOrEqual(1);
  });

  test('each worker lends its idle connection to the client\'s relay, and gives it up when the other worker\'s client waits', async () => {
    const app = appName();
    const metricsPort = await freePort();
    const b = await startBouncer({ postgres: target(`application_name=${app}`) }, { default_pool_size: 1, query_wait_timeout: 60 }, false, [
      `metrics_listen = 127.0.0.1:${metricsPort}`,
    ]);
    const handoffs = async () => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith('pg_steadytext_proxy_native_relay_handoffs_total'));
      return Number(line?.split(' ').pop());
    };
    const [a, other] = await onBothWorkers(b);
    const before = await handoffs();
    // Nobody waits: after its first transaction a keeps the connection in its worker's relay for all of them.
    for (let i = 0; i < 20; i++) expect((await a.query('SELECT $1::int AS v', [i])).rows[0].v).toBe(i);
    const lentA = (await handoffs()) - before;
    expect(lentA).toBeGreaterThanOrEqual(1);
    expect(lentA).toBeLessThanOrEqual(2);
    // The other worker's client needs the pool's only connection: a's worker takes it back from the relay and closes it.
    const turns = (async () => {
      for (let i = 0; i < 3; i++) {
        expect((await other.query('SELECT $1::int AS v', [i])).rows[0].v).toBe(i);
        expect((await a.query('SELECT $1::int AS v', [i])).rows[0].v).toBe(i);
      }
    })();
    expect(await peakWhile(app, turns)).toBeLessThanOrEqual(1);
    // Then the other client is lent its worker's connection too.
    const mid = await handoffs();
    for (let i = 0; i < 20; i++) expect((await other.query('SELECT $1::int AS v', [i])).rows[0].v).toBe(i);
    expect((await handoffs()) - mid).toBeGreaterThanOrEqual(1);
  });

  test('the native hub in each worker: 20 clients on a pool of 2 take turns in C, never over 2 connections; a hub holding both gives one to the other worker', async () => {
    const app = appName();
    const metricsPort = await freePort();
    const b = await startBouncer({ postgres: target(`application_name=${app}`) }, { default_pool_size: 2, query_wait_timeout: 60 }, false, [
      `metrics_listen = 127.0.0.1:${metricsPort}`,
    ]);
    const metric = async (name: string) => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name} `));
      return Number(line?.split(' ').pop());
    };
    const hubHandoffs = () => metric('pg_steadytext_proxy_native_hub_handoffs_total');
    const admin = await connect(b, 'pgbouncer');
    const xacts = async () => Number((await admin.query('SHOW STATS')).rows.find((r) => r.database === 'postgres').total_xact_count);
    const clients = await Promise.all(Array.from({ length: 20 }, () => connect(b)));
    const workers = [...new Set(clients.map(workerOf))];
    expect(workers).toHaveLength(2);
    const before = await hubHandoffs();
    const xactsBefore = await xacts();
    const rounds = 30;
    const work = Promise.all(
      clients.map(async (c, i) => {
        for (let round = 0; round < rounds; round++) {
          // The extended protocol (unnamed statements) and the simple one, each a transaction of its own.
          expect((await c.query('SELECT $1::int AS i, $2::int AS r', [i, round])).rows[0]).toEqual({ i, r: round });
          expect((await c.query(`SELECT ${i * 1000 + round} AS v`)).rows[0].v).toBe(i * 1000 + round);
        }
      }),
    );
    expect(await peakWhile(app, work)).toBeLessThanOrEqual(2);
    // Handed from client to client in C, in the workers' hubs; SHOW STATS counts what the hubs ran.
    expect((await hubHandoffs()) - before).toBeGreaterThan(20);
    expect((await xacts()) - xactsBefore).toBeGreaterThanOrEqual(20 * rounds * 2);

    // One worker's clients keep both connections busy in its hub (the other worker's idle one is yielded to it) ...
    const [busyWorker] = workers;
    const busy = clients.filter((c) => workerOf(c) === busyWorker);
    const other = clients.find((c) => workerOf(c) !== busyWorker)!;
    let stop = false;
    const load = Promise.all(
      busy.map(async (c, i) => {
        while (!stop) expect((await c.query('SELECT $1::int AS i, pg_sleep(0.002)', [i])).rows[0].i).toBe(i);
      }),
    );
    // ... its clients queued in C show as waiting in the console, which asks both workers ...
    await expect
      .poll(async () => Number((await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres' && r.user === 'trust_user').cl_waiting), { timeout: 10_000 })
      .toBeGreaterThan(0);
    // ... and, its clients queued in C asking the primary for slots, it gets both (the other worker's quiet one is yielded):
    const servers = async () => (await admin.query('SHOW SERVERS')).rows.filter((r) => r.database === 'postgres').map((r) => Number(r.id) % 2);
    await expect.poll(servers, { timeout: 10_000 }).toEqual([busyWorker, busyWorker]);
    // ... and the other worker's client still gets its turns: the hub yields a connection at a transaction's end.
    const turns = (async () => {
      for (let i = 0; i < 5; i++) expect((await other.query('SELECT $1::int AS v', [i])).rows[0].v).toBe(i);
    })().finally(() => (stop = true));
    expect(await peakWhile(app, Promise.all([turns, load]))).toBeLessThanOrEqual(2);
    // Nothing leaked: the connections the workers hold are those the database has.
    const held = async () => {
      const r = (await admin.query('SHOW POOLS')).rows.find((x) => x.database === 'postgres' && x.user === 'trust_user');
      return ['sv_active', 'sv_idle', 'sv_used', 'sv_tested', 'sv_login'].reduce((n, k) => n + Number(r[k]), 0);
    };
    await expect.poll(async () => (await held()) === (await serverCount(app)), { timeout: 10_000 }).toBe(true);
    expect(await held()).toBeLessThanOrEqual(2);
  });

  test('max_db_connections = 1 across 2 workers: another user\'s pool in the other worker takes the idle connection\'s place', async () => {
    const app = appName();
    const b = await startBouncer({ postgres: target(`application_name=${app}`) }, { max_db_connections: 1, default_pool_size: 2, query_wait_timeout: 60 });
    const [a, other] = await onBothWorkers(b, 'postgres', testDb().roles.md5.user);
    const turns = (async () => {
      for (let i = 0; i < 3; i++) {
        expect((await a.query('SELECT current_user AS u')).rows[0].u).toBe('trust_user');
        expect((await other.query('SELECT current_user AS u')).rows[0].u).toBe(testDb().roles.md5.user);
      }
    })();
    expect(await peakWhile(app, turns)).toBeLessThanOrEqual(1);
  });

  test('the Unix socket is served by both workers, a stale socket file of an earlier run notwithstanding', async () => {
    const b = await startBouncer({ postgres: target() }, { default_pool_size: 2 }, true);
    const seen = new Set<number>();
    for (let i = 0; i < 6 && seen.size < 2; i++) {
      const c = await connect(b, 'postgres', 'trust_user', b.dir);
      expect((await c.query('SELECT 1 AS v')).rows[0].v).toBe(1);
      seen.add(workerOf(c));
    }
    expect(seen.size).toBe(2);
  });

  test('max_client_conn = 5 across 2 workers: the 6th client is refused with pgBouncer\'s error; a leaving client frees its place', async () => {
    const b = await startBouncer({ postgres: target() }, { max_client_conn: 5, default_pool_size: 2 });
    const five: pg.Client[] = [];
    for (let i = 0; i < 5; i++) five.push(await connect(b));
    expect(new Set(five.map(workerOf)).size).toBe(2);
    // Whichever worker the 6th lands on, it counts the other's clients too.
    for (let i = 0; i < 2; i++) {
      const err = await connect(b).then(() => null, (e: Error & { code?: string }) => e);
      expect(err?.message).toBe('no more connections allowed (max_client_conn)');
      expect(err?.code).toBe('53300');
    }
    await five.pop()!.end();
    await expect.poll(async () => connect(b).then((c) => (c.end(), true), () => false), { timeout: 10_000 }).toBe(true);
  });
});

describe('pooling with --workers: a worker restarted after a crash is as the others', () => {
  test('after SET, PAUSE of a database and DISABLE of another, the restarted worker has the SET value, the pause and the disable', async () => {
    const b = await startBouncer({ postgres: target(), held: target(), off: target() }, { max_client_conn: 20, default_pool_size: 2 });
    // On the worker that stays: the other's sessions end with it.
    const admin = await consoleOn(b, 0);
    await admin.query('SET max_client_conn = 7');
    await admin.query('SET query_wait_timeout = 42');
    await admin.query('PAUSE held');
    await admin.query('DISABLE off');
    await crashWorker(b, 1);

    // Its own state, as its console reads it (SHOW CONFIG and STATE are the worker's own; SHOW DATABASES lists its row first).
    const own = await consoleOn(b, 1);
    const config = new Map((await own.query('SHOW CONFIG')).rows.map((r) => [r.key, r.value]));
    expect(config.get('max_client_conn')).toBe('7');
    expect(config.get('query_wait_timeout')).toBe('42');
    const dbs = new Map((await own.query('SHOW DATABASES')).rows.map((r) => [r.name, r]));
    expect(Number(dbs.get('held')?.paused)).toBe(1);
    expect(Number(dbs.get('off')?.disabled)).toBe(1);
    expect(Number(dbs.get('postgres')?.paused)).toBe(0);
    expect((await own.query('SHOW STATE')).rows).toContainEqual({ key: 'active', value: 'yes' });

    // And what it does with it: logins to the disabled database are refused on both workers.
    for (let i = 0; i < 4; i++) await expect(connect(b, 'off')).rejects.toThrow('database "off" is disabled');
    // Clients of the paused database wait in both workers until RESUME.
    const logins = await loginsWaiting(b, admin, 'held');
    await admin.query('RESUME held');
    const held = await Promise.all(logins);
    for (const c of held) expect((await (c as pg.Client).query('SELECT 1 AS v')).rows[0].v).toBe(1);
    expect(new Set(held.map((c) => workerOf(c as pg.Client))).size).toBe(2);
    // ENABLE reaches it too: it is one of the group again.
    await admin.query('ENABLE off');
    const [p, q] = await onBothWorkers(b, 'off');
    expect((await p.query('SELECT 1 AS v')).rows[0].v).toBe(1);
    expect((await q.query('SELECT 1 AS v')).rows[0].v).toBe(1);
  });

  test('after PAUSE of everything, the restarted worker is paused; RESUME frees the clients of both', async () => {
    const b = await startBouncer({ postgres: target() }, { default_pool_size: 2 });
    const admin = await consoleOn(b, 0);
    await admin.query('PAUSE');
    await crashWorker(b, 1);
    const own = await consoleOn(b, 1);
    expect((await own.query('SHOW STATE')).rows).toContainEqual({ key: 'paused', value: 'yes' });
    const logins = await loginsWaiting(b, admin, 'postgres');
    await admin.query('RESUME');
    const clients = await Promise.all(logins);
    for (const c of clients) expect((await (c as pg.Client).query('SELECT 2 AS v')).rows[0].v).toBe(2);
    expect(new Set(clients.map((c) => workerOf(c as pg.Client))).size).toBe(2);
    expect((await own.query('SHOW STATE')).rows).toContainEqual({ key: 'active', value: 'yes' });
  });
});

describe('pooling with --workers: cancel and console across workers', () => {
  test('console logins count across workers: one stats_users login at max_user_client_connections = 1, or at max_db_client_connections = 1, in all', async () => {
    const stats = testDb().roles.md5.user;
    for (const limit of ['max_user_client_connections', 'max_db_client_connections']) {
      const b = await startBouncer({ postgres: target() }, { default_pool_size: 2, stats_users: stats, [limit]: 1 });
      const first = await connect(b, 'pgbouncer', stats);
      expect((await first.query('SHOW VERSION')).rows).toHaveLength(1);
      // Whichever worker the next logins land on, the first one counts.
      for (let i = 0; i < 4; i++) await expect(connect(b, 'pgbouncer', stats)).rejects.toThrow(`no more connections allowed (${limit})`);
      // admin_users are never refused.
      const admins = [await connect(b, 'pgbouncer'), await connect(b, 'pgbouncer')];
      for (const a of admins) expect((await a.query('SHOW VERSION')).rows).toHaveLength(1);
      await Promise.all(admins.map((a) => a.end()));
      // Once it has left (and the admins, who count at max_db_client_connections), the next one gets in.
      await first.end();
      await expect.poll(() => connect(b, 'pgbouncer', stats).then((c) => c.end().then(() => true), () => false), { timeout: 10_000 }).toBe(true);
    }
  });

  test('a CancelRequest accepted by the other worker cancels the query of a pooled client', async () => {
    const b = await startBouncer({ postgres: target() }, { default_pool_size: 2 });
    const c = await connect(b);
    const key = c as unknown as { processID: number; secretKey: number };
    const routed = () => b.output().split('\n').filter((l) => l.includes('cancel request from another worker forwarded')).length;
    // The listener alternates between the workers: within a few tries a cancel lands on the worker that is not c's.
    for (let attempt = 0; attempt < 6; attempt++) {
      const before = routed();
      const running = c.query('SELECT pg_sleep(30)').then(() => null, (e: Error & { code?: string }) => e);
      await expect.poll(async () => (await adminQuery(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'`))[0].n, { timeout: 10_000 }).toBe(1);
      const secret = Buffer.alloc(4);
      secret.writeInt32BE(key.secretKey);
      await new Promise<void>((resolve, reject) => {
        const s = netConnect({ host: '127.0.0.1', port: b.port }, () => s.end(cancelRequest(key.processID, secret)));
        s.on('close', () => resolve());
        s.on('error', reject);
      });
      const err = await running;
      expect(err?.code).toBe('57014');
      if (routed() > before) return;
    }
    throw new Error(`no cancel request was routed between the workers:\n${b.output()}`);
  });

  test('PAUSE and RESUME given to one console hold and free the clients of both workers; SHOW POOLS and CLIENTS count both', async () => {
    const b = await startBouncer({ postgres: target() }, { default_pool_size: 2 });
    const [x, y] = await onBothWorkers(b);
    expect((await x.query('SELECT 1 AS v')).rows[0].v).toBe(1);
    expect((await y.query('SELECT 1 AS v')).rows[0].v).toBe(1);
    const admin = await connect(b, 'pgbouncer');
    const clients = (await admin.query('SHOW CLIENTS')).rows.filter((r) => r.database === 'postgres');
    // Both workers' clients (ids of both parities), as one list.
    expect(clients).toHaveLength(2);
    expect(new Set(clients.map((r) => Number(r.id) % 2)).size).toBe(2);
    await admin.query('PAUSE');
    const xq = x.query('SELECT 2 AS v');
    const yq = y.query('SELECT 3 AS v');
    const waiting = async () => (await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres' && r.user === 'trust_user')?.cl_waiting;
    await expect.poll(waiting, { timeout: 10_000 }).toBe(2);
    await admin.query('RESUME');
    expect((await xq).rows[0].v).toBe(2);
    expect((await yq).rows[0].v).toBe(3);
  });

  test('SET and KILL_CLIENT given to one console act in the other worker too', async () => {
    const b = await startBouncer({ postgres: target() }, { max_client_conn: 10, default_pool_size: 2 });
    const admin = await connect(b, 'pgbouncer');
    await admin.query('SET max_client_conn = 3');
    const three = [await connect(b), await connect(b), await connect(b)];
    expect(new Set(three.map(workerOf)).size).toBe(2);
    // Both workers have the new limit: the next clients are refused whichever worker they land on.
    for (let i = 0; i < 2; i++) await expect(connect(b)).rejects.toThrow('no more connections allowed (max_client_conn)');
    const rows = (await admin.query('SHOW CLIENTS')).rows;
    const own = rows.find((r) => r.database === 'pgbouncer')!;
    const victim = rows.find((r) => r.database === 'postgres' && Number(r.id) % 2 !== Number(own.id) % 2)!;
    await admin.query(`KILL_CLIENT ${victim.id}`);
    await expect.poll(async () => (await admin.query('SHOW CLIENTS')).rows.some((r) => r.id === victim.id), { timeout: 10_000 }).toBe(false);
    const left = await Promise.all(three.map((c) => c.query('SELECT 1').then(() => true, () => false)));
    expect(left.filter((ok) => !ok)).toHaveLength(1);
  });

  test('SHUTDOWN given to one console stops every worker, and the primary with them', async () => {
    const b = await startBouncer({ postgres: target() }, { default_pool_size: 2 });
    await onBothWorkers(b);
    const admin = await connect(b, 'pgbouncer');
    void admin.query('SHUTDOWN').catch(() => {});
    expect(await b.exited()).toBe(0);
    expect(existsSync(join(b.dir, 'pgb.pid'))).toBe(false);
    expect(b.output()).not.toContain('restarting');
  });

  test('SIGTERM to the primary: the clients of both workers go on, new ones are refused, all exit once they left', async () => {
    const b = await startBouncer({ postgres: target() }, { default_pool_size: 2 });
    const [x, y] = await onBothWorkers(b);
    b.child.kill('SIGTERM');
    // A connection made while the workers close their listeners may be left unanswered (Node's round-robin handle
    // can drop one in flight to the last worker closing): each attempt has a deadline, and the listener ends closed.
    const attempt = () =>
      new Promise<string>((resolve) => {
        const s = netConnect({ host: '127.0.0.1', port: b.port });
        const timer = setTimeout(() => (s.destroy(), resolve('no answer')), 2_000);
        s.on('connect', () => (clearTimeout(timer), s.destroy(), resolve('connected')));
        s.on('error', (e: NodeJS.ErrnoException) => (clearTimeout(timer), resolve(e.code ?? e.message)));
      });
    await expect.poll(attempt, { timeout: 15_000, interval: 100 }).toBe('ECONNREFUSED');
    expect((await x.query('SELECT 1 AS v')).rows[0].v).toBe(1);
    expect((await y.query('SELECT 2 AS v')).rows[0].v).toBe(2);
    expect(b.alive()).toBe(true);
    await x.end();
    await y.end();
    expect(await b.exited()).toBe(0);
  });

  test('RELOAD given to one console, and SIGHUP to the primary, reload every worker', async () => {
    const b = await startBouncer({ postgres: target() }, { default_pool_size: 2 });
    const text = readFileSync(b.ini, 'utf8');
    await expect(connect(b, 'added')).rejects.toThrow(/no such database/);
    writeFileSync(b.ini, text.replace('[databases]\n', `[databases]\nadded = ${target()}\n`));
    const admin = await connect(b, 'pgbouncer');
    await admin.query('RELOAD');
    const [p, q] = await onBothWorkers(b, 'added');
    expect((await p.query('SELECT 1 AS v')).rows[0].v).toBe(1);
    expect((await q.query('SELECT 1 AS v')).rows[0].v).toBe(1);

    writeFileSync(b.ini, text.replace('[databases]\n', `[databases]\nhupped = ${target()}\n`));
    b.child.kill('SIGHUP');
    await expect.poll(() => b.output(), { timeout: 10_000 }).toContain('configuration reloaded by the workers');
    const [r, s] = await onBothWorkers(b, 'hupped');
    expect((await r.query('SELECT 1 AS v')).rows[0].v).toBe(1);
    expect((await s.query('SELECT 1 AS v')).rows[0].v).toBe(1);
    expect(b.alive()).toBe(true);
  });

  test('clients queued in a worker\'s hub: SHOW POOLS counts them waiting, RECONNECT, KILL and query_wait_timeout reach them', async () => {
    const app = appName();
    const metricsPort = await freePort();
    const b = await startBouncer({ postgres: target(`application_name=${app}`) }, { default_pool_size: 1, max_client_conn: 40 }, false, [
      `metrics_listen = 127.0.0.1:${metricsPort}`,
    ]);
    const hubHandoffs = async () => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      return Number(text.split('\n').find((l) => l.startsWith('pg_steadytext_proxy_native_hub_handoffs_total '))?.split(' ').pop());
    };
    const admin = await connect(b, 'pgbouncer');
    const pools = async () => (await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres' && r.user === 'trust_user');
    /** n + 1 clients on one worker, members of its hub (a transaction each), the first in a transaction, the others' queries queued behind it. */
    const queueBehind = async (n: number) => {
      const all: pg.Client[] = [];
      let mine: pg.Client[] = [];
      while (mine.length < n + 1) {
        all.push(await connect(b));
        mine = all.filter((c) => workerOf(c) === workerOf(all[0]));
      }
      for (const c of all) if (!mine.includes(c)) await c.end();
      for (const c of mine) expect((await c.query('SELECT 1 AS v')).rows[0].v).toBe(1);
      const [holder, ...queued] = mine;
      await holder.query('BEGIN');
      const pid = (await holder.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      const pending = queued.map((c, k) => c.query('SELECT $1::int AS v', [k]));
      for (const q of pending) q.catch(() => {});
      await expect.poll(async () => Number((await pools()).cl_waiting), { timeout: 10_000 }).toBe(n);
      return { holder, queued, pending, pid };
    };

    // Waiting in C, counted by the console that asks both workers; handed over in C once the holder commits.
    let q = await queueBehind(3);
    expect(Number((await pools()).sv_active)).toBe(1);
    const before = await hubHandoffs();
    await q.holder.query('COMMIT');
    expect((await Promise.all(q.pending)).map((r) => (r as pg.QueryResult).rows[0].v)).toEqual([0, 1, 2]);
    expect((await hubHandoffs()) - before).toBeGreaterThanOrEqual(3);
    await Promise.all([q.holder, ...q.queued].map((c) => c.end()));

    // RECONNECT: the server in a transaction goes at its end; the queued clients get a new one.
    q = await queueBehind(2);
    await admin.query('RECONNECT postgres');
    await q.holder.query('COMMIT');
    expect((await Promise.all(q.pending)).map((r) => (r as pg.QueryResult).rows[0].v)).toEqual([0, 1]);
    expect((await q.queued[0].query('SELECT pg_backend_pid() AS pid')).rows[0].pid).not.toBe(q.pid);
    await Promise.all([q.holder, ...q.queued].map((c) => c.end()));

    // KILL ends the clients queued in C and the holder; after RESUME a new client is served.
    q = await queueBehind(2);
    await admin.query('KILL postgres');
    for (const p of q.pending) await expect(p).rejects.toThrow();
    await expect(q.holder.query('SELECT 1')).rejects.toThrow();
    await admin.query('RESUME postgres');
    const after = await connect(b);
    expect((await after.query('SELECT 5 AS v')).rows[0].v).toBe(5);
    await after.end();

    // query_wait_timeout (SET in both workers) ends clients queued in C, as JS waiters.
    await admin.query('SET query_wait_timeout = 1');
    q = await queueBehind(2);
    for (const p of q.pending) await expect(p).rejects.toThrow(/query_wait_timeout/);
    await q.holder.query('COMMIT');
    expect(Number((await pools()).cl_waiting)).toBe(0);
    expect(await serverCount(app)).toBeLessThanOrEqual(1);
  });

  test('in each worker, clients in the hub and clients JS serves (a SET each transaction) share one queue: neither starves', async () => {
    const b = await startBouncer({ postgres: target() }, { default_pool_size: 2, query_wait_timeout: 60 });
    const plain = await Promise.all(Array.from({ length: 6 }, () => connect(b)));
    const setters = await Promise.all(Array.from({ length: 6 }, () => connect(b)));
    expect(new Set([...plain, ...setters].map(workerOf)).size).toBe(2);
    for (const c of [...plain, ...setters]) await c.query('SELECT 1');
    const done = { plain: 0, setters: 0 };
    let stop = false;
    const loops = [
      ...plain.map(async (c, i) => {
        while (!stop) {
          expect((await c.query('SELECT $1::int AS v, pg_sleep(0.002)', [i])).rows[0].v).toBe(i);
          done.plain++;
        }
      }),
      ...setters.map(async (c, i) => {
        for (let k = 0; !stop; k++) {
          await c.query(`SET application_name = 'setter-${i}-${k}'`);
          expect((await c.query("SELECT current_setting('application_name') AS a, pg_sleep(0.002)")).rows[0].a).toBe(`setter-${i}-${k}`);
          done.setters++;
        }
      }),
    ];
    while (done.setters < 300) await new Promise((r) => setTimeout(r, 50));
    stop = true;
    await Promise.all(loops);
    expect(done.plain).toBeGreaterThan(done.setters / 4);
  });
});
