#!/usr/bin/env node
// pg-steadytext: the command line. `serve` runs the proxy; the rest are tools around it.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { parseFlags } from './config/flags.js';
import { createLogger } from './config/logger.js';
import { loadSettings, parseHostPort, redactUrl, SettingsError, settingsMarkdown, type Settings } from './config/settings.js';
import { createEngine, type EngineOptions } from './inference/engine.js';
import { engineOverIpc, serveEngineOverIpc } from './inference/engine-ipc.js';
import { runModelsCommand } from './inference/models-command.js';
import { DEFAULT_CACHE_DIR, ModelRegistry } from './inference/registry.js';
import { startCore } from './sql/core.js';
import { prepareDatabase, type DatabaseRegistry } from './sql/databases.js';
import { PoolerTls, startProxy } from './proxy/server.js';
import { createSteadytextInterceptor, type SteadytextOptions } from './sql/interceptor.js';
import { runPoolWorker, startWorkerPool, workerSetup, type WorkerPool, type WorkerSetup } from './proxy/workers.js';
import { serveInstalls, WorkerDatabaseRegistry } from './sql/worker-installs.js';
import { SQL_VERSION } from './sql/version.js';
import { objectsTag } from './sql/install.js';
import { loadPgBouncerConfig, PgBouncerConfigError, serviceUrlForDatabase, type PoolerConfig } from './config/pgbouncer.js';
import { createPooling, peerTarget, type PoolingEnv } from './proxy/pooling.js';
import type { Pooler } from './proxy/pool.js';
import { createConsole } from './proxy/console-host.js';
import type { ShutdownMode } from './proxy/console.js';
import { parseUpstreamUrl, sendCancel, socketPath } from './proxy/upstream.js';
import { CancelRegistry } from './proxy/cancel.js';
import { TakeoverSource, takeOver } from './proxy/takeover.js';
import { PoolLimits, WorkerSlots } from './proxy/pool-limits.js';
import { ConsoleHub, ConsoleRelay } from './proxy/console-relay.js';
import type { ProxyServer } from './proxy/server.js';
import { startMetricsServer, type MetricsServer, type MetricsSources } from './proxy/metrics.js';
import { meterCalls } from './sql/call-figures.js';
import { doctorCommand } from './sql/doctor.js';
import { startEmbedded, type Embedded } from './embedded/index.js';
import { join } from 'node:path';

// dist/cli.js when built, cli.ts when run from source.
const PKG = [new URL('../package.json', import.meta.url), new URL('./package.json', import.meta.url)].find((u) => existsSync(u))!;
const VERSION: string = JSON.parse(readFileSync(PKG, 'utf8')).version;

