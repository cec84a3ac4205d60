// bench:proxy, two phases side by side in one run on one throwaway cluster (--phase session|pooling|all).
//   npm run bench:proxy [-- --phase all --seconds 10 --rounds 1 --workers 2
//                          --clients 8 --threads 2 --modes simple,prepared
//                          --targets direct,cli,proxy,pgbouncer[,proxy-seam][,proxy-js][,cli-...]
//                          --pool-clients 1,10,50,200 --pool-modes simple,extended,prepared]
// session: pgbench -S through nothing, through the proxy (its own process) and through pgBouncer (Debian's
// packaged one, session mode), with --clients, --threads, --modes and --targets.
// pooling (scripts/bench-pooling.ts): pg-steadytext as a transaction pooler against pgBouncer 1.24 from the same
// pgbouncer.ini, at --pool-clients with --pool-modes: TPS, exact p50/p99 and their ratios.
// In the session phase, cli, the main target, is `pg-steadytext serve` as the README starts it: default flags, an upstream URL
// without sslmode, the steadytext layer, the daemon endpoint, logging at info (JSON to a file), on the
// fixture models. Only the ports are chosen (free ones: 6432 and 5557 may be taken on a shared machine).
// Its variants each change one default, to find what a slow default costs: cli-disable (?sslmode=disable),
// cli-warn (--log-level warn), cli-nodaemon (--daemon-listen off), cli-<N>w (--workers N).
// proxy is the bare proxy (scripts/proxy-launcher.ts: no steadytext layer, warn, sslmode=disable), measured
// twice: with one process (proxy-1w) and with --workers processes (proxy-<N>w). proxy-seam is the
// one-process proxy with an interceptor that never rewrites: the cost of the interception seam. proxy-js is
// the one-process proxy with the native relay off: everything relayed in JS.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, writeFileSync, chmodSync, closeSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
import { FIXTURE_VERSION, writeFixtureModels, type FixtureModels } from '../tools/fixture-models.js';
import { freePort, startCluster, type Cluster } from '../tests/setup/cluster.js';
import { POOL_CLIENTS as POOL_CLIENTS_DEFAULT, POOL_MODES as POOL_MODES_DEFAULT, runPoolingPhase } from './bench-pooling.js';

