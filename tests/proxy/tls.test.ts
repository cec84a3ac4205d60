// TLS on both sides. Clients: SSLRequest answered 'S' and the socket upgraded when the proxy has a
// certificate, 'N' otherwise. Upstream: sslmode from the URL. The upstream side is tested by chaining two
// proxies (the test cluster itself has no TLS): client → proxy B → (TLS) → proxy A → PostgreSQL.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import type { ProxyServer } from '../../proxy/server.js';
import { RawClient, captureLogger, psql, startTestProxy, startupPacket, testDb, urlFor } from './helpers.js';

let dir: string;
let good: { cert: string; key: string; certPath: string };
let wrongName: { cert: string; key: string; certPath: string };

function makeCert(name: string, subject: string, san: string) {
  const keyPath = join(dir, `${name}.key`);
  const certPath = join(dir, `${name}.crt`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', subject, '-addext', `subjectAltName=${san}`], { stdio: 'ignore' });
  return { cert: readFileSync(certPath, 'utf8'), key: readFileSync(keyPath, 'utf8'), certPath };
}

let tlsProxy: ProxyServer;
const tlsLog = captureLogger('info');
let plainProxy: ProxyServer;
const extra: ProxyServer[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'proxy-tls-'));
  good = makeCert('good', '/CN=localhost', 'DNS:localhost,IP:127.0.0.1');
  wrongName = makeCert('wrong', '/CN=elsewhere.example', 'DNS:elsewhere.example');
  tlsProxy = await startTestProxy({ tls: { cert: good.cert, key: good.key }, logger: tlsLog.logger });
  plainProxy = await startTestProxy();
});

afterAll(async () => {
  for (const p of [tlsProxy, plainProxy, ...extra]) await p.close(0);
  rmSync(dir, { recursive: true, force: true });
});

async function connectThrough(p: ProxyServer, role: 'scram' | 'md5' | 'trust', ssl: pg.ClientConfig['ssl']): Promise<pg.Client> {
  const u = new URL(urlFor(role, p));
  const c = new pg.Client({ host: u.hostname, port: Number(u.port), user: decodeURIComponent(u.username), password: decodeURIComponent(u.password), database: 'postgres', ssl });
  c.on('error', () => {});
  await c.connect();
  return c;
}

