// Evaluates steadytext calls whose argument values the proxy knows. A computing call (generate, embed,
// generate_stream) first resolves into a request: its defaults from steadytext_config, exactly as the SQL
// function resolves them, so that both sides compute the same cache key. The answer is handed to the
// database through steadytext_cache under that key (a failure through steadytext_mailbox), never through
// the statement's text. Management calls (status, model_info, start, stop, restart) act on the engine.
import type { RuntimeConfig } from '../config/runtime.js';
import type { Engine } from '../inference/engine.js';
import { streamAnswer, vectorText, type CallError } from './answers.js';
import type { CacheEntry } from './store.js';
import { SIGNATURES, type ComputingFunction, type ManagementFunction, type ManagementOp } from './signatures.js';
import { engineErrorToWire } from './errors.js';

export { isComputing, isManagement, type ComputingFunction, type ManagementFunction } from './signatures.js';

/** The mailbox topic under which the SQL function looks for a management answer (its op in the table). */
export function managementTopic(fn: ManagementFunction): ManagementOp {
  return SIGNATURES[fn].op;
}

/** Argument values by parameter name; a missing name takes its default, as in SQL. */
export type ArgValues = Record<string, string | number | null>;

/** A computing call with every default resolved. */
export type ComputeRequest = { fn: ComputingFunction; modelSize: string } & (
  | { op: 'generate' | 'generate_stream'; prompt: string; maxTokens: number; seed: number; temperature: number }
  | { op: 'embed'; text: string; seed: number });

const num = (v: unknown): number | null => (v === null || v === undefined ? null : typeof v === 'number' ? v : Number(v));

/**
 * The request a call makes, or undefined when the database must answer it alone: a NULL input (the
 * function returns NULL), or a value the SQL function would refuse (it raises the error itself).
 */
export function resolveRequest(fn: ComputingFunction, a: ArgValues, cfg: RuntimeConfig): ComputeRequest | undefined {
  const modelSize = (a.model_size as string | null | undefined) ?? cfg.defaultModelSize;
  const seed = num(a.seed) ?? cfg.defaultSeed;
  if (!Number.isSafeInteger(seed) || seed < 0 || typeof modelSize !== 'string' || modelSize.trim() === '') return undefined;
  if (fn === 'steadytext_embed') {
    if (a.text === null || a.text === undefined) return undefined;
    return { fn, op: 'embed', modelSize, text: String(a.text), seed };
  }
  if (a.prompt === null || a.prompt === undefined) return undefined;
  const maxTokens = num(a.max_tokens) ?? cfg.defaultMaxTokens;
  // generate_stream has no temperature: greedy, as its SQL function passes NULL.
  const temperature = (fn === 'steadytext_generate' ? num(a.temperature) : null) ?? 0;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1 || !Number.isFinite(temperature) || temperature < 0) return undefined;
  return { fn, op: SIGNATURES[fn].op, modelSize, prompt: String(a.prompt), maxTokens, seed, temperature };
}

export const roleOf = (r: ComputeRequest): 'generation' | 'embedding' => (r.op === 'embed' ? 'embedding' : 'generation');

/** The steadytext_cache row a request's answer becomes (an embedding's from its floats, when at hand). */
export function cacheEntry(r: ComputeRequest, identity: string, a: Answer): CacheEntry {
  return r.op === 'embed'
    ? { op: 'embed', identity, text: r.text, seed: r.seed, embedding: a.vector ?? a.answer }
    : { op: r.op, identity, prompt: r.prompt, maxTokens: r.maxTokens, seed: r.seed, temperature: r.temperature, response: a.answer };
}

export interface ComputeContext {
  engine: Engine;
  config: RuntimeConfig;
  caller: string;
  signal?: AbortSignal;
  /** Filled in by the engine: whether the answer came from its result cache. */
  outcome?: { cached?: boolean };
}

/**
 * A computed answer: its text (as steadytext_cache holds text, as the daemon endpoint and the mailbox carry
 * it), and an embedding's floats, from which its cache row is written in binary: the text of one, ~0.25 ms
 * for 1024 floats, is only made when asked for (the daemon's reply, a mailbox entry), not for a cache row.
 */
export interface Answer { readonly answer: string; readonly vector?: Float32Array }

/** What evaluating a call gives: its answer, or the error its SQL function is to raise. Never thrown. */
export type Evaluated = Answer | { error: CallError };

