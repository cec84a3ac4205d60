// Shared helpers of the issue-10 acceptance suites in tests/security: superuser queries straight to the
// stack's database, roles, cache rows by prompt, error capture, and what the engine did meanwhile.
import pg from 'pg';
import type { Stack } from '../api/helpers.js';
import { adminQuery } from '../sql/helpers.js';
import * as P from '../../proxy/protocol.js';
import { RawClient, startupPacket } from '../proxy/helpers.js';

export { createRole } from '../sql/helpers.js';

/** Runs statements as the superuser straight to the stack's database (not through the proxy). */
export async function direct<T extends pg.QueryResultRow = pg.QueryResultRow>(s: Stack, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client(s.directUrl);
  c.on('error', () => {});
  await c.connect();
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end();
  }
}

/** Waits for the steadytext objects in the stack's database (what the first steadytext statement does). */
export async function installed(s: Stack): Promise<void> {
  await s.databases.get(s.database).ready();
}

/** steadytext_cache rows whose input (prompt or embedded text) is one of these. */
export async function cacheRows(s: Stack, ...inputs: string[]): Promise<number> {
  const r = await direct<{ n: number }>(s, 'SELECT count(*)::int AS n FROM steadytext_cache WHERE prompt = ANY($1::text[])', [inputs]);
  return r[0].n;
}

/** Requests the engine has served so far (its result-cache hits included). */
export const engineRequests = (s: Stack): number => s.engine.status().requestsProcessed;

export interface PgErr { code: string; message: string }

/** The error of a failing promise, or the value it resolved with (as `ok`). */
export async function outcome<T>(p: Promise<T>): Promise<{ ok: T } | { error: PgErr }> {
  try {
    return { ok: await p };
  } catch (e) {
    const err = e as { code?: string; message?: string };
    return { error: { code: err.code ?? '', message: err.message ?? String(e) } };
  }
}

/** SQLSTATE of a failing query; fails the test if it succeeds. */
export async function sqlstate(p: Promise<unknown>): Promise<string> {
  const r = await outcome(p);
  if ('ok' in r) throw new Error(`expected the query to fail, it returned ${JSON.stringify((r.ok as pg.QueryResult)?.rows ?? r.ok)}`);
  return r.error.code;
}

/** Drops login roles created with createRole (after the stack's database is gone). */
export async function dropRoles(...users: string[]): Promise<void> {
  for (const u of users) await adminQuery(`DROP ROLE IF EXISTS ${u}`).catch(() => undefined);
}

/** Greedy generation as the SQL function does it with the default seed. */
export function generate(s: Stack, prompt: string, maxTokens: number): Promise<string> {
  return s.engine.generate({ prompt, maxTokens, seed: 42, temperature: 0 });
}

// ---- raw wire protocol: what drivers never send (several messages in one write) ----------------------

/** One statement's answer in a raw session: its rows (text columns) and its error, if any. */
export interface RawStatement { rows: (Buffer | null)[][]; tag?: string; error?: Record<string, string> }

/** Frontend messages (the proxy's own codec), to be concatenated into one write. */
export const fe = {
  query: (sql: string | Buffer) => P.query(sql),
  parse: (sql: string | Buffer, name = '') => P.parse(name, sql),
  bind: (params: (string | null)[] = [], portal = '', statement = '') =>
    P.bind({ portal, statement, paramFormats: [], params: params.map((v) => (v === null ? null : Buffer.from(v))), resultFormats: [] }),
  execute: (portal = '') => P.execute(portal),
  sync: () => P.SYNC,
};

/**
 * Opens a raw session through the proxy as trust_user (no password) to the stack's database, writes
 * `bytes` in one write, and collects the answers until `readyCount` ReadyForQuery have arrived.
 */
export async function rawPipeline(s: Stack, bytes: Buffer, readyCount: number, startup: Record<string, string> = {}, timeoutMs = 30_000): Promise<RawStatement[]> {
  const c = await RawClient.open(s.proxy.address.port, s.proxy.address.host);
  try {
    c.write(startupPacket({ user: 'trust_user', database: s.database, application_name: 'security-raw', ...startup }));
    await c.waitFor('Z', timeoutMs);
    const start = c.messages.length;
    c.write(bytes);
    await c.until(() => c.messages.slice(start).filter((m) => m.type === 'Z').length >= readyCount, timeoutMs, `${readyCount} x ReadyForQuery`);
    const out: RawStatement[] = [];
    let cur: RawStatement = { rows: [] };
    for (const m of c.messages.slice(start)) {
      if (m.type === 'D') cur.rows.push(P.readDataRow(m.bytes).map((v) => (v === null ? null : Buffer.from(v))));
      else if (m.type === 'd') cur.rows.push([Buffer.from(m.body)]); // CopyData of COPY ... TO STDOUT
      else if (m.type === 'C') { cur.tag = m.body.toString('latin1', 0, m.body.length - 1); out.push(cur); cur = { rows: [] }; }
      else if (m.type === 'E') { cur.error = P.readErrorFields(m.bytes); out.push(cur); cur = { rows: [] }; }
    }
    return out;
  } finally {
    c.destroy();
  }
}
