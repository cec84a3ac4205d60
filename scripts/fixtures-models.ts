// npm run fixtures:models -- DIR [--preset tiny|bench] [--seed N]
import { stat } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { DEFAULT_FIXTURE_SEED, FIXTURE_VERSION, writeFixtureModels, type FixturePreset } from '../tools/fixture-models.js';

const USAGE = `usage: npm run fixtures:models -- DIR [--preset tiny|bench] [--seed N]
  Writes DIR/generation.gguf and DIR/embedding.gguf: deterministic llama-architecture models with random weights.
  --preset tiny   small models for tests (default)
  --preset bench  real-size models (~1.0 B generation, Qwen3-Embedding-0.6B-sized embedding; ~1.5 GB)
  --seed N        integer seed (default ${DEFAULT_FIXTURE_SEED}); same seed and preset give byte-identical files`;

function fail(msg: string): never {
  process.stderr.write(`${msg}\n\n${USAGE}\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    allowPositionals: true,
    options: { preset: { type: 'string', default: 'tiny' }, seed: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
} catch (e) {
  fail((e as Error).message);
}
const { values, positionals } = args;
if (values.help) {
  process.stdout.write(USAGE + '\n');
  process.exit(0);
}
if (positionals.length !== 1) fail(positionals.length ? `expected one DIR, got ${positionals.length} arguments` : 'missing DIR');
const preset = values.preset as FixturePreset;
if (preset !== 'tiny' && preset !== 'bench') fail(`unknown preset "${values.preset}"`);
const seed = values.seed === undefined ? DEFAULT_FIXTURE_SEED : Number(values.seed);
if (!/^-?\d+$/.test(values.seed ?? '0') || !Number.isSafeInteger(seed)) fail(`--seed must be an integer, got "${values.seed}"`);

const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
const started = Date.now();
let lastShown = -1;
const onProgress = preset === 'bench' ? (done: number, total: number) => {
  const pct = Math.floor((done / total) * 100);
  if (pct === lastShown || (!process.stderr.isTTY && pct % 10 && pct !== 100)) return;
  lastShown = pct;
  const line = `writing ${preset} models: ${pct}% (${mb(done)} / ${mb(total)}, ${((Date.now() - started) / 1000).toFixed(0)} s)`;
  process.stderr.write(process.stderr.isTTY ? `\r${line}${pct === 100 ? '\n' : ''}` : `${line}\n`);
} : undefined;

const models = await writeFixtureModels(positionals[0], { preset, seed, onProgress });
for (const path of [models.generation, models.embedding]) process.stdout.write(`${path}\t${mb((await stat(path)).size)}\n`);
process.stderr.write(`fixture v${FIXTURE_VERSION}, preset ${preset}, seed ${seed}: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
