// npm run bench:sql [-- --preset tiny|bench] [--rows 2000] [--clients 4] [--calls 2000] [--sample 50] [--bulk-timeout-ms MS]
//                    [--misses 100] [--trigger-rows 1000]
// Embedding a table through SQL, against the engine alone, in one process on a throwaway cluster:
//   bulk     one UPDATE ... SET emb = steadytext_embed(body) through the proxy (prefetch path)
//   per-row  one UPDATE per row with bound parameters through the proxy (rewrite path), 1 and N clients
//   wrapper  one UPDATE ... SET emb = wrap_embed(body), a PL/pgSQL wrapper the proxy cannot see into: every row
//            misses and asks the proxy itself, with callback_transport dblink (daemon endpoint) and inband
//   engine   engine.embedMany on the same texts, no database
// then calls the proxy cannot see: per-call latency of a miss and of a hit through the wrapper for both
// transports (--misses cold texts each), and a BEFORE INSERT trigger embedding --trigger-rows rows in-band
// against the same rows inserted with prefetchable SQL; then the round trip of cached calls next to
// SELECT 1, and a byte-for-byte check of the stored vectors.
// Every throughput phase starts cold: engine cache cleared, steadytext_cache truncated, emb reset.
// --bulk-timeout-ms adds a second bulk run with daemon_timeout_ms set to MS (the prefetch's per-request limit).
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import pino from 'pino';
import { createEngine, type EmbedRequest, type Engine } from '../inference/engine.js';
import { FIXTURE_VERSION, writeFixtureModels, type FixtureModels, type FixturePreset } from '../tools/fixture-models.js';
import { findCalls, isParseFailure, loadParser } from '../sql/calls.js';
import { startCore } from '../sql/core.js';
import { derivePrefetch } from '../sql/prefetch-plan.js';
import { startProxy } from '../proxy/server.js';
import { createSteadytextInterceptor } from '../sql/interceptor.js';
import { parseVectorText, vectorText } from '../sql/answers.js';
import { storeCacheEntry, type CacheEntry } from '../sql/store.js';
import { startCluster, type Cluster } from '../tests/setup/cluster.js';

const { values: opt } = parseArgs({
  options: {
    preset: { type: 'string', default: 'bench' },
    rows: { type: 'string', default: '2000' },
    clients: { type: 'string', default: '4' },
    calls: { type: 'string', default: '2000' },
    sample: { type: 'string', default: '50' },
    'bulk-timeout-ms': { type: 'string' },
    misses: { type: 'string', default: '100' },
    'trigger-rows': { type: 'string', default: '1000' },
  },
});
const PRESET = opt.preset as FixturePreset;
if (PRESET !== 'tiny' && PRESET !== 'bench') throw new Error(`--preset must be tiny or bench, not ${opt.preset}`);
const ROWS = posInt(opt.rows, 'rows');
const CLIENTS = posInt(opt.clients, 'clients');
const CALLS = posInt(opt.calls, 'calls');
const SAMPLE = posInt(opt.sample, 'sample');
const BULK_TIMEOUT_MS = opt['bulk-timeout-ms'] === undefined ? undefined : posInt(opt['bulk-timeout-ms'], 'bulk-timeout-ms');
const MISSES = posInt(opt.misses, 'misses');
const TRIGGER_ROWS = posInt(opt['trigger-rows'], 'trigger-rows');
const SEED = 42; // default_seed of a fresh steadytext_config: the engine phase must key and compute alike

