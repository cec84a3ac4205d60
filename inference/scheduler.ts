// One queue per model: bounded, round-robin across callers, per-request timeouts and cancellation, and
// lazy load / unload of the model's workers (one context each). A job runs only when a worker of its model
// is free and the process-wide CPU budget has room for that worker's threads.
import { CancelledError, EngineClosedError, OverloadedError, TimeoutError } from './errors.js';
import type { CpuSlots } from './llama.js';

const LOAD_RETRY_MS = 2000;

export interface Lane<W> { workers: W[]; threads: number }
export interface RequestControl {
  /** Fairness key (a session id, say): callers take turns, one request each. */
  caller?: string;
  signal?: AbortSignal;
  /** Limit on queueing plus running, in ms (0 or undefined: none). */
  timeoutMs?: number;
}
/** The work gets a worker and a signal that fires on timeout or cancellation: it must stop promptly then. */
export type Work<W, T> = (worker: W, signal: AbortSignal) => Promise<T>;
export type LaneState = 'unloaded' | 'loading' | 'loaded' | 'unloading';

interface Job {
  caller: string;
  work: Work<any, unknown>;
  resolve(v: unknown): void;
  reject(e: unknown): void;
  ac: AbortController;
  timer?: ReturnType<typeof setTimeout>;
  detach?: () => void;
  settled: boolean;
}

export interface SchedulerOptions<W> {
  name: string;
  maxQueue: number;
  cpu: CpuSlots;
  open(): Promise<Lane<W>>;
  close(lane: Lane<W>): Promise<void>;
}

export class Scheduler<W> {
  private queues = new Map<string, Job[]>();
  private turns: string[] = [];
  private waiting = 0;
  private running = new Set<Job>();
  private lane?: Lane<W>;
  private free: W[] = [];
  private loading?: Promise<Lane<W>>;
  private unloading?: Promise<void>;
  private drained?: () => void;
  private closed = false;
  private failed?: { error: unknown; at: number };

  constructor(private o: SchedulerOptions<W>) {}

  get state(): LaneState {
    return this.unloading ? 'unloading' : this.lane ? 'loaded' : this.loading ? 'loading' : 'unloaded';
  }
  get queued() { return this.waiting; }
  get active() { return this.running.size; }
  get workers(): readonly W[] { return this.lane?.workers ?? []; }

