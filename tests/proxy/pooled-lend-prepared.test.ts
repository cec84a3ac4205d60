// Lending with named prepared statements (pooled-session.ts, relay.c named_t): the native relay binds and
// describes the client's statements that its lent server connection already has under their server-side names,
// and gives everything else naming a statement to JS, which goes on as if it had seen the messages from the start.
// Real clients through the real proxy against the real cluster: the relay's counters say which side ran what.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import type { PoolingEnv } from '../../proxy/pooling.js';
import { bind as bindMessage, close, execute, parse, query, readDataRow, readErrorFields, SYNC } from '../../proxy/protocol.js';
import { loadNativeRelay } from '../../proxy/relay.js';
import type { ProxyServer } from '../../proxy/server.js';
import { RawClient, adminQuery, appName, frontend, startPoolingProxy, startupPacket, type Msg } from './helpers.js';

interface Pooled {
  proxy: ProxyServer;
  pooling: PoolingEnv;
  session(): Promise<RawClient>;
  pg(): Promise<pg.Client>;
  close(): Promise<void>;
}

/** A transaction pooler (trust_user) with the native relay, one server connection. */
async function pooledProxy(pgbouncer: Record<string, string | number>): Promise<Pooled> {
  const { proxy, pooling, closeConsole } = await startPoolingProxy({
    authType: 'trust', user: 'trust_user', password: '', pgbouncer: { pool_mode: 'transaction', default_pool_size: 1, ...pgbouncer }, proxy: { nativeRelay: 'on' },
  });
  return {
    proxy,
    pooling,
    async session() {
      const c = await RawClient.open(proxy.address.port);
      c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: appName('lend-prepared') }));
      await c.waitFor('Z');
      c.messages.length = 0;
      return c;
    },
    async pg() {
      const c = new pg.Client({ host: '127.0.0.1', port: proxy.address.port, user: 'trust_user', database: 'postgres', application_name: appName('lend-prepared') });
      c.on('error', () => {});
      await c.connect();
      return c;
    },
    async close() {
      await proxy.close(0);
      pooling.pooler.close();
      closeConsole();
    },
  };
}

const pool = (p: Pooled) => [...p.pooling.pooler.pools()][0];
/** The relay's hand-offs so far: started, and given back. */
const handoffs = (p: Pooled) => {
  const t = p.proxy.stats().totals;
  return { starts: t.relayStarts, exits: t.relayExits };
};
/** The pool's SHOW STATS counts with what the relays ran so far. */
const stats = (p: Pooled) => {
  pool(p).syncLent();
  return { ...pool(p).stats };
};

/** Sends, then waits for `n` more ReadyForQuery; returns the messages that came meanwhile. */
async function exchange(c: RawClient, bytes: Buffer[], n = 1): Promise<Msg[]> {
  const from = c.messages.length;
  const z = c.count('Z');
  c.write(Buffer.concat(bytes));
  await c.waitForCount('Z', z + n);
  return c.messages.slice(from);
}

const bind = (statement: string, params: string[] = [], portal = '') =>
  bindMessage({ portal, statement, paramFormats: [], params: params.map((x) => Buffer.from(x)), resultFormats: [] });
const describeS = (name: string) => frontend('D', `S${name}\0`);
const describeP = (name: string) => frontend('D', `P${name}\0`);
const types = (ms: Msg[]) => ms.map((m) => m.type).join('');
const rows = (ms: Msg[]) => ms.filter((m) => m.type === 'D').map((m) => readDataRow(m.bytes).map((v) => v?.toString() ?? null));
const errors = (ms: Msg[]) => ms.filter((m) => m.type === 'E').map((m) => readErrorFields(m.bytes));

