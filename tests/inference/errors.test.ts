// Every failure is a typed error with a stable code and a message that says what to do.
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createEngine, InferenceError, MAX_TOKENS_LIMIT, type Engine, type EngineOptions } from '../../inference/engine.js';
import { runModelsCommand } from '../../inference/models-command.js';
import { tinyModels } from '../fixtures/models.js';

let models: { generation: string; embedding: string };
let dir: string;
const engines: Engine[] = [];
const make = (o: EngineOptions = {}) => {
  const e = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, cacheDir: dir, cacheBytes: 0, ...o });
  engines.push(e);
  return e;
};
/** Resolves to the error's code, or fails when the promise does not reject with an InferenceError. */
const code = async (p: Promise<unknown> | AsyncIterable<unknown>, message?: RegExp) => {
  try {
    if (Symbol.asyncIterator in p) for await (const _ of p); else await p;
  } catch (e) {
    expect(e).toBeInstanceOf(InferenceError);
    if (message) expect((e as Error).message).toMatch(message);
    return (e as InferenceError).code;
  }
  throw new Error('expected a rejection');
};
// A prompt long enough that the tiny model runs ~1-2 s at 4000 tokens.
const LONG = { prompt: 'Tell me everything about postgres.', maxTokens: 4000 };
/** Requests of one model running or waiting in an engine. */
const busy = (e: Engine, role: 'generation' | 'embedding') =>
  e.status().models.filter((m) => m.role === role).reduce((n, m) => n + m.active + m.queued, 0);

beforeAll(async () => {
  models = await tinyModels();
  dir = await mkdtemp(join(tmpdir(), 'pgst-errors-'));
});
afterAll(async () => {
  await Promise.all(engines.map((e) => e.close()));
  await rm(dir, { recursive: true, force: true });
});