  submit<T>(work: Work<W, T>, ctl: RequestControl = {}): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new EngineClosedError());
      const { signal, timeoutMs } = ctl;
      if (signal?.aborted) return reject(new CancelledError(signal.reason));
      if (this.waiting >= this.o.maxQueue)
        return reject(new OverloadedError(`${this.o.name}: ${this.waiting} requests already waiting (the queue limit): retry later, or raise maxQueue or the number of contexts`));
      const job: Job = { caller: ctl.caller ?? '', work, resolve, reject, ac: new AbortController(), settled: false };
      if (timeoutMs && timeoutMs > 0 && Number.isFinite(timeoutMs)) job.timer = setTimeout(() => this.fail(job, new TimeoutError(timeoutMs)), timeoutMs);
      if (signal) {
        const onAbort = () => this.fail(job, new CancelledError(signal.reason));
        signal.addEventListener('abort', onAbort, { once: true });
        job.detach = () => signal.removeEventListener('abort', onAbort);
      }
      let q = this.queues.get(job.caller);
      if (!q) { this.queues.set(job.caller, (q = [])); this.turns.push(job.caller); }
      q.push(job);
      this.waiting++;
      this.pump();
    });
  }

  /** Load the model's workers now (otherwise the first request does). */
  async load(): Promise<void> {
    while (this.unloading) await this.unloading;
    if (this.closed) throw new EngineClosedError();
    if (this.lane) return;
    this.loading ??= this.o.open().then((lane) => {
      this.loading = undefined;
      this.failed = undefined;
      if (this.closed) { void this.o.close(lane); throw new EngineClosedError(); }
      this.lane = lane;
      this.free = [...lane.workers];
      queueMicrotask(this.pump);
      return lane;
    }, (e) => {
      this.loading = undefined;
      this.failed = { error: e, at: performance.now() };
      for (const job of this.waitingJobs()) this.fail(job, e); // they asked for a model that cannot be had
      throw e;
    });
    await this.loading;
  }

  /** Free the model once running jobs finish (or are aborted); queued jobs stay and load it again. */
  unload(abortRunning = false): Promise<void> {
    return (this.unloading ??= (async () => {
      await this.loading?.catch(() => {});
      const lane = this.lane;
      if (!lane) return;
      if (abortRunning) for (const job of this.running) this.fail(job, new CancelledError('model unloaded'));
      if (this.running.size) await new Promise<void>((r) => (this.drained = r));
      this.drained = undefined;
      this.lane = undefined;
      this.free = [];
      await this.o.close(lane);
    })().finally(() => { this.unloading = undefined; this.pump(); }));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.waitingJobs()) this.fail(job, new EngineClosedError());
    for (const job of this.running) this.fail(job, new EngineClosedError());
    await this.unload();
  }

  private pump = (): void => {
    if (!this.waiting || this.closed || this.unloading) return;
    if (!this.lane) {
      // A model that just failed to load fails requests at once for a moment instead of reloading per request.
      if (this.failed && performance.now() - this.failed.at < LOAD_RETRY_MS && !this.loading) {
        for (const job of this.waitingJobs()) this.fail(job, this.failed.error);
        return;
      }
      this.load().catch(() => {}); // failures reach the queued jobs
      return;
    }
    while (this.waiting && this.free.length) {
      if (!this.o.cpu.tryAcquire(this.lane.threads)) { this.o.cpu.park(this.pump); return; }
      this.start(this.next(), this.free.pop()!);
    }
  };

  private start(job: Job, worker: W) {
    const lane = this.lane!;
    this.running.add(job);
    let p: Promise<unknown>;
    try { p = job.work(worker, job.ac.signal); } catch (e) { p = Promise.reject(e); }
    p.then((v) => this.settle(job, undefined, v), (e) => this.settle(job, e)).finally(() => {
      this.running.delete(job);
      if (this.lane === lane) this.free.push(worker);
      this.o.cpu.release(lane.threads);
      if (!this.running.size) this.drained?.();
      this.pump();
    });
  }

  /** Timeout, cancellation, shutdown: a waiting job leaves the queue, a running one is told to stop. */
  private fail(job: Job, err: unknown) {
    if (job.settled) return;
    if (this.running.has(job)) job.ac.abort(err);
    else this.dequeue(job);
    this.settle(job, err);
  }

  private settle(job: Job, err: unknown, value?: unknown) {
    if (job.settled) return;
    job.settled = true;
    clearTimeout(job.timer);
    job.detach?.();
    if (err !== undefined) job.reject(err); else job.resolve(value);
  }

  private next(): Job {
    const caller = this.turns.shift()!;
    const q = this.queues.get(caller)!;
    const job = q.shift()!;
    if (q.length) this.turns.push(caller); else this.queues.delete(caller);
    this.waiting--;
    return job;
  }

  private dequeue(job: Job) {
    const q = this.queues.get(job.caller);
    const i = q ? q.indexOf(job) : -1;
    if (i < 0) return;
    q!.splice(i, 1);
    this.waiting--;
    if (!q!.length) { this.queues.delete(job.caller); this.turns.splice(this.turns.indexOf(job.caller), 1); }
  }

  private waitingJobs(): Job[] { return [...this.queues.values()].flat(); }
}

/** Await `p` within a request's deadline and signal (for work done outside the queue, like a download). */
export function withinRequest<T>(p: Promise<T>, ctl: RequestControl, startedAt = performance.now()): Promise<T> {
  const { signal, timeoutMs } = ctl;
  if (!signal && !timeoutMs) return p;
  return new Promise<T>((resolve, reject) => {
    if (signal?.aborted) return reject(new CancelledError(signal.reason));
    const onAbort = () => fail(new CancelledError(signal!.reason));
    const timer = timeoutMs && timeoutMs > 0 ? setTimeout(() => fail(new TimeoutError(timeoutMs)), Math.max(0, timeoutMs - (performance.now() - startedAt))) : undefined;
    signal?.addEventListener('abort', onAbort, { once: true });
    const detach = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const fail = (e: unknown) => { detach(); reject(e); };
    p.then((v) => { detach(); resolve(v); }, fail);
  });
}
