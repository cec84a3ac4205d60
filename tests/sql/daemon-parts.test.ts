// The daemon endpoint's parts on their own, without a database: reading requests, the session commands,
// one wire session against a scripted host (node-postgres and raw bytes on a real socket), and the
// responder with a scripted engine and service writer (answers first, writes after).
import { createHash } from 'node:crypto';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import pino from 'pino';
import { cancelRequest, query, readErrorFields } from '../../proxy/protocol.js';
import { WireError } from '../../sql/errors.js';
import { clientEncoding, sessionCommand } from '../../sql/daemon/commands.js';
import { parseRequest } from '../../sql/daemon/requests.js';
import { Responder, type DaemonEngine } from '../../sql/daemon/responder.js';
import { secretMatcher } from '../../sql/daemon/server.js';
import { DaemonSession, type SessionHost } from '../../sql/daemon/session.js';
import { RawClient, frontend, startupPacket } from '../proxy/helpers.js';

const silent = pino({ level: 'silent' });

const wireError = (f: () => unknown): WireError => {
  try { f(); } catch (e) { if (e instanceof WireError) return e; throw e; }
  throw new Error('no WireError');
};

describe('parseRequest', () => {
  it('reads a computing request with its defaults, the config its function sent and who asked', () => {
    expect(parseRequest(JSON.stringify({ op: 'generate', prompt: 'p', max_tokens: 5, seed: 1, user: 'u', database: 'd', backend_pid: 42, timeout_ms: 100 }))).toEqual({
      op: 'generate', fn: 'steadytext_generate', user: 'u', database: 'd', backendPid: 42, timeoutMs: 100,
      kind: 'computing', request: { fn: 'steadytext_generate', op: 'generate', prompt: 'p', maxTokens: 5, seed: 1, temperature: 0, modelSize: 'small' },
      cache: true, debug: false, autoStart: true,
    });
    const e = parseRequest(JSON.stringify({ op: 'embed', text: 't', seed: 0, model_size: 'large', cache: false, debug: true, auto_start: false, function: 'steadytext_embed' }));
    expect(e).toMatchObject({ kind: 'computing', request: { fn: 'steadytext_embed', op: 'embed', text: 't', seed: 0, modelSize: 'large' }, cache: false, debug: true, autoStart: false });
    const s = parseRequest(JSON.stringify({ op: 'generate_stream', prompt: 'p', max_tokens: 1, seed: 0, temperature: 0.5, temperature_bits: '3fd3333333333334' }));
    expect(s).toMatchObject({ request: { op: 'generate_stream', temperature: 0.30000000000000004 } });
  });

  it('reads management requests as the function they name', () => {
    for (const [op, fn] of [['status', 'steadytext_daemon_status'], ['model_info', 'steadytext_model_info'], ['start', 'steadytext_daemon_start'], ['stop', 'steadytext_daemon_stop'], ['restart', 'steadytext_daemon_restart']]) {
      expect(parseRequest(JSON.stringify({ op }))).toEqual({ op, fn, kind: 'management', function: fn });
    }
  });

  it('says what is wrong, naming the function the request names', () => {
    expect(wireError(() => parseRequest('{oops')).code).toBe('22P02');
    expect(wireError(() => parseRequest('null')).message).toMatch(/must be a JSON object/);
    expect(wireError(() => parseRequest('{"op":"toString"}')).message).toMatch(/^pg-steadytext daemon: unknown op "toString"; expected one of generate, /);
    const bad = wireError(() => parseRequest('{"op":"generate","function":"steadytext_mine","prompt":"x","max_tokens":0,"seed":1}'));
    expect([bad.code, bad.message, bad.hint]).toEqual(['22023', 'steadytext_mine: max_tokens must be an integer from 1 to 2147483647, got 0', 'Check the arguments of steadytext_mine.']);
    expect(wireError(() => parseRequest('{"op":"generate","prompt":"x","max_tokens":1,"seed":1,"temperature_bits":"xyz"}')).message).toMatch(/temperature_bits must be 16 hex digits/);
    expect(wireError(() => parseRequest('{"op":"embed","text":"x","seed":1,"model_size":" "}')).message).toMatch(/steadytext_embed: model_size must be/);
    // A function name that is not one is not repeated back.
    expect(wireError(() => parseRequest('{"op":"embed","function":"x; drop","text":1,"seed":1}')).message).toMatch(/^steadytext_embed: text must be text/);
  });
});