const HELP = `pg-steadytext ${VERSION}: a PostgreSQL proxy that answers steadytext_* SQL calls with local models

usage:
  pg-steadytext serve [options]                 run the proxy (clients connect to --listen)
  pg-steadytext serve --config pgbouncer.ini    run it as a pooler in pgBouncer's place, from pgBouncer's configuration
  pg-steadytext pgbouncer [-d] [-R] [-q] [-v] [-u USER] pgbouncer.ini   the same, invoked as the pgbouncer binary is
                                                (-R, or --reboot with serve --config: take the running one's sockets over)
  pg-steadytext install --database URL          install or upgrade the steadytext SQL objects in a database
  pg-steadytext doctor [--json] [options]       check the upstream, pgvector, dblink, the service role, the SQL objects,
                                                the models, the daemon endpoint and the callback transport (serve's options,
                                                --config pgbouncer.ini too); exit status 1 when something is broken
  pg-steadytext models list | pull [name|--all] | path [name]
  pg-steadytext config [--markdown]             print the effective settings (or the reference table)
  pg-steadytext version

options (each also from an environment variable or a JSON file given with --config FILE):
${settingsMarkdown().split('\n').slice(2).map((l) => '  ' + l.split('|').slice(1, 3).map((x) => x.trim().replaceAll('`', '')).join('  ')).join('\n')}
See README.md for what each one means.`;

export function engineOptions(s: Settings, logger?: Logger): EngineOptions {
  return {
    cacheDir: s.modelDir,
    autoDownload: s.download,
    generationModel: s.generationModel || undefined,
    embeddingModel: s.embeddingModel || undefined,
    embeddingDimension: s.embeddingDimensions,
    threads: s.threads || undefined,
    generationContexts: s.contexts || undefined,
    embeddingContexts: s.contexts || undefined,
    generationContextSize: s.generationContextSize,
    embeddingContextSize: s.embeddingContextSize,
    maxQueue: s.queueSize,
    timeoutMs: s.requestTimeoutMs,
    cacheBytes: s.cacheBytes,
    eager: s.preloadModels,
    logger,
  };
}

/**
 * Under a pgbouncer.ini, the service connection to a database goes where the ini sends its clients: its entry's
 * host, port and dbname, with the service URL's credentials and options. (A RELOAD that moves a database is
 * seen by the service connections of a later start.)
 */
function serviceUrls(s: Settings, ini: PoolerConfig | undefined): ((database: string) => string) | undefined {
  if (!ini) return undefined;
  return (database) => serviceUrlForDatabase(s.serviceUrl, ini, database);
}

/**
 * pgBouncer's RELOAD and SIGHUP, in a process that pools: the new ini (throws on a bad one: the console reports
 * it), the service connections of moved databases, then TLS set up again (a failure there keeps the old TLS).
 */
function reloadPooler(s: Settings, file: string, pooling: PoolingEnv, tls: PoolerTls, databases: DatabaseRegistry): void {
  const next = loadPgBouncerConfig(file);
  pooling.pooler.reload(next);
  databases.retarget(serviceUrls(s, next)!);
  tls.setup('TLS configuration could not be reloaded, keeping old configuration');
}

/**
 * For the startup banner: the default models' files, present or missing, and the one command that fetches the
 * missing ones (a local path that is not there names its file: no command can fetch it).
 */
function modelsBanner(s: Settings): { models: Record<string, string>; getModels?: string } {
  const reg = new ModelRegistry(engineOptions(s));
  const models: Record<string, string> = {};
  let pull = false;
  for (const spec of [reg.get('generation'), reg.get('embedding')]) {
    const path = reg.localPath(spec);
    const present = existsSync(path);
    pull ||= !present && reg.remoteUrl(spec) !== undefined;
    models[`${spec.role}:${spec.name}`] = `${present ? 'present' : 'missing'}: ${path}`;
  }
  if (!pull) return { models };
  return { models, getModels: `pg-steadytext models pull${reg.cacheDir === DEFAULT_CACHE_DIR ? '' : ` --model-dir ${reg.cacheDir}`}` };
}

/** What one process owns whatever the worker count: the models, the per-database registry, the daemon endpoint. */
async function startServing(s: Settings, log: Logger, ini?: PoolerConfig, reboot = false) {
  // Counted per database and model for SHOW STEADYTEXT and the metrics endpoint.
  const calls = meterCalls(createEngine({ ...engineOptions(s, log), fetchMissing: true }));
  const engine = calls.engine;
  const daemonListen = s.daemonListen === 'off' ? undefined : parseHostPort(s.daemonListen, 'daemon-listen');
  const { databases, daemon, bindDaemon } = await startCore({
    engine, serviceUrl: s.serviceUrl, schema: s.schema, autoInstall: s.autoInstall, daemonListen, logger: log, serviceUrlFor: serviceUrls(s, ini),
    // -R: the running process holds the daemon port until it exits (after the takeover).
    deferDaemon: reboot,
  });
  void databases.checkServiceRole(); // warns when it is a superuser (in the background: the database may be slow or down)
  return { engine, databases, daemon, bindDaemon, calls };
}

/** The Prometheus endpoint when metrics-listen is set (a port it cannot bind stops the start). */
async function startMetrics(s: Settings, log: Logger, sources: MetricsSources): Promise<MetricsServer | undefined> {
  if (s.metricsListen === 'off') return undefined;
  const metrics = await startMetricsServer({ listen: parseHostPort(s.metricsListen, 'metrics-listen'), sources, logger: log });
  log.info({ metrics: `http://${metrics.address.host}:${metrics.address.port}/metrics` }, 'metrics endpoint listening');
  return metrics;
}

/** What serve() does besides serving, for the embedded database: its line in the banner, and its stop. */
interface Alongside {
  /** Waited for once the engine exists (whose models load meanwhile), before anything connects to the database. */
  started: Promise<unknown>;
  banner(listen: { host: string; port: number }): Record<string, unknown>;
  /** Databases to prepare (install the SQL objects) before clients are let in. */
  databases: string[];
  stop(): Promise<void>;
}

/**
 * No upstream: the embedded database (embedded/) in its place, with the pooler in front. PGlite is one session,
 * so the clients take turns on it a transaction at a time (transaction pooling, one server connection), each
 * keeping its own settings and prepared statements; PGlite has one database, postgres.
 */
