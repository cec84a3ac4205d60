// Models on first run, through the real CLI (`serve`) in front of the test cluster: a default model that is not
// in --model-dir is downloaded in the background through node-llama-cpp's own hf: download code, from a local
// Hugging Face mirror (HF_ENDPOINT) that serves the tiny fixture models under the default models' names; a
// steadytext call waits for it with a NOTICE while other SQL goes on. With --no-download, or no network, the
// call fails with 58P01 and what to fetch; with the files in --model-dir, nothing is fetched at all.
import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { inject } from 'vitest';
import pg from 'pg';
import { createEngine } from '../../inference/engine.js';
import { DEFAULT_MODELS } from '../../inference/registry.js';
import { modelServer, type ModelServer } from '../fixtures/model-server.js';
import { tinyModels } from '../fixtures/models.js';
import { spawnCli } from '../proxy/helpers.js';
import { adminQuery, silent } from './helpers.js';

const GENERATION = 'hf_unsloth_gemma-3n-E2B-it-Q8_0.gguf';
const EMBEDDING = 'hf_Qwen_Qwen3-Embedding-0.6B-Q8_0.gguf';
const PROMPT = 'The capital of France is';

let expected: string;
let fixtures: { generation: string; embedding: string };
const running: (() => void)[] = [];

beforeAll(async () => {
  fixtures = await tinyModels();
  const engine = createEngine({ generationModel: fixtures.generation, embeddingModel: fixtures.embedding, logger: silent });
  expected = await engine.generate({ prompt: PROMPT, maxTokens: 8, seed: 42, temperature: 0 });
  await engine.close();
}, 60_000);

afterAll(() => { for (const stop of running) stop(); });

interface Serving { url: string; lines: Record<string, unknown>[]; output: () => string; exited: Promise<number | null> }

/** `pg-steadytext serve` on a free port in front of a database of its own (no answer cached), once it says it is ready. */
async function serve(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Serving> {
  const database = `st_first_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${database}`);
  const upstream = new URL(inject('db').adminUrl);
  upstream.pathname = `/${database}`;
  const { child, output } = spawnCli(
    ['serve', '--listen', '127.0.0.1:0', '--daemon-listen', 'off', '--upstream', upstream.toString(), '--log-format', 'json', '--contexts', '1', ...args],
    { PGSTEADYTEXT_GENERATION_MODEL: '', PGSTEADYTEXT_EMBEDDING_MODEL: '', ...env },
  );
  running.push(() => child.kill('SIGKILL'));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const lines = () => output().split('\n').flatMap((l) => { try { return [JSON.parse(l) as Record<string, unknown>]; } catch { return []; } });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    void exited.then((code) => reject(new Error(`pg-steadytext exited (${code}):\n${output()}`)));
    const look = () => {
      const r = lines().find((l) => l.msg === 'pg-steadytext ready');
      if (r) { child.stderr.off('data', look); child.stdout.off('data', look); resolve(r); }
    };
    child.stderr.on('data', look);
    child.stdout.on('data', look);
  });
  const { host, port } = ready.listen as { host: string; port: number };
  upstream.hostname = host;
  upstream.port = String(port);
  return { url: upstream.toString(), get lines() { return lines(); }, output, exited };
}

