// Structural check of a GGUF file before node-llama-cpp reads it: its metadata reader never settles on a
// file cut short inside the header (a half-copied model would hang every load), so walk the header, the
// key/values and the tensor table within the file's bounds and check the tensor data fits.
import { open } from 'node:fs/promises';
import { ModelLoadError } from './errors.js';

class Short extends Error {}

// Fixed-size GGUF value types (id -> bytes); 8 is a string, 9 an array.
const SCALAR: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
// ggml tensor types -> [elements per block, bytes per block], for the common ones; others are not sized.
const BLOCK: Record<number, [number, number]> = {
  0: [1, 4], 1: [1, 2], 30: [1, 2], 24: [1, 1], 25: [1, 2], 26: [1, 4], 27: [1, 8], 28: [1, 8],
  2: [32, 18], 3: [32, 20], 6: [32, 22], 7: [32, 24], 8: [32, 34], 9: [32, 36],
  10: [256, 84], 11: [256, 110], 12: [256, 144], 13: [256, 176], 14: [256, 210], 15: [256, 292],
};

/** Throws ModelLoadError saying what is wrong with the file, if anything structural is. */
export async function checkGguf(path: string): Promise<void> {
  const f = await open(path, 'r');
  try {
    const size = (await f.stat()).size;
    const bad = (why: string) => new ModelLoadError(
      `model file ${path} is not a usable GGUF file: ${why}. Delete it and download it again (\`pg-steadytext models pull\`), or configure another file`, path);
    for (let len = Math.min(size, 4 << 20); ; len = Math.min(size, len * 4)) {
      const buf = Buffer.alloc(len);
      await f.read(buf, 0, len, 0);
      try {
        const need = walk(buf, size === len, bad);
        if (need > size) throw bad(`truncated: its tensors need ${need} bytes but the file has ${size}`);
        return;
      } catch (e) {
        if (!(e instanceof Short)) throw e;
      }
    }
  } finally {
    await f.close();
  }
}

/** Parses the header from `b`; returns the bytes the whole file needs. Throws Short when `b` is too small. */
function walk(b: Buffer, whole: boolean, bad: (why: string) => Error): number {
  let pos = 0;
  const take = (n: number) => {
    if (pos + n > b.length) throw whole ? bad(`truncated: its header runs past the end of the file (${b.length} bytes)`) : new Short();
    const at = pos;
    pos += n;
    return at;
  };
  const u32 = () => b.readUInt32LE(take(4));
  const u64 = () => {
    const v = b.readBigUInt64LE(take(8));
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`a length or count of ${v} is impossible`);
    return Number(v);
  };
  const str = () => b.toString('utf8', take(u64()), pos);
  const skip = (type: number, depth = 0): void => {
    if (type in SCALAR) { take(SCALAR[type]); return; }
    if (type === 8) { take(u64()); return; }
    if (type !== 9 || depth > 2) throw bad(`unknown metadata value type ${type}`);
    const inner = u32(), count = u64();
    if (inner in SCALAR) take(count * SCALAR[inner]);
    else for (let i = 0; i < count; i++) skip(inner, depth + 1);
  };

  if (b.length < 8) throw bad('it is empty or too short');
  if (b.toString('latin1', 0, 4) !== 'GGUF') throw bad('it does not start with the GGUF magic bytes');
  take(4);
  const version = u32();
  if (version !== 2 && version !== 3) throw bad(`GGUF version ${version} is not supported (2 or 3 expected)`);
  const tensors = u64(), kvs = u64();
  if (tensors > 1e6 || kvs > 1e6) throw bad(`its header claims ${tensors} tensors and ${kvs} metadata entries`);
  let alignment = 32;
  for (let i = 0; i < kvs; i++) {
    const key = str(), type = u32();
    if (key === 'general.alignment' && type === 4) { alignment = b.readUInt32LE(pos); if (!alignment) throw bad('general.alignment is 0'); }
    skip(type);
  }
  const infos: Array<{ offset: number; bytes: number }> = [];
  for (let i = 0; i < tensors; i++) {
    str();
    const dims = u32();
    if (dims > 4) throw bad(`a tensor has ${dims} dimensions`);
    let n = 1;
    for (let d = 0; d < dims; d++) n *= u64();
    const type = u32(), offset = u64(), block = BLOCK[type];
    infos.push({ offset, bytes: block ? Math.ceil(n / block[0]) * block[1] : 0 });
  }
  const data = Math.ceil(pos / alignment) * alignment;
  return infos.reduce((end, t) => Math.max(end, data + t.offset + t.bytes), data);
}
