import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getLlama, LlamaChatSession, type ChatWrapper, LlamaLogLevel, readGgufFileInfo, type Llama, type LlamaModel } from 'node-llama-cpp';
import { f16Bits, gv, writeGGUF } from '../../tools/gguf-writer.js';
import { writeFixtureModels, type FixtureModels } from '../../tools/fixture-models.js';
import { tinyModels } from '../fixtures/models.js';

let scratch: string;
beforeAll(async () => { scratch = await mkdtemp(join(tmpdir(), 'pgst-fixtures-')); });
afterAll(async () => { await rm(scratch, { recursive: true, force: true }); });

const f16ToFloat = (h: number) => {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return e ? s * 2 ** (e - 15) * (1 + m / 1024) : s * 2 ** -14 * (m / 1024);
};

describe('gguf writer', () => {
  it('converts float32 to half with round-to-nearest-even', () => {
    const cases: [number, number][] = [
      [0, 0], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [0.1, 0x2e66], [65504, 0x7bff], [65520, 0x7c00],
      [Infinity, 0x7c00], [-Infinity, 0xfc00], [2 ** -24, 0x0001], [2 ** -25, 0], [1.5 * 2 ** -25, 0x0001],
      [2 ** -14, 0x0400], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02],
    ];
    for (const [v, h] of cases) expect(f16Bits(v), String(v)).toBe(h);
    expect(f16Bits(NaN) & 0x7c00).toBe(0x7c00);
    expect(f16Bits(NaN) & 0x3ff).not.toBe(0);
  });

  it('writes metadata of every type, aligned tensor infos and F32/F16/Q8_0 data', async () => {
    const path = join(scratch, 'custom.gguf');
    const ramp = (scale: number) => (out: Float32Array, start: number) => { for (let i = 0; i < out.length; i++) out[i] = (start + i - 40) * scale; };
    await writeGGUF(path, {
      metadata: {
        'general.architecture': gv.str('test'),
        'general.alignment': gv.u32(32),
        't.u8': { type: 'uint8', value: 200 }, 't.i8': { type: 'int8', value: -5 },
        't.u16': { type: 'uint16', value: 60000 }, 't.i16': { type: 'int16', value: -300 },
        't.i32': gv.i32(-70000), 't.f32': gv.f32(0.5), 't.bool': gv.bool(true),
        't.u64': { type: 'uint64', value: 2n ** 40n }, 't.i64': { type: 'int64', value: -3 },
        't.f64': { type: 'float64', value: Math.PI }, 't.str': gv.str('héllo'),
        't.strs': gv.strs(['a', '▁b', '']), 't.f32s': gv.f32s([1.5, -2]), 't.i32s': gv.i32s([7, -8]),
      },
      tensors: [
        { name: 'a', shape: [3], type: 'F32', fill: ramp(1) },
        { name: 'b', shape: [4, 2], type: 'F16', fill: ramp(0.25) },
        { name: 'c', shape: [64, 2], type: 'Q8_0', fill: ramp(0.01) },
      ],
    });
    const info = await readGgufFileInfo(path, { logWarnings: false });
    const t = (info.metadata as unknown as { t: Record<string, unknown> }).t;
    expect(info.version).toBe(3);
    expect(t).toMatchObject({ u8: 200, i8: -5, u16: 60000, i16: -300, i32: -70000, f32: 0.5, bool: true, str: 'héllo', strs: ['a', '▁b', ''], f32s: [1.5, -2], i32s: [7, -8] });
    expect(BigInt(t.u64 as bigint)).toBe(2n ** 40n);
    expect(Number(t.i64)).toBe(-3);
    expect(t.f64).toBe(Math.PI);
    const ti = info.tensorInfo!;
    expect(ti.map((x) => [x.name, x.dimensions.map(Number), x.ggmlType, Number(x.offset)])).toEqual([
      ['a', [3], 0, 0], ['b', [4, 2], 1, 32], ['c', [64, 2], 8, 64],
    ]);
    expect(info.infoEndOffset! % 32).toBe(0);

    const buf = await readFile(path), base = info.infoEndOffset!;
    expect(buf.length).toBe(base + 64 + 160); // 4 Q8_0 blocks (136 bytes), padded to 32 as well
    expect([0, 1, 2].map((i) => buf.readFloatLE(base + 4 * i))).toEqual([-40, -39, -38]);
    expect([0, 7].map((i) => f16ToFloat(buf.readUInt16LE(base + 32 + 2 * i)))).toEqual([-10, -8.25]);
    for (let blk = 0; blk < 4; blk++) {
      const o = base + 64 + 34 * blk, d = f16ToFloat(buf.readUInt16LE(o));
      for (let i = 0; i < 32; i++) expect(d * buf.readInt8(o + 2 + i)).toBeCloseTo((blk * 32 + i - 40) * 0.01, 2);
    }
  });
});

