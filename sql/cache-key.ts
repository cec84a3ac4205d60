// The cache key lives in inference/cache-key.ts: one function keys the engine's result cache and
// steadytext_cache alike. Re-exported here for the daemon endpoint and the tests that still import it.
export * from '../inference/cache-key.js';