const OPTIONS = ['phase', 'seconds', 'clients', 'threads', 'rounds', 'modes', 'workers', 'targets', 'pool-clients', 'pool-modes'];
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) {
  const name = process.argv[i].replace(/^--/, '');
  if (!OPTIONS.includes(name) || !process.argv[i].startsWith('--')) throw new Error(`unknown option ${process.argv[i]} (known: --${OPTIONS.join(', --')})`);
  if (process.argv[i + 1] === undefined) throw new Error(`--${name} needs a value`);
  args.set(name, process.argv[i + 1]);
}
function positiveInt(name: string, fallback: number): number {
  const v = Number(args.get(name) ?? fallback);
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} takes a positive integer, not ${args.get(name)}`);
  return v;
}
function listOf(name: string, fallback: string[], allowed?: string[]): string[] {
  const v = args.has(name) ? args.get(name)!.split(',') : fallback;
  const bad = v.filter((x) => (allowed ? !allowed.includes(x) : !/^[1-9]\d*$/.test(x)));
  if (bad.length) throw new Error(`--${name}: ${bad.join(',')} not among ${allowed?.join(',') ?? 'positive integers'}`);
  return v;
}
const PHASE = listOf('phase', ['all'], ['session', 'pooling', 'all'])[0];
const SECONDS = positiveInt('seconds', 10);
const CLIENTS = positiveInt('clients', 8);
const THREADS = positiveInt('threads', 2);
const ROUNDS = positiveInt('rounds', 1);
const MODES = listOf('modes', ['simple', 'prepared'], ['simple', 'extended', 'prepared']);
const WORKERS = positiveInt('workers', 2);
const POOL_CLIENTS = listOf('pool-clients', POOL_CLIENTS_DEFAULT.map(String)).map(Number);
const POOL_MODES = listOf('pool-modes', POOL_MODES_DEFAULT, POOL_MODES_DEFAULT);
const TARGETS = (args.get('targets') ?? 'direct,cli,proxy,pgbouncer').split(',')
  .flatMap((t) => (t === 'proxy' ? [...new Set(['proxy-1w', `proxy-${WORKERS}w`])] : [t]));
/** The serve command's variants: one default changed each (see the header). */
function cliVariant(name: string): { flags: string[]; query: string } | undefined {
  if (name === 'cli') return { flags: [], query: '' };
  if (name === 'cli-disable') return { flags: [], query: '?sslmode=disable' };
  if (name === 'cli-warn') return { flags: ['--log-level', 'warn'], query: '' };
  if (name === 'cli-nodaemon') return { flags: ['--daemon-listen', 'off'], query: '' };
  const w = /^cli-(\d+)w$/.exec(name);
  return w ? { flags: ['--workers', w[1]], query: '' } : undefined;
}
for (const t of TARGETS) {
  if (!['direct', 'pgbouncer', 'proxy-seam', 'proxy-js'].includes(t) && !/^proxy-\d+w$/.test(t) && !cliVariant(t)) throw new Error(`unknown target ${t}`);
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const PASSWORD = 'postgres';

function which(cmd: string): string {
  const r = spawnSync('sh', ['-c', `command -v ${cmd} || ls /usr/sbin/${cmd} 2>/dev/null`], { encoding: 'utf8' });
  const path = r.stdout.trim().split('\n')[0];
  if (!path) throw new Error(`${cmd} not found: run npm run setup:machine`);
  return path;
}

function pgbench(port: number, extra: string[]): string {
  const r = spawnSync(which('pgbench'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', ...extra, 'postgres'], {
    encoding: 'utf8',
    env: { ...process.env, PGPASSWORD: PASSWORD, PGSSLMODE: 'disable' },
  });
  if (r.status !== 0) throw new Error(`pgbench ${extra.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** Resolves with the first line the child prints, e.g. the launcher's {"port": N}. */
function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`exited (${code}) before it was ready`)));
  });
}

interface Target {
  port: number;
  /** The process whose CPU time is charged to this target (none for direct). */
  pid?: number;
  stop: () => void | Promise<void>;
}

/** User and system CPU seconds so far of a process and its live descendants (the proxy's workers; Linux /proc), or undefined. */
function cpuSeconds(pid: number | undefined): { user: number; sys: number } | undefined {
  if (pid === undefined) return undefined;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    const hz = 100; // USER_HZ on Linux
    const own = { user: Number(fields[11]) / hz, sys: Number(fields[12]) / hz };
    for (const child of childPids(pid)) {
      const c = cpuSeconds(child);
      if (c) { own.user += c.user; own.sys += c.sys; }
    }
    return own;
  } catch {
    return undefined;
  }
}

function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function startProxyProcess(cluster: Cluster, withSeam: boolean, workers: number, nativeRelay = 'auto'): Promise<Target> {
  const upstream = `postgres://${cluster.host}:${cluster.port}/postgres?sslmode=disable`;
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'scripts/proxy-launcher.ts'), upstream, '--workers', String(workers)], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, NODE_ENV: 'production', NOOP_INTERCEPTOR: withSeam ? '1' : '0', PGSTEADYTEXT_NATIVE_RELAY: nativeRelay },
    // Its own session, as pgBouncer's and PostgreSQL's: with the kernel's autogroup scheduling, a proxy in
    // the session of this script would share one CPU share with pgbench and lose the comparison for it.
    detached: true,
  });
  const { port } = JSON.parse(await firstLine(child)) as { port: number };
  return { port, pid: child.pid, stop: () => void child.kill('SIGTERM') };
}

