// Bad input never hurts anyone else: each bad connection ends with a FATAL where it can still be read,
// its upstream backend goes away, and a healthy client running queries meanwhile sees nothing.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import type { ProxyServer } from '../../proxy/server.js';
import * as P from '../../proxy/protocol.js';
import { RawClient, adminQuery, backendsOf, client, eventually, frontend, queryMsg, rawSession, startTestProxy, startupPacket } from './helpers.js';
import { freePort } from '../setup/cluster.js';

let proxy: ProxyServer;
let healthy: pg.Client;
let healthyRuns = 0;
const healthyErrors: unknown[] = [];
let stopHealthy = false;
let healthyLoop: Promise<void>;
/** Application names of this run only: the js-relay project runs this file too, maybe at the same time. */
const app = (name: string) => `${name}-${process.pid}`;

beforeAll(async () => {
  proxy = await startTestProxy({ maxMessageBytes: 1024 * 1024 });
  healthy = await client('scram', proxy);
  healthy.on('error', (e) => healthyErrors.push(e));
  healthyLoop = (async () => {
    while (!stopHealthy) {
      try {
        const r = await healthy.query('select $1::int + 1 as v', [healthyRuns]);
        if (r.rows[0].v !== healthyRuns + 1) throw new Error('wrong answer');
        healthyRuns++;
      } catch (e) {
        healthyErrors.push(e);
        return;
      }
      await new Promise((r) => setTimeout(r, 5)); // pacing (the cores are shared), not synchronisation
    }
  })();
});

afterAll(async () => {
  stopHealthy = true;
  await healthyLoop;
  await healthy.end();
  await proxy.close(0);
});

/** The healthy client keeps working through everything the suite does. */
async function healthyStillFine(): Promise<void> {
  const before = healthyRuns;
  await eventually(() => healthyRuns > before + 2, 5_000, 'healthy client progress');
  expect(healthyErrors).toEqual([]);
}

describe('before startup', () => {
  test('random bytes: FATAL protocol violation, connection closed', async () => {
    for (let i = 0; i < 5; i++) {
      const c = await RawClient.open(proxy.address.port);
      c.write(randomBytes(1000));
      await c.waitClosed();
      expect(['08P01', '0A000', '28000']).toContain(c.error()?.C);
      expect(c.error()?.S).toBe('FATAL');
    }
    await healthyStillFine();
  });

  test('startup length 2^31-1: 08P01 naming the length', async () => {
    const c = await RawClient.open(proxy.address.port);
    const b = Buffer.alloc(8);
    b.writeInt32BE(2 ** 31 - 1, 0);
    b.writeInt32BE(0x30000, 4);
    c.write(b);
    await c.waitClosed();
    expect(c.error()?.C).toBe('08P01');
    expect(c.error()?.M).toContain('invalid length of startup packet');
  });

  test('unknown protocol version: 0A000', async () => {
    for (const version of [0x20000, 0x40000, 1234 << 16]) {
      const c = await RawClient.open(proxy.address.port);
      c.write(startupPacket({ user: 'trust_user', database: 'postgres' }, version));
      await c.waitClosed();
      expect(c.error()?.C).toBe('0A000');
      expect(c.error()?.M).toMatch(/unsupported frontend protocol \d+\.\d+/);
    }
  });

  test('protocol 3.x minor versions are the server\'s to negotiate', async () => {
    const c = await RawClient.open(proxy.address.port);
    c.write(startupPacket({ user: 'trust_user', database: 'postgres' }, 0x30005));
    await c.waitFor('Z');
    expect(c.messages.some((m) => m.type === 'v')).toBe(true); // NegotiateProtocolVersion from PostgreSQL 15
    c.destroy();
  });

  test('truncated startup packet, then the client half-closes: FATAL, closed', async () => {
    const c = await RawClient.open(proxy.address.port);
    c.write(startupPacket({ user: 'trust_user' }).subarray(0, 12));
    c.sock.end();
    await c.waitClosed();
    expect(c.error()?.C).toBe('08P01');
    expect(c.error()?.M).toContain('incomplete');
  });

  test('data after SSLRequest before the answer is refused (no buffer stuffing)', async () => {
    const c = await RawClient.open(proxy.address.port);
    const ssl = Buffer.alloc(8);
    ssl.writeInt32BE(8, 0);
    ssl.writeInt32BE(80877103, 4);
    c.write(Buffer.concat([ssl, startupPacket({ user: 'trust_user' })]));
    await c.waitClosed();
    expect(c.error()?.C).toBe('08P01');
  });

  test('GSSENCRequest gets N, then the startup continues in the clear', async () => {
    const c = await RawClient.open(proxy.address.port);
    const gss = Buffer.alloc(8);
    gss.writeInt32BE(8, 0);
    gss.writeInt32BE(80877104, 4);
    c.expectByte();
    c.write(gss);
    await c.until(() => c.bytes.length === 1);
    expect(String.fromCharCode(c.bytes[0])).toBe('N');
    c.write(startupPacket({ user: 'trust_user', database: 'postgres' }));
    await c.waitFor('Z');
    c.destroy();
  });

  test('no user in the startup packet: 28000', async () => {
    const c = await RawClient.open(proxy.address.port);
    c.write(startupPacket({ database: 'postgres' }));
    await c.waitClosed();
    expect(c.error()?.C).toBe('28000');
  });
});