function posInt(s: string, name: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, not ${s}`);
  return n;
}

const CACHE_ROOT = fileURLToPath(new URL('../node_modules/.cache/pg-steadytext/fixtures/', import.meta.url));
const log = pino({ level: process.env.PGST_BENCH_LOG ?? 'warn' }, pino.destination(2));
const progress = (s: string) => process.stderr.write(s + '\n');

async function fixtures(preset: FixturePreset): Promise<FixtureModels> {
  const dir = join(CACHE_ROOT, `${FIXTURE_VERSION}-${preset}`);
  const paths = { generation: join(dir, 'generation.gguf'), embedding: join(dir, 'embedding.gguf') };
  const present = async () => (await Promise.all([paths.generation, paths.embedding].map((p) => stat(p).then(() => true, () => false)))).every(Boolean);
  if (await present()) return paths;
  await mkdir(CACHE_ROOT, { recursive: true });
  const tmp = await mkdtemp(join(CACHE_ROOT, `.tmp-${FIXTURE_VERSION}-${preset}-`));
  progress(`writing ${preset} fixture models into ${dir} (once)...`);
  try {
    await writeFixtureModels(tmp, { preset });
    await rename(tmp, dir);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    if (!(await present())) throw e; // otherwise a concurrent writer won the rename
  }
  return paths;
}

// ---- Product descriptions: deterministic, distinct, 10-60 words.
function rng(seed: number) {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
}
const pick = <T>(r: () => number, xs: readonly T[]) => xs[Math.floor(r() * xs.length)];
const ADJ = ['durable', 'lightweight', 'compact', 'insulated', 'ergonomic', 'waterproof', 'handcrafted', 'recycled', 'adjustable', 'foldable', 'premium', 'rugged', 'minimalist', 'vintage', 'breathable', 'cordless', 'stackable', 'reusable', 'quiet', 'portable'];
const MAT = ['stainless steel', 'bamboo', 'oak', 'aluminium', 'cotton canvas', 'ceramic', 'borosilicate glass', 'silicone', 'merino wool', 'leather', 'walnut', 'linen', 'cast iron', 'carbon fibre', 'cork'];
const NOUN = ['water bottle', 'backpack', 'desk lamp', 'coffee grinder', 'cutting board', 'travel mug', 'office chair', 'yoga mat', 'bookshelf', 'frying pan', 'rain jacket', 'headphone stand', 'tea kettle', 'bike light', 'picnic blanket', 'wall clock', 'storage box', 'plant pot', 'phone case', 'hiking boot'];
const FEAT = ['a leak-proof lid', 'two hidden pockets', 'a magnetic base', 'three brightness levels', 'a non-slip grip', 'a lifetime warranty', 'a detachable strap', 'a soft-touch finish', 'a built-in timer', 'an anti-scratch coating', 'reinforced seams', 'a USB-C port', 'a removable liner', 'dishwasher-safe parts'];
const USE = ['daily commutes', 'weekend hikes', 'small kitchens', 'home offices', 'long flights', 'camping trips', 'busy mornings', 'studio apartments', 'outdoor dinners', 'gym sessions'];
const COLOR = ['charcoal', 'sage green', 'navy', 'sand', 'terracotta', 'off-white', 'mustard', 'slate blue'];
const SENTENCES: ((r: () => number) => string)[] = [
  (r) => `This ${pick(r, ADJ)} ${pick(r, NOUN)} is made from ${pick(r, MAT)} and comes with ${pick(r, FEAT)}.`,
  (r) => `Designed for ${pick(r, USE)}, it weighs only ${(0.2 + r() * 3).toFixed(1)} kg.`,
  (r) => `Available in ${pick(r, COLOR)} and ${pick(r, COLOR)}.`,
  (r) => `Customers love its ${pick(r, ADJ)} build and ${pick(r, FEAT)}.`,
  (r) => `Pairs well with our ${pick(r, ADJ)} ${pick(r, NOUN)}.`,
  (r) => `Each piece is tested for ${Math.floor(100 + r() * 900)} cycles before it leaves the workshop.`,
  () => 'Care: wipe with a damp cloth and keep away from direct heat.',
];

function descriptions(n: number): string[] {
  const r = rng(0x5eed);
  const out = new Set<string>();
  while (out.size < n) {
    const target = 10 + Math.floor(r() * 51);
    const words: string[] = [];
    while (words.length < target) words.push(...pick(r, SENTENCES)(r).split(' '));
    let s = words.slice(0, target).join(' ');
    if (!/[.!?]$/.test(s)) s = s.replace(/[,;:]$/, '') + '.';
    out.add(s);
  }
  return [...out];
}

// ---- Measurement helpers.
/** busy: milliseconds spent inside engine.embed, summed over its calls. */
interface EmbedProbe { byPath: Map<string, number>; failed: Map<string, number>; first?: number; last?: number; busy: number }
const newProbe = (): EmbedProbe => ({ byPath: new Map(), failed: new Map(), busy: 0 });
interface StoreCall { entries: number; start: number; end: number; ok: boolean }

const stats = (ms: number[]) => {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)];
  return { mean: s.reduce((a, b) => a + b, 0) / s.length, p50: q(0.5), p99: q(0.99), max: s[s.length - 1] };
};
const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const table = (head: string[], rows: string[][]) => {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
};
function ticker(render: () => string, everyMs = 3000) {
  const t0 = performance.now();
  const h = setInterval(() => progress(`  ${((performance.now() - t0) / 1000).toFixed(0)}s ${render()}`), everyMs);
  return () => clearInterval(h);
}

let cluster: Cluster | undefined;
const cleanups: (() => Promise<unknown>)[] = [];
async function cleanup() {
  for (const c of cleanups.splice(0).reverse()) await c().catch((e) => progress(`cleanup: ${(e as Error).message}`));
  await cluster?.stop();
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void cleanup().finally(() => process.exit(130)));

async function main() {
  const loadAtStart = loadavg();
  const models = await fixtures(PRESET);
  progress(`preset ${PRESET}, ${ROWS} rows; starting a throwaway PostgreSQL cluster...`);
  cluster = await startCluster();
  const database = 'bench_sql';
  const admin = new pg.Client(cluster.adminUrl);
  await admin.connect();
  await admin.query(`CREATE DATABASE ${database}`);
  // Calls and time of the in-band helpers (pg_stat_user_functions): how often a waiting function polled.
  await admin.query(`ALTER DATABASE ${database} SET track_functions = 'all'`);
  await admin.end();
  const du = new URL(cluster.adminUrl);
  du.pathname = `/${database}`;
  const directUrl = du.toString();

  // Queue and timeout as `pg-steadytext serve` has them by default (queueSize, requestTimeoutMs).
  const engine: Engine = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, maxQueue: 1024, timeoutMs: 30_000, logger: log });
  cleanups.push(() => engine.close());

  // Every path reaches the engine through embed() (embedMany too): count by caller, time the span.
  let probe = newProbe();
  const rawEmbed = engine.embed.bind(engine);
  engine.embed = async (r: EmbedRequest) => {
    const p = probe, path = (r.caller ?? 'direct').split(':')[0];
    const t = performance.now();
    p.first ??= t;
    try {
      const v = await rawEmbed(r);
      p.byPath.set(path, (p.byPath.get(path) ?? 0) + 1);
      return v;
    } catch (e) {
      const k = `${path}:${(e as Error).name}`;
      p.failed.set(k, (p.failed.get(k) ?? 0) + 1);
      throw e;
    } finally {
      p.last = performance.now();
      p.busy += p.last - t;
    }
  };

  const core = await startCore({ engine, serviceUrl: directUrl, autoInstall: true, daemonListen: { host: '127.0.0.1', port: 0 }, logger: log });
  const { databases } = core;
  const daemon = core.daemon!;
  cleanups.push(() => databases.close());
  cleanups.push(() => daemon.close());
  const interceptor = createSteadytextInterceptor({ engine, databases, daemon: daemon.address, logger: log });
  await interceptor.ready;
  // In-band requests: the signed notices the interceptor took off a client connection (and answered).
  let inbandTaken = 0;
  // When each in-band request was taken, and when its answer was committed to steadytext_mailbox.
  let inbandLog = { notices: [] as number[], posts: [] as number[] };
  const rawNotice = interceptor.notice.bind(interceptor);
  interceptor.notice = (...a: Parameters<typeof rawNotice>) => {
    const taken = rawNotice(...a);
    if (taken) { inbandTaken++; inbandLog.notices.push(performance.now()); }
    return taken;
  };
  const proxy = await startProxy({
    listen: { host: '127.0.0.1', port: 0 }, upstream: `postgres://${cluster.host}:${cluster.port}/postgres?sslmode=disable`,
    maxMessageBytes: 64 * 1024 * 1024, shutdownGraceMs: 1000, connectTimeoutMs: 3000, logger: log, interceptor,
  });
  cleanups.push(() => proxy.close(100));
  const pu = new URL(directUrl);
  pu.hostname = proxy.address.host;
  pu.port = String(proxy.address.port);
  const proxyUrl = pu.toString();

  // Time every write into steadytext_cache (prefetch: one per batch as they finish; rewrite: one per answer).
  const db = databases.get(database);
  const rawStore = db.store.bind(db);
  // Queries on the proxy's service pool (mailbox answers, large objects, counters, logs; not the cache stores).
  let serviceQueries = 0;
  const rawPoolQuery = db.pool.query.bind(db.pool) as (...a: unknown[]) => unknown;
  db.pool.query = ((...a: unknown[]) => {
    serviceQueries++;
    const r = rawPoolQuery(...a);
    if (typeof a[0] === 'string' && /^\s*INSERT INTO \S*steadytext_mailbox/.test(a[0])) {
      (r as Promise<unknown>).then(() => inbandLog.posts.push(performance.now()), () => {});
    }
    return r;
  }) as typeof db.pool.query;
  let storeCalls: StoreCall[] = [];
  let storesInFlight = 0;
  db.store = async (entries) => {
    const c: StoreCall = { entries: entries.length, start: performance.now(), end: 0, ok: false };
    storeCalls.push(c);
    storesInFlight++;
    try { await rawStore(entries); c.ok = true; } finally { c.end = performance.now(); storesInFlight--; }
  };

  const clients: pg.Client[] = [];
  const connect = async (url: string) => {
    const c = new pg.Client(url);
    c.on('error', (e) => progress(`client error: ${e.message}`));
    await c.connect();
    clients.push(c);
    return c;
  };
  cleanups.push(() => Promise.all(clients.map((c) => c.end().catch(() => {}))));
  const direct = await connect(directUrl);
  const viaProxy = await connect(proxyUrl);

  // ---- Data.
  const texts = descriptions(ROWS);
  const words = texts.map((t) => t.split(' ').length);
  await direct.query('CREATE TABLE t (id int PRIMARY KEY, body text NOT NULL, emb vector(1024))');
  await direct.query('INSERT INTO t (id, body) SELECT i, b FROM unnest($1::text[]) WITH ORDINALITY AS x(b, i)', [texts]);
  await direct.query('VACUUM ANALYZE t');
  const chars = texts.map((t) => t.length);
  progress(`table t: ${ROWS} distinct descriptions, ${Math.min(...words)}-${Math.max(...words)} words (mean ${f(words.reduce((a, b) => a + b) / ROWS)}), mean ${f(chars.reduce((a, b) => a + b) / ROWS, 0)} chars`);

  // Install the objects and load the embedding model before anything is timed.
  progress('loading the embedding model and installing the steadytext objects...');
  await viaProxy.query("SELECT steadytext_embed('warm-up: not one of the rows')");

  const resetCaches = async () => {
    await db.flush(); // callbacks store their answers after answering: a late write must not land in the next phase
    while (storesInFlight) await new Promise((r) => setTimeout(r, 50));
    engine.clearCache();
    await direct.query('TRUNCATE steadytext_cache');
    interceptor.forgetStored(); // otherwise it would leave the texts it stored before to callbacks
    probe = newProbe();
    storeCalls = [];
  };
  const reset = async () => {
    await resetCaches();
    await direct.query('UPDATE t SET emb = NULL');
    await direct.query('VACUUM ANALYZE t');
    await direct.query('VACUUM steadytext_cache');
    probe = newProbe();
    storeCalls = [];
  };
  const nullCount = async () => Number((await direct.query('SELECT count(*) FROM t WHERE emb IS NULL')).rows[0].count);
  const paths = (p: EmbedProbe) => [...p.byPath].map(([k, v]) => `${k} ${v}`).concat([...p.failed].map(([k, v]) => `FAILED ${k} ${v}`)).join(', ');

  interface Phase { name: string; seconds: number; cpu: number; others: number; missing: number; note: string }
  const phases: Phase[] = [];
  // CPU seconds per wall second of this process, and of every other process (PostgreSQL included): a
  // phase slower than the engine with `others` high was crowded out; with both low, it left cores idle.
  const clock = () => {
    const t = performance.now(), c = process.cpuUsage(), m = machineBusy();
    return () => {
      const wall = performance.now() - t, d = process.cpuUsage(c), ours = (d.user + d.system) / 1000 / wall;
      return { seconds: wall / 1000, cpu: ours, others: Math.max(0, (machineBusy() - m) / wall - ours) };
    };
  };
  const ok = (p: EmbedProbe) => [...p.byPath.values()].reduce((a, b) => a + b, 0);

  // (c) engine alone.
  const engineRun = async (label: string) => {
    await reset();
    progress(`[${label}] engine.embedMany on ${ROWS} texts...`);
    const stop = ticker(() => `${ok(probe)}/${ROWS} embedded`);
    const elapsed = clock();
    const vectors = await engine.embedMany(texts, { seed: SEED, timeoutMs: 0 }).finally(stop);
    phases.push({ name: label, ...elapsed(), missing: 0, note: paths(probe) });
    return vectors;
  };
  const reference = await engineRun('engine.embedMany (1)');

  // (a) bulk: one UPDATE, prefetch path; and where its time went, on the timeline the probes recorded.
  const bulkSql = 'UPDATE t SET emb = steadytext_embed(body) WHERE emb IS NULL';
  const breakdown: string[][] = [];
  const bulk = async (label: string) => {
    await reset();
    progress(`[${label}] ${bulkSql} ...`);
    const stop = ticker(() => `${ok(probe)}/${ROWS} embedded (${paths(probe)}), ${storeCalls.length} store call(s)`);
    const elapsed = clock();
    const t0 = performance.now();
    const result = await viaProxy.query(bulkSql).finally(stop);
    const t1 = performance.now();
    const p = probe, stores = storeCalls;
    phases.push({ name: label, ...elapsed(), missing: await nullCount(), note: `${result.rowCount} rows; ${paths(p)}` });
    // The prefetch stores its answers in batches while the engine works on the next ones: only the store
    // time after the last embedding adds to the statement's time.
    const embedEnd = p.last ?? p.first ?? t0;
    const storeEnd = Math.max(embedEnd, ...stores.map((s) => s.end));
    const storeSum = stores.reduce((a, s) => a + (s.end - s.start), 0);
    const storeEntries = stores.reduce((a, s) => a + s.entries, 0);
    const seg = (what: string, from: number, to: number, note = '') => breakdown.push([what, f((to - from) / 1000, 2), f((100 * (to - from)) / (t1 - t0)), note]);
    breakdown.push([label, '', '', '']);
    seg('  parse + derived SELECT + config (until first embed)', t0, p.first ?? t0);
    seg('  engine: prefetch embeddings', p.first ?? t0, embedEnd, `${p.byPath.get('session') ?? 0} ok${p.failed.size ? `, ${[...p.failed].map(([k, v]) => `${v} ${k}`).join(', ')}` : ''}`);
    seg('  storing into steadytext_cache, after the last embedding', embedEnd, storeEnd,
      `${stores.length} batch(es), ${storeEntries} entries, ${f(storeSum / 1000, 2)} s in all${stores.every((s) => s.ok) ? '' : ', some FAILED'}`);
    seg('  UPDATE upstream (per-row lookups, callbacks)', storeEnd, t1, `${p.byPath.get('callback') ?? 0} daemon callbacks`);
    return verify(direct, reference, SAMPLE);
  };
  const bulkCheck = await bulk('bulk UPDATE via proxy');
  if (BULK_TIMEOUT_MS !== undefined) {
    // What-if: the prefetch's requests all wait in the engine queue under daemon_timeout_ms; give them room.
    await viaProxy.query(`SELECT steadytext_config_set('daemon_timeout_ms', '${BULK_TIMEOUT_MS}')`);
    await bulk(`bulk UPDATE via proxy, daemon_timeout_ms ${BULK_TIMEOUT_MS}`);
    await viaProxy.query(`SELECT steadytext_config_set('daemon_timeout_ms', '30000')`);
  }

  // The same statement's parts alone: the derived SELECT, and the UPDATE with every answer already cached.
  await loadParser();
  const parsed = findCalls(Buffer.from(bulkSql), { standardConformingStrings: true });
  const plan = isParseFailure(parsed) ? null : derivePrefetch(Buffer.from(bulkSql), parsed[0]);
  await direct.query('UPDATE t SET emb = NULL');
  await direct.query('VACUUM ANALYZE t');
  let derivedMs = NaN;
  if (plan) { const t = performance.now(); await direct.query(plan.sql); derivedMs = performance.now() - t; }
  const tu = performance.now();
  await direct.query(bulkSql); // straight to PostgreSQL: every row finds its answer in steadytext_cache
  const warmUpdateMs = performance.now() - tu;
  // Store cost alone: the bulk entries written again into an empty steadytext_cache.
  const storeEntries = (await direct.query('SELECT cache_key, operation, model_identity, params, prompt, embedding::text AS embedding FROM steadytext_cache')).rows;
  const entries: CacheEntry[] = storeEntries.map((r) => ({ op: 'embed', identity: r.model_identity, text: r.prompt, seed: r.params.seed, embedding: r.embedding }));
  await direct.query('TRUNCATE steadytext_cache');
  let ts = performance.now();
  await rawStore(entries);
  const storeMs = performance.now() - ts;
  // Against one INSERT per entry in a transaction, as Database.store used to write them.
  await direct.query('TRUNCATE steadytext_cache');
  ts = performance.now();
  await direct.query('BEGIN');
  for (const e of entries) await storeCacheEntry(direct, e);
  await direct.query('COMMIT');
  const oneByOneMs = performance.now() - ts;

  // (b) one statement per row, rewrite path.
  const perRowSql = 'UPDATE t SET emb = steadytext_embed($1) WHERE id = $2';
  const perRow = async (label: string, n: number) => {
    await reset();
    const cs = [viaProxy, ...(await Promise.all(Array.from({ length: n - 1 }, () => connect(proxyUrl))))];
    progress(`[${label}] ${perRowSql} x ${ROWS} from ${n} client(s)...`);
    let next = 0, done = 0;
    const stop = ticker(() => `${done}/${ROWS} rows (${f(done / ((performance.now() - t0) / 1000))} rows/s)`);
    const t0 = performance.now(), elapsed = clock();
    await Promise.all(cs.map(async (c) => {
      while (next < ROWS) {
        const i = next++;
        await c.query(perRowSql, [texts[i], i + 1]);
        done++;
      }
    })).finally(stop);
    phases.push({ name: label, ...elapsed(), missing: await nullCount(), note: paths(probe) });
    await Promise.all(cs.slice(1).map((c) => c.end()));
    return verify(direct, reference, SAMPLE);
  };
  const perRowCheck = await perRow(`per-row UPDATE via proxy, 1 client`, 1);
  const perRowNCheck = await perRow(`per-row UPDATE via proxy, ${CLIENTS} clients`, CLIENTS);

  // ---- Calls the proxy cannot see: steadytext_embed inside PL/pgSQL. On a miss the function asks the proxy
  // itself, through dblink and the daemon endpoint or in-band (a signed notice on the client's own connection,
  // answered through steadytext_mailbox), as steadytext_config callback_transport says.
  await direct.query('CREATE FUNCTION wrap_embed(t text) RETURNS vector LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_embed(t); END $$');
  type Transport = 'dblink' | 'inband';
  const setTransport = (t: Transport | 'auto') => viaProxy.query(`SELECT steadytext_config_set('callback_transport', '${t}')`);
  const HELPERS = ['_steadytext_dblink_call', '_steadytext_inband_call', '_steadytext_mailbox_take', '_steadytext_inband_lo_take'];
  interface Counts { dblink: number; inband: number; service: number; fn: Map<string, number> }
  const counts = async (): Promise<Counts> => {
    // This session's function statistics are flushed before it answers, so the direct connection sees them.
    await viaProxy.query('SELECT pg_stat_force_next_flush()');
    const { rows } = await direct.query('SELECT funcname, calls FROM pg_stat_user_functions WHERE funcname = ANY($1)', [HELPERS]);
    return { dblink: daemon.stats().requests, inband: inbandTaken, service: serviceQueries, fn: new Map(rows.map((r) => [r.funcname as string, Number(r.calls)])) };
  };
  interface Delta { dblink: number; inband: number; service: number; polls: number }
  const delta = (a: Counts, b: Counts): Delta => {
    const calls = (k: string) => (b.fn.get(k) ?? 0) - (a.fn.get(k) ?? 0);
    return { dblink: b.dblink - a.dblink, inband: b.inband - a.inband, service: b.service - a.service, polls: calls('_steadytext_mailbox_take') + calls('_steadytext_inband_lo_take') };
  };
  const sum = (a: Delta | undefined, b: Delta): Delta => (a ? { dblink: a.dblink + b.dblink, inband: a.inband + b.inband, service: a.service + b.service, polls: a.polls + b.polls } : b);
  const pollsEach = (d: Delta) => (d.inband ? f(d.polls / d.inband, 1) : '-');

  // (e) per call: distinct cold texts, in chunks; each chunk runs every mode from cold caches, the order
  // alternating so that a drift in the machine's load does not favour one. After a transport's misses, the
  // same texts again through the wrapper are steadytext_cache hits (no request at all).
  const missTexts = descriptions(ROWS + MISSES).slice(ROWS); // the first ROWS are the table's
  const MODES = ['engine', 'visible', 'dblink', 'inband'] as const;
  type Mode = (typeof MODES)[number];
  const missMs = new Map<Mode, number[]>(MODES.map((m) => [m, []]));
  // Per call, the time inside engine.embed, the rest (the transport's), and for in-band the time from the answer's
  // commit to the function's return: what the poll's sleep adds.
  const engineMs = new Map<Mode, number[]>(MODES.map((m) => [m, []]));
  const outsideMs = new Map<Mode, number[]>(MODES.map((m) => [m, []]));
  const pollWaitMs: number[] = [];
  const hitMs = new Map<Transport, number[]>([['dblink', []], ['inband', []]]);
  const callDeltas = new Map<string, Delta>();
  // Small chunks, so that a drift in the machine's load (which moves the engine's time by more than the transports
  // differ) is spread over many alternations rather than falling on one mode's few.
  const CHUNK = Math.min(25, Math.ceil(MISSES / 4));
  progress(`[calls the proxy cannot see] ${MISSES} cold texts per mode (engine, visible call, wrapper with dblink, wrapper in-band), then hits...`);
  const stopCalls = ticker(() => MODES.map((m) => `${m} ${missMs.get(m)!.length}`).join(', ') + ` of ${MISSES}`);
  for (let c = 0, round = 0; c < MISSES; c += CHUNK, round++) {
    const chunk = missTexts.slice(c, c + CHUNK);
    for (const m of round % 2 ? [...MODES].reverse() : MODES) {
      await resetCaches();
      if (m === 'dblink' || m === 'inband') await setTransport(m);
      const before = await counts();
      for (const text of chunk) {
        probe = newProbe();
        inbandLog = { notices: [], posts: [] };
        const t = performance.now();
        if (m === 'engine') await engine.embed({ text, seed: SEED });
        else if (m === 'visible') await viaProxy.query('SELECT steadytext_embed($1)', [text]);
        else await viaProxy.query('SELECT wrap_embed($1)', [text]);
        const end = performance.now();
        missMs.get(m)!.push(end - t);
        engineMs.get(m)!.push(probe.busy);
        outsideMs.get(m)!.push(end - t - probe.busy);
        if (m === 'inband' && inbandLog.posts.length === 1) pollWaitMs.push(end - inbandLog.posts[0]);
      }
      callDeltas.set(`miss ${m}`, sum(callDeltas.get(`miss ${m}`), delta(before, await counts())));
      if (m !== 'dblink' && m !== 'inband') continue;
      await db.flush(); // the answers' steadytext_cache rows, written after answering
      const hitsBefore = await counts();
      for (const text of chunk) {
        const t = performance.now();
        await viaProxy.query('SELECT wrap_embed($1)', [text]);
        hitMs.get(m)!.push(performance.now() - t);
      }
      callDeltas.set(`hit ${m}`, sum(callDeltas.get(`hit ${m}`), delta(hitsBefore, await counts())));
    }
  }
  stopCalls();

  // (f) a whole table through the wrapper, one request per row, per transport.
  const wrapSql = 'UPDATE t SET emb = wrap_embed(body) WHERE emb IS NULL';
  // A statement asking one row at a time: its time outside the engine per row and, in-band, from each answer's
  // commit to the next request (the poll's sleep and the executor's work on the row between them).
  const serialNotes: string[] = [];
  const serialNote = (label: string, seconds: number, rows: number) => {
    const outside = (seconds * 1000 - probe.busy) / rows;
    // Gathered (the statement stopped, its calls computed together, run again): engine time overlaps, no per-row split.
    if (outside < 0) return `  ${label}: calls computed together (engine time ${f(probe.busy / 1000, 2)} s over ${f(seconds, 2)} s of statement)`;
    const { notices, posts } = inbandLog;
    const gaps = posts.slice(0, notices.length - 1).map((p, i) => notices[i + 1] - p);
    const g = gaps.length ? stats(gaps) : undefined;
    return `  ${label}: outside the engine ${f(outside, 2)} ms/row` + (g
      ? `; answer committed -> next request: mean ${f(g.mean, 2)}, p50 ${f(g.p50, 2)}, max ${f(g.max, 2)} ms (${f(g.mean * gaps.length / 1000, 2)} s of ${f(seconds, 2)} s)`
      : '');
  };
  const wrapped = async (transport: Transport) => {
    await setTransport(transport);
    await reset();
    const label = `wrapper UPDATE via proxy, ${transport}`;
    progress(`[${label}] ${wrapSql} ...`);
    const before = await counts();
    const stop = ticker(() => `${ok(probe)}/${ROWS} embedded (${paths(probe)})`);
    inbandLog = { notices: [], posts: [] };
    const elapsed = clock();
    const result = await viaProxy.query(wrapSql).finally(stop);
    const e = elapsed();
    const d = delta(before, await counts());
    phases.push({ name: label, ...e, missing: await nullCount(), note: `${result.rowCount} rows; ${paths(probe)}; requests: dblink ${d.dblink}, in-band ${d.inband} (${pollsEach(d)} polls each)` });
    serialNotes.push(serialNote(label, e.seconds, ROWS));
    return verify(direct, reference, SAMPLE);
  };
  const wrapDblinkCheck = await wrapped('dblink');
  const wrapInbandCheck = await wrapped('inband');

  // (g) a BEFORE INSERT trigger embedding each row in-band, against the same rows inserted with SQL the
  // proxy reads ahead (prefetch path, no request from the database at all).
  const TRIG = Math.min(TRIGGER_ROWS, ROWS);
  await direct.query(`CREATE TABLE t_trigger (id int PRIMARY KEY, body text NOT NULL, emb vector(1024));
    CREATE TABLE t_prefetch (LIKE t_trigger INCLUDING ALL);
    CREATE FUNCTION embed_body() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.emb := steadytext_embed(NEW.body); RETURN NEW; END $$;
    CREATE TRIGGER embed_body BEFORE INSERT ON t_trigger FOR EACH ROW EXECUTE FUNCTION embed_body()`);
  interface InsertRun { name: string; sql: string; seconds: number; cpu: number; others: number; d: Delta; stores: number; embeds: string; check: Check }
  const insertRuns: InsertRun[] = [];
  const insert = async (name: string, table: string, sql: string) => {
    await setTransport('inband');
    await resetCaches();
    await direct.query(`TRUNCATE ${table}`);
    progress(`[${name}] ${sql} ...`);
    const before = await counts();
    const stop = ticker(() => `${ok(probe)}/${TRIG} embedded (${paths(probe)})`);
    inbandLog = { notices: [], posts: [] };
    const elapsed = clock();
    await viaProxy.query(sql).finally(stop);
    const e = elapsed();
    if (table === 't_trigger') serialNotes.push(serialNote(`INSERT, ${name}`, e.seconds, TRIG)); // the prefetch embeds concurrently
    await db.flush();
    const d = delta(before, await counts());
    insertRuns.push({ name, sql, ...e, d, stores: storeCalls.length, embeds: paths(probe), check: await verify(direct, reference.slice(0, TRIG), SAMPLE, table) });
  };
  await insert(`trigger, in-band`, 't_trigger', `INSERT INTO t_trigger (id, body) SELECT id, body FROM t WHERE id <= ${TRIG}`);
  await insert(`prefetchable SQL`, 't_prefetch', `INSERT INTO t_prefetch (id, body, emb) SELECT id, body, steadytext_embed(body) FROM t WHERE id <= ${TRIG}`);
  await setTransport('auto');
  await engineRun('engine.embedMany (2)');

  // ---- 4: round trip of cached calls.
  progress(`[latency] warming, then ${CALLS} rounds of each query, interleaved...`);
  // Computed through the proxy first, so that its steadytext_cache row is written (hits are not).
  await viaProxy.query("SELECT steadytext_embed('warm text')");
  // Without values pg uses the simple protocol (the rewrite's literal splice); with them, Parse/Bind.
  const kinds: { name: string; client: pg.Client; q: pg.QueryConfig }[] = [
    { name: 'SELECT 1, direct to PostgreSQL', client: direct, q: { text: 'SELECT 1' } },
    { name: 'SELECT 1 via proxy', client: viaProxy, q: { text: 'SELECT 1' } },
    { name: "steadytext_embed('warm text') via proxy", client: viaProxy, q: { text: "SELECT steadytext_embed('warm text')" } },
    { name: 'steadytext_embed($1) bound, via proxy', client: viaProxy, q: { text: 'SELECT steadytext_embed($1)', values: ['warm text'] } },
    { name: "steadytext_generate('warm prompt', 16) via proxy", client: viaProxy, q: { text: "SELECT steadytext_generate('warm prompt', 16)" } },
    // The database's share: the proxy forwards the statement unchanged, and the function finds its cache row.
    { name: "steadytext_embed('warm text') direct (steadytext_cache hit)", client: direct, q: { text: "SELECT steadytext_embed('warm text')" } },
  ];
  for (let i = 0; i < 50; i++) for (const k of kinds) await k.client.query(k.q);
  while (storesInFlight) await new Promise((r) => setTimeout(r, 50));
  storeCalls = [];
  const samples = kinds.map(() => [] as number[]);
  const stopRounds = ticker(() => `${samples[0].length}/${CALLS} rounds`);
  for (let i = 0; i < CALLS; i++) {
    for (let k = 0; k < kinds.length; k++) {
      const t = performance.now();
      await kinds[k].client.query(kinds[k].q);
      samples[k].push(performance.now() - t);
    }
  }
  stopRounds();
  const latencyStores = storeCalls.length;
  // Proxy-side CPU of a cached embed that is not the database's: formatting 1024 floats as pgvector text.
  const vt = (() => { const v = reference[0], n = 2000, t = performance.now(); for (let i = 0; i < n; i++) vectorText(v); return (performance.now() - t) / n; })();

  // ---- Report.
  const engineRuns = phases.filter((p) => p.name.startsWith('engine'));
  const engineRate = ROWS / (engineRuns.reduce((a, p) => a + p.seconds, 0) / engineRuns.length);
  const out: string[] = [];
  out.push(`\npg-steadytext bench:sql — preset ${PRESET}, ${ROWS} rows (${Math.min(...words)}-${Math.max(...words)} words each), ${engine.status().cpu.embeddingContexts} embedding contexts x ${engine.status().cpu.threads} thread(s)`);
  const la = (l: number[]) => l.map((x) => x.toFixed(2)).join(' ');
  out.push(`load average (1/5/15 min) at start ${la(loadAtStart)}, at the end ${la(loadavg())}, on ${availableParallelism()} CPUs\n`);
  out.push(table(['throughput (cold caches)', 'seconds', 'rows/s', 'x engine', 'our CPU/s', 'others CPU/s', 'rows left NULL', 'embeds by path'],
    phases.map((p) => [p.name, f(p.seconds, 2), f(ROWS / p.seconds, 2), f(ROWS / p.seconds / engineRate, 2), f(p.cpu, 2), f(p.others, 2), String(p.missing), p.note])));
  out.push(`x engine: against both engine runs' mean time (${f(engineRate, 2)} rows/s); goal bulk >= 0.9x. CPU/s: CPU seconds per second of this process,`);
  out.push(`and of all other processes (PostgreSQL and other users of the machine), out of ${availableParallelism()} CPUs.\n`);
  out.push(table(['bulk UPDATE: where the time went', 'seconds', '% of total', 'note'], breakdown));
  out.push(`  derived SELECT alone (direct): ${f(derivedMs, 1)} ms   ${plan ? plan.sql : '(no prefetch plan)'}`);
  out.push(`  the UPDATE alone with steadytext_cache warm (direct, no proxy): ${f(warmUpdateMs, 0)} ms (${f((1000 * warmUpdateMs) / ROWS, 0)} µs/row)`);
  const perEntry = (ms: number) => `${f(ms, 0)} ms (${f((1000 * ms) / Math.max(1, entries.length), 0)} µs/entry)`;
  out.push(`  Database.store of ${entries.length} entries alone: ${perEntry(storeMs)}; one INSERT per entry in a transaction: ${perEntry(oneByOneMs)}\n`);

  const engineCall = stats(missMs.get('engine')!).mean;
  const callRow = (name: string, ms: number[], d?: Delta, m?: Mode) => {
    const s = stats(ms), mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const eng = m ? f(mean(engineMs.get(m)!), 2) : '-', out = m ? stats(outsideMs.get(m)!) : undefined;
    return [name, String(ms.length), f(s.mean, 2), f(s.p50, 2), f(s.p99, 2), f(s.max, 2), f(s.mean / engineCall, 2), eng, out ? f(out.mean, 2) : '-', out ? f(out.p50, 2) : '-',
      d ? String(d.dblink) : '-', d ? String(d.inband) : '-', d ? pollsEach(d) : '-'];
  };
  out.push(table(['call the proxy cannot see (ms per call)', 'calls', 'mean', 'p50', 'p99', 'max', 'x engine', 'in engine', 'outside', 'outside p50', 'dblink req', 'in-band req', 'polls/req'], [
    callRow('engine.embed, one cold text (no database)', missMs.get('engine')!, undefined, 'engine'),
    callRow('steadytext_embed($1) via proxy, miss (visible: rewrite)', missMs.get('visible')!, callDeltas.get('miss visible'), 'visible'),
    callRow('wrap_embed($1) via proxy, miss, dblink', missMs.get('dblink')!, callDeltas.get('miss dblink'), 'dblink'),
    callRow('wrap_embed($1) via proxy, miss, in-band', missMs.get('inband')!, callDeltas.get('miss inband'), 'inband'),
    callRow('wrap_embed($1) via proxy, hit, transport dblink', hitMs.get('dblink')!, callDeltas.get('hit dblink')),
    callRow('wrap_embed($1) via proxy, hit, transport inband', hitMs.get('inband')!, callDeltas.get('hit inband')),
  ]));
  out.push(`  ${MISSES} distinct cold texts per mode, sequential from one client, in chunks of ${CHUNK}, each chunk every mode from cold caches`);
  out.push('  (engine cache cleared, steadytext_cache truncated), order alternating; hits: the same texts again. x engine: mean against');
  out.push('  engine.embed\'s mean. in engine: mean time inside engine.embed during the call; outside: the rest (the transport).');
  out.push('  polls/req: calls of the in-band answer-taking helper per request (pg_stat_user_functions); _steadytext_inband_call');
  out.push('  waits on the standing lock the proxy holds for a backend that asked before, and looks once it is let go; a first request');
  out.push('  looks, naps 0.5, 1, 2 ms until the proxy holds the request\'s advisory lock, then waits on that.');
  if (pollWaitMs.length) {
    const w = stats(pollWaitMs);
    out.push(`  in-band miss, answer committed to steadytext_mailbox -> function returned: mean ${f(w.mean, 2)}, p50 ${f(w.p50, 2)}, p99 ${f(w.p99, 2)}, max ${f(w.max, 2)} ms.`);
  }
  const ratio = (k: 'mean' | 'p50') => stats(missMs.get('inband')!)[k] / stats(missMs.get('dblink')!)[k];
  const met = (ok: boolean) => (ok ? 'met' : 'NOT met');
  out.push(`  goal: an in-band miss no slower than a dblink miss: in-band/dblink ${f(ratio('mean'), 2)}x (mean), ${f(ratio('p50'), 2)}x (p50): ${met(ratio('mean') <= 1)}.`);
  const wrapX = (t: Transport) => { const p = phases.find((x) => x.name === `wrapper UPDATE via proxy, ${t}`)!; return ROWS / p.seconds / engineRate; };
  out.push(`  goal: bulk through the wrapper >= 0.9x the engine (throughput table): dblink ${f(wrapX('dblink'), 2)}x: ${met(wrapX('dblink') >= 0.9)}, in-band ${f(wrapX('inband'), 2)}x: ${met(wrapX('inband') >= 0.9)}.`);
  // The wrapper asks for one row at a time, so it cannot use more than one embedding context: its ceiling.
  const serialRate = 1000 / engineCall;
  out.push(`  one text at a time the engine gives ${f(serialRate, 2)} rows/s (${f(serialRate / engineRate, 2)}x embedMany): the wrapper UPDATE is ${f(wrapX('dblink') * engineRate / serialRate, 2)}x that`);
  out.push(`  with dblink, ${f(wrapX('inband') * engineRate / serialRate, 2)}x in-band.`);
  out.push(...serialNotes.filter((n) => n.includes('wrapper')), '');

  out.push(table([`INSERT of ${TRIG} rows via proxy (cold caches)`, 'seconds', 'rows/s', 'x engine', 'in-band req', 'polls/req', 'dblink req', 'service queries', 'store batches', 'our CPU/s', 'others CPU/s', 'embeds by path'],
    insertRuns.map((r) => [r.name, f(r.seconds, 2), f(TRIG / r.seconds, 2), f(TRIG / r.seconds / engineRate, 2), String(r.d.inband), pollsEach(r.d), String(r.d.dblink), String(r.d.service), String(r.stores), f(r.cpu, 2), f(r.others, 2), r.embeds])));
  for (const r of insertRuns) out.push(`  ${r.name}: ${r.sql}`);
  const [trig, pre] = insertRuns;
  out.push(`  the trigger (BEFORE INSERT, NEW.emb := steadytext_embed(NEW.body), callback_transport inband) took ${f(trig.seconds / pre.seconds, 2)}x the prefetchable INSERT's time,`);
  out.push(`  with ${trig.d.inband} in-band round trips (a signed notice to the proxy, the answer committed back through the service pool; from`);
  out.push('  the second miss on, the statement is stopped, its calls gathered in a rolled-back dry run, computed together, and run again)');
  out.push(`  against ${pre.d.inband + pre.d.dblink} for the prefetchable INSERT, which the proxy embeds before the statement runs. service queries: on the`);
  out.push('  proxy\'s service pool (mailbox answers, counters, logs); store batches: steadytext_cache writes.');
  out.push(...serialNotes.filter((n) => n.includes('INSERT')), '');
  out.push(table(['cached round trip (ms)', 'mean', 'p50', 'p99', 'max'],
    kinds.map((k, i) => { const s = stats(samples[i]); return [k.name, f(s.mean, 3), f(s.p50, 3), f(s.p99, 3), f(s.max, 3)]; })));
  out.push(`  ${CALLS} sequential calls of each from one client, interleaved; goal: a cached call within 1 ms.`);
  out.push(`  Database.store calls during them: ${latencyStores} (a cached answer should not write its steadytext_cache row again).`);
  out.push(`  vectorText(1024 floats), which the proxy runs on every embed answer, alone: ${f(vt, 3)} ms\n`);
  out.push(table(['correctness (sample vs engine)', 'rows checked', 'pgvector text equal', 'float32 equal'],
    [['bulk UPDATE', bulkCheck], ['per-row, 1 client', perRowCheck], [`per-row, ${CLIENTS} clients`, perRowNCheck],
      ['wrapper UPDATE, dblink', wrapDblinkCheck], ['wrapper UPDATE, in-band', wrapInbandCheck],
      ...insertRuns.map((r) => [`INSERT, ${r.name}`, r.check])].map(([n, c]) => {
      const r = c as Check;
      return [n as string, String(r.checked), `${r.textEqual}/${r.checked}`, `${r.floatEqual}/${r.checked}`];
    })));
  process.stdout.write(out.join('\n') + '\n');
  const bad = [bulkCheck, perRowCheck, perRowNCheck, wrapDblinkCheck, wrapInbandCheck, ...insertRuns.map((r) => r.check)].some((c) => c.textEqual !== c.checked || c.floatEqual !== c.checked);
  if (bad) process.exitCode = 1;
}

