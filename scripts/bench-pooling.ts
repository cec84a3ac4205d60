// The pooling phase of bench:proxy, after PgDog's published method: pgbench -S in transaction pooling with a
// pool of 10 server connections, -M simple/extended/prepared, at 1, 10, 50 and 200 clients, against PostgreSQL
// directly, pgBouncer 1.24 (built from source by scripts/pgbouncer-source.sh) and pg-steadytext as a pooler
// (`node dist/cli.js serve --config pgbouncer.ini`), both poolers from the same ini. p50 and p99 are exact:
// every transaction's latency from pgbench's per-transaction log (-l), not the progress reports' averages.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, type Cluster } from '../tests/setup/cluster.js';

export interface PoolingOptions {
  /** Length of each pgbench run. */
  seconds: number;
  /** Every (mode, clients, target) is run this many times, targets in a rotated order each time. */
  rounds: number;
  clients: number[];
  modes: string[];
  /** Worker processes asked of pg-steadytext for its "with workers" target. */
  workers: number;
  /** The cluster's superuser password: all targets authenticate as postgres with it (SCRAM). */
  password: string;
  /** Called with each started process's stop, so an interrupted run leaves none behind. */
  onStarted: (stop: () => Promise<void>) => void;
}

export const POOL_MODES = ['simple', 'extended', 'prepared'];
export const POOL_CLIENTS = [1, 10, 50, 200];
const POOL_SIZE = 10;
const WARMUP_SECONDS = 1;

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

interface Target {
  name: string;
  port: number;
  stop: () => Promise<void>;
  /** The pooler's process, whose CPU time is charged to it (none for direct). */
  pid?: number;
  /** Its log's warnings and errors, to show next to a failed run. */
  problems: () => string[];
}

/** One pgbench run: throughput, every transaction's latency (µs) and the time its clients took to connect, or why it failed. */
type Run = { tps: number; latenciesUs: Float64Array; connectMs: number; steady?: Steady } | { error: string; noTransactions?: true };

/**
 * CPU per transaction in the run's steady state (the clients' logins left out: 200 SCRAM logins cost seconds of CPU):
 * the whole machine's, and the pooler's (its processes), between /proc samples inside the transactions' window.
 */
interface Steady {
  machineUs: number;
  poolerUs: number;
  /** The kernel's part of poolerUs (stime): the socket calls' cost, which no user-space work saves. */
  poolerSysUs: number;
  busy: number;
}


/** The ini both poolers read; only its paths and port differ between them. */
function iniText(cluster: Cluster, dir: string, port: number, steadytext: string[]): string {
  return [
    '[databases]',
    `postgres = host=${cluster.host} port=${cluster.port} dbname=postgres`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    `unix_socket_dir = ${dir}`,
    'auth_type = scram-sha-256',
    `auth_file = ${join(dir, 'userlist.txt')}`,
    'pool_mode = transaction',
    `default_pool_size = ${POOL_SIZE}`,
    'max_client_conn = 1000',
    'max_prepared_statements = 100',
    `logfile = ${join(dir, 'pooler.log')}`,
    `pidfile = ${join(dir, 'pooler.pid')}`,
    'log_connections = 0',
    'log_disconnections = 0',
    ...steadytext,
    '',
  ].join('\n');
}

function pooledDir(password: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgst-pool-'));
  writeFileSync(join(dir, 'userlist.txt'), `"postgres" "${password}"\n`);
  return dir;
}

function psqlSelect1(port: number, password: string): { ok: boolean; stderr: string } {
  const r = spawnSync('psql', ['-X', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-c', 'select 1', 'postgres'], {
    env: { ...process.env, PGPASSWORD: password, PGSSLMODE: 'disable', PGCONNECT_TIMEOUT: '2' },
    encoding: 'utf8',
  });
  return { ok: r.status === 0, stderr: r.stderr };
}

