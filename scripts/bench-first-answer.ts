// npm run bench:first-answer [-- --target embedded|upstream] [--preset tiny|bench] [--rounds N] [--cli dist/cli.js] [--max-tokens 16]
// Time to first answer: from spawning pg-steadytext as the README starts it, the models present, to the first
// steadytext_generate answer through the proxy:
//   --target embedded (default): `node dist/cli.js` with no upstream, the README's one command (the embedded
//         database, in a data directory of the round's own)
//   --target upstream: `node dist/cli.js serve --upstream postgres://postgres:...@host:port/db` against a
//         throwaway cluster (tests/setup/cluster.ts)
// Per round:
//   cold  a fresh process, a database the proxy has never served (embedded: a new data directory, created by
//         this start; upstream: a new database, the SQL objects installed on the first connection), fresh copies
//         of the models in a fresh model directory, evicted from the page cache (`dd iflag=nocache`, the model
//         files only: `fincore` confirms when present)
//   warm  a second process on the same database and models (SQL objects installed, files cached)
// Each prompt is new, so every answer is computed, never found in steadytext_cache. Phases from the spawn:
// listening (the port accepts), connected (the client's login done), first answer; cpu: the CPU time the CLI used
// until then (all its threads, and its children that exited), which a busy machine changes far less. Goal: cold < 5 s.
// --preset tiny: the test models (a few MB); bench: real models' dimensions (a 1 B generator, 1 GB), random weights.
// --trace: the CLI's log lines (at debug) with their time since the spawn, to see where the time goes.
// --serve-flag F (repeatable): one more word for serve's command line, e.g. --serve-flag=--preload-models.
// --cli: another build of the CLI (e.g. dist-NAME/cli.js); it must exist (npm run build writes dist/).
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { FIXTURE_VERSION, writeFixtureModels, type FixtureModels, type FixturePreset } from '../tools/fixture-models.js';
import { freePort, startCluster, type Cluster } from '../tests/setup/cluster.js';

const { values: opt } = parseArgs({
  options: {
    preset: { type: 'string', default: 'tiny' },
    target: { type: 'string', default: 'embedded' },
    rounds: { type: 'string', default: '1' },
    cli: { type: 'string', default: 'dist/cli.js' },
    'max-tokens': { type: 'string', default: '16' },
    trace: { type: 'boolean', default: false },
    'serve-flag': { type: 'string', multiple: true, default: [] },
  },
});
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const PRESET = opt.preset as FixturePreset;
if (PRESET !== 'tiny' && PRESET !== 'bench') throw new Error(`--preset must be tiny or bench, not ${opt.preset}`);
const ROUNDS = Number(opt.rounds);
const MAX_TOKENS = Number(opt['max-tokens']);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1 || !Number.isInteger(MAX_TOKENS) || MAX_TOKENS < 1)
  throw new Error('--rounds and --max-tokens take positive integers');
const CLI = resolve(root, opt.cli);
if (!existsSync(CLI)) throw new Error(`${CLI} not found: run npm run build (or pass --cli to a build of your own)`);
const GOAL_MS = 5000;
const EMBEDDED = opt.target === 'embedded';
if (!EMBEDDED && opt.target !== 'upstream') throw new Error(`--target must be embedded or upstream, not ${opt.target}`);
const progress = (s: string) => process.stderr.write(s + '\n');

/** The fixture models of a preset, generated once into node_modules/.cache (as the other benches keep them). */
async function fixtures(preset: FixturePreset): Promise<FixtureModels> {
  const dir = join(root, 'node_modules/.cache/pg-steadytext/fixtures', `${FIXTURE_VERSION}-${preset}`);
  const paths = { generation: join(dir, 'generation.gguf'), embedding: join(dir, 'embedding.gguf') };
  if (existsSync(paths.generation) && existsSync(paths.embedding)) return paths;
  mkdirSync(dirname(dir), { recursive: true });
  const tmp = mkdtempSync(join(dirname(dir), `.tmp-${FIXTURE_VERSION}-${preset}-`));
  progress(`writing ${preset} fixture models into ${dir} (once)...`);
  try {
    await writeFixtureModels(tmp, { preset });
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(paths.embedding)) throw e; // otherwise a concurrent writer won the rename
  }
  return paths;
}

