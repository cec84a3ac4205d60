// npm run docs:sql-api [-- --check]
// Writes docs/sql-api.md from the one table of signatures (sql/signatures.ts) and the SQL migrations
// (sql/migrations/*.sql): every steadytext_* function, table and view, with arguments, defaults, return types,
// privileges and the steadytext_config keys. The prose and the examples are here, keyed by object; rendering
// fails when an object has none, when a text names an object or argument that does not exist, or when a
// signature and its migration disagree. tests/docs.test.ts regenerates and compares, and runs every example.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SIGNATURES, STEADYTEXT_FUNCTIONS, type Parameter, type Signature, type SteadyFunction } from '../sql/signatures.js';
import { MIGRATIONS } from '../sql/version.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const SQL_API_PATH = `${ROOT}docs/sql-api.md`;

// ---- what the migrations install ----------------------------------------------------------------------

export interface InstalledFunction {
  name: string;
  /** As written in its last CREATE, whitespace collapsed, pgvector's schema placeholder dropped. */
  args: string;
  returns: string;
  volatility: string;
  securityDefiner: boolean;
  /** PUBLIC keeps EXECUTE (no REVOKE ... FROM PUBLIC after its last CREATE). */
  publicExecute: boolean;
  migration: string;
}

export interface InstalledRelation {
  name: string;
  kind: 'table' | 'view' | 'sequence';
  columns: string[];
  /** PUBLIC may SELECT it, as the last GRANT or REVOKE left it. */
  publicSelect: boolean;
  migration: string;
}

export interface ConfigKey {
  key: string;
  value: string;
  description: string;
  migration: string;
}

export interface Installed {
  functions: Map<string, InstalledFunction>;
  relations: Map<string, InstalledRelation>;
  config: ConfigKey[];
}

const squash = (s: string) => s.replace(/@vector_schema@\./g, '').replace(/\s+/g, ' ').trim();
const isPublicName = (name: string) => name.startsWith('steadytext_');