describe('after startup', () => {
  test('message length 2^31-1: FATAL 54000, and its backend goes away', async () => {
    const c = await RawClient.open(proxy.address.port);
    c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: app('huge-length') }));
    await c.waitFor('Z');
    const b = Buffer.alloc(5);
    b[0] = 0x51;
    b.writeInt32BE(2 ** 31 - 1, 1);
    c.write(b);
    await c.waitClosed();
    expect(c.error()?.C).toBe('54000');
    expect(c.error()?.M).toContain('too large');
    await eventually(async () => (await backendsOf(app('huge-length'))).length === 0, 10_000, 'backend gone');
    await healthyStillFine();
  });

  test('message over maxMessageBytes: 54000', async () => {
    const c = await rawSession(proxy.address.port);
    c.write(queryMsg(`select '${'x'.repeat(1024 * 1024)}'`));
    await c.waitClosed();
    expect(c.error()?.C).toBe('54000');
  });

  test('impossible length (< 4): 08P01', async () => {
    const c = await rawSession(proxy.address.port);
    c.write(Buffer.from([0x51, 0, 0, 0, 2]));
    await c.waitClosed();
    expect(c.error()?.C).toBe('08P01');
  });

  test('a truncated message then half-close: FATAL 08P01, backend gone', async () => {
    const c = await RawClient.open(proxy.address.port);
    c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: app('truncated-msg') }));
    await c.waitFor('Z');
    c.write(queryMsg('select 1 from generate_series(1, 10)').subarray(0, 12));
    c.sock.end();
    await c.waitClosed();
    expect(c.error()?.C).toBe('08P01');
    await eventually(async () => (await backendsOf(app('truncated-msg'))).length === 0, 10_000, 'backend gone');
    await healthyStillFine();
  });

  test('client vanishes mid-query: the running statement is cancelled, its backend goes away', async () => {
    const c = await RawClient.open(proxy.address.port);
    c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: app('vanish-query') }));
    await c.waitFor('Z');
    c.write(queryMsg('select pg_sleep(60)'));
    await eventually(async () => (await backendsOf(app('vanish-query'))).some((b) => b.state === 'active'), 5_000, 'query running');
    c.destroy();
    await eventually(async () => (await backendsOf(app('vanish-query'))).length === 0, 10_000, 'backend gone');
    await healthyStillFine();
  });

  test('client vanishes mid-COPY FROM STDIN (mid-message too): backend goes away, nothing committed', async () => {
    const setup = await client('admin', null);
    await setup.query('create table if not exists copy_vanish (id int, t text)');
    await setup.query('grant all on copy_vanish to trust_user'); // PUBLIC creates nothing in public
    await setup.query('truncate copy_vanish');
    const c = await RawClient.open(proxy.address.port);
    c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: app('vanish-copy') }));
    await c.waitFor('Z');
    c.write(queryMsg('copy copy_vanish from stdin'));
    await c.waitFor('G');
    for (let i = 0; i < 1000; i++) c.write(frontend('d', `${i}\trow ${i}\n`));
    const partial = frontend('d', '1001\tpartial row that never ends\n');
    c.write(partial.subarray(0, partial.length - 5));
    // Mid-COPY for the server too: it has read the 1000 whole rows and waits for the rest of the last message.
    await eventually(async () => (await adminQuery<{ n: string }>(
      `select p.tuples_processed as n from pg_stat_progress_copy p join pg_stat_activity a using (pid) where a.application_name = $1`,
      [app('vanish-copy')]))[0]?.n === '1000', 10_000, 'the server has read the whole rows');
    c.destroy();
    await eventually(async () => (await backendsOf(app('vanish-copy'))).length === 0, 10_000, 'backend gone');
    expect((await setup.query('select count(*)::int as n from copy_vanish')).rows[0].n).toBe(0);
    await setup.query('drop table copy_vanish');
    await setup.end();
    await healthyStillFine();
  });

  test('garbage typed messages after startup reach the server, which refuses them; others unaffected', async () => {
    const c = await rawSession(proxy.address.port);
    c.write(frontend('%', 'nonsense'));
    await c.waitClosed();
    expect(c.error()?.C).toBe('08P01'); // PostgreSQL's own "invalid frontend message type"
    await healthyStillFine();
  });
});

