// Reads a call's argument values the way PostgreSQL will, or not at all. The proxy computes an answer only
// from values it reads exactly as the database converts them: a text argument from a string literal or a
// text parameter, a number from a numeric literal or parameter. Anything PostgreSQL converts on its own
// terms (1e3::text is '1000', 'abc'::"char" is 'a', bpchar drops trailing blanks, name truncates at 63
// bytes, float4 rounds) is left to the database, which then computes the argument and the answer itself.
import type { ArgValue, SteadyCall } from './calls.js';
import type { ArgValues } from './evaluate.js';
import { parameter, parameterNames, servedByProxy, SQL_TYPES } from './signatures.js';
import type { BindMessage } from '../proxy/protocol.js';

// Type OIDs of bound parameters.
const UNKNOWN = 0, TEXT = 25, VARCHAR = 1043, INT2 = 21, INT4 = 23, INT8 = 20, FLOAT8 = 701, NUMERIC = 1700;
const TEXT_TYPES = new Set([UNKNOWN, TEXT, VARCHAR]);
const INT_TYPES = new Set([UNKNOWN, INT2, INT4, INT8]);
const FLOAT_TYPES = new Set([UNKNOWN, INT2, INT4, INT8, FLOAT8, NUMERIC]);

// Casts (as the parser names them) that leave a value exactly as the call's parameter type reads it.
const TEXT_CASTS = new Set(['text', 'varchar']);
const INT_CASTS = new Set(['int4', 'int2', 'int8', 'integer', 'int']);
const FLOAT_CASTS = new Set(['float8', 'numeric', 'int4', 'int2', 'int8']);

/** The client's bound parameters: text values (undefined: not readable) and their declared types (0: inferred). */
export interface BoundParams { values: readonly (string | null | undefined)[]; types: readonly number[] }

/** Values by parameter name, or null when an argument is not a value the proxy reads exactly. */
export function argValues(call: SteadyCall, params: BoundParams | null): ArgValues | null {
  if (!servedByProxy(call.fn) || !call.plain || call.inCall) return null;
  const names = parameterNames(call.fn);
  const out: ArgValues = {};
  for (const arg of call.args) {
    const name = arg.name ?? names[arg.position];
    const param = name === undefined ? undefined : parameter(call.fn, name);
    if (!name || !param || !arg.value) return null;
    const kind = SQL_TYPES[param.type].reads;
    const raw = readValue(arg.value, kind, params);
    if (raw === undefined) return null;
    if (raw === null || kind === 'text') { out[name] = raw; continue; }
    const n = Number(raw.trim());
    // Whatever PostgreSQL would coerce differently (rounding, overflow, junk) stays its business.
    if (raw.trim() === '' || !Number.isFinite(n) || (kind === 'int' && (!Number.isInteger(n) || Math.abs(n) > 2147483647))) return null;
    out[name] = n;
  }
  return out;
}

/** The text of one value as the function's parameter receives it; undefined when the proxy cannot know it. */
function readValue(v: ArgValue, kind: 'text' | 'int' | 'float', params: BoundParams | null): string | null | undefined {
  const casts = kind === 'text' ? TEXT_CASTS : kind === 'int' ? INT_CASTS : FLOAT_CASTS;
  if (v.cast !== undefined && !casts.has(v.cast)) return undefined;
  if ('param' in v) {
    if (!params || v.param > params.values.length) return undefined;
    const type = params.types[v.param - 1] ?? UNKNOWN;
    const types = kind === 'text' ? TEXT_TYPES : kind === 'int' ? INT_TYPES : FLOAT_TYPES;
    if (!types.has(type)) return undefined;
    return params.values[v.param - 1];
  }
  if (v.type === 'null') return null;
  if (kind === 'text') return v.type === 'string' ? v.literal : undefined;
  if (v.type === 'integer' || v.type === 'float') return v.literal ?? undefined;
  // A quoted number ('7'::int, '0.5') reads like the bare literal only in plain decimal.
  return v.type === 'string' && v.literal !== null && /^\s*[+-]?(\d+\.?\d*|\.\d+)\s*$/.test(v.literal) ? v.literal : undefined;
}

/** Text values of the client's parameters (binary ones for the few types the calls take). */
export function boundParams(b: BindMessage, types: readonly number[]): BoundParams {
  const values: (string | null | undefined)[] = [];
  for (let i = 0; i < b.params.length; i++) {
    const v = b.params[i];
    const fmt = b.paramFormats.length === 0 ? 0 : b.paramFormats.length === 1 ? b.paramFormats[0] : b.paramFormats[i];
    const oid = types[i] ?? UNKNOWN;
    if (v === null) values.push(null);
    else if (fmt === 0) values.push(v.toString('utf8'));
    else if (oid === TEXT || oid === VARCHAR) values.push(v.toString('utf8'));
    else if (oid === INT4 && v.length === 4) values.push(String(v.readInt32BE(0)));
    else if (oid === INT2 && v.length === 2) values.push(String(v.readInt16BE(0)));
    else if (oid === INT8 && v.length === 8) values.push(String(v.readBigInt64BE(0)));
    else if (oid === FLOAT8 && v.length === 8) values.push(String(v.readDoubleBE(0)));
    else values.push(undefined); // a value we cannot read: calls that use it are left to the database
  }
  return { values, types };
}