/** Replays the migrations' DDL in order (CREATE, RENAME, REVOKE, GRANT) for the objects named steadytext_*. */
export function readMigrations(): Installed {
  const functions = new Map<string, InstalledFunction>();
  const relations = new Map<string, InstalledRelation>();
  const config: ConfigKey[] = [];
  for (const m of MIGRATIONS) {
    const sql = readFileSync(`${ROOT}sql/migrations/${m.id}.sql`, 'utf8');
    // Statements start at a line's beginning; comments (--) never do, so they are never taken for one.
    const re = new RegExp(
      [
        /^CREATE (OR REPLACE )?FUNCTION (\w+)\(([^;]*?)\)\s*RETURNS ([\s\S]*?)\s+LANGUAGE \w+((?: [A-Z]+)*)/.source,
        /^ALTER FUNCTION (\w+)\([^)]*\) RENAME TO (\w+);/.source,
        /^REVOKE EXECUTE ON FUNCTION (\w+)\([^)]*\) FROM PUBLIC;/.source,
        /^CREATE TABLE IF NOT EXISTS (\w+) \(\n([\s\S]*?)\n\);/.source,
        /^CREATE OR REPLACE VIEW (\w+) AS\n([\s\S]*?);\n/.source,
        /^CREATE SEQUENCE IF NOT EXISTS (\w+);/.source,
        /^(REVOKE ALL|GRANT SELECT) ON (?:SEQUENCE )?([\w, ]+) (?:FROM|TO) PUBLIC;/.source,
        /^INSERT INTO steadytext_config \(key, value, description\) VALUES\n([\s\S]*?)\nON CONFLICT/.source,
        /^DROP (?:FUNCTION|TABLE|VIEW|SEQUENCE) (?:IF EXISTS )?(\w+)/.source,
      ].join('|'),
      'gm',
    );
    for (const x of sql.matchAll(re)) {
      if (x[2] !== undefined) {
        const [name, replace] = [x[2], x[1] !== undefined];
        if (!isPublicName(name)) continue;
        const attrs = x[5] ?? '';
        const before = functions.get(name);
        functions.set(name, {
          name, args: squash(x[3]), returns: squash(x[4]),
          volatility: /\bVOLATILE\b/.test(attrs) ? 'VOLATILE' : /\bSTABLE\b/.test(attrs) ? 'STABLE' : /\bIMMUTABLE\b/.test(attrs) ? 'IMMUTABLE' : 'VOLATILE',
          securityDefiner: /SECURITY DEFINER/.test(attrs),
          // CREATE OR REPLACE keeps the privileges of the function it replaces; a new one gives PUBLIC EXECUTE.
          publicExecute: replace && before ? before.publicExecute : true,
          migration: m.id,
        });
      } else if (x[6] !== undefined) {
        functions.delete(x[6]);
      } else if (x[8] !== undefined) {
        const f = functions.get(x[8]);
        if (f) f.publicExecute = false;
      } else if (x[9] !== undefined) {
        if (!isPublicName(x[9])) continue;
        const columns = x[10].split('\n').map((l) => /^\s*"?(\w+)"?\s/.exec(l)?.[1]).filter((c): c is string => !!c && c !== 'PRIMARY');
        relations.set(x[9], { name: x[9], kind: 'table', columns, publicSelect: true, migration: m.id });
      } else if (x[11] !== undefined) {
        // The columns are the AS names of the view's last SELECT list.
        const body = x[12];
        const last = body.slice(body.lastIndexOf('\nSELECT '));
        const columns = [...last.slice(0, last.indexOf('\n  FROM')).matchAll(/ AS (\w+)(?:,|$)/gm)].map((c) => c[1]);
        relations.set(x[11], { name: x[11], kind: 'view', columns, publicSelect: true, migration: m.id });
      } else if (x[13] !== undefined) {
        relations.set(x[13], { name: x[13], kind: 'sequence', columns: [], publicSelect: true, migration: m.id });
      } else if (x[14] !== undefined) {
        for (const n of x[15].split(',').map((s) => s.trim())) {
          const r = relations.get(n);
          if (r) r.publicSelect = x[14] === 'GRANT SELECT';
        }
      } else if (x[17] !== undefined) {
        functions.delete(x[17]);
        relations.delete(x[17]);
      } else if (x[16] !== undefined) {
        for (const t of x[16].matchAll(/\(\s*'([^']*)',\s*'([^']*)',\s*'((?:[^']|'')*)'\s*\)/g)) {
          config.push({ key: t[1], value: t[2], description: t[3].replace(/''/g, "'"), migration: m.id });
        }
      }
    }
  }
  // Any other way of creating a steadytext_* object would escape the patterns above: refuse it rather than
  // leave it out of the reference.
  for (const m of MIGRATIONS) {
    const sql = readFileSync(`${ROOT}sql/migrations/${m.id}.sql`, 'utf8');
    for (const x of sql.matchAll(/^CREATE (?:OR REPLACE )?(?:UNLOGGED )?(?:FUNCTION|PROCEDURE|TABLE|VIEW|MATERIALIZED VIEW|SEQUENCE|TYPE|AGGREGATE)(?: IF NOT EXISTS)? (\w+)/gm)) {
      const name = x[1];
      if (!isPublicName(name) || functions.has(name) || relations.has(name) || renamedAway(name, m.id)) continue;
      throw new Error(`${m.id}.sql creates ${name} in a form scripts/docs-sql-api.ts does not read`);
    }
  }
  return { functions, relations, config };
}

/** A steadytext_* object a later migration (or this one) renamed or dropped. */
function renamedAway(name: string, from: string): boolean {
  const later = MIGRATIONS.slice(MIGRATIONS.findIndex((m) => m.id === from));
  const re = new RegExp(`^(?:ALTER FUNCTION ${name}\\([^)]*\\) RENAME TO|DROP (?:FUNCTION|TABLE|VIEW|SEQUENCE) (?:IF EXISTS )?${name}\\b)`, 'm');
  return later.some((m) => re.test(readFileSync(`${ROOT}sql/migrations/${m.id}.sql`, 'utf8')));
}

/** The signature table and the migrations must say the same of every function. */
function checkSignatures(installed: Installed): void {
  for (const fn of STEADYTEXT_FUNCTIONS) {
    const f = installed.functions.get(fn);
    if (!f) throw new Error(`${fn} is in sql/signatures.ts but no migration creates it`);
    const sig: Signature = SIGNATURES[fn];
    const args = (sig.params).map((p) => `${p.name} ${p.type}${p.default === null ? ' DEFAULT NULL' : ''}`).join(', ');
    if (f.args !== args) throw new Error(`${fn}: sql/signatures.ts has (${args}), migration ${f.migration} has (${f.args})`);
    if (f.returns !== sig.returns) throw new Error(`${fn}: sql/signatures.ts returns ${sig.returns}, migration ${f.migration} returns ${f.returns}`);
  }
}

// ---- the prose ------------------------------------------------------------------------------------------

export interface Example {
  /** Run as written through the proxy by tests/docs.test.ts (after `setup`, if any). */
  sql: string;
  setup?: string;
  /** The result's column names, as the test finds them. */
  columns: string[];
  /** Illustrative values (the tiny test models print gibberish); one array per row. */
  rows: string[][];
  /** The result has as many rows as shown here (false: more, or a number that depends on the models). */
  exactRows?: boolean;
  /** The values shown are the ones the example gives whatever the models (as PostgreSQL prints them). */
  exactValues?: boolean;
  note?: string;
}

