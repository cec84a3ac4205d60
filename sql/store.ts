// Writes the proxy makes through its service connection (the role that owns the steadytext objects):
// model identities and cache entries. The daemon endpoint and the proxy's prefetch path share them, so
// every path stores the same rows under the same keys.
import type pg from 'pg';
import { cacheKey, embedParams, generateParams, type CacheOp } from './cache-key.js';
import { quoteIdent } from './install.js';

type Queryable = Pick<pg.ClientBase, 'query'> | Pick<pg.Pool, 'query'>;

export type ModelRole = 'generation' | 'embedding';
export interface ModelIdentity { role: ModelRole; size: string; identity: string }

/** Records which model file answers (role, size); the SQL functions look the identity up for the key. */
export async function registerModels(q: Queryable, identities: readonly ModelIdentity[], schema = 'public'): Promise<void> {
  for (const m of identities) {
    await q.query(
      `INSERT INTO ${quoteIdent(schema)}.steadytext_models AS m (role, size, identity, updated_at) VALUES ($1, $2, $3, now())
       ON CONFLICT (role, size) DO UPDATE SET identity = EXCLUDED.identity, updated_at = now()
       WHERE m.identity IS DISTINCT FROM EXCLUDED.identity`,
      [m.role, m.size, m.identity]);
  }
}

export type CacheEntry =
  | { op: 'generate' | 'generate_stream'; identity: string; prompt: string; maxTokens: number; seed: number; temperature: number;
      /** The answer as the SQL function returns it: text, or for generate_stream the JSON array (streamAnswer). */
      response: string }
  | { op: 'embed'; identity: string; text: string; seed: number; /** pgvector text (vectorText). */ embedding: string };

/** The key of an entry, as steadytext_cache_key computes it in the database. */
export function entryKey(e: CacheEntry): string {
  return e.op === 'embed'
    ? cacheKey('embed', e.identity, embedParams(e.seed), e.text)
    : cacheKey(e.op as CacheOp, e.identity, generateParams(e.maxTokens, e.seed, e.temperature), e.prompt);
}

/** Inserts or refreshes one steadytext_cache row; returns its key. */
export async function storeCacheEntry(q: Queryable, e: CacheEntry, schema = 'public'): Promise<string> {
  const key = entryKey(e);
  const [input, params, response, embedding] = e.op === 'embed'
    ? [e.text, { seed: e.seed }, null, e.embedding]
    : [e.prompt, { max_tokens: e.maxTokens, seed: e.seed, temperature: e.temperature }, e.response, null];
  await q.query(
    `INSERT INTO ${quoteIdent(schema)}.steadytext_cache (cache_key, operation, model_identity, params, prompt, response, embedding)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (cache_key) DO UPDATE SET response = EXCLUDED.response, embedding = EXCLUDED.embedding, created_at = now()`,
    [key, e.op, e.identity, JSON.stringify(params), input, response, embedding]);
  return key;
}
