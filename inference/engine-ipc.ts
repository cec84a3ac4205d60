// The engine across a process boundary: one process owns the models (serveEngineOverIpc), others use
// them through an Engine that forwards every call over a Node IPC channel (engineOverIpc). The channel
// must use serialization 'advanced' (structured clone): vectors travel as Float32Array, not JSON.
// status(), modelInfo() and models() are synchronous in the Engine interface, so the serving side
// pushes a snapshot with every answer (a caller comparing status() before and after a call sees the
// state that call left) and once a second.
import { pullChunks } from './pull-chunks.js';
import {
  EngineClosedError, InferenceError, type DownloadProgress, type EmbedRequest, type Engine, type EngineStatus, type GenerateRequest,
  type InferenceErrorCode, type ModelInfo, type ModelRole, type ModelSpec,
} from './engine.js';

/** What the engine needs of a Node IPC channel (proxy/ipc.ts makes one over a process or cluster Worker). */
export interface IpcChannel {
  send(message: unknown): void;
  onMessage(listener: (message: any) => void): () => void;
  /** The channel closed (the other process exited or disconnected). */
  onClose(listener: () => void): () => void;
}

const TAG = 'steadytext-engine';

type Op = 'generate' | 'stream' | 'embed' | 'embedMany' | 'modelIdentity' | 'load' | 'unload' | 'reload' | 'clearCache';

interface Snapshot { status: EngineStatus; modelInfo: ModelInfo[]; models: ModelSpec[] }
interface WireError { name: string; message: string; code?: string }

type ToServer =
  | { tag: typeof TAG; kind: 'call'; id: number; op: Op; args: unknown[]; aborted?: boolean }
  | { tag: typeof TAG; kind: 'abort'; id: number; reason?: string }
  | { tag: typeof TAG; kind: 'hello' };
type ToClient =
  | { tag: typeof TAG; kind: 'result'; id: number; value?: unknown; error?: WireError; outcome?: { cached?: boolean }; state: Snapshot }
  | { tag: typeof TAG; kind: 'chunk'; id: number; text: string }
  /** modelIdentity's onWait: the call waits for this download. */
  | { tag: typeof TAG; kind: 'wait'; id: number; progress: DownloadProgress }
  | { tag: typeof TAG; kind: 'state'; state: Snapshot };

const INFERENCE_CODES = new Set<InferenceErrorCode>([
  'MODEL_NOT_FOUND', 'DOWNLOAD_FAILED', 'MODEL_LOAD_FAILED', 'INVALID_ARGUMENT', 'PROMPT_TOO_LONG',
  'OVERLOADED', 'TIMEOUT', 'CANCELLED', 'INFERENCE_FAILED', 'CLOSED',
]);

function toWire(e: unknown): WireError {
  const err = e as { name?: unknown; message?: unknown; code?: unknown };
  return {
    name: typeof err?.name === 'string' ? err.name : 'Error',
    message: typeof err?.message === 'string' ? err.message : String(e),
    code: typeof err?.code === 'string' ? err.code : undefined,
  };
}

/** The same code and message as in the serving process, so callers map it to the same SQLSTATE. */
function fromWire(w: WireError): Error {
  const e = w.code && INFERENCE_CODES.has(w.code as InferenceErrorCode)
    ? new InferenceError(w.code as InferenceErrorCode, w.message)
    : Object.assign(new Error(w.message), w.code ? { code: w.code } : {});
  e.name = w.name;
  return e;
}

export interface ServeOptions {
  /** Prefixed to every request's fairness key: session ids of different processes must not collide. */
  callerPrefix?: string;
  /** How often the snapshot is pushed when nothing else happens (ms, default 1000). */
  pushIntervalMs?: number;
}

/**
 * Answers one channel's engine calls with `engine`. Returns a detach function; closing the channel
 * detaches too, and aborts what that side still had running.
 */