interface FunctionDoc {
  summary: string;
  params: Record<string, string>;
  returns: string;
  notes: string[];
  examples: Example[];
}

const SERVED: Record<Signature['kind'], string> = {
  computing:
    'Computed by the proxy: ahead of the statement when its arguments are constants or bound parameters, by prefetch when they are column values, ' +
    'else by the function itself through the callback (dblink or in-band). See [architecture](architecture.md#three-ways-a-call-is-served).',
  management: 'Answered by the proxy, which acts on its inference engine; connected straight to the database (no proxy), the function asks the daemon endpoint or in-band.',
  config: 'Runs in the database alone: reads or writes the `steadytext_config` table. Every proxy serving the database follows a change at its next call.',
  info: 'Runs in the database alone.',
};

const FUNCTIONS: Record<SteadyFunction, FunctionDoc> = {
  steadytext_generate: {
    summary: 'Generates text from a prompt with the generation model. Same arguments and same model file give the same text, every time.',
    params: {
      prompt: 'The text to continue or answer. NULL gives NULL; an empty prompt is an error (22023).',
      max_tokens: 'Most tokens to generate (1 to 8192, and below the generation context size, `--generation-context-size`).',
      seed: 'Seed of the sampler (0 to 2147483647 from SQL). With temperature 0 the text does not depend on it.',
      temperature: 'NULL or 0: greedy decoding. Above 0: sampling, reproducible for a given seed.',
      model_size: '`small`, `large` or the name of a configured model (`--generation-model` replaces `small`).',
    },
    returns: 'The generated text.',
    notes: [
      'Generation stops at the end of the answer or at `max_tokens`; the prompt plus `max_tokens` must fit the context, else 54000.',
      'STABLE: within one statement, equal arguments are computed once by the proxy whatever the number of rows.',
    ],
    examples: [
      {
        sql: "SELECT steadytext_generate('Write a haiku about indexes:', max_tokens := 24, seed := 7);",
        columns: ['steadytext_generate'],
        rows: [['Rows wait in silence / a btree bends to find them / the scan never comes']],
        exactRows: true,
      },
      {
        setup: "CREATE TABLE IF NOT EXISTS docs_t (id int, body text); INSERT INTO docs_t VALUES (1, 'pgvector stores vectors'), (2, 'pgBouncer pools connections');",
        sql: "SELECT id, steadytext_generate('Summarize: ' || body, max_tokens := 16) AS summary FROM docs_t ORDER BY id;",
        columns: ['id', 'summary'],
        rows: [['1', 'A PostgreSQL extension for vector similarity search.'], ['2', 'A lightweight connection pooler for PostgreSQL.']],
        exactRows: true,
        note: 'Column values as arguments: the proxy reads the distinct values first and computes them together (prefetch).',
      },
    ],
  },
  steadytext_embed: {
    summary: 'Embeds a text with the embedding model: an L2-normalised vector of the configured length (`--embedding-dimensions`, default 1024).',
    params: {
      text: 'The text to embed. NULL gives NULL; an empty text is an error (22023); longer than the embedding context (`--embedding-context-size` tokens) is 54000.',
      seed: 'Part of the cache key, as in the extension; an embedding does not depend on it.',
      model_size: 'An embedding model name; a generation size such as `large` falls back to the default embedding model.',
    },
    returns: 'A pgvector `vector` (unconstrained type; its length is the configured dimension).',
    notes: ['STABLE, so `ORDER BY embedding <=> steadytext_embed(...)` can use a vector index, which evaluates the call once.'],
    examples: [
      {
        sql: "SELECT vector_dims(steadytext_embed('PostgreSQL database')) AS dims, left(steadytext_embed('PostgreSQL database')::text, 40) AS head;",
        columns: ['dims', 'head'],
        rows: [['1024', '[0.012967854,-0.03355177,0.0027542065,']],
        exactRows: true,
      },
      {
        setup:
          "CREATE EXTENSION IF NOT EXISTS vector; CREATE TABLE IF NOT EXISTS items_t (name text, embedding vector); " +
          "INSERT INTO items_t SELECT n, steadytext_embed(n) FROM unnest(ARRAY['steel water bottle', 'neon city at night']) AS n;",
        sql: "SELECT name, round((1 - (embedding <=> steadytext_embed('sustainable drinking container')))::numeric, 3) AS similarity FROM items_t ORDER BY similarity DESC;",
        columns: ['name', 'similarity'],
        rows: [['steel water bottle', '0.612'], ['neon city at night', '0.087']],
        exactRows: true,
      },
    ],
  },
  steadytext_generate_stream: {
    summary: 'The text `steadytext_generate` would give (greedy, default model size), as a set of chunks; joined they equal that text.',
    params: {
      prompt: 'The text to continue or answer. NULL gives no rows.',
      max_tokens: 'Most tokens to generate.',
      seed: 'Seed, as for `steadytext_generate` (greedy decoding does not depend on it).',
    },
    returns: 'One row per chunk.',
    notes: [
      '`SELECT * FROM steadytext_generate_stream(...)` (or the call alone in the select list) sends each chunk to the client as soon as it is generated. ' +
        'Any other statement over it (`count(*)`, `WHERE`, `LIMIT`, joins) runs in the database on the complete set.',
    ],
    examples: [
      {
        sql: "SELECT * FROM steadytext_generate_stream('Count to three:', max_tokens := 8);",
        columns: ['steadytext_generate_stream'],
        rows: [['One'], [','], [' two'], [','], [' three'], ['.']],
        note: 'The number of chunks depends on the model and the text.',
      },
    ],
  },
  steadytext_daemon_status: {
    summary: "The proxy's inference engine as the database sees it.",
    params: {},
    returns:
      '`running`: false only after `steadytext_daemon_stop()` (models otherwise load when needed, see `steadytext_model_info`); `pid`: the proxy process; `host`, `port`: where the database reaches the proxy (the daemon endpoint, or `in-band` and NULL); ' +
      '`uptime_seconds`, `requests_processed`, `errors_count`, `avg_latency_ms`: since the proxy started (latency NULL before the first request).',
    notes: [
      'Connected straight to the database (no proxy on the connection): through dblink, when the daemon endpoint cannot be reached, one row with `running` false and a NOTICE saying why; ' +
        'in-band, the same row (and NOTICE) after at most 2 s without an answer, as no proxy reads the request.',
    ],
    examples: [
      {
        sql: 'SELECT * FROM steadytext_daemon_status();',
        columns: ['running', 'pid', 'host', 'port', 'uptime_seconds', 'requests_processed', 'errors_count', 'avg_latency_ms'],
        rows: [['t', '41873', '127.0.0.1', '5557', '312', '128', '0', '41.7']],
        exactRows: true,
      },
    ],
  },
  steadytext_daemon_start: {
    summary: 'Loads the models now (they otherwise load on first use, unless `--preload-models`).',
    params: {},
    returns: 'true once loaded.',
    notes: ['Administrators only (see [Privileges](#privileges)).'],
    examples: [{ sql: 'SELECT steadytext_daemon_start();', columns: ['steadytext_daemon_start'], rows: [['t']], exactRows: true, exactValues: true }],
  },
  steadytext_daemon_stop: {
    summary: 'Unloads the models and frees their memory. The next call loads them again, unless `daemon_auto_start` is false: then calls fail with 55000 until `steadytext_daemon_start()`.',
    params: {},
    returns: 'true once unloaded.',
    notes: ['Administrators only.'],
    examples: [{ sql: 'SELECT steadytext_daemon_stop();', columns: ['steadytext_daemon_stop'], rows: [['t']], exactRows: true, exactValues: true }],
  },
  steadytext_daemon_restart: {
    summary: 'Unloads and loads the models again (after replacing a model file, say).',
    params: {},
    returns: 'true once reloaded.',
    notes: ['Administrators only.'],
    examples: [{ sql: 'SELECT steadytext_daemon_restart();', columns: ['steadytext_daemon_restart'], rows: [['t']], exactRows: true, exactValues: true }],
  },
  steadytext_model_info: {
    summary: 'One row per configured model.',
    params: {},
    returns: '`model_type`: `generation` or `embedding`; `model_size`: its name; `loaded`; `memory_mb`: RAM of the model and its contexts while loaded, else 0.',
    notes: ['Connected straight to the database, through dblink with the daemon endpoint unreachable: the models the proxy registered in the database, none loaded, and a NOTICE (in-band: the same, after at most 2 s without an answer).'],
    examples: [
      {
        sql: 'SELECT * FROM steadytext_model_info();',
        columns: ['model_type', 'model_size', 'loaded', 'memory_mb'],
        rows: [['generation', 'small', 't', '4711'], ['generation', 'large', 'f', '0'], ['embedding', 'small', 't', '655']],
        note: 'One row per model the proxy knows: `small` and `large` for generation and `small` for embeddings, unless configured otherwise.',
      },
    ],
  },
  steadytext_version: {
    summary: 'The version of the SQL objects installed in this database (of the last migration applied).',
    params: {},
    returns: 'The version, as `major.minor.patch`; each migration in sql/migrations raises it.',
    notes: ['`pg-steadytext version` prints the proxy\'s own version and this one.'],
    examples: [{ sql: 'SELECT steadytext_version();', columns: ['steadytext_version'], rows: [['1.5.0']], exactRows: true }],
  },
  steadytext_config_set: {
    summary: 'Sets a `steadytext_config` key. Known keys are checked and normalised (`on` becomes `true`); other keys are stored as given.',
    params: { key: 'The key; see [Configuration keys](#configuration-keys).', value: 'The new value, as text.' },
    returns: 'Nothing.',
    notes: [
      'Administrators only; `daemon_host` and `daemon_port` only for members of the owning role (they receive the daemon secret).',
      'Takes effect at the next call in every session, through every proxy serving the database (NOTIFY at commit).',
    ],
    examples: [{ sql: "SELECT steadytext_config_set('cache_ttl_seconds', '86400');", columns: ['steadytext_config_set'], rows: [['']], exactRows: true, exactValues: true }],
  },
  steadytext_config_get: {
    summary: 'Reads a `steadytext_config` key.',
    params: { key: 'The key.' },
    returns: 'Its value, or NULL for a key that is not set.',
    notes: [],
    examples: [{ sql: "SELECT steadytext_config_get('default_seed');", columns: ['steadytext_config_get'], rows: [['42']], exactRows: true, exactValues: true }],
  },
};

