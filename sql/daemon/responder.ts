// Answers the daemon endpoint's requests: evaluates each with the evaluation every path shares
// (evaluate.ts compute() and manage()), within the request's time limit and the session's cancel, and
// leaves the writes it owes the database (cache row, counters, logs) to that database's service writer
// (sql/databases.ts), after the answer has gone out.
import type pino from 'pino';
import { RUNTIME_DEFAULTS, type RuntimeConfig } from '../../config/runtime.js';
import type { Engine } from '../../inference/engine.js';
import type { Database } from '../databases.js';
import type { CacheEntry } from '../store.js';
import { callErrorToWire, engineErrorToWire, WireError } from '../errors.js';
import { cacheEntry, compute, manage, roleOf, type Answer, type CallbackTransport } from '../evaluate.js';
import { parseRequest, type ComputeCall, type Request } from './requests.js';

/** What the daemon uses of the inference engine (a fake with these methods serves in tests). */
export type DaemonEngine = Pick<Engine, 'generate' | 'embed' | 'status' | 'modelInfo' | 'load' | 'unload' | 'reload'>;

/** What the daemon writes through, per database: the registry's Database (a fake in unit tests). */
export type ServiceWriter = Pick<Database, 'count' | 'logEvent' | 'identity' | 'store' | 'writeLater' | 'flush'>;

export interface ResponderOptions {
  engine: DaemonEngine;
  log: pino.Logger;
  /** Where the endpoint listens (steadytext_daemon_status reports it). */
  address: { host: string; port: number };
  /** The service writer of the database a request comes from; undefined (or no function): nothing is written. */
  databaseFor?: (name: string) => ServiceWriter | undefined;
}

/** The engine's own timer covers the request; this backstop covers what it does not time (loading models). */
const BACKSTOP_MS = 2000;

export class Responder {
  private requests = 0;
  private errors = 0;
  private latencyTotal = 0;
  /** Databases written to, for flush(). */
  private readonly written = new Set<ServiceWriter>();
  /** compute() and manage() call only the methods of DaemonEngine. */
  private readonly engine: Engine;

  constructor(private readonly o: ResponderOptions) {
    this.engine = o.engine as Engine;
  }

  /** The answer text for one JSON request; rejects with the WireError to send. */
  /**
   * `collect`: the answer's steadytext_cache row goes there (to be stored with others in one write) instead of
   * being written on its own after the answer.
   */
  async respond(text: string, call: { pid: number; abort: AbortController; via?: CallbackTransport; collect?: Promise<CacheEntry>[] }): Promise<Answer> {
    const t0 = performance.now();
    let req: Request | undefined;
    try {
      req = parseRequest(text);
      const answer = await this.withinLimits(req, call.abort, callerOf(req, call.pid), call.via ?? 'dblink', call.collect);
      this.answered(req, t0);
      return answer;
    } catch (e) {
      throw this.failed(req, e);
    }
  }

  stats(): { requests: number; errors: number; avgLatencyMs: number | null } {
    return { requests: this.requests, errors: this.errors, avgLatencyMs: this.requests ? this.latencyTotal / this.requests : null };
  }

  /** Waits until the cache rows, counters and logs queued so far are written. */
  async flush(): Promise<void> {
    await Promise.all([...this.written].map((d) => d.flush()));
  }

