// The engine's bookkeeping: cache and keys, model identity, lifecycle, status, fairness, CPU sizing.
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ResultCache } from '../../inference/cache.js';
import { callKey, createEngine, type Engine, type EngineOptions } from '../../inference/engine.js';
import { engineOverIpc, serveEngineOverIpc, type IpcChannel } from '../../inference/engine-ipc.js';
import { CpuSlots, planCpu } from '../../inference/llama.js';
import { modelFileIdentity } from '../../inference/registry.js';
import { entryKey } from '../../sql/store.js';
import { tinyModels } from '../fixtures/models.js';

let models: { generation: string; embedding: string };
let dir: string;
const engines: Engine[] = [];
const make = (o: EngineOptions = {}) => {
  const e = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, cacheDir: dir, ...o });
  engines.push(e);
  return e;
};
const bytes = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);

beforeAll(async () => {
  models = await tinyModels();
  dir = await mkdtemp(join(tmpdir(), 'pgst-engine-'));
});
afterAll(async () => {
  await Promise.all(engines.map((e) => e.close()));
  await rm(dir, { recursive: true, force: true });
});

describe('cache keys and model identity', () => {
  const base = { op: 'generate' as const, identity: 'm', prompt: 'p', maxTokens: 10, seed: 1, temperature: 0.5 };
  it('callKey is a stable hex digest that changes with every output-shaping input', () => {
    const k = callKey(base);
    expect(k).toMatch(/^[0-9a-f]{64}$/);
    // Golden values: steadytext_cache holds these keys (steadytext_cache_key computes them in SQL), so they must not drift by accident.
    expect(k).toBe('a6ad82182fffebc173eaac80a5fe9a3c4bc70a34e0394090f72089a20ce38fec');
    expect(callKey({ op: 'embed', identity: 'm', text: 'p', seed: 1 })).toBe('5c48ed7c5fc9d5ed1c4e662bd02ccd3d07f86e575bc990adecb2c56d397935ab');
    const variants = [{ identity: 'n' }, { prompt: 'q' }, { maxTokens: 11 }, { seed: 2 }, { temperature: 0.6 }, { op: 'generate_stream' as const }]
      .map((d) => callKey({ ...base, ...d }));
    expect(new Set([k, ...variants]).size).toBe(7);
    // The seed is in every key, greedy or not, as steadytext_cache_key has it.
    expect(callKey({ ...base, temperature: 0, seed: 1 })).not.toBe(callKey({ ...base, temperature: 0, seed: 2 }));
    const emb = { op: 'embed' as const, identity: 'm', text: 'p', seed: 1 };
    expect(callKey(emb)).not.toBe(callKey({ ...emb, seed: 2 }));
    expect(callKey(emb)).not.toBe(k);
  });

  it("the engine's result cache keys a call as steadytext_cache does: entryKey (sql/store.ts) of the same call", async () => {
    const e = make();
    const cache = (e as unknown as { cache: ResultCache }).cache;
    const generation = await e.modelIdentity('generation'), embedding = await e.modelIdentity('embedding');
    const text = await e.generate({ prompt: 'keyed', maxTokens: 4, seed: 7 });
    const entry = { op: 'generate' as const, identity: generation, prompt: 'keyed', maxTokens: 4, seed: 7, temperature: 0, response: text };
    expect(cache.has(entryKey(entry))).toBe(true);
    expect(cache.has(entryKey({ ...entry, seed: 8 }))).toBe(false);
    // Sampling: the temperature's exact bits are in the key.
    await e.generate({ prompt: 'keyed', maxTokens: 4, seed: 7, temperature: 0.7 });
    expect(cache.has(entryKey({ ...entry, temperature: 0.7 }))).toBe(true);
    // A stream's text is keyed as steadytext_generate's: generate_stream finds what generate stored, and the other way round.
    const outcome: { cached?: boolean } = {};
    let streamed = '';
    for await (const piece of e.generateStream({ prompt: 'keyed', maxTokens: 4, seed: 7, outcome })) streamed += piece;
    expect([streamed, outcome.cached]).toEqual([text, true]);
    for await (const _ of e.generateStream({ prompt: 'streamed first', maxTokens: 3 })) { /* drain */ }
    expect(cache.has(entryKey({ ...entry, prompt: 'streamed first', maxTokens: 3, seed: 42 }))).toBe(true);
    await e.embed({ text: 'keyed', seed: 3 });
    expect(cache.has(entryKey({ op: 'embed', identity: embedding, text: 'keyed', seed: 3, embedding: '' }))).toBe(true);
  });

  it('model identity depends on content only, is cheap, and is what the engine reports', async () => {
    const copy = join(dir, 'renamed.gguf');
    await copyFile(models.generation, copy);
    const [a, b] = [await modelFileIdentity(models.generation), await modelFileIdentity(copy)];
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(b).toBe(a);
    expect(await modelFileIdentity(models.embedding)).not.toBe(a);
    const e = make();
    expect(await e.modelIdentity('generation')).toBe(a);
    expect(await e.modelIdentity('generation', 'small')).toBe(a);
    expect(await e.modelIdentity('embedding')).toBe(await modelFileIdentity(models.embedding));
    expect(e.status().models.every((m) => m.state === 'unloaded')).toBe(true); // identity does not load the model
  });
});

