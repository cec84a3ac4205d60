// A pooled named statement whose result type changed (ALTER TABLE ... ADD COLUMN): the server refuses its
// cached plan at Bind with 0A000 "cached plan must not change result type" and does not replan. Outside a
// transaction block the pooler prepares the statement again under a new server-side name (every server
// connection's old copy is out of use) and repeats the client's exchange; inside one the client gets the
// error (its transaction is aborted anyway).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import { bind as bindMessage, describe as describeMessage, execute, parse, query, readErrorFields, SYNC } from '../../proxy/protocol.js';
import type { ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';
import { RawClient, adminQuery, appName, silentLogger, startTestProxy, startupPacket, testDb } from './helpers.js';

const T = `replan_${process.pid}`;
const STMT = `select *, pg_backend_pid() as pid from ${T}`;

let proxy: ProxyServer;
let pooling: PoolingEnv;
let url: string;

beforeAll(async () => {
  const db = testDb();
  const dir = mkdtempSync(join(tmpdir(), 'pooled-replan-'));
  const q = (s: string) => `"${s.replaceAll('"', '""')}"`;
  writeFileSync(join(dir, 'userlist.txt'), `${q(db.roles.scram.user)} ${q(db.roles.scram.password)}\n"trust_user" ""\n`);
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
      'pool_mode = transaction',
      'default_pool_size = 2',
      'max_prepared_statements = 50',
    ].join('\n') + '\n',
  );
  pooling = createPooling({
    config: loadPgBouncerConfig(join(dir, 'pgbouncer.ini')),
    defaultTarget: parseUpstreamUrl(`postgres://${db.host}:${db.port}/?sslmode=disable`),
    logger: silentLogger,
  });
  proxy = await startTestProxy({ pooling });
  const r = db.roles.scram;
  url = `postgres://${encodeURIComponent(r.user)}:${encodeURIComponent(r.password)}@127.0.0.1:${proxy.address.port}/postgres`;
  await adminQuery(`drop table if exists ${T}; create table ${T} (a int); insert into ${T} values (1); grant select on ${T} to public`);
});

afterAll(async () => {
  await proxy?.close(0);
  pooling?.pooler.close();
  await adminQuery(`drop table if exists ${T}`);
});

async function connect(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => {});
  await c.connect();
  return c;
}

/** The named statement: its columns and the server connection (backend pid) that ran it. */
async function run(c: pg.Client): Promise<{ columns: string[]; pid: number }> {
  const r = await c.query({ name: 'replan', text: STMT });
  return { columns: r.fields.map((f) => f.name), pid: r.rows[0].pid };
}

const pidOf = async (c: pg.Client): Promise<number> => (await c.query('select pg_backend_pid() as pid')).rows[0].pid;

/**
 * Runs `fn` with `runner` while the other server connection than `target` is held by a transaction of one
 * of two holders: the runner's next statement goes to `target`.
 */
async function on(target: number, holders: [pg.Client, pg.Client], fn: () => Promise<void>): Promise<void> {
  const [h1, h2] = holders;
  await h1.query('begin');
  await h2.query('begin');
  const p1 = await pidOf(h1);
  const p2 = await pidOf(h2);
  expect(new Set([p1, p2])).toEqual(new Set([target, p1 === target ? p2 : p1]));
  // The holder on the target lets it go; the other keeps its connection.
  const [release, keep] = p1 === target ? [h1, h2] : [h2, h1];
  await release.query('commit');
  try {
    await fn();
  } finally {
    await keep.query('commit');
  }
}

