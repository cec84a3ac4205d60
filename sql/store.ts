// Writes the proxy makes through its service connection (the role that owns the steadytext objects):
// model identities and cache entries. The daemon endpoint and the proxy's prefetch path share them, so
// every path stores the same rows under the same keys.
import pg from 'pg';
import { callKey } from '../inference/cache-key.js';
import { quoteIdent, SERVICE_SEARCH_PATH } from './install.js';

import type { Queryable } from './handover.js';

/**
 * The settings of a connection the proxy makes as its own role (pg.Client or pg.Pool): its search_path
 * pinned at connection start to SERVICE_SEARCH_PATH, after any `options` the URL carries (the last -c
 * wins), so that no object another role creates (in public, in a schema named after the service role:
 * "$user" comes first by default) is ever found by name in what the proxy runs with the service
 * role's privileges.
 */
export function serviceConnection(url: string, applicationName: string, settings: readonly string[] = []): pg.ClientConfig & pg.PoolConfig {
  const u = new URL(url);
  const own = u.searchParams.get('options');
  u.searchParams.set('options', [own, ...settings.map((s) => `-c ${s}`), `-c search_path=${SERVICE_SEARCH_PATH.replaceAll(' ', '')}`].filter(Boolean).join(' '));
  return { connectionString: u.toString(), application_name: applicationName };
}

export type ModelRole = 'generation' | 'embedding';
export interface ModelIdentity { role: ModelRole; size: string; identity: string }

/** Records which model file answers (role, size); the SQL functions look the identity up for the key. */
export async function registerModels(q: Queryable, identities: readonly ModelIdentity[], schema = 'public'): Promise<void> {
  for (const m of identities) {
    await q.query(
      `INSERT INTO ${quoteIdent(schema)}.steadytext_models AS m (role, size, identity, updated_at)
       VALUES ($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text, pg_catalog.now())
       ON CONFLICT (role, size) DO UPDATE SET identity = EXCLUDED.identity, updated_at = pg_catalog.now()
       WHERE m.identity OPERATOR(pg_catalog.<>) EXCLUDED.identity`,
      [m.role, m.size, m.identity]);
  }
}

export type CacheEntry =
  | { op: 'generate' | 'generate_stream'; identity: string; prompt: string; maxTokens: number; seed: number; temperature: number;
      /** The answer as the SQL function returns it: text, or for generate_stream the JSON array (streamAnswer). */
      response: string }
  | { op: 'embed'; identity: string; text: string; seed: number; /** pgvector text (vectorText). */ embedding: string };

/** The key of an entry, as steadytext_cache_key computes it in the database: callKey, the function the
 *  engine's result cache keys its answers with too. */
export function entryKey(e: CacheEntry): string {
  return callKey(e);
}

/** The columns of one entry's steadytext_cache row, in insertCacheRows' order. */
export function cacheRow(key: string, e: CacheEntry): (string | null)[] {
  return e.op === 'embed'
    ? [key, e.op, e.identity, JSON.stringify({ seed: e.seed }), e.text, null, e.embedding]
    : [key, e.op, e.identity, JSON.stringify({ max_tokens: e.maxTokens, seed: e.seed, temperature: e.temperature }), e.prompt, e.response, null];
}

/** Inserts or refreshes one steadytext_cache row; returns its key. */
export async function storeCacheEntry(q: Queryable, e: CacheEntry, schema = 'public'): Promise<string> {
  const key = entryKey(e);
  await q.query(insertCacheRows(schema, 1), cacheRow(key, e));
  return key;
}

/** insertCacheRows of one entry with its values inlined, for a statement list sent in one round trip (Database.commitThenWake). */
export function cacheRowStatement(schema: string, e: CacheEntry): string {
  return insertCache(schema, [cacheRow(entryKey(e), e).map((v) => (v === null ? 'NULL' : literal(v)))]);
}

/**
 * A string literal. One with no quote or backslash (an embedding's text, most answers) as it is: the same
 * under either standard_conforming_strings, and escapeLiteral's character-by-character copy of a 1024-float
 * vector took ~0.1 ms on the in-band answer's path.
 */
function literal(v: string): string {
  return /['\\]/.test(v) ? pg.escapeLiteral(v) : `'${v}'`;
}

/**
 * A multi-row INSERT of n cache rows ($1..$7 per row, in the order of the columns below). The embedding
 * parameter stays untyped: it takes the column's type (pgvector's, wherever it lives) by assignment,
 * which calls that type's input function directly, no name looked up. ON CONFLICT names the key, no
 * operator.
 */
export function insertCacheRows(schema: string, n: number): string {
  return insertCache(schema, Array.from({ length: n }, (_, r) => Array.from({ length: 7 }, (_, c) => `$${r * 7 + c + 1}`)));
}

/** The INSERT of rows given as their seven SQL expressions each (parameters or literals). */
function insertCache(schema: string, rows: string[][]): string {
  const row = (v: string[]) => `(${v[0]}::pg_catalog.text, ${v[1]}::pg_catalog.text, ${v[2]}::pg_catalog.text, ${v[3]}::pg_catalog.jsonb, ${v[4]}::pg_catalog.text, ${v[5]}::pg_catalog.text, ${v[6]})`;
  return `INSERT INTO ${quoteIdent(schema)}.steadytext_cache (cache_key, operation, model_identity, params, prompt, response, embedding)
     VALUES ${rows.map(row).join(', ')}
     ON CONFLICT (cache_key) DO UPDATE SET response = EXCLUDED.response, embedding = EXCLUDED.embedding, created_at = pg_catalog.now()`;
}
