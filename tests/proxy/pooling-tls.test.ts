// pgBouncer's TLS settings through the CLI run as pgBouncer (a child process, as pgbouncer-process.test.ts):
// client_tls_* for clients (psql and node-postgres over TLS), auth_type = cert and the hba cert method with an
// ident map, server_tls_* for the server connections, each applied at start and again on a console SET,
// RELOAD and SIGHUP. The certificates are made here with openssl, two CAs as in pgBouncer's test/ssl.
import { execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { freePort } from '../setup/cluster.js';
import { run, spawnCli, testDb, type RunResult } from './helpers.js';

let certs: string;

/** A CA, and certificates it signs: `name` with CN `cn` (SANs localhost and 127.0.0.1 for a server's). */
function makeCerts(dir: string): void {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const key = (name: string) => ssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', `${name}.key`);
  for (const ca of ['ca1', 'ca2']) {
    key(ca);
    ssl('req', '-x509', '-new', '-key', `${ca}.key`, '-out', `${ca}.crt`, '-days', '2', '-subj', `/CN=Test ${ca}`);
  }
  const site = (ca: string, name: string, cn: string) => {
    key(name);
    ssl('req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    writeFileSync(join(dir, `${name}.ext`), cn === 'localhost' ? 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' : 'basicConstraints=CA:FALSE\n');
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`);
    chmodSync(join(dir, `${name}.key`), 0o600); // libpq refuses a client key others may read
  };
  site('ca1', 'server1', 'localhost');
  site('ca2', 'server2', 'localhost');
  site('ca1', 'alice', 'alice');
  site('ca1', 'acme', 'pgbouncer.acme.org');
  site('ca2', 'alice-ca2', 'alice');
}

beforeAll(() => {
  certs = mkdtempSync(join(tmpdir(), 'pooling-tls-certs-'));
  makeCerts(certs);
});
afterAll(() => rmSync(certs, { recursive: true, force: true }));

const cert = (name: string) => join(certs, name);

interface Bouncer {
  dir: string;
  port: number;
  ini: string;
  child: ChildProcess;
  log(): string;
  output(): string;
}

const started: { bouncers: Bouncer[]; clients: pg.Client[] } = { bouncers: [], clients: [] };

afterEach(async () => {
  await Promise.all(started.clients.map((c) => c.end().catch(() => {})));
  for (const b of started.bouncers) {
    if (b.child.exitCode === null && b.child.signalCode === null) {
      const exited = new Promise((resolve) => b.child.once('exit', resolve));
      b.child.kill('SIGKILL');
      await exited;
    }
    rmSync(b.dir, { recursive: true, force: true });
  }
  started.bouncers = [];
  started.clients = [];
});

/**
 * The CLI as pgBouncer, in front of the test cluster: database postgres (and p0, transaction pooling), every
 * server login as trust_user; alice and trust_user in auth_file (no password: trust and cert need none).
 */
/** `files` are written to the bouncer's directory; "FILE:name" in a setting is the path of one there. */
async function startBouncer(settings: Record<string, string | number>, files: Record<string, string> = {}): Promise<Bouncer> {
  const dir = mkdtempSync(join(tmpdir(), 'pooling-tls-'));
  const port = await freePort();
  const { host, port: pgPort } = testDb();
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  writeFileSync(join(dir, 'userlist.txt'), '"trust_user" ""\n"alice" ""\n');
  const ini = join(dir, 'pgbouncer.ini');
  writeFileSync(
    ini,
    [
      '[databases]',
      `postgres = host=${host} port=${pgPort} dbname=postgres user=trust_user`,
      `p0 = host=${host} port=${pgPort} dbname=postgres user=trust_user pool_mode=transaction`,
      '[pgbouncer]',
      ...Object.entries({
        listen_addr: '127.0.0.1',
        listen_port: port,
        unix_socket_dir: dir,
        logfile: join(dir, 'pgb.log'),
        pidfile: join(dir, 'pgb.pid'),
        auth_type: 'trust',
        auth_file: join(dir, 'userlist.txt'),
        server_login_retry: 1,
        ...settings,
      }).map(([k, v]) => `${k} = ${String(v).replace(/^FILE:/, `${dir}/`)}`),
    ].join('\n') + '\n',
  );
  const { child, output } = spawnCli(['pgbouncer', ini], { PGSTEADYTEXT_DAEMON_LISTEN: 'off' });
  const logfile = join(dir, 'pgb.log');
  const b: Bouncer = { dir, port, ini, child, log: () => (existsSync(logfile) ? readFileSync(logfile, 'utf8') : ''), output };
  started.bouncers.push(b);
  const pidfile = join(dir, 'pgb.pid');
  const deadline = Date.now() + 30_000;
  while (!existsSync(pidfile) || readFileSync(pidfile, 'utf8').trim() !== String(child.pid)) {
    if (child.exitCode !== null) throw new Error(`pg-steadytext pgbouncer exited (${child.exitCode}) before it was ready:\n${output()}`);
    if (Date.now() > deadline) throw new Error(`pg-steadytext pgbouncer not ready after 30 s:\n${output()}`);
    await sleep(100);
  }
  return b;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** psql through the bouncer with libpq's TLS settings (sslmode, sslrootcert, sslcert, sslkey). */
function psqlVia(b: Bouncer, conn: Record<string, string>): Promise<RunResult> {
  const conninfo = Object.entries({ host: 'localhost', port: String(b.port), user: 'trust_user', dbname: 'postgres', ...conn }).map(([k, v]) => `${k}=${v}`).join(' ');
  // The TLS version in use, as the server side of the bouncer's connection sees none of it: the client's own view.
  return run('psql', ['-X', '-At', conninfo, '-c', 'select 1'], { PGSSLCERT: '/nonexistent', PGSSLKEY: '/nonexistent' });
}

async function expectPsqlOk(b: Bouncer, conn: Record<string, string>): Promise<void> {
  const r = await psqlVia(b, conn);
  expect(r.stderr, b.log()).toBe('');
  expect(r.stdout.trim()).toBe('1');
}

/** node-postgres over TCP, plaintext unless `ssl` says otherwise. */
async function pgClient(b: Bouncer, opts: { user?: string; database?: string; ssl?: pg.ClientConfig['ssl']; unix?: boolean; app?: string; timeoutMs?: number } = {}): Promise<pg.Client> {
  const c = new pg.Client({ host: opts.unix ? b.dir : '127.0.0.1', port: b.port, user: opts.user ?? 'trust_user', database: opts.database ?? 'postgres', ssl: opts.ssl ?? false, application_name: opts.app, connectionTimeoutMillis: opts.timeoutMs });
  c.on('error', () => {});
  started.clients.push(c);
  await c.connect();
  return c;
}

/** The console, as the process's own OS user over the Unix socket (no password, no TLS: a Unix socket never needs it). */
async function admin(b: Bouncer, sql: string): Promise<void> {
  const c = await pgClient(b, { user: 'pgbouncer', database: 'pgbouncer', unix: true });
  await c.query(sql);
  await c.end();
}

/** The one-byte answer to an SSLRequest, over TCP or the Unix socket. */
function sslAnswer(b: Bouncer, unix: boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = unix ? netConnect(join(b.dir, `.s.PGSQL.${b.port}`)) : netConnect(b.port, '127.0.0.1');
    s.on('error', reject);
    s.once('data', (d) => {
      s.destroy();
      resolve(d.subarray(0, 1).toString());
    });
    const req = Buffer.alloc(8);
    req.writeInt32BE(8, 0);
    req.writeInt32BE(80877103, 4);
    s.write(req);
  });
}

const caOf = (name: string) => readFileSync(cert(name), 'utf8');

const requireTls = () => ({
  client_tls_sslmode: 'require',
  client_tls_key_file: cert('server1.key'),
  client_tls_cert_file: cert('server1.crt'),
  client_tls_ca_file: cert('ca1.crt'),
});

/** The cluster's connections a client of application `app` has used (the pooler sets its application_name on them). */
async function serverPids(app: string): Promise<number[]> {
  const c = new pg.Client({ connectionString: testDb().adminUrl });
  await c.connect();
  try {
    const r = await c.query('select pid from pg_stat_activity where application_name = $1 order by pid', [app]);
    return r.rows.map((x: { pid: number }) => x.pid);
  } finally {
    await c.end();
  }
}

describe('client TLS (client_tls_*)', () => {
  test('require: TLS clients verify the bouncer against its CA; plaintext over TCP gets "SSL required"; the Unix socket needs none', async () => {
    const b = await startBouncer(requireTls());
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt') });
    const tls = await pgClient(b, { ssl: { ca: caOf('ca1.crt'), servername: 'localhost' } });
    expect((await tls.query('select 1 as v')).rows[0].v).toBe(1);
    await expect(pgClient(b)).rejects.toThrow('SSL required');
    const unix = await pgClient(b, { unix: true });
    expect((await unix.query('select 1 as v')).rows[0].v).toBe(1);
    // As pgBouncer: TLS is offered over TCP only.
    expect(await sslAnswer(b, false)).toBe('S');
    expect(await sslAnswer(b, true)).toBe('N');
    // The wrong CA: the bouncer's certificate does not verify.
    const wrong = await psqlVia(b, { sslmode: 'verify-full', sslrootcert: cert('ca2.crt') });
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(/certificate verify failed/);
  });

  test('disable (the default): SSLRequest is answered N, plaintext is fine', async () => {
    const b = await startBouncer({});
    const r = await psqlVia(b, { sslmode: 'require' });
    expect(r.stderr).toMatch(/server does not support SSL/);
    await expectPsqlOk(b, { sslmode: 'disable' });
  });

  test('console SET: disable and enable again; a new key, certificate and CA serve the next handshakes', async () => {
    const b = await startBouncer(requireTls());
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt') });
    await admin(b, 'SET client_tls_sslmode = disable');
    const plain = await pgClient(b);
    expect((await plain.query('select 1 as v')).rows[0].v).toBe(1);
    expect((await psqlVia(b, { sslmode: 'require' })).stderr).toMatch(/server does not support SSL/);
    await admin(b, 'SET client_tls_sslmode = require');
    await expect(pgClient(b)).rejects.toThrow('SSL required');

    await admin(b, `SET client_tls_key_file = '${cert('server2.key')}'`);
    await admin(b, `SET client_tls_cert_file = '${cert('server2.crt')}'`);
    await admin(b, `SET client_tls_ca_file = '${cert('ca2.crt')}'`);
    expect((await psqlVia(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt') })).code).not.toBe(0);
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca2.crt') });
    // The client already connected over the old context goes on.
    expect((await plain.query('select 2 as v')).rows[0].v).toBe(2);
  });

  test('a SET that cannot be applied (a missing file) keeps the old TLS, and says so in the log', async () => {
    const b = await startBouncer(requireTls());
    await admin(b, `SET client_tls_cert_file = '${join(b.dir, 'missing.crt')}'`);
    await expect.poll(() => b.log()).toContain('TLS settings could not be applied, still using old configuration');
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt') });
  });

  test('RELOAD and SIGHUP: the ini turns TLS on, changes its CA, and turns it off', async () => {
    const b = await startBouncer({});
    await expectPsqlOk(b, { sslmode: 'disable' });
    const append = (lines: Record<string, string>) => writeFileSync(b.ini, readFileSync(b.ini, 'utf8') + Object.entries(lines).map(([k, v]) => `${k} = ${v}\n`).join(''));
    append(requireTls());
    await admin(b, 'RELOAD');
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt') });
    await expect(pgClient(b)).rejects.toThrow('SSL required');

    append({ client_tls_key_file: cert('server2.key'), client_tls_cert_file: cert('server2.crt'), client_tls_ca_file: cert('ca2.crt') });
    process.kill(b.child.pid!, 'SIGHUP');
    await expect.poll(async () => (await psqlVia(b, { sslmode: 'verify-full', sslrootcert: cert('ca2.crt') })).stdout.trim(), { timeout: 5_000 }).toBe('1');
    expect((await psqlVia(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt') })).code).not.toBe(0);

    append({ client_tls_sslmode: 'disable' });
    process.kill(b.child.pid!, 'SIGHUP');
    await expect.poll(async () => (await psqlVia(b, { sslmode: 'disable' })).stdout.trim(), { timeout: 5_000 }).toBe('1');
    expect((await psqlVia(b, { sslmode: 'require' })).stderr).toMatch(/server does not support SSL/);
  });

  test('a start with TLS settings that cannot work stops with the reason', async () => {
    await expect(startBouncer({ client_tls_sslmode: 'require' })).rejects.toThrow(/client_tls_key_file and client_tls_cert_file must be set/);
  });

  test("client_tls_ecdhcurve: the curve named is the one the handshake uses; auto takes the client's first", async () => {
    expect(await handshakeCurve(await startBouncer({ ...requireTls(), client_tls_ecdhcurve: 'secp384r1' }))).toBe('secp384r1');
    expect(await handshakeCurve(await startBouncer({ ...requireTls(), client_tls_ecdhcurve: 'X25519' }))).toBe('X25519');
    expect(await handshakeCurve(await startBouncer(requireTls()))).toBe('prime256v1');
  });

  test('client_tls_protocols: a bouncer that speaks TLS 1.2 only refuses a client that wants 1.3', async () => {
    const b = await startBouncer({ ...requireTls(), client_tls_protocols: 'tlsv1.2' });
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), ssl_min_protocol_version: 'TLSv1.2' });
    const r = await psqlVia(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), ssl_min_protocol_version: 'TLSv1.3' });
    expect(r.code).not.toBe(0);
  });
});

/** The curve of a TLS handshake with the bouncer, as a client that offers P-256, P-384 and X25519 sees it. */
function handshakeCurve(b: Bouncer): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const s = netConnect(b.port, '127.0.0.1');
    s.on('error', reject);
    s.once('data', (d) => {
      if (d.toString('latin1', 0, 1) !== 'S') return reject(new Error(`SSLRequest answered ${d.toString('latin1', 0, 1)}`));
      const t = tlsConnect({ socket: s, rejectUnauthorized: false, ecdhCurve: 'prime256v1:secp384r1:X25519' });
      t.on('error', reject);
      t.once('secureConnect', () => {
        const name = t.getEphemeralKeyInfo() as { name?: string };
        t.destroy();
        resolve(name.name);
      });
    });
    const req = Buffer.alloc(8);
    req.writeInt32BE(8, 0);
    req.writeInt32BE(80877103, 4);
    s.write(req);
  });
}

describe('certificate authentication', () => {
  const certAuth = () => ({ ...requireTls(), client_tls_sslmode: 'verify-full', auth_type: 'cert' });

  test('auth_type = cert: the certificate whose CN is the user logs in; another user, no certificate or another CA does not', async () => {
    const b = await startBouncer(certAuth());
    const alice = { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), sslcert: cert('alice.crt'), sslkey: cert('alice.key') };
    await expectPsqlOk(b, { ...alice, user: 'alice' });
    const asOther = await psqlVia(b, { ...alice, user: 'trust_user' });
    expect(asOther.stderr).toMatch(/certificate authentication failed/);
    expect(b.log()).toContain('TLS certificate name mismatch');
    // verify-full asks for a certificate and the handshake fails without one.
    const none = await psqlVia(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), user: 'alice' });
    expect(none.code).not.toBe(0);
    // A certificate of another CA never verifies, whatever its CN says.
    const forged = await psqlVia(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), sslcert: cert('alice-ca2.crt'), sslkey: cert('alice-ca2.key'), user: 'alice' });
    expect(forged.code).not.toBe(0);
    expect(forged.stdout).toBe('');
  });

  test('under require a certificate is optional, but one that is sent must verify', async () => {
    const b = await startBouncer(requireTls());
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt') });
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), sslcert: cert('alice.crt'), sslkey: cert('alice.key') });
    const forged = await psqlVia(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), sslcert: cert('alice-ca2.crt'), sslkey: cert('alice-ca2.key') });
    expect(forged.code).not.toBe(0);
  });

  test('hba cert with map=: the ident map takes the certificate name to the users it lists', async () => {
    const b = await startBouncer(
      { ...requireTls(), auth_type: 'hba', auth_hba_file: 'FILE:hba.conf', auth_ident_file: 'FILE:ident.conf' },
      {
        'hba.conf': 'local all all trust\nhostssl postgres all 0.0.0.0/0 cert map=acme\nhostssl p0 alice 0.0.0.0/0 cert\n',
        'ident.conf': '# MAP SYSTEM-USERNAME PG-USERNAME\nacme "pgbouncer.acme.org" alice\n',
      },
    );
    const acme = { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), sslcert: cert('acme.crt'), sslkey: cert('acme.key') };
    await expectPsqlOk(b, { ...acme, user: 'alice' });
    expect((await psqlVia(b, { ...acme, user: 'trust_user' })).stderr).toMatch(/certificate authentication failed/);
    expect(b.log()).toContain('ident map: acme does not have a match');
    // Without a map the certificate must name the user.
    expect((await psqlVia(b, { ...acme, user: 'alice', dbname: 'p0' })).stderr).toMatch(/certificate authentication failed/);
    await expectPsqlOk(b, { sslmode: 'verify-full', sslrootcert: cert('ca1.crt'), sslcert: cert('alice.crt'), sslkey: cert('alice.key'), user: 'alice', dbname: 'p0' });
  });
});

describe('server TLS (server_tls_*)', () => {
  test('a change of the server TLS settings closes the server connections made with the old ones; RELOAD without one keeps them', async () => {
    const b = await startBouncer({ server_tls_sslmode: 'disable' });
    const app = `pooling-tls-${process.pid}-1`;
    const c = await pgClient(b, { database: 'p0', app });
    expect((await c.query('select 1 as v')).rows[0].v).toBe(1);
    const before = await serverPids(app);
    expect(before.length).toBeGreaterThan(0);

    await admin(b, 'RELOAD');
    await sleep(300);
    expect(await serverPids(app)).toEqual(before);

    // The cluster speaks no TLS: prefer falls back to plaintext, on a new connection.
    await admin(b, 'SET server_tls_sslmode = prefer');
    await expect.poll(() => serverPids(app), { timeout: 5_000 }).toEqual([]);
    expect(b.log()).toMatch(/p0\/trust_user@.*closing because: database configuration changed/);
    expect((await c.query('select 2 as v')).rows[0].v).toBe(2);
  });

  test('require against a server without TLS: the client waits as logins fail; SET back to disable lets the next client in', async () => {
    const b = await startBouncer({ server_tls_sslmode: 'require' });
    // As pgBouncer: a server connection that fails before the server's own answer keeps the client waiting.
    await expect(pgClient(b, { timeoutMs: 2_000 })).rejects.toThrow(/timeout/i);
    expect(b.log()).toMatch(/closing because: .*(SSL|TLS)/);
    await admin(b, 'SET server_tls_sslmode = disable');
    const c = await pgClient(b);
    expect((await c.query('select 1 as v')).rows[0].v).toBe(1);
  });

  test('a change of server_tls_protocols through RELOAD closes them too', async () => {
    const b = await startBouncer({ server_tls_sslmode: 'prefer' });
    const app = `pooling-tls-${process.pid}-2`;
    const c = await pgClient(b, { database: 'p0', app });
    expect((await c.query('select 1 as v')).rows[0].v).toBe(1);
    expect((await serverPids(app)).length).toBeGreaterThan(0);
    writeFileSync(b.ini, readFileSync(b.ini, 'utf8') + 'server_tls_protocols = tlsv1.3\n');
    await admin(b, 'RELOAD');
    await expect.poll(() => serverPids(app), { timeout: 5_000 }).toEqual([]);
    expect((await c.query('select 2 as v')).rows[0].v).toBe(2);
  });
});