/** An address where nothing listens: a download from there fails at once, as without network. */
async function nowhere(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}/`;
}

async function connect(url: string, notices: string[] = []): Promise<pg.Client> {
  const c = new pg.Client(url);
  c.on('notice', (n) => notices.push(n.message ?? ''));
  await c.connect();
  running.push(() => void c.end().catch(() => {}));
  return c;
}

/** A Hugging Face mirror for HF_ENDPOINT: the fixture models at the default models' download paths, the generation model held. */
async function mirror(): Promise<ModelServer> {
  const at = (source: string) => source.replace(/^hf:([^/]+\/[^/]+)\//, '/$1/resolve/main/');
  const m = await modelServer(new Map([[at(DEFAULT_MODELS[0].source), readFileSync(fixtures.generation)], [at(DEFAULT_MODELS[2].source), readFileSync(fixtures.embedding)]]), at(DEFAULT_MODELS[0].source));
  running.push(() => m.close());
  return m;
}

describe('models on first run', () => {
  test('a missing default model is downloaded in the background: a steadytext call waits with a NOTICE, other SQL is answered meanwhile', async () => {
    const m = await mirror();
    const dir = mkdtempSync(join(tmpdir(), 'pgst-first-'));
    const s = await serve(['--model-dir', dir], { HF_ENDPOINT: m.base });
    await m.requested; // the download started at start, before any call
    const notices: string[] = [];
    const waiting = await connect(s.url, notices);
    let answered = false;
    const call = waiting.query(`SELECT steadytext_generate('${PROMPT}', 8, 42) AS t`).then((r) => { answered = true; return r.rows[0].t as string; });
    // The NOTICE comes while the call waits (the download cannot finish before release()).
    await expect.poll(() => notices.length, { timeout: 30_000 }).toBeGreaterThan(0);
    expect(notices[0]).toMatch(new RegExp(`^steadytext: downloading generation model 'small' \\(${GENERATION.replaceAll('.', '\\.')}, \\d+% of .*\\), the call waits for it$`));
    const other = await connect(s.url);
    expect((await other.query('SELECT 41 + 1 AS n')).rows[0].n).toBe(42);
    expect(answered).toBe(false);
    m.release();
    expect(await call).toBe(expected);
    expect(notices).toHaveLength(1);
    const logs = s.lines;
    expect(logs.find((l) => l.msg === 'downloading missing models in the background; steadytext calls wait for them, other SQL goes on')).toBeDefined();
    const progress = logs.find((l) => l.msg === 'download progress');
    expect(progress).toMatchObject({ percent: expect.any(Number), downloadedBytes: expect.any(Number), totalBytes: readFileSync(fixtures.generation).length });
    expect(logs.filter((l) => l.msg === 'model downloaded').map((l) => l.path)).toEqual(expect.arrayContaining([join(dir, GENERATION)]));
    // The file is the mirror's, byte for byte: a later start finds it and fetches nothing.
    expect(readFileSync(join(dir, GENERATION)).equals(readFileSync(fixtures.generation))).toBe(true);
  }, 120_000);

  test('--no-download: a call that needs a missing model fails with 58P01 naming the file, its size, the directory and `models pull`; the start log says it once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgst-nodl-'));
    const endpoint = await nowhere();
    const s = await serve(['--model-dir', dir, '--no-download'], { HF_ENDPOINT: endpoint });
    const c = await connect(s.url);
    const err = await c.query(`SELECT steadytext_generate('${PROMPT}', 8, 42)`).then(() => undefined, (e: pg.DatabaseError) => e);
    expect(err?.code).toBe('58P01');
    expect(err?.message).toContain(`generation model 'small' is not downloaded and downloads are off (--no-download): put ${GENERATION} (about 4.8 GB) from ${endpoint}unsloth/gemma-3n-E2B-it-GGUF/resolve/main/gemma-3n-E2B-it-Q8_0.gguf into ${dir}, or run \`pg-steadytext models pull\``);
    expect(err?.hint).toMatch(/pg-steadytext models pull/);
    const warned = s.lines.filter((l) => String(l.msg).startsWith('steadytext calls that need these models fail until their files are there'));
    expect(warned).toHaveLength(1);
    expect(warned[0].msg).toContain(`put ${EMBEDDING} (about 639 MB)`);
    expect(warned[0].msg).toContain(`into ${dir}`);
    expect(s.lines.some((l) => l.msg === 'downloading model')).toBe(false);
  }, 120_000);

  test('no network: the call fails with 58P01 saying the download failed and what to fetch by hand', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgst-offline-'));
    const endpoint = await nowhere();
    const s = await serve(['--model-dir', dir], { HF_ENDPOINT: endpoint });
    const c = await connect(s.url);
    const err = await c.query(`SELECT steadytext_embed('offline')`).then(() => undefined, (e: pg.DatabaseError) => e);
    expect(err?.code).toBe('58P01');
    expect(err?.message).toContain(`cannot download embedding model 'small' from ${endpoint}Qwen/Qwen3-Embedding-0.6B-GGUF/resolve/main/Qwen3-Embedding-0.6B-Q8_0.gguf: network unreachable (ECONNREFUSED); put`);
    expect(err?.message).toContain(`put ${EMBEDDING} (about 639 MB)`);
    expect(err?.message).toContain(`into ${dir}, or run \`pg-steadytext models pull\``);
    await expect.poll(() => s.lines.filter((l) => l.msg === 'model download failed; steadytext calls that need it try again').length).toBeGreaterThan(0);
  }, 120_000);

  test('--model-dir holding the files is enough: nothing is downloaded', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgst-present-'));
    copyFileSync(fixtures.generation, join(dir, GENERATION));
    copyFileSync(fixtures.embedding, join(dir, EMBEDDING));
    const s = await serve(['--model-dir', dir, '--no-download']);
    const c = await connect(s.url);
    expect((await c.query(`SELECT steadytext_generate('${PROMPT}', 8, 42) AS t`)).rows[0].t).toBe(expected);
    expect(s.lines.some((l) => /download|fail until their files/.test(String(l.msg)))).toBe(false);
  }, 120_000);
});
