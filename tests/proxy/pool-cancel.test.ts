// Cancel under transaction pooling: a client's cancel requests reach only its own statement. With one
// server connection and a second client queued for it, a storm of cancels from the first client must not
// land on the second client's statement once the connection has changed hands (pgBouncer's test_cancel_race).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import { cancelRequest } from '../../proxy/protocol.js';
import type { ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';
import { adminQuery, appName, eventually, silentLogger, startTestProxy, testDb } from './helpers.js';

let proxy: ProxyServer;
let pooling: PoolingEnv;
let url: string;

beforeAll(async () => {
  const db = testDb();
  const dir = mkdtempSync(join(tmpdir(), 'pool-cancel-'));
  const role = db.roles.scram;
  writeFileSync(join(dir, 'userlist.txt'), `"${role.user}" "${role.password}"\n`);
  writeFileSync(
    join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `postgres = host=${db.host} port=${db.port} dbname=postgres`,
      '[pgbouncer]',
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${join(dir, 'userlist.txt')}`,
      'pool_mode = transaction',
      'default_pool_size = 1',
    ].join('\n') + '\n',
  );
  pooling = createPooling({
    config: loadPgBouncerConfig(join(dir, 'pgbouncer.ini')),
    defaultTarget: parseUpstreamUrl(`postgres://${db.host}:${db.port}/?sslmode=disable`),
    logger: silentLogger,
  });
  proxy = await startTestProxy({ pooling });
  url = `postgres://${encodeURIComponent(role.user)}:${encodeURIComponent(role.password)}@127.0.0.1:${proxy.address.port}/postgres`;
});

afterAll(async () => {
  await proxy.close(0);
  pooling.pooler.close();
});

/** A CancelRequest with the key the proxy gave this client, on a connection of its own. */
function cancel(c: pg.Client): Promise<void> {
  const key = c as unknown as { processID: number; secretKey: number };
  const secret = Buffer.alloc(4);
  secret.writeInt32BE(key.secretKey);
  return new Promise((resolve) => {
    const s = netConnect(proxy.address.port, '127.0.0.1', () => s.end(cancelRequest(key.processID, secret)));
    s.on('close', () => resolve());
    s.on('error', () => resolve());
  });
}

test('a storm of cancels from one client cancels its statement only, never the next client on the same server connection', async () => {
  const app = appName('pool-cancel');
  for (let round = 0; round < 3; round++) {
    const first = new pg.Client({ connectionString: url, application_name: `${app}-1` });
    const second = new pg.Client({ connectionString: url, application_name: `${app}-2` });
    first.on('error', () => {});
    second.on('error', () => {});
    await first.connect();
    await second.connect();
    const victim = first.query('select pg_sleep(5)');
    victim.catch(() => {});
    // Running on the one server connection; the second client's statement then waits in the pool's queue.
    await eventually(async () => (await adminQuery("select 1 from pg_stat_activity where query = 'select pg_sleep(5)' and state = 'active'")).length > 0);
    const bystander = second.query('select pg_sleep(0.3) as slept, 42 as v');
    await eventually(() => [...pooling.pooler.pools()].some((p) => p.waiters.length > 0));
    await Promise.all(Array.from({ length: 40 }, () => cancel(first)));
    await expect(victim).rejects.toMatchObject({ code: '57014' });
    expect((await bystander).rows[0].v).toBe(42);
    await first.end();
    await second.end();
  }
});
