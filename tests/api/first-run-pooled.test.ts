// A model downloaded on first use while clients wait for it through a transaction pool, by the simple and the
// extended protocol: each waiting call gets the NOTICE, another client's SQL goes through the pool meanwhile,
// and the calls get the model's answer once the download ends. A waiting call holds its server connection (as
// while its answer is computed): the pool has one more than the waiting calls.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { createEngine } from '../../inference/engine.js';
import { modelServer, type ModelServer } from '../fixtures/model-server.js';
import { tinyModels } from '../fixtures/models.js';
import { silent, startStack, type Stack } from './helpers.js';

const PROMPT = 'The capital of France is';
let stack: Stack;
let server: ModelServer;
let expected: string;

beforeAll(async () => {
  const models = await tinyModels();
  server = await modelServer(new Map([['/gen.gguf', readFileSync(models.generation)]]), '/gen.gguf');
  stack = await startStack('st_first_pool', { engine: { generationModel: `${server.base}gen.gguf`, cacheDir: mkdtempSync(join(tmpdir(), 'pgst-first-pool-')), progress: false } });
  const direct = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, logger: silent });
  expected = await direct.generate({ prompt: PROMPT, maxTokens: 8, seed: 42, temperature: 0 });
  await direct.close();
}, 60_000);

afterAll(async () => {
  server?.close();
  await stack?.stop();
});

async function client(url: string, notices: string[] = []): Promise<pg.Client> {
  const c = await stack.connect(url);
  c.on('notice', (n) => notices.push(n.message ?? ''));
  return c;
}

describe('a download under a transaction pool', () => {
  test('simple and extended protocol calls each get the NOTICE and then the answer; other SQL goes through the pool meanwhile', async () => {
    const url = await stack.pooledUrl('transaction', 3);
    const extendedNotices: string[] = [], simpleNotices: string[] = [];
    const extended = await client(url, extendedNotices);
    const simple = await client(url, simpleNotices);
    let answered = 0;
    const calls = [
      extended.query('SELECT steadytext_generate($1, 8, 42) AS t', [PROMPT]),
      simple.query(`SELECT steadytext_generate('${PROMPT}', 8, 42) AS t`),
    ].map((p) => p.then((r) => { answered++; return r.rows[0].t as string; }));
    await server.requested;
    await expect.poll(() => extendedNotices.length + simpleNotices.length, { timeout: 30_000 }).toBe(2);
    for (const n of [extendedNotices[0], simpleNotices[0]]) expect(n).toMatch(/^steadytext: downloading generation model 'small' \(gen\.gguf(, \d+% of .*)?\), the call waits for it$/);
    const other = await client(url);
    expect((await other.query('SELECT 41 + 1 AS n')).rows[0].n).toBe(42);
    expect(answered).toBe(0);
    server.release();
    expect(await Promise.all(calls)).toEqual([expected, expected]);
    // Each session goes on as before: the notice's Close left nothing behind.
    expect((await extended.query('SELECT $1::int + 1 AS n', [1])).rows[0].n).toBe(2);
    expect((await simple.query('SELECT 2 AS n')).rows[0].n).toBe(2);
  }, 120_000);
});
