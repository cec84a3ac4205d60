// The online restart, pgBouncer's -R/--reboot: the CLI run as pgBouncer is, as a real child process, then a second
// one with -R that takes its sockets over through the console (SUSPEND, SHOW FDS with SCM_RIGHTS, SHUTDOWN). The
// clients are real node-postgres connections that stay open across it: one mid-query (blocked on an advisory lock
// held outside the proxy), one idle with settings and a named prepared statement, one inside a transaction, one
// whose statement is cancelled after the takeover with the key it got before.
import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterEach, describe, expect, test } from 'vitest';
import { freePort } from '../setup/cluster.js';
import { client as direct, queryMsg, rawSession, spawnCli, testDb } from './helpers.js';

interface Proc {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

interface Bouncer {
  dir: string;
  port: number;
  ini: string;
  log(): string;
}

const started: { procs: Proc[]; clients: pg.Client[]; dirs: string[] } = { procs: [], clients: [], dirs: [] };

afterEach(async () => {
  for (const p of started.procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  await Promise.all(started.procs.map((p) => p.exited));
  await Promise.all(started.clients.map((c) => c.end().catch(() => {})));
  for (const d of started.dirs) rmSync(d, { recursive: true, force: true });
  started.procs = [];
  started.clients = [];
  started.dirs = [];
});

/** Runs `pg-steadytext pgbouncer [args] ini` (or the command line given); resolves once its pidfile names it (it serves then). */
async function run(b: Bouncer, args: string[] = [], command = ['pgbouncer', ...args, b.ini], daemonListen = 'off'): Promise<Proc> {
  const { child, output } = spawnCli(command, { PGSTEADYTEXT_DAEMON_LISTEN: daemonListen });
  const p: Proc = { child, output, exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))) };
  started.procs.push(p);
  const pidfile = join(b.dir, 'pgb.pid');
  const deadline = Date.now() + 60_000;
  while (!existsSync(pidfile) || readFileSync(pidfile, 'utf8').trim() !== String(child.pid)) {
    if (child.exitCode !== null) throw new Error(`pg-steadytext pgbouncer exited (${child.exitCode}) before it was ready:\n${output()}\n${b.log()}`);
    if (Date.now() > deadline) throw new Error(`pg-steadytext pgbouncer not ready after 60 s:\n${output()}\n${b.log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return p;
}

function bouncer(settings: Record<string, string | number>, users: [string, string][]): Promise<Bouncer> {
  return freePort().then((port) => {
    const dir = mkdtempSync(join(tmpdir(), 'pgb-takeover-'));
    started.dirs.push(dir);
    const q = (s: string) => `"${s.replaceAll('"', '""')}"`;
    writeFileSync(join(dir, 'userlist.txt'), users.map(([u, p]) => `${q(u)} ${q(p)}`).join('\n') + '\n');
    const db = testDb();
    const all: Record<string, string | number> = {
      listen_addr: '127.0.0.1',
      listen_port: port,
      unix_socket_dir: dir,
      logfile: join(dir, 'pgb.log'),
      pidfile: join(dir, 'pgb.pid'),
      auth_file: join(dir, 'userlist.txt'),
      ...settings,
    };
    const ini = join(dir, 'pgbouncer.ini');
    writeFileSync(
      ini,
      [
        '[databases]',
        `postgres = host=${db.host} port=${db.port} dbname=postgres`,
        '[pgbouncer]',
        ...Object.entries(all).map(([k, v]) => `${k} = ${v}`),
      ].join('\n') + '\n',
    );
    const logfile = join(dir, 'pgb.log');
    return { dir, port, ini, log: () => (existsSync(logfile) ? readFileSync(logfile, 'utf8') : '') };
  });
}

async function connect(b: Bouncer, c: { user: string; password?: string; database?: string; unix?: boolean }): Promise<pg.Client> {
  const client = new pg.Client({
    host: c.unix ? b.dir : '127.0.0.1',
    port: b.port,
    user: c.user,
    password: c.password,
    database: c.database ?? 'postgres',
  });
  client.on('error', () => {});
  started.clients.push(client);
  await client.connect();
  return client;
}

