// One llama.cpp binding per process, and how the machine's cores are shared between contexts.
// On CPU, llama.cpp is fast only when busy threads <= physical cores (node-llama-cpp's default of
// max(4, cores) threads per context was ~1000x slower on 2 cores): concurrency comes from several
// one-thread contexts, and a process-wide slot count keeps generation and embeddings from oversubscribing.
import { constants, readFileSync } from 'node:fs';
import { access } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
// Types only: the module itself (~0.4 s to import here) loads with the first model, not at process start.
import type { Llama, LlamaModel } from 'node-llama-cpp';
import type { Logger } from 'pino';
import { ModelLoadError } from './errors.js';
import { checkGguf } from './gguf.js';

let binding: Promise<Llama> | undefined;

/** The CPU build of llama.cpp, loaded once (never compiled, never a GPU probe). */
export function getLlama(logger?: Logger): Promise<Llama> {
  return (binding ??= import('node-llama-cpp').then(({ getLlama: loadBinding, LlamaLogLevel }) => loadBinding({
    gpu: false, build: 'never', logLevel: LlamaLogLevel.error,
    logger: (level, message) => logger?.[level === LlamaLogLevel.warn ? 'warn' : 'error']({ llama: level }, message.trim()),
  })).then((l) => { l.maxThreads = 0; return l; }, (e) => { binding = undefined; throw e; }));
}

/** Physical cores this process may use: /proc/cpuinfo core ids, capped by affinity and a cgroup quota. */
export function physicalCores(): number {
  const logical = availableParallelism();
  let n = logical;
  try {
    const ids = new Set<string>();
    for (const block of readFileSync('/proc/cpuinfo', 'utf8').split(/\n\s*\n/)) {
      const core = /^core id\s*:\s*(\d+)/m.exec(block)?.[1], pkg = /^physical id\s*:\s*(\d+)/m.exec(block)?.[1];
      if (core != null) ids.add(`${pkg}:${core}`);
    }
    if (ids.size) n = Math.min(n, ids.size);
  } catch { /* not Linux */ }
  try {
    const [quota, period] = readFileSync('/sys/fs/cgroup/cpu.max', 'utf8').trim().split(/\s+/);
    if (quota !== 'max') n = Math.min(n, Math.max(1, Math.floor(Number(quota) / Number(period))));
  } catch { /* no cgroup v2 limit */ }
  return Math.max(1, n);
}

export interface CpuOptions {
  /** Cores to use (default: physical cores). Busy threads never exceed this. */
  cores?: number;
  /** Threads per context (default: cores / contexts, at least 1). */
  threads?: number;
  generationContexts?: number;
  embeddingContexts?: number;
}
export interface CpuPlan { cores: number; threads: number; generationContexts: number; embeddingContexts: number }

// Up to 8 one-thread contexts (2 cores: 2 x 1); past 8 cores, more threads per context rather than more
// contexts, whose KV caches and compute buffers cost memory (32 cores: 8 x 4).
export function planCpu(o: CpuOptions = {}): CpuPlan {
  const cores = Math.max(1, Math.floor(o.cores ?? physicalCores()));
  const contexts = Math.min(cores, 8);
  const threads = Math.max(1, Math.min(cores, Math.floor(o.threads ?? cores / contexts)));
  const fit = Math.max(1, Math.floor(cores / threads));
  return {
    cores, threads,
    generationContexts: Math.max(1, Math.floor(o.generationContexts ?? Math.min(contexts, fit))),
    embeddingContexts: Math.max(1, Math.floor(o.embeddingContexts ?? Math.min(contexts, fit))),
  };
}

/** Process-wide thread budget. Schedulers that cannot start a job park a retry callback. */
export class CpuSlots {
  private free: number;
  private parked: Array<() => void> = [];
  constructor(readonly capacity: number) { this.free = capacity; }
  tryAcquire(n: number): boolean {
    n = Math.min(n, this.capacity);
    if (this.free < n) return false;
    this.free -= n;
    return true;
  }
  release(n: number) {
    this.free += Math.min(n, this.capacity);
    // FIFO across models: each parked pump gets a turn and parks again if it still cannot run.
    for (const retry of this.parked.splice(0)) retry();
  }
  park(retry: () => void) { if (!this.parked.includes(retry)) this.parked.push(retry); }
  get busy() { return this.capacity - this.free; }
}

/** Load a GGUF for CPU inference. Flash attention is pinned off for every context of the model: on and off
 * each give deterministic but different vectors, so it must never depend on what llama.cpp picks. */
export async function loadModel(path: string, logger?: Logger): Promise<LlamaModel> {
  const llama = await getLlama(logger);
  try {
    await access(path, constants.R_OK);
  } catch (e) {
    throw new ModelLoadError(`cannot read model file ${path} (${(e as NodeJS.ErrnoException).code}): check its permissions`, path, e);
  }
  await checkGguf(path);
  try {
    return await llama.loadModel({ modelPath: path, gpuLayers: 0, defaultContextFlashAttention: false });
  } catch (e) {
    throw new ModelLoadError(
      `cannot load model file ${path}: ${String((e as Error).message).replace(/\.+$/, '')}. It is truncated, corrupt or not a GGUF model this llama.cpp supports: ` +
      'delete it and download it again (`pg-steadytext models pull`), or configure another file', path, e);
  }
}
