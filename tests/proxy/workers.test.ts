// `serve --workers 2`, the real command line: sessions spread over two worker processes that share one
// engine (in the primary) over IPC; answers, cancels (whichever worker receives them) and shutdown.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test } from 'vitest';
import pg from 'pg';
import { createEngine, type Engine } from '../../inference/engine.js';
import { CancelRegistry } from '../../proxy/cancel.js';
import { cancelRequest } from '../../proxy/protocol.js';
import { tinyModels } from '../fixtures/models.js';
import { freePort } from '../setup/cluster.js';
import { adminQuery, queryMsg, rawSession, testDb, type RawClient } from './helpers.js';

const CLI = fileURLToPath(new URL('../../cli.ts', import.meta.url));
const GRACE_MS = 3_000;

let proc: ChildProcess;
let exited: Promise<number | null>;
let port: number;
let database: string;
let url: string;
let engine: Engine;
const logs: Record<string, any>[] = [];
const clients: pg.Client[] = [];

beforeAll(async () => {
  const db = testDb();
  database = `st_workers_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${database}`);
  const admin = new URL(db.adminUrl);
  admin.pathname = `/${database}`;
  admin.search = '?sslmode=disable';
  port = await freePort();
  const daemonPort = await freePort();
  const models = await tinyModels();
  engine = createEngine({ generationModel: models.generation, embeddingModel: models.embedding });
  proc = spawn(process.execPath, [
    '--import', 'tsx', CLI, 'serve', '--workers', '2', '--listen', `127.0.0.1:${port}`, '--daemon-listen', `127.0.0.1:${daemonPort}`,
    '--upstream', admin.toString(), '--shutdown-grace-ms', String(GRACE_MS), '--log-format', 'json', '--log-level', 'info',
  ], {
    env: { ...process.env, PGSTEADYTEXT_GENERATION_MODEL: models.generation, PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
  let rest = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
    const lines = (rest + d).split('\n');
    rest = lines.pop()!;
    for (const l of lines) {
      try { logs.push(JSON.parse(l)); } catch { process.stderr.write(l + '\n'); }
    }
  });
  await until(() => logs.some((l) => l.msg === 'pg-steadytext ready'), 60_000, 'pg-steadytext ready');
  url = `postgres://${encodeURIComponent(admin.username)}:${encodeURIComponent(decodeURIComponent(admin.password))}@127.0.0.1:${port}/${database}?sslmode=disable`;
}, 120_000);

afterAll(async () => {
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
  if (proc && proc.exitCode === null) {
    proc.kill('SIGKILL');
    await exited;
  }
  await engine?.close();
  if (database) await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => {});
});

