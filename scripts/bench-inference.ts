// npm run bench:inference [-- --rounds N] [--preset tiny|bench]
// Throughput of the engine against node-llama-cpp called directly in its best hand-picked configuration,
// on the tiny fixture models and on the bench ones (real models' dimensions, random weights), plus the
// latency of a cache hit. Each measurement alternates direct and engine runs and keeps the best of each.
import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { LlamaChat, type LlamaModel } from 'node-llama-cpp';
import { createEngine, type Engine } from '../inference/engine.js';
import { FIXTURE_VERSION, writeFixtureModels, type FixtureModels, type FixturePreset } from '../tools/fixture-models.js';
import { getLlama, physicalCores } from '../inference/llama.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '2' }, preset: { type: 'string', multiple: true } } });
const ROUNDS = Math.max(1, Number(values.rounds));
const PRESETS = (values.preset ?? ['tiny', 'bench']) as FixturePreset[];
const CORES = physicalCores();
const CACHE_ROOT = fileURLToPath(new URL('../node_modules/.cache/pg-steadytext/fixtures/', import.meta.url));

const WORDS = 'the quick brown fox jumps over lazy dog postgres table row column index query data model river city house story answer question'.split(' ');
const text = (i: number, words: number) => Array.from({ length: words }, (_, j) => WORDS[(i * 7 + j * 13 + ((j * j) % 5)) % WORDS.length]).join(' ');

// Per preset: how much work makes a measurement of a few seconds on 2 cores.
const WORK = {
  tiny: { gen: { n: 16, tokens: 128 }, short: { n: 200, words: 10 }, long: { n: 40, words: 300 }, ctx: 2048 },
  bench: { gen: { n: 4, tokens: 16 }, short: { n: 16, words: 10 }, long: { n: 4, words: 300 }, ctx: 2048 },
} as const;

async function fixtures(preset: FixturePreset): Promise<FixtureModels> {
  const dir = join(CACHE_ROOT, `${FIXTURE_VERSION}-${preset}`);
  const paths = { generation: join(dir, 'generation.gguf'), embedding: join(dir, 'embedding.gguf') };
  if (await stat(paths.embedding).then(() => true, () => false)) return paths;
  await mkdir(CACHE_ROOT, { recursive: true });
  const tmp = await mkdtemp(join(CACHE_ROOT, `.tmp-${preset}-`));
  process.stderr.write(`writing ${preset} fixture models into ${dir} (once)...\n`);
  try {
    await writeFixtureModels(tmp, { preset });
    await rename(tmp, dir);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    if (!(await stat(paths.embedding).then(() => true, () => false))) throw e;
  }
  return paths;
}

const pool = async <T>(items: readonly T[], workers: number, run: (item: T, worker: number) => Promise<void>) => {
  let next = 0;
  await Promise.all(Array.from({ length: workers }, async (_, w) => { while (next < items.length) await run(items[next++], w); }));
};
const timed = async (f: () => Promise<void>) => { const t = performance.now(); await f(); return (performance.now() - t) / 1000; };

// ---- node-llama-cpp directly: `contexts` contexts of `threads` threads each.
async function directEmbed(model: LlamaModel, texts: string[], contexts: number, threads: number, ctx: number): Promise<number> {
  const cs = await Promise.all(Array.from({ length: contexts }, () => model.createEmbeddingContext({ contextSize: ctx, batchSize: ctx, threads })));
  const s = await timed(() => pool(texts, contexts, async (t, w) => { await cs[w].getEmbeddingFor(t); }));
  await Promise.all(cs.map((c) => c.dispose()));
  return texts.length / s;
}
async function directGenerate(model: LlamaModel, prompts: string[], maxTokens: number, contexts: number, threads: number): Promise<{ rate: number; tokens: number; texts: string[] }> {
  const cs = await Promise.all(Array.from({ length: contexts }, () => model.createContext({ contextSize: 4096, sequences: 1, threads, flashAttention: false })));
  const chats = cs.map((c) => new LlamaChat({ contextSequence: c.getSequence() }));
  let tokens = 0;
  const texts: string[] = [];
  const s = await timed(() => pool(prompts.map((p, i) => [p, i] as const), contexts, async ([p, i], w) => {
    const r = await chats[w].generateResponse([{ type: 'user', text: p }, { type: 'model', response: [] }], { maxTokens, temperature: 0, repeatPenalty: false, onToken: (t) => { tokens += t.length; } });
    texts[i] = r.response;
  }));
  await Promise.all(cs.map((c) => c.dispose()));
  return { rate: tokens / s, tokens, texts };
}

