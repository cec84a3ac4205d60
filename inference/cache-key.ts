// The one cache key of an answer, for every cache that holds one: the engine's in-memory result cache
// (inference/cache.ts) and the shared steadytext_cache table the proxy, the daemon endpoint and the SQL
// functions read and write (sql/store.ts entryKey). The SQL function steadytext_cache_key computes the same
// bytes: sha256 over op, model identity, params and input joined by U+001F (tests/sql/cache-key.test.ts).
import { createHash } from 'node:crypto';

export type CacheOp = 'generate' | 'embed' | 'generate_stream';

const SEP = '\x1f';

/** The key from its parts (op is a CacheOp; any text is hashed as given, as steadytext_cache_key does). */
export function cacheKey(op: string, modelIdentity: string, params: string, input: string): string {
  return createHash('sha256').update(op + SEP + modelIdentity + SEP + params + SEP + input, 'utf8').digest('hex');
}

/** A call with every argument resolved, as its answer is keyed: op, model file identity, params, input. */
export type KeyedCall =
  | { op: 'generate' | 'generate_stream'; identity: string; prompt: string; maxTokens: number; seed: number; temperature: number }
  | { op: 'embed'; identity: string; text: string; seed: number };

/** The key of a call's answer, in every cache (see above). */
export function callKey(c: KeyedCall): string {
  return c.op === 'embed'
    ? cacheKey('embed', c.identity, embedParams(c.seed), c.text)
    : cacheKey(c.op, c.identity, generateParams(c.maxTokens, c.seed, c.temperature), c.prompt);
}

/** Lower-case hex of the IEEE-754 big-endian bytes, as PostgreSQL's encode(float8send(x), 'hex'). */
export function float8Hex(x: number): string {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x, false);
  let out = '';
  for (let i = 0; i < 8; i++) out += view.getUint8(i).toString(16).padStart(2, '0');
  return out;
}

/** Inverse of float8Hex; throws on anything but 16 hex digits. */
export function float8FromHex(hex: string): number {
  if (!/^[0-9a-fA-F]{16}$/.test(hex)) throw new RangeError(`not the hex of a float8: ${JSON.stringify(hex)}`);
  const view = new DataView(new ArrayBuffer(8));
  for (let i = 0; i < 8; i++) view.setUint8(i, parseInt(hex.slice(i * 2, i * 2 + 2), 16));
  return view.getFloat64(0, false);
}

/**
 * params of generate and generate_stream: the exact temperature bits, never a rounded decimal
 * (+ 0 turns -0 into 0, as the SQL side does).
 */
export function generateParams(maxTokens: number, seed: number, temperature: number): string {
  return `max_tokens=${intText(maxTokens)};seed=${intText(seed)};temperature=${float8Hex(temperature + 0)}`;
}

/** params of embed. */
export function embedParams(seed: number): string {
  return `seed=${intText(seed)}`;
}

// PostgreSQL renders int4 in plain decimal; refuse values it could not have produced.
function intText(n: number): string {
  if (!Number.isSafeInteger(n)) throw new RangeError(`not an integer: ${n}`);
  return String(n);
}
