// Pooled prepared statements, timeouts and counters as pgBouncer 1.24 has them (src/prepare.c, janitor.c,
// stats): a Bind of a name the client never prepared ends it, a refused Parse keeps its name, DEALLOCATE ALL
// counts once the server did it, max_prepared_statements read at each use, idle_transaction_timeout from
// the server's last ReadyForQuery, SHOW STATS' query/transaction/assignment counts, one id numbering for
// clients and servers, server_lifetime = 0.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import { bind as bindMessage, execute, parse, query, readDataRow, SYNC } from '../../proxy/protocol.js';
import type { ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';
import { RawClient, appName, frontend, silentLogger, startTestProxy, startupPacket, testDb } from './helpers.js';

interface Pooled {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  session(): Promise<RawClient>;
  close(): Promise<void>;
}

/** A pooling proxy (auth_type trust, trust_user) from an ini written for the test cluster. */
async function pooledProxy(pgbouncer: Record<string, string | number>): Promise<Pooled> {
  const db = testDb();
  const dir = mkdtempSync(join(tmpdir(), 'pooled-prepared-'));
  writeFileSync(join(dir, 'userlist.txt'), '"trust_user" ""\n');
  writeFileSync(
    join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `postgres = host=${db.host} port=${db.port} dbname=postgres`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      'listen_port = 6432',
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${join(dir, 'userlist.txt')}`,
      ...Object.entries(pgbouncer).map(([k, v]) => `${k} = ${v}`),
    ].join('\n') + '\n',
  );
  const config = loadPgBouncerConfig(join(dir, 'pgbouncer.ini'));
  const pooling = createPooling({
    config,
    defaultTarget: parseUpstreamUrl(`postgres://${db.host}:${db.port}/?sslmode=disable`),
    logger: silentLogger,
  });
  const proxy = await startTestProxy({ pooling });
  return {
    proxy,
    pooling,
    async session() {
      const c = await RawClient.open(proxy.address.port);
      c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: appName('pooled-prepared') }));
      await c.waitFor('Z');
      c.messages.length = 0;
      return c;
    },
    async close() {
      await proxy.close(0);
      pooling.pooler.close();
    },
  };
}

/** Sends, then waits for `n` more ReadyForQuery; returns the messages that came meanwhile. */
async function exchange(c: RawClient, bytes: Buffer[], n = 1): Promise<{ type: string; bytes: Buffer }[]> {
  const from = c.messages.length;
  const z = c.count('Z');
  c.write(Buffer.concat(bytes));
  await c.waitForCount('Z', z + n);
  return c.messages.slice(from);
}

const bind = (portal: string, statement: string, params: Buffer[]) => bindMessage({ portal, statement, paramFormats: [], params, resultFormats: [] });
const text = (m: { bytes: Buffer }) => readDataRow(m.bytes)[0]?.toString();
const errors = (ms: { type: string; bytes: Buffer }[]) => ms.filter((m) => m.type === 'E').map((m) => m.bytes.toString('latin1'));

function pool(p: Pooled) {
  return [...p.pooling.pooler.databases.get('postgres')!.pools.values()][0];
}