describe.runIf(loadNativeRelay().relay !== null)('named prepared statements in a lent connection', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ max_prepared_statements: 10 });
  });
  afterAll(() => p.close());

  test('node-postgres named statements: transaction after transaction in one hand-off, right results, counted', async () => {
    const a = await p.pg();
    const add = (i: number) => ({ name: 'lp_add', text: 'select $1::int + 1 as v', values: [i] });
    const who = (i: number) => ({ name: 'lp_who', text: "select 'a' as who, $1::text as t", values: [`x${i}`] });
    // Their Parses go to JS (the second one ends a lend at once: the next is skipped, pooled-session.ts lendSkip).
    expect((await a.query(add(0))).rows).toEqual([{ v: 1 }]);
    expect((await a.query(who(0))).rows).toEqual([{ who: 'a', t: 'x0' }]);
    expect((await a.query(add(0))).rows).toEqual([{ v: 1 }]);
    expect(pool(p).lent.size).toBe(1);
    const h0 = handoffs(p);
    const s0 = stats(p);
    for (let i = 1; i <= 30; i++) {
      expect((await a.query(add(i))).rows).toEqual([{ v: i + 1 }]);
      expect((await a.query(who(i))).rows).toEqual([{ who: 'a', t: `x${i}` }]);
    }
    // All sixty in the relay: no hand-off back to JS, none again.
    expect(handoffs(p)).toEqual(h0);
    const s1 = stats(p);
    expect(s1.xactCount - s0.xactCount).toBe(60);
    expect(s1.bindCount - s0.bindCount).toBe(60);
    expect(s1.serverParseCount - s0.serverParseCount).toBe(0);
    await a.end();
  });

  test('two clients on one server connection, taking turns through reclaim: the same name, two statements; one statement, two names', async () => {
    const a = await p.pg();
    const b = await p.pg();
    const mine = (c: 'a' | 'b', i: number) =>
      c === 'a'
        ? { name: 'lp_mine', text: "select 'a' as owner, $1::int as n", values: [i] }
        : { name: 'lp_mine', text: "select 'b' as owner, $1::int * 10 as n", values: [i] };
    const same = (c: 'a' | 'b', i: number) => ({ name: `lp_same_${c}`, text: 'select $1::int * 2 as d', values: [i] });
    const check = async (c: pg.Client, who: 'a' | 'b', i: number) => {
      expect((await c.query(mine(who, i))).rows).toEqual([{ owner: who, n: who === 'a' ? i : i * 10 }]);
      expect((await c.query(same(who, i))).rows).toEqual([{ d: i * 2 }]);
    };
    await check(a, 'a', 0);
    await check(b, 'b', 0);
    const parses = stats(p).serverParseCount;
    for (let i = 1; i <= 5; i++) {
      for (const [c, who] of [[a, 'a'], [b, 'b']] as const) {
        // The first of a turn takes the connection back from the other client's relay (JS binds it); then it
        // is lent to this one, whose relay binds the second under its own table.
        expect((await c.query(mine(who, i))).rows).toEqual([{ owner: who, n: who === 'a' ? i : i * 10 }]);
        const h = handoffs(p);
        expect((await c.query(same(who, i))).rows).toEqual([{ d: i * 2 }]);
        expect(handoffs(p)).toEqual(h);
      }
    }
    // At the same time too.
    for (let i = 0; i < 10; i++) await Promise.all([check(a, 'a', i), check(b, 'b', i)]);
    // Three statements on the connection, each prepared there once: nothing closed, nothing of one client run for the other.
    expect(stats(p).serverParseCount).toBe(parses);
    await Promise.all([a.end(), b.end()]);
  });

  test('a name the client never prepared is not forwarded from the relay: the pooler ends the client, as pgBouncer', async () => {
    const owner = await p.pg();
    expect((await owner.query({ name: 'lp_secret', text: "select 'owner''s' as s" })).rows).toEqual([{ s: "owner's" }]);
    await owner.end();
    const c = await p.session();
    await exchange(c, [parse('lp_own', 'select 5'), SYNC]);
    expect((await exchange(c, [bind('lp_own'), execute(''), SYNC])).map((m) => m.type).join('')).toBe('2DCZ');
    expect(pool(p).lent.size).toBe(1);
    c.write(Buffer.concat([bind('lp_secret'), execute(''), SYNC]));
    await c.waitClosed();
    expect(c.error()).toMatchObject({ C: '08P01', M: 'prepared statement did not exist' });
    expect(rows(c.messages)).toEqual([['5']]);
  });

  test('a Parse of a new statement while lent goes to JS, in order with what the relay forwarded before it; then the relay binds it too', async () => {
    const c = await p.session();
    await exchange(c, [parse('lp_one', 'select 1'), SYNC]);
    expect(types(await exchange(c, [bind('lp_one'), execute(''), SYNC]))).toBe('2DCZ');
    expect(pool(p).lent.size).toBe(1);
    let h = handoffs(p);
    // The relay forwards the Bind and Execute, gives the session back at the Parse: one exchange, answered in order.
    let got = await exchange(c, [bind('lp_one'), execute(''), parse('lp_two', 'select 2'), bind('lp_two'), execute(''), SYNC]);
    expect(types(got)).toBe('2DC12DCZ');
    expect(rows(got)).toEqual([['1'], ['2']]);
    expect(handoffs(p).exits).toBe(h.exits + 1);
    h = handoffs(p);
    got = await exchange(c, [bind('lp_two'), execute(''), bind('lp_one'), execute(''), SYNC]);
    expect(rows(got)).toEqual([['2'], ['1']]);
    expect(handoffs(p)).toEqual(h);
    // node-postgres: a statement first used while lent.
    const a = await p.pg();
    await a.query('select 1');
    expect((await a.query({ name: 'lp_late', text: 'select $1::int - 1 as v', values: [10] })).rows).toEqual([{ v: 9 }]);
    expect((await a.query({ name: 'lp_late', text: 'select $1::int - 1 as v', values: [20] })).rows).toEqual([{ v: 19 }]);
    await a.end();
    c.destroy();
  });

  test('a Close while lent is answered by the pooler in its turn; the statement stays on the server for the client that shares it', async () => {
    const text = "select 'shared' as s";
    const b = await p.session();
    await exchange(b, [parse('lp_b', text), SYNC]);
    const c = await p.session();
    await exchange(c, [parse('lp_c', text), SYNC]);
    expect(types(await exchange(c, [bind('lp_c'), execute(''), SYNC]))).toBe('2DCZ');
    expect(pool(p).lent.size).toBe(1);
    const h = handoffs(p);
    const got = await exchange(c, [bind('lp_c'), execute(''), close('S', 'lp_c'), SYNC]);
    expect(types(got)).toBe('2DC3Z');
    expect(handoffs(p).exits).toBe(h.exits + 1);
    // The name is free again: a new Parse of it is the client's new statement.
    expect(rows(await exchange(c, [parse('lp_c', "select 'new' as s"), bind('lp_c'), execute(''), SYNC]))).toEqual([['new']]);
    // The other client's statement of that text was not closed on the server: bound twice, prepared no more.
    const parses = stats(p).serverParseCount;
    expect(rows(await exchange(b, [bind('lp_b'), execute(''), SYNC]))).toEqual([['shared']]);
    expect(rows(await exchange(b, [bind('lp_b'), execute(''), SYNC]))).toEqual([['shared']]);
    expect(stats(p).serverParseCount).toBe(parses);
    b.destroy();
    c.destroy();
  });

  test.each(['DEALLOCATE ALL', 'DISCARD ALL'])('%s while lent: the client statements are gone, their names free', async (sql) => {
    const c = await p.session();
    await exchange(c, [parse('lp_gone', 'select 1'), SYNC]);
    expect(rows(await exchange(c, [bind('lp_gone'), execute(''), SYNC]))).toEqual([['1']]);
    expect(pool(p).lent.size).toBe(1);
    const done = await exchange(c, [query(sql)]);
    expect(errors(done)).toEqual([]);
    // DISCARD ALL resets settings too: the server reports them (ParameterStatus) before its ReadyForQuery.
    expect(types(done).replaceAll('S', '')).toBe('CZ');
    const got = await exchange(c, [parse('lp_gone', 'select 2'), bind('lp_gone'), execute(''), SYNC]);
    expect(errors(got)).toEqual([]);
    expect(rows(got)).toEqual([['2']]);
    expect(rows(await exchange(c, [bind('lp_gone'), execute(''), SYNC]))).toEqual([['2']]);
    c.destroy();
  });
});

