// The steadytext SQL functions, once: name, kind, parameters (name, SQL type, default) and return type,
// exactly as the SQL objects declare them (the seed's signatures; tests/sql/install.test.ts checks every
// installed function against this table). Call finding (calls.ts), argument reading (arguments.ts),
// evaluation (evaluate.ts), prefetch (prefetch.ts, prefetch-plan.ts), the handover check (handover.ts) and
// the daemon endpoint read it; nothing else lists the functions or their parameters.

/**
 * computing: the proxy computes an answer and hands it over through steadytext_cache (or streams it).
 * management: the proxy acts on its engine and hands the answer over through steadytext_mailbox.
 * config: reads or writes steadytext_config in the database; the proxy only watches for changes.
 * info: answered by the database alone.
 */
export type FunctionKind = 'computing' | 'management' | 'config' | 'info';

/** Parameter types, spelled as pg_get_function_arguments prints them. */
export type SqlType = 'text' | 'integer' | 'double precision';

export interface Parameter {
  readonly name: string;
  readonly type: SqlType;
  /**
   * Absent: the argument is required. null: DEFAULT NULL, and a NULL (given or defaulted) takes the
   * steadytext_config key in `config` (when there is one) or the function's own fallback.
   */
  readonly default?: null;
  /** The steadytext_config key whose value a NULL argument takes. */
  readonly config?: string;
}

export interface Signature {
  readonly kind: FunctionKind;
  /**
   * Computing and management functions: the op of the daemon request their SQL function sends. For a
   * computing function it is also the steadytext_cache operation, for a management function the
   * steadytext_mailbox topic its answer is posted under.
   */
  readonly op?: string;
  readonly params: readonly Parameter[];
  /** As pg_get_function_result prints it (install schema public). */
  readonly returns: string;
}

const NULL_DEFAULT = { default: null } as const;

/** Every steadytext function a client calls, in one table. */
export const SIGNATURES = {
  steadytext_generate: {
    kind: 'computing', op: 'generate',
    params: [
      { name: 'prompt', type: 'text' },
      { name: 'max_tokens', type: 'integer', ...NULL_DEFAULT, config: 'default_max_tokens' },
      { name: 'seed', type: 'integer', ...NULL_DEFAULT, config: 'default_seed' },
      { name: 'temperature', type: 'double precision', ...NULL_DEFAULT },
      { name: 'model_size', type: 'text', ...NULL_DEFAULT, config: 'default_model_size' },
    ],
    returns: 'text',
  },
  steadytext_embed: {
    kind: 'computing', op: 'embed',
    params: [
      { name: 'text', type: 'text' },
      { name: 'seed', type: 'integer', ...NULL_DEFAULT, config: 'default_seed' },
      { name: 'model_size', type: 'text', ...NULL_DEFAULT, config: 'default_model_size' },
    ],
    returns: 'vector',
  },
  steadytext_generate_stream: {
    kind: 'computing', op: 'generate_stream',
    params: [
      { name: 'prompt', type: 'text' },
      { name: 'max_tokens', type: 'integer', ...NULL_DEFAULT, config: 'default_max_tokens' },
      { name: 'seed', type: 'integer', ...NULL_DEFAULT, config: 'default_seed' },
    ],
    returns: 'SETOF text',
  },
  steadytext_daemon_status: {
    kind: 'management', op: 'status', params: [],
    returns: 'TABLE(running boolean, pid integer, host text, port integer, uptime_seconds integer, requests_processed bigint, errors_count bigint, avg_latency_ms double precision)',
  },
  steadytext_daemon_start: { kind: 'management', op: 'start', params: [], returns: 'boolean' },
  steadytext_daemon_stop: { kind: 'management', op: 'stop', params: [], returns: 'boolean' },
  steadytext_daemon_restart: { kind: 'management', op: 'restart', params: [], returns: 'boolean' },
  steadytext_model_info: {
    kind: 'management', op: 'model_info', params: [],
    returns: 'TABLE(model_type text, model_size text, loaded boolean, memory_mb integer)',
  },
  steadytext_version: { kind: 'info', params: [], returns: 'text' },
  steadytext_config_set: {
    kind: 'config', params: [{ name: 'key', type: 'text' }, { name: 'value', type: 'text' }], returns: 'void',
  },
  steadytext_config_get: { kind: 'config', params: [{ name: 'key', type: 'text' }], returns: 'text' },
} as const satisfies Record<string, Signature>;

