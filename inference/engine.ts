// The inference engine: "a steadytext call with these arguments" in, its answer out. No wire protocol here.
import type { Logger } from 'pino';
import { ResultCache, type CacheStats } from './cache.js';
import { callKey } from './cache-key.js';
import { closeEmbedder, embed as embedText, embeddingContextRam, openEmbedder, type EmbedderLane } from './embedder.js';
import { CancelledError, InferenceError, InferenceFailedError, InvalidArgumentError, TimeoutError, EngineClosedError } from './errors.js';
import { closeGenerator, generate as generateText, openGenerator, type GenerationParams, type GeneratorLane } from './generator.js';
import { CpuSlots, planCpu, type CpuOptions, type CpuPlan } from './llama.js';
import { missingModelsMessage, modelFileIdentity, ModelRegistry, type DownloadProgress, type ModelRole, type ModelSpec, type RegistryOptions } from './registry.js';
import { pullChunks } from './pull-chunks.js';
import { Scheduler, withinRequest, type LaneState, type RequestControl } from './scheduler.js';

export { callKey, cacheKey, type KeyedCall } from './cache-key.js';
export * from './errors.js';
export type { DownloadProgress, ModelRole, ModelSpec } from './registry.js';
export { downloadWaitNote } from './registry.js';
export type { RequestControl } from './scheduler.js';

export const MAX_TOKENS_LIMIT = 8192;
const SEED_MAX = 2 ** 32 - 1;

export interface EngineOptions extends RegistryOptions, CpuOptions {
  /** Length of every embedding (default 1024). Larger native vectors are truncated and renormalised. */
  embeddingDimension?: number;
  /** Tokens of prompt plus answer per generation context (default 4096, capped by the model). */
  generationContextSize?: number;
  /** Prompt tokens evaluated per batch in generation (default 512). */
  generationBatchSize?: number;
  /** Longest embedding input in tokens (default 2048, capped by the model); also its batch size. */
  embeddingContextSize?: number;
  /** Waiting requests per model before OVERLOADED (default 1000). */
  maxQueue?: number;
  /** Default per-request timeout in ms, queueing included (default 300000; 0: none). */
  timeoutMs?: number;
  /** Result cache size in bytes (default 256 MiB; 0 disables it). */
  cacheBytes?: number;
  /** Load the default models at creation instead of on first use. */
  eager?: boolean;
  /**
   * At creation, look for the default models' files: log the missing ones once, and download them in the
   * background when downloads are allowed (autoDownload), so that the first call finds them sooner.
   */
  fetchMissing?: boolean;
  defaultMaxTokens?: number;
  defaultSeed?: number;
  logger?: Logger;
}

export interface RequestOptions extends RequestControl {
  /** A model name: 'small', 'large' or one added in EngineOptions.models (default: defaultModelSize). */
  modelSize?: string | null;
  /** Read and fill the result cache (default true). */
  cache?: boolean;
  /** Filled in by the engine: whether the answer came from the result cache (exact under concurrency, unlike status() counters). */
  outcome?: { cached?: boolean };
}
export interface GenerateRequest extends RequestOptions {
  prompt: string;
  maxTokens?: number | null;
  seed?: number | null;
  /** 0 (default): greedy, the seed does not matter. Above 0: sampling seeded by `seed`. */
  temperature?: number | null;
}
export interface EmbedRequest extends RequestOptions { text: string; seed?: number | null }

export interface ModelStatus {
  role: ModelRole; name: string; source: string; path?: string; state: LaneState;
  contexts: number; threads: number; queued: number; active: number;
  requests: number; errors: number; avgLatencyMs: number;
}
export interface EngineStatus {
  running: boolean; pid: number; uptimeSeconds: number;
  requestsProcessed: number; errorsCount: number; avgLatencyMs: number;
  cpu: CpuPlan & { busyThreads: number }; cache: CacheStats; models: ModelStatus[];
  /** Model files being downloaded, and how far each has come. */
  downloads: DownloadProgress[];
}
/** What a caller may ask of modelIdentity besides the model. */
export interface IdentityOptions {
  /** Ends the wait (a download's included) for the caller; the download itself goes on. */
  signal?: AbortSignal;
  /** Told when the call is about to wait for the model's file to be downloaded. */
  onWait?: (p: DownloadProgress) => void;
}
/** One row of steadytext_model_info. */
export interface ModelInfo { modelType: ModelRole; modelSize: string; loaded: boolean; memoryMb: number; source: string; path: string }

