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
}

export async function startCore(o: CoreOptions): Promise<{ databases: DatabaseRegistry; daemon?: DaemonHandle }> {
  // Each needs the other: the daemon asks the registry (created below, once the daemon's address is bound).
  const ref: { databases?: DatabaseRegistry } = {};
  const daemon = o.daemonListen
    ? await startDaemon({
      listen: o.daemonListen, engine: o.engine, logger: o.logger,
      secret: () => ref.databases?.secrets() ?? [],
      // One service writer per database: the daemon's cache rows, counters and logs go through the registry's.
      databaseFor: (name) => ref.databases?.get(name),
    })
    : undefined;
  const databases = ref.databases = new DatabaseRegistry({
    serviceUrl: o.serviceUrl, schema: o.schema, autoInstall: o.autoInstall, daemon: daemon?.address, engine: o.engine, logger: o.logger,
    serviceUrlFor: o.serviceUrlFor,
  });
  return { databases, daemon };
}
