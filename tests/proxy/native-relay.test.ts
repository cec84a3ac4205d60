// The native relay (proxy/native/relay.c) takes idle plaintext sessions and gives them back to JS at
// whatever JS must see. Each test runs real traffic through a proxy with it on, and checks both that the
// relay was used and that clients see exactly what they see without it.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import type { Interceptor, InterceptedMessage, Rewrite } from '../../proxy/interceptor.js';
import * as P from '../../proxy/protocol.js';
import { loadNativeRelay } from '../../proxy/relay.js';
import type { ProxyServer } from '../../proxy/server.js';
import { adminQuery, backendsOf, client, eventually, frontend, queryMsg, rawSession, startTestProxy } from './helpers.js';

/** Records what reached it; `slow steadytext` waits 50 ms; `select 'steadytext'` becomes `select 'rewritten'`. */
class Recorder implements Interceptor {
  calls: { type: string; text: string }[] = [];
  intercept(msg: InterceptedMessage): Rewrite | undefined | Promise<Rewrite | undefined> {
    const text = msg.type === 'Q' ? P.readQuery(msg.bytes) : msg.bytes.subarray(5).toString('latin1');
    this.calls.push({ type: msg.type, text });
    if (text === "select 'steadytext' as v") return { send: [P.query("select 'rewritten' as v")] };
    if (text.includes('slow steadytext')) return new Promise((r) => setTimeout(() => r(undefined), 50));
    return undefined;
  }
}

const relayed = (p: ProxyServer) => p.stats().totals.relayStarts - p.stats().totals.relayExits;

let native: ProxyServer;
let js: ProxyServer;
const recorder = new Recorder();
beforeAll(async () => {
  expect(loadNativeRelay().relay, `native relay: ${loadNativeRelay().why}`).not.toBeNull();
  native = await startTestProxy({ nativeRelay: 'on', interceptor: recorder });
  js = await startTestProxy({ nativeRelay: 'off' });
});
afterAll(async () => {
  await native.close(0);
  await js.close(0);
});

