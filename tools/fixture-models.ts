// Test and benchmark tooling, not part of the published package (tsconfig.json does not compile tools/).
// Deterministic llama-architecture GGUF fixtures with random weights: `tiny` models for tests, `bench`
// models with real dimensions so benchmarks see realistic per-token cost without downloading weights.
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ggufDataBytes, gv, writeGGUF, type GGMLType, type GGUFFile, type GGUFTensor } from './gguf-writer.js';

export type FixturePreset = 'tiny' | 'bench';
export interface FixtureModels { generation: string; embedding: string }
/** Bump whenever the bytes written for a given preset and seed change (it keys on-disk caches). */
export const FIXTURE_VERSION = '1';
export const DEFAULT_FIXTURE_SEED = 1;

interface Dims {
  name: string;
  embd: number; layers: number; ff: number; heads: number; kvHeads: number; ctx: number;
  vocab: number; // minimum vocabulary size (padded with synthetic pieces)
  type: GGMLType; // matrices; norms are always F32
  ropeBase: number;
  embedding: boolean; // mean pooling, tied output
}

const PRESETS: Record<FixturePreset, { generation: Dims; embedding: Dims }> = {
  tiny: {
    generation: { name: 'tiny-gen', embd: 64, layers: 2, ff: 192, heads: 4, kvHeads: 2, ctx: 4096, vocab: 0, type: 'Q8_0', ropeBase: 10000, embedding: false },
    embedding: { name: 'tiny-embed', embd: 1024, layers: 1, ff: 1024, heads: 16, kvHeads: 4, ctx: 8192, vocab: 0, type: 'F16', ropeBase: 10000, embedding: true },
  },
  bench: {
    // Llama-3.2-1B body (~1.0 B parameters here with the small vocabulary).
    generation: { name: 'bench-gen', embd: 2048, layers: 16, ff: 8192, heads: 32, kvHeads: 8, ctx: 8192, vocab: 8192, type: 'Q8_0', ropeBase: 500000, embedding: false },
    // Qwen3-Embedding-0.6B body with llama-style 64-dim heads.
    embedding: { name: 'bench-embed', embd: 1024, layers: 28, ff: 3072, heads: 16, kvHeads: 8, ctx: 8192, vocab: 8192, type: 'Q8_0', ropeBase: 1000000, embedding: true },
  },
};

