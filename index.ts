// pg-steadytext: the proxy, the steadytext SQL layer and the inference engine, as `pg-steadytext serve` puts them
// together (cli.ts). Each part is also its own entry point: pg-steadytext/inference, pg-steadytext/proxy, pg-steadytext/sql.
export * from './inference/index.js';
export * from './proxy/index.js';
export * from './sql/index.js';
