// Figures of the steadytext calls per database and model (SHOW STEADYTEXT, the metrics endpoint): the engine
// wrapped so that every call of every path (served ahead, prefetch, stream, the daemon's callbacks) is counted
// where it reaches the engine. The database a call serves comes from its caller key: serve.ts and stream.ts
// send `session:<id>:<database>` (older keys without it: asked of the proxy through sessionDatabase), the daemon
// `callback:<database>:<pid>`, so a worker's calls, which its primary counts, are under their database too.
import type { EmbedRequest, Engine, GenerateRequest, ModelRole } from '../inference/engine.js';
import type { SteadytextRow } from '../proxy/console.js';
import type { CallFigures, SteadytextFigures } from '../proxy/metrics.js';

/** Latency quantiles and averages cover the computed calls of the last minute, at most this many per (database, model). */
const WINDOW_MS = 60_000;
const SAMPLES = 1024;

class Tally {
  calls = 0;
  cacheHits = 0;
  errors = 0;
  computed = 0;
  latencySumUs = 0;
  /** Ring of the latest computed calls: when (performance.now()) and how long (µs). */
  private readonly at = new Float64Array(SAMPLES);
  private readonly us = new Float64Array(SAMPLES);
  private written = 0;

  constructor(
    readonly database: string,
    readonly model: string,
  ) {}

  sample(now: number, us: number): void {
    const i = this.written++ % SAMPLES;
    this.at[i] = now;
    this.us[i] = us;
  }

  /** The window's latencies, sorted. */
  recent(now: number): Float64Array {
    const n = Math.min(this.written, SAMPLES);
    const out: number[] = [];
    for (let i = 0; i < n; i++) if (now - this.at[i] <= WINDOW_MS) out.push(this.us[i]);
    return Float64Array.from(out).sort();
  }
}

/** Nearest-rank quantile of sorted values (0 for none). */
const quantile = (sorted: Float64Array, q: number) => (sorted.length ? sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] : 0);

export interface CallMeter {
  /** The engine to give the steadytext layer and the daemon: the same engine, counted. */
  readonly engine: Engine;
  /** The database of a proxy session by id (set once the proxy runs; undefined: unknown). */
  sessionDatabase: (id: number) => string | undefined;
  figures(): SteadytextFigures;
  /** SHOW STEADYTEXT's rows. */
  rows(): SteadytextRow[];
}

/** `defaultModelSize`: the name a call without model_size gets (EngineOptions.defaultModelSize; the registry's default is 'small'). */
export function meterCalls(engine: Engine, o: { defaultModelSize?: string } = {}): CallMeter {
  const tallies = new Map<string, Tally>();
  const defaultSize = o.defaultModelSize ?? 'small';
  const meter: CallMeter = {
    engine: counted(),
    sessionDatabase: () => undefined,
    figures: () => {
      const now = performance.now();
      const calls = [...tallies.values()].map((t): CallFigures => {
        const recent = t.recent(now);
        return {
          database: t.database, model: t.model, calls: t.calls, cacheHits: t.cacheHits, errors: t.errors, computed: t.computed,
          latencySumUs: Math.round(t.latencySumUs), p50LatencyUs: Math.round(quantile(recent, 0.5)), p99LatencyUs: Math.round(quantile(recent, 0.99)),
        };
      });
      const models = engine.status().models.map((m) => ({ model: `${m.role}:${m.name}`, queued: m.queued, active: m.active }));
      return { calls, models };
    },
    rows: () => {
      const now = performance.now();
      const queued = new Map(engine.status().models.map((m) => [`${m.role}:${m.name}`, m.queued]));
      return [...tallies.values()].map((t): SteadytextRow => {
        const recent = t.recent(now);
        const avg = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0;
        return {
          database: t.database, model: t.model, calls: t.calls, cacheHits: t.cacheHits, queueDepth: queued.get(t.model) ?? 0,
          avgLatencyUs: Math.round(avg), p99LatencyUs: Math.round(quantile(recent, 0.99)),
        };
      });
    },
  };

  function databaseOf(key: string | undefined): string {
    // A worker's call reaches the primary's engine as worker<i>/<its key> (engine-ipc.ts, callerPrefix).
    const caller = key?.startsWith('worker') && key.indexOf('/') > 0 ? key.slice(key.indexOf('/') + 1) : key;
    if (caller?.startsWith('session:')) {
      // session:<id>:<database> (the database named: a worker's session, which the primary cannot look up).
      const sep = caller.indexOf(':', 8);
      if (sep > 0) return caller.slice(sep + 1);
      return meter.sessionDatabase(Number(caller.slice(8))) ?? '';
    }
    if (caller?.startsWith('callback:')) {
      const last = caller.lastIndexOf(':');
      return last > 8 ? caller.slice(9, last) : '';
    }
    return '';
  }

  /** The model the engine serves a request with, as the registry picks it. */
  function modelOf(role: ModelRole, size: string | null | undefined): string {
    const name = size && engine.models().some((m) => m.role === role && m.name === size) ? size : defaultSize;
    return `${role}:${name}`;
  }

  function tally(caller: string | undefined, role: ModelRole, size: string | null | undefined): Tally {
    const database = databaseOf(caller);
    const model = modelOf(role, size);
    const key = `${database}\0${model}`;
    let t = tallies.get(key);
    if (!t) tallies.set(key, (t = new Tally(database, model)));
    return t;
  }

  function done(t: Tally, t0: number, outcome: { cached?: boolean }, failed: boolean): void {
    t.calls++;
    if (failed) t.errors++;
    else if (outcome.cached === true) t.cacheHits++;
    else {
      const now = performance.now();
      const us = (now - t0) * 1000;
      t.computed++;
      t.latencySumUs += us;
      t.sample(now, us);
    }
  }

  async function call<R extends GenerateRequest | EmbedRequest, T>(role: ModelRole, r: R, run: (r: R) => Promise<T>): Promise<T> {
    const t = tally(r.caller, role, r.modelSize);
    const outcome = r.outcome ?? {};
    const t0 = performance.now();
    try {
      const v = await run({ ...r, outcome });
      done(t, t0, outcome, false);
      return v;
    } catch (e) {
      done(t, t0, outcome, true);
      throw e;
    }
  }

  function counted(): Engine {
    return {
      generate: (r) => call('generation', r, (x) => engine.generate(x)),
      embed: (r) => call('embedding', r, (x) => engine.embed(x)),
      async *generateStream(r) {
        const t = tally(r.caller, 'generation', r.modelSize);
        const outcome = r.outcome ?? {};
        const t0 = performance.now();
        let failed = false;
        try {
          yield* engine.generateStream({ ...r, outcome });
        } catch (e) {
          failed = true;
          throw e;
        } finally {
          done(t, t0, outcome, failed);
        }
      },
      embedMany: async (texts, r = {}) => {
        const t = tally(r.caller, 'embedding', r.modelSize);
        try {
          return await engine.embedMany(texts, r);
        } catch (e) {
          t.errors += texts.length;
          throw e;
        } finally {
          t.calls += texts.length;
        }
      },
      modelIdentity: (role, size, opts) => engine.modelIdentity(role, size, opts),
      load: (which) => engine.load(which),
      unload: () => engine.unload(),
      reload: () => engine.reload(),
      status: () => engine.status(),
      modelInfo: () => engine.modelInfo(),
      models: () => engine.models(),
      clearCache: () => engine.clearCache(),
      close: () => engine.close(),
    };
  }

  return meter;
}
