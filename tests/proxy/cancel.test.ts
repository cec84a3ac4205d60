// Cancel through the proxy: the client only ever sees the proxy's key; a CancelRequest with it cancels
// the upstream query (57014), a forged or stale one does nothing, and other sessions are untouched.
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { ProxyServer } from '../../proxy/server.js';
import * as P from '../../proxy/protocol.js';
import { RawClient, adminQuery, client, eventually, queryMsg, rawSession, run, startTestProxy, testDb } from './helpers.js';

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
  const victim = await rawSession(proxy.address.port);
  const other = await client('scram', proxy);
  const otherQuery = other.query('select pg_sleep(1.5), 7 as v');
  victim.write(queryMsg('select pg_sleep(30)'));
  await new Promise((r) => setTimeout(r, 300));
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
  const victim = await rawSession(proxy.address.port);
  const key = keyOf(victim);
  const ignoredBefore = proxy.stats().totals.cancelsIgnored;
  victim.write(queryMsg('select pg_sleep(1), 42 as v'));
  await new Promise((r) => setTimeout(r, 200));
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
  const started = Date.now();
  const p = run(
    'sh',
    ['-c', `psql -X -h 127.0.0.1 -p ${proxy.address.port} -U ${role.user} -d postgres -c 'select pg_sleep(30)' & pid=$!; sleep 1; kill -INT $pid; wait $pid`],
    { PGPASSWORD: role.password, PGSSLMODE: 'disable', PGAPPNAME: 'psql-cancel' },
  );
  const r = await p;
  expect(r.stderr).toContain('canceling statement due to user request');
  expect(r.code).toBe(1);
  expect(Date.now() - started).toBeLessThan(10_000);
  await eventually(async () => (await adminQuery(`select 1 from pg_stat_activity where application_name = 'psql-cancel'`)).length === 0, 5_000, 'psql backend gone');
});
