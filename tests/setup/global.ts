// Starts one PostgreSQL cluster for the whole run (or uses PGSTEADYTEXT_TEST_DATABASE_URL) and hands
// its coordinates to every suite through vitest's provide/inject.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { startCluster, type Cluster } from './cluster.js';
import { provisioning, thisMachine } from './provision.js';

export interface TestDatabase {
  host: string;
  port: number;
  adminUrl: string;
  /** Present only for the cluster we started: the roles one per auth method. */
  roles?: Cluster['roles'];
  /** Set only for a container: the host name the database dials to reach the test process (see container.ts). */
  hostFromDatabase?: string;
}

declare module 'vitest' {
  export interface ProvidedContext { db: TestDatabase }
}

// Same default as cluster.ts.
const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

let cluster: Cluster | undefined;

export async function setup(project: TestProject) {
  const plan = await provisioning(thisMachine(PG_BIN, async () => (await import('./container.js')).containerRuntimeAnswers()));
  if (plan.kind === 'none') throw new Error(plan.message);
  if (plan.kind === 'external') {
    const u = new URL(plan.url);
    project.provide('db', { host: u.hostname, port: Number(u.port || 5432), adminUrl: plan.url });
    return;
  }
  if (plan.kind === 'setup-script') {
    // Debian as root with PostgreSQL or pgvector missing: what CI does first, done here (idempotent, prints its steps).
    process.stderr.write('[tests] PostgreSQL with pgvector is missing: running scripts/setup-machine.sh\n');
    const r = spawnSync('bash', [fileURLToPath(new URL('../../scripts/setup-machine.sh', import.meta.url))], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`scripts/setup-machine.sh failed (exit ${r.status ?? r.signal}); run it by hand to see why`);
  }
  let hostFromDatabase: string | undefined;
  if (plan.kind === 'container') {
    // Loaded only here: the local path should not pay for (or depend on) testcontainers.
    const { startContainerCluster } = await import('./container.js');
    const c = await startContainerCluster();
    cluster = c;
    hostFromDatabase = c.hostFromDatabase;
  } else {
    cluster = await startCluster();
  }
  project.provide('db', { host: cluster.host, port: cluster.port, adminUrl: cluster.adminUrl, roles: cluster.roles, hostFromDatabase });
}

export async function teardown() {
  await cluster?.stop();
}
