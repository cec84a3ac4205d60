// The Prometheus endpoint (--metrics-listen, [steadytext] metrics_listen) of the CLI run as a real child process
// on the tiny test models: what SHOW STATS, POOLS and DATABASES report under pgbouncer_exporter's names, moved by
// the queries a real client runs through the pooler (counts, bytes to the byte, times); the steadytext calls per
// database and model (SHOW STEADYTEXT too); the proxy's own session counts without pooling; and requests the
// endpoint refuses without harm to the proxy.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { workerOfPid } from '../../proxy/cancel.js';
import { METRICS_CONTENT_TYPE, startMetricsServer } from '../../proxy/metrics.js';
import { tinyModels } from '../fixtures/models.js';
import { freePort } from '../setup/cluster.js';
import { adminQuery, silentLogger, spawnCli, testDb, writePgbouncerIni } from './helpers.js';

const CLI = fileURLToPath(new URL('../../cli.ts', import.meta.url));

interface Child {
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/** Runs the CLI; resolves once `ready` answers (the proxy and the endpoint listen then). */
async function runCli(args: string[], env: Record<string, string>, ready: () => Promise<boolean>): Promise<Child> {
  const models = await tinyModels();
  const { child, output } = spawnCli(args, { PGSTEADYTEXT_DAEMON_LISTEN: 'off', PGSTEADYTEXT_GENERATION_MODEL: models.generation, PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding, ...env });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 60_000;
  while (!(await ready().catch(() => false))) {
    if (child.exitCode !== null) throw new Error(`pg-steadytext exited (${child.exitCode}) before it was ready:\n${output()}`);
    if (Date.now() > deadline) throw new Error(`pg-steadytext not ready after 60 s:\n${output()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    child,
    output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** One scrape: the body, with its samples by `name{labels}` as printed. */
interface Scrape {
  text: string;
  /** The sample of `name` whose labels include `labels` (undefined: none). */
  value(name: string, labels?: Record<string, string>): number | undefined;
}

async function scrape(port: number): Promise<Scrape> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe(METRICS_CONTENT_TYPE);
  const text = await res.text();
  wellFormed(text);
  const samples = text
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(l);
      if (!m) throw new Error(`not a sample line: ${l}`);
      const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
      return { name: m[1], labels, value: Number(m[3]) };
    });
  return {
    text,
    value(name, labels = {}) {
      return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
    },
  };
}

/** Text format 0.0.4: each family's HELP and TYPE once, before its samples, which stay together. */
function wellFormed(text: string): void {
  expect(text.endsWith('\n')).toBe(true);
  const typed = new Map<string, string>();
  const seen = new Set<string>();
  let current = '';
  for (const line of text.trimEnd().split('\n')) {
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        expect(typed.has(meta[2]), `TYPE ${meta[2]} twice`).toBe(false);
        expect(['counter', 'gauge', 'summary']).toContain(meta[3]);
        typed.set(meta[2], meta[3]);
      }
      expect(seen.has(meta[2]), `${meta[2]} after its samples`).toBe(false);
      current = meta[2];
      continue;
    }
    const name = line.split(/[{ ]/, 1)[0];
    const family = typed.get(current) === 'summary' ? name.replace(/_(sum|count)$/, '') : name;
    expect(family, `${line} outside its family`).toBe(current);
    seen.add(family);
  }
}

/** The worker a client of the pooler is on, from the cancel key the proxy gave it. */
const workerOf = (c: pg.Client) => workerOfPid((c as unknown as { processID: number }).processID);

/** The client's own port, as SHOW CLIENTS lists it. */
const localPort = (c: pg.Client) => (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;

const delta = (a: Scrape, b: Scrape, name: string, labels?: Record<string, string>) => (b.value(name, labels) ?? 0) - (a.value(name, labels) ?? 0);

/** A query's Query message: type, length, text, NUL. */
const queryBytes = (sql: string) => 1 + 4 + Buffer.byteLength(sql) + 1;

function rawHttp(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port }, () => s.write(request));
    let got = '';
    s.setEncoding('utf8').on('data', (d: string) => (got += d));
    s.on('end', () => resolve(got));
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
}

let database: string;
beforeAll(async () => {
  database = `st_metrics_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${database}`);
});
afterAll(async () => {
  await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => {});
});

/** The test cluster's superuser URL, on `database` (the service connection installs the steadytext objects there). */
function adminUrl(): URL {
  const u = new URL(testDb().adminUrl);
  u.pathname = `/${database}`;
  u.searchParams.set('sslmode', 'disable');
  return u;
}

describe('pooling from a pgbouncer.ini with [steadytext] metrics_listen', () => {
  let dir: string;
  let port: number;
  let metricsPort: number;
  let cli: Child;
  const clients: pg.Client[] = [];
  const admin = adminUrl();
  const user = decodeURIComponent(admin.username);
  const password = decodeURIComponent(admin.password);

  async function connect(db = database): Promise<pg.Client> {
    const c = new pg.Client({ host: '127.0.0.1', port, user, password, database: db });
    c.on('error', () => {});
    clients.push(c);
    await c.connect();
    return c;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'pgst-metrics-'));
    port = await freePort();
    metricsPort = await freePort();
    const ini = writePgbouncerIni(dir, {
      port, user, password,
      databases: [`${database} = host=${admin.hostname} port=${admin.port} dbname=${database}`],
      // One server connection: a second client waits while the first holds it in a transaction.
      pgbouncer: [`admin_users = ${user}`, 'pool_mode = transaction', 'default_pool_size = 1'],
      sections: { steadytext: [`upstream = ${admin.toString()}`, `metrics_listen = 127.0.0.1:${metricsPort}`] },
    });
    cli = await runCli(['pgbouncer', ini], {}, async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).ok);
  });
  // Each test's clients leave with it: SHOW POOLS counts every logged-in client as cl_active.
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.end().catch(() => {})));
  });
  afterAll(async () => {
    await cli?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('the endpoint and its address are logged at start', () => {
    expect(cli.output()).toContain(`"metrics":"http://127.0.0.1:${metricsPort}/metrics"`);
  });

  test("queries move pgBouncer's counters by what was run: queries, transactions, bytes to the byte, times; SHOW STATS agrees", async () => {
    const c = await connect();
    await c.query('SELECT 1 AS v'); // logged in, a server connection made: the window starts after
    const labels = { database };
    const before = await scrape(metricsPort);
    const sqls = ['SELECT 1 AS v', 'SELECT 2 AS v', "SELECT repeat('x', 1000) AS v", 'SELECT pg_sleep(0.02)'];
    for (const sql of sqls) await c.query(sql);
    await c.query('BEGIN');
    await c.query('SELECT 3 AS v');
    await c.query('COMMIT');
    const after = await scrape(metricsPort);
    const sent = [...sqls, 'BEGIN', 'SELECT 3 AS v', 'COMMIT'];

    expect(delta(before, after, 'pgbouncer_stats_queries_pooled_total', labels)).toBe(sent.length);
    expect(delta(before, after, 'pgbouncer_stats_sql_transactions_pooled_total', labels)).toBe(sqls.length + 1);
    // Every byte the client sent, and at least the rows it got back (1000 x's, a sleep's 20 ms).
    expect(delta(before, after, 'pgbouncer_stats_received_bytes_total', labels)).toBe(sent.reduce((n, s) => n + queryBytes(s), 0));
    expect(delta(before, after, 'pgbouncer_stats_sent_bytes_total', labels)).toBeGreaterThan(1000 + sent.length * 6);
    expect(delta(before, after, 'pgbouncer_stats_queries_duration_seconds_total', labels)).toBeGreaterThanOrEqual(0.02);
    expect(delta(before, after, 'pgbouncer_stats_server_in_transaction_seconds_total', labels)).toBeGreaterThanOrEqual(0.02);
    // In transaction mode the connection is lent again for each transaction.
    expect(delta(before, after, 'pgbouncer_stats_server_assignments_total', labels)).toBe(sqls.length + 1);

    // The console reads the same counters: bytes and times are there, not zero.
    const console = await connect('pgbouncer');
    const row = (await console.query('SHOW STATS')).rows.find((r: { database: string }) => r.database === database) as Record<string, string>;
    for (const k of ['total_received', 'total_sent', 'total_query_time', 'total_xact_time']) expect(Number(row[k]), k).toBeGreaterThan(0);
    const now = await scrape(metricsPort);
    expect(Number(row.total_received)).toBe(now.value('pgbouncer_stats_received_bytes_total', labels));
    expect(Number(row.total_sent)).toBe(now.value('pgbouncer_stats_sent_bytes_total', labels));
    expect(Number(row.total_query_time) / 1e6).toBe(now.value('pgbouncer_stats_queries_duration_seconds_total', labels));
  });

  test('the pool gauges: a client in a transaction holds the one server connection, another waits, and its wait is counted', async () => {
    const a = await connect();
    const b = await connect();
    await b.query('SELECT 1');
    const before = await scrape(metricsPort);
    await a.query('BEGIN');
    await a.query('SELECT 1');
    const waiting = b.query('SELECT 2 AS v');
    waiting.catch(() => {}); // awaited below; a failed assertion first must not leave it unhandled
    const pool = { database, user };
    await expect.poll(async () => (await scrape(metricsPort)).value('pgbouncer_pools_client_waiting_connections', pool), { timeout: 10_000 }).toBe(1);
    await new Promise((r) => setTimeout(r, 30));
    const held = await scrape(metricsPort);
    expect(held.value('pgbouncer_pools_client_active_connections', pool)).toBe(1);
    expect(held.value('pgbouncer_pools_server_active_connections', pool)).toBe(1);
    expect(held.value('pgbouncer_pools_server_idle_connections', pool)).toBe(0);
    expect(held.value('pgbouncer_pools_client_maxwait_seconds', pool)).toBeGreaterThanOrEqual(0.03);
    expect(held.value('pgbouncer_databases_current_connections', { name: database })).toBe(1);
    expect(held.value('pgbouncer_databases_pool_size', { name: database, pool_mode: '' })).toBe(1);
    expect(held.value('pgbouncer_databases_paused', { name: database })).toBe(0);
    expect(held.value('pgbouncer_up')).toBe(1);
    expect(held.value('pgbouncer_config_max_client_connections')).toBe(100);
    expect(held.value('pgbouncer_pools', {})).toBeGreaterThanOrEqual(2); // this pool and the console's
    // The console's own pool is listed, as pgBouncer lists it.
    expect(held.value('pgbouncer_pools_client_active_connections', { database: 'pgbouncer', user: 'pgbouncer' })).toBeDefined();
    await a.query('COMMIT');
    expect((await waiting).rows[0].v).toBe(2);
    const after = await scrape(metricsPort);
    expect(after.value('pgbouncer_pools_client_waiting_connections', pool)).toBe(0);
    expect(after.value('pgbouncer_pools_server_idle_connections', pool)).toBe(1);
    expect(delta(before, after, 'pgbouncer_stats_client_wait_seconds_total', { database })).toBeGreaterThanOrEqual(0.03);
  });

  test('steadytext calls per database and model: computed, then a cache hit; SHOW STEADYTEXT lists the same', async () => {
    const c = await connect();
    const model = { database, model: 'generation:small' };
    const before = await scrape(metricsPort);
    expect(before.value('pg_steadytext_calls_total', model)).toBeUndefined();
    const text = (await c.query(`SELECT steadytext_generate('metrics', 8) AS v`)).rows[0].v as string;
    expect(typeof text).toBe('string');
    const computed = await scrape(metricsPort);
    expect(computed.value('pg_steadytext_calls_total', model)).toBe(1);
    expect(computed.value('pg_steadytext_cache_hits_total', model)).toBe(0);
    expect(computed.value('pg_steadytext_call_duration_seconds_count', model)).toBe(1);
    expect(computed.value('pg_steadytext_call_duration_seconds_sum', model)).toBeGreaterThan(0);
    expect(computed.value('pg_steadytext_call_duration_seconds', { ...model, quantile: '0.99' })).toBeGreaterThan(0);
    expect(computed.value('pg_steadytext_queue_depth', { model: 'generation:small' })).toBe(0);
    // The stream of the same call is the same text: the engine's result cache answers it.
    const chunks = (await c.query(`SELECT * FROM steadytext_generate_stream('metrics', 8) AS v`)).rows.map((r: { v: string }) => r.v);
    expect(chunks.join('')).toBe(text);
    const hit = await scrape(metricsPort);
    expect(hit.value('pg_steadytext_calls_total', model)).toBe(2);
    expect(hit.value('pg_steadytext_cache_hits_total', model)).toBe(1);
    expect(hit.value('pg_steadytext_call_duration_seconds_count', model)).toBe(1);
    expect(hit.value('pg_steadytext_call_errors_total', model)).toBe(0);
    // The steadytext statements are the client's queries too.
    expect(delta(before, hit, 'pgbouncer_stats_queries_pooled_total', { database })).toBeGreaterThanOrEqual(2);

    const console = await connect('pgbouncer');
    const rows = (await console.query('SHOW STEADYTEXT')).rows;
    expect(rows).toContainEqual(expect.objectContaining({ database, model: 'generation:small', calls: '2', cache_hits: '1', queue_depth: 0 }));
  });

  test('other paths get 404, other methods 405, a malformed request 400; the proxy and the endpoint go on', async () => {
    const nf = await fetch(`http://127.0.0.1:${metricsPort}/`);
    expect(nf.status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${metricsPort}/metrics/../admin`)).status).toBe(404);
    const post = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    const head = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
    expect(await rawHttp(metricsPort, 'NONSENSE\r\n\r\n')).toMatch(/^HTTP\/1\.1 400/);
    expect(await rawHttp(metricsPort, `GET /metrics HTTP/1.1\r\nHost: x\r\n${'X-Long: y\r\n'.repeat(3000)}\r\n`)).toMatch(/^HTTP\/1\.1 4\d\d/);
    // With a query string, as some scrapers send.
    expect((await fetch(`http://127.0.0.1:${metricsPort}/metrics?name[]=x`)).status).toBe(200);

    expect(cli.child.exitCode).toBeNull();
    const c = await connect();
    expect((await c.query('SELECT 42 AS v')).rows[0].v).toBe(42);
    expect((await scrape(metricsPort)).value('pgbouncer_up')).toBe(1);
  });
});

describe('pooling with workers = 2: one endpoint for the process group', () => {
  let dir: string;
  let port: number;
  let metricsPort: number;
  let cli: Child;
  const clients: pg.Client[] = [];
  const admin = adminUrl();
  const user = decodeURIComponent(admin.username);
  const password = decodeURIComponent(admin.password);

  async function connect(db = database): Promise<pg.Client> {
    const c = new pg.Client({ host: '127.0.0.1', port, user, password, database: db });
    c.on('error', () => {});
    clients.push(c);
    await c.connect();
    return c;
  }

  /** Clients connected one after another until each worker has one (the listener hands connections out in turn). */
  async function onBothWorkers(): Promise<pg.Client[]> {
    const made = [await connect()];
    while (new Set(made.map(workerOf)).size < 2) {
      if (made.length > 6) throw new Error('connections never reached the second worker');
      made.push(await connect());
    }
    return made;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'pgst-metrics-workers-'));
    port = await freePort();
    metricsPort = await freePort();
    const ini = writePgbouncerIni(dir, {
      port, user, password,
      databases: [`${database} = host=${admin.hostname} port=${admin.port} dbname=${database}`],
      pgbouncer: [`admin_users = ${user}`, 'pool_mode = transaction', 'default_pool_size = 2'],
      sections: { steadytext: ['workers = 2', `upstream = ${admin.toString()}`, `metrics_listen = 127.0.0.1:${metricsPort}`] },
    });
    // Ready once the workers answer (the endpoint listens before they start).
    cli = await runCli(['pgbouncer', ini], {}, async () => {
      if (!(await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).ok) return false;
      const c = new pg.Client({ host: '127.0.0.1', port, user, password, database });
      c.on('error', () => {});
      try {
        await c.connect();
        await c.query('SELECT 1');
        return true;
      } finally {
        await c.end().catch(() => {});
      }
    });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.end().catch(() => {})));
  });
  afterAll(async () => {
    await cli?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("pgBouncer's counters and gauges and the proxy's sessions add up both workers', as the console's SHOWs do", async () => {
    const labels = { database };
    const pool = { database, user };
    // Whatever the ready check left has gone.
    await expect.poll(async () => (await scrape(metricsPort)).value('pg_steadytext_proxy_client_connections'), { timeout: 10_000 }).toBe(0);
    const before = await scrape(metricsPort);
    const made = await onBothWorkers();
    const [a, b] = [made[0], made.find((c) => workerOf(c) !== workerOf(made[0]))!];
    const sqlsA = ['SELECT 1 AS v', "SELECT repeat('x', 100) AS v"];
    const sqlsB = ['SELECT 2 AS v', 'SELECT 3 AS v', 'SELECT pg_sleep(0.01)'];
    for (const sql of sqlsA) await a.query(sql);
    for (const sql of sqlsB) await b.query(sql);
    const after = await scrape(metricsPort);

    const sent = [...sqlsA, ...sqlsB];
    expect(delta(before, after, 'pgbouncer_stats_queries_pooled_total', labels)).toBe(sent.length);
    expect(delta(before, after, 'pgbouncer_stats_received_bytes_total', labels)).toBe(sent.reduce((n, s) => n + queryBytes(s), 0));
    expect(after.value('pgbouncer_pools_client_active_connections', pool)).toBe(made.length);
    expect(after.value('pgbouncer_databases_current_client_connections', { name: database })).toBe(made.length);
    expect(after.value('pgbouncer_used_clients')).toBeGreaterThanOrEqual(made.length);
    // One row per database, pool and family, not one per worker.
    expect(after.text.match(/^pgbouncer_up /gm)).toHaveLength(1);
    expect(after.text.match(new RegExp(`^pgbouncer_pools_client_active_connections\\{database="${database}",user=`, 'gm'))).toHaveLength(1);
    expect(after.value('pgbouncer_databases_pool_size', { name: database })).toBe(2);
    expect(after.value('pgbouncer_config_max_client_connections')).toBe(100);
    // The proxy's own: every worker's sessions.
    expect(after.value('pg_steadytext_proxy_client_connections')).toBe(made.length);
    expect(delta(before, after, 'pg_steadytext_proxy_accepted_connections_total')).toBe(made.length);
    expect(delta(before, after, 'pg_steadytext_proxy_client_received_bytes_total')).toBeGreaterThanOrEqual(sent.reduce((n, s) => n + queryBytes(s), 0));

    // The console, on whichever worker, reads the same sums.
    const console = await connect('pgbouncer');
    const stats = (await console.query('SHOW STATS')).rows.find((r: { database: string }) => r.database === database) as Record<string, string>;
    const poolRow = (await console.query('SHOW POOLS')).rows.find((r: { database: string; user: string }) => r.database === database && r.user === user) as Record<string, string | number>;
    const now = await scrape(metricsPort);
    expect(Number(stats.total_query_count)).toBe(now.value('pgbouncer_stats_queries_pooled_total', labels));
    expect(Number(stats.total_received)).toBe(now.value('pgbouncer_stats_received_bytes_total', labels));
    expect(Number(stats.total_sent)).toBe(now.value('pgbouncer_stats_sent_bytes_total', labels));
    expect(Number(poolRow.cl_active)).toBe(now.value('pgbouncer_pools_client_active_connections', pool));
    expect(Number(poolRow.sv_idle) + Number(poolRow.sv_active)).toBe((now.value('pgbouncer_pools_server_idle_connections', pool) ?? 0) + (now.value('pgbouncer_pools_server_active_connections', pool) ?? 0));
    expect(now.value('pg_steadytext_proxy_client_connections')).toBe(made.length + 1);

    for (const c of made) await c.end();
    await expect.poll(async () => (await scrape(metricsPort)).value('pgbouncer_pools_client_active_connections', pool), { timeout: 10_000 }).toBe(0);
    expect((await scrape(metricsPort)).value('pg_steadytext_proxy_client_connections')).toBe(1);
  });

  test("SHOW STEADYTEXT on a worker's console lists the calls the primary served under their database, as the endpoint does", async () => {
    const [c] = await onBothWorkers();
    const model = { database, model: 'generation:small' };
    const before = await scrape(metricsPort);
    await c.query(`SELECT steadytext_generate('metrics across workers', 8) AS v`);
    const after = await scrape(metricsPort);
    expect(delta(before, after, 'pg_steadytext_calls_total', model)).toBe(1);
    const calls = after.value('pg_steadytext_calls_total', model)!;
    // Both workers' consoles: each shows the primary's rows.
    const seen = new Set<number>();
    for (let i = 0; i < 8 && seen.size < 2; i++) {
      const console = await connect('pgbouncer');
      const rows = (await console.query('SHOW STEADYTEXT')).rows;
      expect(rows).toContainEqual(expect.objectContaining({ database, model: 'generation:small', calls: String(calls) }));
      const own = (await console.query('SHOW CLIENTS')).rows.find((r: { port: number }) => Number(r.port) === localPort(console));
      seen.add(Number(own.id) % 2);
      await console.end();
    }
    expect(seen.size).toBe(2);
  });
});

