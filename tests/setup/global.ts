// Starts one PostgreSQL cluster for the whole run (or uses PGSTEADYTEXT_TEST_DATABASE_URL) and hands
// its coordinates to every suite through vitest's provide/inject.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { startCluster, type Cluster } from './cluster.js';

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
  const external = process.env.PGSTEADYTEXT_TEST_DATABASE_URL;
  if (external) {
    const u = new URL(external);
    project.provide('db', { host: u.hostname, port: Number(u.port || 5432), adminUrl: external });
    return;
  }
  let hostFromDatabase: string | undefined;
  if (process.env.PGSTEADYTEXT_TEST_DOCKER === '1' || !existsSync(join(PG_BIN, 'postgres'))) {
    // Loaded only here: the local path should not pay for (or depend on) testcontainers.
    const { startContainerCluster, containerRuntimeAnswers } = await import('./container.js');
    if (process.env.PGSTEADYTEXT_TEST_DOCKER !== '1' && !(await containerRuntimeAnswers())) {
      throw new Error(
        `no PostgreSQL to test against: no server binaries in ${PG_BIN} and no container runtime answers. ` +
        'Run "npm run setup:machine" (or set PG_BIN), set PGSTEADYTEXT_TEST_DATABASE_URL to a superuser URL, or start Docker.',
      );
    }
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
