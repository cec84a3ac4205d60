// node-postgres through the proxy: simple and extended protocol, prepared statements, binary results,
// pipelining, pgvector, NOTIFY, errors and recovery, authentication per method, many clients at once.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import type { ProxyServer } from '../../proxy/server.js';
import * as P from '../../proxy/protocol.js';
import { client, queryMsg, rawSession, startTestProxy, testDb, urlFor } from './helpers.js';

let proxy: ProxyServer;
beforeAll(async () => {
  proxy = await startTestProxy();
});
afterAll(async () => {
  await proxy.close(0);
});

describe('queries', () => {
  test('parameterised queries, text results', async () => {
    const c = await client('scram', proxy);
    const r = await c.query('select $1::int + $2::int as sum, $3::text as t, null::int as n', [40, 2, 'héllo ✓']);
    expect(r.rows).toEqual([{ sum: 42, t: 'héllo ✓', n: null }]);
    await c.end();
  });

  test('named prepared statements are parsed once and reused', async () => {
    const c = await client('scram', proxy);
    for (let i = 0; i < 5; i++) {
      const r = await c.query({ name: 'double', text: 'select $1::int * 2 as v', values: [i] });
      expect(r.rows[0].v).toBe(i * 2);
    }
    const ps = await c.query(`select name from pg_prepared_statements where name = 'double'`);
    expect(ps.rowCount).toBe(1);
    await c.end();
  });

  test('binary results: the same bytes as directly (extended protocol, raw client)', async () => {
    // pg's parser decodes every field as text, so the binary format is checked on the wire.
    const exchange = async (port: number) => {
      const c = await rawSession(port);
      const sql = `select 123456789012::int8, 1.5::float8, true, $1::bytea, '[1,2,3]'::vector, null::int`;
      c.write(Buffer.concat([
        P.parse('', sql, [17]),
        P.bind({ portal: '', statement: '', paramFormats: [1], params: [Buffer.from([0, 1, 2, 255])], resultFormats: [1] }),
        P.describe('P', ''),
        P.execute(),
        P.SYNC,
      ]));
      await c.waitFor('C');
      await c.until(() => c.messages.filter((m) => m.type === 'Z').length === 2);
      c.destroy();
      return c.messages.slice(c.messages.findIndex((m) => m.type === 'Z') + 1);
    };
    const viaProxy = await exchange(proxy.address.port);
    const direct = await exchange(testDb().port);
    expect(viaProxy.map((m) => m.type).join('')).toBe('12TDCZ');
    expect(viaProxy).toEqual(direct);
    const row = viaProxy[3].body;
    expect(row.readInt16BE(0)).toBe(6);
    expect(row.readBigInt64BE(6)).toBe(123456789012n);
    expect(row.readDoubleBE(18)).toBe(1.5);
  });

  test('pg with binary: true gets the same results as directly', async () => {
    const sql = `select 42::int4 as i, 'txt'::text as t, '[1,2,3]'::vector as v, $1::text as p`;
    const viaProxy = await client('scram', proxy, { binary: true } as pg.ClientConfig);
    const direct = await client('scram', null, { binary: true } as pg.ClientConfig);
    const a = await viaProxy.query(sql, ['param']);
    const b = await direct.query(sql, ['param']);
    expect(a.fields.map((f) => f.format)).toEqual(['binary', 'binary', 'binary', 'binary']);
    expect(a.rows).toEqual(b.rows);
    await viaProxy.end();
    await direct.end();
  });

  test('custom type parsers see the same text as directly', async () => {
    const types = { getTypeParser: (oid: number, format?: string) => (format === 'binary' ? (v: Buffer) => v : (v: string) => `<${oid}:${v}>`) } as pg.CustomTypesConfig;
    const viaProxy = await client('scram', proxy, { types });
    const direct = await client('scram', null, { types });
    const sql = `select now()::date - now()::date as d, '{1,2,3}'::int[] as a, 'x'::name as n, 1e300::float8 as f`;
    expect((await viaProxy.query(sql)).rows).toEqual((await direct.query(sql)).rows);
    await viaProxy.end();
    await direct.end();
  });

  test('pipelined queries arrive in order with the right results', async () => {
    // pipeline: node-postgres writes each query without waiting for the previous ReadyForQuery (one Sync each), so the
    // proxy sees them back to back; without it pg would hold them client-side, and pg@9 refuses to queue them at all.
    const c = await client('scram', proxy, { pipeline: true });
    const ps = [];
    for (let i = 0; i < 200; i++) ps.push(c.query('select $1::int as i, repeat($2, $1::int) as s', [i, 'ab']));
    ps.push(c.query('select 1/0').catch((e: Error & { code?: string }) => ({ error: e.code })));
    for (let i = 0; i < 50; i++) ps.push(c.query(`select ${i} as j`));
    const res = await Promise.all(ps);
    for (let i = 0; i < 200; i++) expect((res[i] as pg.QueryResult).rows[0]).toEqual({ i, s: 'ab'.repeat(i) });
    expect(res[200]).toEqual({ error: '22012' });
    for (let i = 0; i < 50; i++) expect((res[201 + i] as pg.QueryResult).rows[0].j).toBe(i);
    await c.end();
  });

  test('pgvector values round-trip', async () => {
    const c = await client('scram', proxy);
    await c.query('create temp table v (id int, e vector(3))');
    await c.query('insert into v values (1, $1), (2, $2)', ['[1,2,3]', '[0.5,-1,1e-3]']);
    const r = await c.query(`select id, e::text as e, e <-> '[1,2,3]'::vector as d from v order by id`);
    expect(r.rows).toEqual([
      { id: 1, e: '[1,2,3]', d: 0 },
      { id: 2, e: '[0.5,-1,0.001]', d: expect.any(Number) },
    ]);
    const knn = await c.query(`select id from v order by e <-> $1::vector limit 1`, ['[0,-1,0]']);
    expect(knn.rows).toEqual([{ id: 2 }]);
    await c.end();
  });

  test('errors leave the session usable, in and out of transactions', async () => {
    const c = await client('scram', proxy);
    await expect(c.query('select * from no_such_table')).rejects.toMatchObject({ code: '42P01' });
    await c.query('begin');
    await expect(c.query('select 1/0')).rejects.toMatchObject({ code: '22012' });
    await expect(c.query('select 1')).rejects.toMatchObject({ code: '25P02' });
    await c.query('rollback');
    await expect(c.query({ name: 'bad', text: 'select $1::int', values: ['x'] })).rejects.toMatchObject({ code: '22P02' });
    expect((await c.query('select 2 as v')).rows[0].v).toBe(2);
    await c.end();
  });

  test('NOTIFY reaches a listening client through the proxy, with notices and parameter status', async () => {
    const listener = await client('scram', proxy);
    const sender = await client('md5', proxy);
    await listener.query('listen proxy_chan');
    const got = new Promise<pg.Notification>((resolve) => listener.on('notification', resolve));
    await sender.query(`select pg_notify('proxy_chan', 'hello')`);
    expect((await got).payload).toBe('hello');
    const notice = new Promise<string | undefined>((resolve) => listener.on('notice', (n) => resolve(n.message)));
    await listener.query(`do $$ begin raise notice 'note %', 7; end $$`);
    expect(await notice).toBe('note 7');
    await listener.end();
    await sender.end();
    // ParameterStatus after SET, as the server sends it.
    const raw = await rawSession(proxy.address.port);
    raw.write(queryMsg(`set application_name = 'renamed'`));
    await raw.waitForCount('Z', 2);
    const statuses = raw.messages.filter((m) => m.type === 'S').map((m) => m.body.toString());
    expect(statuses.at(-1)).toBe('application_name\0renamed\0');
    raw.destroy();
  });
});