async function serveEmbedded(s: Settings, log: Logger): Promise<void> {
  if (s.workers > 1) throw new SettingsError('--workers needs --upstream: the embedded database is one session, served by one process');
  if (!['127.0.0.1', '::1', 'localhost'].includes(s.listen.host)) {
    log.warn({ listen: `${s.listen.host}:${s.listen.port}` }, 'the embedded database asks no password: whoever reaches this address is its superuser; listen on a loopback address unless that is what you want');
  }
  // A new database starts with the steadytext objects installed (the template made with them) when they would be
  // installed as they are there: automatically, in schema public. The install at start then finds nothing to do.
  const objects = s.autoInstall && s.schema === 'public' ? await objectsTag().catch(() => undefined) : undefined;
  const db = startEmbedded({
    objects,
    dataDir: s.memory ? null : s.dataDir,
    logger: log,
    onCrash: () => {
      log.flush?.();
      process.exit(1);
    },
  });
  let started: Embedded | undefined;
  const ready = db.ready.then((d) => (started = d));
  ready.catch(() => {}); // awaited in serve(), after the engine is created: a failure is reported there
  const file = join(db.socketDir, 'pgbouncer.ini');
  writeFileSync(file, [
    '[databases]',
    `postgres = host=${db.socketDir} port=5432 user=postgres dbname=postgres`,
    '[pgbouncer]',
    `listen_addr = ${s.listen.host}`,
    `listen_port = ${s.listen.port}`,
    'unix_socket_dir =',
    // Any user name and password: PGlite has one superuser, whoever connects (see the README's warning).
    'auth_type = any',
    'pool_mode = transaction',
    'default_pool_size = 1',
    '',
  ].join('\n'));
  const ini = loadPgBouncerConfig(file);
  // The daemon endpoint is for dblink, which PGlite does not have: calls it cannot see are answered in-band.
  const settings: Settings = { ...s, upstream: db.url, serviceUrl: db.url, daemonListen: 'off' };
  await serve(settings, log, ini, false, {
    started: ready,
    banner: (listen) => ({
      upstream: `embedded: ${started!.version.replace(/ on .*/, '')}, data ${started!.dataDir ?? 'in memory (gone at stop)'}`,
      connect: `psql -h ${listen.host} -p ${listen.port} -U postgres postgres`,
    }),
    databases: ['postgres'],
    stop: () => db.ready.then((d) => d.stop()),
  });
}

