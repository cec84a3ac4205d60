// The CLI run as pgBouncer is (`pg-steadytext pgbouncer CONFIG.ini`), as a real child process: the signals
// only a process can receive (TERM, INT, USR2, twice), the console login of the process's own OS user over
// the Unix socket, and host lists with a dead host. Each test writes its own ini against the test cluster and
// reads pgBouncer's logfile, which is what an existing deployment's scripts and alerts look at.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterEach, describe, expect, test } from 'vitest';
import { freePort } from '../setup/cluster.js';
import { run, spawnCli, testDb } from './helpers.js';

/** How long an exit may take once it is due: generous, the process is checked every 250 ms as pgBouncer's janitor does. */
const EXIT_DEADLINE_MS = 10_000;

interface Bouncer {
  dir: string;
  port: number;
  child: ChildProcess;
  /** pgBouncer's logfile so far. */
  log(): string;
  /** The child's stdout and stderr (pino), for the failure messages. */
  output(): string;
  alive(): boolean;
  /** The exit code, or a rejection after timeoutMs. */
  exited(timeoutMs?: number): Promise<number | null>;
}

const started: { bouncers: Bouncer[]; clients: pg.Client[] } = { bouncers: [], clients: [] };

afterEach(async () => {
  // No process may outlive its test, whatever the assertions did.
  for (const b of started.bouncers) {
    if (b.alive()) b.child.kill('SIGKILL');
    await b.exited(5_000).catch(() => {});
    rmSync(b.dir, { recursive: true, force: true });
  }
  await Promise.all(started.clients.map((c) => c.end().catch(() => {})));
  started.bouncers = [];
  started.clients = [];
});