export type SteadyFunction = keyof typeof SIGNATURES;
type KindOf<F extends SteadyFunction> = (typeof SIGNATURES)[F]['kind'];
export type FunctionOfKind<K extends FunctionKind> = { [F in SteadyFunction]: KindOf<F> extends K ? F : never }[SteadyFunction];
export type ComputingFunction = FunctionOfKind<'computing'>;
export type ManagementFunction = FunctionOfKind<'management'>;
/** The daemon request op (and cache operation) of a computing function. */
export type ComputeOp = (typeof SIGNATURES)[ComputingFunction]['op'];
/** The daemon request op (and mailbox topic) of a management function. */
export type ManagementOp = (typeof SIGNATURES)[ManagementFunction]['op'];

/** Every function name, in the table's order. */
export const STEADYTEXT_FUNCTIONS: readonly SteadyFunction[] = Object.keys(SIGNATURES) as SteadyFunction[];
const NAMES: ReadonlySet<string> = new Set(STEADYTEXT_FUNCTIONS);

export function isSteadyFunction(name: string): name is SteadyFunction {
  return NAMES.has(name);
}

export function signatureOf(fn: SteadyFunction): Signature {
  return SIGNATURES[fn];
}

export function isComputing(fn: string): fn is ComputingFunction {
  return isSteadyFunction(fn) && SIGNATURES[fn].kind === 'computing';
}

export function isManagement(fn: string): fn is ManagementFunction {
  return isSteadyFunction(fn) && SIGNATURES[fn].kind === 'management';
}

/** Functions whose calls the proxy answers ahead of the statement (computing and management ones). */
export function servedByProxy(fn: string): fn is ComputingFunction | ManagementFunction {
  return isComputing(fn) || isManagement(fn);
}

/** Parameter names in declaration order. */
export function parameterNames(fn: SteadyFunction): readonly string[] {
  return SIGNATURES[fn].params.map((p: Parameter) => p.name);
}

/** A parameter by name, or undefined when the function has none of that name. */
export function parameter(fn: SteadyFunction, name: string): Parameter | undefined {
  return (SIGNATURES[fn].params as readonly Parameter[]).find((p) => p.name === name);
}

/** How the proxy reads a value of each parameter type (arguments.ts), and the type a value is cast to
 *  in a query the proxy derives (prefetch-plan.ts): pg_catalog-qualified, so no search_path changes it. */
export const SQL_TYPES: Record<SqlType, { reads: 'text' | 'int' | 'float'; qualified: string }> = {
  text: { reads: 'text', qualified: 'pg_catalog.text' },
  integer: { reads: 'int', qualified: 'pg_catalog.int4' },
  'double precision': { reads: 'float', qualified: 'pg_catalog.float8' },
};

/** The function of a daemon request op (daemon endpoint); undefined for an unknown op. */
export function functionOfOp(op: string): ComputingFunction | ManagementFunction | undefined {
  for (const fn of STEADYTEXT_FUNCTIONS) {
    const s: Signature = SIGNATURES[fn];
    if (s.op !== undefined && s.op === op) return fn as ComputingFunction | ManagementFunction;
  }
  return undefined;
}

/** Every daemon request op, in the table's order. */
export const DAEMON_OPS: readonly (ComputeOp | ManagementOp)[] = STEADYTEXT_FUNCTIONS
  .map((fn) => (SIGNATURES[fn] as Signature).op)
  .filter((op): op is ComputeOp | ManagementOp => op !== undefined);

/** The argument list as pg_get_function_arguments prints it ('prompt text, seed integer DEFAULT NULL::integer'). */
export function sqlArguments(fn: SteadyFunction): string {
  return (SIGNATURES[fn].params as readonly Parameter[])
    .map((p) => `${p.name} ${p.type}${p.default === null ? ` DEFAULT NULL::${p.type}` : ''}`).join(', ');
}

/** The argument list as pg_get_function_identity_arguments prints it (what GRANT and COMMENT name). */
export function identityArguments(fn: SteadyFunction): string {
  return (SIGNATURES[fn].params as readonly Parameter[]).map((p) => `${p.name} ${p.type}`).join(', ');
}