function embedding(vector: Float32Array): Answer {
  let text: string | undefined;
  return { vector, get answer() { return (text ??= vectorText(vector)); } };
}

/**
 * Computes a request. The answer is in the form steadytext_cache stores it (text, pgvector text, or the
 * stream's JSON array); a failure is the error the SQL function raises for it.
 */
export async function compute(r: ComputeRequest, e: ComputeContext): Promise<Evaluated> {
  const cfg = e.config;
  if (!cfg.daemonAutoStart && !e.engine.status().running) return { error: stoppedError(r.fn) };
  try {
    const common = { modelSize: r.modelSize, seed: r.seed, caller: e.caller, signal: e.signal, timeoutMs: cfg.daemonTimeoutMs, cache: cfg.cacheEnabled, outcome: e.outcome };
    if (r.op === 'embed') return embedding(await e.engine.embed({ ...common, text: r.text }));
    const text = await e.engine.generate({ ...common, prompt: r.prompt, maxTokens: r.maxTokens, temperature: r.temperature });
    return { answer: r.op === 'generate' ? text : streamAnswer(text) };
  } catch (err) {
    return { error: callError(r.fn, err, cfg.daemonTimeoutMs) };
  }
}

/** 55000 when a call would need models that were stopped while daemon_auto_start is false. */
export function stoppedError(fn: string): CallError {
  return {
    sqlstate: '55000',
    message: `${fn}: the pg-steadytext models are stopped and daemon_auto_start is false`,
    hint: "Run SELECT steadytext_daemon_start(), or SELECT steadytext_config_set('daemon_auto_start', 'true').",
  };
}

/** A thrown failure (an engine error, anything else) as the error the SQL function raises for `fn`. */
export function callError(fn: string, err: unknown, timeoutMs?: number): CallError {
  const w = engineErrorToWire(fn, err, timeoutMs);
  // Text PostgreSQL can hold (the message is logged, and raised by the function): no NUL.
  const text = (s: string) => s.replaceAll('\0', '');
  return { sqlstate: w.code, message: text(w.message), hint: text(w.hint ?? '') };
}

export type CallbackTransport = 'dblink' | 'inband';

/**
 * The transport a database's calls the proxy cannot see use (steadytext_config callback_transport): auto means
 * dblink when the extension is there and this proxy serves the daemon endpoint, else in-band.
 */
export function callbackTransport(cfg: RuntimeConfig, dblink: boolean, daemonOn: boolean): CallbackTransport {
  if (cfg.callbackTransport === 'dblink' || cfg.callbackTransport === 'inband') return cfg.callbackTransport;
  return dblink && daemonOn ? 'dblink' : 'inband';
}

/** What a management function returns, as the text its SQL function parses (JSON, or a boolean), or its error. */
export async function manage(fn: ManagementFunction, engine: Engine, daemon: { host: string; port: number } | undefined, cfg: RuntimeConfig, via: CallbackTransport = 'dblink'): Promise<Evaluated> {
  try {
    return { answer: await act(fn, engine, daemon, cfg, via) };
  } catch (err) {
    return { error: callError(fn, err, cfg.daemonTimeoutMs) };
  }
}

async function act(fn: ManagementFunction, engine: Engine, daemon: { host: string; port: number } | undefined, cfg: RuntimeConfig, via: CallbackTransport): Promise<string> {
  switch (fn) {
    case 'steadytext_daemon_status': {
      const st = engine.status();
      // Where the database reaches the proxy: the daemon endpoint, or 'in-band' (through client connections).
      const [host, port] = via === 'inband' ? ['in-band', null] : [daemon?.host ?? cfg.daemonHost, daemon?.port ?? cfg.daemonPort];
      return JSON.stringify({
        running: st.running, pid: st.pid, host, port,
        uptime_seconds: st.uptimeSeconds, requests_processed: st.requestsProcessed, errors_count: st.errorsCount,
        avg_latency_ms: st.requestsProcessed ? st.avgLatencyMs : null,
      });
    }
    case 'steadytext_model_info':
      return JSON.stringify(engine.modelInfo().map((m) => ({ model_type: m.modelType, model_size: m.modelSize, loaded: m.loaded, memory_mb: m.memoryMb })));
    case 'steadytext_daemon_start':
      await engine.load();
      return 'true';
    case 'steadytext_daemon_stop':
      await engine.unload();
      return 'true';
    case 'steadytext_daemon_restart':
      await engine.reload();
      return 'true';
  }
}
