// Starts one PostgreSQL cluster for the whole run (or uses PGSTEADYTEXT_TEST_DATABASE_URL) and hands
// its coordinates to every suite through vitest's provide/inject.
import type { TestProject } from 'vitest/node';
import { startCluster, type Cluster } from './cluster.js';

export interface TestDatabase {
  host: string;
  port: number;
  adminUrl: string;
  /** Present only for the cluster we started: the roles one per auth method. */
  roles?: Cluster['roles'];
}

declare module 'vitest' {
  export interface ProvidedContext { db: TestDatabase }
}

let cluster: Cluster | undefined;

export async function setup(project: TestProject) {
  const external = process.env.PGSTEADYTEXT_TEST_DATABASE_URL;
  if (external) {
    const u = new URL(external);
    project.provide('db', { host: u.hostname, port: Number(u.port || 5432), adminUrl: external });
    return;
  }
  cluster = await startCluster();
  project.provide('db', { host: cluster.host, port: cluster.port, adminUrl: cluster.adminUrl, roles: cluster.roles });
}

export async function teardown() {
  await cluster?.stop();
}