/** Waits until a query through the port succeeds (a pooler accepts connections before it can log one in). */
async function untilServing(port: number, password: string, what: string, exited: () => boolean, log: () => string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const r = psqlSelect1(port, password);
    if (r.ok) return;
    if (exited() || Date.now() > deadline) throw new Error(`${what} did not start (${exited() ? 'exited' : 'no answer in 60 s'}): ${r.stderr}\n${log().slice(-3000)}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

function readOr(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** A detached child (its own session and process group, as PostgreSQL's: see bench-proxy.ts's launcher) and how to stop it. */
function stopper(pid: number, gone: Promise<void>, isGone: () => boolean, dir: string): () => Promise<void> {
  let stopped = false;
  return async () => {
    if (stopped) return;
    stopped = true;
    if (!isGone()) {
      try { process.kill(-pid, 'SIGTERM'); } catch { /* gone */ }
      const timer = setTimeout(() => { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } }, 10_000);
      await gone;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
}

async function startPgBouncer124(cluster: Cluster, password: string): Promise<Target> {
  const build = spawnSync('bash', [join(root, 'scripts/pgbouncer-source.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const bin = build.stdout.trim().split('\n').pop() ?? '';
  if (build.status !== 0 || !existsSync(bin)) throw new Error(`scripts/pgbouncer-source.sh did not build pgBouncer 1.24 (status ${build.status})`);
  const dir = pooledDir(password);
  const port = await freePort();
  const ini = join(dir, 'pgbouncer.ini');
  writeFileSync(ini, iniText(cluster, dir, port, []));
  // pgBouncer refuses to run as root.
  const asRoot = userInfo().uid === 0;
  if (asRoot) {
    const id = (f: string) => Number(spawnSync('id', [f, 'postgres'], { encoding: 'utf8' }).stdout.trim());
    for (const f of ['', 'userlist.txt', 'pgbouncer.ini']) chownSync(join(dir, f), id('-u'), id('-g'));
    chmodSync(dir, 0o700);
  }
  const child = asRoot
    ? spawn('runuser', ['-u', 'postgres', '--', bin, ini], { stdio: 'ignore', detached: true })
    : spawn(bin, [ini], { stdio: 'ignore', detached: true });
  let exited = false;
  const gone = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve(); }));
  const log = () => readOr(join(dir, 'pooler.log'));
  const stop = stopper(child.pid!, gone, () => exited, dir);
  try {
    await untilServing(port, password, `pgBouncer (${bin})`, () => exited, log);
  } catch (e) {
    await stop();
    throw e;
  }
  const pid = Number(readOr(join(dir, 'pooler.pid')).trim()) || undefined;
  return { name: 'pgbouncer-1.24', port, stop, pid, problems: () => log().split('\n').filter((l) => / (WARNING|ERROR|FATAL) /.test(l)) };
}

/** pg-steadytext as a pooler, as the README starts one: `serve --config pgbouncer.ini`, from the built dist/. */
async function startSteadytext(cluster: Cluster, password: string, workers: number): Promise<Target & { processes: () => number }> {
  const cli = join(root, 'dist/cli.js');
  if (!existsSync(cli)) throw new Error(`${cli} is missing: run npm run build first`);
  const dir = pooledDir(password);
  const port = await freePort();
  const ini = join(dir, 'pgbouncer.ini');
  // upstream: the proxy's own service connection goes to the bench cluster, not to whatever listens on 5432.
  const upstream = `postgres://postgres:${encodeURIComponent(password)}@${cluster.host}:${cluster.port}/postgres`;
  // BENCH_STEADYTEXT: more [steadytext] settings for the proxy only, `key = value` separated by ';' (e.g. "poolHandoff = on").
  const extra = (process.env.BENCH_STEADYTEXT ?? '').split(';').map((l) => l.trim()).filter(Boolean);
  writeFileSync(ini, iniText(cluster, dir, port, ['[steadytext]', 'daemonListen = off', `upstream = ${upstream}`, ...extra]));
  const outPath = join(dir, 'serve.out');
  const out = openSync(outPath, 'a');
  // Nothing from the caller's environment may change a default.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGSTEADYTEXT_')));
  const flags = workers > 1 ? ['--workers', String(workers)] : [];
  // BENCH_NODE_ARGS: Node options for the proxy only, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile it.
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const child = spawn(process.execPath, [...nodeArgs, cli, 'serve', '--config', ini, ...flags], { cwd: root, stdio: ['ignore', out, out], env, detached: true });
  closeSync(out);
  let exited = false;
  const gone = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve(); }));
  const log = () => readOr(outPath) + readOr(join(dir, 'pooler.log'));
  const stop = stopper(child.pid!, gone, () => exited, dir);
  try {
    await untilServing(port, password, `pg-steadytext serve --config ${ini} ${flags.join(' ')}`, () => exited, log);
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    name: workers > 1 ? `pg-steadytext-${workers}w` : 'pg-steadytext',
    port,
    stop,
    pid: child.pid,
    problems: () => log().split('\n').filter((l) => /"level":(40|50|60)/.test(l) || / (WARNING|ERROR|FATAL) /.test(l)),
    processes: () => 1 + allDescendants(child.pid!).length,
  };
}

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}