export function serveEngineOverIpc(engine: Engine, channel: IpcChannel, o: ServeOptions = {}): () => void {
  const s: Serving = { engine, channel, prefix: o.callerPrefix ?? '', running: new Map() };
  const push = () => channel.send({ tag: TAG, kind: 'state', state: snapshotOf(engine) } satisfies ToClient);
  const offMessage = channel.onMessage((m: ToServer) => {
    if (m?.tag !== TAG) return;
    if (m.kind === 'hello') return push();
    if (m.kind === 'abort') return s.running.get(m.id)?.abort(new Error(m.reason ?? 'aborted by the caller'));
    if (m.kind === 'call') void answerCall(s, m);
  });
  const timer = setInterval(push, o.pushIntervalMs ?? 1000).unref();
  const detach = () => {
    clearInterval(timer);
    offMessage();
    offClose();
    for (const ac of s.running.values()) ac.abort(new Error('the calling process is gone'));
    s.running.clear();
  };
  const offClose = channel.onClose(detach);
  push();
  return detach;
}

/** The serving side of one channel. */
interface Serving {
  engine: Engine;
  channel: IpcChannel;
  /** ServeOptions.callerPrefix. */
  prefix: string;
  /** The calls still running, by id, to abort. */
  running: Map<number, AbortController>;
}

type CallMessage = Extract<ToServer, { kind: 'call' }>;

const snapshotOf = (engine: Engine): Snapshot => ({ status: engine.status(), modelInfo: engine.modelInfo(), models: engine.models() });

/** Runs a call and sends its result back, with the snapshot it left. */
async function answerCall(s: Serving, m: CallMessage): Promise<void> {
  const ac = new AbortController();
  if (m.aborted) ac.abort(new Error('aborted by the caller'));
  s.running.set(m.id, ac);
  const r = await runCall(s, m, ac.signal).then(
    (value) => ({ value }),
    (e: unknown) => ({ error: toWire(e) }),
  );
  s.running.delete(m.id);
  // The request's outcome object was filled in here, on this side of the channel: send it back.
  const outcome = (m.args[0] as { outcome?: { cached?: boolean } } | undefined)?.outcome;
  s.channel.send({ tag: TAG, kind: 'result', id: m.id, ...r, outcome, state: snapshotOf(s.engine) } satisfies ToClient);
}

/** The engine's answer to a call; a stream's chunks are sent as they come, its result is undefined. */
async function runCall(s: Serving, { id, op, args }: CallMessage, signal: AbortSignal): Promise<unknown> {
  const { engine, channel } = s;
  const req = <T extends object>(r: T) => ({ ...r, signal, caller: `${s.prefix}${(r as { caller?: string }).caller ?? ''}` });
  switch (op) {
    case 'generate': return engine.generate(req(args[0] as GenerateRequest));
    case 'embed': return engine.embed(req(args[0] as EmbedRequest));
    case 'embedMany': return engine.embedMany(args[0] as string[], req((args[1] ?? {}) as Omit<EmbedRequest, 'text'>));
    case 'modelIdentity':
      return engine.modelIdentity(args[0] as ModelRole, args[1] as string | null | undefined, {
        signal, onWait: args[2] ? (progress) => channel.send({ tag: TAG, kind: 'wait', id, progress } satisfies ToClient) : undefined,
      });
    case 'load': return engine.load(args[0] as { role: ModelRole; modelSize?: string | null } | undefined);
    case 'unload': return engine.unload();
    case 'reload': return engine.reload();
    case 'clearCache': return engine.clearCache();
    case 'stream': {
      for await (const text of engine.generateStream(req(args[0] as GenerateRequest))) channel.send({ tag: TAG, kind: 'chunk', id, text } satisfies ToClient);
      return undefined;
    }
  }
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  onChunk?(text: string): void;
  onWait?(p: DownloadProgress): void;
  outcome?: { cached?: boolean };
}

/**
 * An Engine whose work is done by the process serving it over `channel`. `ready` resolves with the
 * first snapshot; status() and friends throw before that. close() only detaches this side: the
 * engine itself belongs to the serving process (and to every other process using it).
 */
