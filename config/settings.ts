// One typed settings object for the whole process. Sources, lowest to highest precedence:
// built-in defaults < JSON config file < environment variables < command-line flags.
// A bad value is refused at start with a message naming the option and the source it came from.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface HostPort { host: string; port: number }

type Kind = 'string' | 'url' | 'hostport' | 'int' | 'bool' | 'path' | { oneOf: readonly string[] };

interface Spec<K extends Kind = Kind> {
  kind: K;
  env: string;
  flag: string;
  default: unknown;
  min?: number;
  help: string;
}

const MiB = 1024 * 1024;

/** The embedded database's data, under XDG's data directory (the models are under its cache directory). */
const DEFAULT_DATA_DIR = join(process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share'), 'pg-steadytext', 'pgdata');

/** The option table: README's configuration reference is generated from it (`pg-steadytext config --markdown`). */
export const SPECS = {
  listen: { kind: 'hostport', env: 'PGSTEADYTEXT_LISTEN', flag: 'listen', default: '127.0.0.1:6432', help: 'Address clients connect to (host:port).' },
  upstream: { kind: 'url', env: 'PGSTEADYTEXT_UPSTREAM', flag: 'upstream', default: '', help: 'The real PostgreSQL, as a postgres:// URL; `sslmode` in it sets upstream TLS. Only host, port and TLS settings are used for client sessions: clients log in with their own credentials. Without it (and without a pgbouncer.ini), `serve` runs the embedded database (PGlite with pgvector) in its place.' },
  dataDir: { kind: 'path', env: 'PGSTEADYTEXT_DATA_DIR', flag: 'data-dir', default: DEFAULT_DATA_DIR, help: 'With no upstream: where the embedded database keeps its data.' },
  upstreamPooled: { kind: 'bool', env: 'PGSTEADYTEXT_UPSTREAM_POOLED', flag: 'upstream-pooled', default: false, help: 'The upstream is a transaction pooler (pgBouncer, a cloud provider\'s proxy): calls the proxy cannot see still ask it in-band, though the backend that asks is not the one the session logged in to (the request is checked by its signature, the login role and an id used once).' },
  memory: { kind: 'bool', env: 'PGSTEADYTEXT_MEMORY', flag: 'memory', default: false, help: 'With no upstream: an embedded database in memory, gone when the proxy stops.' },
  serviceUrl: { kind: 'url', env: 'PGSTEADYTEXT_SERVICE_URL', flag: 'service-url', default: '', help: "The proxy's own connection (installs the SQL objects, writes steadytext_cache). Defaults to the upstream URL with its credentials." },
  schema: { kind: 'string', env: 'PGSTEADYTEXT_SCHEMA', flag: 'schema', default: 'public', help: 'Schema of the steadytext SQL objects in every database. Only the service role (and superusers) may be able to create objects in it: the proxy refuses to install anywhere else.' },
  tlsCert: { kind: 'path', env: 'PGSTEADYTEXT_TLS_CERT', flag: 'tls-cert', default: '', help: 'PEM certificate file; with tls-key, the proxy accepts TLS from clients. Without, SSLRequest is answered N.' },
  tlsKey: { kind: 'path', env: 'PGSTEADYTEXT_TLS_KEY', flag: 'tls-key', default: '', help: 'PEM private key file for tls-cert.' },
  maxMessageBytes: { kind: 'int', env: 'PGSTEADYTEXT_MAX_MESSAGE_BYTES', flag: 'max-message-bytes', default: 256 * MiB, min: 1024, help: 'Largest protocol message accepted from a client; a larger one ends that connection with SQLSTATE 54000.' },
  connectTimeoutMs: { kind: 'int', env: 'PGSTEADYTEXT_CONNECT_TIMEOUT_MS', flag: 'connect-timeout-ms', default: 10_000, min: 1, help: 'Time allowed to reach the upstream before the client gets SQLSTATE 08006.' },
  shutdownGraceMs: { kind: 'int', env: 'PGSTEADYTEXT_SHUTDOWN_GRACE_MS', flag: 'shutdown-grace-ms', default: 30_000, min: 0, help: 'On SIGTERM/SIGINT: how long running queries may finish before sessions are closed.' },
  workers: { kind: 'int', env: 'PGSTEADYTEXT_WORKERS', flag: 'workers', default: 1, min: 1, help: 'Processes that serve client connections (the models stay in one process). On a busy machine 2 or more lift the proxy past what one Node process can relay.' },
  nativeRelay: { kind: { oneOf: ['auto', 'on', 'off'] }, env: 'PGSTEADYTEXT_NATIVE_RELAY', flag: 'native-relay', default: 'auto', help: 'Idle plaintext sessions are relayed by a small C relay (built by npm install) until a statement needs the proxy: auto uses it when built, on refuses to start without it, off relays everything in JS (more CPU per message).' },
  poolHandoff: { kind: 'bool', env: 'PGSTEADYTEXT_POOL_HANDOFF', flag: 'pool-handoff', default: true, help: 'Transaction pooling with the native relay: under contention, server connections go from client to client in C (as pgBouncer does in its loop) for clients whose session needs nothing replayed; the pooler still sees every statement that may change a session. --no-pool-handoff: JS hands them over.' },
  daemonListen: { kind: 'string', env: 'PGSTEADYTEXT_DAEMON_LISTEN', flag: 'daemon-listen', default: '127.0.0.1:5557', help: 'Address of the daemon endpoint that the SQL functions reach through dblink (host:port), or "off".' },
  metricsListen: { kind: 'string', env: 'PGSTEADYTEXT_METRICS_LISTEN', flag: 'metrics-listen', default: 'off', help: 'Address (host:port) of the Prometheus endpoint GET /metrics, or "off": what SHOW STATS, POOLS and DATABASES report when pooling, the steadytext calls and the open sessions (README: Metrics).' },
  autoInstall: { kind: 'bool', env: 'PGSTEADYTEXT_AUTO_INSTALL', flag: 'auto-install', default: true, help: 'Install or upgrade the steadytext SQL objects in a database on first use.' },
  logLevel: { kind: { oneOf: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] }, env: 'PGSTEADYTEXT_LOG_LEVEL', flag: 'log-level', default: 'info', help: 'Log level.' },
  logFormat: { kind: { oneOf: ['auto', 'json', 'pretty'] }, env: 'PGSTEADYTEXT_LOG_FORMAT', flag: 'log-format', default: 'auto', help: 'auto: readable on a terminal, JSON otherwise.' },
  modelDir: { kind: 'path', env: 'PGSTEADYTEXT_MODEL_DIR', flag: 'model-dir', default: join(homedir(), '.cache', 'pg-steadytext', 'models'), help: 'Where downloaded GGUF models are kept.' },
  download: { kind: 'bool', env: 'PGSTEADYTEXT_DOWNLOAD', flag: 'download', default: true, help: 'Download missing models from Hugging Face (HF_ENDPOINT for a mirror): the default ones in the background at start, while other SQL goes on (steadytext calls wait, with a NOTICE), others when first called. --no-download: a call that needs a missing model fails (SQLSTATE 58P01), naming the file, its size and where to put it (`pg-steadytext models pull` fetches it).' },
  generationModel: { kind: 'string', env: 'PGSTEADYTEXT_GENERATION_MODEL', flag: 'generation-model', default: '', help: 'Overrides the default (small) generation model: a GGUF path or an hf: URI.' },
  embeddingModel: { kind: 'string', env: 'PGSTEADYTEXT_EMBEDDING_MODEL', flag: 'embedding-model', default: '', help: 'Overrides the default embedding model: a GGUF path or an hf: URI.' },
  embeddingDimensions: { kind: 'int', env: 'PGSTEADYTEXT_EMBEDDING_DIMENSIONS', flag: 'embedding-dimensions', default: 1024, min: 1, help: 'Length of the vectors steadytext_embed returns.' },
  threads: { kind: 'int', env: 'PGSTEADYTEXT_THREADS', flag: 'threads', default: 0, min: 0, help: 'Threads per inference context; 0 sizes from the machine (one per context, never more busy threads than cores).' },
  contexts: { kind: 'int', env: 'PGSTEADYTEXT_CONTEXTS', flag: 'contexts', default: 0, min: 0, help: 'Concurrent inference contexts per model; 0 sizes from the machine.' },
  generationContextSize: { kind: 'int', env: 'PGSTEADYTEXT_GENERATION_CONTEXT_SIZE', flag: 'generation-context-size', default: 4096, min: 64, help: "Tokens of prompt plus answer per generation context (max_tokens must stay below it); capped at the model's own context length. Memory per context grows with it." },
  embeddingContextSize: { kind: 'int', env: 'PGSTEADYTEXT_EMBEDDING_CONTEXT_SIZE', flag: 'embedding-context-size', default: 2048, min: 64, help: "Longest text steadytext_embed accepts, in tokens; capped at the model's own context length. Memory per context grows with it." },
  preloadModels: { kind: 'bool', env: 'PGSTEADYTEXT_PRELOAD_MODELS', flag: 'preload-models', default: false, help: 'Load models at start instead of on first use.' },
  queueSize: { kind: 'int', env: 'PGSTEADYTEXT_QUEUE_SIZE', flag: 'queue-size', default: 1024, min: 1, help: 'Requests waiting per model before new ones are refused as overloaded (SQLSTATE 53000).' },
  requestTimeoutMs: { kind: 'int', env: 'PGSTEADYTEXT_REQUEST_TIMEOUT_MS', flag: 'request-timeout-ms', default: 30_000, min: 1, help: 'Longest one inference request may wait and run.' },
  cacheBytes: { kind: 'int', env: 'PGSTEADYTEXT_CACHE_BYTES', flag: 'cache-bytes', default: 256 * MiB, min: 0, help: 'Memory for the in-process result cache.' },
  prefetchMaxValues: { kind: 'int', env: 'PGSTEADYTEXT_PREFETCH_MAX_VALUES', flag: 'prefetch-max-values', default: 10_000, min: 0, help: 'Most rows (argument values) the proxy reads and computes ahead of one statement whose calls take column values; the database computes any beyond through the daemon. 0 turns prefetch off.' },
} as const satisfies Record<string, Spec>;

