// The daemon endpoint as libpq, node-postgres and dblink see it, with a scripted engine: protocol,
// authentication, error mapping through dblink, cancellation, timeouts, reconnects, cache writes.
import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { startDaemon, type DaemonEngine, type DaemonHandle } from '../../sql/daemon/server.js';
import { DatabaseRegistry, prepareDatabase } from '../../sql/databases.js';
import type { Engine } from '../../inference/engine.js';
import { cacheKey, generateParams } from '../../sql/cache-key.js';
import { cancelRequest } from '../../proxy/protocol.js';
import { InferenceError, type InferenceErrorCode } from '../../inference/errors.js';
import { freshDatabase, pgError, silentLogger, type TestDatabase } from './helpers.js';

const PSQL = `${process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin'}/psql`;

// What the scripted engine does depends on the prompt.
const calls: Array<{ prompt: string; signal?: AbortSignal }> = [];
const fail = (code: InferenceErrorCode, message: string) => { throw new InferenceError(code, message); };
const engine: DaemonEngine = {
  async generate(r) {
    calls.push({ prompt: r.prompt, signal: r.signal });
    switch (r.prompt) {
      case 'overloaded': return fail('OVERLOADED', 'generation queue is full (1000 waiting)');
      case 'missing-model': return fail('MODEL_NOT_FOUND', "generation model 'small': no file at /nowhere.gguf");
      case 'timeout': return fail('TIMEOUT', 'inference request timed out after 5 ms');
      case 'load-failed': return fail('MODEL_LOAD_FAILED', 'cannot load model file /x.gguf');
      case 'invalid': return fail('INVALID_ARGUMENT', 'max_tokens must be an integer from 1 to 8192');
      case 'boom': throw new Error('something unexpected');
      case 'slow': // until cancelled
        return new Promise((_, reject) => r.signal?.addEventListener('abort', () => reject(new InferenceError('CANCELLED', 'inference request cancelled by the caller')), { once: true }));
      case 'hang': // ignores its signal: the daemon's own backstop must answer
        return new Promise(() => {});
      default:
        return `echo:${r.prompt}|${r.maxTokens}|${r.seed}|${r.temperature}|${r.modelSize}`;
    }
  },
  async embed(r) {
    calls.push({ prompt: r.text, signal: r.signal });
    if (r.text === '') return fail('INVALID_ARGUMENT', 'text is empty: there is nothing to embed');
    return Float32Array.from({ length: 8 }, (_, i) => (i + r.text.length) / 16);
  },
  status() {
    return { running: true, pid: 4242, uptimeSeconds: 9, requestsProcessed: 3, errorsCount: 1, avgLatencyMs: 2.5 } as ReturnType<DaemonEngine['status']>;
  },
  modelInfo() {
    return [{ modelType: 'generation', modelSize: 'small', loaded: true, memoryMb: 12, source: 's', path: 'p' }];
  },
  async load() {}, async unload() {}, async reload() {},
};

// The databases' service writers (cache rows, stats, logs); the model identities of the scripted engine.
const identities = { async modelIdentity(role: string, size: string) { return `fake-${role}-${size}`; } } as unknown as Engine;

let db: TestDatabase;
let secret: string;
let databases: DatabaseRegistry;
let daemon: DaemonHandle;
let sql: pg.Client;
const start = (port: number) => startDaemon({ listen: { host: '127.0.0.1', port }, secret, engine, databaseFor: (name) => databases.get(name), logger: silentLogger });
beforeAll(async () => {
  db = await freshDatabase('st_daemon');
  ({ secret } = await prepareDatabase(db.url));
  databases = new DatabaseRegistry({ serviceUrl: db.url, autoInstall: false, engine: identities, logger: silentLogger });
  daemon = await start(0);
  await prepareDatabase(db.url, { daemonHost: '127.0.0.1', daemonPort: daemon.address.port });
  sql = await db.connect();
  // This suite is the dblink transport's: no in-band fallback when the daemon is away (tests/sql/inband.test.ts).
  await sql.query(`SELECT steadytext_config_set('callback_transport', 'dblink')`);
});
afterAll(async () => {
  await daemon?.close();
  await databases?.close();
  await db?.drop();
});

const direct = async (over: Partial<pg.ClientConfig> = {}) => {
  const c = new pg.Client({ host: '127.0.0.1', port: daemon.address.port, user: 'steadytext', password: secret, database: 'steadytext', ...over });
  c.on('error', () => {});
  await c.connect();
  return c;
};