const configs = [...new Set([`${CORES}x1`, `1x${CORES}`])].map((c) => c.split('x').map(Number) as [number, number]);
const rows: string[][] = [];
const row = (...cells: string[]) => { rows.push(cells); process.stderr.write(cells.join('  ') + '\n'); };

async function bench(preset: FixturePreset) {
  const m = await fixtures(preset), w = WORK[preset];
  const llama = await getLlama();
  const model = { gen: await llama.loadModel({ modelPath: m.generation, defaultContextFlashAttention: false }), emb: await llama.loadModel({ modelPath: m.embedding, defaultContextFlashAttention: false }) };
  const engine: Engine = createEngine({ generationModel: m.generation, embeddingModel: m.embedding, embeddingContextSize: w.ctx, cacheDir: join(CACHE_ROOT, 'models') });
  await engine.load();

  for (const kind of ['short', 'long'] as const) {
    const texts = Array.from({ length: w[kind].n }, (_, i) => `${i} ${text(i, w[kind].words)}`);
    const tokens = model.emb.tokenize(texts[0]).length;
    let best = { rate: 0, cfg: '' }, mine = 0;
    for (let r = 0; r < ROUNDS; r++) {
      for (const [c, t] of configs) { const rate = await directEmbed(model.emb, texts, c, t, w.ctx); if (rate > best.rate) best = { rate, cfg: `${c}x${t}` }; }
      mine = Math.max(mine, texts.length / await timed(async () => { await engine.embedMany(texts, { cache: false }); }));
    }
    row(preset, `embed ${kind} (~${tokens} tok)`, `${best.rate.toFixed(1)}/s [${best.cfg}]`, `${mine.toFixed(1)}/s`, (mine / best.rate).toFixed(2));
  }

  const prompts = Array.from({ length: w.gen.n }, (_, i) => `Write about ${text(i, 6)}.`);
  let best = { rate: 0, tokens: 0, cfg: '', texts: [] as string[] }, mine = 0, same = true;
  for (let r = 0; r < ROUNDS; r++) {
    for (const [c, t] of configs) { const d = await directGenerate(model.gen, prompts, w.gen.tokens, c, t); if (d.rate > best.rate) best = { ...d, cfg: `${c}x${t}` }; }
    // Greedy answers are the same bytes either way, hence the same token count.
    let texts: string[] = [];
    const s = await timed(async () => { texts = await Promise.all(prompts.map((prompt, i) => engine.generate({ prompt, maxTokens: w.gen.tokens, cache: false, caller: `c${i}` }))); });
    same &&= texts.every((t, i) => t === best.texts[i]);
    mine = Math.max(mine, best.tokens / s);
  }
  row(preset, `generate ${w.gen.n} x ${w.gen.tokens} tok`, `${best.rate.toFixed(0)} tok/s [${best.cfg}]`, `${mine.toFixed(0)} tok/s`, (mine / best.rate).toFixed(2) + (same ? '' : '  (answers differ!)'));

  // Cache hits: the whole public call, from arguments to answer.
  const hit = { prompt: prompts[0], maxTokens: w.gen.tokens };
  await engine.generate(hit);
  await engine.embed({ text: 'cached text' });
  const N = 20_000;
  let s = await timed(async () => { for (let i = 0; i < N; i++) await engine.generate(hit); });
  const g = (s / N) * 1e6;
  s = await timed(async () => { for (let i = 0; i < N; i++) await engine.embed({ text: 'cached text' }); });
  row(preset, 'cache hit', `generate ${g.toFixed(1)} µs`, `embed ${((s / N) * 1e6).toFixed(1)} µs`, g < 50 ? 'ok' : 'SLOW');

  await engine.close();
  await model.gen.dispose();
  await model.emb.dispose();
}

process.stderr.write(`cores ${CORES}, direct configurations ${configs.map(([c, t]) => `${c}x${t}`).join(', ')} (contexts x threads), ${ROUNDS} round(s)\n`);
for (const p of PRESETS) await bench(p);
const head = ['preset', 'workload', 'direct (best)', 'engine', 'ratio'];
const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
console.log('\n' + [head, ...rows].map((r) => r.map((c, i) => (c ?? '').padEnd(width[i])).join('  ')).join('\n'));
