// The registry of databases and the daemon endpoint, started together because each needs the other:
// the daemon checks callers against the registry's secrets, and the registry tells every database where
// the daemon listens. The daemon starts first so that address is the bound one (port 0 included).
import type { Logger } from 'pino';
import type { Engine } from '../inference/engine.js';
import { startDaemon, type DaemonHandle } from './daemon/server.js';
import { DatabaseRegistry } from './databases.js';

export interface CoreOptions {
  engine: Engine;
  serviceUrl: string;
  /** Schema of the steadytext objects in every database (default "public"). */
  schema?: string;
  autoInstall: boolean;
  /** Where the daemon endpoint listens; undefined: no daemon (calls the proxy cannot see then fail clearly). */
  daemonListen?: { host: string; port: number };
  logger: Logger;
  /** Where each database's service connection goes (DatabaseRegistryOptions.serviceUrlFor). */
  serviceUrlFor?: (database: string) => string;
  /**
   * Bind the daemon endpoint only when bindDaemon() is called: an online restart (-R), whose predecessor holds
   * the port until it exits. The databases are told the configured address meanwhile.
   */
  deferDaemon?: boolean;
}

/** How long a deferred daemon endpoint waits for its port (the predecessor exits once its last client left). */
const DEFERRED_BIND_MS = 30_000;

export async function startCore(o: CoreOptions): Promise<{ databases: DatabaseRegistry; daemon?: DaemonHandle; bindDaemon?: () => Promise<DaemonHandle | undefined> }> {
  // Each needs the other: the daemon asks the registry (created below, once the daemon's address is bound).
  const ref: { databases?: DatabaseRegistry } = {};
  const listen = o.daemonListen;
  const start = (at: { host: string; port: number }) => startDaemon({
    listen: at, engine: o.engine, logger: o.logger,
    secret: () => ref.databases?.secrets() ?? [],
    // One service writer per database: the daemon's cache rows, counters and logs go through the registry's.
    databaseFor: (name) => ref.databases?.get(name),
  });
  // Port 0 is never held by a predecessor: bound now either way.
  const defer = o.deferDaemon === true && listen !== undefined && listen.port !== 0;
  const daemon = listen && !defer ? await start(listen) : undefined;
  const databases = ref.databases = new DatabaseRegistry({
    serviceUrl: o.serviceUrl, schema: o.schema, autoInstall: o.autoInstall, daemon: daemon?.address ?? listen, engine: o.engine, logger: o.logger,
    serviceUrlFor: o.serviceUrlFor,
  });
  if (!defer) return { databases, daemon };
  const bindDaemon = async (): Promise<DaemonHandle | undefined> => {
    const deadline = Date.now() + DEFERRED_BIND_MS;
    for (;;) {
      try {
        return await start(listen);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || Date.now() > deadline) {
          o.logger.error({ err, listen }, 'the daemon endpoint could not bind: calls the proxy cannot see ask in-band (callback_transport auto) or fail (dblink)');
          return undefined;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  return { databases, bindDaemon };
}