interface RelationDoc {
  summary: string;
  columns: Record<string, string>;
  example?: Example;
}

/** The tables and views users read. Every other steadytext_* relation is listed under "Internal objects". */
const RELATIONS: Record<string, RelationDoc> = {
  steadytext_config: {
    summary: 'The runtime settings of this database (see [Configuration keys](#configuration-keys)). Change them with `steadytext_config_set`, not by UPDATE.',
    columns: { key: 'The key.', value: 'Its value, as text.', description: 'What it does.', updated_at: 'When it was last set.' },
    example: {
      sql: "SELECT key, value FROM steadytext_config WHERE key LIKE 'default%' ORDER BY key;",
      columns: ['key', 'value'],
      rows: [['default_max_tokens', '512'], ['default_model_size', 'small'], ['default_seed', '42']],
      exactRows: true,
      exactValues: true,
    },
  },
  steadytext_cache: {
    summary:
      'The answers, shared by every session and every proxy of the database, under the cache key the SQL functions compute from their own arguments and the model file. ' +
      'Written only by the owning role (the proxy). An entry serves for `cache_ttl_seconds` after it was written (or written again); the proxy that installed the objects deletes expired ones every 5 minutes (`steadytext_cache_evict()`).',
    columns: {
      cache_key: 'SHA-256 over operation, model identity, parameters and input.',
      operation: '`generate`, `embed` or `generate_stream`.',
      model_identity: 'The model file the answer came from (a new file never serves an old one\'s answers).',
      params: 'The parameters, as JSON.',
      prompt: 'The prompt or text.',
      response: 'Generated text (the chunks as a JSON array for `generate_stream`).',
      embedding: 'The vector, for `embed`.',
      created_at: 'When it was written.',
      access_count: 'Kept from the extension\'s layout; not counted (0).',
      last_accessed: 'Kept from the extension\'s layout; not set (NULL).',
    },
    example: {
      sql: 'SELECT operation, count(*) AS entries FROM steadytext_cache GROUP BY operation ORDER BY operation;',
      columns: ['operation', 'entries'],
      rows: [['embed', '1840'], ['generate', '212']],
    },
  },
  steadytext_stats: {
    summary:
      'Counters since install. The first three count the calls of the computing functions that looked in `steadytext_cache` ' +
      '(in read-write transactions), the proxy\'s ahead-of-statement answers included; the others count what the proxy computed, by path and by operation.',
    columns: {
      requests: '`cache_hits` + `cache_misses`.',
      cache_hits: 'Calls that found their answer in `steadytext_cache`.',
      cache_misses: 'Calls that did not, and asked the proxy through the callback.',
      callback_requests: 'Callbacks the proxy answered (dblink or in-band).',
      rewrite_requests: 'Calls the proxy computed ahead of their statement.',
      prefetch_requests: 'Calls the proxy computed by prefetch.',
      generate_requests: 'Generation requests the proxy computed.',
      embed_requests: 'Embedding requests the proxy computed.',
      errors: 'Failed computations.',
    },
    example: {
      sql: 'SELECT requests, cache_hits, cache_misses, errors FROM steadytext_stats;',
      columns: ['requests', 'cache_hits', 'cache_misses', 'errors'],
      rows: [['2301', '1987', '314', '2']],
      exactRows: true,
    },
  },
  steadytext_logs: {
    summary: 'Failed computations, as the proxy records them: event `rewrite_error`, `prefetch_error`, `stream_error` or `callback_error`. Kept 7 days.',
    columns: { id: 'Sequence number.', timestamp: 'When.', level: '`error`.', event: 'Where it failed.', message: 'The error message the caller got.', details: 'The SQLSTATE, the function or op, the role.' },
    example: {
      sql: 'SELECT level, event, message FROM steadytext_logs ORDER BY "timestamp" DESC LIMIT 1;',
      columns: ['level', 'event', 'message'],
      rows: [['error', 'rewrite_error', 'steadytext_generate: prompt is empty: there is nothing to answer']],
    },
  },
  steadytext_debug_logs: {
    summary: 'Per-call entries, written only while `debug_mode` is true: lookups in the database (`cache_hit`, `cache_miss`, `model_unregistered`) and answers the proxy computed (`rewrite`, `prefetch`, `stream`, `callback`). Kept 1 day.',
    columns: { id: 'Sequence number.', timestamp: 'When.', level: '`debug`.', event: 'What happened.', message: 'In words.', details: 'Keys, parameters, role, session, as JSON.' },
  },
};