describe('prepared statements in transaction mode, as pgBouncer', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, max_prepared_statements: 10 });
  });
  afterAll(() => p.close());

  test('a Bind or Describe of a name the client never prepared ends it: "prepared statement did not exist"', async () => {
    for (const msg of [bind('', 'never_prepared', []), frontend('D', 'Snever_prepared\0')]) {
      const c = await p.session();
      c.write(Buffer.concat([msg, SYNC]));
      await c.waitClosed();
      expect(c.error()).toMatchObject({ S: 'FATAL', C: '08P01', M: 'prepared statement did not exist' });
    }
  });

  test('a Parse the server refused or skipped keeps its name: a Bind prepares it again, a new Parse may take it', async () => {
    const c = await p.session();
    // psycopg's pipeline: the second Parse is skipped after the first one's error, and the client binds it later.
    let got = await exchange(c, [parse('bad', 'select * from no_such_table_pooled_prepared'), parse('skipped', 'select 2'), SYNC]);
    expect(errors(got)).toHaveLength(1);
    got = await exchange(c, [bind('', 'skipped', []), execute(''), SYNC]);
    expect(got.filter((m) => m.type === 'D').map(text)).toEqual(['2']);
    got = await exchange(c, [parse('bad', 'select 3'), bind('', 'bad', []), execute(''), SYNC]);
    expect(got.filter((m) => m.type === 'D').map(text)).toEqual(['3']);
    // A name in use: PostgreSQL's error (pgBouncer would close the client), and the session goes on.
    got = await exchange(c, [parse('bad', 'select 4'), SYNC]);
    expect(errors(got).join()).toContain('prepared statement "bad" already exists');
    got = await exchange(c, [bind('', 'bad', []), execute(''), SYNC]);
    expect(got.filter((m) => m.type === 'D').map(text)).toEqual(['3']);
    c.destroy();
  });

  test('DEALLOCATE ALL forgets the client statements once the server has done it', async () => {
    const c = await p.session();
    await exchange(c, [parse('s', 'select 5'), bind('', 's', []), execute(''), SYNC]);
    // Refused in a failed transaction: nothing is forgotten.
    await exchange(c, [query('begin')]);
    await exchange(c, [query('select 1/0')]);
    await exchange(c, [query('deallocate all')]);
    await exchange(c, [query('rollback')]);
    let got = await exchange(c, [bind('', 's', []), execute(''), SYNC]);
    expect(got.filter((m) => m.type === 'D').map(text)).toEqual(['5']);
    got = await exchange(c, [query('deallocate all')]);
    expect(errors(got)).toEqual([]);
    c.write(Buffer.concat([bind('', 's', []), execute(''), SYNC]));
    await c.waitClosed();
    expect(
      c.messages
        .filter((m) => m.type === 'E')
        .at(-1)
        ?.bytes.toString('latin1'),
    ).toContain('prepared statement did not exist');
  });

  test('max_prepared_statements is read at each use (SET in the console takes effect at once)', async () => {
    const st = p.pooling.pooler.settings as { maxPreparedStatements: number };
    const c = await p.session();
    const count = async () => text((await exchange(c, [query('select count(*) from pg_prepared_statements')])).find((m) => m.type === 'D')!);
    await exchange(c, [query('deallocate all')]);
    st.maxPreparedStatements = 1;
    for (let i = 0; i < 3; i++) await exchange(c, [parse(`a${i}`, `select ${i} as a`), bind('', `a${i}`, []), execute(''), SYNC]);
    expect(await count()).toBe('1');
    st.maxPreparedStatements = 3;
    for (let i = 0; i < 3; i++) await exchange(c, [parse(`b${i}`, `select ${i} as b`), bind('', `b${i}`, []), execute(''), SYNC]);
    expect(await count()).toBe('3');
    // Disabled: names go to the server as the client wrote them.
    st.maxPreparedStatements = 0;
    const got = await exchange(c, [bind('', 'b0', []), execute(''), SYNC]);
    expect(errors(got).join()).toContain('prepared statement "b0" does not exist');
    st.maxPreparedStatements = 10;
    c.destroy();
  });

  test("SHOW STATS' counts: a request per ReadyForQuery, a transaction per block, an assignment per server connection given", async () => {
    const s = pool(p).stats;
    const before = { q: s.queryCount, x: s.xactCount, a: s.serverAssignmentCount };
    const c = await p.session();
    await exchange(c, [query('select 1')]);
    await exchange(c, [query('begin')]);
    await exchange(c, [parse('', 'select 1'), bind('', '', []), execute(''), SYNC]);
    await exchange(c, [query('commit')]);
    // A pipeline of two Syncs: two requests.
    await exchange(c, [parse('', 'select 1'), bind('', '', []), execute(''), SYNC, bind('', '', []), execute(''), SYNC], 2);
    expect({ q: s.queryCount - before.q, x: s.xactCount - before.x }).toEqual({ q: 5, x: 3 });
    expect(s.serverAssignmentCount - before.a).toBeGreaterThanOrEqual(3);
    c.destroy();
  });
});

describe('timeouts and ids', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'session', idle_transaction_timeout: 1, server_lifetime: 0 });
  });
  afterAll(() => p.close());

  test("idle_transaction_timeout counts from the server's last ReadyForQuery, not the client's last message", async () => {
    const c = await p.session();
    await exchange(c, [query('begin')]);
    await exchange(c, [query('select pg_sleep(1.3)')]);
    await new Promise((r) => setTimeout(r, 400));
    const got = await exchange(c, [query('select 1')]);
    expect(errors(got)).toEqual([]);
    await c.waitClosed(4_000);
    expect(c.error()).toMatchObject({ S: 'FATAL', M: 'idle transaction timeout' });
  });

  test('clients and servers are numbered from one counter; server_lifetime = 0 closes a connection after its client', async () => {
    const pids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await p.session();
      const got = await exchange(c, [query('select pg_backend_pid()')]);
      pids.push(text(got.find((m) => m.type === 'D')!)!);
      const session = p.proxy.sessions().find((s) => s.pooled?.server)!;
      expect(session.pooled!.server!.id).toBeGreaterThan(session.id);
      const ids = p.proxy.sessions().map((s) => s.id);
      expect(ids).not.toContain(session.pooled!.server!.id);
      c.write(Buffer.from([0x58, 0, 0, 0, 4]));
      await c.waitClosed();
    }
    expect(pids[0]).not.toBe(pids[1]);
  });
});
