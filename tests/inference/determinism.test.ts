// Same request => same bytes: repeated, concurrent, under other load, and in a fresh process.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEngine, type Engine, type GenerateRequest } from '../../inference/engine.js';
import { tinyModels } from '../fixtures/models.js';

const GREEDY: GenerateRequest = { prompt: 'Write a short story about a database that never forgets.', maxTokens: 48, seed: 7, temperature: 0 };
const SAMPLED: GenerateRequest = { ...GREEDY, temperature: 0.8, seed: 1234 };
const OTHER: GenerateRequest = { prompt: 'hello world', maxTokens: 64, temperature: 0.7, seed: 99 };

// 64 texts from one word to several hundred tokens.
const WORDS = 'the quick brown fox jumps over lazy dog postgres table row column index query data model river city house story answer question because little great'.split(' ');
const TEXTS = Array.from({ length: 64 }, (_, i) => {
  const n = i === 0 ? 1 : Math.round(1 + (i / 63) ** 2 * 320);
  return Array.from({ length: n }, (_, j) => WORDS[(i * 7 + j * 13 + ((j * j) % 5)) % WORDS.length]).join(' ') + (i % 3 ? '.' : '');
});
const bytes = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);

let models: { generation: string; embedding: string };
let engine: Engine;
beforeAll(async () => {
  models = await tinyModels();
  engine = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, cacheBytes: 0, cacheDir: '/tmp/pg-steadytext-test-models' });
  await engine.load();
});
afterAll(() => engine?.close());

describe('generation determinism', () => {
  it('100 identical requests (half concurrent, among other work) give identical text, and so does a fresh process', async () => {
    const expected = { greedy: await engine.generate(GREEDY), sampled: await engine.generate(SAMPLED) };
    expect(expected.greedy.length).toBeGreaterThan(20);
    expect(expected.sampled).not.toBe(expected.greedy);
    const seen: string[][] = [[], []];
    for (let i = 0; i < 25; i++) {
      seen[0].push(await engine.generate(GREEDY));
      seen[1].push(await engine.generate(SAMPLED));
    }
    const noise = Array.from({ length: 10 }, (_, i) => engine.generate({ ...OTHER, seed: i, caller: `noise${i % 3}` }));
    const concurrent = await Promise.all(Array.from({ length: 50 }, (_, i) => engine.generate({ ...(i % 2 ? SAMPLED : GREEDY), caller: `c${i % 4}` })));
    await Promise.all(noise);
    concurrent.forEach((t, i) => seen[i % 2].push(t));
    expect(seen[0].length + seen[1].length).toBe(100);
    expect(new Set(seen[0])).toEqual(new Set([expected.greedy]));
    expect(new Set(seen[1])).toEqual(new Set([expected.sampled]));

    const script = fileURLToPath(new URL('./child-generate.ts', import.meta.url));
    const arg = JSON.stringify({ models, requests: [GREEDY, SAMPLED], texts: TEXTS.slice(0, 8) });
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', script, arg], { cwd: fileURLToPath(new URL('../..', import.meta.url)), timeout: 60_000 });
    const child = JSON.parse(stdout) as { answers: string[]; vectors: string[] };
    expect(child.answers).toEqual([expected.greedy, expected.sampled]);
    const here = await engine.embedMany(TEXTS.slice(0, 8));
    expect(child.vectors).toEqual(here.map((v) => bytes(v).toString('base64')));
  });

  it('a different seed changes sampled text; at temperature 0 the seed is ignored', async () => {
    const [a, b, c] = await Promise.all([1, 2, 3].map((seed) => engine.generate({ ...SAMPLED, seed })));
    expect(new Set([a, b, c]).size).toBe(3);
    const [g1, g2] = await Promise.all([1, 2].map((seed) => engine.generate({ ...GREEDY, seed })));
    expect(g1).toBe(g2);
    expect(g1).toBe(await engine.generate(GREEDY));
  });

  it('streamed chunks add up to the generated text', async () => {
    for (const r of [GREEDY, SAMPLED]) {
      const chunks: string[] = [];
      for await (const c of engine.generateStream(r)) chunks.push(c);
      expect(chunks.length).toBeGreaterThan(1);
      expect(chunks.join('')).toBe(await engine.generate(r));
    }
  });
});

describe('embedding determinism', () => {
  it('64 texts of very different lengths: alone, all at once and under generation load give the same bits', async () => {
    const alone: Buffer[] = [];
    for (const text of TEXTS) alone.push(bytes(await engine.embed({ text })));
    const batch = await engine.embedMany(TEXTS);
    const order = TEXTS.map((_, i) => (i * 37) % TEXTS.length); // a permutation, 37 coprime with 64
    const gen = Array.from({ length: 6 }, (_, i) => engine.generate({ ...OTHER, seed: 100 + i, caller: 'gen' }));
    const mixed = await Promise.all(order.map((i) => engine.embed({ text: TEXTS[i], caller: `e${i % 5}` }).then((v) => [i, v] as const)));
    await Promise.all(gen);
    for (let i = 0; i < TEXTS.length; i++) {
      expect(batch[i].length).toBe(1024);
      expect(bytes(batch[i]).equals(alone[i]), `text ${i} in a batch`).toBe(true);
    }
    for (const [i, v] of mixed) expect(bytes(v).equals(alone[i]), `text ${i} under load`).toBe(true);
    const long = await engine.embed({ text: TEXTS[63] });
    let norm = 0;
    for (const x of long) norm += x * x;
    expect(Math.abs(Math.sqrt(norm) - 1)).toBeLessThan(1e-6);
  });

  it('the seed does not change a vector', async () => {
    const [a, b] = await Promise.all([1, 2].map((seed) => engine.embed({ text: TEXTS[10], seed })));
    expect(bytes(a).equals(bytes(b))).toBe(true);
  });
});