describe('invalid arguments', () => {
  it('rejects empty input, bad seeds, max_tokens out of range, bad temperature and unknown models', async () => {
    const e = make();
    expect(await code(e.generate({ prompt: '' }), /prompt is empty/)).toBe('INVALID_ARGUMENT');
    expect(await code(e.generate({ prompt: null as unknown as string }))).toBe('INVALID_ARGUMENT');
    expect(await code(e.embed({ text: '' }), /text is empty/)).toBe('INVALID_ARGUMENT');
    expect(await code(e.embedMany(['a', '']), /texts\[1\] is empty/)).toBe('INVALID_ARGUMENT');
    expect(await code(e.generate({ prompt: 'hi', seed: -1 }), /seed must be an integer from 0/)).toBe('INVALID_ARGUMENT');
    expect(await code(e.embed({ text: 'hi', seed: -5 }))).toBe('INVALID_ARGUMENT');
    expect(await code(e.generate({ prompt: 'hi', seed: 1.5 }))).toBe('INVALID_ARGUMENT');
    for (const maxTokens of [0, -3, 2.5, MAX_TOKENS_LIMIT + 1])
      expect(await code(e.generate({ prompt: 'hi', maxTokens }), /max_tokens must be an integer from 1/)).toBe('INVALID_ARGUMENT');
    expect(await code(e.generate({ prompt: 'hi', temperature: -0.5 }))).toBe('INVALID_ARGUMENT');
    expect(await code(e.generate({ prompt: 'hi', temperature: NaN }))).toBe('INVALID_ARGUMENT');
    expect(await code(e.generate({ prompt: 'hi', modelSize: 'huge' }), /unknown generation model 'huge'.*'small', 'large'/)).toBe('INVALID_ARGUMENT');
    expect(await code(e.generateStream({ prompt: '' }))).toBe('INVALID_ARGUMENT');
    // A generation size given to embed means the default embedder.
    expect((await e.embed({ text: 'hi', modelSize: 'large' })).length).toBe(1024);
    expect(e.status().errorsCount).toBeGreaterThanOrEqual(14);
  });

  it('max_tokens must leave room in the context, and a prompt must fit it', async () => {
    const e = make({ generationContextSize: 256, embeddingContextSize: 64 });
    expect(await code(e.generate({ prompt: 'hi', maxTokens: 300 }), /below the context size 256/)).toBe('INVALID_ARGUMENT');
    const long = 'the quick brown fox jumps over the lazy dog '.repeat(40);
    expect(await code(e.generate({ prompt: long, maxTokens: 10 }), /prompt of \d+ tokens .* context of 256 tokens/)).toBe('PROMPT_TOO_LONG');
    expect(await code(e.generate({ prompt: 'short prompt', maxTokens: 250 }), /lower max_tokens to \d+/)).toBe('PROMPT_TOO_LONG');
    expect(await code(e.embed({ text: long }), /embedding context of 64 tokens/)).toBe('PROMPT_TOO_LONG');
    expect((await e.generate({ prompt: 'short prompt', maxTokens: 20 })).length).toBeGreaterThan(0);
  });

  it('a context too small names the option as the CLI takes it, or says the model is the limit', async () => {
    const e = make({ generationContextSize: 256, embeddingContextSize: 64 });
    const long = 'the quick brown fox jumps over the lazy dog '.repeat(40);
    const gen = /, or raise --generation-context-size \/ PGSTEADYTEXT_GENERATION_CONTEXT_SIZE \(this model allows up to 4096\)$/;
    expect(await code(e.generate({ prompt: 'hi', maxTokens: 300 }), gen)).toBe('INVALID_ARGUMENT');
    expect(await code(e.generate({ prompt: 'short prompt', maxTokens: 250 }), gen)).toBe('PROMPT_TOO_LONG');
    expect(await code(e.embed({ text: long }), /split the text, or raise --embedding-context-size \/ PGSTEADYTEXT_EMBEDDING_CONTEXT_SIZE \(this model allows up to 8192\)$/)).toBe('PROMPT_TOO_LONG');
    // The tiny generation model's own context is 4096 tokens, the default: raising the setting would not help.
    const atModel = make(), own = /\(4096 tokens is this model's own context length\)$/;
    expect(await code(atModel.generate({ prompt: 'hi', maxTokens: 5000 }), own)).toBe('INVALID_ARGUMENT');
    expect(await code(atModel.generate({ prompt: long.repeat(12), maxTokens: 10 }), own)).toBe('PROMPT_TOO_LONG');
    expect(await code(make({ embeddingDimension: 2048 }).embed({ text: 'hi' }), /or set --embedding-dimensions \/ PGSTEADYTEXT_EMBEDDING_DIMENSIONS to 1024 /)).toBe('MODEL_LOAD_FAILED');
  });
});

describe('models that cannot be had', () => {
  it('a missing local file is MODEL_NOT_FOUND naming the path and the setting', async () => {
    const e = make({ generationModel: join(dir, 'nope.gguf') });
    expect(await code(e.generate({ prompt: 'hi' }), /no file at .*nope\.gguf.*PGSTEADYTEXT_GENERATION_MODEL/)).toBe('MODEL_NOT_FOUND');
    expect(e.modelInfo().find((m) => m.modelType === 'generation' && m.modelSize === 'small')?.loaded).toBe(false);
  });

  it('an unreadable, truncated or corrupt GGUF is MODEL_LOAD_FAILED; the engine recovers once the file is fixed', async () => {
    const garbage = join(dir, 'garbage.gguf'), truncated = join(dir, 'truncated.gguf'), fixable = join(dir, 'fixable.gguf');
    await writeFile(garbage, 'definitely not a model '.repeat(50));
    const real = await readFile(models.generation);
    await writeFile(truncated, real.subarray(0, real.length >> 1));
    await writeFile(fixable, 'GGUF and then nothing');
    expect(await code(make({ generationModel: garbage }).generate({ prompt: 'hi' }), /model file .*garbage\.gguf is not a usable GGUF file: it does not start with the GGUF magic bytes.*download it again/)).toBe('MODEL_LOAD_FAILED');
    expect(await code(make({ generationModel: truncated }).generate({ prompt: 'hi' }), /truncated: its tensors need \d+ bytes but the file has \d+/)).toBe('MODEL_LOAD_FAILED');
    // Cut inside the header: node-llama-cpp's own reader never settles on such a file.
    await writeFile(truncated, real.subarray(0, 3000));
    expect(await code(make({ generationModel: truncated }).generate({ prompt: 'hi' }), /header runs past the end/)).toBe('MODEL_LOAD_FAILED');
    const e = make({ generationModel: fixable });
    expect(await code(e.generate({ prompt: 'hi', maxTokens: 4 }))).toBe('MODEL_LOAD_FAILED');
    await copyFile(models.generation, fixable);
    await e.reload();
    expect((await e.generate({ prompt: 'hi', maxTokens: 4 })).length).toBeGreaterThan(0);
  });

  it('an embedding model with fewer dimensions than configured fails at load, naming both sizes', async () => {
    const e = make({ embeddingDimension: 2048 });
    expect(await code(e.load({ role: 'embedding' }), /gives 1024-dimensional vectors but 2048 dimensions are configured/)).toBe('MODEL_LOAD_FAILED');
    expect(await code(e.embed({ text: 'hi' }))).toBe('MODEL_LOAD_FAILED');
  });

  it('without network a download fails fast, naming the URL and where to put the file by hand', async () => {
    const e = make({ generationModel: 'hf:pg-steadytext/missing-GGUF/missing-Q8_0.gguf', progress: false });
    const t = Date.now();
    expect(await code(e.generate({ prompt: 'hi' }), /https:\/\/huggingface\.co\/pg-steadytext\/missing-GGUF\/resolve\/main\/missing-Q8_0\.gguf: network unreachable .*; put hf_pg-steadytext_missing-Q8_0\.gguf from \S+ into \S+, or run `pg-steadytext models pull`/)).toBe('DOWNLOAD_FAILED');
    expect(Date.now() - t).toBeLessThan(30_000);
    const off = make({ embeddingModel: 'hf:pg-steadytext/missing-GGUF/embed.gguf', autoDownload: false });
    expect(await code(off.embed({ text: 'hi' }), /is not downloaded and downloads are off \(--no-download\): put hf_pg-steadytext_embed\.gguf from https:\S+ into \S+, or run `pg-steadytext models pull`/)).toBe('MODEL_NOT_FOUND');
  });

  it('`models pull` without network exits non-zero within seconds with the URL and the manual steps', async () => {
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      const t = Date.now();
      const rc = await runModelsCommand(['pull', 'large'], { cacheDir: dir, progress: false });
      expect(Date.now() - t).toBeLessThan(30_000);
      expect(rc).toBe(1);
      const text = err.mock.calls.map((c) => String(c[0])).join('');
      expect(text).toContain('https://huggingface.co/unsloth/gemma-3n-E4B-it-GGUF/resolve/main/gemma-3n-E4B-it-Q8_0.gguf');
      expect(text).toContain(`put hf_unsloth_gemma-3n-E4B-it-Q8_0.gguf (about 7.3 GB) from https://huggingface.co/unsloth/gemma-3n-E4B-it-GGUF/resolve/main/gemma-3n-E4B-it-Q8_0.gguf into ${dir}, or run \`pg-steadytext models pull generation:large\``);
      err.mockClear(); out.mockClear();
      expect(await runModelsCommand(['pull', 'nosuch'], { cacheDir: dir })).toBe(2);
      expect(await runModelsCommand(['path'], { cacheDir: dir })).toBe(0);
      expect(out.mock.calls.map((c) => String(c[0])).join('')).toBe(dir + '\n');
      out.mockClear();
      expect(await runModelsCommand(['path', 'embedding:small'], { cacheDir: dir, embeddingModel: models.embedding })).toBe(0);
      expect(out.mock.calls.map((c) => String(c[0])).join('')).toBe(models.embedding + '\n');
      out.mockClear();
      expect(await runModelsCommand(['list'], { cacheDir: dir, generationModel: models.generation })).toBe(0);
      const listing = out.mock.calls.map((c) => String(c[0])).join('');
      expect(listing).toMatch(/generation:small \(default\)\s+0\.\d MB/);
      expect(listing).toMatch(/generation:large\s+missing\s+hf:unsloth\/gemma-3n-E4B-it-GGUF/);
      expect(listing).toMatch(/embedding:small \(default\)\s+missing\s+hf:Qwen\/Qwen3-Embedding-0\.6B-GGUF/);
      expect(await runModelsCommand(['pull', 'small'], { cacheDir: dir, generationModel: models.generation, embeddingModel: models.embedding })).toBe(0);
      expect(await runModelsCommand(['frobnicate'], { cacheDir: dir })).toBe(2);
    } finally {
      err.mockRestore(); out.mockRestore();
    }
  });
});