type Specs = typeof SPECS;
type ValueOf<S extends Spec> =
  S['kind'] extends 'int' ? number :
  S['kind'] extends 'bool' ? boolean :
  S['kind'] extends 'hostport' ? HostPort :
  S['kind'] extends { oneOf: readonly (infer U)[] } ? U :
  string;

export type Settings = { -readonly [K in keyof Specs]: ValueOf<Specs[K]> };
export type SettingKey = keyof Settings;

export class SettingsError extends Error {
  constructor(message: string) { super(message); this.name = 'SettingsError'; }
}

/** A URL as it may be shown or logged: its password, if any, replaced by ***. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

export function parseHostPort(value: string, what: string): HostPort {
  const i = value.lastIndexOf(':');
  const host = (i > 0 ? value.slice(0, i) : '').replace(/^\[(.*)\]$/, '$1');
  const port = Number(value.slice(i + 1));
  if (i <= 0 || !host || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new SettingsError(`${what}: "${value}" is not host:port (example: 127.0.0.1:6432)`);
  }
  return { host, port };
}

function coerce(key: SettingKey, raw: unknown, source: string): unknown {
  const spec: Spec = SPECS[key];
  const what = `${spec.flag} (from ${source})`;
  const kind = spec.kind;
  if (kind === 'int') {
    const n = typeof raw === 'number' ? raw : /^\s*-?\d+\s*$/.test(String(raw)) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n)) throw new SettingsError(`${what}: "${String(raw)}" is not an integer`);
    if (spec.min !== undefined && n < spec.min) throw new SettingsError(`${what}: ${n} is below the minimum ${spec.min}`);
    return n;
  }
  if (kind === 'bool') {
    if (typeof raw === 'boolean') return raw;
    const s = String(raw).toLowerCase();
    if (['1', 'true', 'yes', 'on'].includes(s)) return true;
    if (['0', 'false', 'no', 'off'].includes(s)) return false;
    throw new SettingsError(`${what}: "${String(raw)}" is not a boolean (true/false)`);
  }
  if (typeof raw !== 'string') throw new SettingsError(`${what}: expected a string, got ${JSON.stringify(raw)}`);
  if (kind === 'hostport') return parseHostPort(raw, what);
  if (kind === 'url' && raw !== '') {
    let u: URL;
    try { u = new URL(raw); } catch { throw new SettingsError(`${what}: "${raw}" is not a URL (example: postgres://user:pass@host:5432/db)`); }
    if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
      throw new SettingsError(`${what}: "${u.protocol}" URLs are not supported; use postgres://`);
    }
  }
  if (typeof kind === 'object' && !kind.oneOf.includes(raw)) {
    throw new SettingsError(`${what}: "${raw}" is not one of ${kind.oneOf.join(', ')}`);
  }
  if ((key === 'daemonListen' || key === 'metricsListen') && raw !== 'off') parseHostPort(raw, what);
  return raw;
}

export interface SettingsSources {
  /** Flag values by setting key, already split from argv by the CLI. */
  flags?: Partial<Record<SettingKey, unknown>>;
  env?: NodeJS.ProcessEnv;
  /** Path of a JSON config file; also taken from PGSTEADYTEXT_CONFIG. */
  configFile?: string;
  /**
   * Under a pgbouncer.ini, whose [databases] say where clients go: the upstream URL is then only the base of the
   * service connections (their credentials and options), postgres://127.0.0.1:5432/postgres when not given.
   */
  pooler?: boolean;
}