async function serve(s: Settings, log: Logger, ini?: PoolerConfig, reboot = false, alongside?: Alongside): Promise<void> {
  const setup = workerSetup();
  if (setup && ini) return servePoolingWorker(s, log.child({ worker: setup.index }), setup, ini);
  if (setup) return serveAsWorker(s, log.child({ worker: setup.index }), setup);
  // pgBouncer's so_reuseport runs processes side by side, each with limits of its own; here one command runs
  // the workers, with one set of limits. Node 20 cannot set SO_REUSEPORT for other processes to join.
  if (reboot && s.workers > 1) throw new Error('online restart (-R) of a process with workers is not supported: restart it instead');
  if (s.workers > 1) return serveWithWorkers(s, log, ini);
  // so_reuseport = 1 with one process: pgBouncer's way, peers each with limits of their own (below).
  const serving = await startServing(s, log, ini, reboot);
  if (alongside) {
    // The default models load while the embedded database starts: both take seconds, and the first call needs them.
    void serving.engine.load().catch((err: unknown) => log.warn({ err }, 'models not loaded at start; the first call loads them'));
    await alongside.started;
  }
  // Prepared before any client: on a one-session database, a client's open block would hold the install up.
  for (const name of alongside?.databases ?? []) await serving.databases.get(name).ready();
  const { engine, databases, calls } = serving;
  let daemon = serving.daemon;
  const interceptor = await steadytextInterceptor(s, log, engine, databases, databases.opts.daemon);
  const tls = s.tlsCert ? { cert: readFileSync(s.tlsCert), key: readFileSync(s.tlsKey) } : undefined;
  // As pgBouncer's RELOAD and SIGHUP (reloadPooler).
  const reloadIni = () => reloadPooler(s, ini!.file, pooling!, poolerTls!, databases);
  // pgBouncer's SUSPEND and SHOW FDS on this process's sockets, for a later -R (takeover.ts).
  const takeoverSource = ini ? new TakeoverSource({ proxy: () => proxy, pooling: () => pooling!, logger: log }) : undefined;
  const consoleHost = ini
    ? createConsole({
        pooler: (): Pooler => pooling!.pooler,
        sessions: () => proxy.sessions(), // called only once the proxy listens
        configFile: ini.file,
        reload: reloadIni, // throws on a bad ini: the console reports it
        shutdown: (mode) => void drain(mode),
        logger: log,
        steadytext: () => calls.rows(),
        takeover: takeoverSource,
      })
    : undefined;
  const defaultTarget = parseUpstreamUrl(s.upstream);
  const pooling: PoolingEnv | undefined = ini
    ? createPooling({
        config: ini,
        defaultTarget,
        logger: log,
        console: consoleHost,
        handoff: s.poolHandoff,
        // The rules of the configuration in use: RELOAD brings new ones.
        get hba() {
          return pooling!.pooler.config.hba ?? undefined;
        },
      })
    : undefined;
  consoleHost?.start();
  // pgBouncer's client_tls_* and server_tls_*; a setup that fails at start stops it ("TLS setup failed").
  const poolerTls = pooling ? new PoolerTls(pooling, defaultTarget, log) : undefined;
  poolerTls?.setup();
  const st = ini?.settings;
  // -R: the running process's sockets, taken over as late as can be (it is suspended from here on).
  const taken =
    reboot && st
      ? await takeOver({ unixSocketDir: st.unixSocketDir, port: st.listenPort, suspendTimeout: st.suspendTimeout, logger: log, note: (text) => pooling!.pooler.pgbLog.line('LOG', text) })
      : null;
  const peering = st && st.peerId > 0 ? peeringOf(st.peerId, pooling!, s, log) : undefined;
  const proxy = await startProxy({
    listen: st ? { host: st.listenAddr === '*' ? '0.0.0.0' : st.listenAddr || '127.0.0.1', port: st.listenPort } : s.listen,
    unixSocketDir: st?.unixSocketDir,
    upstream: s.upstream, tls, maxMessageBytes: s.maxMessageBytes, shutdownGraceMs: s.shutdownGraceMs, nativeRelay: s.nativeRelay, ownsLoop: true,
    connectTimeoutMs: s.connectTimeoutMs, logger: log, interceptor, pooling, poolerTls, listenFds: taken?.listenFds,
    reusePort: st?.soReuseport === true && !taken,
    cancels: peering ? new CancelRegistry(undefined, peering) : undefined,
  });
  if (taken) {
    taken.adopt(proxy, pooling!);
    // Then the old process goes (SHUTDOWN), and what it held besides (its pidfile, other ports) is free.
    await taken.finish(st!.pidfile);
  }
  calls.sessionDatabase = (id) => proxy.sessions().find((x) => x.id === id)?.context?.database;
  const metrics = await startMetrics(s, log, {
    proxy: () => proxy.stats(),
    pooler: consoleHost && (() => consoleHost.figures()),
    steadytext: () => calls.figures(),
  });
  if (ini) {
    for (const w of ini.warnings) log.warn(w);
    onPoolerSignals(ini.file, log, reloadIni, consoleHost!, () => void stop('SIGQUIT', 0), alongside !== undefined);
    if (st!.pidfile) writeFileSync(st!.pidfile, `${process.pid}\n`);
  }
  log.info({ listen: proxy.address, upstream: redactUrl(s.upstream), daemon: databases.opts.daemon, ...modelsBanner(s), sqlVersion: SQL_VERSION, version: VERSION, ...alongside?.banner(proxy.address) }, 'pg-steadytext ready');
  // -R: the daemon port is free once the process taken over has exited.
  if (serving.bindDaemon) void serving.bindDaemon().then((d) => (daemon = d));

  let stopping = false;
  async function stop(signal: string, graceMs = ini ? FOREVER_MS : s.shutdownGraceMs) {
    if (stopping) return;
    stopping = true;
    log.info({ signal, graceMs }, 'shutting down: no new connections, running queries may finish');
    await proxy.close(graceMs);
    await metrics?.close();
    consoleHost?.close();
    pooling?.pooler.close();
    if (st?.pidfile) rmSync(st.pidfile, { force: true });
    await daemon?.close();
    await databases.close();
    await engine.close();
    await alongside?.stop();
    log.info('stopped');
    log.flush?.();
    process.exit(0);
  }
  if (!ini || alongside) {
    process.on('SIGTERM', () => void stop('SIGTERM', s.shutdownGraceMs));
    process.on('SIGINT', () => void stop('SIGINT', s.shutdownGraceMs));
  }

  /**
   * pgBouncer's shutdown modes: no new connections, then exit once no server connection is lent out
   * (wait_for_servers; the pooler refuses clients that ask for one) or once every client has left
   * (wait_for_clients), checked as often as its janitor does; immediate: now.
   */
  async function drain(mode: ShutdownMode): Promise<void> {
    if (mode === 'immediate') return stop('SHUTDOWN', 0);
    proxy.stopAccepting();
    const done = mode === 'wait_for_servers' ? () => pooling!.pooler.serversOut === 0 : () => proxy.sessions().length === 0;
    while (!done() && !stopping) await new Promise((resolve) => setTimeout(resolve, 250));
    pooling!.pooler.pgbLog.line('LOG', mode === 'wait_for_servers' ? 'server connections dropped, exiting' : 'client connections dropped, exiting');
    await stop(`SHUTDOWN ${mode}`, 0);
  }
}

/**
 * pgBouncer's peering: this process's keys carry its peer_id; a CancelRequest for a key of another peer that
 * shares the port (so_reuseport) goes to that peer's [peers] address ([peers] as last RELOADed).
 */
function peeringOf(peerId: number, pooling: PoolingEnv, s: Settings, log: Logger) {
  return {
    peerId,
    forward: (peer: number, pid: number, secret: Buffer) => {
      const p = pooling.pooler.config.peers.get(peer);
      if (!p) return false;
      void sendCancel(peerTarget(p), { pid, secret }, s.connectTimeoutMs, log);
      return true;
    },
  };
}