/** User plus system CPU seconds so far of a process and its descendants (Linux /proc; USER_HZ 100). */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100 + childrenOf(pid).reduce((n, c) => n + cpuSeconds(c), 0);
  } catch {
    return NaN;
  }
}

/**
 * pgbench -S for `seconds` plus `connectAllowance`: pgbench's -T clock starts before its clients connect (pgbench
 * 15), and 200 SCRAM logins take seconds on two cores, which would eat a short run. pgbench's tps leaves the
 * connection time out; the allowance keeps the measured window near `seconds`. With `withLog`, every
 * transaction's latency from pgbench's per-transaction log.
 */
function pgbench(port: number, password: string, mode: string, clients: number, seconds: number, withLog: boolean, connectAllowance = 0, pooler?: number): Run {
  const dir = withLog ? mkdtempSync(join(tmpdir(), 'pgst-pgbench-')) : undefined;
  const sampler = dir ? startSampler(join(dir, 'cpu'), pooler) : undefined;
  const args = ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-n', '-S', '-M', mode, '-c', String(clients), '-j', String(Math.min(clients, 2)), '-T', String(seconds + connectAllowance)];
  if (dir) args.push('-l', '--log-prefix', join(dir, 'tx'));
  try {
    // A pooler that hangs must not hang the benchmark: pgbench gets its duration and generous room to connect.
    const timeoutMs = (2 * (seconds + connectAllowance) + 60) * 1000;
    const r = spawnSync('pgbench', [...args, 'postgres'], {
      encoding: 'utf8',
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
      env: { ...process.env, PGPASSWORD: password, PGSSLMODE: 'disable' },
    });
    sampler?.kill('SIGKILL');
    const stderr = firstLines(r.stderr ?? '');
    if (r.error || r.signal) return { error: `pgbench did not finish within ${timeoutMs / 1000} s (killed); ${stderr}` };
    // Status 2: some clients were aborted (pgbench still prints a summary, of the survivors).
    if (r.status !== 0) return { error: `pgbench exited ${r.status}: ${stderr}` };
    const tps = Number(/tps = ([\d.]+)/.exec(r.stdout)?.[1]);
    if (/actually processed: 0\b/.test(r.stdout)) return { error: 'no transaction completed', noTransactions: true };
    if (!Number.isFinite(tps)) return { error: `no tps in pgbench's output: ${r.stdout}` };
    const connectMs = Number(/initial connection time = ([\d.]+) ms/.exec(r.stdout)?.[1] ?? 0);
    if (!dir) return { tps, latenciesUs: new Float64Array(), connectMs };
    const { latenciesUs, endsUs } = readLatencies(dir);
    return { tps, latenciesUs, connectMs, steady: steadyCpu(join(dir, 'cpu'), endsUs) };
  } finally {
    sampler?.kill('SIGKILL');
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A bash loop (builtins only: no process per sample) writing every 100 ms: the time (µs), the machine's busy
 * jiffies (user, nice, system, irq, softirq of /proc/stat), the pooler's (its processes' utime + stime) and the
 * pooler's stime alone.
 */
function startSampler(file: string, pooler: number | undefined): ReturnType<typeof spawn> {
  const pids = pooler === undefined ? [] : [pooler, ...allDescendants(pooler)];
  const script = [
    'exec 9<> <(:)',
    `pids=(${pids.join(' ')})`,
    'while :; do',
    '  read -r -a c < /proc/stat',
    '  busy=$(( c[1] + c[2] + c[3] + c[6] + c[7] )); own=0; sys=0',
    '  for p in "${pids[@]}"; do',
    '    if read -r line < /proc/$p/stat 2>/dev/null; then rest=${line##*) }; read -r -a g <<< "$rest"; own=$(( own + g[11] + g[12] )); sys=$(( sys + g[12] )); fi',
    '  done',
    '  t=${EPOCHREALTIME/./}',
    '  echo "$t $busy $own $sys"',
    '  read -t 0.1 -u 9',
    'done',
  ].join('\n');
  const out = openSync(file, 'w');
  try {
    return spawn('bash', ['-c', script], { stdio: ['ignore', out, 'ignore'] });
  } finally {
    closeSync(out);
  }
}

function allDescendants(pid: number): number[] {
  return childrenOf(pid).flatMap((c) => [c, ...allDescendants(c)]);
}

/** CPU per transaction between the first sample half a second into the transactions and the last one before they end. */
function steadyCpu(file: string, endsUs: Float64Array): Steady | undefined {
  if (endsUs.length < 100) return undefined;
  const samples = readOr(file).split('\n').map((l) => l.split(' ').map(Number)).filter((f) => f.length === 4 && f.every(Number.isFinite));
  const first = endsUs[0] + 500_000;
  const last = endsUs[endsUs.length - 1] - 100_000;
  const inside = samples.filter(([t]) => t >= first && t <= last);
  if (inside.length < 5) return undefined;
  const [t0, busy0, own0, sys0] = inside[0];
  const [t1, busy1, own1, sys1] = inside[inside.length - 1];
  let n = 0;
  for (const e of endsUs) if (e > t0 && e <= t1) n++;
  if (n === 0) return undefined;
  const jiffyUs = 1e6 / 100; // USER_HZ
  const cpus = cpuCount();
  return { machineUs: ((busy1 - busy0) * jiffyUs) / n, poolerUs: ((own1 - own0) * jiffyUs) / n, poolerSysUs: ((sys1 - sys0) * jiffyUs) / n, busy: ((busy1 - busy0) * jiffyUs) / ((t1 - t0) * cpus) };
}

function cpuCount(): number {
  return cpus().length || 1;
}

/** The distinct lines of pgbench's stderr, at most five (200 clients may each report the same error). */
function firstLines(text: string): string {
  const lines = [...new Set(text.split('\n').map((l) => l.replace(/^client \d+ /, 'client N ').trim()).filter(Boolean))];
  return lines.slice(0, 5).join(' | ') + (lines.length > 5 ? ` | (${lines.length - 5} more distinct lines)` : '');
}

/**
 * pgbench -l writes one file per thread, a line per transaction: client_id transaction_no time_us script_no epoch
 * epoch_us (when it ended). The latencies, and the ends in µs since the epoch, sorted.
 */
function readLatencies(dir: string): { latenciesUs: Float64Array; endsUs: Float64Array } {
  const values: number[] = [];
  const ends: number[] = [];
  for (const f of readdirSync(dir)) {
    if (!f.startsWith('tx')) continue;
    for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
      const w = line.split(' ');
      const us = Number(w[2]);
      if (!line || !Number.isFinite(us)) continue;
      values.push(us);
      ends.push(Number(w[4]) * 1e6 + Number(w[5]));
    }
  }
  return { latenciesUs: Float64Array.from(values), endsUs: Float64Array.from(ends).sort() };
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: Float64Array, p: number): number {
  return sorted.length ? sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)] : NaN;
}