export interface Engine {
  generate(r: GenerateRequest): Promise<string>;
  /** Text chunks as tokens are produced; they concatenate to what generate() returns. Leaving the loop early stops the generation. */
  generateStream(r: GenerateRequest): AsyncIterable<string>;
  embed(r: EmbedRequest): Promise<Float32Array>;
  /** Many texts at once, concurrently; `timeoutMs` bounds the whole batch. */
  embedMany(texts: readonly string[], r?: Omit<EmbedRequest, 'text'>): Promise<Float32Array[]>;
  /** Content identity of a model's file (what cache keys use); resolves (downloads) the file if needed. */
  modelIdentity(role: ModelRole, modelSize?: string | null, opts?: IdentityOptions): Promise<string>;
  /** Load models now: the given one, or the default generation and embedding models. */
  load(which?: { role: ModelRole; modelSize?: string | null }): Promise<void>;
  /** Free every model once its running requests end; later requests load them again. */
  unload(): Promise<void>;
  /** Unload, then load what was loaded (re-reading the files). */
  reload(): Promise<void>;
  status(): EngineStatus;
  modelInfo(): ModelInfo[];
  models(): ModelSpec[];
  clearCache(): void;
  close(): Promise<void>;
}

interface Tally { requests: number; errors: number; latencyMs: number }
interface Slot {
  spec: ModelSpec;
  sched: Scheduler<any>;
  lane?: GeneratorLane | EmbedderLane;
  path?: string;
  identity?: string;
  identifying?: Promise<string>;
  tally: Tally;
}

export function createEngine(options: EngineOptions = {}): Engine {
  return new InferenceEngine(options);
}

class InferenceEngine implements Engine {
  private registry: ModelRegistry;
  private plan: CpuPlan;
  private cpu: CpuSlots;
  private cache: ResultCache;
  private slots = new Map<string, Slot>();
  private tally: Tally = { requests: 0, errors: 0, latencyMs: 0 };
  private started = Date.now();
  private stopped = false;
  private closed = false;
  private log?: Logger;
  private dimension: number;
  private timeoutMs: number;

  constructor(private o: EngineOptions) {
    this.log = o.logger?.child({ component: 'inference' });
    this.registry = new ModelRegistry({ ...o, logger: this.log });
    this.plan = planCpu(o);
    this.cpu = new CpuSlots(this.plan.cores);
    this.cache = new ResultCache(o.cacheBytes ?? 256 * 2 ** 20);
    this.dimension = o.embeddingDimension ?? 1024;
    if (!Number.isInteger(this.dimension) || this.dimension < 1) throw new InvalidArgumentError(`embeddingDimension must be a positive integer, not ${o.embeddingDimension}`);
    this.timeoutMs = o.timeoutMs ?? 300_000;
    this.log?.info({ cpu: this.plan, cacheDir: this.registry.cacheDir }, 'inference engine created');
    if (o.eager) this.load().catch((e) => this.log?.error({ err: e }, 'eager model load failed'));
    if (o.fetchMissing) void this.fetchMissing();
  }

  /** EngineOptions.fetchMissing: says once what is missing, and fetches it when that is allowed. */
  private async fetchMissing(): Promise<void> {
    const reg = this.registry;
    const missing = await reg.missing();
    if (!missing.length) return;
    const what = missing.map((m) => ({ model: `${m.spec.role}:${m.spec.name}`, path: m.path, url: m.url, expectedBytes: m.spec.size }));
    const remote = missing.filter((m) => m.url);
    if (!reg.downloadsAllowed || remote.length < missing.length) {
      this.log?.warn({ missing: what, dir: reg.cacheDir }, `steadytext calls that need these models fail until their files are there: ${missingModelsMessage(missing, reg.cacheDir)}`);
    }
    if (!reg.downloadsAllowed || !remote.length) return;
    this.log?.info({ downloading: what.filter((w) => w.url), dir: reg.cacheDir }, 'downloading missing models in the background; steadytext calls wait for them, other SQL goes on');
    // One at a time: the generation model first, as the embedding model's download would only slow it.
    for (const m of remote) {
      try { await reg.resolve(m.spec); } catch (e) {
        this.log?.error({ err: (e as Error).message, model: `${m.spec.role}:${m.spec.name}` }, 'model download failed; steadytext calls that need it try again');
      }
    }
  }