describe('fixture models', () => {
  let llama: Llama;
  let models: FixtureModels;
  let gen: LlamaModel;
  let emb: LlamaModel;
  beforeAll(async () => {
    models = await tinyModels();
    llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
    gen = await llama.loadModel({ modelPath: models.generation });
    emb = await llama.loadModel({ modelPath: models.embedding });
  });
  afterAll(async () => { await llama?.dispose(); });

  it('is byte-identical for the same seed and differs for another seed', async () => {
    const progress: number[] = [];
    let total = 0;
    const a = await writeFixtureModels(join(scratch, 'a'), { onProgress: (d, t) => { progress.push(d); total = t; } });
    const c = await writeFixtureModels(join(scratch, 'c'), { seed: 2 });
    for (const kind of ['generation', 'embedding'] as const) {
      // The cached copy was written by tinyModels() (default preset and seed), possibly in another process.
      const [ma, mc, cached] = await Promise.all([a, c, models].map((m) => readFile(m[kind])));
      expect(ma.equals(cached), kind).toBe(true);
      expect(mc.length).toBe(ma.length);
      expect(ma.equals(mc), `${kind} seed 2`).toBe(false);
    }
    expect(progress.every((d, i) => i === 0 || d >= progress[i - 1])).toBe(true);
    expect(progress.at(-1)).toBe(total);
  });

  it('has the expected shape and quantisation', async () => {
    const g = await readGgufFileInfo(models.generation, { logWarnings: false });
    const e = await readGgufFileInfo(models.embedding, { logWarnings: false });
    expect(g.metadata.general.architecture).toBe('llama');
    expect(g.architectureMetadata.context_length).toBeGreaterThanOrEqual(2048);
    expect(new Set(g.tensorInfo!.map((t) => t.ggmlType))).toEqual(new Set([0, 8])); // F32 norms, Q8_0
    expect(e.architectureMetadata.embedding_length).toBe(1024);
    expect(e.architectureMetadata.pooling_type).toBe(1);
    expect(new Set(e.tensorInfo!.map((t) => t.ggmlType))).toEqual(new Set([0, 1])); // F32 norms, F16
    expect(e.metadata.tokenizer.ggml.tokens).toEqual(g.metadata.tokenizer.ggml.tokens);
  });

  it('tokenises English into word pieces and round-trips any text', () => {
    expect(gen.tokenize('hello world').length).toBe(2);
    expect(gen.tokenize('The quick brown fox jumps over the lazy dog.').length).toBeLessThanOrEqual(11);
    for (const text of ['Hello world, the quick brown fox jumps over the lazy dog!', 'SELECT 42; naïve café 日本語 🙂\ttab\nline']) {
      expect(gen.detokenize(gen.tokenize(text))).toBe(text);
    }
    expect(gen.tokens.bos).toBe(1);
    expect(gen.tokens.eos).toBe(2);
  });

  it('chats greedily and deterministically, and samples differently per seed', async () => {
    // A fresh context per answer: reusing a sequence's KV cache re-evaluates the prompt's last token alone,
    // and single-token vs batched Q8_0 matmuls round differently, which can flip a greedy choice later on.
    // Resolving the wrapper from the Jinja template costs ~200 ms per session: do it once.
    let chatWrapper: ChatWrapper | undefined;
    const ask = async (opts: { temperature: number; seed?: number }) => {
      const ctx = await gen.createContext({ contextSize: 2048, threads: 1 });
      try {
        const session = new LlamaChatSession({ contextSequence: ctx.getSequence(), chatWrapper });
        chatWrapper = session.chatWrapper;
        expect(chatWrapper.wrapperName).toBe('ChatML');
        let tokens = 0;
        const text = await session.prompt('Tell me a story about a cat.', { maxTokens: 30, onToken: (t) => { tokens += t.length; }, ...opts });
        return { text, tokens };
      } finally {
        await ctx.dispose();
      }
    };
    const greedy = await ask({ temperature: 0 });
    expect(greedy.tokens).toBe(30); // EOS was not chosen early
    expect(greedy.text.trim().length).toBeGreaterThan(10);
    expect(await ask({ temperature: 0 })).toEqual(greedy);
    const s1 = await ask({ temperature: 0.8, seed: 1 });
    const s2 = await ask({ temperature: 0.8, seed: 2 });
    expect(s1.text.trim()).not.toBe('');
    expect(s2.text).not.toBe(s1.text);
    expect(await ask({ temperature: 0.8, seed: 1 })).toEqual(s1);
  });

  it('embeds into 1024-wide vectors that depend on the text', async () => {
    const ctx = await emb.createEmbeddingContext({ contextSize: 2048, threads: 1 });
    try {
      const v = async (text: string) => [...(await ctx.getEmbeddingFor(text)).vector];
      const [a, b, a2] = [await v('hello world'), await v('postgres database index'), await v('hello world')];
      expect(a).toHaveLength(1024);
      expect(b).toHaveLength(1024);
      expect(a.every(Number.isFinite)).toBe(true);
      expect(a2).toEqual(a);
      expect(b).not.toEqual(a);
      const cos = a.reduce((s, x, i) => s + x * b[i], 0) / Math.hypot(...a) / Math.hypot(...b);
      expect(cos).toBeLessThan(0.999);
    } finally {
      await ctx.dispose();
    }
  });
});
