// The in-band transport with a transaction pooler between the proxy and PostgreSQL (--upstream-pooled): the
// backend that raises a request is not the one whose pid the session saw at login, and may change from one
// transaction to the next. The pooler here is pg-steadytext's own, in transaction mode, with no steadytext layer:
// like pgBouncer it gives clients a cancel key of its own. Requests are then taken by signature, login role and
// an id used once; a signed request replayed, by the same role or another, computes nothing again.
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { appendFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { inject } from 'vitest';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import { startProxy, type ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';
import { createSteadytextInterceptor, type SteadytextInterceptor } from '../../sql/interceptor.js';
import { inbandStack, silent, type Stack } from '../api/helpers.js';
import { tinyModels } from '../fixtures/models.js';
import { freePort } from '../setup/cluster.js';
import { eventually, spawnCli, writePgbouncerIni } from '../proxy/helpers.js';
import { countTaken, DETERMINISTIC_EXPAND, EXPAND, freshCache, pgError } from './helpers.js';

let s: Stack;
let direct: pg.Client;
let pooler: { proxy: ProxyServer; pooling: PoolingEnv };
const fronts: ProxyServer[] = [];

type Notice = { message?: string; detail?: string; hint?: string };

/** A proxy with the steadytext layer in front of the pooler, told (or not) that its upstream pools. */
async function front(upstreamPooled: boolean): Promise<{ proxy: ProxyServer; interceptor: SteadytextInterceptor }> {
  const interceptor = createSteadytextInterceptor({ engine: s.engine, databases: s.databases, daemon: s.daemon.address, logger: silent, upstreamPooled });
  await interceptor.ready;
  const proxy = await startProxy({
    listen: { host: '127.0.0.1', port: 0 },
    upstream: `postgres://127.0.0.1:${pooler.proxy.address.port}/postgres?sslmode=disable`,
    maxMessageBytes: 64 * 1024 * 1024, shutdownGraceMs: 1000, connectTimeoutMs: 3000, logger: silent, interceptor,
  });
  fronts.push(proxy);
  return { proxy, interceptor };
}

function urlThrough(proxy: ProxyServer, user?: string, password = ''): string {
  const u = new URL(s.directUrl);
  u.hostname = '127.0.0.1';
  u.port = String(proxy.address.port);
  if (user !== undefined) {
    u.username = user;
    u.password = password;
  }
  return u.toString();
}

async function client(url: string): Promise<{ c: pg.Client; notices: Notice[] }> {
  const c = new pg.Client(url);
  const notices: Notice[] = [];
  c.on('notice', (n) => notices.push(n));
  c.on('error', () => {});
  await c.connect();
  onTestFinished(() => void c.end().catch(() => {}));
  return { c, notices };
}

/** The answer the rewrite path gives through the stack's own proxy (the call seen with constant arguments). */
async function rewritten(topic: string): Promise<string> {
  const c = await s.connect();
  try {
    return (await c.query('SELECT steadytext_generate($1, max_tokens := 200, seed := 42) AS v', [EXPAND(topic)])).rows[0].v as string;
  } finally {
    await c.end();
  }
}

const fresh = () => freshCache(s, direct);

beforeAll(async () => {
  ({ s, direct } = await inbandStack('st_inpool'));
  await direct.query(DETERMINISTIC_EXPAND);
  await direct.query(`
    CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, emb vector(1024));
    CREATE FUNCTION wrap_embed(t text) RETURNS vector LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_embed(t); END $$;
    GRANT SELECT ON notes TO trust_user;`);
  const admin = new URL(inject('db').adminUrl);
  const dir = mkdtempSync(join(tmpdir(), 'inband-pooler-'));
  const ini = writePgbouncerIni(dir, {
    port: 6432, user: decodeURIComponent(admin.username), password: decodeURIComponent(admin.password),
    databases: [`${s.database} = host=${admin.hostname} port=${admin.port} dbname=${s.database}`],
    // trust: another role logs in too (trust_user, which the cluster trusts); the superuser's server login takes its password from the auth_file.
    pgbouncer: ['pool_mode = transaction', 'default_pool_size = 3', 'auth_type = trust'],
  });
  appendFileSync(join(dir, 'userlist.txt'), '"trust_user" ""\n');
  const pooling = createPooling({
    config: loadPgBouncerConfig(ini),
    defaultTarget: parseUpstreamUrl(`postgres://${admin.hostname}:${admin.port}/?sslmode=disable`),
    logger: silent,
  });
  pooler = { proxy: await startProxy({ listen: { host: '127.0.0.1', port: 0 }, upstream: `postgres://${admin.hostname}:${admin.port}/postgres?sslmode=disable`, maxMessageBytes: 64 * 1024 * 1024, shutdownGraceMs: 1000, connectTimeoutMs: 3000, logger: silent, pooling }), pooling };
}, 180_000);

afterAll(async () => {
  for (const p of fronts) await p.close(100);
  await pooler?.proxy.close(100);
  pooler?.pooling.pooler.close();
  await direct?.end();
  await s?.stop();
});

describe('in-band behind a transaction pooler (--upstream-pooled)', () => {
  test('a PL/pgSQL call and a statement missing row after row get the rewrite path’s answers; the login pid is the pooler’s', async () => {
    await fresh();
    const { proxy, interceptor } = await front(true);
    const { c, notices } = await client(urlThrough(proxy));
    const taken = countTaken(interceptor);
    // The pooler's cancel key, not the backend's pid: what the proxy cannot go by.
    const backend = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    expect((c as unknown as { processID: number }).processID).not.toBe(backend);
    const got = (await c.query(`SELECT deterministic_expand('behind a pooler') AS v`)).rows[0].v as string;
    await direct.query(`TRUNCATE notes; INSERT INTO notes (id, body) SELECT i, 'pooled note ' || i FROM generate_series(1, 6) i`);
    const r = await c.query('SELECT id, wrap_embed(body)::text AS emb FROM notes ORDER BY id');
    expect(notices).toEqual([]);
    expect(taken.n).toBeGreaterThanOrEqual(2);
    expect(r.rows).toHaveLength(6);
    const third = r.rows[2] as { id: number; emb: string };
    await fresh();
    expect(got).toBe(await rewritten('behind a pooler'));
    const c2 = await s.connect();
    try {
      expect(third.emb).toBe((await c2.query('SELECT steadytext_embed($1)::text AS v', ['pooled note 3'])).rows[0].v);
    } finally {
      await c2.end();
    }
  });

  test('without --upstream-pooled the request names a backend the session did not log in to: nothing is computed, the call times out', async () => {
    await fresh();
    const { proxy, interceptor } = await front(false);
    const { c } = await client(urlThrough(proxy));
    const taken = countTaken(interceptor);
    await c.query(`SELECT steadytext_config_set('daemon_timeout_ms', '1000')`);
    onTestFinished(async () => void (await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '30000')`)));
    const e = await pgError(c.query(`SELECT deterministic_expand('not behind a pooler, says the proxy') AS v`));
    expect(e.code).toBe('57014');
    expect(e.message).toMatch(/no pg-steadytext proxy answered/);
    expect(taken.n).toBe(0);
  });

  test('the CLI’s --upstream-pooled: `serve` in front of the pooler answers a PL/pgSQL miss in-band; without it the call times out', async () => {
    await fresh();
    onTestFinished(async () => void (await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '30000')`)));
    const models = await tinyModels();
    const admin = new URL(inject('db').adminUrl);
    admin.pathname = `/${s.database}`;
    const answer = async (pooled: boolean, topic: string): Promise<string | pg.DatabaseError> => {
      const port = await freePort();
      const { child, output } = spawnCli(
        ['serve', '--upstream', `postgres://127.0.0.1:${pooler.proxy.address.port}/postgres?sslmode=disable`, '--listen', `127.0.0.1:${port}`,
          '--service-url', admin.toString(), '--daemon-listen', 'off', ...(pooled ? ['--upstream-pooled'] : [])],
        { PGSTEADYTEXT_GENERATION_MODEL: models.generation, PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding, PGSTEADYTEXT_LOG_LEVEL: 'warn' },
      );
      onTestFinished(() => void child.kill('SIGKILL'));
      const u = new URL(s.directUrl);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      await eventually(async () => {
        if (child.exitCode !== null) throw new Error(`pg-steadytext exited (${child.exitCode}):\n${output()}`);
        const probe = new pg.Client(u.toString());
        probe.on('error', () => {});
        try {
          await probe.connect();
          await probe.query('SELECT steadytext_version()');
          return true;
        } catch {
          return false;
        } finally {
          await probe.end().catch(() => {});
        }
      }, 60_000, 'the CLI proxy answering');
      const { c, notices } = await client(u.toString());
      try {
        const v = (await c.query(`SELECT deterministic_expand(${pg.escapeLiteral(topic)}) AS v`)).rows[0].v as string;
        expect(notices).toEqual([]);
        return v;
      } catch (e) {
        return e as pg.DatabaseError;
      } finally {
        child.kill('SIGTERM');
      }
    };
    const got = await answer(true, 'the CLI behind a pooler');
    await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '1500')`);
    const refused = await answer(false, 'the CLI not told of the pooler');
    expect(got instanceof Error ? `${got.code}: ${got.message}` : typeof got).toBe('string');
    expect((refused as pg.DatabaseError).code).toBe('57014');
    await fresh();
    expect(got).toBe(await rewritten('the CLI behind a pooler'));
  }, 180_000);

  test('a signed request replayed computes nothing: again by its own role, or by another role at all', async () => {
    await fresh();
    // A request as a session straight to the database sees it (no proxy hides it), then given up on.
    await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '300')`);
    onTestFinished(async () => void (await direct.query(`SELECT steadytext_config_set('daemon_timeout_ms', '30000')`)));
    const seen: Notice[] = [];
    const onNotice = (n: Notice) => seen.push(n);
    direct.on('notice', onNotice);
    onTestFinished(() => void direct.off('notice', onNotice));
    expect((await pgError(direct.query(`SELECT deterministic_expand('replayed') AS v`))).code).toBe('57014');
    const request = seen.find((n) => n.message === 'steadytext:inband');
    expect(request?.detail).toBeDefined();
    const { proxy, interceptor } = await front(true);
    const taken = countTaken(interceptor);
    const replay = `DO $$ BEGIN RAISE INFO 'steadytext:inband' USING DETAIL = ${pg.escapeLiteral(request!.detail!)}, HINT = ${pg.escapeLiteral(request!.hint!)}; END $$`;
    // Another role: the request names the superuser. The notice is its own, passed on; nothing computed.
    const other = await client(urlThrough(proxy, 'trust_user'));
    await other.c.query(replay);
    expect(other.notices.map((n) => n.message)).toEqual(['steadytext:inband']);
    expect(taken.n).toBe(0);
    // The same role: taken once (what it may ask for anyway), then never again.
    const same = await client(urlThrough(proxy));
    await same.c.query(replay);
    expect(taken.n).toBe(1);
    expect(same.notices).toEqual([]);
    await same.c.query(replay);
    expect(taken.n).toBe(1);
    expect(same.notices.map((n) => n.message)).toEqual(['steadytext:inband']);
  });
});