/**
 * pgBouncer's signals, started from an ini: HUP reloads it, USR1 pauses, USR2 resumes, QUIT shuts down at once,
 * INT once servers are released, TERM once clients have left. The embedded database is not a pgBouncer
 * deployment (`embedded`): INT and TERM stop as `serve` does.
 */
function onPoolerSignals(file: string, log: Logger, reload: () => void, consoleHost: { signal(sig: 'SIGUSR1' | 'SIGUSR2' | 'SIGINT' | 'SIGTERM'): void }, quit: () => void, embedded: boolean): void {
  process.on('SIGHUP', () => {
    try {
      reload();
      log.info({ config: file }, 'configuration reloaded');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'configuration not reloaded');
    }
  });
  for (const sig of ['SIGUSR1', 'SIGUSR2', 'SIGINT', 'SIGTERM'] as const) if (!embedded || sig.startsWith('SIGUSR')) process.on(sig, () => consoleHost.signal(sig));
  process.on('SIGQUIT', quit);
}

/** The longest grace a timer takes (Node turns Infinity into 1 ms): "until they are done". */
const FOREVER_MS = 2 ** 31 - 1;

/**
 * The primary of --workers N: models, daemon endpoint and installs here; client sessions in the workers. Under a
 * pgbouncer.ini also the pool limits across the workers (pool-limits.ts), their consoles' meeting point
 * (console-relay.ts), pgBouncer's signals and the pidfile.
 */
async function serveWithWorkers(s: Settings, log: Logger, ini?: PoolerConfig): Promise<void> {
  const { engine, databases, daemon, calls } = await startServing(s, log, ini);
  // The installs the workers ask of this process follow a reloaded ini too (SIGHUP here, RELOAD in any worker's console).
  const retarget = () => {
    try {
      databases.retarget(serviceUrls(s, loadPgBouncerConfig(ini!.file))!);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'configuration not reloaded');
    }
  };
  const hub = ini ? new ConsoleHub({ logger: log, onShutdown: () => void finish('SHUTDOWN'), onReload: retarget, steadytext: () => calls.rows() }) : undefined;
  let group: WorkerPool | undefined = undefined;
  // The sessions are the workers': their figures are gathered and added up at each scrape.
  const metrics = await startMetrics(s, log, { proxy: () => group?.stats(), pooler: hub && (() => hub.figures()), steadytext: () => calls.figures() });
  const release = async () => {
    await metrics?.close();
    await daemon?.close();
    await databases.close();
    await engine.close();
  };
  const limits = ini ? new PoolLimits(log) : undefined;
  // The workers' Unix socket is bound here, for all of them: a stale one of an earlier run goes first.
  const unixDir = ini?.settings.unixSocketDir;
  if (unixDir && ini.settings.listenPort > 0) rmSync(socketPath(unixDir, ini.settings.listenPort), { force: true });
  const pool = await startWorkerPool({
    workers: s.workers,
    logger: log,
    data: { daemon: daemon?.address ?? null },
    // Each worker's own grace, plus time to start it and to release what it holds.
    stopTimeoutMs: s.shutdownGraceMs + 10_000,
    attach(channel, index) {
      const offEngine = serveEngineOverIpc(engine, channel, { callerPrefix: `worker${index}/` });
      const offInstalls = serveInstalls(databases, channel);
      const offLimits = limits?.attach(channel, index);
      const offConsole = hub?.attach(channel, index);
      return () => { offEngine(); offInstalls(); offLimits?.(); offConsole?.(); };
    },
  }).catch(async (err) => { await release(); throw err; });
  group = pool;
  log.info({ listen: pool.address, workers: s.workers, upstream: redactUrl(s.upstream), daemon: daemon?.address, ...modelsBanner(s), sqlVersion: SQL_VERSION, version: VERSION }, 'pg-steadytext ready');

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal, graceMs: s.shutdownGraceMs, workers: s.workers }, 'shutting down: no new connections, running queries may finish');
    // The workers first: their running queries may still need the engine and the daemon.
    await pool.close();
    await release();
    log.info('stopped');
    log.flush?.();
    process.exit(0);
  };
  if (!ini || !hub) {
    process.on('SIGTERM', () => void stop('SIGTERM'));
    process.on('SIGINT', () => void stop('SIGINT'));
    return;
  }
  const pidfile = ini.settings.pidfile;
  for (const w of ini.warnings) log.warn(w);
  /** The workers stop on their own (pgBouncer's shutdown modes): none is restarted, and the primary follows the last. */
  async function finish(why: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    log.info({ why, workers: s.workers }, 'shutting down: the workers stop as pgBouncer would');
    await pool.finishing();
    limits?.close();
    if (pidfile) rmSync(pidfile, { force: true });
    await release();
    log.info('stopped');
    log.flush?.();
    process.exit(0);
  }
  // pgBouncer's signals, passed to every worker's console (the workers ignore those sent to them directly).
  process.on('SIGHUP', () => {
    retarget();
    void hub.command('reload').then((outcomes) => log.info({ config: ini.file, outcomes: outcomes.filter(Boolean) }, 'configuration reloaded by the workers'));
  });
  for (const sig of ['SIGUSR1', 'SIGUSR2'] as const) process.on(sig, () => hub.signal(sig));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      hub.signal(sig);
      void finish(sig);
    });
  }
  process.on('SIGQUIT', () => {
    void hub.command('shutdown', ['immediate']);
    void finish('SIGQUIT');
  });
  if (pidfile) writeFileSync(pidfile, `${process.pid}\n`);
}

