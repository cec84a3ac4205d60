// Several proxy processes on one port (node:cluster). One Node process spends most of its time per
// socket event, so past a point relaying is bound by one core; workers spread the sessions. The
// primary keeps what must be single (models, daemon endpoint, installs: see attach) and serves it over IPC; each
// worker runs startProxy. Cluster's round-robin hands out connections evenly, which matters for a few
// long-lived sessions (the OS-level balancing of a shared socket can leave one worker with most).
import cluster, { type Worker } from 'node:cluster';
import type { Logger } from 'pino';
import { CancelRegistry, MAX_WORKERS } from './cancel.js';
import { ipcChannel, type IpcChannel } from './ipc.js';
import type { ProxyServer, ProxyStats } from './server.js';
import { socketIdsForWorker } from './socket-id.js';

const TAG = 'steadytext-worker';
/** How the primary tells a forked process which worker it is. */
const ENV = 'PGSTEADYTEXT_WORKER_SETUP';

type Address = { host: string; port: number };
type FromWorker =
  | { tag: typeof TAG; kind: 'listening'; address: Address }
  | { tag: typeof TAG; kind: 'cancel'; to: number; pid: number; secret: string }
  | { tag: typeof TAG; kind: 'stats'; id: number; stats: ProxyStats | null };
type ToWorker =
  | { tag: typeof TAG; kind: 'cancel'; from: number; pid: number; secret: string }
  | { tag: typeof TAG; kind: 'stats'; id: number }
  | { tag: typeof TAG; kind: 'shutdown' };

/** How long stats() waits for a worker's figures (one that does not answer is left out). */
const STATS_TIMEOUT_MS = 3_000;

export interface WorkerPoolOptions {
  workers: number;
  logger: Logger;
  /** JSON-able data every worker gets (WorkerSetup.data). */
  data?: unknown;
  /** Services the primary offers on a (re)started worker's channel (engine, installs); returns their detach. */
  attach?(channel: IpcChannel, index: number): () => void;
  /** How long close() lets workers run their own graceful close before they are killed. */
  stopTimeoutMs: number;
}

export interface WorkerPool {
  address: Address;
  /** Asks every worker to close gracefully; resolves when all have exited. */
  close(): Promise<void>;
  /** The workers are stopping on their own (a console SHUTDOWN, a pgBouncer signal): none is restarted; resolves when all have exited. */
  finishing(): Promise<void>;
  /** The proxy's figures (ProxyServer.stats) added up over the workers that listen now (the metrics endpoint). */
  stats(): Promise<ProxyStats>;
}

interface Slot {
  index: number;
  worker?: Worker;
  channel?: IpcChannel;
  listening: boolean;
  startedAt: number;
  crashes: number;
}

/** Forks the workers (this process must be the cluster primary) and resolves once all are listening. */
export async function startWorkerPool(o: WorkerPoolOptions): Promise<WorkerPool> {
  if (!cluster.isPrimary) throw new Error('startWorkerPool runs in the primary process');
  if (o.workers < 1 || o.workers > MAX_WORKERS) throw new RangeError(`workers must be from 1 to ${MAX_WORKERS}, not ${o.workers}`);
  // Structured clone: vectors cross as Float32Array (see inference/engine-ipc.ts).
  cluster.setupPrimary({ serialization: 'advanced' });
  const pool = new Pool(o);
  await pool.start();
  return { address: pool.address!, close: () => pool.close(), finishing: () => pool.finishing(), stats: () => pool.stats() };
}

/** The primary's side of the pool: one slot per worker, each restarted when its worker dies. */
class Pool {
  address: Address | undefined;
  private readonly slots: Slot[];
  private stopping = false;
  /** Set while start() waits for every worker to listen. */
  private startup: { resolve(): void; reject(e: Error): void } | undefined;
  /** Resolve when the worker they stand for has exited. */
  private readonly exited = new Set<Promise<void>>();
  /** stats() requests waiting for workers' answers, by id: each worker's answer (null: it is gone). */
  private readonly asked = new Map<number, (worker: Worker, stats: ProxyStats | null) => void>();
  private nextAsk = 1;

  constructor(private readonly o: WorkerPoolOptions) {
    this.slots = Array.from({ length: o.workers }, (_, index) => ({ index, listening: false, startedAt: 0, crashes: 0 }));
  }