interface Cell {
  tps: number[];
  latencies: Float64Array[];
  errors: string[];
  steady?: Steady[];
}
interface Summary { tps: number; p50: number; p99: number; errors: string[]; steady?: Steady }

function summarise(cell: Cell | undefined): Summary {
  if (!cell) return { tps: NaN, p50: NaN, p99: NaN, errors: [] };
  const all = new Float64Array(cell.latencies.reduce((n, l) => n + l.length, 0));
  let at = 0;
  for (const l of cell.latencies) { all.set(l, at); at += l.length; }
  all.sort();
  const tps = cell.tps.length ? cell.tps.reduce((a, b) => a + b, 0) / cell.tps.length : NaN;
  const st = cell.steady ?? [];
  const mean = (f: (x: Steady) => number) => st.reduce((a, x) => a + f(x), 0) / st.length;
  const steady = st.length ? { machineUs: mean((x) => x.machineUs), poolerUs: mean((x) => x.poolerUs), poolerSysUs: mean((x) => x.poolerSysUs), busy: mean((x) => x.busy) } : undefined;
  return { tps, p50: percentile(all, 0.5) / 1000, p99: percentile(all, 0.99) / 1000, errors: cell.errors, steady };
}

function poolingPlan(o: Pick<PoolingOptions, 'seconds' | 'rounds' | 'clients' | 'modes'>, targets: number): string {
  const runs = o.rounds * o.modes.length * o.clients.length * targets;
  const total = runs * o.seconds + targets * (o.modes.length + o.clients.length) * WARMUP_SECONDS;
  return `${runs} runs of ${o.seconds} s plus warm-ups: about ${Math.ceil(total / 60)} min (${total} s) of pgbench, plus the clients' connection times`;
}