// ---- PRNG: splitmix32 seeds xoshiro128**, one independent stream per (seed, tensor name).
function splitmix32(a: number) {
  return () => {
    a = (a + 0x9e3779b9) | 0;
    let z = a;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}
function fnv1a(s: string) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Fill callback of uniform values with std `std` (per-row gain optional), deterministic in (seed, name). */
function randomFill(seed: number, name: string, std: number, rowLen: number, rowGain?: Float32Array): GGUFTensor['fill'] {
  const sm = splitmix32(fnv1a(`${seed}:${name}`));
  let s0 = sm(), s1 = sm(), s2 = sm(), s3 = sm();
  const k = std * Math.sqrt(3) * 2 ** -31; // uniform(-a, a) has std a/sqrt(3)
  return (out, start) => {
    for (let i = 0; i < out.length; i++) {
      const r = Math.imul(s1, 5); // xoshiro128**: rotl(s1 * 5, 7) * 9
      const x = Math.imul((r << 7) | (r >>> 25), 9);
      const t = s1 << 9;
      s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = (s3 << 11) | (s3 >>> 21);
      out[i] = x * k;
    }
    if (rowGain) for (let i = 0; i < out.length; i++) out[i] *= rowGain[Math.floor((start + i) / rowLen)];
  };
}
const ones: GGUFTensor['fill'] = (out) => void out.fill(1);

// ---- Tokenizer: SentencePiece-style ("llama") with byte fallback.
const TT = { normal: 1, unknown: 2, control: 3, byte: 6 } as const;
const SPECIAL = ['<unk>', '<s>', '</s>', '<|im_start|>', '<|im_end|>'];
const WORDS = (
  'the of and to a in is it you that he was for on are with as I his they be at one have this from or had by ' +
  'word but not what all were we when your can said there use an each which she do how their if will up other ' +
  'about out many then them these so some her would make like him into time has look two more write go see ' +
  'number no way could people my than first water been call who its now find long down day did get come made ' +
  'may part hello world text data model query database postgres table row column index steady embedding ' +
  'generate quick brown fox jumps over lazy dog cat sun moon tree river city house story answer question ' +
  'good new old great little small large big just very also well only after before here where why because'
).split(' ');
const SUFFIXES = ['ing', 'ed', 'er', 'ly', 'tion', 'es', 'est', 'ment', 'ness'];
const CAPITALISED = ['the', 'hello', 'this', 'it', 'what', 'how', 'we', 'you', 'a', 'in', 'there', 'world', 'postgres'];
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

interface Vocab { tokens: string[]; scores: number[]; types: number[] }

function buildVocab(minSize: number): Vocab {
  const tokens = [...SPECIAL], types: number[] = [TT.unknown, TT.control, TT.control, TT.control, TT.control];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TT.byte);
  }
  const seen = new Set<string>(), pieces: string[] = [];
  const add = (p: string) => {
    if (seen.has(p)) return;
    seen.add(p);
    pieces.push(p);
  };
  // SPM merges only pairs whose concatenation is in the vocabulary, so every word needs its prefix chain.
  const chain = (w: string) => { for (let k = 1; k <= w.length; k++) add(w.slice(0, k)); };
  add('▁');
  for (let c = 33; c < 127; c++) add(String.fromCharCode(c));
  for (const w of WORDS) chain('▁' + w);
  for (const w of CAPITALISED) chain('▁' + w[0].toUpperCase() + w.slice(1));
  for (const s of SUFFIXES) chain(s);
  const az = 'abcdefghijklmnopqrstuvwxyz';
  const pad = function* () {
    for (const a of az) for (const b of az) yield '▁' + a + b;
    for (const a of az) for (const b of az) yield a + b;
    for (const a of az) for (const b of az) for (const c of az) yield '▁' + a + b + c;
  };
  for (const p of pad()) { if (tokens.length + pieces.length >= minSize) break; add(p); }
  const scores = tokens.map(() => 0);
  pieces.forEach((p, rank) => { tokens.push(p); scores.push(-rank); types.push(TT.normal); });
  return { tokens, scores, types };
}

// ---- Model assembly.
function modelFile(d: Dims, seed: number): GGUFFile {
  const v = buildVocab(d.vocab);
  return { metadata: modelMetadata(d, v), tensors: modelTensors(d, seed, v) };
}

function modelMetadata(d: Dims, v: Vocab): GGUFFile['metadata'] {
  const arch = 'llama';
  return {
    'general.architecture': gv.str(arch),
    'general.name': gv.str(`pg-steadytext fixture ${d.name} (random weights)`),
    'general.alignment': gv.u32(32),
    'general.file_type': gv.u32(d.type === 'Q8_0' ? 7 : d.type === 'F16' ? 1 : 0),
    [`${arch}.context_length`]: gv.u32(d.ctx),
    [`${arch}.embedding_length`]: gv.u32(d.embd),
    [`${arch}.block_count`]: gv.u32(d.layers),
    [`${arch}.feed_forward_length`]: gv.u32(d.ff),
    [`${arch}.attention.head_count`]: gv.u32(d.heads),
    [`${arch}.attention.head_count_kv`]: gv.u32(d.kvHeads),
    [`${arch}.rope.dimension_count`]: gv.u32(d.embd / d.heads),
    [`${arch}.rope.freq_base`]: gv.f32(d.ropeBase),
    [`${arch}.attention.layer_norm_rms_epsilon`]: gv.f32(1e-5),
    [`${arch}.vocab_size`]: gv.u32(v.tokens.length),
    ...(d.embedding ? { [`${arch}.pooling_type`]: gv.u32(1) } : {}),
    'tokenizer.ggml.model': gv.str('llama'),
    'tokenizer.ggml.tokens': gv.strs(v.tokens),
    'tokenizer.ggml.scores': gv.f32s(v.scores),
    'tokenizer.ggml.token_type': gv.i32s(v.types),
    'tokenizer.ggml.unknown_token_id': gv.u32(0),
    'tokenizer.ggml.bos_token_id': gv.u32(1),
    'tokenizer.ggml.eos_token_id': gv.u32(2),
    'tokenizer.ggml.eot_token_id': gv.u32(4),
    'tokenizer.ggml.add_bos_token': gv.bool(true),
    'tokenizer.ggml.add_eos_token': gv.bool(false),
    'tokenizer.chat_template': gv.str(CHATML_TEMPLATE),
  };
}

