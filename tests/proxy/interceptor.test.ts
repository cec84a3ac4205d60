// The interception seam with test interceptors: the prefilter lets everything without `steadytext`
// through untouched (no call), matching messages can be rewritten (also asynchronously, in order with
// pipelined ones), and responses to rewritten messages can be transformed through a ResponseHandler.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import type { Interceptor, InterceptedMessage, ResponseHandler, Rewrite, SessionContext } from '../../proxy/interceptor.js';
import { mentionsSteadytext } from '../../proxy/interceptor.js';
import * as P from '../../proxy/protocol.js';
import type { ProxyServer } from '../../proxy/server.js';
import { captureLogger, client, queryMsg, rawSession, startTestProxy } from './helpers.js';

describe('prefilter', () => {
  const yes = (s: string) => mentionsSteadytext(Buffer.from(s), 0, Buffer.byteLength(s));
  test('finds steadytext in any letter case and U&" identifiers', () => {
    for (const s of ['select steadytext_generate(1)', 'SELECT STEADYTEXT_EMBED($1)', 'x SteadyText', 'steadytext', 'select U&"\\0073teadytext_generate"()', 'u&"x"'])
      expect(yes(s), s).toBe(true);
  });
  test('ignores everything else', () => {
    for (const s of ['select 1', 'select steady_text()', 'steadytex', 'select "U&x"', 'ü&"', 'select U& "x"', 'steadytexT'.slice(0, 9), ''])
      expect(yes(s), s).toBe(false);
  });
  test('respects the given range', () => {
    const b = Buffer.from('steadytext|select 1|steadytext');
    expect(mentionsSteadytext(b, 10, 20)).toBe(false);
    expect(mentionsSteadytext(b, 9, 31)).toBe(true);
    expect(mentionsSteadytext(b, 0, 9)).toBe(false);
  });
});

/** Counts calls; rewrites `select 'steadytext'`; delays anything containing `slow` asynchronously. */
class TestInterceptor implements Interceptor {
  calls: InterceptedMessage[] = [];
  starts: SessionContext[] = [];
  ends = 0;
  responseLog: string[] = [];

  sessionStart(ctx: SessionContext): void {
    this.starts.push(ctx);
  }
  sessionEnd(): void {
    this.ends++;
  }

  intercept(msg: InterceptedMessage, ctx: SessionContext): Rewrite | undefined | Promise<Rewrite | undefined> {
    this.calls.push(msg);
    if (msg.type === 'Q') {
      const sql = P.readQuery(msg.bytes);
      if (sql.includes('throw steadytext')) throw new Error('hook failure');
      if (sql.includes('garbage steadytext')) return { send: [Buffer.from('not a message')] };
      if (sql.includes('drop steadytext')) return { send: [P.query('select 0 as dropped')] };
      if (sql === "select 'steadytext' as v") {
        const log = this.responseLog;
        const handler: ResponseHandler = {
          onMessage(m) {
            log.push(String.fromCharCode(m[0]));
            return m;
          },
          onEnd(req, how) {
            log.push(`end:${String.fromCharCode(req)}:${how}`);
          },
        };
        return { send: [{ bytes: P.query(`select 'rewritten in ${ctx.database} for ${ctx.user}' as v`), responses: handler }] };
      }
      if (sql.includes('slow')) {
        // An async hook that answers late: the behaviour under test is what the proxy does meanwhile.
        return new Promise((resolve) => setTimeout(() => resolve(undefined), 150));
      }
    }
    return undefined;
  }
}

let proxy: ProxyServer;
const hook = new TestInterceptor();
const log = captureLogger('warn');

beforeAll(async () => {
  proxy = await startTestProxy({ interceptor: hook, logger: log.logger });
});
afterAll(async () => {
  await proxy.close(0);
});

