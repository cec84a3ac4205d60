// The embedded default: with no upstream configured, PGlite runs in a worker thread of this process (its own
// event loop and core, so a long statement never stalls the proxy) and the proxy pools its clients onto it.
// The data directory is locked for the life of the process: two PGlite instances on one directory would
// corrupt it.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { WorkerInput, WorkerReport } from './pglite-worker.js';

export interface EmbeddedOptions {
  /** Where the data lives; null: in memory, gone at exit. */
  dataDir: string | null;
  /** Progress and failures. */
  logger: { info(o: object, msg: string): void; error(o: object, msg: string): void };
  /** Called if the database stops on its own (a crash of the worker): the process cannot go on without it. */
  onCrash(message: string): void;
  /**
   * What the caller installs in a new database (cli.ts: the steadytext objects' version and digest): a new one
   * starts from the template made with exactly these installed, when there is one, else from the bare template.
   */
  objects?: string;
}

export interface Embedded {
  /** The directory of its Unix socket (libpq's host=), port 5432. */
  socketDir: string;
  /** A postgres:// URL that reaches it (user postgres, database postgres). */
  url: string;
  version: string;
  dataDir: string | null;
  stop(): Promise<void>;
}

const LOCK = 'pg-steadytext.pid';
const STOP_MS = 5000;

export class EmbeddedError extends Error {}

/** The template's file name (scripts/pglite-template.mjs writes it): the PGlite version, and what it holds besides. */
export function templateName(pgliteVersion: string, objects?: string): string {
  return `pglite-template-${pgliteVersion}${objects ? `-${objects}` : ''}.tar.gz`;
}

/**
 * The template `npm install` made for this PGlite version (scripts/pglite-template.mjs), at the package's root
 * (beside dist/ when built, beside embedded/ in the sources): the one with `objects` installed when there is
 * one, else the bare one; null: a first start runs initdb.
 */
function template(here: string, objects: string | undefined): string | null {
  try {
    const entry = fileURLToPath(import.meta.resolve('@electric-sql/pglite'));
    const version = (JSON.parse(readFileSync(join(dirname(entry), '..', 'package.json'), 'utf8')) as { version: string }).version;
    for (const name of objects ? [templateName(version, objects), templateName(version)] : [templateName(version)]) {
      for (const root of [join(here, '..', '..'), join(here, '..', '..', '..')]) {
        const file = join(root, name);
        if (existsSync(file)) return file;
      }
    }
  } catch {
    // no PGlite to ask: the worker reports that
  }
  return null;
}

/** The live process (another than this one) that serves the data directory now, per its lock file; null: none. */
export function servedBy(dataDir: string): number | null {
  let pid: number;
  try {
    pid = Number(readFileSync(join(dataDir, LOCK), 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return null;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM' ? pid : null;
  }
}

/** Takes the data directory for this process (a lock file of a process that is gone is taken over). */
function lock(dataDir: string): () => void {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const pid = servedBy(dataDir);
  if (pid !== null) {
    throw new EmbeddedError(`the embedded database in ${dataDir} is in use by process ${pid}: stop that one, or give this one another --data-dir (or --memory)`);
  }
  const file = join(dataDir, LOCK);
  writeFileSync(file, `${process.pid}\n`);
  return () => rmSync(file, { force: true });
}

/** Where the database will answer, known at once; `ready` once it does. */
export interface Starting {
  socketDir: string;
  url: string;
  ready: Promise<Embedded>;
}

/**
 * Takes the data directory (throws at once when another process has it) and starts the database: the caller may
 * do its own start meanwhile (load models) and wait for `ready` before it connects.
 */
export function startEmbedded(o: EmbeddedOptions): Starting {
  const unlock = o.dataDir ? lock(o.dataDir) : () => {};
  const socketDir = mkdtempSync(join(tmpdir(), 'pg-steadytext-'));
  const url = `postgres://postgres@localhost/postgres?host=${encodeURIComponent(socketDir)}&port=5432`;
  return { socketDir, url, ready: run(o, unlock, socketDir, url) };
}

async function run(o: EmbeddedOptions, unlock: () => void, socketDir: string, url: string): Promise<Embedded> {
  const here = fileURLToPath(import.meta.url);
  const fresh = o.dataDir === null || !existsSync(join(o.dataDir, 'PG_VERSION'));
  const input: WorkerInput = { dataDir: o.dataDir, socketPath: join(socketDir, '.s.PGSQL.5432'), template: fresh ? template(here, o.objects) : null };
  // The worker's file beside this one: .ts when run from the sources, .js built.
  const file = join(here, '..', `pglite-worker${extname(here)}`);
  // From the sources (tests, tsx), the worker registers tsx's loader itself: Node 20 does not carry it over.
  const worker = extname(here) === '.ts'
    ? new Worker(`import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})
        .then((tsx) => { tsx.register(); return import(${JSON.stringify(pathToFileURL(file).href)}); })`, { eval: true, workerData: input })
    : new Worker(file, { workerData: input });
  if (o.dataDir && fresh) o.logger.info({ dataDir: o.dataDir, from: input.template ?? 'initdb' }, 'creating the embedded database (first start only; a few seconds)');
  let stopped = false;
  const cleanup = () => {
    unlock();
    rmSync(socketDir, { recursive: true, force: true });
  };
  // One listener of each kind for the worker's life (removing a Worker's listeners wholesale upsets its port).
  let onReport: (r: WorkerReport) => void = () => {};
  let onGone: (why: string) => void = () => {};
  worker.on('message', (r: WorkerReport) => onReport(r));
  worker.on('error', (err) => onGone(err.message));
  worker.on('exit', (code) => onGone(`its worker exited with code ${code}`));
  const ready = await new Promise<Extract<WorkerReport, { kind: 'ready' }>>((resolve, reject) => {
    onReport = (r) => (r.kind === 'ready' ? resolve(r) : reject(new EmbeddedError(`the embedded database did not start: ${r.kind === 'error' ? r.message : r.kind}`)));
    onGone = (why) => reject(new EmbeddedError(`the embedded database did not start: ${why}`));
  }).catch((err: unknown) => {
    cleanup();
    void worker.terminate();
    throw err;
  });
  const died = (why: string) => {
    if (stopped) return;
    stopped = true;
    cleanup();
    o.logger.error({ dataDir: o.dataDir }, `the embedded database stopped: ${why}`);
    o.onCrash(why);
  };
  onReport = (r) => { if (r.kind === 'error') died(r.message); };
  onGone = died;
  o.logger.info({ dataDir: o.dataDir ?? 'memory', ms: ready.ms }, 'embedded database started');
  return {
    socketDir,
    url,
    version: ready.version,
    dataDir: o.dataDir,
    async stop() {
      if (stopped) return;
      stopped = true;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        onReport = (r) => { if (r.kind === 'stopped' || r.kind === 'error') resolve(); };
        onGone = () => resolve();
        worker.postMessage('stop');
        // A PGlite that no longer answers (it ended its session after an error) cannot close: stop it anyway.
        timer = setTimeout(() => {
          o.logger.error({ dataDir: o.dataDir }, 'the embedded database did not close within 5 s; stopped without closing it');
          resolve();
        }, STOP_MS);
      });
      clearTimeout(timer);
      await worker.terminate();
      cleanup();
    },
  };
}