describe('native relay', () => {
  test('mixed traffic: the same results, notices and notifications as the JS relay; the relay carries idle sessions', async () => {
    const run = async (proxy: ProxyServer) => {
      const c = await client('scram', proxy);
      const notices: string[] = [];
      c.on('notice', (n) => notices.push(n.message ?? ''));
      const out: unknown[] = [];
      const q = async (sql: string, params?: unknown[]) => {
        try {
          const r = await c.query(sql, params);
          out.push([r.command, r.rows]);
        } catch (e) {
          out.push(['error', (e as { code?: string }).code]);
        }
      };
      await q('select 1 as one');
      await q('select $1::int + $2::int as sum, $3::text as t', [40, 2, 'héllo']);
      await q("set application_name = 'relay-test'"); // ParameterStatus: back to JS
      await q('show application_name');
      await q('begin');
      await q('select 1/0'); // ErrorResponse: back to JS
      await q('select 1');
      await q('rollback');
      await q("do $$ begin raise notice 'a notice'; end $$");
      await q("select repeat('x', 300000) as big"); // a DataRow larger than the relay's buffer: streamed
      await q('select $1::text as echoed', ['y'.repeat(200_000)]); // a Bind too
      await q(`select length('${'w'.repeat(100_000)}') as n`); // a Query too large to read whole: back to JS
      await q('create temp table t (i int, s text)');
      await q("insert into t select g, repeat('z', g % 50) from generate_series(1, 5000) g");
      await q('select count(*), sum(length(s)) from t');
      const ps = [];
      for (let i = 0; i < 50; i++) ps.push(c.query('select $1::int as i', [i]));
      out.push((await Promise.all(ps)).map((r) => r.rows[0].i));
      const listener = await client('scram', proxy);
      await listener.query('listen relay_chan');
      const got = new Promise<string>((resolve) => listener.on('notification', (n) => resolve(n.payload ?? '')));
      await q("notify relay_chan, 'payload-1'");
      out.push(await got);
      await listener.end();
      await c.end();
      return { out, notices };
    };
    const before = { ...native.stats().totals };
    const a = await run(native);
    const b = await run(js);
    expect(a).toEqual(b);
    expect(a.out[0]).toEqual(['SELECT', [{ one: 1 }]]);
    expect(a.notices).toEqual(['a notice']);
    expect(js.stats().totals.relayStarts).toBe(0);
    // Given back for the ParameterStatus, the two errors (1/0, then the aborted transaction's), the large
    // Query and each Terminate (2 clients); taken again each time the session was idle.
    await eventually(() => relayed(native) === 0, 5_000, 'relay released by closed sessions');
    const after = native.stats().totals;
    expect(after.relayExits - before.relayExits).toBe(6);
    expect(after.relayStarts - before.relayStarts).toBe(after.relayExits - before.relayExits);
  });

  test('statements naming steadytext leave the relay for the interceptor, in any case and spelling, simple and extended', async () => {
    recorder.calls = [];
    const starts = native.stats().totals.relayStarts;
    const c = await client('scram', native);
    await c.query('select 1');
    await eventually(() => native.stats().totals.relayStarts > starts, 5_000, 'session in the relay');
    expect((await c.query("select 'steadytext' as v")).rows).toEqual([{ v: 'rewritten' }]);
    expect((await c.query('select $1::text as v', ['steadytext'])).rows).toEqual([{ v: 'steadytext' }]); // only Bind names it: no call
    expect((await c.query("select 'SteadyText' as v")).rows).toEqual([{ v: 'SteadyText' }]);
    expect((await c.query("select 'x' as \"steadyTEXT\"", [])).rows).toEqual([{ steadyTEXT: 'x' }]);
    expect((await c.query({ text: "select 'x' as steadytext_p where $1::int = 1", values: [1] })).rows).toEqual([{ steadytext_p: 'x' }]);
    expect((await c.query('select 2 as U&"\\0061"')).rows).toEqual([{ a: 2 }]);
    await c.query('select 3');
    expect(recorder.calls.map((m) => m.type)).toEqual(['Q', 'Q', 'Q', 'P', 'Q']);
    expect(recorder.calls.some((m) => m.text.includes('select 1') || m.text.includes('select 3'))).toBe(false);
    expect(native.stats().totals.relayStarts - starts).toBeGreaterThanOrEqual(6); // back after each one
    await c.end();
  });

  test('messages pipelined behind one that leaves the relay keep their order', async () => {
    const starts = native.stats().totals.relayStarts;
    const c = await rawSession(native.address.port);
    c.write(queryMsg('select 0'));
    await c.waitForCount('Z', 2);
    await eventually(() => native.stats().totals.relayStarts > starts, 5_000, 'session in the relay');
    // One write: the relay forwards the first, stops at the second (an async hook), JS sends the rest after it.
    c.write(Buffer.concat([queryMsg('select 1 as a'), queryMsg("select 'slow steadytext' as b"), queryMsg('select 3 as c')]));
    await c.waitForCount('Z', 5);
    const rows = c.messages.filter((m) => m.type === 'D').map((m) => m.body.subarray(6).toString());
    expect(rows).toEqual(['0', '1', 'slow steadytext', '3']);
    c.destroy();
  });

  test('messages cut anywhere across reads, and a 40 kB query sent in 1 kB pieces, come out whole', async () => {
    await eventually(() => relayed(native) === 0, 5_000, 'earlier sessions gone');
    const c = await rawSession(native.address.port);
    await eventually(() => relayed(native) === 1, 5_000, 'session in the relay');
    const { relayExits: exits, bytesFromClients: clientBytes } = native.stats().totals;
    // The behaviour under test: each piece arrives in a read of its own (a pause lets the relay read it alone).
    const pause = () => new Promise((r) => setTimeout(r, 2));
    const small = Buffer.concat([queryMsg('select 1 as a'), queryMsg("select 'two' as b")]);
    for (let i = 0; i < small.length; i++) {
      c.write(small.subarray(i, i + 1));
      await pause();
    }
    await c.waitForCount('Z', 3);
    const big = queryMsg(`select length('${'q'.repeat(40_000)}') as n`);
    for (let i = 0; i < big.length; i += 1000) {
      c.write(big.subarray(i, i + 1000));
      await pause();
    }
    await c.waitForCount('Z', 4);
    expect(c.messages.filter((m) => m.type === 'D').map((m) => m.body.subarray(6).toString())).toEqual(['1', 'two', '40000']);
    expect(c.error()).toBeUndefined();
    expect(native.stats().totals.relayExits).toBe(exits); // the relay reassembled them itself
    const sent = small.length + big.length;
    expect(native.stats().totals.bytesFromClients - clientBytes).toBe(sent); // counted while still relayed
    c.destroy();
  });

  test('a 200000-row result and a 300 kB row stay in the relay (rows are not logged, large messages are streamed)', async () => {
    await eventually(() => relayed(native) === 0, 5_000, 'earlier sessions gone');
    const c = await client('scram', native);
    await c.query('select 1');
    await eventually(() => relayed(native) === 1, 5_000, 'session in the relay');
    const exits = native.stats().totals.relayExits;
    const r = await c.query('select g from generate_series(1, 200000) g');
    expect(r.rowCount).toBe(200000);
    expect(r.rows[199999]).toEqual({ g: 200000 });
    expect((await c.query("select length(repeat('x', 300000)) as n, repeat('x', 300000) as s")).rows[0].n).toBe(300000);
    expect(native.stats().totals.relayExits).toBe(exits);
    await c.end();
  });

  test('COPY FROM STDIN in the extended protocol, with the Syncs it swallows: the session goes back to JS and stays right', async () => {
    await adminQuery('create table if not exists relay_copy (i int)');
    await adminQuery('truncate relay_copy');
    await adminQuery('grant all on relay_copy to trust_user');
    const starts = native.stats().totals.relayStarts;
    const c = await rawSession(native.address.port);
    await eventually(() => native.stats().totals.relayStarts > starts, 5_000, 'session in the relay');
    const { relayExits: exits, relayStarts: started } = native.stats().totals;
    c.write(Buffer.concat([P.parse('', 'copy relay_copy from stdin', []), P.bind({ portal: '', statement: '', paramFormats: [], params: [], resultFormats: [] }), P.execute('', 0), P.SYNC]));
    await c.waitFor('G');
    // During copy-in the server ignores Sync: the relay cannot know the session is idle, its log fills.
    const rows: Buffer[] = [];
    for (let i = 1; i <= 9000; i++) rows.push(frontend('d', `${i}\n`), P.SYNC);
    c.write(Buffer.concat(rows));
    c.write(Buffer.concat([frontend('c'), P.SYNC]));
    await c.until(() => c.messages.some((m) => m.type === 'C' && m.body.toString().startsWith('COPY 9000')), 10_000, 'COPY 9000');
    await c.waitForCount('Z', 2);
    expect(native.stats().totals.relayExits).toBeGreaterThan(exits);
    c.write(queryMsg('select count(*) from relay_copy'));
    await c.waitForCount('Z', 3);
    expect(c.messages.filter((m) => m.type === 'D').map((m) => m.body.subarray(6).toString())).toEqual(['9000']);
    expect(c.error()).toBeUndefined();
    // Idle again (the tracker agrees): the relay takes it back.
    await eventually(() => native.stats().totals.relayStarts > started, 5_000, 'session back in the relay');
    c.destroy();
  });

  test('stopped in the middle of a message it was streaming (shutdown): JS passes the rest through, the COPY completes', async () => {
    await adminQuery('create table if not exists relay_copy2 (i int)');
    await adminQuery('truncate relay_copy2');
    await adminQuery('grant all on relay_copy2 to trust_user');
    const proxy = await startTestProxy({ nativeRelay: 'on' });
    const c = await rawSession(proxy.address.port);
    await eventually(() => relayed(proxy) === 1, 5_000, 'session in the relay');
    c.write(queryMsg('copy relay_copy2 from stdin'));
    await c.waitFor('G');
    const lines = Array.from({ length: 40_000 }, (_, i) => `${i}\n`).join('');
    const data = frontend('d', lines); // about 230 kB: streamed, not held
    c.write(data.subarray(0, 100_000));
    await eventually(() => proxy.stats().totals.bytesFromClients > 100_000, 5_000, 'first part relayed');
    const closed = proxy.close(5_000); // takes the session back from the relay mid-message
    expect(proxy.stats().totals.relayExits).toBe(1);
    c.write(data.subarray(100_000));
    c.write(frontend('c'));
    await c.until(() => c.messages.some((m) => m.type === 'C'), 5_000, 'CommandComplete');
    expect(c.messages.find((m) => m.type === 'C')!.body.toString()).toBe('COPY 40000\0');
    await c.waitClosed(); // idle again: shutdown ends it
    expect(c.error()).toMatchObject({ C: '57P01' });
    await closed;
    expect((await adminQuery<{ n: string }>('select count(*) as n from relay_copy2'))[0].n).toBe('40000');
  });

  test('a client that vanishes while relayed: its backend goes away', async () => {
    const c = await client('scram', native, { application_name: 'relay-vanish' });
    await c.query('select 1');
    await eventually(() => relayed(native) === 1, 5_000, 'session in the relay');
    expect(await backendsOf('relay-vanish')).toHaveLength(1);
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await eventually(async () => (await backendsOf('relay-vanish')).length === 0, 5_000, 'backend gone');
    await eventually(() => relayed(native) === 0, 5_000, 'relay released');
  });

  test('a backend terminated while relayed: the client gets the server FATAL, nothing else breaks', async () => {
    const c = await client('scram', native, { application_name: 'relay-kill' });
    const other = await client('scram', native);
    await c.query('select 1');
    await eventually(() => relayed(native) === 2, 5_000, 'both sessions in the relay');
    const ended = new Promise<string | undefined>((resolve) => c.on('error', (e) => resolve((e as { code?: string }).code)));
    const [b] = await backendsOf('relay-kill');
    await adminQuery('select pg_terminate_backend($1)', [b.pid]);
    expect(await ended).toBe('57P01');
    expect((await other.query('select 42 as v')).rows).toEqual([{ v: 42 }]);
    await other.end();
  });
});

describe('native relay off', () => {
  test('nativeRelay off never uses it; a pg client works as before', async () => {
    const c = new pg.Client({ host: js.address.host, port: js.address.port, user: 'trust_user', database: 'postgres' });
    await c.connect();
    expect((await c.query('select 5 as v')).rows).toEqual([{ v: 5 }]);
    await c.end();
    expect(js.stats().totals.relayStarts).toBe(0);
  });

  test("an application embedding the proxy keeps its event loop's idle time (only the CLI, owning its loop, turns it off)", async () => {
    // `native` runs in this process without ownsLoop: performance.eventLoopUtilization() must still count the
    // time the loop sleeps (a load shedder reading it would otherwise see a loop always busy).
    const c = await client('admin', native);
    expect((await c.query('select 1 as v')).rows).toEqual([{ v: 1 }]);
    const before = performance.eventLoopUtilization();
    await new Promise((r) => setTimeout(r, 200));
    expect(performance.eventLoopUtilization(before).idle).toBeGreaterThan(100);
    await c.end();
  });
});