export async function runPoolingPhase(cluster: Cluster, o: PoolingOptions): Promise<void> {
  console.log(`\n== pooling: pgbench -S, pool_mode=transaction, default_pool_size=${POOL_SIZE}, modes ${o.modes.join('/')}, clients ${o.clients.join('/')} (-j min(c,2)), ${o.seconds} s x ${o.rounds} round(s)`);
  const direct: Target = { name: 'direct', port: cluster.port, stop: async () => {}, problems: () => [] };
  const bouncer = await startPgBouncer124(cluster, o.password);
  o.onStarted(bouncer.stop);
  const steady = await startSteadytext(cluster, o.password, 1);
  o.onStarted(steady.stop);
  const targets: Target[] = [direct, bouncer, steady];
  // --workers with pooling: measured only if it really runs more than one process (it says so and runs one otherwise).
  let workersNote = '';
  if (o.workers > 1) {
    const multi = await startSteadytext(cluster, o.password, o.workers);
    o.onStarted(multi.stop);
    await new Promise((r) => setTimeout(r, 500));
    if (multi.processes() > 1) targets.push(multi);
    else {
      await multi.stop();
      workersNote = `pg-steadytext with workers (--workers ${o.workers}): n/a (pooling runs in one process)`;
    }
  }
  console.log(poolingPlan(o, targets.length));
  if (workersNote) console.log(workersNote);

  const cells = new Map<string, Cell>();
  const key = (target: string, mode: string, clients: number) => `${target}/${mode}/${clients}`;
  // Seconds added to -T per target and client count: twice the longest connection time seen there, plus one
  // (200 direct SCRAM logins took 3 to 6 s from one run to the next here); doubled when a run's clients took
  // longer than that, and the run repeated. The first guess: SCRAM logins cost some 15 ms each, direct ones more.
  const allowance = new Map<string, number>();
  const timed = (t: Target, mode: string, clients: number, seconds: number, withLog: boolean): { run: Run; extra: number; cpuUs: number } => {
    const k = `${t.name}/${clients}`;
    for (let attempt = 1; ; attempt++) {
      const extra = allowance.get(k) ?? (clients < 50 ? 0 : Math.ceil(clients / 50));
      const cpuBefore = cpuSeconds(t.pid);
      const run = pgbench(t.port, o.password, mode, clients, seconds, withLog, extra, t.pid);
      // The pooler's CPU time per transaction: less sensitive than tps to what else runs on the machine.
      const cpuUs = ((cpuSeconds(t.pid) - cpuBefore) * 1e6) / ('error' in run ? NaN : run.latenciesUs.length);
      if (!('error' in run)) allowance.set(k, Math.max(extra, run.connectMs < 100 ? 0 : Math.ceil((2 * run.connectMs) / 1000) + 1));
      const short = 'error' in run ? run.noTransactions === true : seconds + extra - run.connectMs / 1000 < 0.8 * seconds;
      if (!short || attempt === 3) return { run, extra, cpuUs };
      allowance.set(k, Math.max(allowance.get(k) ?? 0, 2 * extra, extra + 2));
      console.log(`  (${t.name} -c ${clients}: connecting took more than the ${extra} s allowed; again with -T ${seconds}+${allowance.get(k)})`);
    }
  };
  // Warm-up: JIT, the pools' server connections and their prepared statements, PostgreSQL's caches; once
  // per client count, which also measures how long that many clients take to connect.
  for (const t of targets) {
    const warm = (mode: string, clients: number) => {
      const { run } = timed(t, mode, clients, WARMUP_SECONDS, false);
      if ('error' in run) console.log(`  warm-up ${t.name} -M ${mode} -c ${clients}: ${run.error}`);
    };
    for (const mode of o.modes) warm(mode, Math.min(10, Math.max(...o.clients)));
    for (const clients of o.clients) warm(o.modes[0], clients);
  }
  let slot = 0;
  for (let round = 0; round < o.rounds; round++) {
    for (const mode of o.modes) {
      for (const clients of o.clients) {
        // Rotated each time, so no target always runs first (or right after direct's 200 backends).
        const order = targets.map((_, i) => targets[(i + slot) % targets.length]);
        slot++;
        for (const t of order) {
          const { run: r, extra, cpuUs } = timed(t, mode, clients, o.seconds, true);
          const cell = cells.get(key(t.name, mode, clients)) ?? { tps: [], latencies: [], errors: [] };
          cells.set(key(t.name, mode, clients), cell);
          if ('error' in r) {
            cell.errors.push(r.error);
            const logged = t.problems().slice(-3);
            console.log(`  ${mode.padEnd(8)} c=${String(clients).padEnd(3)} ${t.name.padEnd(18)} FAILED: ${r.error}${logged.length ? `\n      its log: ${logged.join('\n      ')}` : ''}`);
            continue;
          }
          cell.tps.push(r.tps);
          cell.latencies.push(r.latenciesUs);
          if (r.steady) (cell.steady ??= []).push(r.steady);
          const s = summarise({ tps: [r.tps], latencies: [r.latenciesUs], errors: [] });
          const window = o.seconds + extra - r.connectMs / 1000;
          const connect = r.connectMs < 500 ? '' : `  (clients connected in ${(r.connectMs / 1000).toFixed(1)} s, not measured${window < 0.8 * o.seconds ? `; measured only ${window.toFixed(1)} s` : ''})`;
          console.log(`  ${mode.padEnd(8)} c=${String(clients).padEnd(3)} ${t.name.padEnd(18)} ${r.tps.toFixed(0).padStart(7)} tps  p50 ${s.p50.toFixed(3)} ms  p99 ${s.p99.toFixed(3)} ms${Number.isNaN(cpuUs) ? '' : `  cpu ${cpuUs.toFixed(1)} us/tx`}${steadyText(r.steady, t.pid !== undefined)}${connect}`);
        }
      }
    }
  }
  report(targets.map((t) => t.name), o, (t, m, c) => summarise(cells.get(key(t, m, c))));
  if (workersNote) console.log(workersNote);
  for (const t of targets) {
    const logged = t.problems();
    if (logged.length) console.log(`(${t.name} logged ${logged.length} warning/error lines, e.g.: ${logged.slice(0, 3).join(' | ')})`);
  }
}