  /** Forks every worker; resolves once all listen, or closes the pool and rejects when one exits before. */
  async start(): Promise<void> {
    try {
      await new Promise<void>((resolve, reject) => {
        this.startup = { resolve, reject };
        for (const s of this.slots) this.fork(s);
      });
    } catch (e) {
      await this.close();
      throw e;
    } finally {
      this.startup = undefined;
    }
  }

  async finishing(): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.exited]);
  }

  async close(): Promise<void> {
    this.stopping = true;
    for (const s of this.slots) s.channel?.send({ tag: TAG, kind: 'shutdown' } satisfies ToWorker);
    const timer = setTimeout(() => {
      for (const s of this.slots) if (s.worker) {
        this.o.logger.warn({ worker: s.index }, 'worker did not stop in time; killing it');
        s.worker.process.kill('SIGKILL');
      }
    }, this.o.stopTimeoutMs).unref();
    await Promise.all([...this.exited]);
    clearTimeout(timer);
  }

  /** Every listening worker's ProxyStats, added up. */
  async stats(): Promise<ProxyStats> {
    const id = this.nextAsk++;
    const parts: ProxyStats[] = [];
    const from = new Set(this.slots.filter((s) => s.listening && s.worker).map((s) => s.worker!));
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.o.logger.warn({ workers: this.slots.filter((s) => s.worker && from.has(s.worker)).map((s) => s.index) }, 'workers did not send their figures in time; counted without them');
        resolve();
      }, STATS_TIMEOUT_MS);
      timer.unref();
      const done = () => { clearTimeout(timer); resolve(); };
      this.asked.set(id, (w, stats) => {
        if (!from.delete(w)) return;
        if (stats) parts.push(stats);
        if (from.size === 0) done();
      });
      if (from.size === 0) return done();
      for (const s of this.slots) if (s.worker && from.has(s.worker)) s.channel?.send({ tag: TAG, kind: 'stats', id } satisfies ToWorker);
    });
    this.asked.delete(id);
    return sumStats(parts);
  }

  private fork(slot: Slot): void {
    const { o } = this;
    const w = cluster.fork({ [ENV]: JSON.stringify({ index: slot.index, workers: o.workers, data: o.data ?? null }) });
    const channel = ipcChannel(w);
    slot.worker = w;
    slot.channel = channel;
    slot.listening = false;
    slot.startedAt = Date.now();
    const detach = o.attach?.(channel, slot.index);
    channel.onMessage((m: FromWorker) => this.receive(slot, m));
    let done!: () => void;
    const gone = new Promise<void>((r) => (done = r));
    this.exited.add(gone);
    w.once('exit', (code: number | null, signal: string | null) => {
      detach?.();
      for (const answer of this.asked.values()) answer(w, null);
      this.exited.delete(gone);
      if (slot.worker === w) { slot.worker = undefined; slot.channel = undefined; }
      done();
      this.afterExit(slot, code, signal);
    });
  }

  private receive(slot: Slot, m: FromWorker): void {
    if (m?.tag !== TAG) return;
    if (m.kind === 'listening') {
      slot.listening = true;
      this.address ??= m.address;
      if (this.slots.every((s) => s.listening)) this.startup?.resolve();
    } else if (m.kind === 'stats') {
      if (slot.worker) this.asked.get(m.id)?.(slot.worker, m.stats);
    } else if (m.kind === 'cancel') {
      // Only the issuing worker can check the secret; a key for a worker that is gone matches nothing.
      this.slots[m.to]?.channel?.send({ tag: TAG, kind: 'cancel', from: slot.index, pid: m.pid, secret: m.secret } satisfies ToWorker);
    }
  }

  /** A worker exited: fails the start if it was not listening yet, else restarts it (unless the pool stops). */
  private afterExit(slot: Slot, code: number | null, signal: string | null): void {
    if (this.stopping) return;
    if (this.startup && !slot.listening) {
      this.startup.reject(new Error(`worker ${slot.index} exited (${signal ?? `code ${code}`}) before it was listening: see its log above`));
      return;
    }
    this.o.logger.error({ worker: slot.index, code, signal }, slot.listening ? 'worker exited unexpectedly; restarting' : 'worker exited before it was listening; restarting');
    // A worker that keeps dying right after its start is restarted more and more slowly.
    slot.crashes = Date.now() - slot.startedAt < 10_000 ? slot.crashes + 1 : 0;
    const delay = Math.min(30_000, slot.crashes ? 250 * 2 ** slot.crashes : 0);
    setTimeout(() => { if (!this.stopping) this.fork(slot); }, delay);
  }
}

