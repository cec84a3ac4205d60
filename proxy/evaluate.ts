// Evaluates one steadytext call whose argument values are known, into the text the SQL function
// receives as _steadytext_answer: the answer in the form the function returns it, or the error it must
// raise (so a failure happens inside the database, where the transaction sees it).
import type { RuntimeConfig } from '../config/runtime.js';
import type { Engine } from '../inference/engine.js';
import { errorAnswer, streamAnswer, vectorText, wrapAnswer } from '../sql/answers.js';
import type { CacheEntry } from '../sql/store.js';
import type { SteadyFunction } from './calls.js';
import { engineErrorToWire } from './daemon.js';

/** Each function's parameters in declaration order (the seed's signatures). */
export const PARAMETERS: Partial<Record<SteadyFunction, readonly string[]>> = {
  steadytext_generate: ['prompt', 'max_tokens', 'seed', 'temperature', 'model_size'],
  steadytext_embed: ['text', 'seed', 'model_size'],
  steadytext_generate_stream: ['prompt', 'max_tokens', 'seed'],
  steadytext_daemon_status: [],
  steadytext_daemon_start: [],
  steadytext_daemon_stop: [],
  steadytext_daemon_restart: [],
  steadytext_model_info: [],
};

/** Argument values by parameter name; a missing name takes its default, as in SQL. */
export type ArgValues = Record<string, string | number | null>;

export interface EvalContext {
  engine: Engine;
  config: RuntimeConfig;
  caller: string;
  signal?: AbortSignal;
  /** Where the daemon endpoint listens (reported by steadytext_daemon_status). */
  daemon?: { host: string; port: number };
  /** Filled in by the engine: whether the answer came from its result cache. */
  outcome?: { cached?: boolean };
  /** Called with what the answer should leave in steadytext_cache. */
  remember?: (role: 'generation' | 'embedding', size: string, entry: (identity: string) => CacheEntry) => void;
}

const num = (v: unknown): number | null => (v === null || v === undefined ? null : typeof v === 'number' ? v : Number(v));

/**
 * The answer, or undefined when the call should be left to the database (e.g. a NULL input, which the
 * function answers with NULL itself).
 */
export async function evaluateCall(fn: SteadyFunction, a: ArgValues, e: EvalContext): Promise<string | undefined> {
  const cfg = e.config;
  try {
    const computes = fn === 'steadytext_generate' || fn === 'steadytext_generate_stream' || fn === 'steadytext_embed';
    if (computes && !cfg.daemonAutoStart && !e.engine.status().running) {
      return errorAnswer('55000', `${fn}: the pg-steadytext models are stopped and daemon_auto_start is false`,
        "Run SELECT steadytext_daemon_start(), or SELECT steadytext_config_set('daemon_auto_start', 'true').");
    }
    switch (fn) {
      case 'steadytext_generate':
      case 'steadytext_generate_stream': {
        const prompt = a.prompt;
        if (prompt === null || prompt === undefined) return undefined;
        const maxTokens = num(a.max_tokens) ?? cfg.defaultMaxTokens;
        const seed = num(a.seed) ?? cfg.defaultSeed;
        const temperature = (fn === 'steadytext_generate' ? num(a.temperature) : null) ?? 0;
        const modelSize = (a.model_size as string | null | undefined) ?? cfg.defaultModelSize;
        const text = await e.engine.generate({
          prompt: String(prompt), maxTokens, seed, temperature, modelSize, caller: e.caller, signal: e.signal,
          timeoutMs: cfg.daemonTimeoutMs, cache: cfg.cacheEnabled, outcome: e.outcome,
        });
        const answer = fn === 'steadytext_generate' ? text : streamAnswer(text);
        if (cfg.cacheEnabled) {
          const op = fn === 'steadytext_generate' ? 'generate' : 'generate_stream';
          e.remember?.('generation', modelSize, (identity) => ({ op, identity, prompt: String(prompt), maxTokens, seed, temperature, response: answer }));
        }
        return wrapAnswer(answer);
      }
      case 'steadytext_embed': {
        const text = a.text;
        if (text === null || text === undefined) return undefined;
        const seed = num(a.seed) ?? cfg.defaultSeed;
        const modelSize = (a.model_size as string | null | undefined) ?? cfg.defaultModelSize;
        const v = vectorText(await e.engine.embed({ text: String(text), seed, modelSize, caller: e.caller, signal: e.signal, timeoutMs: cfg.daemonTimeoutMs, cache: cfg.cacheEnabled, outcome: e.outcome }));
        if (cfg.cacheEnabled) e.remember?.('embedding', modelSize, (identity) => ({ op: 'embed', identity, text: String(text), seed, embedding: v }));
        return v;
      }
      case 'steadytext_daemon_status': {
        const st = e.engine.status();
        return JSON.stringify({
          running: st.running, pid: st.pid, host: e.daemon?.host ?? cfg.daemonHost, port: e.daemon?.port ?? cfg.daemonPort,
          uptime_seconds: st.uptimeSeconds, requests_processed: st.requestsProcessed, errors_count: st.errorsCount,
          avg_latency_ms: st.requestsProcessed ? st.avgLatencyMs : null,
        });
      }
      case 'steadytext_model_info':
        return JSON.stringify(e.engine.modelInfo().map((m) => ({ model_type: m.modelType, model_size: m.modelSize, loaded: m.loaded, memory_mb: m.memoryMb })));
      case 'steadytext_daemon_start':
        await e.engine.load();
        return 'true';
      case 'steadytext_daemon_stop':
        await e.engine.unload();
        return 'true';
      case 'steadytext_daemon_restart':
        await e.engine.reload();
        return 'true';
      default:
        return undefined;
    }
  } catch (err) {
    const w = engineErrorToWire(fn, err, cfg.daemonTimeoutMs);
    return errorAnswer(w.code, w.message, w.hint ?? '');
  }
}
