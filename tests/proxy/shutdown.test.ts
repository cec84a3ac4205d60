// Graceful close: stop accepting, let what runs finish within the grace period, then FATAL 57P01.
import { connect } from 'node:net';
import { expect, test } from 'vitest';
import pg from 'pg';
import * as P from '../../proxy/protocol.js';
import { RawClient, backendsOf, client, eventually, frontend, queryMsg, startTestProxy, startupPacket } from './helpers.js';

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
}

test('a running pg_sleep(1) finishes during close(); idle sessions end at once with 57P01; new connections are refused', async () => {
  const proxy = await startTestProxy();
  const busyApp = `shutdown-busy-${process.pid}`;
  const busy = await client('scram', proxy, { application_name: busyApp });
  const idle = await client('md5', proxy);
  const idleError = new Promise<Error & { code?: string }>((resolve) => idle.on('error', resolve));
  const inTx = await client('trust', proxy);
  await inTx.query('begin');
  // The statement under test: running when close() begins, it takes a second to finish.
  const running = busy.query('select pg_sleep(1), 5 as v');
  await eventually(async () => (await backendsOf(busyApp)).some((b) => b.state === 'active'), 5_000, 'pg_sleep(1) running');

  const t0 = Date.now();
  const closing = proxy.close(10_000);
  expect((await idleError).code).toBe('57P01');
  expect(await refused(proxy.address.port)).toBe(true);
  // An open transaction may finish too; the session ends right after it.
  expect((await inTx.query('select 3 as v')).rows[0].v).toBe(3);
  const inTxEnded = new Promise<Error & { code?: string }>((resolve) => inTx.on('error', resolve));
  await inTx.query('commit');
  expect((await inTxEnded).code).toBe('57P01');

  expect((await running).rows[0].v).toBe(5);
  await closing;
  const took = Date.now() - t0;
  expect(took).toBeGreaterThan(500);
  expect(took).toBeLessThan(8_000); // well before the grace period
  expect(proxy.stats().clients).toBe(0);
  await expect(busy.query('select 1')).rejects.toThrow();
});

test('grace period over: the running statement is ended with 57P01 and its backend goes away', async () => {
  const proxy = await startTestProxy();
  const c = await RawClient.open(proxy.address.port);
  c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: `grace-over-${process.pid}` }));
  await c.waitFor('Z');
  c.write(queryMsg('select pg_sleep(30)'));
  await eventually(async () => (await backendsOf(`grace-over-${process.pid}`)).some((b) => b.state === 'active'), 5_000, 'query running');
  const t0 = Date.now();
  await proxy.close(300);
  expect(Date.now() - t0).toBeLessThan(5_000);
  await c.waitClosed();
  expect(c.error()?.C).toBe('57P01');
  await eventually(async () => (await backendsOf(`grace-over-${process.pid}`)).length === 0, 10_000, 'backend gone');
});

test('extended-protocol COPY FROM STDIN (Sync sent before the data, as libpq does) leaves the session idle', async () => {
  const proxy = await startTestProxy();
  const setup = await client('admin', null);
  await setup.query('create table if not exists ext_copy (i int)');
  await setup.query('grant all on ext_copy to trust_user'); // PUBLIC creates nothing in public
  await setup.query('truncate ext_copy');
  const c = await RawClient.open(proxy.address.port);
  c.write(startupPacket({ user: 'trust_user', database: 'postgres' }));
  await c.waitFor('Z');
  // The server ignores the first Sync (it arrives in copy-in mode); the one after CopyDone answers.
  c.write(Buffer.concat([P.parse('', 'copy ext_copy from stdin'), P.bind({ portal: '', statement: '', paramFormats: [], params: [], resultFormats: [] }), P.execute(), P.SYNC]));
  await c.waitFor('G');
  c.write(Buffer.concat([frontend('d', '1\n2\n3\n'), frontend('c'), P.SYNC]));
  await c.waitForCount('Z', 2);
  expect(c.messages.map((m) => m.type).join('')).toMatch(/12GCZ$/);
  // A pipelined simple COPY too, data sent before the CopyInResponse arrives.
  c.write(Buffer.concat([queryMsg('copy ext_copy from stdin'), frontend('d', '4\n'), frontend('c')]));
  await c.waitForCount('Z', 3);
  expect((await setup.query('select count(*)::int as n from ext_copy')).rows[0].n).toBe(4);
  // Idle now: close() needs no grace.
  const t0 = Date.now();
  await proxy.close(10_000);
  expect(Date.now() - t0).toBeLessThan(2_000);
  await c.waitClosed();
  expect(c.error()?.C).toBe('57P01');
  await setup.query('drop table ext_copy');
  await setup.end();
});

test('close() is idempotent and a proxy with no sessions closes at once', async () => {
  const proxy = await startTestProxy();
  const a = proxy.close(5_000);
  const b = proxy.close(5_000);
  expect(a).toBe(b);
  const t0 = Date.now();
  await a;
  expect(Date.now() - t0).toBeLessThan(1_000);
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.address.port, user: 'trust_user', database: 'postgres' });
  c.on('error', () => {});
  await expect(c.connect()).rejects.toThrow(/ECONNREFUSED/);
});