describe('result cache', () => {
  it('hits return the same answer, are counted and reported per request; cache: false bypasses it', async () => {
    const e = make();
    const r = { prompt: 'cache me', maxTokens: 16 };
    const miss: { cached?: boolean } = {};
    const first = await e.generate({ ...r, outcome: miss });
    expect(miss.cached).toBe(false);
    for (let i = 0; i < 200; i++) {
      const outcome: { cached?: boolean } = {};
      expect(await e.generate({ ...r, outcome })).toBe(first);
      expect(outcome.cached).toBe(true);
    }
    const bypass: { cached?: boolean } = {};
    expect(await e.generate({ ...r, cache: false, outcome: bypass })).toBe(first);
    expect(bypass.cached).toBe(false);
    const v = await e.embed({ text: 'cache me' });
    v[0] = 42; // callers own what they get back
    const again = await e.embed({ text: 'cache me' });
    expect(again[0]).not.toBe(42);
    expect(bytes(again).equals(bytes(await e.embed({ text: 'cache me', cache: false })))).toBe(true);
    const s = e.status().cache;
    expect(s).toMatchObject({ hits: 201, misses: 2, entries: 2, evictions: 0 });
  });

  it('reports each request\'s cache outcome across the IPC channel too, whatever other callers do meanwhile', async () => {
    const served = make();
    // Two in-process ends that deep-copy every message, as the 'advanced' serialization of a real channel does.
    const listeners = [new Set<(m: unknown) => void>(), new Set<(m: unknown) => void>()];
    const end = (me: 0 | 1): IpcChannel => ({
      send(m) { const copy = structuredClone(m); setImmediate(() => { for (const l of listeners[1 - me]) l(copy); }); },
      onMessage(l) { listeners[me].add(l); return () => void listeners[me].delete(l); },
      onClose: () => () => {},
    });
    const detach = serveEngineOverIpc(served, end(0));
    const remote = engineOverIpc(end(1));
    await remote.ready;
    try {
      const a: { cached?: boolean } = {}, b: { cached?: boolean } = {}, c: { cached?: boolean } = {};
      await remote.embed({ text: 'over ipc', outcome: a });
      // Hits by another caller in between do not turn this caller's miss into a hit.
      const [, v] = await Promise.all([served.embed({ text: 'over ipc' }), remote.embed({ text: 'over ipc too', outcome: b })]);
      expect(v.length).toBe(1024);
      await remote.embed({ text: 'over ipc too', outcome: c });
      expect([a.cached, b.cached, c.cached]).toEqual([false, false, true]);
    } finally {
      await remote.close();
      detach();
    }
  });

  it('is bounded by bytes and evicts the least frecent entries', () => {
    const c = new ResultCache(10_000);
    const hot = 'x'.repeat(1000);
    c.set('hot', hot);
    for (let i = 0; i < 5; i++) c.get('hot');
    for (let i = 0; i < 50; i++) c.set(`cold${i}`, 'y'.repeat(1000));
    const s = c.stats();
    expect(s.bytes).toBeLessThanOrEqual(10_000);
    expect(s.evictions).toBeGreaterThan(40);
    expect(c.get('hot')).toBe(hot);
    c.set('huge', 'z'.repeat(4000)); // over a quarter of the cache: not kept
    expect(c.get('huge')).toBeUndefined();
    expect(new ResultCache(0).enabled).toBe(false);
  });
});

describe('embeddings', () => {
  it('are unit vectors of the configured dimension; a smaller dimension truncates and renormalises', async () => {
    const full = make({ cacheBytes: 0 }), short = make({ cacheBytes: 0, embeddingDimension: 256 });
    const text = 'PostgreSQL database';
    const [a, b] = [await full.embed({ text }), await short.embed({ text })];
    expect(a.length).toBe(1024);
    expect(b.length).toBe(256);
    const norm = (v: Float32Array) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    expect(norm(a)).toBeCloseTo(1, 6);
    expect(norm(b)).toBeCloseTo(1, 6);
    const prefix = norm(a.subarray(0, 256));
    for (let i = 0; i < 256; i++) expect(b[i]).toBeCloseTo(a[i] / prefix, 6);
    const many = await short.embedMany([text, 'other', text]);
    expect(many.map((v) => v.length)).toEqual([256, 256, 256]);
    expect(bytes(many[0]).equals(bytes(b))).toBe(true);
    expect(many[2]).not.toBe(many[0]);
    expect(bytes(many[2]).equals(bytes(b))).toBe(true);
  });
});

