// The test cluster in a container (testcontainers, a pgvector image) for machines with a Docker engine
// but no local PostgreSQL: same roles, auth methods, extensions and settings as cluster.ts.
//
// The callback path has the database dial a port the test process listens on at 127.0.0.1 (dblink).
// On a local Linux engine the container therefore shares the host's network namespace, so 127.0.0.1 is the
// same loopback on both sides and the suites run unchanged. Elsewhere (Docker Desktop, a remote or
// rootless engine) that cannot work: the container runs on a bridge network with a mapped port, and the
// database reaches the host as `hostFromDatabase` (host.testcontainers.internal) through testcontainers'
// port forwarder, which forwards only ports passed to `TestContainers.exposeHostPorts(port)` (callable from
// any process of the run). The suites that start a daemon still hardcode 127.0.0.1 and do not expose their
// port, so on a bridge network those callback tests fail until they use both.
// PGSTEADYTEXT_TEST_DOCKER_NETWORK=host|bridge overrides the choice.
import pg from 'pg';
import {
  GenericContainer, TestContainers, Wait, getContainerRuntimeClient,
  type ContainerRuntimeClient, type StartedTestContainer,
} from 'testcontainers';
import { clusterAt, freePort, hbaLines, PER_DATABASE_SQL, ROLE_SQL, SETTINGS, type Cluster } from './cluster.js';

export interface ContainerCluster extends Cluster {
  /** The host name the database must dial to reach a port the test process listens on. */
  hostFromDatabase: string;
}

const IMAGE = process.env.PGSTEADYTEXT_TEST_IMAGE || 'pgvector/pgvector:pg15';
const READY = 'database system is ready to accept connections';

/** Whether a container runtime answers; never throws, never hangs. */
export async function containerRuntimeAnswers(): Promise<boolean> {
  try {
    await runtimeClient();
    return true;
  } catch {
    return false;
  }
}

async function runtimeClient(): Promise<ContainerRuntimeClient> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('no answer within 20 s')), 20_000);
    timer.unref();
  });
  try {
    return await Promise.race([getContainerRuntimeClient(), timeout]);
  } catch (e) {
    throw new Error(
      `no container runtime answers (${(e as Error).message}): start Docker (or set DOCKER_HOST), ` +
      'or run "npm run setup:machine" for a local PostgreSQL, or set PGSTEADYTEXT_TEST_DATABASE_URL ' +
      '(DEBUG=testcontainers* shows what testcontainers tried)',
      { cause: e },
    );
  }
}

/** Host networking only shares our loopback when the engine runs natively on this Linux machine. */
function useHostNetwork(client: ContainerRuntimeClient): boolean {
  const forced = process.env.PGSTEADYTEXT_TEST_DOCKER_NETWORK;
  if (forced === 'host' || forced === 'bridge') return forced === 'host';
  if (forced) throw new Error(`PGSTEADYTEXT_TEST_DOCKER_NETWORK must be "host" or "bridge", not "${forced}"`);
  const rt = client.info.containerRuntime;
  return process.platform === 'linux' && rt.operatingSystemType === 'linux' && rt.operatingSystem !== 'Docker Desktop'
    && ['localhost', '127.0.0.1'].includes(rt.host);
}

/** Runs as the image's init step, against the temporary server, before the real start. */
function initScript(address: string): string {
  return [
    '#!/bin/sh',
    'set -e',
    `cat > "$PGDATA/pg_hba.conf" <<'EOF'`,
    ...hbaLines(address),
    'EOF',
    `psql -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres <<'EOF'`,
    `${ROLE_SQL.join(';\n')};`,
    'EOF',
    'for db in template1 postgres; do',
    `  psql -X -q -v ON_ERROR_STOP=1 -U postgres -d "$db" -c '${PER_DATABASE_SQL}'`,
    'done',
    '',
  ].join('\n');
}

export async function startContainerCluster(): Promise<ContainerCluster> {
  const client = await runtimeClient();
  const hostNet = useHostNetwork(client);
  const settings = [...SETTINGS.map(([k, v]) => `${k}=${v}`), ...(hostNet ? ['listen_addresses=127.0.0.1'] : [])];
  const container = new GenericContainer(IMAGE)
    .withEnvironment({
      POSTGRES_PASSWORD: 'postgres',
      POSTGRES_HOST_AUTH_METHOD: 'scram-sha-256',
      POSTGRES_INITDB_ARGS: '-E UTF8 --locale=C.UTF-8 --no-sync',
    })
    .withCommand(['postgres', ...settings.flatMap((s) => ['-c', s])])
    .withCopyContentToContainer([{
      content: initScript(hostNet ? '127.0.0.1/32' : 'all'),
      target: '/docker-entrypoint-initdb.d/roles.sh',
      mode: 0o755,
    }])
    // Docker's default 64 MB /dev/shm is short for 400 connections' dynamic shared memory.
    .withSharedMemorySize(256 * 1024 * 1024)
    // The image starts a temporary server for init, then the real one: the second "ready" is the real one.
    .withWaitStrategy(Wait.forLogMessage(READY, 2))
    .withStartupTimeout(120_000);

  let port = 0;
  let hostFromDatabase: string;
  if (hostNet) {
    port = await freePort();
    hostFromDatabase = '127.0.0.1';
    // The server and the image's init psql both take their port from PGPORT.
    container.withNetworkMode('host').withEnvironment({ PGPORT: String(port) });
  } else {
    // Started before the database container, which only then gets host.testcontainers.internal.
    await TestContainers.exposeHostPorts();
    hostFromDatabase = 'host.testcontainers.internal';
    container.withExposedPorts(5432);
  }

  let started: StartedTestContainer;
  try {
    started = await container.start();
  } catch (e) {
    throw new Error(`the test database container (${IMAGE}) did not start: ${(e as Error).message}`, { cause: e });
  }
  // 127.0.0.1 as in cluster.ts: some suites dial it directly, and "localhost" may resolve to ::1 first.
  const host = (hostNet || ['localhost', '127.0.0.1'].includes(started.getHost())) ? '127.0.0.1' : started.getHost();
  if (!hostNet) port = started.getMappedPort(5432);
  const at = clusterAt(host, port);
  const adminUrl = at.adminUrl;

  try {
    await untilConnects(adminUrl, 15_000);
  } catch (e) {
    await started.stop().catch(() => {});
    const why = hostNet
      ? ' (with host networking the container must share this machine\'s loopback; rootless engines do not: ' +
        'try PGSTEADYTEXT_TEST_DOCKER_NETWORK=bridge)'
      : '';
    throw new Error(`the test database container logged ready but ${host}:${port} does not answer: ${(e as Error).message}${why}`, { cause: e });
  }

  let stopped = false;
  return {
    ...at,
    hostFromDatabase,
    async stop() {
      if (stopped) return;
      stopped = true;
      await started.stop();
    },
  };
}

/** The log line is not proof (a port mapping can lag it): wait for a real login as the superuser. */
async function untilConnects(url: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
    try {
      await c.connect();
      await c.query('SELECT 1');
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 250));
    } finally {
      await c.end().catch(() => {});
    }
  }
}