export interface WorkerSetup {
  index: number;
  workers: number;
  data: any;
  /** The channel to the primary. */
  channel: IpcChannel;
}

/** This process's place in a worker pool, or undefined when it is not a pool worker. */
export function workerSetup(): WorkerSetup | undefined {
  const raw = process.env[ENV];
  if (!cluster.isWorker || !raw) return undefined;
  const { index, workers, data } = JSON.parse(raw) as { index: number; workers: number; data: unknown };
  socketIdsForWorker(index, workers);
  return { index, workers, data, channel: ipcChannel(process) };
}

export interface PoolWorkerOptions {
  logger: Logger;
  /** Starts this worker's proxy with the given cancel registry (it routes other workers' keys). */
  start(cancels: CancelRegistry): Promise<ProxyServer>;
  /** After the proxy has closed (sessions drained): release what the worker holds. */
  cleanup?(): Promise<void>;
  /**
   * 'primary': SIGTERM and SIGINT sent to this process are ignored; the primary passes on what it receives (a
   * pooler's signals mean pgBouncer's shutdown modes, and systemd or a terminal send them to every process of the
   * group: each must act once). Default 'own': each closes this worker.
   */
  signals?: 'own' | 'primary';
}

/**
 * The worker side: starts the proxy, tells the primary it listens, delivers cancels routed to it and
 * closes gracefully on the primary's request, on SIGTERM/SIGINT (a terminal's ^C reaches every process
 * of the group) or when the primary is gone. Exits the process when closed.
 */
export async function runPoolWorker(setup: WorkerSetup, o: PoolWorkerOptions): Promise<void> {
  const log = o.logger;
  const { channel } = setup;
  const cancels = new CancelRegistry({
    worker: setup.index,
    workers: setup.workers,
    route: (to, pid, secret) => channel.send({ tag: TAG, kind: 'cancel', to, pid, secret: secret.toString('base64') } satisfies FromWorker),
  });
  // Not const: stop() may run (and read it) before o.start() has given it a value.
  let proxy: ProxyServer | undefined = undefined;
  let stopping: Promise<void> | undefined;
  const stop = (why: string) => (stopping ??= (async () => {
    log.info({ why }, 'worker stopping');
    await proxy?.close();
    await o.cleanup?.().catch((err) => log.warn({ err }, 'worker cleanup failed'));
    log.flush?.();
    process.exit(0);
  })());
  channel.onMessage((m: ToWorker) => {
    if (m?.tag !== TAG) return;
    if (m.kind === 'shutdown') void stop('asked by the primary');
    else if (m.kind === 'stats') channel.send({ tag: TAG, kind: 'stats', id: m.id, stats: proxy?.stats() ?? null } satisfies FromWorker);
    else if (m.kind === 'cancel') {
      const matched = cancels.deliver(m.pid, Buffer.from(m.secret, 'base64'));
      log.info({ pid: m.pid, matched, from: m.from }, matched ? 'cancel request from another worker forwarded' : 'cancel request from another worker with an unknown key ignored');
    }
  });
  channel.onClose(() => void stop('the primary process is gone'));
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => (o.signals === 'primary' ? undefined : void stop(sig)));
  proxy = await o.start(cancels);
  if (stopping) return;
  channel.send({ tag: TAG, kind: 'listening', address: proxy.address } satisfies FromWorker);
}

/** ProxyStats of several workers as one: every count added up. */
export function sumStats(parts: ProxyStats[]): ProxyStats {
  const out: ProxyStats = { clients: 0, buffered: 0, totals: {} as ProxyStats['totals'] };
  for (const p of parts) {
    out.clients += p.clients;
    out.buffered += p.buffered;
    const totals = out.totals as unknown as Record<string, number>;
    for (const [k, v] of Object.entries(p.totals)) totals[k] = (totals[k] ?? 0) + v;
  }
  return out;
}