/**
 * One worker of --workers N under a pgbouncer.ini: the pooler for the clients this worker accepts. Its server
 * connections and clients count against limits the primary keeps for all workers (WorkerSlots); a CancelRequest
 * reaches the worker of its key; its console's commands reach every worker and its SHOWs count them all.
 */
async function servePoolingWorker(s: Settings, log: Logger, setup: WorkerSetup, ini: PoolerConfig): Promise<void> {
  const { engine, databases, interceptor } = await workerSteadytext(s, log, setup, ini);
  // The primary passes pgBouncer's signals on (serveWithWorkers); Node's defaults would end or debug this process.
  for (const sig of ['SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGQUIT'] as const) process.on(sig, () => {});
  let proxy: ProxyServer | undefined;
  const relay = new ConsoleRelay(setup.channel, setup.index, setup.workers, log);
  const reloadIni = () => reloadPooler(s, ini.file, pooling, poolerTls, databases);
  const consoleHost = createConsole({
    pooler: (): Pooler => pooling.pooler,
    sessions: () => proxy?.sessions() ?? [],
    configFile: ini.file,
    reload: reloadIni,
    shutdown: (mode) => void drain(mode),
    logger: log,
    relay: relay.wrap,
    admission: { admitConsole: (user, admin) => slots.admitConsole(user, admin), leaveConsole: (user) => slots.leaveConsole(user) },
  });
  relay.onSignal = (sig) => consoleHost.signal(sig);
  const defaultTarget = parseUpstreamUrl(s.upstream);
  const pooling: PoolingEnv = createPooling({
    config: ini,
    defaultTarget,
    logger: log,
    console: consoleHost,
    get hba() {
      return pooling.pooler.config.hba ?? undefined;
    },
    // Clients come once the proxy listens, after `slots` is set.
    admission: { ticket: (database, user) => slots.ticket(database, user) },
  });
  const slots = new WorkerSlots(pooling.pooler, setup.channel);
  pooling.pooler.slots = slots;
  consoleHost.start();
  const poolerTls = new PoolerTls(pooling, defaultTarget, log);
  poolerTls.setup();
  const st = ini.settings;
  const cleanup = async () => {
    consoleHost.close();
    slots.close();
    pooling.pooler.close();
    await databases.close();
    await engine.close();
  };
  let stopping = false;
  const stop = async (why: string, graceMs: number) => {
    if (stopping) return;
    stopping = true;
    log.info({ why, graceMs }, 'worker stopping');
    await proxy?.close(graceMs);
    await cleanup();
    log.flush?.();
    process.exit(0);
  };
  // pgBouncer's shutdown modes, as serve() carries them out in one process.
  async function drain(mode: ShutdownMode): Promise<void> {
    if (mode === 'immediate' || !proxy) return stop('SHUTDOWN', 0);
    proxy.stopAccepting();
    const done = mode === 'wait_for_servers' ? () => pooling.pooler.serversOut === 0 : () => proxy!.sessions().length === 0;
    while (!done() && !stopping) await new Promise((resolve) => setTimeout(resolve, 250));
    pooling.pooler.pgbLog.line('LOG', mode === 'wait_for_servers' ? 'server connections dropped, exiting' : 'client connections dropped, exiting');
    await stop(`SHUTDOWN ${mode}`, 0);
  }
  await runPoolWorker(setup, {
    logger: log,
    signals: 'primary',
    // Clients only once this worker has the group's state (a restarted one: as the console left the others).
    start: async (cancels) => (await relay.restored, proxy = await startProxy({
      listen: { host: st.listenAddr === '*' ? '0.0.0.0' : st.listenAddr || '127.0.0.1', port: st.listenPort },
      unixSocketDir: st.unixSocketDir,
      sharedUnixSocket: true,
      upstream: s.upstream, maxMessageBytes: s.maxMessageBytes, shutdownGraceMs: s.shutdownGraceMs, nativeRelay: s.nativeRelay, ownsLoop: true,
      connectTimeoutMs: s.connectTimeoutMs, logger: log, interceptor, pooling, poolerTls, cancels,
    })),
    cleanup,
  });
}