export function engineOverIpc(channel: IpcChannel): Engine & { ready: Promise<void> } {
  const c = new IpcCalls(channel);
  return {
    ready: c.ready,
    generate: (r) => c.call<string>('generate', [plain(r)], r.signal).result,
    generateStream(r: GenerateRequest) {
      let id = 0;
      return pullChunks(
        (push) => { const call = c.call<void>('stream', [plain(r)], r.signal, push); id = call.id; return call.result; },
        // Leaving the loop early stops the generation, as with the engine itself.
        () => c.abort(id, 'stream closed by its consumer'),
      );
    },
    embed: (r) => c.call<Float32Array>('embed', [plain(r)], r.signal).result,
    embedMany: (texts, r = {}) => c.call<Float32Array[]>('embedMany', [texts, plain(r)], r.signal).result,
    modelIdentity: (role, modelSize, o = {}) => c.call<string>('modelIdentity', [role, modelSize, !!o.onWait], o.signal, undefined, o.onWait).result,
    load: (which) => c.call<void>('load', [which]).result,
    unload: () => c.call<void>('unload', []).result,
    reload: () => c.call<void>('reload', []).result,
    clearCache: () => void c.call<void>('clearCache', []).result.catch(() => {}),
    status: () => c.current().status,
    modelInfo: () => c.current().modelInfo,
    models: () => c.current().models,
    close: async () => c.close(),
  };
}

/** A request without its signal (it cannot cross the channel). */
function plain<T extends { signal?: AbortSignal }>(r: T): Omit<T, 'signal'> {
  const { signal: _signal, ...rest } = r;
  return rest;
}

/** The calling side of a channel: the calls waiting for their result, and the latest snapshot. */
class IpcCalls {
  readonly ready: Promise<void>;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private state: Snapshot | undefined;
  private closed = false;
  private gotState!: () => void;
  private readonly offMessage: () => void;
  private readonly offClose: () => void;

  constructor(private readonly channel: IpcChannel) {
    this.ready = new Promise<void>((resolve) => (this.gotState = resolve));
    this.offMessage = channel.onMessage((m: ToClient) => this.receive(m));
    this.offClose = channel.onClose(() => {
      this.closed = true;
      this.failAll(new EngineClosedError());
    });
    channel.send({ tag: TAG, kind: 'hello' } satisfies ToServer);
  }

  /** Sends a call without the signal (it cannot cross); an abort is sent as its own message. */
  call<T>(op: Op, args: unknown[], signal?: AbortSignal | null, onChunk?: (text: string) => void, onWait?: (p: DownloadProgress) => void): { id: number; result: Promise<T> } {
    const id = this.nextId++;
    const result = new Promise<T>((resolve, reject) => {
      if (this.closed) return reject(new EngineClosedError());
      const outcome = (args[0] as { outcome?: { cached?: boolean } } | undefined)?.outcome;
      this.pending.set(id, { resolve, reject, onChunk, onWait, outcome: typeof outcome === 'object' ? outcome : undefined });
      this.channel.send({ tag: TAG, kind: 'call', id, op, args, aborted: signal?.aborted || undefined } satisfies ToServer);
    });
    if (signal && !signal.aborted) {
      const onAbort = () => this.abort(id, signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      result.then(() => signal.removeEventListener('abort', onAbort), () => signal.removeEventListener('abort', onAbort));
    }
    return { id, result };
  }

  abort(id: number, reason?: unknown): void {
    if (this.pending.has(id)) this.channel.send({ tag: TAG, kind: 'abort', id, reason: reason === undefined ? undefined : String((reason as Error)?.message ?? reason) } satisfies ToServer);
  }

  current(): Snapshot {
    if (!this.state) throw new Error('the inference engine has not reported its state yet (await ready)');
    return this.state;
  }

  /** Detaches this side; calls still waiting fail with EngineClosedError. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.offMessage();
    this.offClose();
    this.failAll(new EngineClosedError());
  }

  private receive(m: ToClient): void {
    if (m?.tag !== TAG) return;
    if (m.kind === 'state' || m.kind === 'result') {
      this.state = m.state;
      this.gotState();
    }
    if (m.kind === 'chunk') this.pending.get(m.id)?.onChunk?.(m.text);
    else if (m.kind === 'wait') this.pending.get(m.id)?.onWait?.(m.progress);
    else if (m.kind === 'result') {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (p.outcome && m.outcome) Object.assign(p.outcome, m.outcome);
      if (m.error) p.reject(fromWire(m.error));
      else p.resolve(m.value);
    }
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }
}
