// The whole product in one process for the SQL API suites: a fresh database, the engine on the tiny
// fixture models, the daemon endpoint, and the proxy with the steadytext interceptor in front.
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inject } from 'vitest';
import pg from 'pg';
import pino from 'pino';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createEngine, type Engine, type EngineOptions } from '../../inference/engine.js';
import { startCore } from '../../sql/core.js';
import type { DaemonHandle } from '../../sql/daemon/server.js';
import type { DatabaseRegistry } from '../../sql/databases.js';
import { cancelRequest } from '../../proxy/protocol.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import { startProxy, type ProxyOptions, type ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';
import { createSteadytextInterceptor, type SteadytextInterceptor } from '../../sql/interceptor.js';
import { tinyModels } from '../fixtures/models.js';
import { writePgbouncerIni } from '../proxy/helpers.js';

export const silent = pino({ level: process.env.PGST_TEST_LOG ?? 'silent' });

export interface Stack {
  database: string;
  engine: Engine;
  interceptor: SteadytextInterceptor;
  proxy: ProxyServer;
  daemon: DaemonHandle;
  databases: DatabaseRegistry;
  /** URL through the proxy (superuser unless a role is given). */
  url(user?: string, password?: string): string;
  /** URL straight to the database (superuser). */
  directUrl: string;
  connect(url?: string): Promise<pg.Client>;
  /**
   * Another proxy with the same interceptor, pooling the stack's database from a pgbouncer.ini (SCRAM logins,
   * `poolSize` server connections); the superuser's URL through it. stop() closes it and its pooler.
   */
  pooledUrl(mode: 'session' | 'transaction' | 'statement', poolSize: number): Promise<string>;
  stop(): Promise<void>;
}

export async function adminQuery(sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const c = new pg.Client(inject('db').adminUrl);
  await c.connect();
  try { return await c.query(sql, params); } finally { await c.end(); }
}

export async function startStack(prefix = 'st_api', opts: { daemonPort?: number; engine?: EngineOptions } = {}): Promise<Stack> {
  const database = `${prefix}_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${database}`);
  const admin = new URL(inject('db').adminUrl);
  admin.pathname = `/${database}`;
  const directUrl = admin.toString();
  const models = await tinyModels();
  const engine = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, logger: silent, ...opts.engine });
  const core = await startCore({ engine, serviceUrl: directUrl, autoInstall: true, daemonListen: { host: '127.0.0.1', port: opts.daemonPort ?? 0 }, logger: silent });
  const { databases } = core;
  const daemon = core.daemon!;
  const interceptor = createSteadytextInterceptor({ engine, databases, daemon: daemon.address, logger: silent });
  await interceptor.ready;
  const proxyOptions: ProxyOptions = {
    listen: { host: '127.0.0.1', port: 0 }, upstream: `postgres://${admin.hostname}:${admin.port}/postgres?sslmode=disable`,
    maxMessageBytes: 64 * 1024 * 1024, shutdownGraceMs: 1000, connectTimeoutMs: 3000, logger: silent, interceptor,
  };
  const proxy = await startProxy(proxyOptions);
  const pooled: { proxy: ProxyServer; pooling: PoolingEnv }[] = [];
  const clients = new Set<pg.Client>();
  const url = (user?: string, password?: string) => {
    const u = new URL(directUrl);
    u.port = String(proxy.address.port);
    u.hostname = proxy.address.host;
    if (user) { u.username = user; u.password = password ?? ''; }
    return u.toString();
  };
  return {
    database, engine, interceptor, proxy, daemon, databases, url, directUrl,
    async connect(to = url()) {
      const c = new pg.Client(to);
      c.on('error', () => {});
      await c.connect();
      clients.add(c);
      return c;
    },
    async pooledUrl(mode, poolSize) {
      const user = decodeURIComponent(admin.username);
      const password = decodeURIComponent(admin.password);
      const dir = mkdtempSync(join(tmpdir(), `pooled-${mode}-`));
      const ini = writePgbouncerIni(dir, {
        port: 6432, user, password, // the port is the ini's only: this proxy listens where proxyOptions says
        databases: [`${database} = host=${admin.hostname} port=${admin.port} dbname=${database}`],
        pgbouncer: [`pool_mode = ${mode}`, `default_pool_size = ${poolSize}`],
      });
      const pooling = createPooling({
        config: loadPgBouncerConfig(ini),
        defaultTarget: parseUpstreamUrl(`postgres://${admin.hostname}:${admin.port}/?sslmode=disable`),
        logger: silent,
      });
      const p = await startProxy({ ...proxyOptions, pooling });
      pooled.push({ proxy: p, pooling });
      return `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${p.address.port}/${database}`;
    },
    async stop() {
      await Promise.all([...clients].map((c) => c.end().catch(() => {})));
      await proxy.close(100);
      for (const p of pooled) {
        await p.proxy.close(100);
        p.pooling.pooler.close();
      }
      // A session's start begins the first-use install in the background, and databases.close() does not
      // wait for it: dropping the database under it killed its connection, which has no 'error' listener
      // (unhandled 57P01 / "Connection terminated unexpectedly" when a test ended early).
      await databases.get(database).ready().catch(() => {});
      await daemon.close();
      await databases.close();
      await engine.close();
      await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => {});
    },
  };
}

/**
 * A stack with what the in-band transport must do without: no dblink in its database and no daemon endpoint, so a
 * call the proxy cannot see asks in-band or not at all; and a superuser connection straight to that database.
 */
export async function inbandStack(prefix: string): Promise<{ s: Stack; direct: pg.Client }> {
  const s = await startStack(prefix);
  await s.databases.get(s.database).ready();
  await s.daemon.close();
  const direct = new pg.Client(s.directUrl);
  await direct.connect();
  await direct.query('DROP EXTENSION IF EXISTS dblink');
  return { s, direct };
}

/** Sends a CancelRequest for the client's running statement to the stack's proxy, as libpq does on Ctrl-C. */
export function cancelThroughProxy(stack: Pick<Stack, 'proxy'>, client: pg.Client): Promise<void> {
  const { processID, secretKey } = client as unknown as { processID: number; secretKey: number };
  const secret = Buffer.alloc(4);
  secret.writeInt32BE(secretKey);
  return new Promise((resolve, reject) => {
    const sock = tcpConnect(stack.proxy.address.port, stack.proxy.address.host, () => sock.end(cancelRequest(processID, secret)));
    sock.on('close', () => resolve());
    sock.on('error', reject);
  });
}