describe('load shedding, timeouts and cancellation', () => {
  it('a full queue rejects with OVERLOADED instead of growing', async () => {
    const e = make({ generationContexts: 1, maxQueue: 2 });
    await e.load({ role: 'generation' });
    const ac = new AbortController();
    const running = [1, 2, 3].map((seed) => e.generate({ ...LONG, seed, temperature: 0.5, signal: ac.signal }));
    expect(await code(e.generate({ prompt: 'one more' }), /2 requests already waiting/)).toBe('OVERLOADED');
    ac.abort();
    expect(await Promise.all(running.map((p) => code(p)))).toEqual(['CANCELLED', 'CANCELLED', 'CANCELLED']);
    expect((await e.generate({ prompt: 'after the storm', maxTokens: 8 })).length).toBeGreaterThan(0);
  });

  it('a timeout rejects with TIMEOUT and frees the context mid-generation', async () => {
    const e = make({ generationContexts: 1 });
    await e.load({ role: 'generation' });
    let t = performance.now();
    await e.generate(LONG);
    const full = performance.now() - t;
    expect(await code(e.generate({ ...LONG, seed: 2, temperature: 0.3, timeoutMs: Math.max(10, full / 10) }), /timed out after/)).toBe('TIMEOUT');
    t = performance.now();
    await e.generate({ prompt: 'quick one', maxTokens: 4 }); // waits for the aborted one to let go of the only context
    expect(performance.now() - t).toBeLessThan(full / 2);
    // Waiting in the queue counts too.
    const blocker = e.generate({ ...LONG, seed: 3, temperature: 0.3 });
    expect(await code(e.generate({ prompt: 'queued', maxTokens: 4, timeoutMs: 20 }))).toBe('TIMEOUT');
    await blocker;
  });

  it('cancellation: before start, while queued, while running, and by leaving a stream early', async () => {
    const e = make({ generationContexts: 1 });
    await e.load({ role: 'generation' });
    expect(await code(e.generate({ prompt: 'x', signal: AbortSignal.abort() }), /cancelled/)).toBe('CANCELLED');
    expect(await code(e.embed({ text: 'x', signal: AbortSignal.abort() }))).toBe('CANCELLED');
    const t0 = performance.now();
    await e.generate({ ...LONG, seed: 9, temperature: 0.2 });
    const full = performance.now() - t0;
    const ac1 = new AbortController(), ac2 = new AbortController();
    const running = e.generate({ ...LONG, seed: 10, temperature: 0.2, signal: ac1.signal });
    const queued = e.generate({ ...LONG, seed: 11, temperature: 0.2, signal: ac2.signal });
    await expect.poll(() => e.status().models.find((m) => m.role === 'generation'), { timeout: 5_000, interval: 5 }).toMatchObject({ queued: 1, active: 1 });
    ac2.abort();
    expect(await code(queued)).toBe('CANCELLED');
    ac1.abort(new Error('client went away'));
    expect(await code(running)).toBe('CANCELLED');
    let t = performance.now();
    await e.generate({ prompt: 'next', maxTokens: 4 });
    expect(performance.now() - t).toBeLessThan(full / 2);
    // A consumer that stops reading stops the generation.
    let chunks = 0;
    for await (const _ of e.generateStream({ ...LONG, seed: 12, temperature: 0.2 })) if (++chunks === 3) break;
    t = performance.now();
    await e.generate({ prompt: 'next again', maxTokens: 4 });
    expect(performance.now() - t).toBeLessThan(full / 2);
    // Aborting a stream's signal while it streams ends it with CANCELLED.
    const ac3 = new AbortController();
    const stream = e.generateStream({ ...LONG, seed: 13, temperature: 0.2, signal: ac3.signal })[Symbol.asyncIterator]();
    expect((await stream.next()).done).toBe(false); // streaming: its first chunk is here
    ac3.abort();
    expect(await code({ [Symbol.asyncIterator]: () => stream })).toBe('CANCELLED');
  });

  it('embedMany shares one deadline and one signal for the whole batch', async () => {
    const e = make();
    const texts = Array.from({ length: 200 }, (_, i) => `text ${i} `.repeat(40));
    expect(await code(e.embedMany(texts, { timeoutMs: 50 }))).toBe('TIMEOUT');
    const ac = new AbortController();
    const batch = code(e.embedMany(texts, { signal: ac.signal }));
    await expect.poll(() => busy(e, 'embedding'), { timeout: 10_000, interval: 5, message: 'the batch reaches the embedder' }).toBeGreaterThan(0);
    ac.abort();
    expect(await batch).toBe('CANCELLED');
  });

  it('a closed engine refuses work with CLOSED', async () => {
    const e = make();
    const pending = code(e.generate({ ...LONG, seed: 5, temperature: 0.4 }));
    await expect.poll(() => e.status().models.find((m) => m.role === 'generation')?.active, { timeout: 10_000, interval: 5, message: 'the generation running' }).toBe(1);
    await e.close();
    expect(await pending).toBe('CLOSED');
    expect(await code(e.generate({ prompt: 'hi' }))).toBe('CLOSED');
  });
});