describe('session commands', () => {
  it('answers what drivers send, refuses SQL', () => {
    expect(sessionCommand("SET client_encoding TO 'latin-1'")).toEqual({ kind: 'encoding', to: { name: 'LATIN1', encoding: 'latin1' } });
    expect(sessionCommand('set session client_encoding = unicode;')).toEqual({ kind: 'encoding', to: { name: 'UTF8', encoding: 'utf8' } });
    expect(wireError(() => sessionCommand("SET client_encoding TO 'WIN1252'")).code).toBe('0A000');
    expect(sessionCommand('RESET ALL')).toEqual({ kind: 'complete', tag: 'RESET' });
    expect(sessionCommand('SET extra_float_digits = 3')).toEqual({ kind: 'complete', tag: 'SET' });
    expect(sessionCommand('select 1;')).toEqual({ kind: 'select1' });
    expect(['START TRANSACTION', 'end', 'abort', 'begin'].map((s) => sessionCommand(s))).toEqual(
      ['START TRANSACTION', 'COMMIT', 'ROLLBACK', 'BEGIN'].map((tag) => ({ kind: 'complete', tag })));
    expect(wireError(() => sessionCommand('SELECT * FROM pg_class')).message).toMatch(/answers steadytext requests only/);
    expect([clientEncoding('ISO-8859-1')?.name, clientEncoding('sql_ascii')?.name, clientEncoding('constructor')]).toEqual(['LATIN1', 'SQL_ASCII', undefined]);
  });

  it('a secret matches by its SHA-256, among several', () => {
    const sha = (s: string) => createHash('sha256').update(s).digest();
    expect(secretMatcher('a')(sha('a'))).toBe(true);
    expect(secretMatcher('a')(sha('b'))).toBe(false);
    expect(secretMatcher(() => ['a', 'b'])(sha('b'))).toBe(true);
    expect(secretMatcher(() => [])(sha('b'))).toBe(false);
  });
});