/** The steady state's figures of a run: the machine's CPU per transaction (and the pooler's), how busy the CPUs were. */
function steadyText(st: Steady | undefined, pooler: boolean): string {
  if (!st) return '';
  return `  [steady: machine ${st.machineUs.toFixed(1)} us/tx${pooler ? `, pooler ${st.poolerUs.toFixed(1)} (kernel ${st.poolerSysUs.toFixed(1)})` : ''}, cpus ${(st.busy * 100).toFixed(0)}% busy]`;
}

/**
 * Where a pooler's 1.25x stands on this machine: with its CPUs saturated, the machine has cpus x 1e6 / tps µs per
 * transaction; what pgbench and PostgreSQL take of it behind a pooler (the machine's steady CPU per transaction less
 * the pooler's) is not the pooler's to save, so 1.25x pgBouncer's tps leaves the pooler what remains of
 * cpus x 1e6 / (1.25 x pgBouncer's tps) after them. The pooler's kernel time (its socket calls and the wakeups of
 * their peers, which loopback TCP charges to the sender) is a floor no user-space work lowers: with it alone, and the
 * CPUs fully busy, the tps could at most be cpus x 1e6 / (pgbench+PostgreSQL + that kernel time), the ceiling printed.
 */
function budget(o: PoolingOptions, at: (target: string, mode: string, clients: number) => Summary): void {
  const cpus = cpuCount();
  const lines: string[] = [];
  for (const mode of o.modes) {
    for (const clients of o.clients.filter((c) => c >= 50)) {
      const b = at('pgbouncer-1.24', mode, clients);
      const st = at('pg-steadytext', mode, clients);
      if (!b.steady || !st.steady) continue;
      const goalTotal = (cpus * 1e6) / (1.25 * b.tps);
      const others = st.steady.machineUs - st.steady.poolerUs;
      lines.push(
        `  ${mode.padEnd(8)} c=${String(clients).padEnd(3)} pgbench+PostgreSQL ${others.toFixed(1)} us/tx behind pg-steadytext (${(b.steady.machineUs - b.steady.poolerUs).toFixed(1)} behind pgBouncer); ` +
          `1.25x pgBouncer = ${goalTotal.toFixed(1)} us/tx on ${cpus} CPUs, leaving a pooler ${(goalTotal - others).toFixed(1)} us/tx; ` +
          `pg-steadytext spends ${st.steady.poolerUs.toFixed(1)} (kernel ${st.steady.poolerSysUs.toFixed(1)}), pgBouncer ${b.steady.poolerUs.toFixed(1)} (kernel ${b.steady.poolerSysUs.toFixed(1)}) ` +
          `(CPUs ${(st.steady.busy * 100).toFixed(0)}% / ${(b.steady.busy * 100).toFixed(0)}% busy); ` +
          `with no user-space time at all, at most ${(cpus * 1e6 / (others + st.steady.poolerSysUs) / b.tps).toFixed(2)}x pgBouncer`,
      );
    }
  }
  if (!lines.length) return;
  console.log('\nThe CPU budget at >=50 clients (steady state, means over rounds; see budget() in bench-pooling.ts):');
  for (const l of lines) console.log(l);
}