/** A worker's steadytext layer: the primary's engine and installs over IPC, and the interceptor over them. */
async function workerSteadytext(s: Settings, log: Logger, setup: WorkerSetup, ini?: PoolerConfig) {
  const engine = engineOverIpc(setup.channel);
  await engine.ready;
  const daemon = (setup.data?.daemon ?? undefined) as { host: string; port: number } | undefined;
  const databases = new WorkerDatabaseRegistry(
    { serviceUrl: s.serviceUrl, schema: s.schema, autoInstall: s.autoInstall, daemon, engine, logger: log, serviceUrlFor: serviceUrls(s, ini) },
    setup.channel,
  );
  const interceptor = await steadytextInterceptor(s, log, engine, databases, daemon);
  return { engine, databases, interceptor };
}

/** The steadytext layer's interceptor as the settings make it, for one process and for each worker alike. */
async function steadytextInterceptor(s: Settings, log: Logger, engine: SteadytextOptions['engine'], databases: SteadytextOptions['databases'], daemon: SteadytextOptions['daemon']) {
  const interceptor = createSteadytextInterceptor({ engine, databases, daemon, logger: log, prefetchMaxValues: s.prefetchMaxValues, upstreamPooled: s.upstreamPooled });
  await interceptor.ready;
  return interceptor;
}

/** One worker of --workers N: a proxy whose engine and installs are the primary's, over IPC. */
async function serveAsWorker(s: Settings, log: Logger, setup: WorkerSetup): Promise<void> {
  const { engine, databases, interceptor } = await workerSteadytext(s, log, setup);
  const tls = s.tlsCert ? { cert: readFileSync(s.tlsCert), key: readFileSync(s.tlsKey) } : undefined;
  await runPoolWorker(setup, {
    logger: log,
    start: (cancels) => startProxy({
      listen: s.listen, upstream: s.upstream, tls, maxMessageBytes: s.maxMessageBytes, shutdownGraceMs: s.shutdownGraceMs, nativeRelay: s.nativeRelay, ownsLoop: true,
      connectTimeoutMs: s.connectTimeoutMs, logger: log, interceptor, cancels,
    }),
    async cleanup() {
      await databases.close();
      await engine.close();
    },
  });
}

function isIni(file: string): boolean {
  return file.endsWith('.ini') || !readFileSync(file, 'utf8').trimStart().startsWith('{');
}

/** `pgbouncer [-d] [-q] [-v] [-u USER] [-R] CONFIG.ini`: pgBouncer's own invocation, for its units and scripts. */
async function runAsPgBouncer(args: string[]): Promise<number> {
  let file: string | undefined;
  let verbose = 0;
  let quiet = false;
  let reboot = false;
  let daemon = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '-v' || a === '--verbose') verbose++;
    else if (a === '-q' || a === '--quiet') quiet = true;
    else if (a === '-R' || a === '--reboot') reboot = true;
    else if (a === '-d' || a === '--daemon') daemon = true;
    else if (a === '-u' || a === '--user') i++;
    else if (a === '-V' || a === '--version') {
      // The first line is what SHOW VERSION says (tools compare the two).
      process.stdout.write(`PgBouncer 1.24.1\npg-steadytext ${VERSION} (SQL objects ${SQL_VERSION})\n`);
      return 0;
    } else if (a === '-h' || a === '--help') {
      process.stdout.write('usage: pg-steadytext pgbouncer [-d] [-R] [-q] [-v] [-u USER] CONFIG.ini\n');
      return 0;
    } else if (a.startsWith('-')) {
      process.stderr.write(`pg-steadytext pgbouncer: unknown option ${a}\n`);
      return 1;
    } else file = a;
  }
  if (!file) {
    process.stderr.write('pg-steadytext pgbouncer: a configuration file is needed (usage: pg-steadytext pgbouncer [-d] [-q] [-v] [-u USER] CONFIG.ini)\n');
    return 1;
  }
  const ini = loadPgBouncerConfig(file);
  if (daemon && process.env[DAEMONIZED] !== '1') return daemonize(args.filter((a) => a !== '-d' && a !== '--daemon'));
  const level = quiet ? 'warn' : verbose > 1 ? 'trace' : verbose === 1 ? 'debug' : undefined;
  const s = loadSettings({ flags: { ...ini.steadytext, ...(level ? { logLevel: level } : {}) }, pooler: true });
  await serve(s, createLogger(s), ini, reboot);
  if (process.env[DAEMONIZED] === '1' && process.send) {
    // Ready: the invoking process may return (daemonize).
    process.send('ready');
    process.disconnect();
  }
  return -1;
}

const DAEMONIZED = 'PGSTEADYTEXT_DAEMONIZED';

/**
 * `-d`, as pgBouncer: the server goes on in a detached process of its own (its pidfile names that one; it
 * writes only its logfile), and this one returns once it serves, or fails if it stops before.
 */