describe('without pooling: --metrics-listen', () => {
  test("the proxy's sessions and the steadytext calls, no pgbouncer_* figures", async () => {
    const port = await freePort();
    const metricsPort = await freePort();
    const admin = adminUrl();
    const cli = await runCli(
      ['serve', '--listen', `127.0.0.1:${port}`, '--upstream', admin.toString(), '--metrics-listen', `127.0.0.1:${metricsPort}`],
      {},
      async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).ok,
    );
    const clients: pg.Client[] = [];
    try {
      const url = new URL(admin);
      url.host = `127.0.0.1:${port}`;
      for (let i = 0; i < 2; i++) {
        const c = new pg.Client(url.toString());
        c.on('error', () => {});
        clients.push(c);
        await c.connect();
      }
      const before = await scrape(metricsPort);
      expect(before.value('pg_steadytext_proxy_client_connections')).toBe(2);
      expect(before.text).not.toMatch(/^pgbouncer_/m);
      await clients[0].query(`SELECT steadytext_embed('metrics')::text AS v`);
      const after = await scrape(metricsPort);
      expect(after.value('pg_steadytext_calls_total', { database, model: 'embedding:small' })).toBe(1);
      expect(after.value('pg_steadytext_call_duration_seconds_count', { database, model: 'embedding:small' })).toBe(1);
      expect(delta(before, after, 'pg_steadytext_proxy_client_received_bytes_total')).toBeGreaterThan(0);
      expect(delta(before, after, 'pg_steadytext_proxy_intercepted_messages_total')).toBeGreaterThanOrEqual(1);
      await clients[1].end();
      await expect.poll(async () => (await scrape(metricsPort)).value('pg_steadytext_proxy_client_connections')).toBe(1);
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
      await cli.stop();
    }
  });

  test("--workers 2: the proxy's sessions and bytes are both workers' added up", async () => {
    const port = await freePort();
    const metricsPort = await freePort();
    const admin = adminUrl();
    const url = new URL(admin);
    url.host = `127.0.0.1:${port}`;
    const clients: pg.Client[] = [];
    const open = async () => {
      const c = new pg.Client(url.toString());
      c.on('error', () => {});
      clients.push(c);
      await c.connect();
      return c;
    };
    const cli = await runCli(
      ['serve', '--workers', '2', '--listen', `127.0.0.1:${port}`, '--upstream', admin.toString(), '--metrics-listen', `127.0.0.1:${metricsPort}`],
      {},
      // Ready once a worker answers (the endpoint listens before they start).
      async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).ok && (await open().then((c) => c.end().then(() => true))),
    );
    try {
      await expect.poll(async () => (await scrape(metricsPort)).value('pg_steadytext_proxy_client_connections'), { timeout: 10_000 }).toBe(0);
      const before = await scrape(metricsPort);
      const made = [await open()];
      while (new Set(made.map(workerOf)).size < 2) {
        if (made.length > 6) throw new Error('connections never reached the second worker');
        made.push(await open());
      }
      for (const c of made) await c.query('SELECT 1 AS v');
      const after = await scrape(metricsPort);
      expect(after.value('pg_steadytext_proxy_client_connections')).toBe(made.length);
      expect(delta(before, after, 'pg_steadytext_proxy_accepted_connections_total')).toBe(made.length);
      expect(delta(before, after, 'pg_steadytext_proxy_client_received_bytes_total')).toBeGreaterThanOrEqual(made.length * queryBytes('SELECT 1 AS v'));
      expect(after.text).not.toMatch(/^pgbouncer_/m);
      await made[0].end();
      await expect.poll(async () => (await scrape(metricsPort)).value('pg_steadytext_proxy_closed_connections_total'), { timeout: 10_000 }).toBe((before.value('pg_steadytext_proxy_closed_connections_total') ?? 0) + 1);
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
      await cli.stop();
    }
  });

  test('a metrics-listen that is not host:port stops the start with a message naming it', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', '--metrics-listen', 'everywhere'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(code).toBe(2);
    expect(err).toContain('metrics-listen');
  });
});