describe('cached plan must not change result type (transaction mode, pool size 2)', () => {
  let a: pg.Client;
  let b: pg.Client;
  let h1: pg.Client;
  let h2: pg.Client;
  let pids: number[];

  beforeAll(async () => {
    [a, b, h1, h2] = await Promise.all([connect(), connect(), connect(), connect()]);
  });
  afterAll(async () => {
    await Promise.all([a, b, h1, h2].map((c) => c?.end().catch(() => {})));
  });

  test('the named statement is prepared on both server connections', async () => {
    await a.query('begin');
    const pa = await pidOf(a);
    const rb = await run(b); // the other connection
    const ra = await run(a);
    await a.query('commit');
    expect(ra.pid).toBe(pa);
    expect(rb.pid).not.toBe(pa);
    expect(ra.columns).toEqual(['a', 'pid']);
    expect(rb.columns).toEqual(['a', 'pid']);
    pids = [ra.pid, rb.pid];
  });

  test('after ADD COLUMN, outside a transaction: prepared again, the new column in the result, on either connection', async () => {
    await adminQuery(`alter table ${T} add column b int default 2`);
    // The first connection's copy fails at Bind: the exchange is repeated on a new statement.
    await on(pids[0], [h1, h2], async () => {
      const r = await run(a);
      expect(r).toEqual({ columns: ['a', 'b', 'pid'], pid: pids[0] });
      const rows = (await a.query({ name: 'replan', text: STMT })).rows;
      expect(rows).toEqual([{ a: 1, b: 2, pid: pids[0] }]);
    });
    // The second connection's old copy is out of use: even inside a transaction block the statement works there.
    await on(pids[1], [h1, h2], async () => {
      await b.query('begin');
      try {
        expect(await run(b)).toEqual({ columns: ['a', 'b', 'pid'], pid: pids[1] });
      } finally {
        await b.query('commit');
      }
      expect(await run(a)).toEqual({ columns: ['a', 'b', 'pid'], pid: pids[1] });
    });
  });

  test('inside a transaction block the client gets 0A000; after ROLLBACK the statement works again', async () => {
    await adminQuery(`alter table ${T} add column c text default 'x'`);
    await on(pids[0], [h1, h2], async () => {
      await b.query('begin');
      const err = await run(b).then(
        () => null,
        (e: { code?: string; message?: string }) => e,
      );
      expect(err?.code).toBe('0A000');
      expect(err?.message).toMatch(/cached plan must not change result type/);
      await b.query('rollback');
      expect(await run(b)).toEqual({ columns: ['a', 'b', 'c', 'pid'], pid: pids[0] });
    });
    // Both connections serve the statement with the newest columns.
    for (const pid of pids) {
      await on(pid, [h1, h2], async () => {
        expect(await run(a)).toEqual({ columns: ['a', 'b', 'c', 'pid'], pid });
        expect(await run(b)).toEqual({ columns: ['a', 'b', 'c', 'pid'], pid });
      });
    }
  });

  test('a Describe of the statement (Parse, Describe, Sync) is repeated too: the new RowDescription', async () => {
    const c = await RawClient.open(proxy.address.port);
    try {
      c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: appName('pooled-replan') }));
      await c.waitFor('Z');
      const prep = (extra: Buffer[]) => Buffer.concat([parse('s1', STMT), describeMessage('S', 's1'), ...extra, SYNC]);
      c.messages.length = 0;
      c.write(prep([]));
      await c.waitForCount('Z', 1);
      await adminQuery(`alter table ${T} add column d int`);
      // trust_user's own pool: this lone client's one server connection is reused. The statement is the
      // client's already: Describe alone, then Bind/Execute.
      c.messages.length = 0;
      c.write(Buffer.concat([describeMessage('S', 's1'), SYNC]));
      await c.waitForCount('Z', 1);
      expect(c.messages.filter((m) => m.type === 'E').map((m) => readErrorFields(m.bytes).M)).toEqual([]);
      const rd = c.messages.find((m) => m.type === 'T');
      expect(rd).toBeDefined();
      expect(rd!.bytes.toString('latin1')).toContain('d\0');
      c.messages.length = 0;
      c.write(Buffer.concat([bindMessage({ portal: '', statement: 's1', paramFormats: [], params: [], resultFormats: [] }), execute(''), SYNC]));
      await c.waitForCount('Z', 1);
      expect(c.messages.map((m) => m.type)).toEqual(['2', 'D', 'C', 'Z']);
    } finally {
      c.sock.destroy();
    }
  });

  test('no retry when the client sent more after the Sync, or its exchange ran something before the Bind', async () => {
    const c = await RawClient.open(proxy.address.port);
    const bindS2 = bindMessage({ portal: '', statement: 's2', paramFormats: [], params: [], resultFormats: [] });
    const codes = () => c.messages.filter((m) => m.type === 'E').map((m) => readErrorFields(m.bytes).C);
    try {
      c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: appName('pooled-replan') }));
      await c.waitFor('Z');
      // trust_user's pool is its own, and this lone serial client's one server connection is reused (LIFO).
      c.messages.length = 0;
      c.write(Buffer.concat([parse('s2', `${STMT} where a = 1`), describeMessage('S', 's2'), SYNC]));
      await c.waitForCount('Z', 1);
      await adminQuery(`alter table ${T} add column e int`);
      // A Query right behind the Sync: the error goes to the client.
      c.messages.length = 0;
      c.write(Buffer.concat([bindS2, execute(''), SYNC, query('select 1')]));
      await c.waitForCount('Z', 2);
      expect(codes()).toEqual(['0A000']);
      expect(c.messages.map((m) => m.type)).toEqual(['E', 'Z', 'T', 'D', 'C', 'Z']);
      // A statement run earlier in the same exchange: the error goes to the client.
      c.messages.length = 0;
      c.write(
        Buffer.concat([
          parse('', 'select 2'),
          bindMessage({ portal: '', statement: '', paramFormats: [], params: [], resultFormats: [] }),
          execute(''),
          bindS2,
          execute(''),
          SYNC,
        ]),
      );
      await c.waitForCount('Z', 1);
      expect(c.messages.map((m) => m.type)).toEqual(['1', '2', 'D', 'C', 'E', 'Z']);
      expect(codes()).toEqual(['0A000']);
      // Alone in its exchange: prepared again and run.
      c.messages.length = 0;
      c.write(Buffer.concat([bindS2, execute(''), SYNC]));
      await c.waitForCount('Z', 1);
      expect(c.messages.map((m) => m.type)).toEqual(['2', 'D', 'C', 'Z']);
    } finally {
      c.sock.destroy();
    }
  });
});