function daemonize(args: string[]): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1], 'pgbouncer', ...args], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    env: { ...process.env, [DAEMONIZED]: '1' },
  });
  return new Promise((resolve) => {
    child.once('message', () => {
      child.disconnect();
      child.unref();
      resolve(0);
    });
    child.once('exit', (code, signal) => {
      process.stderr.write(`pg-steadytext pgbouncer -d: the server stopped before it was ready (${signal ?? `exit code ${code}`}); run it without -d to see why\n`);
      resolve(1);
    });
  });
}

async function main(argv: string[]): Promise<number> {
  // `npx pg-steadytext` alone, or with serve's options only, serves (with no upstream: the embedded database).
  const bare = argv.length === 0 || (argv[0].startsWith('--') && !['--help', '--version'].includes(argv[0]));
  const [cmd, ...rest] = bare ? ['serve', ...argv] : argv;
  if (cmd === 'help' || cmd === '--help' || cmd === '-h') { process.stdout.write(HELP + '\n'); return 0; }
  if (cmd === 'version' || cmd === '--version') { process.stdout.write(`pg-steadytext ${VERSION} (SQL objects ${SQL_VERSION})\n`); return 0; }
  if (cmd === 'models') {
    const [sub, ...args] = rest;
    const parsed = parseFlags(args, ['all']);
    const s = loadSettings({ flags: parsed.flags, configFile: parsed.configFile });
    return runModelsCommand([sub ?? 'list', ...parsed.positionals, ...(parsed.extra.all ? ['--all'] : [])], engineOptions(s));
  }
  if (cmd === 'pgbouncer') return runAsPgBouncer(rest);
  if (cmd === 'doctor') {
    // serve's settings from the same sources, a pgbouncer.ini's [steadytext] section included.
    const p = parseFlags(rest, ['json']);
    const ini = p.configFile && isIni(p.configFile) ? loadPgBouncerConfig(p.configFile) : undefined;
    const s = loadSettings(ini ? { flags: { ...ini.steadytext, ...p.flags }, pooler: true } : { flags: p.flags, configFile: p.configFile });
    return doctorCommand({ settings: s, ini, engine: engineOptions(s), json: p.extra.json === true });
  }
  const parsed = parseFlags(rest.filter((a) => a !== '-R'), ['database', 'markdown', 'reboot']);
  if (cmd === 'serve' && parsed.configFile && isIni(parsed.configFile)) {
    const ini = loadPgBouncerConfig(parsed.configFile);
    const s = loadSettings({ flags: { ...ini.steadytext, ...parsed.flags }, pooler: true });
    await serve(s, createLogger(s), ini, rest.includes('-R') || parsed.extra.reboot === true);
    return -1;
  }
  if (rest.includes('-R') || parsed.extra.reboot) throw new SettingsError('--reboot takes the sockets of a pooler: serve --config pgbouncer.ini --reboot');
  const s = loadSettings({ flags: parsed.flags, configFile: parsed.configFile });
  switch (cmd) {
    case 'serve': {
      if (!s.upstream) await serveEmbedded(s, createLogger(s));
      else await serve(s, createLogger(s));
      return -1; // keeps running
    }
    case 'install': {
      const url = typeof parsed.extra.database === 'string' ? parsed.extra.database : s.serviceUrl;
      if (!url) throw new SettingsError('install needs a database: --database URL (or --upstream / --service-url); the embedded one installs itself at start');
      const daemon = s.daemonListen === 'off' ? undefined : parseHostPort(s.daemonListen, 'daemon-listen');
      const r = await prepareDatabase(url, { daemonHost: daemon?.host, daemonPort: daemon?.port, schema: s.schema });
      process.stdout.write(`steadytext SQL objects ${r.version} in ${redactUrl(url)}, schema ${r.schema}${r.migrated.length ? ` (applied ${r.migrated.join(', ')})` : ' (already up to date)'}${r.dblink ? '' : '; dblink is not installed: calls inside PL/pgSQL functions, triggers and views need it (CREATE EXTENSION dblink)'}\n`);
      if (r.superuser) process.stderr.write(`warning: role "${r.role}" is a superuser; the proxy should use a role of its own that is not (README: "Running with a non-superuser service role")\n`);
      return 0;
    }
    case 'config': {
      if (parsed.extra.markdown) process.stdout.write(settingsMarkdown() + '\n');
      else process.stdout.write(JSON.stringify({ ...s, upstream: redactUrl(s.upstream), serviceUrl: redactUrl(s.serviceUrl) }, null, 2) + '\n');
      return 0;
    }
  }
  process.stderr.write(`unknown command "${cmd}"\n\n${HELP}\n`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => { if (code >= 0) process.exitCode = code; },
  (err: unknown) => {
    const config = err instanceof SettingsError || err instanceof PgBouncerConfigError;
    const msg = config ? `configuration error: ${err.message}` : `pg-steadytext: ${(err as Error)?.message ?? err}`;
    process.stderr.write(msg + '\n');
    process.exit(config ? 2 : 1);
  },
);
