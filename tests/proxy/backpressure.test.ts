// Flow control both ways: a client that does not read, or a server that does not read, makes the proxy
// stop reading the other side instead of buffering; everything arrives once the slow side catches up.
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { ProxyServer } from '../../proxy/server.js';
import { RawClient, client, frontend, queryMsg, startTestProxy, startupPacket } from './helpers.js';

let proxy: ProxyServer;
beforeAll(async () => {
  proxy = await startTestProxy();
});
afterAll(async () => {
  await proxy.close(0);
});

const MB = 1024 * 1024;

test('a client that stops reading a 100 MB result: the proxy holds little, then delivers it all', async () => {
  const c = await RawClient.open(proxy.address.port);
  c.write(startupPacket({ user: 'trust_user', database: 'postgres' }));
  await c.waitFor('Z');
  // Count rows as they come instead of keeping 100 MB of messages.
  let rows = 0;
  let bytes = 0;
  let done = false;
  c.sock.removeAllListeners('data');
  let carry = Buffer.alloc(0);
  c.sock.on('data', (d: Buffer) => {
    bytes += d.length;
    const buf = carry.length ? Buffer.concat([carry, d]) : d;
    let pos = 0;
    while (buf.length - pos >= 5) {
      const len = buf.readInt32BE(pos + 1);
      if (buf.length - pos < 1 + len) break;
      if (buf[pos] === 0x44) rows++;
      if (buf[pos] === 0x5a) done = true;
      pos += 1 + len;
    }
    carry = Buffer.from(buf.subarray(pos));
  });
  c.sock.pause();
  c.write(queryMsg(`select repeat('x', 1000) from generate_series(1, 100000)`));
  // The behaviour under test takes time: for a second of the client not reading, sample what the proxy holds.
  let peak = 0;
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 50));
    peak = Math.max(peak, proxy.stats().buffered);
  }
  expect(peak).toBeLessThan(2 * MB);
  c.sock.resume();
  await expect.poll(() => done, { timeout: 30_000, message: 'the whole result (ReadyForQuery) once the client reads' }).toBe(true);
  expect(rows).toBe(100_000);
  expect(bytes).toBeGreaterThan(100 * 1000 * 1000);
  c.destroy();
}, 60_000);

test('a server that is busy while the client streams 64 MB of COPY data: the client is held back', async () => {
  const setup = await client('admin', null);
  await setup.query('create table if not exists bp_copy (t text)');
  await setup.query('grant all on bp_copy to trust_user'); // PUBLIC creates nothing in public
  await setup.query('truncate bp_copy');
  const c = await RawClient.open(proxy.address.port);
  c.write(startupPacket({ user: 'trust_user', database: 'postgres' }));
  await c.waitFor('Z');
  // The server sleeps before it starts reading the COPY data.
  c.write(queryMsg('select pg_sleep(1.5)'));
  c.write(queryMsg('copy bp_copy from stdin'));
  const line = Buffer.from(`${'y'.repeat(1023)}\n`);
  const chunk = frontend('d', Buffer.concat(Array.from({ length: 64 }, () => line)));
  let written = 0;
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, proxy.stats().buffered)), 20);
  for (let i = 0; i < 1024; i++) {
    if (!c.sock.write(chunk)) await new Promise((r) => c.sock.once('drain', r));
    written += chunk.length;
  }
  c.write(frontend('c'));
  await c.waitForCount('Z', 3, 30_000);
  clearInterval(sampler);
  expect(written).toBeGreaterThan(64 * MB);
  expect(peak).toBeLessThan(2 * MB);
  expect(c.error()).toBeUndefined();
  expect((await setup.query('select count(*)::int as n from bp_copy')).rows[0].n).toBe(65536);
  await setup.query('drop table bp_copy');
  await setup.end();
  c.destroy();
}, 60_000);