describe('wire protocol', () => {
  it('answers what libpq and drivers send around a request, and the request itself', async () => {
    const c = await direct();
    expect((await c.query(`SET client_encoding TO 'UTF8'`)).command).toBe('SET');
    expect((await c.query('RESET ALL')).command).toBe('RESET');
    await c.query('');
    expect((await c.query('SELECT 1')).rows).toEqual([{ '?column?': '1' }]);
    const r = await c.query(JSON.stringify({ op: 'generate', prompt: 'héllo 😀', max_tokens: 5, seed: 1, temperature: 0.5, model_size: 'small' }));
    expect(r.fields.map((f) => [f.name, f.dataTypeID])).toEqual([['answer', 25]]);
    expect(r.rows).toEqual([{ answer: 'echo:héllo 😀|5|1|0.5|small' }]);
    const bits = await c.query(JSON.stringify({ op: 'generate', prompt: 'b', max_tokens: 5, seed: 1, temperature: 9, temperature_bits: '3fd3333333333334' }));
    expect(bits.rows[0].answer).toBe('echo:b|5|1|0.30000000000000004|small');
    expect((await c.query(JSON.stringify({ op: 'embed', text: 'abcd', seed: 3 }))).rows[0].answer).toBe('[0.25,0.3125,0.375,0.4375,0.5,0.5625,0.625,0.6875]');
    await c.end();
  });

  it('refuses SQL, bad JSON and bad arguments with fitting SQLSTATEs, and stays usable', async () => {
    const c = await direct();
    const cases: Array<[string, string, RegExp]> = [
      ['SELECT * FROM pg_class', '0A000', /answers steadytext requests only/],
      ['{oops', '22P02', /not valid JSON/],
      ['[1]', '22023', /the request must be a JSON object/],
      ['{"op":"nope"}', '22023', /unknown op "nope"/],
      ['{"op":"generate","prompt":"x","max_tokens":-1,"seed":1}', '22023', /steadytext_generate: max_tokens must be an integer from 1/],
      ['{"op":"generate","prompt":"x","max_tokens":1,"seed":1,"temperature":-2}', '22023', /temperature must be a finite number >= 0/],
      ['{"op":"embed","text":5,"seed":1}', '22023', /steadytext_embed: text must be text/],
    ];
    for (const [q, code, msg] of cases) {
      const e = await pgError(c.query(q));
      expect(e.code, q).toBe(code);
      expect(e.message, q).toMatch(msg);
    }
    // The extended protocol (a parameterised query) is refused once, then the session goes on.
    expect((await pgError(c.query('SELECT $1::text', ['a']))).code).toBe('0A000');
    expect((await c.query('SELECT 1')).rows).toHaveLength(1);
    await c.end();
  });

  it('requires the secret (28P01) and the steadytext user (28000)', async () => {
    const wrong = await pgError(direct({ password: secret.replace(/.$/, (x) => (x === '0' ? '1' : '0')) }));
    expect(wrong.code).toBe('28P01');
    expect(wrong.message).toMatch(/password authentication failed for user "steadytext"/);
    expect((await pgError(direct({ password: '' }))).code).toMatch(/28P01|^$/);
    const user = await pgError(direct({ user: 'postgres' }));
    expect(user.code).toBe('28000');
  });

  it('malformed input ends that connection with 08P01 and nothing else', async () => {
    const raw = (bytes: Buffer) => new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      const s = connect(daemon.address.port, '127.0.0.1', () => s.write(bytes));
      const deadline = setTimeout(() => s.destroy(), 2000); // a deadline, not a wait: the daemon closes these at once
      s.on('data', (d) => chunks.push(d));
      s.on('error', () => {});
      s.on('close', () => { clearTimeout(deadline); resolve(Buffer.concat(chunks)); });
    });
    const ints = (...n: number[]) => Buffer.concat(n.map((x) => { const b = Buffer.alloc(4); b.writeInt32BE(x); return b; }));
    const tooShort = await raw(ints(4));
    expect(tooShort.subarray(0, 1).toString()).toBe('E');
    expect(tooShort.toString('latin1')).toContain('08P01');
    expect(await raw(ints(8, 80877102))).toHaveLength(0); // a CancelRequest without its key
    expect((await raw(ints(8, 9 << 16))).toString('latin1')).toContain('0A000'); // protocol 9.0
    expect((await raw(ints(0x7fffffff, 196608))).toString('latin1')).toContain('invalid message length');
    const c = await direct();
    expect((await c.query('SELECT 1')).rows).toHaveLength(1);
    await c.end();
  });

  it('works with libpq defaults (sslmode=prefer, gssencmode=prefer)', async () => {
    const conn = `host=127.0.0.1 port=${daemon.address.port} user=steadytext dbname=steadytext password=${secret} sslmode=prefer`;
    const { stdout } = await promisify(execFile)(PSQL, ['-X', '-At', '-d', conn, '-c', '{"op":"generate","prompt":"psql","max_tokens":3,"seed":0}']);
    expect(stdout.trim()).toBe('echo:psql|3|0|0|small');
  });

  it('a CancelRequest with the session key aborts the running request (57014)', async () => {
    const c = await direct();
    const n = calls.length;
    const pending = pgError(c.query('{"op":"generate","prompt":"slow","max_tokens":1,"seed":0}'));
    await expect.poll(() => calls.length).toBeGreaterThan(n); // the request reached the engine
    const call = calls[n];
    expect(call.prompt).toBe('slow');
    const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
    const key = (k: number) => { const b = Buffer.alloc(4); b.writeInt32BE(k); return b; };
    const sendCancel = (packet: Buffer) => new Promise<void>((resolve, reject) => {
      const s = connect(daemon.address.port, '127.0.0.1', () => s.end(packet));
      s.on('close', () => resolve());
      s.on('error', reject);
    });
    // The daemon acts on a CancelRequest before it closes that connection; one round trip on another
    // session after the close, and a cancel by the wrong key would have shown.
    await sendCancel(cancelRequest(processID, key(secretKey ^ 1)));
    const probe = await direct();
    expect((await probe.query('SELECT 1')).rows).toHaveLength(1);
    await probe.end();
    expect(call.signal?.aborted).toBe(false); // a wrong key cancels nothing
    await sendCancel(cancelRequest(processID, key(secretKey)));
    const e = await pending;
    expect(e.code).toBe('57014');
    expect(call.signal?.aborted).toBe(true);
    expect((await c.query('SELECT 1')).rows).toHaveLength(1);
    await c.end();
  });

  it('a client that goes away aborts its request', async () => {
    const c = await direct();
    const n = calls.length;
    c.query('{"op":"generate","prompt":"slow","max_tokens":1,"seed":0}').catch(() => {});
    await expect.poll(() => calls.length).toBeGreaterThan(n); // the request reached the engine
    const signal = calls[n].signal;
    expect(calls[n].prompt).toBe('slow');
    expect(signal?.aborted).toBe(false);
    (c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await expect.poll(() => signal?.aborted).toBe(true);
  });

  it('answers 57014 when timeout_ms passes even if the engine does not stop', async () => {
    const c = await direct();
    const t0 = Date.now();
    const e = await pgError(c.query('{"op":"generate","prompt":"hang","max_tokens":1,"seed":0,"timeout_ms":100,"function":"steadytext_generate"}'));
    expect(e.code).toBe('57014');
    expect(e.message).toMatch(/^steadytext_generate: the pg-steadytext daemon gave up after 100 ms \(daemon_timeout_ms\)/);
    expect(e.hint).toMatch(/daemon_timeout_ms/);
    expect(Date.now() - t0).toBeLessThan(5000);
    await c.end();
  });
});

