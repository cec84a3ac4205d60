// An upstream URL without sslmode means prefer, the README's form. Against a server without TLS (the test
// cluster) it ends in plaintext, and such a session must get what sslmode=disable gets: the native relay.
// Against a server with TLS (a second proxy with a certificate in front of the cluster) it must still
// upgrade, and then stays in JS.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadNativeRelay } from '../../proxy/relay.js';
import type { ProxyServer } from '../../proxy/server.js';
import * as P from '../../proxy/protocol.js';
import { RawClient, appName, backendsOf, captureLogger, client, eventually, queryMsg, rawSession, startTestProxy, testDb } from './helpers.js';

const relayed = (p: ProxyServer) => p.stats().totals.relayStarts - p.stats().totals.relayExits;
const proxies: ProxyServer[] = [];
let dir: string;

beforeAll(() => {
  expect(loadNativeRelay().relay, `native relay: ${loadNativeRelay().why}`).not.toBeNull();
  dir = mkdtempSync(join(tmpdir(), 'proxy-prefer-'));
});
afterAll(async () => {
  for (const p of proxies) await p.close(0);
  rmSync(dir, { recursive: true, force: true });
});

async function proxyTo(upstream: string, over: Parameters<typeof startTestProxy>[0] = {}): Promise<ProxyServer> {
  const p = await startTestProxy({ upstream, nativeRelay: 'on', ...over });
  proxies.push(p);
  return p;
}

describe('sslmode=prefer (the default) against a server without TLS', () => {
  const db = () => testDb();
  for (const [name, query] of [['no sslmode in the URL', ''], ['sslmode=prefer', '?sslmode=prefer']]) {
    test(`${name}: the plaintext session is carried by the native relay`, async () => {
      const p = await proxyTo(`postgres://${db().host}:${db().port}/postgres${query}`);
      const c = await client('scram', p);
      await c.query('select 1');
      await eventually(() => relayed(p) === 1, 5_000, 'session in the native relay');
      const exits = p.stats().totals.relayExits;
      const bytes = p.stats().totals.bytesFromUpstream;
      for (let i = 0; i < 20; i++) expect((await c.query('select $1::int * 2 as v', [i])).rows).toEqual([{ v: i * 2 }]);
      expect((await c.query('select current_user as u')).rows).toEqual([{ u: 'scram_user' }]);
      // The relay forwarded all of it (its byte count is in the stats while it holds the session) and never gave it back.
      expect(p.stats().totals.relayExits).toBe(exits);
      expect(p.stats().totals.bytesFromUpstream).toBeGreaterThan(bytes);
      await c.end();
      await eventually(() => relayed(p) === 0, 5_000, 'relay released');
    });
  }

  test('a cancel reaches the server over its own prefer connection, which also ends in plaintext', async () => {
    const p = await proxyTo(`postgres://${db().host}:${db().port}/postgres`);
    const app = appName('prefer-cancel');
    const victim = await rawSession(p.address.port, app);
    await eventually(() => relayed(p) === 1, 5_000, 'session in the native relay');
    const k = victim.messages.find((m) => m.type === 'K')!.body;
    victim.write(queryMsg('select pg_sleep(30)'));
    await eventually(async () => (await backendsOf(app)).some((b) => b.state === 'active' && b.query === 'select pg_sleep(30)'), 5_000, 'query running');
    const c = await RawClient.open(p.address.port);
    c.write(P.cancelRequest(k.readInt32BE(0), k.subarray(4)));
    await c.waitClosed();
    await victim.waitForCount('Z', 2, 10_000);
    expect(victim.error()?.C).toBe('57014');
    expect(p.stats().totals.cancelsForwarded).toBe(1);
    victim.destroy();
  });
});

test('sslmode=prefer against a server with TLS: the session is upgraded, works, and stays out of the native relay', async () => {
  const keyPath = join(dir, 'tls.key');
  const certPath = join(dir, 'tls.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const tlsLog = captureLogger('info');
  const a = await proxyTo(`postgres://${testDb().host}:${testDb().port}/postgres?sslmode=disable`, {
    tls: { cert: readFileSync(certPath), key: readFileSync(keyPath) },
    logger: tlsLog.logger,
  });
  const b = await proxyTo(`postgres://${a.address.host}:${a.address.port}/postgres`);
  const c = await client('scram', b);
  for (let i = 0; i < 5; i++) expect((await c.query('select $1::int + 1 as v', [i])).rows).toEqual([{ v: i + 1 }]);
  await c.end();
  expect(tlsLog.records.some((r) => r.msg === 'client connected' && r.tls === true && r.user === 'scram_user')).toBe(true);
  expect(b.stats().totals.relayStarts).toBe(0);
});
