// Installs with --workers N: a worker's first use of a database asks the primary, which runs the one
// install (and holds the daemon secret its daemon endpoint checks); each worker then keeps its own service
// pool and config listener, as without workers. Messages travel on the worker pool's IPC channels.
import { DatabaseRegistry, type Database, type DatabaseRegistryOptions } from './databases.js';

const TAG = 'steadytext-install';

/** The part of an IPC channel installs use (proxy/ipc.ts). */
export interface InstallChannel {
  send(message: unknown): void;
  onMessage(listener: (message: any) => void): () => void;
  onClose(listener: () => void): () => void;
}

type FromWorker = { tag: typeof TAG; kind: 'install'; id: number; database: string };
type ToWorker = { tag: typeof TAG; kind: 'installed'; id: number; error?: string };

/** Primary side of installs: a worker's first use of a database runs the (single) install here. */
export function serveInstalls(databases: DatabaseRegistry, channel: InstallChannel): () => void {
  return channel.onMessage((m: FromWorker) => {
    if (m?.tag !== TAG || m.kind !== 'install') return;
    databases.get(m.database).ready().then(
      () => channel.send({ tag: TAG, kind: 'installed', id: m.id } satisfies ToWorker),
      (e: unknown) => channel.send({ tag: TAG, kind: 'installed', id: m.id, error: (e as Error)?.message ?? String(e) } satisfies ToWorker),
    );
  });
}

/**
 * A worker's DatabaseRegistry: the install (and the daemon secret the primary's daemon needs) happen in
 * the primary, once per database however many workers serve it; each worker then keeps its own
 * service pool and config listener, as without workers.
 */
export class WorkerDatabaseRegistry extends DatabaseRegistry {
  private readonly installs = new Map<string, Promise<void>>();
  private readonly waiting = new Map<number, { resolve(): void; reject(e: Error): void }>();
  private readonly wrapped = new WeakSet<Database>();
  private nextId = 1;

  constructor(opts: DatabaseRegistryOptions, private readonly channel: InstallChannel) {
    // The worker only reads the secret; installing (and warning about a superuser service role) is the primary's job.
    super({ ...opts, autoInstall: false, superuserWarning: false });
    channel.onMessage((m: ToWorker) => {
      if (m?.tag !== TAG || m.kind !== 'installed') return;
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (m.error === undefined) w?.resolve(); else w?.reject(new Error(m.error));
    });
    channel.onClose(() => {
      for (const w of this.waiting.values()) w.reject(new Error('the primary process is gone'));
      this.waiting.clear();
    });
  }

  override get(database: string): Database {
    const d = super.get(database);
    if (!this.wrapped.has(d)) {
      this.wrapped.add(d);
      const own = d.ready.bind(d);
      d.ready = () => this.install(database).then(own);
    }
    return d;
  }

  /** A moved database is installed again at its new place (the primary follows the same RELOAD). */
  override retarget(serviceUrlFor: (database: string) => string): string[] {
    const moved = super.retarget(serviceUrlFor);
    for (const name of moved) this.installs.delete(name);
    return moved;
  }

  private install(database: string): Promise<void> {
    let p = this.installs.get(database);
    if (!p) {
      const id = this.nextId++;
      p = new Promise<void>((resolve, reject) => {
        this.waiting.set(id, { resolve, reject });
        this.channel.send({ tag: TAG, kind: 'install', id, database } satisfies FromWorker);
      });
      // A failed install is asked for again by a later session (database down, role fixed...).
      p.catch(() => this.installs.delete(database));
      this.installs.set(database, p);
    }
    return p;
  }
}