describe('a session', () => {
  let server: Server;
  let port: number;
  const requests: Array<{ text: string; signal: AbortSignal }> = [];
  const host: SessionHost = {
    log: silent, sessions: new Set(), keys: new Map(),
    secretMatches: secretMatcher('s3cret'),
    async respond(text, call) {
      requests.push({ text, signal: call.abort.signal });
      if (text === '{"wait":1}') {
        await new Promise((_, reject) => call.abort.signal.addEventListener('abort', () => reject(new WireError('57014', 'cancelled')), { once: true }));
      }
      if (text === '{"fail":1}') throw new WireError('53000', 'busy é', 'later');
      return { answer: `answer to ${text}: é` };
    },
  };
  beforeAll(async () => {
    server = createServer((s) => new DaemonSession(s, host));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    for (const s of host.sessions) s.close();
    await new Promise((r) => server.close(r));
  });
  const connect = async (over: Partial<pg.ClientConfig> = {}) => {
    const c = new pg.Client({ host: '127.0.0.1', port, user: 'steadytext', password: 's3cret', database: 'x', ...over });
    c.on('error', () => {});
    await c.connect();
    return c;
  };

  it('authenticates, answers requests and session commands, and reports errors without ending', async () => {
    const c = await connect();
    expect(host.keys.size).toBe(1);
    const r = await c.query('{"a":1}');
    expect(r.fields.map((f) => [f.name, f.dataTypeID])).toEqual([['answer', 25]]);
    expect(r.rows).toEqual([{ answer: 'answer to {"a":1}: é' }]);
    await expect(c.query('{"fail":1}')).rejects.toMatchObject({ code: '53000', message: 'busy é', hint: 'later' });
    expect((await c.query('SELECT 1')).rows).toEqual([{ '?column?': '1' }]);
    expect((await c.query('BEGIN')).command).toBe('BEGIN');
    await expect(c.query('SELECT $1::int', [1])).rejects.toMatchObject({ code: '0A000' });
    expect((await c.query(';')).rows).toEqual([]);
    await c.end();
    await expect.poll(() => host.sessions.size).toBe(0);
    expect(host.keys.size).toBe(0);
  });

  it('refuses a wrong password (28P01) and any user but steadytext (28000)', async () => {
    await expect(connect({ password: 'nope' })).rejects.toMatchObject({ code: '28P01', message: 'password authentication failed for user "steadytext"' });
    await expect(connect({ user: 'postgres' })).rejects.toMatchObject({ code: '28000' });
  });

  it('speaks the client encoding it was asked for', async () => {
    const raw = await RawClient.open(port);
    raw.write(startupPacket({ user: 'steadytext', client_encoding: 'LATIN1' }));
    await raw.waitFor('R');
    raw.write(frontend('p', 's3cret\0'));
    await raw.waitFor('Z');
    expect(raw.messages.some((m) => m.type === 'S' && m.body.toString('latin1') === 'client_encoding\0LATIN1\0')).toBe(true);
    raw.write(Buffer.concat([query('{"b":1}'), query('{"fail":1}')]));
    await raw.waitForCount('Z', 3);
    const row = raw.messages.find((m) => m.type === 'D')!;
    expect(row.body.subarray(6).toString('latin1')).toBe('answer to {"b":1}: é');
    expect(row.body.at(-1)).toBe(0xe9);
    const err = raw.messages.find((m) => m.type === 'E')!;
    expect(err.body.includes(Buffer.from('busy \xe9', 'latin1'))).toBe(true);
    raw.destroy();
  });

  it('a CancelRequest with the key aborts the running request; the client going away aborts it too', async () => {
    const c = await connect();
    const pending = c.query('{"wait":1}').catch((e) => e);
    await expect.poll(() => requests.at(-1)?.text).toBe('{"wait":1}');
    const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
    const key = (k: number) => { const b = Buffer.alloc(4); b.writeInt32BE(k); return b; };
    const send = async (packet: Buffer) => {
      const s = await RawClient.open(port);
      s.write(packet);
      await s.waitClosed();
    };
    await send(cancelRequest(processID, key(secretKey ^ 1)));
    expect(requests.at(-1)!.signal.aborted).toBe(false);
    await send(cancelRequest(processID, key(secretKey)));
    expect(await pending).toMatchObject({ code: '57014' });
    const n = requests.length;
    c.query('{"wait":1}').catch(() => {});
    await expect.poll(() => requests.length).toBe(n + 1);
    const signal = requests.at(-1)!.signal;
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await expect.poll(() => signal.aborted).toBe(true);
  });

  it('ends a session that breaks the protocol with 08P01', async () => {
    const raw = await RawClient.open(port);
    raw.write(startupPacket({ user: 'steadytext' }));
    await raw.waitFor('R');
    raw.write(frontend('Q', 'too early\0'));
    await raw.waitClosed();
    expect(readErrorFields(Buffer.concat([Buffer.from('E0000'), raw.messages.at(-1)!.body]))).toMatchObject({ S: 'FATAL', C: '08P01' });
  });
});

