// A model downloaded on first use, from a local HTTP server whose answer stops halfway until the test lets
// it finish: what callers waiting for it see, in this process and over the IPC channel workers use.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createEngine, type DownloadProgress, type Engine, type InferenceError } from '../../inference/engine.js';
import { engineOverIpc, serveEngineOverIpc, type IpcChannel } from '../../inference/engine-ipc.js';
import { modelServer } from '../fixtures/model-server.js';
import { tinyModels } from '../fixtures/models.js';

const cleanup: (() => unknown)[] = [];
afterAll(async () => { for (const f of cleanup.reverse()) await f(); });

/** Two in-process ends of an IPC channel that deep-copy every message, as a real channel does. */
function channelPair(): [IpcChannel, IpcChannel] {
  const listeners = [new Set<(m: unknown) => void>(), new Set<(m: unknown) => void>()];
  const end = (me: 0 | 1): IpcChannel => ({
    send(m) { const copy = structuredClone(m); setImmediate(() => { for (const l of listeners[1 - me]) l(copy); }); },
    onMessage(l) { listeners[me].add(l); return () => void listeners[me].delete(l); },
    onClose: () => () => {},
  });
  return [end(0), end(1)];
}

describe('a model downloaded on first use', () => {
  it('callers wait for it outside the time limit and are told how far it is; a cancelled wait leaves the download going', async () => {
    const models = await tinyModels();
    const body = readFileSync(models.generation);
    const server = await modelServer(new Map([['/gen.gguf', body]]), '/gen.gguf');
    cleanup.push(() => server.close());
    const held = { ...server, url: `${server.base}gen.gguf` };
    const engine: Engine = createEngine({
      generationModel: held.url, embeddingModel: models.embedding, cacheDir: mkdtempSync(join(tmpdir(), 'pgst-dl-')), timeoutMs: 1000, progress: false,
    });
    cleanup.push(() => engine.close());
    const [a, b] = channelPair();
    cleanup.push(serveEngineOverIpc(engine, a));
    const remote = engineOverIpc(b);
    await remote.ready;
    cleanup.push(() => remote.close());

    const here: DownloadProgress[] = [], there: DownloadProgress[] = [];
    const identity = engine.modelIdentity('generation', null, { onWait: (p) => here.push(p) });
    await held.requested;
    const overIpc = remote.modelIdentity('generation', null, { onWait: (p) => there.push(p) });
    await expect.poll(() => there.length).toBe(1);
    expect(here).toHaveLength(1);
    for (const p of [here[0], there[0]]) expect(p).toMatchObject({ role: 'generation', name: 'small', file: 'gen.gguf', url: held.url });
    expect(there[0].totalBytes).toBe(body.length);
    expect(engine.status().downloads).toMatchObject([{ file: 'gen.gguf', totalBytes: body.length, downloadedBytes: expect.any(Number) }]);

    const ac = new AbortController();
    const cancelled = engine.generate({ prompt: 'hi', maxTokens: 4, signal: ac.signal }).catch((e: unknown) => e);
    // Its own limit covers loading the model (seconds on a busy machine), not the download.
    const generated = engine.generate({ prompt: 'hi', maxTokens: 4, timeoutMs: 120_000 });
    ac.abort();
    expect(((await cancelled) as InferenceError).code).toBe('CANCELLED');
    expect(engine.status().downloads).toHaveLength(1);
    // Past the engine's 1 s request limit, the download still holds: modelIdentity's wait for it is not timed.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    held.release();
    const direct = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, cacheBytes: 0 });
    cleanup.push(() => direct.close());
    expect(await generated).toBe(await direct.generate({ prompt: 'hi', maxTokens: 4 }));
    expect(await identity).toBe(await direct.modelIdentity('generation'));
    expect(await overIpc).toBe(await identity);
    expect(engine.status().downloads).toEqual([]);
    // Found on disk from now on: nobody waits, nobody is told.
    const later: DownloadProgress[] = [];
    await remote.modelIdentity('generation', null, { onWait: (p) => later.push(p) });
    expect(later).toEqual([]);
  }, 60_000);
});