/** Resolves with the error code of a TCP connection attempt (null: it connected). */
function tcpAttempt(host: string, port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const s = netConnect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(null);
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** Starts the CLI as pgBouncer on a fresh ini; resolves once it has written its pidfile (its signal handlers are in place then). */
async function startBouncer(opts: {
  databases: Record<string, string>;
  settings: Record<string, string | number>;
  users?: [string, string][];
}): Promise<Bouncer> {
  const r = await launch(opts);
  if ('exit' in r) throw new Error('unreachable');
  return r;
}

/** Writes the ini and runs the CLI as pgBouncer (with -d: returns the invoking process and its exit). */
async function launch(opts: {
  databases: Record<string, string>;
  settings: Record<string, string | number>;
  users?: [string, string][];
  daemon?: boolean;
}): Promise<Bouncer | { dir: string; child: ChildProcess; output: () => string; exit: Promise<number | null> }> {
  const dir = mkdtempSync(join(tmpdir(), 'pgb-process-'));
  const port = await freePort();
  const q = (s: string) => `"${s.replaceAll('"', '""')}"`;
  const settings: Record<string, string | number> = {
    listen_addr: '127.0.0.1',
    listen_port: port,
    unix_socket_dir: dir,
    logfile: join(dir, 'pgb.log'),
    pidfile: join(dir, 'pgb.pid'),
    ...opts.settings,
  };
  if (opts.users) {
    writeFileSync(join(dir, 'userlist.txt'), opts.users.map(([u, p]) => `${q(u)} ${q(p)}`).join('\n') + '\n');
    settings.auth_file = join(dir, 'userlist.txt');
  }
  const ini = join(dir, 'pgbouncer.ini');
  writeFileSync(
    ini,
    [
      '[databases]',
      ...Object.entries(opts.databases).map(([k, v]) => `${k} = ${v}`),
      '[pgbouncer]',
      ...Object.entries(settings).map(([k, v]) => `${k} = ${v}`),
    ].join('\n') + '\n',
  );
  const { child, output } = spawnCli(['pgbouncer', ...(opts.daemon ? ['-d'] : []), ini], { PGSTEADYTEXT_DAEMON_LISTEN: 'off' });
  if (opts.daemon) return { dir, child, output, exit: new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code))) };
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const logfile = join(dir, 'pgb.log');
  const b: Bouncer = {
    dir,
    port,
    child,
    log: () => (existsSync(logfile) ? readFileSync(logfile, 'utf8') : ''),
    output,
    alive: () => child.exitCode === null && child.signalCode === null,
    exited(timeoutMs = EXIT_DEADLINE_MS) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`still running after ${timeoutMs} ms; log:\n${b.log()}`)), timeoutMs);
      });
      return Promise.race([exit, late]).finally(() => clearTimeout(timer));
    },
  };
  started.bouncers.push(b);
  const pidfile = join(dir, 'pgb.pid');
  const deadline = Date.now() + 30_000;
  while (!existsSync(pidfile) || readFileSync(pidfile, 'utf8').trim() !== String(child.pid)) {
    if (!b.alive()) throw new Error(`pg-steadytext pgbouncer exited (${child.exitCode}) before it was ready:\n${output()}`);
    if (Date.now() > deadline) throw new Error(`pg-steadytext pgbouncer not ready after 30 s:\n${output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return b;
}

/** A connection to the bouncer: over TCP, or over its Unix socket (unix: true). */
async function connect(b: Bouncer, c: { user: string; database: string; password?: string; unix?: boolean; options?: string }): Promise<pg.Client> {
  const client = new pg.Client({ host: c.unix ? b.dir : '127.0.0.1', port: b.port, user: c.user, database: c.database, password: c.password, options: c.options });
  client.on('error', () => {}); // a dropped connection shows in the next query's result
  started.clients.push(client);
  await client.connect();
  return client;
}

const one = async (c: pg.Client) => (await c.query('select 1 as v')).rows[0].v as number;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** What `calls` the bouncer's process (all its threads) made while `work` ran, as strace writes them. */
async function straced(b: Bouncer, calls: string, work: () => Promise<void>): Promise<string> {
  const trace = join(mkdtempSync(join(tmpdir(), 'pgb-strace-')), 'trace');
  const strace = spawn('strace', ['-f', '-e', `trace=${calls}`, '-e', 'signal=none', '-o', trace, '-p', String(b.child.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let attached = '';
  strace.stderr.on('data', (d: Buffer) => (attached += d.toString()));
  try {
    await expect.poll(() => attached, { timeout: 10_000 }).toContain(`Process ${b.child.pid} attached`);
    await work();
  } finally {
    strace.kill('SIGINT');
    await new Promise((r) => strace.once('exit', r));
  }
  return readFileSync(trace, 'utf8');
}
/** Waits until the logfile has `text` (the signal handlers run asynchronously to the kill). */
const logged = (b: Bouncer, text: string) => expect.poll(() => b.log(), { timeout: 5_000 }).toContain(text);

/** As in pgBouncer, auth_type = trust still wants the user in auth_file (the cluster trusts trust_user: no secret needed). */
const TRUST_USERS: [string, string][] = [['trust_user', '']];

/** The shutdown tests' bouncer: trust_user in transaction mode on a pool of 2, in front of the test cluster. */
function trustBouncer(): Promise<Bouncer> {
  return startBouncer({
    databases: { postgres: target() },
    settings: { auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 2 },
    users: TRUST_USERS,
  });
}

function target(host = testDb().host): string {
  return `host=${host} port=${testDb().port} dbname=postgres`;
}

describe('pg-steadytext pgbouncer as a process', () => {
  test("the process's own OS user logs in to the console as pgbouncer over the Unix socket, without a password; not over TCP", async () => {
    const scram = testDb().roles.scram;
    // pgbouncer is neither in auth_file nor in admin_users: only admin_pre_login lets it in.
    const b = await startBouncer({
      databases: { postgres: target() },
      settings: { auth_type: 'scram-sha-256', pool_mode: 'transaction', default_pool_size: 2 },
      users: [[scram.user, scram.password]],
    });
    const admin = await connect(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
    const version = (await admin.query('SHOW VERSION')).rows;
    expect(version).toHaveLength(1);
    expect(String(Object.values(version[0])[0])).toMatch(/^PgBouncer/);
    await expect(admin.query('PAUSE')).resolves.toBeDefined();
    await expect(admin.query('RESUME')).resolves.toBeDefined();

    await expect(connect(b, { user: 'pgbouncer', database: 'pgbouncer' })).rejects.toThrow(/not allowed|password/);
    // The ini itself works for a pooled login with a password.
    const pooled = await connect(b, { user: scram.user, password: scram.password, database: 'postgres' });
    expect(await one(pooled)).toBe(1);
  });

  test('hba peer: the Unix socket\'s OS user logs in as the users its ident map names, nobody else and never over TCP', async () => {
    const md5 = testDb().roles.md5;
    const dir = mkdtempSync(join(tmpdir(), 'pgb-peer-'));
    writeFileSync(join(dir, 'hba.conf'), 'local all all peer map=m\nhost all all 127.0.0.1/32 peer\n');
    writeFileSync(join(dir, 'ident.conf'), `m ${userInfo().username} trust_user\n`);
    const b = await startBouncer({
      databases: { postgres: target() },
      settings: { auth_type: 'hba', auth_hba_file: join(dir, 'hba.conf'), auth_ident_file: join(dir, 'ident.conf'), pool_mode: 'transaction' },
      users: [...TRUST_USERS, [md5.user, md5.password]],
    });
    try {
      expect(await one(await connect(b, { user: 'trust_user', database: 'postgres', unix: true }))).toBe(1);
      // Known to the pooler, with its password even, but not this OS user's to use.
      await expect(connect(b, { user: md5.user, password: md5.password, database: 'postgres', unix: true })).rejects.toThrow(/peer authentication failed/);
      await expect(connect(b, { user: 'trust_user', database: 'postgres' })).rejects.toThrow(/peer authentication failed/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('verbose = 2: a client\'s startup options are applied once per server connection and kept in the server\'s spelling (varcache_apply, varcache_set_canonical)', async () => {
    const b = await startBouncer({
      databases: { postgres: target() },
      settings: { auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 1, verbose: 2 },
      users: TRUST_USERS,
    });
    const applied = () => b.log().match(/^.*varcache_apply: .*SET DateStyle='ISO.*$/gm) ?? [];
    const first = await connect(b, { user: 'trust_user', database: 'postgres', options: '-c DateStyle=ISO' });
    const show = async (c: pg.Client) => (await c.query('SHOW DateStyle')).rows[0].DateStyle as string;
    expect(await show(first)).toBe('ISO, MDY');
    expect(await show(first)).toBe('ISO, MDY');
    await logged(b, 'varcache_set_canonical: setting DateStyle to its canonical version ISO -> ISO, MDY');
    expect(applied()).toHaveLength(1);
    expect(applied()[0]).toMatch(/ DEBUG S-0x[0-9a-f]+: postgres\/trust_user@127\.0\.0\.1:\d+ varcache_apply: (SET [a-z_]+='[^']*';)*SET DateStyle='ISO';/);
    await first.end();
    // The one server connection now has 'ISO, MDY' as the first client's: a client asking for that spelling needs nothing set.
    const second = await connect(b, { user: 'trust_user', database: 'postgres', options: '-c DateStyle=ISO,\\ MDY' });
    expect(await show(second)).toBe('ISO, MDY');
    expect(applied()).toHaveLength(1);
    expect(b.log()).not.toContain("varcache_apply: SET DateStyle='ISO, MDY'");
  });

  test("startup options: every -c setting carried by default; with `options` in ignore_startup_parameters only what pgBouncer tracks, the rest ignored", async () => {
    const ini = (ignore: string) => ({
      databases: { postgres: target() },
      settings: { auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 1, track_extra_parameters: 'search_path', ignore_startup_parameters: ignore },
      users: TRUST_USERS,
    });
    const options = '-c enable_seqscan=off -ctimezone=Portugal --search-path=pg_catalog -c work_mem=1234kB';
    const settings = async (c: pg.Client) =>
      (await c.query("SELECT current_setting('enable_seqscan') AS s, current_setting('TimeZone') AS tz, current_setting('search_path') AS p, current_setting('work_mem') AS w")).rows[0];
    const carried = await startBouncer(ini('work_mem'));
    const a = await connect(carried, { user: 'trust_user', database: 'postgres', options });
    // work_mem is in the list: not applied; the others carried, enable_seqscan too (pgBouncer would refuse the login).
    expect(await settings(a)).toEqual({ s: 'off', tz: 'Portugal', p: 'pg_catalog', w: '4MB' });
    await a.end();

    const strict = await startBouncer(ini('options'));
    const b = await connect(strict, { user: 'trust_user', database: 'postgres', options });
    const other = await connect(strict, { user: 'trust_user', database: 'postgres' });
    for (let i = 0; i < 2; i++) {
      // Twice, the other client between: what was ignored is not set on the shared server connection either.
      expect(await settings(b)).toEqual({ s: 'on', tz: 'Portugal', p: 'pg_catalog', w: '4MB' });
      expect((await settings(other)).tz).not.toBe('Portugal');
    }
    // A switch that is not a setting is refused all the same (pgBouncer's text).
    await expect(connect(strict, { user: 'trust_user', database: 'postgres', options: '-d 1' })).rejects.toThrow(
      "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed",
    );
  });

  test("log_stats: every stats_period the logfile gets pgBouncer's stats line, its averages over the window; log_stats = 0: none", async () => {
    const STATS = /^\S+ \S+ UTC \[\d+\] LOG stats: (\d+) xacts\/s, (\d+) queries\/s, (\d+) client parses\/s, (\d+) server parses\/s, (\d+) binds\/s, in (\d+) B\/s, out (\d+) B\/s, xact (\d+) us, query (\d+) us, wait (\d+) us$/;
    const lines = (b: Bouncer) => b.log().split('\n').filter((l) => l.includes(' stats: '));
    const b = await startBouncer({
      databases: { postgres: target() },
      settings: { auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 2, stats_period: 1 },
      users: TRUST_USERS,
    });
    const c = await connect(b, { user: 'trust_user', database: 'postgres' });
    // Queries spread over a few windows: some window counts them.
    const until = Date.now() + 2_500;
    while (Date.now() < until) {
      await c.query({ name: 'p', text: 'select $1::int as v', values: [1] });
      await sleep(10);
    }
    await expect.poll(() => lines(b).length, { timeout: 5_000 }).toBeGreaterThanOrEqual(3);
    const figures = lines(b).map((l) => {
      const m = STATS.exec(l);
      expect(m, l).not.toBeNull();
      return m!.slice(1).map(Number);
    });
    const busy = figures.find(([xacts]) => xacts > 0);
    expect(busy, lines(b).join('\n')).toBeDefined();
    const [xacts, queries, , , binds, bytesIn, bytesOut, xactUs, queryUs] = busy!;
    // About 50 transactions a second, each one query with one Bind; bytes both ways; times per transaction.
    expect(xacts).toBeGreaterThan(10);
    expect(queries).toBe(xacts);
    expect(binds).toBe(xacts);
    expect(bytesIn).toBeGreaterThan(0);
    expect(bytesOut).toBeGreaterThan(0);
    expect(xactUs).toBeGreaterThan(0);
    expect(queryUs).toBeGreaterThan(0);

    const quiet = await startBouncer({
      databases: { postgres: target() },
      settings: { auth_type: 'trust', pool_mode: 'transaction', stats_period: 1, log_stats: 0 },
      users: TRUST_USERS,
    });
    expect(await one(await connect(quiet, { user: 'trust_user', database: 'postgres' }))).toBe(1);
    await sleep(2_500);
    expect(lines(quiet)).toEqual([]);
    expect(lines(b).length).toBeGreaterThanOrEqual(5); // meanwhile the first one went on
  });

  test('unix_socket_mode (default 0777, whatever the umask), unix_socket_group and listen_backlog, as pgBouncer sets them', async () => {
    const socketOf = (b: Bouncer) => join(b.dir, `.s.PGSQL.${b.port}`);
    const backlog = async (port: number) => {
      // ss prints a listening socket's backlog in its Send-Q column.
      const r = await run('ss', ['-Hltn', `sport = :${port}`]);
      return Number(r.stdout.trim().split(/\s+/)[2]);
    };
    const plain = await startBouncer({ databases: { postgres: target() }, settings: { auth_type: 'trust' }, users: TRUST_USERS });
    expect((statSync(socketOf(plain)).mode & 0o777).toString(8)).toBe('777');
    expect(await backlog(plain.port)).toBe(128);
    const group = userInfo().gid === 0 ? 'daemon' : String(userInfo().gid);
    const gid = group === 'daemon' ? Number(readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.startsWith('daemon:'))!.split(':')[2]) : Number(group);
    const strict = await startBouncer({
      databases: { postgres: target() },
      settings: { auth_type: 'trust', unix_socket_mode: '0700', unix_socket_group: group, listen_backlog: 37 },
      users: TRUST_USERS,
    });
    const st = statSync(socketOf(strict));
    expect({ mode: (st.mode & 0o777).toString(8), gid: st.gid }).toEqual({ mode: '700', gid });
    expect(await backlog(strict.port)).toBe(37);
    expect(await one(await connect(strict, { user: 'trust_user', database: 'postgres', unix: true }))).toBe(1);
    // A group that does not exist stops the start, as in pgBouncer, naming it.
    await expect(startBouncer({ databases: { postgres: target() }, settings: { auth_type: 'trust', unix_socket_group: 'no_such_group_here' }, users: TRUST_USERS })).rejects.toThrow(
      "could not find group 'no_such_group_here' (unix_socket_group)",
    );
  });

  test('log_disconnections and log_pooler_errors: the closing and pooler-error lines, and neither when off', async () => {
    for (const on of [1, 0]) {
      const b = await startBouncer({
        databases: { postgres: target() },
        settings: { auth_type: 'trust', pool_mode: 'transaction', log_disconnections: on, log_pooler_errors: on, server_lifetime: 0 },
        users: TRUST_USERS,
      });
      await expect(connect(b, { user: 'trust_user', database: 'no_such_db' })).rejects.toThrow('no such database: no_such_db');
      const c = await connect(b, { user: 'trust_user', database: 'postgres' });
      expect(await one(c)).toBe(1);
      await c.end();
      // The client's close, and (server_lifetime 0) its server connection's.
      if (on) {
        await logged(b, 'pooler error: no such database: no_such_db');
        await logged(b, 'closing because: no such database: no_such_db');
        await logged(b, 'closing because: client close request');
        await logged(b, 'closing because: server lifetime over');
        expect(b.log()).toMatch(/ WARNING C-0x[0-9a-f]+: no_such_db\/trust_user@127\.0\.0\.1:\d+ pooler error: no such database: no_such_db\n/);
      } else {
        await sleep(500);
        expect(b.log()).not.toContain('closing because');
        expect(b.log()).not.toContain('pooler error');
        expect(b.log()).toContain('login attempt: db=postgres'); // the log itself goes on
      }
    }
  });

  test('tcp_keepidle, tcp_keepintvl, tcp_keepcnt and tcp_socket_buffer on client and server connections (the receive buffer through the listening socket)', async () => {
    const b = await startBouncer({
      databases: { postgres: target() },
      settings: { auth_type: 'trust', pool_mode: 'session', tcp_keepidle: 17, tcp_keepintvl: 3, tcp_keepcnt: 4, tcp_socket_buffer: 40000, tcp_user_timeout: 5000 },
      users: TRUST_USERS,
    });
    const c = await connect(b, { user: 'trust_user', database: 'postgres' });
    expect(await one(c)).toBe(1); // session mode: the client holds its server connection
    // ss: the keepalive timer counts down from tcp_keepidle; the kernel doubles the buffer sizes it was given.
    const sockets = async (filter: string) => (await run('ss', ['-Htnoimp', 'state', 'established', filter])).stdout;
    const mine = (out: string) => out.split(/\n(?=\S)/).filter((entry) => entry.includes(`pid=${b.child.pid},`));
    // Right after a write the timer is the retransmission one: wait for the connections to go quiet.
    const both = async () => [mine(await sockets(`sport = :${b.port}`)), mine(await sockets(`dport = :${testDb().port}`))];
    await expect.poll(async () => (await both()).every((entries) => entries.length === 1 && entries[0].includes('timer:(keepalive,')), { timeout: 5_000 }).toBe(true);
    const [clientSide, serverSide] = await both();
    for (const [side, entries] of [['client', clientSide], ['server', serverSide]] as const) {
      const timer = /timer:\(keepalive,(\d+)sec,0\)/.exec(entries[0]);
      expect({ side, seconds: Number(timer?.[1]) <= 17 }).toEqual({ side, seconds: true });
      expect(entries[0]).toContain('tb80000');
      // The receive buffer only where the connection inherits it before its handshake: the listening socket's.
      if (side === 'client') expect(entries[0]).toContain('rb80000');
      else expect(entries[0]).not.toContain('rb80000');
    }
    await c.end();
  });

  test('tcp_socket_buffer: a large result is written to the client in pieces no larger than the buffer, in session and transaction mode', async () => {
    // Linux takes a whole write into one segment of up to 64 kB whatever SO_SNDBUF says; over loopback the
    // reader then delays its ACK and a stream waits on every such segment (pg_basebackup through the pooler ran
    // 20x slower than through pgBouncer, whose writes are pkt_buf-sized). What the proxy writes is seen by strace.
    const b = await startBouncer({
      databases: { postgres: target(), tx: `${target()} pool_mode=transaction` },
      settings: { auth_type: 'trust', pool_mode: 'session', tcp_socket_buffer: 4096 },
      users: TRUST_USERS,
    });
    const trace = await straced(b, 'write,writev,sendto,sendmsg', async () => {
      for (const database of ['postgres', 'tx']) {
        const c = await connect(b, { user: 'trust_user', database });
        const { rows } = await c.query(`select repeat('x', 1000) as v from generate_series(1, 2000)`);
        expect(rows.length).toBe(2000);
        await c.end();
      }
    });
    const written = [...trace.matchAll(/\b(?:write|writev|sendto|sendmsg)\(.*\) = (\d+)$/gm)].map((m) => Number(m[1]));
    expect(written.reduce((a, n) => a + n, 0)).toBeGreaterThan(4_000_000); // both results went through the traced calls
    expect(Math.max(...written)).toBeLessThanOrEqual(4096);
  });

  test('one epoll wait per wakeup, and Node\'s loop does not go round per query: the relay waits in its callbacks', async () => {
    // Node keeps libuv's idle-time metrics on, with which every poll that finds nothing ready is made twice
    // (timeout 0, then the sleep): ~7% of the pooler's CPU per transaction at one client. The relay turns them off.
    // And each wakeup of the loop runs its whole iteration (timers, Node's check phase, ...): the relay's callback
    // waits for its sockets' next event itself instead (relay.c wait_here), with 64 events at most where libuv
    // asks for 1024, which tells the two apart in the trace.
    const b = await startBouncer({ databases: { tx: `${target()} pool_mode=transaction` }, settings: { auth_type: 'trust' }, users: TRUST_USERS });
    const c = await connect(b, { user: 'trust_user', database: 'tx' });
    expect(await one(c)).toBe(1);
    const trace = await straced(b, 'epoll_wait,epoll_pwait,sendto,write,writev', async () => {
      for (let i = 0; i < 500; i++) expect(await one(c)).toBe(1);
    });
    const calls = (names: string) => [...trace.matchAll(new RegExp(`\\b(?:${names})\\(`, 'g'))].length;
    const sends = calls('sendto|write|writev');
    const polls = calls('epoll_wait|epoll_pwait');
    const mainThread = trace.split('\n').filter((l) => l.startsWith(`${b.child.pid} `)).join('\n');
    const asking = (max: number) => [...mainThread.matchAll(new RegExp(`\\], ${max}, -?\\d+[,)]`, 'g'))].length;
    const turns = asking(1024);
    const relayWaits = asking(64);
    expect(sends).toBeGreaterThanOrEqual(1000); // each query to the server and its answer to the client
    expect({ sends, polls, fewer: polls <= sends * 1.05 + 20 }).toEqual({ sends, polls, fewer: true });
    expect({ turns, relayWaits, inCallbacks: relayWaits >= 900 && turns <= sends / 10 }).toEqual({ turns, relayWaits, inCallbacks: true });
    await c.end();
  });

  test('while the relay waits in its callbacks, the loop still runs its timers, signals and other sockets', async () => {
    const b = await startBouncer({
      databases: { tx: `${target()} pool_mode=transaction` },
      settings: { auth_type: 'trust', client_idle_timeout: 1, admin_users: 'trust_user' },
      users: TRUST_USERS,
    });
    const closedBy = new Map<pg.Client, string>();
    const watched = async () => {
      const c = await connect(b, { user: 'trust_user', database: 'tx' });
      c.once('error', (e) => closedBy.set(c, e.message));
      expect(await one(c)).toBe(1);
      return c;
    };
    const busy = await watched();
    const idle = await watched();
    let stop = false;
    let queries = 0;
    const load = (async () => {
      while (!stop) {
        expect(await one(busy)).toBe(1);
        queries++;
      }
    })();
    try {
      // While one client's queries keep the relay in its waits: a socket JS reads (the console), ...
      await expect.poll(() => queries, { timeout: 10_000 }).toBeGreaterThan(200);
      const admin = await connect(b, { user: 'trust_user', database: 'pgbouncer' });
      const { rows } = await admin.query('SHOW POOLS');
      expect(rows.some((r) => r.database === 'tx')).toBe(true);
      await admin.end();
      // ... a signal, ...
      process.kill(b.child.pid!, 'SIGHUP');
      await expect.poll(() => b.output(), { timeout: 10_000 }).toContain('configuration reloaded');
      // ... and a timer: the janitor's client_idle_timeout closes the idle client, the busy one still at work.
      await expect.poll(() => closedBy.get(idle), { timeout: 10_000 }).toMatch(/client_idle_timeout/);
      const before = queries;
      await expect.poll(() => queries, { timeout: 10_000 }).toBeGreaterThan(before + 50);
    } finally {
      stop = true;
      await load;
    }
    // After the last event the relay waited for, nothing else comes: its wait still ends when the timer is due.
    const last = await watched();
    for (let i = 0; i < 5; i++) expect(await one(last)).toBe(1); // relayed, where the first may not be
    await expect.poll(() => [closedBy.get(busy), closedBy.get(last)], { timeout: 10_000 }).toEqual(['client_idle_timeout', 'client_idle_timeout']);
  });

  test('SIGTERM: no new connections, connected clients go on, the process exits once the last one leaves', async () => {
    const b = await trustBouncer();
    const c = await connect(b, { user: 'trust_user', database: 'postgres' });
    expect(await one(c)).toBe(1);

    process.kill(b.child.pid!, 'SIGTERM');
    await logged(b, 'got SIGTERM, shutting down, waiting for all clients disconnect');
    await expect.poll(() => tcpAttempt('127.0.0.1', b.port), { timeout: 5_000 }).toBe('ECONNREFUSED');
    for (let i = 0; i < 3; i++) {
      await sleep(300);
      expect(await one(c)).toBe(1);
    }
    expect(b.alive()).toBe(true);

    await c.end();
    expect(await b.exited()).toBe(0);
    expect(b.log()).toContain('client connections dropped, exiting');
  });

  test('a second SIGTERM while waiting for clients exits at once', async () => {
    const b = await trustBouncer();
    const c = await connect(b, { user: 'trust_user', database: 'postgres' });
    expect(await one(c)).toBe(1);

    process.kill(b.child.pid!, 'SIGTERM');
    await logged(b, 'got SIGTERM, shutting down, waiting for all clients disconnect');
    expect(b.alive()).toBe(true);
    process.kill(b.child.pid!, 'SIGTERM');
    expect(await b.exited()).toBe(0);
    expect(b.log()).toContain('got SIGTERM while shutting down, fast exit');
    await expect(c.query('select 1')).rejects.toThrow();
  });

  test('SIGINT: a transaction in progress finishes, an idle client that asks for a server is let go, then the process exits', async () => {
    const b = await trustBouncer();
    const a = await connect(b, { user: 'trust_user', database: 'postgres' });
    const idle = await connect(b, { user: 'trust_user', database: 'postgres' });
    await a.query('BEGIN');
    expect(await one(a)).toBe(1);

    process.kill(b.child.pid!, 'SIGINT');
    await logged(b, 'got SIGINT, shutting down, waiting for all servers connections to be released');
    expect(await one(a)).toBe(1);
    await expect(idle.query('select 1')).rejects.toThrow('server shutting down');
    await logged(b, 'closing because: server shutting down');
    expect(b.alive()).toBe(true);

    await a.query('COMMIT');
    expect(await b.exited()).toBe(0);
    expect(b.log()).toContain('server connections dropped, exiting');
  });

  test('while shutting down, SIGUSR2 is ignored and RESUME from the console is refused', async () => {
    const b = await trustBouncer();
    // Opened before the signal: shutting down closes the Unix socket to new connections too.
    const admin = await connect(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
    const c = await connect(b, { user: 'trust_user', database: 'postgres' });
    expect(await one(c)).toBe(1);

    process.kill(b.child.pid!, 'SIGTERM');
    await logged(b, 'got SIGTERM, shutting down, waiting for all clients disconnect');
    process.kill(b.child.pid!, 'SIGUSR2');
    await logged(b, 'got SIGUSR2 while shutting down, ignoring');
    await expect(admin.query('RESUME')).rejects.toThrow('pooler is shutting down');
    expect(b.alive()).toBe(true);
    expect(await one(c)).toBe(1);

    await Promise.all([admin.end(), c.end()]);
    expect(await b.exited()).toBe(0);
  });

  test('-d: the invoking process returns once the server serves; the server goes on detached, named by the pidfile, and SIGTERM stops it', async () => {
    const r = await launch({ databases: { postgres: target() }, settings: { auth_type: 'trust', pool_mode: 'transaction' }, users: TRUST_USERS, daemon: true });
    if (!('exit' in r)) throw new Error('expected the daemonizing launch');
    let pid = 0;
    try {
      expect(await r.exit, r.output()).toBe(0);
      pid = Number(readFileSync(join(r.dir, 'pgb.pid'), 'utf8').trim());
      expect(pid).toBeGreaterThan(0);
      expect(pid).not.toBe(r.child.pid);
      const port = Number(/listen_port = (\d+)/.exec(readFileSync(join(r.dir, 'pgbouncer.ini'), 'utf8'))![1]);
      const c = new pg.Client({ host: '127.0.0.1', port, user: 'trust_user', database: 'postgres' });
      await c.connect();
      expect(await one(c)).toBe(1);
      await c.end();
      process.kill(pid, 'SIGTERM');
      await expect.poll(() => { try { process.kill(pid, 0); return true; } catch { return false; } }, { timeout: EXIT_DEADLINE_MS }).toBe(false);
      pid = 0;
    } finally {
      if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      rmSync(r.dir, { recursive: true, force: true });
    }
  });

  test('-d with a configuration the server cannot start with: the invoking process fails and says so', async () => {
    const r = await launch({ databases: { postgres: target() }, settings: { auth_type: 'trust', listen_addr: '203.0.113.1' }, users: TRUST_USERS, daemon: true });
    if (!('exit' in r)) throw new Error('expected the daemonizing launch');
    try {
      expect(await r.exit).toBe(1);
      expect(r.output()).toMatch(/the server stopped before it was ready/);
    } finally {
      rmSync(r.dir, { recursive: true, force: true });
    }
  });

  test('host lists: a dead host is skipped, with load_balance_hosts = disable and with round-robin', async () => {
    const db = testDb();
    // An address on the loopback where nothing listens on the cluster's port (the cluster listens on one address).
    let dead: string | undefined;
    for (let i = 2; i < 10 && dead === undefined; i++) {
      const addr = `127.0.0.${i}`;
      if (addr !== db.host && (await tcpAttempt(addr, db.port)) === 'ECONNREFUSED') dead = addr;
    }
    expect(dead, 'no loopback address without a listener on the cluster port').toBeDefined();
    const b = await startBouncer({
      databases: {
        hostlist: `host=${dead},${db.host} port=${db.port} dbname=postgres load_balance_hosts=disable`,
        hostlist_rr: `host=${db.host},${dead} port=${db.port} dbname=postgres`,
        hostlist_cold: `host=${dead},${db.host} port=${db.port} dbname=postgres load_balance_hosts=disable`,
      },
      // Session mode and room for every client: each parallel client takes a server connection of its own,
      // so round-robin comes to the dead host several times.
      settings: { auth_type: 'trust', pool_mode: 'session', default_pool_size: 6 },
      users: TRUST_USERS,
    });

    // disable, cold: connections open one at a time (pgBouncer's way), so of two opened together only the first
    // tries the dead host; the second starts from the host that works.
    const cold = await Promise.all([0, 1].map(() => connect(b, { user: 'trust_user', database: 'hostlist_cold' })));
    expect(await Promise.all(cold.map(one))).toEqual([1, 1]);
    await Promise.all(cold.map((c) => c.end()));
    const failed = b.log().split('\n').filter((l) => l.includes('closing because: server connect failed') && l.includes(' hostlist_cold/'));
    expect(failed, b.log()).toHaveLength(1);

    for (const database of ['hostlist', 'hostlist_rr']) {
      for (let i = 0; i < 6; i++) {
        const c = await connect(b, { user: 'trust_user', database });
        expect(await one(c)).toBe(1);
        await c.end();
      }
      const parallel = await Promise.all(Array.from({ length: 6 }, () => connect(b, { user: 'trust_user', database })));
      expect(await Promise.all(parallel.map(one))).toEqual([1, 1, 1, 1, 1, 1]);
      const servers = await Promise.all(
        parallel.map(async (c) => (await c.query('select host(inet_server_addr()) as addr, pg_backend_pid() as pid')).rows[0]),
      );
      // Six server connections of their own, all on the live host.
      expect(new Set(servers.map((s) => s.pid)).size).toBe(6);
      expect(servers.map((s) => s.addr)).toEqual(Array(6).fill(db.host));
      await Promise.all(parallel.map((c) => c.end()));
    }

    const lines = b
      .log()
      .split('\n')
      .filter((l) => l.includes('new connection to server (from 127.0.0.1:'));
    for (const database of ['hostlist', 'hostlist_rr']) {
      const mine = lines.filter((l) => l.includes(` ${database}/trust_user@`));
      expect(mine.length, b.log()).toBeGreaterThanOrEqual(6);
      // Every connection that was made is to the live host.
      for (const l of mine) expect(l).toContain(`@${db.host}:${db.port} `);
    }
  });
});