function report(names: string[], o: PoolingOptions, at: (target: string, mode: string, clients: number) => Summary): void {
  const num = (v: number, d: number, w: number) => (Number.isNaN(v) ? 'error' : v.toFixed(d)).padStart(w);
  const head = names.map((n) => `${n.padStart(20)} ${'p50'.padStart(7)} ${'p99'.padStart(7)}`).join(' |');
  console.log(`\nmode      clients |${head} | steadytext/pgbouncer: tps   p99`);
  const ratios: { mode: string; clients: number; tps: number; p99: number }[] = [];
  for (const mode of o.modes) {
    for (const clients of o.clients) {
      const cols = names.map((n) => {
        const s = at(n, mode, clients);
        return `${num(s.tps, 0, 16)} tps ${num(s.p50, 3, 7)} ${num(s.p99, 3, 7)}`;
      });
      const b = at('pgbouncer-1.24', mode, clients);
      const st = at('pg-steadytext', mode, clients);
      const r = { mode, clients, tps: st.tps / b.tps, p99: st.p99 / b.p99 };
      ratios.push(r);
      console.log(`${mode.padEnd(9)} ${String(clients).padStart(7)} |${cols.join(' |')} | ${num(r.tps, 2, 26)} ${num(r.p99, 2, 5)}`);
    }
  }
  console.log('(tps: mean over rounds; p50/p99 in ms: exact, over every transaction of every round)');
  const failed = names.flatMap((n) => o.modes.flatMap((m) => o.clients.flatMap((c) => at(n, m, c).errors.map((e) => `${n} -M ${m} -c ${c}: ${e}`))));
  for (const f of failed) console.log(`  failed: ${f}`);

  // A goal is met only where every measured cell meets it; a cell that failed counts against it.
  const verdict = (goal: string, cells: typeof ratios, value: (r: (typeof ratios)[0]) => number, ok: (v: number) => boolean, worst: (a: number, b: number) => boolean) => {
    if (!cells.length) return console.log(`${goal}: not measured (no such client counts)`);
    let w = cells[0];
    for (const c of cells) if (Number.isNaN(value(c)) || worst(value(c), value(w))) w = c;
    const met = cells.every((c) => ok(value(c)));
    const v = value(w);
    console.log(`${goal}: ${met ? 'MET' : 'NOT MET'} (worst: ${w.mode} c=${w.clients}, ${Number.isNaN(v) ? 'a run failed' : `${v.toFixed(2)}x`})`);
  };
  console.log('');
  verdict('>= pgBouncer TPS at <=10 clients', ratios.filter((r) => r.clients <= 10), (r) => r.tps, (v) => v >= 1, (a, b) => a < b);
  verdict('>=1.25x pgBouncer TPS at >=50 clients', ratios.filter((r) => r.clients >= 50), (r) => r.tps, (v) => v >= 1.25, (a, b) => a < b);
  verdict("p99 <= pgBouncer's", ratios, (r) => r.p99, (v) => v <= 1, (a, b) => a > b);
  budget(o, at);
}