  /**
   * Evaluates `req` until it answers, the session aborts (a CancelRequest, the client gone: 57014), or
   * timeout_ms and the backstop pass (57014; the evaluation is aborted).
   */
  private async withinLimits(req: Request, abort: AbortController, caller: string, via: CallbackTransport, collect?: Promise<CacheEntry>[]): Promise<Answer> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const signal = abort.signal;
    const stopped = new Promise<never>((_, reject) => {
      const cancelled = () => reject(new WireError('57014', `${req.fn}: canceling statement due to user request`));
      if (signal.aborted) cancelled(); else signal.addEventListener('abort', cancelled, { once: true });
      if (!req.timeoutMs) return;
      timer = setTimeout(() => {
        const gaveUp = new Error(`the pg-steadytext daemon gave up after ${req.timeoutMs} ms (daemon_timeout_ms)`);
        reject(engineErrorToWire(req.fn, Object.assign(gaveUp, { code: 'TIMEOUT' })));
        abort.abort(new Error('daemon_timeout_ms elapsed'));
      }, req.timeoutMs + BACKSTOP_MS);
    });
    try {
      return await Promise.race([this.evaluate(req, signal, caller, via, collect), stopped]);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  private async evaluate(req: Request, signal: AbortSignal, caller: string, via: CallbackTransport, collect?: Promise<CacheEntry>[]): Promise<Answer> {
    const config = configOf(req);
    if (req.kind === 'management') {
      const done = await manage(req.function, this.engine, this.o.address, config, via);
      if ('error' in done) throw callErrorToWire(done.error);
      return done;
    }
    const done = await compute(req.request, { engine: this.engine, config, caller, signal });
    if ('error' in done) throw callErrorToWire(done.error);
    if (req.cache) this.store(req, done, collect);
    return done;
  }

  /** Off the answer's path: the caller has its answer; later calls find it in steadytext_cache. */
  private store(req: ComputeCall, answer: Answer, collect?: Promise<CacheEntry>[]): void {
    const db = this.database(req.database);
    const r = req.request;
    if (db && collect) collect.push(db.identity(roleOf(r), r.modelSize).then((id) => cacheEntry(r, id, answer)));
    else db?.writeLater('cache write', async () => db.store([cacheEntry(r, await db.identity(roleOf(r), r.modelSize), answer)]));
  }

  private answered(req: Request, t0: number): void {
    this.requests++;
    this.latencyTotal += performance.now() - t0;
    if (req.kind !== 'computing') return;
    const db = this.database(req.database);
    db?.count({ callback_requests: 1, [req.request.op === 'embed' ? 'embed_requests' : 'generate_requests']: 1 });
    if (!req.debug) return;
    db?.logEvent('debug', 'callback', `${req.fn} answered by the daemon`, {
      op: req.op, model_size: req.request.modelSize, ms: Math.round(performance.now() - t0), user: req.user ?? null, database: req.database ?? null,
    });
  }

  private failed(req: Request | undefined, e: unknown): WireError {
    const w = engineErrorToWire(req?.fn ?? 'pg-steadytext daemon', e, req?.timeoutMs);
    this.errors++;
    const db = this.database(req?.database);
    db?.count({ errors: 1 });
    db?.logEvent('error', 'callback_error', w.message, { sqlstate: w.code, op: req?.op ?? null, user: req?.user ?? null });
    this.o.log.info({ sqlstate: w.code, err: w.message, op: req?.op, user: req?.user, database: req?.database }, 'daemon request failed');
    return w;
  }

  private database(name: string | undefined): ServiceWriter | undefined {
    const db = name === undefined ? undefined : this.o.databaseFor?.(name);
    if (db) this.written.add(db);
    return db;
  }
}

/** The engine takes turns between callers: one per database session, whatever connection it used. */
function callerOf(req: Request, pid: number): string {
  return req.backendPid !== undefined ? `callback:${req.database ?? ''}:${req.backendPid}` : `callback:${pid}`;
}

/**
 * The steadytext_config values the SQL function read and sent with its request, as the evaluation reads
 * a config: daemon_auto_start, cache_enabled (the engine's result cache too, as on every path) and
 * daemon_timeout_ms (its default when a request names none).
 */
function configOf(req: Request): RuntimeConfig {
  const config = { ...RUNTIME_DEFAULTS, daemonTimeoutMs: req.timeoutMs ?? RUNTIME_DEFAULTS.daemonTimeoutMs };
  return req.kind === 'computing' ? { ...config, daemonAutoStart: req.autoStart, cacheEnabled: req.cache } : config;
}