describe('client side', () => {
  test('pg with ssl (self-signed, not verified): the client socket is TLS, queries work', async () => {
    const c = await connectThrough(tlsProxy, 'scram', { rejectUnauthorized: false });
    expect((c as unknown as { connection: { stream: { encrypted?: boolean } } }).connection.stream.encrypted).toBe(true);
    expect((await c.query('select $1::text as v', ['over tls'])).rows[0].v).toBe('over tls');
    await c.end();
  });

  test('pg verifying the certificate against its CA', async () => {
    const c = await connectThrough(tlsProxy, 'md5', { ca: good.cert, servername: 'localhost' });
    expect((await c.query('select 2 as v')).rows[0].v).toBe(2);
    await c.end();
  });

  test('psql sslmode=require and verify-full', async () => {
    const role = testDb().roles.scram;
    const base = { host: '127.0.0.1', port: tlsProxy.address.port, user: role.user, password: role.password };
    for (const mode of ['require', `verify-full sslrootcert=${good.certPath}`]) {
      const r = await psql({ ...base, db: `dbname=postgres sslmode=${mode}` }, ['-c', '\\conninfo', '-c', 'select 1 as one']);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(/SSL connection \(protocol: TLSv1\.[23]/);
      expect(r.stdout).toContain(' one');
    }
  });

  test('without a certificate SSLRequest gets N: pg ssl fails, psql sslmode=require fails, prefer works', async () => {
    const u = new URL(urlFor('scram', plainProxy));
    const c = new pg.Client({ host: u.hostname, port: Number(u.port), user: 'scram_user', password: testDb().roles.scram.password, database: 'postgres', ssl: true });
    c.on('error', () => {});
    await expect(c.connect()).rejects.toThrow('The server does not support SSL connections');

    const role = testDb().roles.scram;
    const base = { host: '127.0.0.1', port: plainProxy.address.port, user: role.user, password: role.password };
    const required = await psql({ ...base, db: 'dbname=postgres sslmode=require' }, ['-c', 'select 1']);
    expect(required.code).not.toBe(0);
    expect(required.stderr).toContain('server does not support SSL, but SSL was required');
    const preferred = await psql({ ...base, db: 'dbname=postgres sslmode=prefer' }, ['-tA', '-c', 'select 1']);
    expect(preferred.stdout.trim()).toBe('1');
  });

  test('a broken TLS handshake ends that connection only', async () => {
    const c = await RawClient.open(tlsProxy.address.port);
    const ssl = Buffer.alloc(8);
    ssl.writeInt32BE(8, 0);
    ssl.writeInt32BE(80877103, 4);
    c.expectByte();
    c.write(ssl);
    await c.until(() => c.bytes.length === 1);
    expect(String.fromCharCode(c.bytes[0])).toBe('S');
    c.write(Buffer.from('this is not a TLS ClientHello, just some text\r\n'.repeat(10)));
    await c.waitClosed();
    const ok = await connectThrough(tlsProxy, 'trust', { rejectUnauthorized: false });
    await ok.end();
  });
});

describe('upstream side (sslmode)', () => {
  async function chained(query: string): Promise<ProxyServer> {
    const p = await startTestProxy({ upstream: `postgres://127.0.0.1:${tlsProxy.address.port}/postgres?${query}` });
    extra.push(p);
    return p;
  }

  async function connectError(p: ProxyServer): Promise<(Error & { code?: string }) | null> {
    const c = new pg.Client({ host: p.address.host, port: p.address.port, user: 'trust_user', database: 'postgres' });
    c.on('error', () => {});
    return c.connect().then(
      async () => {
        await c.end();
        return null;
      },
      (e) => e,
    );
  }

  for (const q of ['sslmode=require', 'sslmode=prefer', `sslmode=verify-ca&sslrootcert=GOOD`, `sslmode=verify-full&sslrootcert=GOOD`]) {
    test(`${q.replace('GOOD', '<ca>')}: works, SCRAM included`, async () => {
      const p = await chained(q.replace('GOOD', encodeURIComponent(good.certPath)));
      const overTls = () => tlsLog.records.filter((r) => r.msg === 'client connected' && r.tls === true && r.user === 'scram_user').length;
      const before = overTls();
      const plain = await connectThrough(p, 'scram', false);
      expect((await plain.query('select current_user as u')).rows[0].u).toBe('scram_user');
      await plain.end();
      expect(overTls()).toBe(before + 1); // proxy A saw this session arrive over TLS
    });
  }

  test('verify-full against a certificate for another name: 08006 naming the TLS failure', async () => {
    const a = await startTestProxy({ tls: { cert: wrongName.cert, key: wrongName.key } });
    extra.push(a);
    const p = await startTestProxy({ upstream: `postgres://127.0.0.1:${a.address.port}/postgres?sslmode=verify-full&sslrootcert=${encodeURIComponent(wrongName.certPath)}` });
    extra.push(p);
    const err = await connectError(p);
    expect(err?.code).toBe('08006');
    expect(err?.message).toContain(`127.0.0.1:${a.address.port}`);
    expect(err?.message).toMatch(/TLS: .*(IP|altnames|not in the cert)/);
    // verify-ca does not check the name: the same certificate passes.
    const ca = await startTestProxy({ upstream: `postgres://127.0.0.1:${a.address.port}/postgres?sslmode=verify-ca&sslrootcert=${encodeURIComponent(wrongName.certPath)}` });
    extra.push(ca);
    expect(await connectError(ca)).toBeNull();
  });

  test('verify-ca with an unrelated CA: 08006', async () => {
    const p = await chained(`sslmode=verify-ca&sslrootcert=${encodeURIComponent(wrongName.certPath)}`);
    const err = await connectError(p);
    expect(err?.code).toBe('08006');
    expect(err?.message).toMatch(/TLS: /);
  });

  test('sslmode=require against a server without TLS: 08006; prefer falls back to plaintext', async () => {
    const db = testDb();
    const req = await startTestProxy({ upstream: `postgres://127.0.0.1:${db.port}/postgres?sslmode=require` });
    extra.push(req);
    const err = await connectError(req);
    expect(err?.code).toBe('08006');
    expect(err?.message).toContain('server does not support SSL, but sslmode=require');
    const pref = await startTestProxy({ upstream: `postgres://127.0.0.1:${db.port}/postgres?sslmode=prefer` });
    extra.push(pref);
    expect(await connectError(pref)).toBeNull();
  });

  test('an unreadable sslrootcert fails at start, not per client', async () => {
    await expect(startTestProxy({ upstream: 'postgres://127.0.0.1:5432/postgres?sslmode=verify-full&sslrootcert=/no/such/file.crt' })).rejects.toThrow(
      'cannot read upstream sslrootcert /no/such/file.crt',
    );
  });
});

test('SCRAM-SHA-256-PLUS is hidden from the client (channel binding would bind to the proxy\'s TLS)', async () => {
  // A stand-in server that offers both mechanisms and records nothing else.
  const fake: Server = createServer((s) => {
    s.once('data', () => {
      const mechs = Buffer.from('SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0');
      const m = Buffer.alloc(9 + mechs.length);
      m[0] = 0x52;
      m.writeInt32BE(8 + mechs.length, 1);
      m.writeInt32BE(10, 5);
      mechs.copy(m, 9);
      s.write(m);
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', () => r()));
  const p = await startTestProxy({ upstream: `postgres://127.0.0.1:${(fake.address() as { port: number }).port}/x?sslmode=disable` });
  const c = await RawClient.open(p.address.port);
  c.write(startupPacket({ user: 'someone' }));
  await c.waitFor('R');
  const body = c.messages[0].body;
  expect(body.readInt32BE(0)).toBe(10);
  expect(body.subarray(4).toString()).toBe('SCRAM-SHA-256\0\0');
  c.destroy();
  await p.close(0);
  fake.close();
});