const POOLER_UPSTREAM = 'postgres://127.0.0.1:5432/postgres';

export function loadSettings(sources: SettingsSources = {}): Settings {
  const env = sources.env ?? process.env;
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(SPECS) as SettingKey[]) out[key] = coerce(key, SPECS[key].default, 'default');

  const file = sources.configFile ?? env.PGSTEADYTEXT_CONFIG;
  if (file) {
    let data: unknown;
    try { data = JSON.parse(readFileSync(file, 'utf8')); } catch (e) {
      throw new SettingsError(`config file ${file}: ${(e as Error).message}`);
    }
    if (!data || typeof data !== 'object' || Array.isArray(data)) throw new SettingsError(`config file ${file}: expected a JSON object`);
    for (const [k, v] of Object.entries(data)) {
      if (!(k in SPECS)) throw new SettingsError(`config file ${file}: unknown option "${k}" (known: ${Object.keys(SPECS).join(', ')})`);
      out[k] = coerce(k as SettingKey, v, `config file ${file}`);
    }
  }
  for (const key of Object.keys(SPECS) as SettingKey[]) {
    const v = env[SPECS[key].env];
    if (v !== undefined && v !== '') out[key] = coerce(key, v, `environment ${SPECS[key].env}`);
  }
  for (const [k, v] of Object.entries(sources.flags ?? {})) {
    if (v !== undefined) out[k] = coerce(k as SettingKey, v, `--${SPECS[k as SettingKey].flag}`);
  }
  const s = out as Settings;
  if (!s.upstream && sources.pooler) s.upstream = POOLER_UPSTREAM;
  if (!s.serviceUrl) s.serviceUrl = s.upstream;
  if (Boolean(s.tlsCert) !== Boolean(s.tlsKey)) throw new SettingsError('tls-cert and tls-key must be given together');
  return s;
}

/** The configuration reference as a Markdown table (README). */
export function settingsMarkdown(): string {
  const rows = Object.entries(SPECS).map(([k, s]: [string, Spec]) => {
    const d = k === 'modelDir' ? '`~/.cache/pg-steadytext/models`' : k === 'dataDir' ? '`~/.local/share/pg-steadytext/pgdata`' : s.default === '' ? '' : `\`${String(s.default)}\``;
    return `| \`--${s.flag}\` | \`${s.env}\` | \`${k}\` | ${d} | ${s.help} |`;
  });
  return ['| flag | environment | config file key | default | meaning |', '|---|---|---|---|---|', ...rows].join('\n');
}