describe('the responder', () => {
  const calls: string[] = [];
  const engine: DaemonEngine = {
    async generate(r) { calls.push(`generate ${r.prompt} cache=${r.cache} timeout=${r.timeoutMs}`); if (r.prompt === 'bad') throw Object.assign(new Error('queue full'), { code: 'OVERLOADED' }); return `text:${r.prompt}`; },
    async embed(r) { calls.push(`embed ${r.text}`); return Float32Array.from([0.5, 1]); },
    status: () => ({ running: false, pid: 7, uptimeSeconds: 1, requestsProcessed: 2, errorsCount: 0, avgLatencyMs: 3 }) as ReturnType<DaemonEngine['status']>,
    modelInfo: () => [],
    async load() { calls.push('load'); }, async unload() {}, async reload() {},
  };
  /** A service writer that keeps what is written later until flush(). */
  class Writer {
    writes: string[] = [];
    private later: Array<() => Promise<unknown>> = [];
    count(d: Record<string, number>) { this.writes.push(`count ${Object.keys(d).join(',')}`); }
    logEvent(level: string, event: string) { this.writes.push(`log ${level} ${event}`); }
    async identity(role: string, size: string) { return `${role}-${size}`; }
    async store(entries: Array<{ op: string; identity: string }>) { this.writes.push(`store ${entries.map((e) => `${e.op}@${e.identity}`).join()}`); }
    writeLater(_what: string, write: () => Promise<unknown>) { this.later.push(write); }
    async flush() { for (const w of this.later.splice(0)) await w(); }
  }
  const writer = new Writer();
  const responder = new Responder({ engine, log: silent, address: { host: 'h', port: 1 }, databaseFor: (name) => (name === 'db' ? writer : undefined) });
  const call = () => ({ pid: 1, abort: new AbortController() });

  it('answers first and stores after; counts and logs into the database the request names', async () => {
    const { answer } = await responder.respond(JSON.stringify({ op: 'generate', prompt: 'p', max_tokens: 3, seed: 1, database: 'db', debug: true, timeout_ms: 500 }), call());
    expect(answer).toBe('text:p');
    expect(calls.at(-1)).toBe('generate p cache=true timeout=500');
    expect(writer.writes).toEqual(['count callback_requests,generate_requests', 'log debug callback']);
    await responder.flush();
    expect(writer.writes.at(-1)).toBe('store generate@generation-small');
    expect((await responder.respond(JSON.stringify({ op: 'embed', text: 'e', seed: 1, database: 'elsewhere' }), call())).answer).toBe('[0.5,1]');
    await expect(responder.respond(JSON.stringify({ op: 'generate', prompt: 'p', max_tokens: 3, seed: 1, database: 'db', cache: false }), call())).resolves.toMatchObject({ answer: 'text:p' });
    expect(calls.at(-1)).toBe('generate p cache=false timeout=30000');
    await responder.flush();
    expect(writer.writes.filter((w) => w.startsWith('store'))).toHaveLength(1);
  });

  it('maps failures to their SQLSTATE, counts and logs them', async () => {
    writer.writes.length = 0;
    await expect(responder.respond(JSON.stringify({ op: 'generate', prompt: 'bad', max_tokens: 3, seed: 1, database: 'db' }), call()))
      .rejects.toMatchObject({ code: '53000', message: 'steadytext_generate: queue full' });
    expect(writer.writes).toEqual(['count errors', 'log error callback_error']);
    await expect(responder.respond(JSON.stringify({ op: 'generate', prompt: 'p', max_tokens: 3, seed: 1, auto_start: false }), call()))
      .rejects.toMatchObject({ code: '55000', message: 'steadytext_generate: the pg-steadytext models are stopped and daemon_auto_start is false' });
    expect(responder.stats()).toMatchObject({ requests: 3, errors: 2 });
  });

  it('management requests go through the shared evaluation, with the endpoint address', async () => {
    expect(JSON.parse((await responder.respond('{"op":"status"}', call())).answer)).toEqual({
      running: false, pid: 7, host: 'h', port: 1, uptime_seconds: 1, requests_processed: 2, errors_count: 0, avg_latency_ms: 3,
    });
    expect((await responder.respond('{"op":"start"}', call())).answer).toBe('true');
    expect(calls.at(-1)).toBe('load');
  });

  it('an abort answers 57014 at once', async () => {
    const c = call();
    c.abort.abort();
    await expect(responder.respond('{"op":"start"}', c)).rejects.toMatchObject({ code: '57014', message: 'steadytext_daemon_start: canceling statement due to user request' });
  });
});