/** CPU milliseconds the whole machine has spent busy so far (Linux /proc/stat; 0 elsewhere). */
function machineBusy(): number {
  try {
    const [, ...v] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = v;
    return ((user + nice + system + irq + softirq + steal) * 1000) / 100; // USER_HZ is 100 on Linux
  } catch { return 0; }
}

interface Check { checked: number; textEqual: number; floatEqual: number }
/** Stored vectors of evenly spaced rows of `table` (ids 1..reference.length) against the engine's, as pgvector prints them and as float32. */
async function verify(c: pg.Client, reference: Float32Array[], sample: number, table = 't'): Promise<Check> {
  const n = reference.length, k = Math.min(sample, n);
  const ids = Array.from({ length: k }, (_, i) => Math.floor((i * n) / k) + 1);
  const { rows } = await c.query(
    `SELECT x.id, t.emb::text AS stored, x.v::vector::text AS engine
       FROM unnest($1::int[], $2::text[]) AS x(id, v) LEFT JOIN ${table} t USING (id) ORDER BY x.id`,
    [ids, ids.map((id) => vectorText(reference[id - 1]))]);
  let textEqual = 0, floatEqual = 0, reported = 0;
  for (const r of rows) {
    const ref = reference[r.id - 1];
    const got = r.stored === null ? null : parseVectorText(r.stored);
    const sameText = r.stored !== null && r.stored === r.engine;
    const sameFloats = !!got && got.length === ref.length && got.every((x, i) => Object.is(x, ref[i]));
    if (sameText) textEqual++;
    if (sameFloats) floatEqual++;
    if (!(sameText && sameFloats) && reported++ < 3) progress(`  row ${r.id}: ${r.stored === null ? 'emb is NULL' : 'stored vector differs from the engine\'s'}`);
  }
  return { checked: rows.length, textEqual, floatEqual };
}

main().catch((e) => { process.exitCode = 1; progress(`bench failed: ${(e as Error).stack ?? e}`); }).finally(cleanup);