describe('upstream unreachable', () => {
  test('closed port: FATAL 08006 naming host:port and the cause, with a hint', async () => {
    const port = await freePort();
    const p = await startTestProxy({ upstream: `postgres://127.0.0.1:${port}/postgres?sslmode=disable` });
    const c = new pg.Client({ host: p.address.host, port: p.address.port, user: 'trust_user', database: 'postgres' });
    c.on('error', () => {});
    const err = (await c.connect().then(() => null, (e) => e)) as (Error & { code?: string; hint?: string }) | null;
    expect(err?.code).toBe('08006');
    expect(err?.message).toContain(`127.0.0.1:${port}`);
    expect(err?.message).toContain('ECONNREFUSED');
    expect(err?.hint).toContain('Check that PostgreSQL is running');
    expect(p.stats().totals.upstreamFailures).toBe(1);
    await p.close(0);
  });

  test('unknown host: 08006 with the DNS failure', async () => {
    const p = await startTestProxy({ upstream: 'postgres://no-such-host.invalid:5432/postgres?sslmode=disable' });
    const c = new pg.Client({ host: p.address.host, port: p.address.port, user: 'trust_user', database: 'postgres' });
    c.on('error', () => {});
    const err = (await c.connect().then(() => null, (e) => e)) as (Error & { code?: string }) | null;
    expect(err?.code).toBe('08006');
    expect(err?.message).toContain('no-such-host.invalid:5432');
    expect(err?.message).toMatch(/DNS lookup failed|ENOTFOUND|EAI_AGAIN/);
    await p.close(0);
  });

  test('upstream accepts but never answers: connect timeout', async () => {
    // A listener that accepts and stays silent: the TLS negotiation (sslmode=require) then times out.
    const { createServer } = await import('node:net');
    const silent = createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const port = (silent.address() as { port: number }).port;
    const p = await startTestProxy({ upstream: `postgres://127.0.0.1:${port}/postgres?sslmode=require`, connectTimeoutMs: 300 });
    const c = new pg.Client({ host: p.address.host, port: p.address.port, user: 'trust_user', database: 'postgres' });
    c.on('error', () => {});
    const err = (await c.connect().then(() => null, (e) => e)) as (Error & { code?: string }) | null;
    expect(err?.code).toBe('08006');
    expect(err?.message).toContain(`127.0.0.1:${port}`);
    expect(err?.message).toContain('300 ms');
    await p.close(0);
    silent.close();
  });
});

test('fuzz: well-framed random messages, random cuts and random disconnects, with an interceptor watching', async () => {
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const fuzzProxy = await startTestProxy({
    interceptor: {
      intercept(msg, ctx) {
        ctx.watched.statements.add('');
        ctx.watched.portals.add('');
        // Parse whatever comes; garbage makes this throw, which the seam must absorb.
        if (msg.type === 'B') P.readBind(msg.bytes);
        return rand() < 0.5 ? undefined : { send: [msg.bytes] };
      },
    },
  });
  const types = 'QPBDECSHdcfFX%\x00\xff';
  const sessions = Array.from({ length: 30 }, async (_, k) => {
    const c = await RawClient.open(fuzzProxy.address.port);
    c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: `fuzz-${k}` }));
    await c.waitFor('Z');
    const parts: Buffer[] = [];
    for (let i = 0; i < 20; i++) {
      const body = Buffer.alloc(Math.floor(rand() * 60));
      for (let j = 0; j < body.length; j++) body[j] = rand() < 0.3 ? 0 : Math.floor(rand() * 256);
      if (rand() < 0.3) Buffer.from('steadytext').copy(body, 0);
      parts.push(frontend(types[Math.floor(rand() * types.length)], body));
    }
    const all = Buffer.concat(parts);
    let pos = 0;
    const stopAt = rand() < 0.5 ? Math.floor(rand() * all.length) : all.length;
    while (pos < stopAt && !c.closed) {
      const n = Math.min(stopAt - pos, 1 + Math.floor(rand() * 40));
      c.write(all.subarray(pos, pos + n));
      pos += n;
      if (rand() < 0.2) await new Promise((r) => setTimeout(r, 1)); // fuzzed timing: pieces split across reads
    }
    if (stopAt < all.length) c.destroy();
    else await c.waitClosed(5_000).catch(() => c.destroy());
  });
  await Promise.all(sessions);
  await eventually(() => fuzzProxy.stats().clients === 0, 10_000, 'fuzz sessions closed');
  const ok = await client('trust', fuzzProxy);
  expect((await ok.query('select 1 as one')).rows[0].one).toBe(1);
  await ok.end();
  await fuzzProxy.close(0);
  await healthyStillFine();
});

test('the proxy survives all of the above and still serves new clients', async () => {
  const c = await client('md5', proxy);
  expect((await c.query('select 1 as one')).rows[0].one).toBe(1);
  await c.end();
  expect(proxy.stats().totals.protocolErrors).toBeGreaterThanOrEqual(10);
});