describe('lifecycle and status', () => {
  it('loads lazily, unloads, reloads, and reports models, memory and counters', async () => {
    const e = make();
    expect(e.status().running).toBe(true);
    expect(e.modelInfo().filter((m) => m.loaded)).toEqual([]);
    await e.generate({ prompt: 'wake up', maxTokens: 4 });
    const info = e.modelInfo();
    const gen = info.find((m) => m.modelType === 'generation' && m.modelSize === 'small')!;
    expect(gen).toMatchObject({ loaded: true, path: models.generation });
    expect(gen.memoryMb).toBeGreaterThan(0);
    expect(info.find((m) => m.modelType === 'embedding')!.loaded).toBe(false);
    expect(info.map((m) => `${m.modelType}:${m.modelSize}`)).toEqual(['generation:small', 'generation:large', 'embedding:small']);
    await e.load();
    expect(e.modelInfo().filter((m) => m.loaded).length).toBe(2);
    await e.unload();
    expect(e.status().running).toBe(false);
    expect(e.modelInfo().filter((m) => m.loaded)).toEqual([]);
    await e.reload();
    const s = e.status();
    expect(s.running).toBe(true);
    expect(s.models.map((m) => m.state)).toEqual(['loaded', 'loaded']);
    expect(s.models[0]).toMatchObject({ role: 'generation', name: 'small', contexts: s.cpu.generationContexts, requests: 1, errors: 0 });
    expect(s).toMatchObject({ pid: process.pid, requestsProcessed: 1, errorsCount: 0 });
    expect(s.avgLatencyMs).toBeGreaterThan(0);
    // A request while unloading waits and then loads the model again.
    const unloading = e.unload();
    const answer = e.generate({ prompt: 'still there?', maxTokens: 4, cache: false });
    await unloading;
    expect((await answer).length).toBeGreaterThan(0);
    expect(e.status().models[0].state).toBe('loaded');
  });

  it('eager loading, user-named models, structured logs', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({ write(chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb(); } });
    const e = make({ eager: true, logger: pino(sink), models: [{ name: 'mine', role: 'generation', source: models.generation }] });
    expect(e.models().some((m) => m.name === 'mine')).toBe(true);
    const a = await e.generate({ prompt: 'named', maxTokens: 8, modelSize: 'mine' });
    expect(a).toBe(await e.generate({ prompt: 'named', maxTokens: 8, cache: false }));
    expect(e.status().models.map((m) => m.name).sort()).toEqual(['mine', 'small', 'small']);
    const loaded = lines.filter((l) => l.msg === 'model loaded');
    expect(loaded.map((l) => `${String(l.role)}:${String(l.model)}`).sort()).toEqual(['embedding:small', 'generation:mine', 'generation:small']);
    expect(loaded[0]).toMatchObject({ component: 'inference', threads: e.status().cpu.threads });
  });
});

describe('scheduling', () => {
  it('serves callers round-robin, whatever order their requests arrived in', async () => {
    const e = make({ generationContexts: 1, cacheBytes: 0 });
    await e.load({ role: 'generation' });
    const done: string[] = [];
    const req = (caller: string, i: number) => e.generate({ prompt: `request ${i}`, maxTokens: 24, caller }).then(() => done.push(caller));
    await Promise.all([...[0, 1, 2, 3, 4, 5].map((i) => req('A', i)), req('B', 6), req('B', 7)]);
    // A's first request was already running; then turns alternate A, B, A, B before A's backlog.
    expect(done).toEqual(['A', 'A', 'B', 'A', 'B', 'A', 'A', 'A']);
  });

  it('never runs more threads than cores across generation and embeddings', async () => {
    const e = make({ cores: 1, cacheBytes: 0 });
    let peak = 0;
    const timer = setInterval(() => { peak = Math.max(peak, e.status().cpu.busyThreads); }, 1);
    await Promise.all([
      ...Array.from({ length: 6 }, (_, i) => e.generate({ prompt: `p${i}`, maxTokens: 64, caller: `g${i}` })),
      e.embedMany(Array.from({ length: 12 }, (_, i) => `text ${i}`)),
    ]);
    clearInterval(timer);
    expect(peak).toBe(1);
  });

  it('sizes contexts and threads from the cores', () => {
    expect(planCpu({ cores: 2 })).toEqual({ cores: 2, threads: 1, generationContexts: 2, embeddingContexts: 2 });
    expect(planCpu({ cores: 1 })).toEqual({ cores: 1, threads: 1, generationContexts: 1, embeddingContexts: 1 });
    expect(planCpu({ cores: 32 })).toEqual({ cores: 32, threads: 4, generationContexts: 8, embeddingContexts: 8 });
    expect(planCpu({ cores: 4, threads: 2 })).toMatchObject({ generationContexts: 2, embeddingContexts: 2 });
    expect(planCpu({ cores: 2, generationContexts: 3 }).generationContexts).toBe(3);
    expect(planCpu().cores).toBeGreaterThanOrEqual(1);
    const slots = new CpuSlots(2);
    expect([slots.tryAcquire(1), slots.tryAcquire(1), slots.tryAcquire(1)]).toEqual([true, true, false]);
    let woke = 0;
    slots.park(() => woke++);
    slots.release(1);
    expect([woke, slots.busy]).toEqual([1, 1]);
  });
});
