// Test and benchmark tooling, not part of the published package (tsconfig.json does not compile tools/).
// Minimal streaming GGUF v3 writer (little-endian). Tensor data is produced chunk by chunk from a fill
// callback and encoded on the fly, so multi-GB files never sit in memory.
import { open } from 'node:fs/promises';

export type GGUFScalarType =
  | 'uint8' | 'int8' | 'uint16' | 'int16' | 'uint32' | 'int32' | 'float32' | 'bool' | 'string'
  | 'uint64' | 'int64' | 'float64';
type Scalar = number | bigint | boolean | string;
export type GGUFValue =
  | { type: GGUFScalarType; value: Scalar }
  | { type: 'array'; of: GGUFScalarType; value: readonly Scalar[] };

const VALUE_TYPE: Record<GGUFScalarType | 'array', number> = {
  uint8: 0, int8: 1, uint16: 2, int16: 3, uint32: 4, int32: 5, float32: 6, bool: 7, string: 8, array: 9,
  uint64: 10, int64: 11, float64: 12,
};

/** Shorthands for metadata values. */
export const gv = {
  u32: (value: number): GGUFValue => ({ type: 'uint32', value }),
  i32: (value: number): GGUFValue => ({ type: 'int32', value }),
  f32: (value: number): GGUFValue => ({ type: 'float32', value }),
  bool: (value: boolean): GGUFValue => ({ type: 'bool', value }),
  str: (value: string): GGUFValue => ({ type: 'string', value }),
  strs: (value: readonly string[]): GGUFValue => ({ type: 'array', of: 'string', value }),
  f32s: (value: readonly number[]): GGUFValue => ({ type: 'array', of: 'float32', value }),
  i32s: (value: readonly number[]): GGUFValue => ({ type: 'array', of: 'int32', value }),
};

export type GGMLType = 'F32' | 'F16' | 'Q8_0';
const GGML_TYPE_ID: Record<GGMLType, number> = { F32: 0, F16: 1, Q8_0: 8 };
const QK8_0 = 32;

export interface GGUFTensor {
  name: string;
  /** ggml order: ne[0] (the contiguous, input dimension) first. */
  shape: readonly number[];
  type: GGMLType;
  /** Fills `out` with elements [start, start + out.length), called with consecutive ranges from 0. */
  fill(out: Float32Array, start: number): void;
}

export interface GGUFFile {
  metadata: Record<string, GGUFValue>;
  tensors: readonly GGUFTensor[];
}

export const tensorElements = (t: Pick<GGUFTensor, 'shape'>) => t.shape.reduce((a, b) => a * b, 1);