async function until(pred: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
    if (proc.exitCode !== null) throw new Error(`pg-steadytext exited (${proc.exitCode}) while waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function connectClient(applicationName?: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url, application_name: applicationName });
  c.on('error', () => {});
  await c.connect();
  clients.push(c);
  return c;
}

/** Resolves once a backend of this application name runs a statement (sql, if given). */
const running = (app: string, sql?: string) => until(async () => (await adminQuery<{ state: string; query: string }>(
  'SELECT state, query FROM pg_stat_activity WHERE application_name = $1', [app])).some((b) => b.state === 'active' && (sql === undefined || b.query === sql)),
5_000, `${sql ?? 'a statement'} running in ${app}`);

/** The worker that accepted a session: the proxy puts its index in the high bits of the key's pid. */
const workerOf = (pid: number) => pid >>> 24;
const keyOf = (c: pg.Client) => c as unknown as { processID: number; secretKey: number };

function sendCancel(pid: number, secret: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1', () => sock.end(cancelRequest(pid, secret)));
    sock.on('close', () => resolve());
    sock.on('error', reject);
  });
}
const int32 = (n: number) => { const b = Buffer.alloc(4); b.writeInt32BE(n | 0); return b; };

test('cancel keys carry their worker: others\' keys are routed, impossible ones ignored, forged ones match nothing', () => {
  const routed: [number, number][] = [];
  const regs = [0, 1].map((worker) => new CancelRegistry({ worker, workers: 2, route: (to, pid) => void routed.push([to, pid]) }));
  let cancelled = 0;
  const keys = regs.map((r) => r.issue(4, () => cancelled++));
  expect(keys.map((k) => workerOf(k.pid))).toEqual([0, 1]);
  expect(regs[0].cancel(keys[1].pid, keys[1].secret)).toBe(true);
  expect(routed).toEqual([[1, keys[1].pid]]);
  expect(cancelled).toBe(0); // only the issuing worker checks the secret
  expect(regs[1].deliver(keys[1].pid, Buffer.alloc(4))).toBe(false);
  expect(regs[1].deliver(keys[1].pid, keys[1].secret)).toBe(true);
  expect(cancelled).toBe(1);
  expect(regs[0].cancel((2 << 24) | 5, keys[0].secret)).toBe(false); // no worker 2
  expect(regs[0].cancel(-1, keys[0].secret)).toBe(false);
  expect(routed).toHaveLength(1);
  expect(regs[0].ignored).toBe(2);
});

test('sessions land on both workers, whose log lines say which; every one gets correct answers', async () => {
  const cs = await Promise.all(Array.from({ length: 10 }, () => connectClient()));
  const workers = new Set(cs.map((c) => workerOf(keyOf(c).processID)));
  expect(workers).toEqual(new Set([0, 1]));
  const results = await Promise.all(cs.map((c, i) => c.query('SELECT $1::int * 2 AS v, current_database() AS d', [i])));
  results.forEach((r, i) => expect(r.rows[0]).toEqual({ v: i * 2, d: database }));
  const listening = logs.filter((l) => l.msg === 'proxy listening');
  expect(new Set(listening.map((l) => l.worker))).toEqual(new Set([0, 1]));
  // The engine is the primary's, whichever worker asks.
  for (const c of cs.slice(0, 4)) {
    const st = (await c.query('SELECT * FROM steadytext_daemon_status()')).rows[0];
    expect(st.pid).toBe(proc.pid);
  }
});

test('steadytext_generate through either worker: the same bytes, equal to the engine\'s', async () => {
  const cs = await Promise.all(Array.from({ length: 6 }, () => connectClient()));
  expect(new Set(cs.map((c) => workerOf(keyOf(c).processID)))).toEqual(new Set([0, 1]));
  const expected = await engine.generate({ prompt: 'x', maxTokens: 10 });
  const got = await Promise.all(cs.map(async (c) => (await c.query(`SELECT steadytext_generate('x', 10) AS t`)).rows[0].t));
  for (const t of got) expect(Buffer.from(t, 'utf8').equals(Buffer.from(expected, 'utf8'))).toBe(true);
  // Prepared, and an embedding (a Float32Array across the IPC channel).
  const vectors = await Promise.all(cs.map(async (c) => (await c.query({ text: 'SELECT steadytext_embed($1)::text AS e', values: ['hello workers'] })).rows[0].e));
  const want = await engine.embed({ text: 'hello workers' });
  for (const v of vectors) expect(Float32Array.from(JSON.parse(v))).toEqual(want);
  // The callback path (a PL/pgSQL function the proxy cannot see into) reaches the primary's daemon endpoint.
  await cs[0].query(`CREATE OR REPLACE FUNCTION via_fn(p text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_generate(p, 10); END $$`);
  await cs[0].query(`SELECT steadytext_config_set('cache_enabled', 'false')`);
  try {
    const viaFn = (await cs[1].query(`SELECT via_fn('x') AS t`)).rows[0].t;
    expect(viaFn).toBe(expected);
  } finally {
    await cs[0].query(`SELECT steadytext_config_set('cache_enabled', 'true')`);
  }
});

test('a CancelRequest cancels pg_sleep whichever worker receives it; forged keys do nothing', async () => {
  const victims: Record<number, RawClient> = {};
  const apps: Record<number, string> = {};
  const spare: RawClient[] = [];
  while (victims[0] === undefined || victims[1] === undefined) {
    const app = `workers-victim-${randomBytes(3).toString('hex')}`;
    const c = await rawSession(port, app);
    const k = c.messages.find((m) => m.type === 'K')!.body;
    const w = workerOf(k.readInt32BE(0));
    if (victims[w] === undefined) { victims[w] = c; apps[w] = app; } else spare.push(c);
    if (spare.length > 10) throw new Error('all sessions land on one worker');
  }
  spare.forEach((c) => c.destroy());
  const key = (c: RawClient) => { const b = c.messages.find((m) => m.type === 'K')!.body; return { pid: b.readInt32BE(0), secret: Buffer.from(b.subarray(4)) }; };

  // Forged: right pid with a wrong secret, through enough connections that both workers see one; and a
  // pid of a worker that does not exist. The queries run on.
  const v0 = victims[0];
  v0.write(queryMsg('select pg_sleep(30)'));
  await running(apps[0], 'select pg_sleep(30)');
  const bad = Buffer.from(key(v0).secret.map((x) => x ^ 0xff));
  const logged = logs.length;
  await Promise.all([
    ...Array.from({ length: 4 }, () => sendCancel(key(v0).pid, bad)),
    sendCancel((5 << 24) | 1234, key(v0).secret),
  ]);
  // Each of the five ends in a worker's log as ignored (none as forwarded to the server), whichever worker got it.
  const ignored = () => logs.slice(logged).filter((l) => /^cancel request (from another worker )?with an unknown key ignored$/.test(l.msg ?? '')).length;
  await until(() => ignored() === 5, 5_000, 'the five forged cancels handled');
  expect(logs.slice(logged).filter((l) => l.msg === 'cancel request from another worker forwarded')).toEqual([]);
  expect(v0.count('E')).toBe(0);
  expect(v0.count('Z')).toBe(1);
  expect(logs.some((l) => l.msg?.startsWith('cancel request from another worker with an unknown key ignored'))).toBe(true);

  // Real cancels, until each victim's worker has been cancelled both from itself and from the other one.
  const seen = new Set<string>();
  const busy: Record<number, boolean> = { 0: true, 1: false };
  for (let round = 0; round < 12 && seen.size < 4; round++) {
    // Connections go round-robin: a key-less connection now and then shifts which worker gets the next cancel.
    if (round % 2 === 1) await sendCancel(0, Buffer.alloc(4));
    for (const w of [0, 1]) {
      const v = victims[w];
      if (!busy[w]) {
        v.write(queryMsg('select pg_sleep(30)'));
        await running(apps[w], 'select pg_sleep(30)');
      }
      const zBefore = v.count('Z');
      const eBefore = v.count('E');
      const before = logs.length;
      const t0 = Date.now();
      await sendCancel(key(v).pid, key(v).secret);
      await v.waitForCount('Z', zBefore + 1, 5_000);
      expect(Date.now() - t0).toBeLessThan(3_000);
      expect(v.count('E')).toBe(eBefore + 1);
      expect(lastError(v)).toBe('57014');
      busy[w] = false;
      const local = () => logs.slice(before).some((l) => l.msg === 'cancel request forwarded' && l.worker === w);
      const routed = () => logs.slice(before).some((l) => l.msg === 'cancel request from another worker forwarded' && l.worker === w);
      await until(() => local() || routed(), 2_000, 'the cancel\'s log line');
      seen.add(`${w}:${routed() ? 'routed' : 'local'}`);
    }
  }
  expect(seen).toEqual(new Set(['0:local', '0:routed', '1:local', '1:routed']));
  for (const v of Object.values(victims)) {
    v.write(queryMsg('select 1'));
    await v.waitForCount('C', 1);
    v.destroy();
  }
});

/** SQLSTATE of the last ErrorResponse. */
function lastError(c: RawClient): string | undefined {
  const m = c.messages.filter((x) => x.type === 'E').at(-1);
  if (!m) return undefined;
  for (let pos = 0; pos < m.body.length && m.body[pos] !== 0;) {
    const end = m.body.indexOf(0, pos + 1);
    if (m.body[pos] === 0x43) return m.body.toString('utf8', pos + 1, end);
    pos = end + 1;
  }
  return undefined;
}

test('cancelling a long generation gives 57014 and the session goes on', async () => {
  const app = `workers-generation-${randomBytes(3).toString('hex')}`;
  const c = await connectClient(app);
  const errors = async () => (await c.query('SELECT errors_count FROM steadytext_daemon_status()')).rows[0].errors_count as number;
  const errorsBefore = await errors();
  const q = c.query(`SELECT steadytext_generate('Tell a very long story', max_tokens := 4000, temperature := 0.9, seed := 7)`).catch((e) => e);
  // The proxy computes once the session has said it may run the function (README, "Ahead of the statement"):
  // its backend idle after that check means the generation is in the primary's engine.
  await until(async () => (await adminQuery<{ state: string; query: string }>('SELECT state, query FROM pg_stat_activity WHERE application_name = $1', [app]))
    .some((b) => b.state === 'idle' && b.query.includes('has_function_privilege')), 5_000, 'the proxy computing the generation');
  const t0 = Date.now();
  await sendCancel(keyOf(c).processID, int32(keyOf(c).secretKey));
  const err = await q;
  expect(err?.code, `the query ended with ${err instanceof Error ? err.message : JSON.stringify(err?.rows)}`).toBe('57014');
  expect(Date.now() - t0).toBeLessThan(3_000);
  expect((await c.query('SELECT 1 AS ok')).rows[0].ok).toBe(1);
  // The primary's engine stopped that request (an error there, not a finished generation).
  await until(async () => (await errors()) > errorsBefore, 3_000, 'the cancelled request in the engine\'s counters');
});

test('a worker that dies is restarted (and logged); sessions land on both workers again', async () => {
  const listening = () => logs.filter((l) => l.msg === 'proxy listening');
  const victim = listening().filter((l) => l.worker === 1).at(-1)!;
  const before = listening().length;
  process.kill(victim.pid, 'SIGKILL');
  await until(() => logs.some((l) => l.msg === 'worker exited unexpectedly; restarting' && l.worker === 1 && l.signal === 'SIGKILL'), 5_000, 'the crash log');
  await until(() => listening().length > before, 20_000, 'the restarted worker');
  expect(listening().at(-1)!.worker).toBe(1);
  expect(listening().at(-1)!.pid).not.toBe(victim.pid);
  const cs = await Promise.all(Array.from({ length: 4 }, () => connectClient()));
  expect(new Set(cs.map((c) => workerOf(keyOf(c).processID)))).toEqual(new Set([0, 1]));
  for (const c of cs) expect((await c.query(`SELECT length(steadytext_generate('x', 10)) > 0 AS ok`)).rows[0].ok).toBe(true);
});

test('SIGTERM: running queries finish, then the workers and the primary stop, exit code 0', async () => {
  const app = `workers-sigterm-${randomBytes(3).toString('hex')}`;
  const c = await connectClient(app);
  // The statement under test: running when SIGTERM arrives, it finishes half a second later.
  const q = c.query('SELECT pg_sleep(0.5), 42 AS v');
  await running(app);
  const workerPids = [...new Set(logs.filter((l) => l.worker !== undefined && l.msg === 'proxy listening').map((l) => l.pid as number))];
  if (process.env.PGST_TEST_LOG) for (const l of logs) if (l.level >= 40) console.log(l);
  expect(workerPids.length).toBeGreaterThanOrEqual(2);
  const t0 = Date.now();
  proc.kill('SIGTERM');
  expect((await q).rows[0].v).toBe(42);
  // The idle session is ended when the grace period is over, or sooner.
  expect(await exited).toBe(0);
  expect(Date.now() - t0).toBeLessThan(GRACE_MS + 5_000);
  for (const pid of workerPids) expect(() => process.kill(pid, 0)).toThrow();
});
