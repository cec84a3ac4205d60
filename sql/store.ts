// Writes the proxy makes through its service connection (the role that owns the steadytext objects):
// model identities and cache entries. The daemon endpoint and the proxy's prefetch path share them, so
// every path stores the same rows under the same keys.
import type pg from 'pg';
import { callKey } from '../inference/cache-key.js';
import { quoteIdent, SERVICE_SEARCH_PATH } from './install.js';

import type { Queryable, Statement } from './handover.js';
import { vectorBinary } from './answers.js';

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
  | { op: 'embed'; identity: string; text: string; seed: number; /** The floats, or pgvector text (vectorText). */ embedding: Float32Array | string };

/** The key of an entry, as steadytext_cache_key computes it in the database: callKey, the function the
 *  engine's result cache keys its answers with too. */
export function entryKey(e: CacheEntry): string {
  return callKey(e);
}

/** The columns of one entry's steadytext_cache row, in insertCacheRows' order; an embedding in pgvector's binary form. */
export function cacheRow(key: string, e: CacheEntry): (string | Buffer | null)[] {
  return e.op === 'embed'
    ? [key, e.op, e.identity, JSON.stringify({ seed: e.seed }), e.text, null, vectorBinary(e.embedding)]
    : [key, e.op, e.identity, JSON.stringify({ max_tokens: e.maxTokens, seed: e.seed, temperature: e.temperature }), e.prompt, e.response, null];
}

/** Inserts or refreshes one steadytext_cache row; returns its key. */
export async function storeCacheEntry(q: Queryable, e: CacheEntry, schema = 'public'): Promise<string> {
  const r = cacheRowQuery(schema, e);
  await q.query(r.text, r.values);
  return r.values[0] as string;
}

/** The INSERT of one entry's row and its parameters. */
export function cacheRowQuery(schema: string, e: CacheEntry): Statement {
  return { text: insertCacheRows(schema, 1), values: cacheRow(entryKey(e), e) };
}

/**
 * A multi-row INSERT of n cache rows ($1..$7 per row, in the order of the columns below). The embedding
 * parameter stays untyped: it takes the column's type (pgvector's, wherever it lives) by assignment,
 * which calls that type's receive function directly (cacheRow gives it in binary), no name looked up.
 * ON CONFLICT names the key, no operator.
 */
export function insertCacheRows(schema: string, n: number): string {
  const row = (r: number) => {
    const p = (c: number) => `$${r * 7 + c}`;
    return `(${p(1)}::pg_catalog.text, ${p(2)}::pg_catalog.text, ${p(3)}::pg_catalog.text, ${p(4)}::pg_catalog.jsonb, ${p(5)}::pg_catalog.text, ${p(6)}::pg_catalog.text, ${p(7)})`;
  };
  return `INSERT INTO ${quoteIdent(schema)}.steadytext_cache (cache_key, operation, model_identity, params, prompt, response, embedding)
     VALUES ${Array.from({ length: n }, (_, r) => row(r)).join(', ')}
     ON CONFLICT (cache_key) DO UPDATE SET response = EXCLUDED.response, embedding = EXCLUDED.embedding, created_at = pg_catalog.now()`;
}
