// Run by determinism.test.ts in a fresh process: answers the requests given as JSON in argv[2].
import { createEngine, type GenerateRequest } from '../../inference/engine.js';

const { models, requests, texts } = JSON.parse(process.argv[2]) as { models: { generation: string; embedding: string }; requests: GenerateRequest[]; texts: string[] };
const engine = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, cacheBytes: 0, cacheDir: process.env.TMPDIR ?? '/tmp' });
const answers = [];
for (const r of requests) answers.push(await engine.generate(r));
const vectors = (await engine.embedMany(texts)).map((v) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64'));
process.stdout.write(JSON.stringify({ answers, vectors }));
await engine.close();