/** A CancelRequest with the key the client was given, as libpq sends it; resolves once the proxy closed the connection. */
function cancel(port: number, c: pg.Client): Promise<void> {
  const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4);
  packet.writeInt32BE(processID, 8);
  packet.writeInt32BE(secretKey, 12);
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port }, () => s.end(packet));
    s.on('error', reject);
    s.on('close', () => resolve());
  });
}

const TRUST_USERS: [string, string][] = [['trust_user', '']];

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

describe("online restart (-R): a new process takes over the running one's sockets", () => {
  test('with the daemon endpoint on a fixed port (the default setup), the new process starts and binds it once the old one has gone', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction' }, TRUST_USERS);
    const daemonPort = await freePort();
    const old = await run(b, [], undefined, `127.0.0.1:${daemonPort}`);
    expect(await tcpOpen(daemonPort)).toBe(true);
    const next = await run(b, ['-R'], undefined, `127.0.0.1:${daemonPort}`);
    expect(await old.exited).toBe(0);
    expect(next.child.exitCode).toBeNull();
    await expect.poll(() => next.output(), { timeout: 30_000 }).toContain('daemon endpoint listening');
    await expect.poll(() => tcpOpen(daemonPort), { timeout: 30_000 }).toBe(true);
    const c = await connect(b, { user: 'trust_user' });
    expect((await c.query('select 1 as v')).rows[0].v).toBe(1);
  });

  test('clients mid-query, idle, and inside a transaction go on through the new process; their cancel keys still cancel; new clients connect', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 5 }, TRUST_USERS);
    const old = await run(b);
    const holder = await direct('admin', null);
    started.clients.push(holder);
    await holder.query('select pg_advisory_lock(7401), pg_advisory_lock(7402)');

    // Idle between transactions, with a setting and a named statement that must follow it.
    const idle = await connect(b, { user: 'trust_user' });
    await idle.query("set statement_timeout = '123s'");
    expect((await idle.query({ name: 'twice', text: 'select $1::int * 2 as v', values: [21] })).rows[0].v).toBe(42);
    // Inside a transaction: its server connection moves with it.
    const tx = await connect(b, { user: 'trust_user' });
    await tx.query('begin');
    const xid = (await tx.query('select txid_current()::text as x')).rows[0].x as string;
    // Mid-query: blocked until the holder lets go, which it does only after the takeover.
    const waiting = await connect(b, { user: 'trust_user' });
    const answer = waiting.query('select pg_advisory_xact_lock(7401) as locked, 41 as v');
    const cancelled = await connect(b, { user: 'trust_user' });
    const stuck = cancelled.query('select pg_advisory_xact_lock(7402)').then(
      () => null,
      (err: { code?: string }) => err,
    );
    await expect
      .poll(
        async () =>
          (
            await holder.query(
              "select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%pg_advisory_xact_lock(74%'",
            )
          ).rows[0].n,
        { timeout: 10_000 },
      )
      .toBe(2);

    const next = await run(b, ['-R']);
    expect(await old.exited).toBe(0);
    expect(next.child.exitCode).toBeNull();
    const log = b.log();
    expect(log).toContain('SUSPEND command issued');
    expect(log).toContain('takeover: handed over 4 clients');
    expect(log).toContain('old process killed, resuming work');

    // The statement that ran through the takeover answers the client that sent it.
    await holder.query('select pg_advisory_unlock(7401)');
    expect((await answer).rows[0].v).toBe(41);
    // The idle client: its setting and its statement are still there.
    expect((await idle.query('show statement_timeout')).rows[0].statement_timeout).toBe('123s');
    expect((await idle.query({ name: 'twice', text: 'select $1::int * 2 as v', values: [5] })).rows[0].v).toBe(10);
    // The transaction is the same one, on the same server connection.
    expect((await tx.query('select txid_current()::text as x')).rows[0].x).toBe(xid);
    await tx.query('commit');
    // The key the client got from the old process cancels its statement in the new one.
    await cancel(b.port, cancelled);
    expect((await stuck)?.code).toBe('57014');
    await holder.query('select pg_advisory_unlock(7402)');
    // New clients, over TCP and the Unix socket the new process took over.
    expect((await (await connect(b, { user: 'trust_user' })).query('select 1 as v')).rows[0].v).toBe(1);
    const admin = await connect(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
    const fds = await admin.query('SHOW FDS');
    // pgBouncer's columns for the console (the state beyond them goes to the takeover's own login only).
    expect(fds.fields.map((f) => f.name)).toEqual([
      'fd',
      'task',
      'user',
      'database',
      'addr',
      'port',
      'cancel',
      'link',
      'client_encoding',
      'std_strings',
      'datestyle',
      'timezone',
      'password',
      'scram_client_key',
      'scram_server_key',
    ]);
    expect(fds.rows.filter((r) => r.task === 'pooler')).toHaveLength(2);
    expect(fds.rows.filter((r) => r.task === 'client').map((r) => r.user)).toContain('trust_user');
    expect(await waiting.query('select 2 as v').then((r) => r.rows[0].v)).toBe(2);
  });

  test('clients queued for the one server connection (waiting in the native hub) get their answers through the new process', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 1 }, TRUST_USERS);
    const old = await run(b);
    const holder = await connect(b, { user: 'trust_user' });
    const queued = await Promise.all([0, 1, 2].map(() => connect(b, { user: 'trust_user' })));
    for (const c of [holder, ...queued]) await c.query('select 1');
    await holder.query('begin');
    const xid = (await holder.query('select txid_current()::text as x')).rows[0].x as string;
    const pending = queued.map((c, k) => c.query('select $1::int as v', [k]));
    const admin = await connect(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
    await expect.poll(async () => (await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres')?.cl_waiting, { timeout: 10_000 }).toBe(3);
    await admin.end();

    const next = await run(b, ['-R']);
    expect(await old.exited).toBe(0);
    expect(b.log()).toContain('old process killed, resuming work');
    // pgBouncer closes such clients at suspend_timeout: their requests sit in its buffers while every server is busy.
    expect(b.log()).toContain('takeover: handed over 4 clients');
    expect(b.log()).not.toContain('suspend_timeout');
    // The holder's transaction moved with it; once it ends, the queue is served, in order, by the new process.
    expect((await holder.query('select txid_current()::text as x')).rows[0].x).toBe(xid);
    await holder.query('commit');
    expect((await Promise.all(pending)).map((r) => r.rows[0].v)).toEqual([0, 1, 2]);
    for (const [k, c] of queued.entries()) expect((await c.query('select $1::int + 10 as v', [k])).rows[0].v).toBe(10 + k);
    expect(next.child.exitCode).toBeNull();
  });

  test('a waiting client whose unsent request held in the proxy is over 1 MiB is not carried (it meets suspend_timeout); one with less moves', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 1, suspend_timeout: 1 }, TRUST_USERS);
    const old = await run(b);
    const holder = await connect(b, { user: 'trust_user' });
    const [big, small] = await Promise.all([0, 1].map(() => connect(b, { user: 'trust_user' })));
    for (const c of [holder, big, small]) await c.query('select 1');
    await holder.query('begin');
    // One Query message of 2 MiB: read whole before it waits (a Bind's bytes beyond the first read stay in the socket, which moves).
    const bigAnswer = big.query(`select length('${'x'.repeat(2 << 20)}') as n`).then(
      () => null,
      (err: Error) => err,
    );
    // A Bind of 2 MiB: only its first read waits in the proxy (well under the bound); the rest moves in the socket.
    const smallAnswer = small.query('select length($1) as n', ['y'.repeat(2 << 20)]);
    const admin = await connect(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
    await expect.poll(async () => (await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres')?.cl_waiting, { timeout: 10_000 }).toBe(2);
    await admin.end();
    await run(b, ['-R']);
    expect(await old.exited).toBe(0);
    expect((await bigAnswer)?.message).toMatch(/suspend_timeout/);
    await holder.query('commit');
    expect((await smallAnswer).rows[0].n).toBe(2 << 20);
  });

  test('SUSPEND holds clients waiting for a server connection; RESUME puts them back in the queue, in their order', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 1 }, TRUST_USERS);
    await run(b);
    const holder = await connect(b, { user: 'trust_user' });
    const queued = await Promise.all([0, 1, 2].map(() => connect(b, { user: 'trust_user' })));
    for (const c of [holder, ...queued]) await c.query('select 1');
    await holder.query('begin');
    const order: number[] = [];
    const pending = queued.map((c, k) => c.query('select $1::int as v', [k]).then((r) => order.push(r.rows[0].v)));
    const admin = await connect(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
    await expect.poll(async () => (await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres')?.cl_waiting, { timeout: 10_000 }).toBe(3);
    // Answers at once: every client is still (the waiting ones held with their requests unsent).
    await admin.query('SUSPEND');
    const committed = holder.query('commit');
    await new Promise((r) => setTimeout(r, 300));
    expect(order).toEqual([]);
    await admin.query('RESUME');
    await committed;
    await Promise.all(pending);
    expect(order).toEqual([0, 1, 2]);
    await admin.end();
  });

  test("SCRAM: a server login after the takeover uses the keys of the client's login (the auth_file has a verifier only)", async () => {
    const scram = testDb().roles.scram;
    const verifier = await direct('admin', null).then(async (c) => {
      try {
        return (await c.query<{ v: string }>('select rolpassword as v from pg_authid where rolname = $1', [scram.user])).rows[0].v;
      } finally {
        await c.end();
      }
    });
    expect(verifier).toMatch(/^SCRAM-SHA-256\$/);
    const b = await bouncer({ auth_type: 'scram-sha-256', pool_mode: 'transaction', admin_users: 'pgbouncer' }, [[scram.user, verifier]]);
    const old = await run(b);
    const c = await connect(b, { user: scram.user, password: scram.password });
    expect((await c.query('select 1 as v')).rows[0].v).toBe(1);

    await run(b, [], ['serve', '--config', b.ini, '--reboot']);
    expect(await old.exited).toBe(0);
    // Every server connection closes: the next statement needs a login of the new process's own.
    const admin = await connect(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
    await admin.query('RECONNECT');
    await admin.query('WAIT_CLOSE');
    expect((await c.query('select current_user as u')).rows[0].u).toBe(scram.user);
  });

  test('SQL PREPAREd statements of two clients under one name keep to their owners across the takeover (one server connection)', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction', default_pool_size: 1 }, TRUST_USERS);
    const old = await run(b);
    const a = await connect(b, { user: 'trust_user' });
    const c = await connect(b, { user: 'trust_user' });
    await a.query('PREPARE q(int) AS SELECT $1 * 3 AS v');
    await c.query('PREPARE q(int) AS SELECT $1 + 100 AS v');
    expect((await a.query('EXECUTE q(2)')).rows[0].v).toBe(6);
    // The one server connection now holds c's q under that name.
    expect((await c.query('EXECUTE q(2)')).rows[0].v).toBe(102);

    await run(b, ['-R']);
    expect(await old.exited).toBe(0);
    expect((await a.query('EXECUTE q(5)')).rows[0].v).toBe(15);
    expect((await c.query('EXECUTE q(5)')).rows[0].v).toBe(105);
    await a.query('DEALLOCATE q');
    await expect(a.query('EXECUTE q(1)')).rejects.toThrow(/does not exist/);
    expect((await c.query('EXECUTE q(1)')).rows[0].v).toBe(101);
  });

  test('SUSPEND waits for a client in the middle of a message; a connection made meanwhile waits unread, then logs in to the new process', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction' }, TRUST_USERS);
    const old = await run(b);
    const admin = await connect(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
    const raw = await rawSession(b.port);
    const q = queryMsg('select 5 as v');
    raw.write(q.subarray(0, 3));
    const next = run(b, ['-R']);
    next.catch(() => {});
    await expect.poll(() => b.log(), { timeout: 60_000 }).toContain('SUSPEND command issued');
    // Held unread: the old process lists it (no user yet) and its login waits.
    const late = new pg.Client({ host: '127.0.0.1', port: b.port, user: 'trust_user', database: 'postgres' });
    late.on('error', () => {});
    started.clients.push(late);
    const lateConnected = late.connect();
    await expect
      .poll(async () => (await admin.query('SHOW FDS')).rows.filter((r) => r.task === 'client' && r.user === null).length, { timeout: 10_000 })
      .toBe(1);
    expect(old.child.exitCode).toBeNull();
    // The rest of the message: its answer, then the session is still and the takeover goes on.
    raw.write(q.subarray(3));
    await raw.waitForCount('Z', 2);
    await next;
    expect(await old.exited).toBe(0);
    expect(b.log()).toContain('and 1 connections not logged in yet');
    await lateConnected;
    expect((await late.query('select 6 as v')).rows[0].v).toBe(6);
    // The raw client moved too.
    raw.write(queryMsg('select 7 as v'));
    await raw.waitForCount('Z', 3);
    raw.destroy();
  });

  test('a TLS client does not move (as in pgBouncer): it ends with the old process, a plaintext one goes on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgb-takeover-tls-'));
    started.dirs.push(dir);
    const key = join(dir, 'server.key');
    const crt = join(dir, 'server.crt');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        key,
        '-out',
        crt,
        '-days',
        '2',
        '-subj',
        '/CN=localhost',
      ],
      { stdio: 'pipe' },
    );
    const b = await bouncer(
      { auth_type: 'trust', pool_mode: 'transaction', client_tls_sslmode: 'allow', client_tls_key_file: key, client_tls_cert_file: crt },
      TRUST_USERS,
    );
    const old = await run(b);
    const tls = new pg.Client({ host: '127.0.0.1', port: b.port, user: 'trust_user', database: 'postgres', ssl: { rejectUnauthorized: false } });
    tls.on('error', () => {});
    started.clients.push(tls);
    await tls.connect();
    expect((await tls.query('select 1 as v')).rows[0].v).toBe(1);
    const plain = await connect(b, { user: 'trust_user' });
    expect((await plain.query('select 2 as v')).rows[0].v).toBe(2);

    await run(b, ['-R']);
    expect(await old.exited).toBe(0);
    expect(b.log()).toContain('takeover: handed over 1 clients');
    expect((await plain.query('select 3 as v')).rows[0].v).toBe(3);
    await expect(tls.query('select 4 as v')).rejects.toThrow();
  });

  test('a takeover login of another state format gets no state and takes nothing: once it leaves, the old process resumes', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction' }, TRUST_USERS);
    const old = await run(b);
    const c = await connect(b, { user: 'trust_user' });
    expect((await c.query('select 1 as v')).rows[0].v).toBe(1);
    const other = new pg.Client({
      host: b.dir,
      port: b.port,
      user: 'pgbouncer',
      database: 'pgbouncer',
      application_name: 'pg-steadytext takeover 999',
    });
    started.clients.push(other);
    const notices: string[] = [];
    other.on('notice', (n) => notices.push(n.message ?? ''));
    await other.connect();
    await other.query('SUSPEND');
    const fds = await other.query('SHOW FDS');
    expect(fds.rows.filter((r) => r.task === 'client').length).toBe(1);
    expect(notices).toEqual([]);
    await other.end();
    await expect.poll(() => b.log(), { timeout: 10_000 }).toContain('admin disappeared when suspended, doing RESUME');
    expect(b.log()).not.toContain('handed over');
    expect((await c.query('select 2 as v')).rows[0].v).toBe(2);
    expect(old.child.exitCode).toBeNull();
  });

  test('with no process running, -R starts as usual', async () => {
    const b = await bouncer({ auth_type: 'trust', pool_mode: 'transaction' }, TRUST_USERS);
    await run(b, ['-R']);
    expect(b.log()).toContain('old process not found, try to continue normally');
    expect((await (await connect(b, { user: 'trust_user' })).query('select 1 as v')).rows[0].v).toBe(1);
  });
});