describe.runIf(loadNativeRelay().relay !== null)('a statement the relay binds whose result type changed (0A000)', () => {
  let p: Pooled;
  const table = `lp_replan_${process.pid}`;
  beforeAll(async () => {
    p = await pooledProxy({ max_prepared_statements: 10 });
    await adminQuery(`drop table if exists ${table}; create table ${table}(a int); insert into ${table} values (1); grant select on ${table} to trust_user`);
  });
  afterAll(async () => {
    await p.close();
    await adminQuery(`drop table if exists ${table}`);
  });
  const alter = (col: string) => adminQuery(`alter table ${table} add column ${col} int default 7`);

  test('outside a transaction block: prepared again, run again, the new columns; inside one the error', async () => {
    const a = await p.pg();
    const q = { name: 'lp_replan', text: `select * from ${table}` };
    expect((await a.query(q)).rows).toEqual([{ a: 1 }]);
    expect((await a.query(q)).rows).toEqual([{ a: 1 }]);
    expect(pool(p).lent.size).toBe(1);
    await alter('b');
    const h = handoffs(p);
    expect((await a.query(q)).rows).toEqual([{ a: 1, b: 7 }]);
    expect(handoffs(p).exits).toBe(h.exits + 1); // the relay gave the session back at the error
    expect((await a.query(q)).rows).toEqual([{ a: 1, b: 7 }]);
    await alter('c');
    await a.query('begin');
    await expect(a.query(q)).rejects.toMatchObject({ code: '0A000', message: 'cached plan must not change result type' });
    await a.query('rollback');
    expect((await a.query(q)).rows).toEqual([{ a: 1, b: 7, c: 7 }]);
    await a.end();
  });

  test('a Describe of the statement, alone and before its Bind: the new columns', async () => {
    const c = await p.session();
    await exchange(c, [parse('lp_dsc', `select * from ${table}`), SYNC]);
    expect(types(await exchange(c, [describeS('lp_dsc'), SYNC]))).toBe('tTZ');
    expect(pool(p).lent.size).toBe(1);
    await alter('d');
    const columns = (ms: Msg[]) => ms.filter((m) => m.type === 'T').map((m) => m.bytes.readInt16BE(5));
    let got = await exchange(c, [describeS('lp_dsc'), SYNC]);
    expect(errors(got)).toEqual([]);
    expect(types(got)).toBe('tTZ');
    const n = columns(got)[0];
    await alter('e');
    got = await exchange(c, [describeS('lp_dsc'), bind('lp_dsc'), describeP(''), execute(''), SYNC]);
    expect(errors(got)).toEqual([]);
    expect(types(got)).toBe('tT2TDCZ');
    expect(columns(got)).toEqual([n + 1, n + 1]);
    c.destroy();
  });
});