export function tensorBytes(t: Pick<GGUFTensor, 'shape' | 'type'>): number {
  const n = tensorElements(t);
  if (t.type === 'Q8_0') {
    if (t.shape[0] % QK8_0) throw new Error(`Q8_0 needs ne[0] % 32 == 0, got ${t.shape[0]}`);
    return (n / QK8_0) * 34;
  }
  return n * (t.type === 'F32' ? 4 : 2);
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

function alignmentOf(f: GGUFFile): number {
  const a = f.metadata['general.alignment'];
  return a ? Number(a.value) : 32;
}

/** Size of the data section (what onProgress counts up to). */
export function ggufDataBytes(f: GGUFFile): number {
  const a = alignmentOf(f);
  return f.tensors.reduce((s, t) => s + alignUp(tensorBytes(t), a), 0);
}

// float32 -> IEEE half bits, round to nearest even, with subnormals/inf/nan.
const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
export function f16Bits(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e, half = 1 << (shift - 1), rem = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry correctly rolls into the exponent
  return sign | h;
}

/** Double-buffered sink: one buffer is filled while the previous one is being written (bounded memory). */
class Sink {
  private buf: Buffer;
  private spare: Buffer;
  pos = 0;
  private pending: Promise<unknown> = Promise.resolve();
  private written = 0;
  constructor(private fh: import('node:fs/promises').FileHandle, size = 4 << 20) {
    this.buf = Buffer.alloc(size);
    this.spare = Buffer.alloc(size);
  }
  get offset() { return this.written + this.pos; }
  /** Returns the buffer with at least n free bytes from `pos`. */
  async room(n: number): Promise<Buffer> {
    if (this.pos + n > this.buf.length) {
      await this.flush();
      if (n > this.buf.length) {
        this.buf = Buffer.alloc(n);
        this.spare = Buffer.alloc(n);
      }
    }
    return this.buf;
  }
  async flush() {
    await this.pending;
    const len = this.pos, buf = this.buf;
    this.pending = len ? this.writeAll(buf, len) : Promise.resolve();
    this.written += len;
    [this.buf, this.spare] = [this.spare, buf];
    this.pos = 0;
  }
  private async writeAll(buf: Buffer, len: number) {
    for (let o = 0; o < len;) o += (await this.fh.write(buf, o, len - o)).bytesWritten;
  }
  async close() {
    await this.flush();
    await this.pending;
  }
  /** Waits for an in-flight write without throwing (before closing the file on error). */
  settle() { return this.pending.catch(() => {}); }
  async bytes(b: Uint8Array) {
    for (let i = 0; i < b.length;) {
      const buf = await this.room(1), n = Math.min(b.length - i, buf.length - this.pos);
      buf.set(b.subarray(i, i + n), this.pos);
      this.pos += n;
      i += n;
    }
  }
  async u32(v: number) { (await this.room(4)).writeUInt32LE(v, this.pos); this.pos += 4; }
  async u64(v: number | bigint) { (await this.room(8)).writeBigUInt64LE(BigInt(v), this.pos); this.pos += 8; }
  async str(s: string) { const b = Buffer.from(s, 'utf8'); await this.u64(b.length); await this.bytes(b); }
  async zeros(n: number) { await this.bytes(new Uint8Array(n)); }
}

async function writeScalar(s: Sink, type: GGUFScalarType, v: Scalar) {
  if (type === 'string') return s.str(String(v));
  if (type === 'uint64' || type === 'int64') {
    const b = await s.room(8);
    if (type === 'uint64') b.writeBigUInt64LE(BigInt(v), s.pos);
    else b.writeBigInt64LE(BigInt(v), s.pos);
    s.pos += 8;
    return;
  }
  const n = Number(v), size = { uint8: 1, int8: 1, bool: 1, uint16: 2, int16: 2, uint32: 4, int32: 4, float32: 4, float64: 8 }[type];
  const b = await s.room(size), p = s.pos;
  switch (type) {
    case 'uint8': case 'bool': b.writeUInt8(n, p); break;
    case 'int8': b.writeInt8(n, p); break;
    case 'uint16': b.writeUInt16LE(n, p); break;
    case 'int16': b.writeInt16LE(n, p); break;
    case 'uint32': b.writeUInt32LE(n, p); break;
    case 'int32': b.writeInt32LE(n, p); break;
    case 'float32': b.writeFloatLE(n, p); break;
    case 'float64': b.writeDoubleLE(n, p); break;
  }
  s.pos += size;
}

// Encodes n floats from src into dst at pos; returns bytes written.
function encode(type: GGMLType, src: Float32Array, n: number, dst: Buffer, pos: number): number {
  const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  if (type === 'F32') {
    for (let i = 0; i < n; i++) dv.setFloat32(pos + 4 * i, src[i], true);
    return 4 * n;
  }
  if (type === 'F16') {
    for (let i = 0; i < n; i++) dv.setUint16(pos + 2 * i, f16Bits(src[i]), true);
    return 2 * n;
  }
  // Q8_0: per block of 32, d = amax / 127 stored as f16, then q = round(x / d) as int8.
  let o = pos;
  for (let b = 0; b < n; b += QK8_0) {
    let amax = 0;
    for (let i = b; i < b + QK8_0; i++) { const a = Math.abs(src[i]); if (a > amax) amax = a; }
    const d = amax / 127, id = d ? 1 / d : 0;
    dv.setUint16(o, f16Bits(d), true);
    o += 2;
    for (let i = b; i < b + QK8_0; i++) dst[o++] = Math.round(src[i] * id) & 0xff;
  }
  return o - pos;
}

export interface WriteGGUFOptions {
  /** Called after each chunk with the data-section bytes written so far in this file. */
  onProgress?: (bytes: number) => void;
}

export async function writeGGUF(path: string, file: GGUFFile, opts: WriteGGUFOptions = {}): Promise<void> {
  const align = alignmentOf(file);
  const fh = await open(path, 'w');
  const s = new Sink(fh);
  try {
    await s.bytes(Buffer.from('GGUF', 'latin1'));
    await s.u32(3);
    await s.u64(file.tensors.length);
    const entries = Object.entries(file.metadata);
    await s.u64(entries.length);
    for (const [key, v] of entries) {
      await s.str(key);
      await s.u32(VALUE_TYPE[v.type]);
      if (v.type === 'array') {
        await s.u32(VALUE_TYPE[v.of]);
        await s.u64(v.value.length);
        for (const x of v.value) await writeScalar(s, v.of, x);
      } else await writeScalar(s, v.type, v.value);
    }
    let offset = 0;
    for (const t of file.tensors) {
      await s.str(t.name);
      await s.u32(t.shape.length);
      for (const d of t.shape) await s.u64(d);
      await s.u32(GGML_TYPE_ID[t.type]);
      await s.u64(offset);
      offset += alignUp(tensorBytes(t), align);
    }
    await s.zeros(alignUp(s.offset, align) - s.offset);

    const dataStart = s.offset;
    const chunk = 1 << 16; // elements; a multiple of 32 so Q8_0 blocks never straddle chunks
    const src = new Float32Array(chunk);
    for (const t of file.tensors) {
      const n = tensorElements(t), bytes = tensorBytes(t);
      for (let start = 0; start < n; start += chunk) {
        const len = Math.min(chunk, n - start), view = len === chunk ? src : src.subarray(0, len);
        t.fill(view, start);
        const buf = await s.room(len * 4);
        s.pos += encode(t.type, view, len, buf, s.pos);
        opts.onProgress?.(s.offset - dataStart);
      }
      await s.zeros(alignUp(bytes, align) - bytes);
    }
    await s.close();
  } finally {
    await s.settle();
    await fh.close();
  }
}