/** Copies written to disk, then dropped from the page cache: the next read comes from the disk. */
function coldCopies(models: FixtureModels, dir: string): { models: FixtureModels; cached: string } {
  const out = { generation: join(dir, basename(models.generation)), embedding: join(dir, basename(models.embedding)) };
  for (const k of ['generation', 'embedding'] as const) copyFileSync(models[k], out[k]);
  const files = [out.generation, out.embedding];
  spawnSync('sync', files);
  for (const f of files) spawnSync('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none']);
  const fc = spawnSync('fincore', ['--noheadings', '--bytes', '--output', 'RES', ...files], { encoding: 'utf8' });
  const cached =
    fc.status === 0
      ? `${fc.stdout
          .trim()
          .split('\n')
          .reduce((a, l) => a + Number(l.trim()), 0)} bytes of the model files cached`
      : 'page cache not checked (no fincore)';
  return { models: out, cached };
}

const accepts = (port: number) =>
  new Promise<boolean>((done) => {
    const s = connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      done(true);
    });
    s.on('error', () => done(false));
  });

interface Run {
  listening: number;
  connected: number;
  answered: number;
  /** CPU seconds the CLI used until the first answer (its threads and its children that exited, e.g. a binding test); null: no /proc. */
  cpu: number | null;
  answer: string;
}

const TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** CPU time of a process so far (user and system, its own and its waited-for children's), from /proc: a figure that
 * other work on a busy machine changes far less than the wall-clock times. */
function cpuSeconds(pid: number): number | null {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / TICKS;
  } catch {
    return null;
  }
}

/** One start of the CLI, timed to the first answer, then stopped (SIGTERM) and waited for. */
async function firstAnswer(
  where: { cluster: Cluster; database: string } | { dataDir: string },
  models: FixtureModels,
  modelDir: string,
  prompt: string,
): Promise<Run> {
  const port = await freePort();
  const database = 'database' in where ? where.database : 'postgres';
  const args =
    'cluster' in where
      ? [
          CLI,
          'serve',
          '--upstream',
          `postgres://postgres:postgres@${where.cluster.host}:${where.cluster.port}/${database}`,
          '--daemon-listen',
          `127.0.0.1:${await freePort()}`,
        ]
      : [CLI, '--data-dir', where.dataDir];
  args.push('--listen', `127.0.0.1:${port}`, '--model-dir', modelDir);
  args.push(...opt['serve-flag']);
  if (opt.trace) args.push('--log-level', 'debug', '--log-format', 'json');
  // Nothing from the caller's environment may change a default; the models are those of the preset.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGSTEADYTEXT_')));
  let log = '';
  const t0 = performance.now();
  const epoch0 = Date.now();
  const child = spawn(process.execPath, args, {
    cwd: root,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...env, PGSTEADYTEXT_GENERATION_MODEL: models.generation, PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding },
    detached: true, // its own session, as a server runs (see bench-proxy.ts)
  });
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  let exited = false;
  const gone = new Promise<void>((done) =>
    child.once('exit', () => {
      exited = true;
      done();
    }),
  );
  const fail = (why: string) => new Error(`${why}: node ${args.join(' ')}\n${log.slice(-3000)}`);
  try {
    while (!(await accepts(port))) {
      if (exited) throw fail('the CLI exited before listening');
      if (performance.now() - t0 > 120_000) throw fail('not listening after 120 s');
      await new Promise((r) => setTimeout(r, 5));
    }
    const listening = performance.now() - t0;
    const client = new pg.Client(`postgres://postgres:postgres@127.0.0.1:${port}/${database}`);
    await client.connect();
    const connected = performance.now() - t0;
    try {
      const r = await client.query<{ answer: string }>(
        `SELECT steadytext_generate('${prompt.replaceAll("'", "''")}', max_tokens := ${MAX_TOKENS}) AS answer`,
      );
      const answered = performance.now() - t0;
      const cpu = cpuSeconds(child.pid!);
      if (opt.trace) traceLog(log, epoch0);
      return { listening, connected, answered, cpu, answer: r.rows[0].answer };
    } finally {
      await client.end();
    }
  } finally {
    if (!exited) child.kill('SIGTERM');
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, 15_000);
    await gone;
    clearTimeout(timer);
  }
}