  async generate(r: GenerateRequest): Promise<string> {
    return this.track(r, () => this.slot('generation', r.modelSize), async (slot, t0) => {
      const p = this.generationParams(r);
      const key = this.generationKey(p, slot.identity ?? await this.identify(slot, r, t0));
      const hit = r.cache === false ? undefined : this.cache.get(key);
      if (r.outcome) r.outcome.cached = hit !== undefined;
      if (hit !== undefined) return hit as string;
      const text = await slot.sched.submit<string>((w, signal) => generateText(w, p, signal), this.control(r, t0));
      if (r.cache !== false) this.cache.set(key, text);
      return text;
    });
  }

  async *generateStream(r: GenerateRequest): AsyncGenerator<string, void, undefined> {
    const ac = new AbortController();
    const onAbort = () => ac.abort(r.signal!.reason);
    if (r.signal?.aborted) onAbort(); else r.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      yield* pullChunks((push) => this.track({ signal: ac.signal }, () => this.slot('generation', r.modelSize), async (slot, t0) => {
        const p = this.generationParams(r);
        const key = this.generationKey(p, slot.identity ?? await this.identify(slot, r, t0));
        const hit = r.cache === false ? undefined : this.cache.get(key);
        if (r.outcome) r.outcome.cached = hit !== undefined;
        if (hit !== undefined) { push(hit as string); return; }
        const text = await slot.sched.submit<string>((w, signal) => generateText(w, p, signal, push), { ...this.control(r, t0), signal: ac.signal });
        if (r.cache !== false) this.cache.set(key, text);
      }), () => ac.abort(new CancelledError('stream closed by its consumer')));
    } finally {
      r.signal?.removeEventListener('abort', onAbort);
    }
  }

  async embed(r: EmbedRequest): Promise<Float32Array> {
    return this.track(r, () => this.slot('embedding', r.modelSize), async (slot, t0) => {
      const text = nonEmpty(r.text, 'text'), seed = this.seed(r.seed);
      // The dimension is the engine's own, the same for every entry of its cache: not part of the key.
      const key = callKey({ op: 'embed', identity: slot.identity ?? await this.identify(slot, r, t0), text, seed });
      const hit = r.cache === false ? undefined : this.cache.get(key);
      if (r.outcome) r.outcome.cached = hit !== undefined;
      if (hit !== undefined) return (hit as Float32Array).slice();
      const v = await slot.sched.submit<Float32Array>((w) => embedText(w, text, this.dimension), this.control(r, t0));
      if (r.cache !== false) this.cache.set(key, v.slice());
      return v;
    });
  }

  async embedMany(texts: readonly string[], r: Omit<EmbedRequest, 'text'> = {}): Promise<Float32Array[]> {
    if (!Array.isArray(texts)) throw new InvalidArgumentError('texts must be an array of strings');
    texts.forEach((t, i) => nonEmpty(t, `texts[${i}]`));
    this.seed(r.seed);
    const unique = [...new Set(texts)];
    const vectors = new Map<string, Float32Array>();
    const ac = new AbortController();
    const onAbort = () => ac.abort(new CancelledError(r.signal!.reason));
    if (r.signal?.aborted) throw new CancelledError(r.signal.reason);
    r.signal?.addEventListener('abort', onAbort, { once: true });
    const timeoutMs = r.timeoutMs ?? this.timeoutMs;
    const timer = timeoutMs > 0 ? setTimeout(() => ac.abort(new TimeoutError(timeoutMs)), timeoutMs) : undefined;
    // Enough in flight to keep every embedding context busy; the rest waits here, not in the shared queue.
    let next = 0;
    const feed = async () => {
      while (next < unique.length) {
        const text = unique[next++];
        vectors.set(text, await this.embed({ ...r, text, signal: ac.signal, timeoutMs: 0 }));
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(unique.length, this.plan.embeddingContexts * 2) }, feed));
    } catch (e) {
      const reason = ac.signal.reason;
      if (!ac.signal.aborted) ac.abort(e);
      throw reason instanceof InferenceError ? reason : e;
    } finally {
      clearTimeout(timer);
      r.signal?.removeEventListener('abort', onAbort);
    }
    const seen = new Set<string>(); // a repeated text gets its own copy
    return texts.map((t) => (seen.has(t) ? vectors.get(t)!.slice() : (seen.add(t), vectors.get(t)!)));
  }

  async modelIdentity(role: ModelRole, modelSize?: string | null, opts: IdentityOptions = {}): Promise<string> {
    const slot = this.slot(role, modelSize);
    if (slot.identity) return slot.identity;
    await this.fileOf(slot, opts.signal, opts.onWait);
    return slot.identity ?? this.identify(slot, { signal: opts.signal }, performance.now());
  }

  async load(which?: { role: ModelRole; modelSize?: string | null }): Promise<void> {
    this.stopped = false;
    const slots = which ? [this.slot(which.role, which.modelSize)] : [this.slot('generation'), this.slot('embedding')];
    await Promise.all(slots.map((s) => s.sched.load()));
  }

  async unload(): Promise<void> {
    this.stopped = true;
    await Promise.all([...this.slots.values()].map((s) => s.sched.unload()));
  }

  async reload(): Promise<void> {
    const loaded = [...this.slots.values()].filter((s) => s.sched.state === 'loaded' || s.sched.state === 'loading');
    await this.unload();
    for (const s of this.slots.values()) { s.identity = undefined; s.identifying = undefined; s.path = undefined; }
    if (loaded.length) { this.stopped = false; await Promise.all(loaded.map((s) => s.sched.load())); }
    else await this.load();
  }

  status(): EngineStatus {
    const models = [...this.slots.values()].map((s): ModelStatus => ({
      role: s.spec.role, name: s.spec.name, source: s.spec.source, path: s.path, state: s.sched.state,
      contexts: s.sched.workers.length, threads: this.plan.threads, queued: s.sched.queued, active: s.sched.active,
      requests: s.tally.requests, errors: s.tally.errors, avgLatencyMs: avg(s.tally),
    }));
    return {
      running: !this.closed && !this.stopped, pid: process.pid, uptimeSeconds: Math.floor((Date.now() - this.started) / 1000),
      requestsProcessed: this.tally.requests, errorsCount: this.tally.errors, avgLatencyMs: avg(this.tally),
      cpu: { ...this.plan, busyThreads: this.cpu.busy }, cache: this.cache.stats(), models, downloads: this.registry.downloading(),
    };
  }

  modelInfo(): ModelInfo[] {
    return this.registry.list().map((spec) => {
      const slot = this.slots.get(`${spec.role}:${spec.name}`);
      const lane = slot?.sched.state === 'loaded' ? slot.lane : undefined;
      let bytes = 0;
      if (lane) {
        bytes = lane.model.memoryUsage.ram;
        for (const w of lane.workers) bytes += 'chat' in w ? w.context.memoryUsage.ram : embeddingContextRam(w);
      }
      return { modelType: spec.role, modelSize: spec.name, loaded: !!lane, memoryMb: Math.round(bytes / 2 ** 20), source: spec.source, path: slot?.path ?? this.registry.localPath(spec) };
    });
  }

  models(): ModelSpec[] { return this.registry.list(); }

  clearCache() { this.cache.clear(); }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.slots.values()].map((s) => s.sched.close()));
  }

  // ---- internals

  private slot(role: ModelRole, modelSize?: string | null): Slot {
    if (this.closed) throw new EngineClosedError();
    if (modelSize != null && typeof modelSize !== 'string') throw new InvalidArgumentError('model_size must be a string');
    const spec = this.registry.get(role, modelSize);
    const id = `${role}:${spec.name}`;
    const slot = this.slots.get(id);
    if (slot) return slot;
    const s: Slot = { spec, tally: { requests: 0, errors: 0, latencyMs: 0 }, sched: undefined! };
    const log = this.log?.child({ model: spec.name, role });
    s.sched = new Scheduler<any>({
      name: `${role} model '${spec.name}'`, maxQueue: this.o.maxQueue ?? 1000, cpu: this.cpu,
      open: async () => {
        const t = performance.now();
        const path = s.path ??= await this.registry.resolve(spec);
        log?.info({ path }, 'loading model');
        const lane = role === 'generation'
          ? await openGenerator(path, { contexts: this.plan.generationContexts, threads: this.plan.threads, contextSize: this.o.generationContextSize ?? 4096, batchSize: this.o.generationBatchSize, logger: this.log })
          : await openEmbedder(path, { name: spec.name, contexts: this.plan.embeddingContexts, threads: this.plan.threads, contextSize: this.o.embeddingContextSize ?? 2048, dimension: this.dimension, logger: this.log });
        s.lane = lane;
        this.stopped = false;
        log?.info({ ms: Math.round(performance.now() - t), contexts: lane.workers.length, threads: lane.threads, contextSize: lane.contextSize }, 'model loaded');
        return lane;
      },
      close: async (lane) => {
        if (s.lane === lane) s.lane = undefined;
        await ('nativeDimension' in lane ? closeEmbedder(lane as EmbedderLane) : closeGenerator(lane as GeneratorLane));
        log?.info('model unloaded');
      },
    });
    this.slots.set(id, s);
    return s;
  }

  /**
   * The slot's file, downloaded first if need be. A download (a first run's takes minutes) is waited for
   * outside the request's time limit: only the caller's signal ends the wait, and the download goes on.
   */
  private async fileOf(slot: Slot, signal?: AbortSignal, onWait?: (p: DownloadProgress) => void): Promise<string> {
    if (slot.path !== undefined) return slot.path;
    const path = await withinRequest(this.registry.resolve(slot.spec, { onWait }), { signal });
    return (slot.path ??= path);
  }

  private identify(slot: Slot, ctl: RequestControl, t0: number): Promise<string> {
    slot.identifying ??= (async () => {
      const path = slot.path ??= await this.registry.resolve(slot.spec);
      return (slot.identity = await modelFileIdentity(path));
    })().catch((e) => { slot.identifying = undefined; throw e; });
    return withinRequest(slot.identifying, { ...ctl, timeoutMs: ctl.timeoutMs ?? this.timeoutMs }, t0);
  }

  private control(r: RequestControl, t0: number): RequestControl {
    const total = r.timeoutMs ?? this.timeoutMs;
    return { caller: r.caller, signal: r.signal, timeoutMs: total > 0 ? Math.max(1, total - (performance.now() - t0)) : 0 };
  }

  /** Runs a request on its model's slot, counted; its time limit starts once the model's file is there (fileOf). */
  private async track<T>(r: RequestControl, pick: () => Slot, run: (s: Slot, t0: number) => Promise<T>): Promise<T> {
    let slot: Slot | undefined;
    let t0 = performance.now();
    try {
      slot = pick();
      if (slot.path === undefined) {
        await this.fileOf(slot, r.signal);
        t0 = performance.now();
      }
      const v = await run(slot, t0);
      this.count(slot, t0, false);
      return v;
    } catch (e) {
      this.count(slot, t0, true);
      if (e instanceof InferenceError) throw e;
      this.log?.error({ err: e, model: slot?.spec.name }, 'inference failed');
      throw new InferenceFailedError(`inference failed: ${(e as Error)?.message ?? e}`, e);
    }
  }

  private count(slot: Slot | undefined, t0: number, failed: boolean) {
    const ms = performance.now() - t0;
    for (const t of slot ? [this.tally, slot.tally] : [this.tally]) { t.requests++; t.latencyMs += ms; if (failed) t.errors++; }
  }

  private seed(seed: number | null | undefined): number {
    const s = seed ?? this.o.defaultSeed ?? 42;
    if (!Number.isInteger(s) || s < 0 || s > SEED_MAX) throw new InvalidArgumentError(`seed must be an integer from 0 to ${SEED_MAX}, not ${seed}`);
    return s;
  }

  /**
   * The result cache key of a generation: steadytext_generate's key in steadytext_cache (callKey). The cache
   * holds the generated text, which generate() returns and generateStream() yields in pieces, so both key
   * it as op 'generate': a generate_stream call's text is the steadytext_generate call's with the same
   * prompt, max_tokens, seed and temperature 0 (steadytext_cache keeps the stream's own row, the chunks'
   * JSON array, under op 'generate_stream').
   */
  private generationKey(p: GenerationParams, identity: string): string {
    return callKey({ op: 'generate', identity, prompt: p.prompt, maxTokens: p.maxTokens, seed: p.seed, temperature: p.temperature });
  }

  private generationParams(r: GenerateRequest): GenerationParams {
    const prompt = nonEmpty(r.prompt, 'prompt');
    const maxTokens = r.maxTokens ?? this.o.defaultMaxTokens ?? 512;
    if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > MAX_TOKENS_LIMIT)
      throw new InvalidArgumentError(`max_tokens must be an integer from 1 to ${MAX_TOKENS_LIMIT}, not ${r.maxTokens}`);
    const temperature = r.temperature ?? 0;
    if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0)
      throw new InvalidArgumentError(`temperature must be a number >= 0 (0 means greedy), not ${r.temperature}`);
    return { prompt, maxTokens, seed: this.seed(r.seed), temperature };
  }
}

function nonEmpty(v: unknown, what: string): string {
  if (typeof v !== 'string') throw new InvalidArgumentError(`${what} must be a string, not ${v === null ? 'null' : typeof v}`);
  if (!v.length) throw new InvalidArgumentError(`${what} is empty: there is nothing to ${what === 'prompt' ? 'answer' : 'embed'}`);
  return v;
}

const avg = (t: Tally) => (t.requests ? t.latencyMs / t.requests : 0);
