// A database restart under load, behind a transaction pool: the clients whose work was in flight get an
// error, every later statement succeeds, and the proxy is never restarted. On a cluster of its own.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import pg from 'pg';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import type { ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';
import { startCluster, type Cluster } from '../setup/cluster.js';
import { silentLogger, startTestProxy } from './helpers.js';

let cluster: Cluster;
let proxy: ProxyServer;
let pooling: PoolingEnv;
let url: string;

beforeAll(async () => {
  cluster = await startCluster();
  const dir = mkdtempSync(join(tmpdir(), 'pool-restart-'));
  const r = cluster.roles.scram;
  writeFileSync(join(dir, 'users.txt'), `"${r.user}" "${r.password}"\n`);
  writeFileSync(join(dir, 'p.ini'), [
    '[databases]', `postgres = host=${cluster.host} port=${cluster.port}`,
    '[pgbouncer]', 'unix_socket_dir =', 'auth_type = scram-sha-256', `auth_file = ${join(dir, 'users.txt')}`,
    'pool_mode = transaction', 'default_pool_size = 4', 'server_login_retry = 0.2', 'query_wait_timeout = 60',
  ].join('\n'));
  pooling = createPooling({ config: loadPgBouncerConfig(join(dir, 'p.ini')), defaultTarget: parseUpstreamUrl(`postgres://${cluster.host}:${cluster.port}/?sslmode=disable`), logger: silentLogger });
  proxy = await startTestProxy({ pooling });
  url = `postgres://${encodeURIComponent(r.user)}:${encodeURIComponent(r.password)}@127.0.0.1:${proxy.address.port}/postgres`;
}, 120_000);

afterAll(async () => {
  await proxy?.close(0);
  pooling?.pooler.close();
  await cluster?.stop();
});

test('in-flight work fails, later work succeeds, the proxy keeps running', async () => {
  const clients = await Promise.all(Array.from({ length: 8 }, async () => {
    const c = new pg.Client(url);
    c.on('error', () => {});
    await c.connect();
    return c;
  }));
  // Long statements in flight on every server connection while the database restarts.
  const inflight = clients.slice(0, 4).map((c) => c.query('select pg_sleep(30)').then(() => 'ok', (e: Error) => e.message));
  await expect.poll(async () => {
    const direct = new pg.Client(cluster.adminUrl);
    await direct.connect();
    const n = (await direct.query(`select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(30)'`)).rows[0].n;
    await direct.end();
    return n;
  }, { timeout: 10_000 }).toBe(4);
  await cluster.restart!();
  const outcomes = await Promise.all(inflight);
  for (const o of outcomes) expect(o).not.toBe('ok');
  // The idle clients never noticed: their next statements get fresh server connections.
  for (const c of clients.slice(4)) {
    await expect.poll(async () => (await c.query('select 1 as v').then((r) => r.rows[0].v, () => 0)), { timeout: 15_000 }).toBe(1);
  }
  // New clients log in and work.
  const fresh = new pg.Client(url);
  await fresh.connect();
  expect((await fresh.query('select 40 + 2 as v')).rows[0].v).toBe(42);
  await fresh.end();
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
}, 120_000);