describe('through dblink', () => {
  it('answers calls made inside PL/pgSQL', async () => {
    await sql.query(`CREATE FUNCTION ask(p text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_generate(p, max_tokens := 7, seed := 3); END $$`);
    expect((await sql.query(`SELECT ask('from plpgsql') AS a`)).rows[0].a).toBe('echo:from plpgsql|7|3|0|small');
    expect((await sql.query(`SELECT steadytext_generate('t', temperature := 0.30000000000000004) AS a`)).rows[0].a).toBe('echo:t|512|42|0.30000000000000004|small');
  });

  it('engine errors reach the caller with their SQLSTATE, message and hint', async () => {
    const cases: Array<[string, string, RegExp, RegExp]> = [
      ['overloaded', '53000', /^steadytext_generate: generation queue is full/, /at capacity/],
      ['missing-model', '58P01', /^steadytext_generate: generation model 'small': no file/, /model file/],
      ['timeout', '57014', /^steadytext_generate: inference request timed out/, /daemon_timeout_ms/],
      ['load-failed', '55000', /^steadytext_generate: cannot load model file/, /steadytext_daemon_restart/],
      ['invalid', '22023', /^steadytext_generate: max_tokens must be/, /Check the arguments/],
      ['boom', 'XX000', /^steadytext_generate: something unexpected/, /log/],
    ];
    for (const [prompt, code, msg, hint] of cases) {
      const e = await pgError(sql.query(`SELECT ask($1)`, [prompt]));
      expect(e.code, prompt).toBe(code);
      expect(e.message, prompt).toMatch(msg);
      expect(e.hint, prompt).toMatch(hint);
    }
    const e = await pgError(sql.query(`SELECT steadytext_embed('')`));
    expect([e.code, e.message]).toEqual(['22023', 'steadytext_embed: text is empty: there is nothing to embed']);
    // The session's daemon connection survives errors.
    expect((await sql.query(`SELECT ask('after errors') AS a`)).rows[0].a).toMatch(/^echo:after errors/);
  });

  it('stores answers in steadytext_cache so the next call does not reach the daemon', async () => {
    await sql.query(`SELECT steadytext_generate('cache me', 9, 1)`);
    await daemon.flush();
    const key = cacheKey('generate', 'fake-generation-small', generateParams(9, 1, 0), 'cache me');
    const row = (await sql.query(`SELECT operation, model_identity, params, prompt, response FROM steadytext_cache WHERE cache_key = $1`, [key])).rows[0];
    expect(row).toEqual({ operation: 'generate', model_identity: 'fake-generation-small', params: { max_tokens: 9, seed: 1, temperature: 0 }, prompt: 'cache me', response: 'echo:cache me|9|1|0|small' });
    expect((await sql.query(`SELECT identity FROM steadytext_models WHERE role = 'generation' AND size = 'small'`)).rows[0].identity).toBe('fake-generation-small');
    const n = calls.length;
    expect((await sql.query(`SELECT steadytext_generate('cache me', 9, 1) AS a`)).rows[0].a).toBe('echo:cache me|9|1|0|small');
    expect(calls.length).toBe(n);
    // With the cache disabled the daemon neither is skipped nor stores.
    await sql.query(`SELECT steadytext_config_set('cache_enabled', 'false')`);
    await sql.query(`SELECT steadytext_generate('not stored', 9, 1)`);
    await sql.query(`SELECT steadytext_config_set('cache_enabled', 'true')`);
    await daemon.flush();
    expect(calls.length).toBe(n + 1);
    expect((await sql.query(`SELECT count(*)::int AS n FROM steadytext_cache WHERE prompt = 'not stored'`)).rows[0].n).toBe(0);
    const stats = (await sql.query('SELECT callback_requests, generate_requests, errors FROM steadytext_stats')).rows[0];
    expect(Number(stats.callback_requests)).toBeGreaterThanOrEqual(2);
    expect(Number(stats.errors)).toBeGreaterThanOrEqual(6);
    expect((await sql.query(`SELECT count(*)::int AS n FROM steadytext_logs WHERE event = 'callback_error' AND details->>'sqlstate' = '53000'`)).rows[0].n).toBe(1);
  });

  it('debug_mode leaves entries in steadytext_debug_logs, and only then', async () => {
    await sql.query(`SELECT steadytext_generate('quiet', 3, 3)`);
    await daemon.flush();
    expect((await sql.query('SELECT count(*)::int AS n FROM steadytext_debug_logs')).rows[0].n).toBe(0);
    await sql.query(`SELECT steadytext_config_set('debug_mode', 'true')`);
    await sql.query(`SELECT steadytext_generate('noisy', 3, 3)`);
    await sql.query(`SELECT steadytext_generate('quiet', 3, 3)`);
    // The daemon writes its entries after answering; steadytext_log keeps debug entries only while debug_mode is on.
    await daemon.flush();
    await sql.query(`SELECT steadytext_config_set('debug_mode', 'false')`);
    await daemon.flush();
    const events = (await sql.query('SELECT event FROM steadytext_debug_logs ORDER BY id')).rows.map((r) => r.event);
    expect(events).toEqual(expect.arrayContaining(['cache_miss', 'callback', 'cache_hit']));
  });

  it('status, model info and daemon control go to the daemon', async () => {
    expect((await sql.query('SELECT * FROM steadytext_daemon_status()')).rows[0]).toEqual({
      running: true, pid: 4242, host: '127.0.0.1', port: daemon.address.port, uptime_seconds: 9,
      requests_processed: '3', errors_count: '1', avg_latency_ms: 2.5,
    });
    expect((await sql.query('SELECT * FROM steadytext_model_info()')).rows).toEqual([{ model_type: 'generation', model_size: 'small', loaded: true, memory_mb: 12 }]);
    expect((await sql.query('SELECT steadytext_daemon_stop() AS a, steadytext_daemon_start() AS b, steadytext_daemon_restart() AS c')).rows[0]).toEqual({ a: true, b: true, c: true });
  });

  it('a wrong secret in the database is refused, and the error says so', async () => {
    const other = await db.connect();
    await other.query(`UPDATE steadytext_daemon_secret SET secret = 'ffffffffffffffffffffffffffffffff'`);
    try {
      const e = await pgError(other.query(`SELECT steadytext_generate('wrong secret')`));
      expect(e.code).toBe('08001');
      expect(e.message).toMatch(/could not reach the pg-steadytext daemon at 127\.0\.0\.1:\d+: .*password authentication failed for user "steadytext"/);
    } finally {
      await other.query('UPDATE steadytext_daemon_secret SET secret = $1', [secret]);
      await other.end();
    }
  });

  it('leaves no dblink connection behind that others in the session could reuse', async () => {
    const c = await db.connect();
    expect((await c.query(`SELECT steadytext_generate('one call') AS a`)).rows[0].a).toMatch(/^echo:one call/);
    expect((await c.query('SELECT dblink_get_connections() AS c')).rows[0].c).toBeNull();
    await expect.poll(() => daemon.stats().connections).toBe(0);
    await c.end();
  });

  it('a session keeps working across daemon restarts', async () => {
    const c = await db.connect();
    expect((await c.query(`SELECT steadytext_generate('before restart') AS a`)).rows[0].a).toMatch(/^echo:before restart/);
    const port = daemon.address.port;
    await daemon.close();
    const down = await pgError(c.query(`SELECT steadytext_generate('while down')`));
    expect(down.code).toBe('08001');
    expect(down.message).toMatch(/^steadytext_generate could not reach the pg-steadytext daemon at 127\.0\.0\.1:\d+: .*Connection refused/);
    daemon = await start(port);
    expect((await c.query(`SELECT steadytext_generate('after restart') AS a`)).rows[0].a).toMatch(/^echo:after restart/);
    await c.end();
  });

  it('changing daemon_port moves sessions to the new address', async () => {
    const second = await startDaemon({ listen: { host: '127.0.0.1', port: 0 }, secret, engine, logger: silentLogger });
    try {
      await sql.query(`SELECT steadytext_config_set('daemon_port', $1)`, [String(second.address.port)]);
      expect((await sql.query('SELECT port FROM steadytext_daemon_status()')).rows[0].port).toBe(second.address.port);
    } finally {
      await sql.query(`SELECT steadytext_config_set('daemon_port', $1)`, [String(daemon.address.port)]);
      await second.close();
    }
  });
});