describe('authentication is the database\'s', () => {
  for (const role of ['scram', 'md5', 'trust'] as const) {
    test(`${role} role logs in`, async () => {
      const c = await client(role, proxy);
      expect((await c.query('select current_user as u')).rows[0].u).toBe(testDb().roles[role].user);
      await c.end();
    });
  }

  test('wrong password gets the server\'s own 28P01', async () => {
    for (const role of ['scram', 'md5'] as const) {
      const u = new URL(urlFor(role, proxy));
      u.password = 'wrong';
      const c = new pg.Client({ connectionString: u.toString() });
      c.on('error', () => {});
      const err = await c.connect().then(() => null, (e: Error & { code?: string }) => e);
      expect(err?.code).toBe('28P01');
      expect(err?.message).toContain('password authentication failed');
    }
  });

  test('unknown database: the server\'s 3D000', async () => {
    const c = new pg.Client({ connectionString: urlFor('scram', proxy, 'nope_db') });
    c.on('error', () => {});
    await expect(c.connect()).rejects.toMatchObject({ code: '3D000' });
  });
});

test('200 concurrent clients, 50 queries each, all correct', async () => {
  const N = 200;
  const Q = 50;
  const errors: unknown[] = [];
  const before = proxy.stats().totals.accepted;
  await Promise.all(
    Array.from({ length: N }, async (_, k) => {
      const c = new pg.Client({ connectionString: urlFor(k % 3 === 0 ? 'trust' : 'scram', proxy) });
      c.on('error', (e) => errors.push(e));
      await c.connect();
      for (let i = 0; i < Q; i++) {
        const r = await c.query(i % 2 ? 'select $1::int * 1000 + $2::int as v' : `select ${k} * 1000 + ${i} as v`, i % 2 ? [k, i] : undefined);
        expect(r.rows[0].v).toBe(k * 1000 + i);
      }
      await c.end();
    }),
  );
  expect(errors).toEqual([]);
  expect(proxy.stats().totals.accepted - before).toBe(N);
}, 120_000);