describe.runIf(loadNativeRelay().relay !== null)("the server connection's statement LRU with the relay binding", () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ max_prepared_statements: 2 });
  });
  afterAll(() => p.close());

  test('a statement the relay bound is recently used: a new one evicts the other', async () => {
    const c = await p.session();
    await exchange(c, [parse('lp_hot', 'select 1'), parse('lp_cold', 'select 2'), SYNC]);
    expect(rows(await exchange(c, [bind('lp_cold'), execute(''), SYNC]))).toEqual([['2']]);
    // lp_cold was used last in JS; lp_hot is used after it only in the relay.
    const h = handoffs(p);
    for (let i = 0; i < 5; i++) expect(rows(await exchange(c, [bind('lp_hot'), execute(''), SYNC]))).toEqual([['1']]);
    expect(handoffs(p)).toEqual(h);
    // A third statement on a connection that keeps two: the least recently used goes, which is lp_cold.
    expect(rows(await exchange(c, [parse('lp_new', 'select 3'), bind('lp_new'), execute(''), SYNC]))).toEqual([['3']]);
    const parses = stats(p).serverParseCount;
    expect(rows(await exchange(c, [bind('lp_hot'), execute(''), SYNC]))).toEqual([['1']]);
    expect(stats(p).serverParseCount).toBe(parses);
    expect(rows(await exchange(c, [bind('lp_cold'), execute(''), SYNC]))).toEqual([['2']]);
    expect(stats(p).serverParseCount).toBe(parses + 1);
    c.destroy();
  });
});