/** Each JSON log line's message and time since the spawn. */
function traceLog(log: string, epoch0: number) {
  for (const l of log.split('\n')) {
    if (!l.startsWith('{')) continue;
    const { time, msg, level: _, pid: __, hostname: ___, ...rest } = JSON.parse(l) as Record<string, unknown>;
    progress(`  +${String(Number(time) - epoch0).padStart(5)} ms  ${String(msg)} ${JSON.stringify(rest).slice(0, 160)}`);
  }
}

const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

let cluster: Cluster | undefined;
const work = mkdtempSync(join(tmpdir(), 'pgst-first-answer-'));
try {
  const source = await fixtures(PRESET);
  progress(`preset ${PRESET}, ${ROUNDS} round(s), ${CLI}, ${EMBEDDED ? 'embedded database' : 'starting a throwaway PostgreSQL cluster...'}`);
  cluster = EMBEDDED ? undefined : await startCluster();
  const admin = cluster ? new pg.Client(cluster.adminUrl) : undefined;
  await admin?.connect();
  const rows: string[][] = [];
  const colds: number[] = [];
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      const database = `first_answer_${round}_${process.pid}`;
      await admin?.query(`CREATE DATABASE ${database}`);
      const where = cluster ? { cluster, database } : { dataDir: join(work, `pgdata-${round}`) };
      const modelDir = join(work, `models-${round}`);
      mkdirSync(modelDir);
      const { models, cached } = coldCopies(source, modelDir);
      progress(`round ${round}: ${cached} before the cold start`);
      for (const kind of ['cold', 'warm'] as const) {
        const r = await firstAnswer(where, models, modelDir, `Round ${round}, ${kind} start: the capital of France is`);
        if (kind === 'cold') colds.push(r.answered);
        rows.push([
          `${round}`,
          kind,
          s(r.listening),
          s(r.connected),
          s(r.answered),
          r.cpu === null ? '-' : `${r.cpu.toFixed(2)} s`,
          JSON.stringify(r.answer.slice(0, 30)),
        ]);
      }
      await admin?.query(`DROP DATABASE ${database} WITH (FORCE)`);
    }
  } finally {
    await admin?.end();
  }
  const head = ['round', 'start', 'listening', 'connected', 'first answer', 'cpu', 'answer (start)'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 1 || i === 6 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  const flags = opt['serve-flag'].length ? ` ${opt['serve-flag'].join(' ')}` : '';
  console.log(
    `\ntime to first steadytext_generate answer (max_tokens ${MAX_TOKENS}), ${PRESET} models, from spawning node ${opt.cli} ${EMBEDDED ? '(no upstream: the embedded database)' : 'serve --upstream'}${flags}`,
  );
  console.log([line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n'));
  const worst = Math.max(...colds);
  console.log(`goal: cold < ${s(GOAL_MS)}: ${worst < GOAL_MS ? 'met' : 'NOT met'} (slowest cold ${s(worst)})`);
  // Other work on the machine slows every phase: say how busy it was.
  const load = loadavg().map((x) => x.toFixed(1));
  console.log(`load average ${load.join(' ')} on ${availableParallelism()} cores`);
} finally {
  await cluster?.stop();
  rmSync(work, { recursive: true, force: true });
}
