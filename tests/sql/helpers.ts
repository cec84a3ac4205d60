// Shared helpers of the SQL suites: a fresh database per test file (template1 carries vector and
// dblink), clients to it, and the real engine on the tiny fixture models.
import { randomBytes } from 'node:crypto';
import { inject, onTestFinished } from 'vitest';
import pg from 'pg';
import pino from 'pino';
import { createEngine, type Engine } from '../../inference/engine.js';
import { tinyModels } from '../fixtures/models.js';
import type { SteadytextInterceptor } from '../../sql/interceptor.js';
import type { Stack } from '../api/helpers.js';

export const silentLogger = pino({ level: 'silent' });

export interface TestDatabase {
  name: string;
  /** Superuser URL of the fresh database. */
  url: string;
  /** URL of the same database for another role. */
  urlAs(user: string, password: string): string;
  connect(url?: string): Promise<pg.Client>;
  /** Runs one statement as the superuser on a short-lived connection. */
  query<T extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<T[]>;
  drop(): Promise<void>;
}

export async function adminQuery(sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const c = new pg.Client(inject('db').adminUrl);
  await c.connect();
  try {
    return await c.query(sql, params);
  } finally {
    await c.end();
  }
}

export async function freshDatabase(prefix: string, template = 'template1'): Promise<TestDatabase> {
  const name = `${prefix}_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name} TEMPLATE ${template}`);
  const at = (base: string, user?: string, password?: string) => {
    const u = new URL(base);
    u.pathname = `/${name}`;
    if (user !== undefined) {
      u.username = encodeURIComponent(user);
      u.password = encodeURIComponent(password ?? '');
    }
    return u.toString();
  };
  const url = at(inject('db').adminUrl);
  const clients = new Set<pg.Client>();
  const connect = async (to = url) => {
    const c = new pg.Client(to);
    c.on('error', () => {});
    await c.connect();
    clients.add(c);
    c.once('end', () => clients.delete(c));
    return c;
  };
  return {
    name,
    url,
    urlAs: (user, password) => at(inject('db').adminUrl, user, password),
    connect,
    async query(sql, params = []) {
      const c = await connect();
      try {
        return (await c.query(sql, params)).rows;
      } finally {
        await c.end();
      }
    },
    async drop() {
      await Promise.all([...clients].map((c) => c.end().catch(() => undefined)));
      await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/** A login role for privilege tests (removed by dropRole). */
export async function createRole(prefix: string): Promise<{ user: string; password: string }> {
  const user = `${prefix}_${randomBytes(3).toString('hex')}`;
  const password = randomBytes(8).toString('hex');
  await adminQuery(`CREATE ROLE ${user} LOGIN PASSWORD '${password}'`);
  return { user, password };
}

export async function dropRole(user: string, databases: TestDatabase[] = []): Promise<void> {
  for (const db of databases) await db.query(`DROP OWNED BY ${user}`).catch(() => undefined);
  await adminQuery(`DROP ROLE IF EXISTS ${user}`);
}

/** The real engine on the tiny fixture models (no download, engine cache off so every path computes). */
export async function tinyEngine(): Promise<Engine> {
  const models = await tinyModels();
  return createEngine({
    generationModel: models.generation, embeddingModel: models.embedding, autoDownload: false,
    cacheBytes: 0, cacheDir: '/tmp/pg-steadytext-test-models', logger: silentLogger,
  });
}

/** Message and SQLSTATE of a failing query (fails the test if it succeeds). */
export async function pgError(p: Promise<unknown>): Promise<{ code: string; message: string; hint?: string; detail?: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as { code?: string; message: string; hint?: string; detail?: string };
    return { code: err.code ?? '', message: err.message, hint: err.hint, detail: err.detail };
  }
  throw new Error('expected the query to fail');
}

/** Counts the in-band requests `interceptor` takes (from any session) until the test ends. */
export function countTaken(interceptor: Pick<SteadytextInterceptor, 'notice'>): { n: number } {
  const notice = interceptor.notice.bind(interceptor);
  const counter = { n: 0 };
  interceptor.notice = (...a: Parameters<typeof notice>) => {
    const mine = notice(...a);
    if (mine) counter.n++;
    return mine;
  };
  onTestFinished(() => void (interceptor.notice = notice));
  return counter;
}

/** The seed document's deterministic_expand: the in-band suites' PL/pgSQL function the proxy cannot see into. */
export const DETERMINISTIC_EXPAND = `
    CREATE OR REPLACE FUNCTION deterministic_expand(topic TEXT, seed INT DEFAULT 42) RETURNS TEXT AS $$
    BEGIN
        RETURN steadytext_generate('Write a detailed explanation about ' || topic, max_tokens := 200, seed := seed);
    END;
    $$ LANGUAGE plpgsql;`;

/** The prompt deterministic_expand sends for `topic`. */
export const EXPAND = (topic: string) => `Write a detailed explanation about ${topic}`;

/** Empties steadytext_cache and the proxy's memory of it: the next call misses. */
export async function freshCache(s: Stack, direct: pg.Client): Promise<void> {
  await s.databases.get(s.database).flush(); // cache rows of earlier answers still being written
  await direct.query('TRUNCATE steadytext_cache');
  s.interceptor.forgetStored();
}
