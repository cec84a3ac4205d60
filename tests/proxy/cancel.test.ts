// Cancel through the proxy: the client only ever sees the proxy's key; a CancelRequest with it cancels
// the upstream query (57014), a forged or stale one does nothing, and other sessions are untouched.
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { ProxyServer } from '../../proxy/server.js';
import * as P from '../../proxy/protocol.js';
import { RawClient, appName, backendsOf, client, eventually, queryMsg, rawSession, startTestProxy, testDb } from './helpers.js';

let proxy: ProxyServer;
beforeAll(async () => {
  proxy = await startTestProxy();
});
afterAll(async () => {
  await proxy.close(0);
});

function keyOf(c: RawClient): { pid: number; secret: Buffer } {
  const k = c.messages.find((m) => m.type === 'K');
  if (!k) throw new Error('no BackendKeyData');
  return { pid: k.body.readInt32BE(0), secret: k.body.subarray(4) };
}

/** Resolves once the session's statement runs in its backend. */
const running = (app: string, sql: string) =>
  eventually(async () => (await backendsOf(app)).some((b) => b.state === 'active' && b.query === sql), 5_000, `${sql} running`);

async function sendCancel(pid: number, secret: Buffer): Promise<void> {
  const c = await RawClient.open(proxy.address.port);
  c.write(P.cancelRequest(pid, secret));
  await c.waitClosed(); // no answer, as from the server
}

test('the client gets the proxy\'s own key, not the backend\'s', async () => {
  const c = await rawSession(proxy.address.port);
  const key = keyOf(c);
  c.write(queryMsg('select pg_backend_pid() as pid'));
  await c.waitFor('C');
  const row = c.messages.find((m) => m.type === 'D')!.body;
  const backendPid = Number(row.toString('utf8', 6, 6 + row.readInt32BE(2)));
  expect(key.pid).not.toBe(backendPid);
  expect(key.secret).toHaveLength(4);
  c.destroy();
});

test('CancelRequest with the session\'s key cancels its query within a second; a concurrent session is untouched', async () => {
  const app = appName('cancel-victim'); // unique to this run: the js-relay project runs this file too
  const victim = await rawSession(proxy.address.port, app);
  const other = await client('scram', proxy);
  // Both statements run long enough to be running when the cancel arrives; only the victim's may end.
  const otherQuery = other.query('select pg_sleep(1.5), 7 as v');
  victim.write(queryMsg('select pg_sleep(30)'));
  await running(app, 'select pg_sleep(30)');
  const t0 = Date.now();
  await sendCancel(keyOf(victim).pid, keyOf(victim).secret);
  await victim.waitForCount('Z', 2, 5_000);
  const elapsed = Date.now() - t0;
  expect(victim.error()?.C).toBe('57014');
  expect(elapsed).toBeLessThan(3_000); // typically a few ms; slack for a busy machine
  // The session goes on.
  victim.write(queryMsg('select 1'));
  await victim.waitForCount('Z', 3);
  expect((await otherQuery).rows[0].v).toBe(7);
  expect(proxy.stats().totals.cancelsForwarded).toBeGreaterThanOrEqual(1);
  victim.destroy();
  await other.end();
});

test('forged keys (wrong secret, unknown pid, wrong length) do nothing', async () => {
  const app = appName('forged-victim');
  const victim = await rawSession(proxy.address.port, app);
  const key = keyOf(victim);
  const ignoredBefore = proxy.stats().totals.cancelsIgnored;
  // A statement that runs long enough for the forged cancels to arrive while it runs, and then completes.
  victim.write(queryMsg('select pg_sleep(1), 42 as v'));
  await running(app, 'select pg_sleep(1), 42 as v');
  const wrong = Buffer.from(key.secret);
  wrong[0] ^= 1;
  await sendCancel(key.pid, wrong);
  await sendCancel(key.pid ^ 0x5a5a, key.secret);
  await sendCancel(key.pid, Buffer.concat([key.secret, Buffer.from([0])]));
  // The backend's own pid with its real secret is unknown to the client; the backend pid alone does nothing either.
  await victim.waitForCount('Z', 2, 5_000);
  expect(victim.error()).toBeUndefined();
  expect(victim.messages.some((m) => m.type === 'C')).toBe(true);
  expect(proxy.stats().totals.cancelsIgnored - ignoredBefore).toBe(3);
  victim.destroy();
});

test('a stale key (its session ended) does nothing', async () => {
  const gone = await rawSession(proxy.address.port);
  const key = keyOf(gone);
  gone.write(P.TERMINATE);
  await gone.waitClosed();
  const ignoredBefore = proxy.stats().totals.cancelsIgnored;
  await sendCancel(key.pid, key.secret);
  expect(proxy.stats().totals.cancelsIgnored - ignoredBefore).toBe(1);
});

test('psql: Ctrl-C (SIGINT) cancels the running statement through the proxy', async () => {
  const db = testDb();
  const role = db.roles.md5;
  const app = appName('psql-cancel');
  const started = Date.now();
  const p = spawn('psql', ['-X', '-h', '127.0.0.1', '-p', String(proxy.address.port), '-U', role.user, '-d', 'postgres', '-c', 'select pg_sleep(30)'], {
    env: { ...process.env, PGPASSWORD: role.password, PGSSLMODE: 'disable', PGAPPNAME: app },
  });
  let stderr = '';
  p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const code = new Promise<number | null>((resolve, reject) => { p.on('error', reject); p.on('close', resolve); });
  await running(app, 'select pg_sleep(30)');
  p.kill('SIGINT');
  expect(await code).toBe(1);
  expect(stderr).toContain('canceling statement due to user request');
  expect(Date.now() - started).toBeLessThan(10_000);
  await eventually(async () => (await backendsOf(app)).length === 0, 5_000, 'psql backend gone');
});