/** Every other steadytext_* object the migrations (or the installer) create: what it is for, in one line. */
const INTERNAL: Record<string, string> = {
  steadytext_meta: 'Migrations applied and their versions (created by the installer).',
  steadytext_models: 'Which model file answers for each role and size; part of every cache key.',
  steadytext_daemon_secret: 'The secret of the daemon endpoint and of in-band requests. Only the owning role reads it.',
  steadytext_counters: 'The proxy\'s counts behind `steadytext_stats`.',
  steadytext_sql_cache_hits: 'Cache hits of lookups made in the database (behind `steadytext_stats`).',
  steadytext_sql_cache_misses: 'Cache misses of lookups made in the database.',
  steadytext_mailbox: 'Answers of management calls and failures, per backend, for the statement that asked.',
  steadytext_inband_objects: 'Large objects written for in-band answers in REPEATABLE READ and SERIALIZABLE, until removed.',
  steadytext_cache_key: 'The cache key (the proxy computes the same bytes).',
  steadytext_stats_bump: 'Adds to the counters (the proxy).',
  steadytext_log: 'Writes a log entry (the proxy, the functions).',
  steadytext_cache_evict: 'Deletes expired cache entries and returns how many; the proxy runs it every 5 minutes.',
};

const CONFIG_NOTES: Record<string, string> = {
  daemon_host: 'The proxy writes its `--daemon-listen` host here when it prepares the database, unless that host is a wildcard (`0.0.0.0`) or an administrator set another value; only members of the owning role may change it.',
  daemon_port: 'As `daemon_host`.',
  daemon_timeout_ms: 'Also the limit of one computation the proxy runs for a call (57014 beyond).',
  connection_pool_size: 'Kept for the extension\'s sake: the proxy reads it but sizes nothing by it.',
  callback_transport: '`auto`: dblink when the extension is installed and the daemon endpoint answers, else in-band.',
};