/** The tiny fixture models (as `npm run fixtures:models -- DIR` writes them), cached as bench:sql caches its own. */
async function fixtureModels(): Promise<FixtureModels> {
  const dir = join(root, 'node_modules/.cache/pg-steadytext/fixtures', `${FIXTURE_VERSION}-tiny`);
  const paths = { generation: join(dir, 'generation.gguf'), embedding: join(dir, 'embedding.gguf') };
  if (existsSync(paths.generation) && existsSync(paths.embedding)) return paths;
  mkdirSync(dirname(dir), { recursive: true });
  const tmp = mkdtempSync(join(dirname(dir), `.tmp-${FIXTURE_VERSION}-tiny-`));
  try {
    await writeFixtureModels(tmp, { preset: 'tiny' });
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(paths.embedding)) throw e; // otherwise a concurrent writer won the rename
  }
  return paths;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port }, () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

/** `pg-steadytext serve` (the source, run as dist/cli.js would be) with its defaults but for the ports and `variant`. */
async function startCli(cluster: Cluster, models: FixtureModels, variant: { flags: string[]; query: string }): Promise<Target> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pgst-cli-'));
  const logPath = join(dir, 'serve.log');
  const logFd = openSync(logPath, 'a');
  const upstream = `postgres://postgres:${PASSWORD}@${cluster.host}:${cluster.port}/postgres${variant.query}`;
  // Nothing from the caller's environment may change a default.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGSTEADYTEXT_')));
  const flags = ['serve', '--upstream', upstream, '--listen', `127.0.0.1:${port}`, ...variant.flags];
  const daemonOff = variant.flags.includes('--daemon-listen');
  if (!daemonOff) flags.push('--daemon-listen', `127.0.0.1:${await freePort()}`);
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'cli.ts'), ...flags], {
    cwd: root,
    stdio: ['ignore', 'ignore', logFd],
    env: { ...env, PGSTEADYTEXT_GENERATION_MODEL: models.generation, PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding },
    detached: true, // its own session, as the launcher's proxy (see there)
  });
  closeSync(logFd);
  let exited = false;
  const gone = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve(); }));
  // Ready once it accepts connections (the log may be set to say nothing).
  const deadline = Date.now() + 60_000;
  while (!(await accepts(port))) {
    if (exited || Date.now() > deadline) {
      const log = readFileSync(logPath, 'utf8');
      if (!exited) process.kill(-child.pid!, 'SIGKILL');
      throw new Error(`pg-steadytext ${flags.join(' ')} did not start:\n${log.slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    port,
    pid: child.pid,
    async stop() {
      if (!exited) child.kill('SIGTERM');
      const timer = setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } }, 15_000);
      await gone;
      clearTimeout(timer);
      const warnings = readFileSync(logPath, 'utf8').split('\n').filter((l) => /"level":(40|50|60)/.test(l));
      if (warnings.length) console.log(`  (${variant.flags.join(' ') || 'cli'} logged: ${warnings.slice(0, 3).join(' | ')})`);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function startPgbouncer(cluster: Cluster): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'pgst-bouncer-'));
  const port = await freePort();
  writeFileSync(join(dir, 'userlist.txt'), `"postgres" "${PASSWORD}"\n`);
  writeFileSync(
    join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `postgres = host=${cluster.host} port=${cluster.port} dbname=postgres`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      `unix_socket_dir = ${dir}`,
      'auth_type = scram-sha-256',
      `auth_file = ${join(dir, 'userlist.txt')}`,
      'pool_mode = session',
      'max_client_conn = 200',
      'default_pool_size = 50',
      `logfile = ${join(dir, 'pgbouncer.log')}`,
      `pidfile = ${join(dir, 'pgbouncer.pid')}`,
      'log_connections = 0',
      'log_disconnections = 0',
      '',
    ].join('\n'),
  );
  // pgBouncer refuses to run as root.
  const root = userInfo().uid === 0;
  if (root) {
    const id = (f: string) => Number(spawnSync('id', [f, 'postgres'], { encoding: 'utf8' }).stdout.trim());
    for (const f of ['', 'userlist.txt', 'pgbouncer.ini']) chownSync(join(dir, f), id('-u'), id('-g'));
    chmodSync(dir, 0o700);
  }
  const bin = which('pgbouncer');
  const child = root
    ? spawn('runuser', ['-u', 'postgres', '--', bin, join(dir, 'pgbouncer.ini')], { stdio: 'ignore', detached: true })
    : spawn(bin, [join(dir, 'pgbouncer.ini')], { stdio: 'ignore', detached: true });
  // Ready when it accepts a query.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = spawnSync(which('psql'), ['-X', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-c', 'select 1', 'postgres'], {
      env: { ...process.env, PGPASSWORD: PASSWORD, PGSSLMODE: 'disable', PGCONNECT_TIMEOUT: '2' },
      encoding: 'utf8',
    });
    if (r.status === 0) break;
    if (Date.now() > deadline) throw new Error(`pgbouncer did not start: ${r.stderr}`);
    await new Promise((res) => setTimeout(res, 200));
  }
  const pid = Number(readFileSync(join(dir, 'pgbouncer.pid'), 'utf8').trim());
  return {
    port,
    pid,
    stop: () => {
      try {
        process.kill(-child.pid!, 'SIGTERM'); // its own process group (detached)
      } catch {
        /* gone */
      }
      setTimeout(() => rmSync(dir, { recursive: true, force: true }), 500).unref();
    },
  };
}

interface Result {
  tps: number;
  latencyMs: number;
  /** CPU time of the proxy process per transaction (µs), user and system; NaN for direct. */
  cpuUserUs: number;
  cpuSysUs: number;
}

function bench(target: Target, mode: string): Result {
  const before = cpuSeconds(target.pid);
  const out = pgbench(target.port, ['-n', '-S', '-c', String(CLIENTS), '-j', String(THREADS), '-T', String(SECONDS), '-M', mode]);
  const after = cpuSeconds(target.pid);
  const tps = Number(/tps = ([\d.]+)/.exec(out)?.[1]);
  const latencyMs = Number(/latency average = ([\d.]+) ms/.exec(out)?.[1]);
  const txs = Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1]);
  if (!Number.isFinite(tps)) throw new Error(`could not read pgbench output:\n${out}`);
  const per = (a?: number, b?: number) => (a === undefined || b === undefined ? NaN : ((b - a) * 1e6) / txs);
  return { tps, latencyMs, cpuUserUs: per(before?.user, after?.user), cpuSysUs: per(before?.sys, after?.sys) };
}

/** The session phase: pgbench -S with --clients through each of --targets. Stops its targets when done. */
async function sessionPhase(cluster: Cluster, stops: (() => void | Promise<void>)[]): Promise<void> {
  console.log(`== session: pgbench -S -c ${CLIENTS} -j ${THREADS} -T ${SECONDS}, modes ${MODES.join('/')}, ${ROUNDS} round(s), proxy workers: 1 and ${WORKERS} (--workers)`);
  const started = stops.length;
  try {
    const targets: Record<string, Target> = { direct: { port: cluster.port, stop: () => {} } };
    const models = TARGETS.some((t) => cliVariant(t)) ? await fixtureModels() : undefined;
    for (const name of TARGETS) {
      const variant = cliVariant(name);
      if (variant) {
        targets[name] = await startCli(cluster, models!, variant);
        stops.push(targets[name].stop);
        continue;
      }
      const workers = name === 'proxy-seam' || name === 'proxy-js' ? 1 : Number(/^proxy-(\d+)w$/.exec(name)?.[1]);
      if (!Number.isInteger(workers)) continue;
      targets[name] = await startProxyProcess(cluster, name === 'proxy-seam', workers, name === 'proxy-js' ? 'off' : 'auto');
      stops.push(targets[name].stop);
    }
    if (TARGETS.includes('pgbouncer')) {
      targets.pgbouncer = await startPgbouncer(cluster);
      stops.push(targets.pgbouncer.stop);
    }
    // Warm up (JIT, connections' first statements) so the measured runs compare steady states.
    for (const target of TARGETS) if (target !== 'direct') pgbench(targets[target].port, ['-n', '-S', '-c', String(CLIENTS), '-j', String(THREADS), '-T', '2']);
    const results: Record<string, Record<string, Result[]>> = {};
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of MODES) {
        for (const target of TARGETS) {
          const r = bench(targets[target], mode);
          ((results[mode] ??= {})[target] ??= []).push(r);
          const cpu = Number.isNaN(r.cpuUserUs) ? '' : `  cpu/tx ${r.cpuUserUs.toFixed(1)} us user + ${r.cpuSysUs.toFixed(1)} us sys`;
          console.log(`  ${mode.padEnd(8)} ${target.padEnd(12)} ${r.tps.toFixed(0).padStart(7)} tps  ${r.latencyMs.toFixed(3)} ms${cpu}`);
        }
      }
    }
    const mean = (rs: Result[], k: keyof Result) => rs.reduce((a, r) => a + r[k], 0) / rs.length;
    console.log('\nmode      target          tps     latency   vs direct  vs pgbouncer   cpu/tx (user+sys)');
    for (const mode of MODES) {
      const direct = results[mode].direct ? mean(results[mode].direct, 'tps') : NaN;
      const bouncer = results[mode].pgbouncer ? mean(results[mode].pgbouncer, 'tps') : NaN;
      for (const target of TARGETS) {
        const tps = mean(results[mode][target], 'tps');
        const lat = mean(results[mode][target], 'latencyMs');
        const vsD = target === 'direct' ? '' : (tps / direct).toFixed(2);
        const vsB = target.startsWith('proxy') || cliVariant(target) ? (tps / bouncer).toFixed(2) : '';
        const u = mean(results[mode][target], 'cpuUserUs');
        const cpu = Number.isNaN(u) ? '' : `${u.toFixed(1)} + ${mean(results[mode][target], 'cpuSysUs').toFixed(1)} us`;
        console.log(`${mode.padEnd(9)} ${target.padEnd(12)} ${tps.toFixed(0).padStart(7)}  ${lat.toFixed(3).padStart(7)} ms  ${vsD.padStart(9)}  ${vsB.padStart(11)}   ${cpu}`);
      }
    }
    // The shipped configuration against the bare proxy: a slow default shows here, not behind proxy-1w.
    if (TARGETS.includes('cli') && TARGETS.includes('proxy-1w')) {
      const ratios = MODES.map((m) => `${m} ${(mean(results[m].cli, 'tps') / mean(results[m]['proxy-1w'], 'tps')).toFixed(2)}`);
      console.log(`\ncli (serve as the README starts it) / proxy-1w (bare proxy), tps: ${ratios.join(', ')}`);
    }
    console.log(`\n(cli: pg-steadytext serve with default flags; proxy-Nw: the bare proxy with N worker processes; proxy-js: one process, native relay off; cpu/tx: CPU time of the proxy (all its processes) / pgBouncer per transaction; less sensitive to other load than tps)`);
  } finally {
    // Stopped before the pooling phase, whose processes they would otherwise compete with for the CPU.
    await Promise.all(stops.splice(started).map(async (stop) => stop()));
  }
}

async function main(): Promise<void> {
  const cluster = await startCluster();
  const stops: (() => void | Promise<void>)[] = [];
  // Interrupted (Ctrl-C, timeout): no cluster, proxy or pgBouncer is left running.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      for (const stop of stops) void stop();
      void cluster.stop().finally(() => process.exit(130));
    });
  }
  try {
    pgbench(cluster.port, ['-i', '-q']);
    if (PHASE !== 'pooling') await sessionPhase(cluster, stops);
    if (PHASE !== 'session') {
      await runPoolingPhase(cluster, {
        seconds: SECONDS, rounds: ROUNDS, clients: POOL_CLIENTS, modes: POOL_MODES, workers: WORKERS, password: PASSWORD,
        onStarted: (stop) => stops.push(stop),
      });
    }
  } finally {
    await Promise.all(stops.map(async (stop) => stop()));
    await new Promise((r) => setTimeout(r, 300));
    await cluster.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