describe('prepareDatabase', () => {
  it('keeps one secret per database and writes the daemon address only over defaults', async () => {
    const other = await freshDatabase('st_prepare');
    try {
      const a = await prepareDatabase(other.url, {
        daemonHost: '0.0.0.0', daemonPort: 6100,
        identities: [{ role: 'generation', size: 'small', identity: 'g1' }, { role: 'embedding', size: 'small', identity: 'e1' }],
      });
      expect(a.secret).toMatch(/^[0-9a-f]{64}$/);
      expect(a.migrated.length).toBeGreaterThan(0);
      const cfg = async () => Object.fromEntries((await other.query(`SELECT key, value FROM steadytext_config WHERE key IN ('daemon_host', 'daemon_port')`)).map((r) => [r.key, r.value]));
      expect(await cfg()).toEqual({ daemon_host: 'localhost', daemon_port: '6100' }); // a wildcard is no address to dial
      await other.query(`SELECT steadytext_config_set('daemon_host', 'proxy.internal')`);
      const b = await prepareDatabase(other.url, { daemonHost: '10.1.1.1', daemonPort: 6200, identities: [{ role: 'generation', size: 'small', identity: 'g2' }] });
      expect(b).toMatchObject({ secret: a.secret, migrated: [] });
      expect(await cfg()).toEqual({ daemon_host: 'proxy.internal', daemon_port: '6100' });
      await prepareDatabase(other.url, { daemonHost: '10.1.1.1', daemonPort: 6200, advertise: 'always' });
      expect(await cfg()).toEqual({ daemon_host: '10.1.1.1', daemon_port: '6200' });
      expect(await other.query('SELECT role, size, identity FROM steadytext_models ORDER BY role')).toEqual([
        { role: 'embedding', size: 'small', identity: 'e1' }, { role: 'generation', size: 'small', identity: 'g2' },
      ]);
    } finally {
      await other.drop();
    }
  });
});