// ---- rendering --------------------------------------------------------------------------------------------

const code = (s: string) => `\`${s}\``;
const cell = (s: string) => s.replaceAll('|', '\\|').replaceAll('\n', ' ');

/** A result as psql prints it (aligned): headers centred, numbers to the right. */
export function psqlTable(columns: string[], rows: string[][]): string {
  const numeric = columns.map((_, i) => rows.length > 0 && rows.every((r) => /^-?\d+(\.\d+)?$/.test(r[i])));
  const width = columns.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i].length)));
  const centre = (s: string, w: number) => {
    const left = Math.floor((w - s.length) / 2);
    return ' '.repeat(left) + s + ' '.repeat(w - s.length - left);
  };
  const line = (cells: string[]) => cells.map((c) => ` ${c} `).join('|').trimEnd();
  return [
    line(columns.map((c, i) => centre(c, width[i]))),
    width.map((w) => '-'.repeat(w + 2)).join('+'),
    ...rows.map((r) => line(r.map((v, i) => (numeric[i] ? v.padStart(width[i]) : v.padEnd(width[i]))))),
    `(${rows.length} ${rows.length === 1 ? 'row' : 'rows'})`,
  ].join('\n');
}

function renderExample(e: Example): string[] {
  for (const r of e.rows) if (r.length !== e.columns.length) throw new Error(`example ${e.sql}: a row of ${r.length} values for ${e.columns.length} columns`);
  const out = ['```sql'];
  if (e.setup) out.push(e.setup.replace(/; /g, ';\n'));
  out.push(e.sql, '```', '```', psqlTable(e.columns, e.rows), '```');
  if (e.note) out.push(e.note);
  return out;
}

function tableColumns(returns: string): string[] | undefined {
  const m = /^TABLE\((.*)\)$/.exec(returns);
  return m ? m[1].split(', ').map((c) => c.split(' ')[0]) : undefined;
}