describe('with a counting/rewriting interceptor', () => {
  test('statements without steadytext never reach the hook', async () => {
    const c = await client('scram', proxy);
    hook.calls = [];
    for (let i = 0; i < 100; i++) await c.query(i % 2 ? 'select $1::int as i' : `select ${i} as i`, i % 2 ? [i] : undefined);
    await c.query({ name: 'named', text: 'select $1::text as t', values: ['steadytext as a parameter value'] });
    await c.query('select 1; select 2');
    expect(hook.calls).toEqual([]);
    await c.end();
  });

  test('simple-protocol rewrite with a response handler; context has user and database', async () => {
    const c = await client('md5', proxy);
    hook.responseLog = [];
    const r = await c.query("select 'steadytext' as v");
    expect(r.rows).toEqual([{ v: 'rewritten in postgres for md5_user' }]);
    expect(hook.responseLog).toEqual(['T', 'D', 'C', 'Z', 'end:Q:done']);
    expect(hook.starts.some((s) => s.user === 'md5_user' && s.database === 'postgres' && s.serverParams.get('server_version'))).toBe(true);
    await c.end();
  });

  test('matching Parse and Query reach the hook in any case; prepared statements too', async () => {
    const c = await client('scram', proxy);
    hook.calls = [];
    await c.query(`select 'STEADYTEXT' as a`);
    await c.query({ text: `select $1::text as SteadyText_x`, values: ['v'] });
    await c.query({ text: `select $1::int as U&"steady"`, values: [1] });
    expect(hook.calls.map((m) => `${m.type}:${m.reason}`)).toEqual(['Q:match', 'P:match', 'P:match']);
    expect(proxy.stats().totals.intercepted).toBeGreaterThanOrEqual(3);
    await c.end();
  });

  test('an async hook holds back later pipelined messages: order preserved', async () => {
    const c = await client('scram', proxy);
    await c.query('create temp sequence seq');
    const ps = [
      c.query(`select nextval('seq') as n, 'a' as q`),
      c.query(`select nextval('seq') as n, 'slow steadytext' as q`),
      c.query(`select nextval('seq') as n, 'c' as q`),
      c.query({ text: `select nextval('seq') as n, $1::text as q`, values: ['d'] }),
      c.query(`select nextval('seq') as n, 'slow steadytext again' as q`),
      c.query(`select nextval('seq') as n, 'f' as q`),
    ];
    const rows = (await Promise.all(ps)).map((r) => `${r.rows[0].n}:${r.rows[0].q}`);
    expect(rows).toEqual(['1:a', '2:slow steadytext', '3:c', '4:d', '5:slow steadytext again', '6:f']);
    await c.end();
  });

  test('a failing hook or a malformed rewrite forwards the original and logs a warning', async () => {
    const c = await client('scram', proxy);
    expect((await c.query(`select 'throw steadytext' as v`)).rows[0].v).toBe('throw steadytext');
    expect((await c.query(`select 'garbage steadytext' as v`)).rows[0].v).toBe('garbage steadytext');
    expect(log.records.filter((r) => r.level === 40 && String(r.msg).includes('interceptor')).length).toBeGreaterThanOrEqual(2);
    expect((await c.query(`select 'drop steadytext' as v`)).rows[0]).toEqual({ dropped: 0 });
    await c.end();
  });

  test('session start and end are reported', async () => {
    const before = hook.ends;
    const c = await client('trust', proxy);
    await c.end();
    await expect.poll(() => hook.ends).toBe(before + 1);
  });
});

/**
 * What the extended-protocol rewrite will look like: at Parse the statement gets one more parameter (the
 * answer), each Bind appends its value, and Describe of the statement hides the extra parameter again.
 */
class AppendParam implements Interceptor {
  skipped: string[] = [];
  seen = 0;
  intercept(msg: InterceptedMessage, ctx: SessionContext): Rewrite | undefined {
    this.seen++;
    if (msg.type === 'P') {
      const p = P.readParse(msg.bytes);
      const n = (p.sql.match(/\$\d+/g) ?? []).length;
      ctx.watched.statements.add(p.name);
      return { send: [P.parse(p.name, `select (${p.sql.replace(/^select /, '')}) || ' ' || $${n + 1}::text as steadytext`, [...p.paramTypes, ...Array(Math.max(0, n - p.paramTypes.length)).fill(0), 25])] };
    }
    if (msg.type === 'B') {
      const b = P.readBind(msg.bytes);
      const formats = b.paramFormats.length === 1 ? b.params.map(() => b.paramFormats[0]) : b.paramFormats.length ? [...b.paramFormats] : b.params.map(() => 0);
      const skipped = this.skipped;
      return {
        send: [
          {
            bytes: P.bind({ ...b, paramFormats: [...formats, 0], params: [...b.params, Buffer.from(`answer#${b.params.length}`)] }),
            responses: { onMessage: (m) => m, onEnd: (req, how) => void (how === 'skipped' && skipped.push(String.fromCharCode(req))) },
          },
        ],
      };
    }
    if (msg.type === 'D' && msg.bytes[5] === 0x53 /* S */) {
      const strip: ResponseHandler = {
        onMessage(m) {
          if (m[0] !== P.Be.ParameterDescription) return m;
          const n = m.readInt16BE(5) - 1;
          const out = Buffer.alloc(7 + 4 * n);
          m.copy(out, 0, 0, 7 + 4 * n);
          out.writeInt32BE(6 + 4 * n, 1);
          out.writeInt16BE(n, 5);
          return out;
        },
      };
      return { send: [{ bytes: msg.bytes, responses: strip }] };
    }
    return undefined;
  }
}