function modelTensors(d: Dims, seed: number, v: Vocab): GGUFTensor[] {
  const nVocab = v.tokens.length, kvDim = (d.embd / d.heads) * d.kvHeads;
  const mat = (name: string, fanIn: number, out: number, type = d.type, rowGain?: Float32Array): GGUFTensor =>
    ({ name, shape: [fanIn, out], type, fill: randomFill(seed, name, 1 / Math.sqrt(fanIn), fanIn, rowGain) });
  const norm = (name: string): GGUFTensor => ({ name, shape: [d.embd], type: 'F32', fill: ones });
  const tensors: GGUFTensor[] = [mat('token_embd.weight', d.embd, nVocab)];
  for (let l = 0; l < d.layers; l++) {
    const b = `blk.${l}.`;
    tensors.push(
      norm(b + 'attn_norm.weight'),
      mat(b + 'attn_q.weight', d.embd, d.embd), mat(b + 'attn_k.weight', d.embd, kvDim),
      mat(b + 'attn_v.weight', d.embd, kvDim), mat(b + 'attn_output.weight', d.embd, d.embd),
      norm(b + 'ffn_norm.weight'),
      mat(b + 'ffn_gate.weight', d.embd, d.ff), mat(b + 'ffn_up.weight', d.embd, d.ff), mat(b + 'ffn_down.weight', d.ff, d.embd),
    );
  }
  tensors.push(norm('output_norm.weight'));
  if (!d.embedding) {
    // Random logits have std ~gain for ordinary pieces; special and byte rows are 0, so EOS/<|im_end|> and
    // stray bytes (invalid UTF-8) are practically never chosen and generations run to their token limit.
    const gain = new Float32Array(nVocab).map((_, i) => (v.types[i] === TT.normal ? 2.5 : 0));
    tensors.push(mat('output.weight', d.embd, nVocab, d.type, gain));
  }
  return tensors;
}

export async function writeFixtureModels(
  dir: string,
  opts: { preset?: FixturePreset; seed?: number; onProgress?: (done: number, total: number) => void } = {},
): Promise<FixtureModels> {
  const preset = opts.preset ?? 'tiny', seed = opts.seed ?? DEFAULT_FIXTURE_SEED;
  if (!Object.hasOwn(PRESETS, preset)) throw new Error(`unknown fixture preset ${JSON.stringify(preset)}`);
  if (!Number.isSafeInteger(seed)) throw new Error(`fixture seed must be an integer, got ${seed}`);
  await mkdir(dir, { recursive: true });
  const jobs = (['generation', 'embedding'] as const).map((kind) => ({ kind, file: modelFile(PRESETS[preset][kind], seed), path: join(dir, `${kind}.gguf`) }));
  const total = jobs.reduce((s, j) => s + ggufDataBytes(j.file), 0);
  let before = 0;
  for (const j of jobs) {
    // Write beside the target and rename, so a reader never sees a half-written model.
    const tmp = `${j.path}.${process.pid}.tmp`;
    try {
      await writeGGUF(tmp, j.file, { onProgress: opts.onProgress && ((b) => opts.onProgress!(before + b, total)) });
      await rename(tmp, j.path);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
    before += ggufDataBytes(j.file);
  }
  return { generation: jobs[0].path, embedding: jobs[1].path };
}
