// Under a pgbouncer.ini, the proxy's own service connection (installs, steadytext_cache writes) goes where the ini
// sends a database's clients: its [databases] entry's host, port and dbname, not the upstream or service URL's.
// The CLI runs as a real child process on the tiny test models, with an upstream and a service URL that point
// nowhere (port 1, another database) but carry the service role's credentials.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { inject } from 'vitest';
import { SQL_VERSION } from '../../sql/version.js';
import { tinyModels } from '../fixtures/models.js';
import { freePort } from '../setup/cluster.js';
import { spawnCli, writePgbouncerIni } from '../proxy/helpers.js';
import { adminQuery } from './helpers.js';

const real = `st_ini_${randomBytes(4).toString('hex')}`;
const alias = 'app_alias';
let dir: string;
let port: number;
let cli: ReturnType<typeof spawnCli>;
let user: string;
let password: string;

beforeAll(async () => {
  await adminQuery(`CREATE DATABASE ${real}`);
  const admin = new URL(inject('db').adminUrl);
  user = decodeURIComponent(admin.username);
  password = decodeURIComponent(admin.password);
  dir = mkdtempSync(join(tmpdir(), 'ini-service-'));
  port = await freePort();
  const ini = writePgbouncerIni(dir, {
    port, user, password,
    databases: [`${alias} = host=${admin.hostname} port=${admin.port} dbname=${real}`],
    pgbouncer: ['pool_mode = transaction'],
  });
  const models = await tinyModels();
  const nowhere = new URL(inject('db').adminUrl);
  nowhere.port = '1';
  nowhere.pathname = '/no_such_database';
  cli = spawnCli(['serve', '--config', ini], {
    PGSTEADYTEXT_DAEMON_LISTEN: 'off',
    PGSTEADYTEXT_UPSTREAM: 'postgres://127.0.0.1:1/nowhere',
    PGSTEADYTEXT_SERVICE_URL: nowhere.toString(),
    PGSTEADYTEXT_GENERATION_MODEL: models.generation,
    PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding,
  });
  const deadline = Date.now() + 60_000;
  while (!cli.output().includes('pg-steadytext ready')) {
    if (cli.child.exitCode !== null) throw new Error(`pg-steadytext exited before it was ready:\n${cli.output()}`);
    if (Date.now() > deadline) throw new Error(`pg-steadytext not ready after 60 s:\n${cli.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}, 90_000);

afterAll(async () => {
  if (cli && cli.child.exitCode === null) {
    const exited = new Promise((r) => cli.child.once('exit', r));
    cli.child.kill('SIGKILL');
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
  await adminQuery(`DROP DATABASE IF EXISTS ${real} WITH (FORCE)`).catch(() => {});
});

/** Runs `f` on a superuser connection straight to `database` (no proxy). */
async function inDatabase(database: string, f: (d: pg.Client) => Promise<void>): Promise<void> {
  const direct = new URL(inject('db').adminUrl);
  direct.pathname = `/${database}`;
  const d = new pg.Client(direct.toString());
  await d.connect();
  try {
    await f(d);
  } finally {
    await d.end();
  }
}

test('a database the ini aliases gets its SQL objects and its answers through the entry’s host, port and dbname', async () => {
  const c = new pg.Client(`postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${alias}`);
  await c.connect();
  try {
    const v = (await c.query(`SELECT steadytext_embed('routed by the ini')::text AS v`)).rows[0].v as string;
    expect(v.startsWith('[')).toBe(true);
    expect(v.split(',')).toHaveLength(1024);
    expect((await c.query('SELECT steadytext_version() AS v')).rows[0].v).toBe(SQL_VERSION);
  } finally {
    await c.end();
  }
  // Installed in the entry's dbname, the database the clients reach.
  await inDatabase(real, async (d) => {
    expect((await d.query('SELECT steadytext_version() AS v')).rows[0].v).toBe(SQL_VERSION);
  });
});

test('RELOAD (SIGHUP) that moves the database: the service connection follows, installs there and caches there', async () => {
  const moved = `${real}_moved`;
  await adminQuery(`CREATE DATABASE ${moved}`);
  try {
    const admin = new URL(inject('db').adminUrl);
    writePgbouncerIni(dir, {
      port, user, password,
      databases: [`${alias} = host=${admin.hostname} port=${admin.port} dbname=${moved}`],
      pgbouncer: ['pool_mode = transaction'],
    });
    const before = cli.output().length;
    cli.child.kill('SIGHUP');
    await expect.poll(() => cli.output().slice(before), { timeout: 10_000 }).toContain('service connections follow the reloaded configuration');
    const c = new pg.Client(`postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${alias}`);
    await c.connect();
    try {
      expect((await c.query('SELECT current_database() AS d')).rows[0].d).toBe(moved);
      const v = (await c.query(`SELECT steadytext_embed('after the move')::text AS v`)).rows[0].v as string;
      expect(v.split(',')).toHaveLength(1024);
    } finally {
      await c.end();
    }
    await inDatabase(moved, async (d) => {
      expect((await d.query('SELECT steadytext_version() AS v')).rows[0].v).toBe(SQL_VERSION);
      await expect.poll(async () => (await d.query('SELECT count(*)::int AS n FROM steadytext_cache')).rows[0].n, { timeout: 10_000 }).toBeGreaterThan(0);
    });
  } finally {
    await adminQuery(`DROP DATABASE IF EXISTS ${moved} WITH (FORCE)`).catch(() => {});
  }
});

test('with workers, a console RELOAD that moves the database: the installs the primary runs for the workers follow too', async () => {
  const from = `${real}_w1`;
  const to = `${real}_w2`;
  await adminQuery(`CREATE DATABASE ${from}`);
  await adminQuery(`CREATE DATABASE ${to}`);
  const wdir = mkdtempSync(join(tmpdir(), 'ini-workers-'));
  const wport = await freePort();
  const admin = new URL(inject('db').adminUrl);
  const ini = (dbname: string) => writePgbouncerIni(wdir, {
    port: wport, user, password,
    databases: [`${alias} = host=${admin.hostname} port=${admin.port} dbname=${dbname}`],
    pgbouncer: ['pool_mode = transaction', `admin_users = ${user}`],
  });
  const models = await tinyModels();
  // The service role's credentials, nowhere else: the ini's entry says where.
  const nowhere = new URL(inject('db').adminUrl);
  nowhere.port = '1';
  nowhere.pathname = '/no_such_database';
  const w = spawnCli(['serve', '--config', ini(from)], {
    PGSTEADYTEXT_DAEMON_LISTEN: 'off',
    PGSTEADYTEXT_SERVICE_URL: nowhere.toString(),
    PGSTEADYTEXT_WORKERS: '2',
    PGSTEADYTEXT_GENERATION_MODEL: models.generation,
    PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding,
  });
  const url = (db: string) => `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${wport}/${db}`;
  const embedVia = async () => {
    const c = new pg.Client(url(alias));
    await c.connect();
    try {
      return [(await c.query('SELECT current_database() AS d')).rows[0].d as string, (await c.query(`SELECT steadytext_embed('workers move')::text AS v`)).rows[0].v as string];
    } finally {
      await c.end();
    }
  };
  try {
    await expect.poll(() => w.output(), { timeout: 60_000 }).toContain('pg-steadytext ready');
    expect((await embedVia())[0]).toBe(from);
    ini(to);
    const console = new pg.Client(url('pgbouncer'));
    await console.connect();
    await console.query('RELOAD');
    await console.end();
    const [db, v] = await embedVia();
    expect(db).toBe(to);
    expect(v.split(',')).toHaveLength(1024);
    await inDatabase(to, async (d) => {
      expect((await d.query('SELECT steadytext_version() AS v')).rows[0].v).toBe(SQL_VERSION);
    });
  } finally {
    if (w.child.exitCode === null) {
      const exited = new Promise((r) => w.child.once('exit', r));
      w.child.kill('SIGKILL');
      await exited;
    }
    rmSync(wdir, { recursive: true, force: true });
    await adminQuery(`DROP DATABASE IF EXISTS ${from} WITH (FORCE)`).catch(() => {});
    await adminQuery(`DROP DATABASE IF EXISTS ${to} WITH (FORCE)`).catch(() => {});
  }
}, 120_000);