describe('extended protocol: watched statements and response rewriting', () => {
  let p2: ProxyServer;
  const hook2 = new AppendParam();
  beforeAll(async () => {
    p2 = await startTestProxy({ interceptor: hook2 });
  });
  afterAll(async () => {
    await p2.close(0);
  });

  test('named and unnamed statements get the appended parameter at every Bind', async () => {
    const c = await client('scram', p2);
    for (let i = 0; i < 3; i++) {
      const r = await c.query({ name: 'st', text: 'select $1::text /* steadytext */', values: [`hello ${i}`] });
      expect(r.rows[0].steadytext).toBe(`hello ${i} answer#1`);
    }
    const u = await c.query({ text: 'select $1::text || $2::text -- steadytext\n', values: ['a', 'b'] });
    expect(u.rows[0].steadytext).toBe('ab answer#2');
    // Statements the hook never saw keep working and are not watched.
    expect((await c.query({ text: 'select $1::int + 1 as v', values: [1] })).rows[0].v).toBe(2);
    await c.end();
  });

  test('Describe of a rewritten statement reports the client\'s parameters, not the extra one', async () => {
    const raw = await rawSession(p2.address.port);
    raw.write(Buffer.concat([
      P.parse('d1', 'select $1::int::text /* steadytext */', []),
      P.describe('S', 'd1'),
      P.bind({ portal: '', statement: 'd1', paramFormats: [], params: [Buffer.from('7')], resultFormats: [] }),
      P.execute(),
      P.SYNC,
    ]));
    await raw.waitForCount('Z', 2);
    const t = raw.messages.find((m) => m.type === 't')!;
    expect(t.body.readInt16BE(0)).toBe(1);
    expect(t.body.readUInt32BE(2)).toBe(23); // int4 only: the appended text parameter is hidden
    const row = raw.messages.find((m) => m.type === 'D')!.body;
    expect(row.toString('utf8', 6)).toBe('7 answer#1'); // the statement was rewritten
    raw.destroy();
  });

  test('after an error the server skips to Sync: handlers of skipped requests hear "skipped", the session recovers', async () => {
    const raw = await rawSession(p2.address.port);
    hook2.skipped = [];
    raw.write(
      Buffer.concat([
        P.parse('ok', 'select $1::text /* steadytext */', []),
        P.SYNC,
        P.parse('', 'selec oops', []), // P is rewritten; the server rejects it
        P.bind({ portal: '', statement: 'ok', paramFormats: [], params: [Buffer.from('x')], resultFormats: [] }),
        P.execute(),
        P.SYNC,
        P.bind({ portal: '', statement: 'ok', paramFormats: [], params: [Buffer.from('y')], resultFormats: [] }),
        P.execute(),
        P.SYNC,
      ]),
    );
    await raw.waitForCount('Z', 4);
    expect(raw.messages.slice(1).map((m) => m.type).join('').replace(/^[^1]*/, '')).toBe('1ZEZ2DCZ');
    expect(raw.error()?.C).toBe('42601');
    expect(hook2.skipped).toEqual(['B']);
    const row = raw.messages.filter((m) => m.type === 'D').at(-1)!.body;
    expect(row.toString('utf8', 6)).toBe('y answer#1');
    raw.destroy();
  });

  test('pipelined named statements through pg with an interleaved error', async () => {
    const c = await client('scram', p2);
    const ps = [
      c.query({ name: 'a', text: 'select $1::text /* steadytext */', values: ['1'] }),
      c.query({ name: 'b', text: 'select $1::int::text /* steadytext */', values: ['not a number'] }).catch((e: { code: string }) => e.code),
      c.query({ name: 'a', text: 'select $1::text /* steadytext */', values: ['3'] }),
    ];
    const [a, b, a2] = await Promise.all(ps);
    expect((a as pg.QueryResult).rows[0].steadytext).toBe('1 answer#1');
    expect(b).toBe('22P02');
    expect((a2 as pg.QueryResult).rows[0].steadytext).toBe('3 answer#1');
    await c.end();
  });

  test('plain simple queries never reach this hook', async () => {
    const raw = await rawSession(p2.address.port);
    const seen = hook2.seen;
    raw.write(queryMsg('select 1'));
    await raw.waitForCount('Z', 2);
    expect(raw.error()).toBeUndefined();
    const row = raw.messages.find((m) => m.type === 'D')!.body;
    expect(row.toString('utf8', 6)).toBe('1');
    expect(hook2.seen).toBe(seen);
    raw.destroy();
  });
});