export function renderSqlApi(): string {
  const installed = readMigrations();
  checkSignatures(installed);
  const config = new Map(installed.config.map((c) => [c.key, c]));
  const out: string[] = [
    '# SQL API reference',
    '',
    '<!-- Generated by `npm run docs:sql-api` from sql/signatures.ts and sql/migrations/*.sql (prose in scripts/docs-sql-api.ts); do not edit. -->',
    '',
    'What the proxy installs in each database it serves, in the schema given by `--schema` (default `public`), and upgrades when a new release brings new migrations. ' +
      'They are ordinary SQL objects: `\\df steadytext_*` lists them, and `GRANT`, `REVOKE`, `COMMENT`, views, PL/pgSQL functions and triggers work with them as with any other. ' +
      'Positional signatures are the pg_steadytext extension\'s ([comparison](comparison.md)).',
    '',
    'The examples were run through the proxy (tests/docs.test.ts runs each one and checks its columns); the values shown are illustrative: ' +
      'the same call gives the same value for a given model file, but another model gives another one.',
    '',
    '## Functions',
    '',
    '| function | returns | who may call it |',
    '|---|---|---|',
  ];
  for (const fn of STEADYTEXT_FUNCTIONS) {
    const f = installed.functions.get(fn)!;
    out.push(`| [${code(`${fn}(${(SIGNATURES[fn].params as readonly Parameter[]).map((p) => p.name).join(', ')})`)}](#${fn}) | ${code(SIGNATURES[fn].returns.replace(/^TABLE\(.*\)$/, 'TABLE(...)'))} | ${f.publicExecute ? 'everyone' : 'administrators'} |`);
  }
  out.push('', 'A NULL argument with `DEFAULT NULL` takes its default from `steadytext_config` where the table below names a key, else the fallback shown.', '');

  for (const fn of STEADYTEXT_FUNCTIONS) {
    const sig: Signature = SIGNATURES[fn];
    const f = installed.functions.get(fn)!;
    const d = FUNCTIONS[fn];
    const params = sig.params;
    for (const k of Object.keys(d.params)) if (!params.some((p) => p.name === k)) throw new Error(`${fn}: the docs describe an argument ${k} it does not have`);
    out.push(`### ${fn}`, '', d.summary, '', '```sql');
    out.push(`${fn}(${params.map((p) => `${p.name} ${p.type}${p.default === null ? ' DEFAULT NULL' : ''}`).join(', ')})`);
    out.push(`RETURNS ${sig.returns.replace(/^TABLE\((.*)\)$/, (_m, cols: string) => `TABLE(\n    ${cols.split(', ').join(',\n    ')})`)}`, '```', '');
    if (params.length) {
      out.push('| argument | type | default | meaning |', '|---|---|---|---|');
      for (const p of params) {
        const text = d.params[p.name];
        if (!text) throw new Error(`${fn}: no description of argument ${p.name}`);
        let dflt = 'required';
        if (p.default === null) {
          const key = p.config ? config.get(p.config) : undefined;
          if (p.config && !key) throw new Error(`${fn}.${p.name}: config key ${p.config} is not installed`);
          dflt = key ? `${code(key.key)} (${code(key.value)})` : p.name === 'temperature' ? '`0` (greedy)' : 'NULL';
        }
        out.push(`| ${code(p.name)} | ${code(p.type)} | ${dflt} | ${cell(text)} |`);
      }
      out.push('');
    }
    const cols = tableColumns(sig.returns);
    out.push(`**Returns** ${code(sig.returns.startsWith('TABLE(') ? 'TABLE' : sig.returns)}: ${d.returns}`, '');
    const props = [`${f.volatility}`, f.securityDefiner ? 'runs as the owning role (SECURITY DEFINER) after the caller\'s EXECUTE check' : 'runs as the caller'];
    props.push(f.publicExecute ? '`EXECUTE` granted to PUBLIC' : '`EXECUTE` revoked from PUBLIC: the owning role and the roles it grants');
    out.push(`**Served** ${SERVED[sig.kind]}`, '', `**Properties** ${props.join('; ')}.`, '');
    for (const n of d.notes) out.push(`- ${n}`);
    if (d.notes.length) out.push('');
    if (!d.examples.length) throw new Error(`${fn}: no example`);
    for (const e of d.examples) {
      if (cols && e.sql.includes(`FROM ${fn}(`) && e.sql.startsWith('SELECT *') && e.columns.join() !== cols.join()) {
        throw new Error(`${fn}: example columns ${e.columns.join()} are not ${cols.join()}`);
      }
      out.push(...renderExample(e), '');
    }
  }

  out.push('## Configuration keys', '', 'Rows of `steadytext_config`, installed with these values; `steadytext_config_set` changes them at run time.', '');
  out.push('| key | installed value | used for | meaning |', '|---|---|---|---|');
  for (const c of installed.config) {
    const users = STEADYTEXT_FUNCTIONS.filter((fn) => (SIGNATURES[fn].params as readonly Parameter[]).some((p) => p.config === c.key));
    const used = users.length ? users.map((fn) => `${code(fn)} ${(SIGNATURES[fn].params as readonly Parameter[]).find((p) => p.config === c.key)!.name}`).join(', ') : '';
    out.push(`| ${code(c.key)} | ${code(c.value)} | ${used} | ${cell(c.description + '.' + (CONFIG_NOTES[c.key] ? ' ' + CONFIG_NOTES[c.key] : ''))} |`);
  }
  for (const k of Object.keys(CONFIG_NOTES)) if (!config.has(k)) throw new Error(`a note for config key ${k}, which is not installed`);
  out.push('');

  out.push('## Tables and views', '');
  for (const [name, d] of Object.entries(RELATIONS)) {
    const r = installed.relations.get(name);
    if (!r) throw new Error(`${name} is documented but no migration creates it`);
    const described = Object.keys(d.columns);
    if (described.join() !== r.columns.join()) throw new Error(`${name}: the docs describe columns ${described.join()}, the migrations create ${r.columns.join()}`);
    out.push(`### ${name}`, '', `${r.kind === 'view' ? 'View' : 'Table'}. ${d.summary} ${r.publicSelect ? 'Every role may read it.' : 'Only the owning role reads it (`GRANT SELECT` to share it).'}`, '');
    out.push('| column | meaning |', '|---|---|');
    for (const c of r.columns) out.push(`| ${code(c)} | ${cell(d.columns[c])} |`);
    out.push('');
    if (d.example) out.push(...renderExample(d.example), '');
  }

  out.push('## Internal objects', '', 'Also installed, for the proxy and the functions above; not an API (they may change between versions).', '');
  out.push('| object | kind | purpose |', '|---|---|---|');
  const internal: string[] = [];
  for (const r of installed.relations.values()) if (!RELATIONS[r.name]) internal.push(r.name);
  for (const f of installed.functions.values()) if (!(f.name in SIGNATURES)) internal.push(f.name);
  for (const name of ['steadytext_meta', ...internal]) {
    const text = INTERNAL[name];
    if (!text) throw new Error(`${name} is installed but documented nowhere`);
    const f = installed.functions.get(name);
    const kind = f ? `function${f.publicExecute ? '' : ' (owner only)'}` : (installed.relations.get(name)?.kind ?? 'table');
    out.push(`| ${code(f ? `${name}(${f.args})` : name)} | ${kind} | ${cell(text)} |`);
  }
  for (const k of Object.keys(INTERNAL)) if (k !== 'steadytext_meta' && !internal.includes(k)) throw new Error(`${k} is documented as internal but not installed`);
  out.push('', 'Functions and tables whose names start with `_steadytext_` are helpers of the ones above; only the owning role may run them.', '');

  out.push('## Privileges', '');
  out.push(
    'Every role may call the computing and information functions and read `steadytext_config` and `steadytext_stats`. ' +
      'Changing the configuration and starting or stopping the models is for the owning role (the proxy\'s service role) and whoever it grants, ' +
      'for example `GRANT EXECUTE ON FUNCTION steadytext_config_set(text, text), steadytext_daemon_stop() TO ops`. Others get 42501 (permission denied), ' +
      'and the proxy does nothing for them that the database would refuse. `REVOKE EXECUTE ON FUNCTION steadytext_generate(text, integer, integer, double precision, text) FROM PUBLIC` ' +
      'stops a role from generating, through the proxy too. `steadytext_cache` and the logs hold every role\'s prompts: only the owning role reads them.',
    '',
  );
  return out.join('\n');
}

/** Every example in the reference, for the test that runs them. */
export function sqlApiExamples(): Example[] {
  return [...Object.values(FUNCTIONS).flatMap((d) => d.examples), ...Object.values(RELATIONS).flatMap((d) => (d.example ? [d.example] : []))];
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const text = renderSqlApi();
  if (process.argv.includes('--check')) {
    const current = (() => {
      try {
        return readFileSync(SQL_API_PATH, 'utf8');
      } catch {
        return '';
      }
    })();
    if (current !== text) {
      process.stderr.write('docs/sql-api.md is stale: run npm run docs:sql-api\n');
      process.exit(1);
    }
  } else {
    writeFileSync(SQL_API_PATH, text);
    process.stdout.write(`wrote ${SQL_API_PATH}\n`);
  }
}
