// The runtime keys that live in each database's steadytext_config table. They change without a
// restart: steadytext_config_set() sends NOTIFY steadytext_config, and a session that calls it
// marks its database's copy stale, so the very next call in any session sees the new value.

export interface RuntimeConfig {
  daemonHost: string;
  daemonPort: number;
  daemonTimeoutMs: number;
  defaultMaxTokens: number;
  defaultSeed: number;
  defaultModelSize: string;
  cacheEnabled: boolean;
  cacheTtlSeconds: number;
  debugMode: boolean;
  daemonAutoStart: boolean;
  connectionPoolSize: number;
  /** How a call the proxy cannot see asks for its answer: auto, dblink or inband (SQL objects 1.4.0). */
  callbackTransport: string;
  /** In-band: stop a statement that misses row after row and run it again with its calls answered together (SQL objects 1.5.0). */
  inbandRerun: boolean;
}

export const RUNTIME_DEFAULTS: RuntimeConfig = {
  daemonHost: 'localhost',
  daemonPort: 5557,
  daemonTimeoutMs: 30_000,
  defaultMaxTokens: 512,
  defaultSeed: 42,
  defaultModelSize: 'small',
  cacheEnabled: true,
  cacheTtlSeconds: 3600,
  debugMode: false,
  daemonAutoStart: true,
  connectionPoolSize: 4,
  callbackTransport: 'auto',
  inbandRerun: true,
};

const KEYS: Record<string, keyof RuntimeConfig> = {
  daemon_host: 'daemonHost',
  daemon_port: 'daemonPort',
  daemon_timeout_ms: 'daemonTimeoutMs',
  default_max_tokens: 'defaultMaxTokens',
  default_seed: 'defaultSeed',
  default_model_size: 'defaultModelSize',
  cache_enabled: 'cacheEnabled',
  cache_ttl_seconds: 'cacheTtlSeconds',
  debug_mode: 'debugMode',
  daemon_auto_start: 'daemonAutoStart',
  connection_pool_size: 'connectionPoolSize',
  callback_transport: 'callbackTransport',
  inband_rerun: 'inbandRerun',
};

/** Builds a RuntimeConfig from steadytext_config rows; values the table validation let through but we can't use fall back to defaults. */
export function runtimeFromRows(rows: Array<{ key: string; value: string | null }>): RuntimeConfig {
  const out: RuntimeConfig = { ...RUNTIME_DEFAULTS };
  const o = out as unknown as Record<string, unknown>;
  for (const { key, value } of rows) {
    const k = KEYS[key];
    if (!k || value == null) continue;
    const d = RUNTIME_DEFAULTS[k];
    if (typeof d === 'number') {
      const n = Number(value);
      if (Number.isFinite(n)) o[k] = n;
    } else if (typeof d === 'boolean') {
      o[k] = /^(true|t|on|yes|1)$/i.test(value.trim());
    } else {
      o[k] = value;
    }
  }
  return out;
}

/** A database's runtime config, reloaded after NOTIFY steadytext_config or markStale(). */
export class RuntimeConfigSource {
  private current: RuntimeConfig | undefined;
  private loading: Promise<RuntimeConfig> | undefined;
  private generation = 0;

  /** `load` reads the key/value rows of the database's steadytext_config (the database layer knows where). */
  constructor(private readonly load: () => Promise<Array<{ key: string; value: string | null }>>) {}

  markStale(): void { this.generation++; this.current = undefined; }

  async get(): Promise<RuntimeConfig> {
    if (this.current) return this.current;
    if (!this.loading) {
      const gen = this.generation;
      this.loading = this.load()
        .then((rows) => {
          const cfg = runtimeFromRows(rows);
          if (gen === this.generation) this.current = cfg;
          return cfg;
        })
        .finally(() => { this.loading = undefined; });
    }
    return this.loading;
  }
}