describe('the endpoint alone', () => {
  test('a source that throws costs that scrape a 500; the next one is served', async () => {
    let broken = true;
    const server = await startMetricsServer({
      listen: { host: '127.0.0.1', port: 0 },
      logger: silentLogger,
      sources: {
        steadytext: () => {
          if (broken) throw new Error('source failed');
          return { calls: [{ database: 'a"b\\c\nd', model: 'generation:small', calls: 3, cacheHits: 1, errors: 0, computed: 2, latencySumUs: 1500, p50LatencyUs: 500, p99LatencyUs: 1000 }], models: [] };
        },
      },
    });
    try {
      const url = `http://127.0.0.1:${server.address.port}/metrics`;
      expect((await fetch(url)).status).toBe(500);
      broken = false;
      const s = await scrape(server.address.port);
      // Label values escaped as the format says: backslash, double quote, newline.
      expect(s.text).toContain('pg_steadytext_calls_total{database="a\\"b\\\\c\\nd",model="generation:small"} 3');
      expect(s.text).toContain('pg_steadytext_call_duration_seconds{database="a\\"b\\\\c\\nd",model="generation:small",quantile="0.99"} 0.001');
      expect(s.text).toContain('pg_steadytext_call_duration_seconds_sum{database="a\\"b\\\\c\\nd",model="generation:small"} 0.0015');
    } finally {
      await server.close();
    }
  });

  test('an address in use is refused at start', async () => {
    const first = await startMetricsServer({ listen: { host: '127.0.0.1', port: 0 }, logger: silentLogger, sources: {} });
    try {
      await expect(startMetricsServer({ listen: first.address, logger: silentLogger, sources: {} })).rejects.toThrow(/EADDRINUSE/);
    } finally {
      await first.close();
    }
  });
});
