// The one JSON request a steadytext_* SQL function sends the daemon endpoint through dblink
// (_steadytext_daemon_call in sql/migrations), read and checked. Its op names the function (sql/signatures.ts);
// a computing function's request carries its arguments with every default resolved, and the
// steadytext_config values the function read (cache, debug, auto_start, timeout_ms).
import { float8FromHex } from '../../inference/cache-key.js';
import { WireError } from '../errors.js';
import type { ComputeRequest } from '../evaluate.js';
import { DAEMON_OPS, functionOfOp, isComputing, SIGNATURES, type ComputingFunction, type ManagementFunction } from '../signatures.js';

/** Who asked, as the SQL function reports it (for logs and the engine's turns: the secret, not these, authenticates). */
export interface Origin {
  op: string;
  /** The function named in messages: the request's `function`, or the op's. */
  fn: string;
  user?: string;
  database?: string;
  backendPid?: number;
  timeoutMs?: number;
}

export type ComputeCall = Origin & { kind: 'computing'; request: ComputeRequest; cache: boolean; debug: boolean; autoStart: boolean };
export type ManagementCall = Origin & { kind: 'management'; function: ManagementFunction };
export type Request = ComputeCall | ManagementCall;

type Json = Record<string, unknown>;

/** Reads one request; a WireError (22P02, 22023) says what is wrong with it. */
export function parseRequest(text: string): Request {
  const j = jsonObject(text);
  const op = j.op;
  const canonical = typeof op === 'string' ? functionOfOp(op) : undefined;
  if (!canonical) {
    throw new WireError('22023', `pg-steadytext daemon: unknown op ${JSON.stringify(op)}; expected one of ${DAEMON_OPS.join(', ')}`);
  }
  const origin = originOf(j, op as string, canonical);
  if (!isComputing(canonical)) return { ...origin, kind: 'management', function: canonical };
  const request = computeRequest(canonical, new Arguments(j, origin.fn));
  return { ...origin, kind: 'computing', request, cache: j.cache !== false, debug: j.debug === true, autoStart: j.auto_start !== false };
}

function jsonObject(text: string): Json {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new WireError('22P02', `pg-steadytext daemon: the request is not valid JSON (${(e as Error).message})`);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new WireError('22023', 'pg-steadytext daemon: the request must be a JSON object');
  return j as Json;
}

function originOf(j: Json, op: string, canonical: ComputingFunction | ManagementFunction): Origin {
  return {
    op,
    fn: typeof j.function === 'string' && /^steadytext_\w+$/.test(j.function) ? j.function : canonical,
    user: typeof j.user === 'string' ? j.user : undefined,
    database: typeof j.database === 'string' ? j.database : undefined,
    backendPid: Number.isInteger(j.backend_pid) ? (j.backend_pid as number) : undefined,
    timeoutMs: typeof j.timeout_ms === 'number' && j.timeout_ms > 0 ? j.timeout_ms : undefined,
  };
}

function computeRequest(fn: ComputingFunction, a: Arguments): ComputeRequest {
  if (fn === 'steadytext_embed') return { fn, op: 'embed', text: a.text('text'), seed: a.int('seed', 0), modelSize: a.modelSize() };
  const temperature = a.temperature();
  return { fn, op: SIGNATURES[fn].op, prompt: a.text('prompt'), maxTokens: a.int('max_tokens', 1), seed: a.int('seed', 0), temperature, modelSize: a.modelSize() };
}

/** The arguments of a computing request; a bad one is a 22023 naming the function. */
class Arguments {
  constructor(private readonly j: Json, private readonly fn: string) {}

  private bad(what: string, v: unknown): WireError {
    return new WireError('22023', `${this.fn}: ${what}, got ${JSON.stringify(v)}`, `Check the arguments of ${this.fn}.`);
  }

  int(name: string, min: number): number {
    const v = this.j[name];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > 2147483647) throw this.bad(`${name} must be an integer from ${min} to 2147483647`, v);
    return v;
  }

  text(name: string): string {
    const v = this.j[name];
    if (typeof v !== 'string') throw this.bad(`${name} must be text`, v);
    return v;
  }

  modelSize(): string {
    const v = this.j.model_size;
    if (v === undefined || v === null) return 'small';
    if (typeof v !== 'string' || v.trim() === '') throw this.bad('model_size must be small, large or a model name', v);
    return v;
  }

  /** temperature_bits (the float8's 16 hex digits, exact) wins over temperature. */
  temperature(): number {
    const { temperature_bits: bits, temperature } = this.j;
    let t: unknown = temperature ?? 0;
    if (typeof bits === 'string') {
      try { t = float8FromHex(bits); } catch { throw this.bad('temperature_bits must be 16 hex digits', bits); }
    }
    if (typeof t !== 'number' || !Number.isFinite(t) || t < 0) throw this.bad('temperature must be a finite number >= 0', temperature);
    return t;
  }
}
