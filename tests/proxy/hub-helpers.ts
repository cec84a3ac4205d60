// The native hub's tests (pooled-handoff*.test.ts): a transaction-pooling proxy with the hub on, in this process.
import pg from 'pg';
import type { PoolingEnv } from '../../proxy/pooling.js';
import type { ProxyServer } from '../../proxy/server.js';
import { startPoolingProxy, testDb } from './helpers.js';

export interface Pooled {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  url(database?: string): string;
  close(): Promise<void>;
}

/** A pooling proxy (SCRAM user, also the console's admin) with the native relay and the hub on; `pgbouncer` adds ini settings. */
export async function pooledProxy(pgbouncer: Record<string, string | number>): Promise<Pooled> {
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

export async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => {});
  await c.connect();
  return c;
}

export const pool = (p: Pooled) => [...p.pooling.pooler.pools()][0];
/** Hand-offs the pool's hub made in C so far. */
export const handoffs = (p: Pooled) => pool(p).hub?.sync().handoffs ?? 0;
