// Text forms of answers as the SQL functions receive them in _steadytext_answer (rewrite path), from
// the daemon endpoint (callback path) and in steadytext_cache.response: one format for every path.

/**
 * pgvector text of a float32 vector: '[x,y,...]', each element in 8 significant digits, or 9 where 8 do
 * not read back as the same float32. Any spelling that reads back exactly stores the same vector, and
 * clients only ever see pgvector's own (shortest) printing of it; the shortest spelling here would cost
 * the hot path of every embed answer twice the time (0.40 vs 0.22 ms for 1024 dims) for 2% fewer bytes.
 */
export function vectorText(v: ArrayLike<number>): string {
  const parts = new Array<string>(v.length);
  for (let i = 0; i < v.length; i++) parts[i] = float4Text(v[i]);
  return '[' + parts.join(',') + ']';
}

function float4Text(x: number): string {
  const f = Math.fround(x);
  if (!Number.isFinite(f)) throw new RangeError(`pgvector cannot store ${x}`);
  if (f === 0) return Object.is(f, -0) ? '-0' : '0';
  let s = f.toPrecision(8);
  if (Math.fround(+s) !== f) s = f.toPrecision(9);
  // toPrecision pads ('1.5000000e+5', '0.10000000'); the double nearest those digits prints them bare.
  return s.includes('e') || s.endsWith('0') ? String(+s) : s;
}

/** Parses pgvector text back into a Float32Array. */
export function parseVectorText(s: string): Float32Array {
  const t = s.trim();
  if (!t.startsWith('[') || !t.endsWith(']')) throw new SyntaxError(`not a pgvector value: ${t.slice(0, 40)}`);
  const body = t.slice(1, -1).trim();
  if (body === '') return new Float32Array(0);
  return Float32Array.from(body.split(','), (x) => Number(x));
}

/**
 * pgvector's binary form of a vector (dimensions, a zero, then big-endian float4s), as vector_recv reads it:
 * from the engine's floats ~0.02 ms for 1024 dims, where their text costs ~0.25 ms to print here and as much
 * again for vector_in to parse in the database. Given as pgvector text, the floats are the ones vector_in
 * would read: the text holds 8 or 9 significant digits of each float32 (vectorText), which Number then fround
 * give back exactly.
 */
export function vectorBinary(v: Float32Array | string): Buffer {
  const f = typeof v === 'string' ? parseVectorText(v) : v;
  const b = Buffer.allocUnsafe(4 + 4 * f.length);
  b.writeInt16BE(f.length, 0);
  b.writeInt16BE(0, 2);
  Buffer.from(f.buffer, f.byteOffset, f.byteLength).copy(b, 4);
  if (!isBigEndian) b.subarray(4).swap32();
  return b;
}

const isBigEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 0;

/**
 * Splits generated text into the chunks steadytext_generate_stream returns: each chunk is a run of
 * whitespace followed by the next run of non-whitespace, so the chunks joined are the text exactly.
 */
export function streamChunks(text: string): string[] {
  return text.match(/\s*\S+|\s+$/g) ?? [];
}

/** The answer form of steadytext_generate_stream: a JSON array of the chunks. */
export function streamAnswer(text: string): string {
  return JSON.stringify(streamChunks(text));
}

const SOH = '\x01';

/** An answer as _steadytext_answer carries it: text that itself starts with SOH gets a second one (see _steadytext_unwrap). */
export function wrapAnswer(text: string): string {
  return text.startsWith(SOH) ? SOH + text : text;
}

/**
 * A failed call as a value: what the SQL function raises for it. Evaluation returns it (evaluate.ts), the
 * serving paths pass it on as is, and only where it crosses into SQL, a steadytext_mailbox entry, is it
 * encoded (errorAnswer).
 */
export interface CallError { sqlstate: string; message: string; hint: string }

/** An error to be raised by the SQL function itself, so it happens inside the database like any failing call:
 *  the in-band form _steadytext_unwrap reads (SOH, SQLSTATE, SOH, message, SOH, hint). */
export function errorAnswer(sqlstate: string, message: string, hint = ''): string {
  const clean = (s: string) => s.replaceAll(SOH, ' ').replaceAll('\0', '');
  return SOH + sqlstate + SOH + clean(message) + SOH + clean(hint);
}
