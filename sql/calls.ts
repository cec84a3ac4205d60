// Finds the steadytext_* calls in client SQL with the real PostgreSQL parser (libpg-query, WASM).
// Every offset is a UTF-8 byte offset into the Buffer the client sent: the parser reports byte locations,
// and it has no end offsets, so a call's parentheses and argument ends come from bracket matching over
// the scanner's tokens (which already know strings, dollar quotes, comments and E'' escapes).
import { loadModule, parseSync, scanSync } from 'libpg-query';
import { isSteadyFunction, type SteadyFunction } from './signatures.js';

/** Buffers larger than this are not parsed (the WASM heap never shrinks; a 27 MB statement blocked 8 s). */
export const MAX_PARSE_BYTES = 1024 * 1024;

// The functions found are those of the signature table (signatures.ts).
export { STEADYTEXT_FUNCTIONS, type SteadyFunction } from './signatures.js';

/** The named argument through which the proxy hands the database its answer. */
export const ANSWER_ARG = '_steadytext_answer';

export type StatementKind = 'select' | 'insert' | 'update' | 'delete' | 'prepare' | 'execute' | 'explain'
  | 'create_view' | 'create_function' | 'do' | 'call' | 'other';

/** The clause of the innermost query level that holds the call. */
export type Clause = 'target' | 'from' | 'from_function' | 'join' | 'where' | 'group_by' | 'having' | 'window'
  | 'order_by' | 'limit' | 'values' | 'set' | 'returning' | 'on_conflict' | 'other';

/** A value the caller can use without asking the database: a bare literal or `$n`, optionally cast once. */
export type ArgValue =
  | { literal: string | null; type: 'string' | 'integer' | 'float' | 'boolean' | 'bitstring' | 'null'; cast?: string }
  | { param: number; cast?: string };

export interface CallArg {
  /** 0-based position in the argument list. */
  position: number;
  /** Named notation (`name := v` or `name => v`), as the parser resolved the name; null when positional. */
  name: string | null;
  /** The whole argument, `name =>` included; end exclusive. Comments at its edges are left out. */
  start: number;
  end: number;
  /** First byte of the value expression (after `=>` for a named argument). */
  valueStart: number;
  /** const: literals, $n, casts, operators and immutable functions of those; row: anything else. */
  kind: 'const' | 'row';
  /** `$n` numbers referenced, ascending. */
  params: number[];
  value?: ArgValue;
}

export interface SteadyCall {
  fn: SteadyFunction;
  schema: string | null;
  /** First byte of the (qualified) function name. */
  start: number;
  /** Byte offset of `(` and of the matching `)`; end = close + 1. */
  open: number;
  close: number;
  end: number;
  /** Empty when `plain` is false. */
  args: CallArg[];
  /** const when every argument is const. */
  kind: 'const' | 'row';
  params: number[];
  clause: Clause;
  inCte: boolean;
  /** Inside a subquery (sublink or FROM subquery) at any depth. */
  inSubquery: boolean;
  /** Inside the arguments of another steadytext call. */
  inCall: boolean;
  /** False when an argument cannot simply be appended (VARIADIC, ORDER BY, DISTINCT, *, FILTER, OVER,
   *  or the client already passes the answer argument): forward such a call unchanged. */
  plain: boolean;
  why?: string;
}

export interface StatementCalls {
  index: number;
  /** Byte range of the statement, without its terminating `;`. */
  start: number;
  end: number;
  kind: StatementKind;
  calls: SteadyCall[];
  /** False when the calls found must not be rewritten (stored definitions, views, EXPLAIN without ANALYZE,
   *  DO bodies the proxy cannot see): such a statement goes to the database unchanged. */
  rewritable: boolean;
  reason?: string;
  /** Highest `$n` referenced anywhere in the statement (0 if none). */
  maxParam: number;
  /** PREPARE name [(types)] AS query. typesClose is null without a type list; queryStart is the query's first byte. */
  prepare?: { name: string; types: number; nameEnd: number; typesOpen: number | null; typesClose: number | null; queryStart: number };
  /** EXECUTE name [(args)]. */
  execute?: { name: string; args: CallArg[]; open: number | null; close: number | null };
}

export interface ParseFailure {
  failure: 'too_large' | 'encoding' | 'syntax' | 'scs_backslash' | 'internal';
  message: string;
  /** Byte offset of a syntax error, when known. */
  position?: number;
}

export function isParseFailure(r: StatementCalls[] | ParseFailure): r is ParseFailure {
  return !Array.isArray(r);
}

let loading: Promise<void> | undefined;
let ready = false;

/** Loads the WASM parser; call once (repeated calls share the same load). */
export async function loadParser(): Promise<void> {
  await (loading ??= loadModule().then(() => { ready = true; }));
}

// ---- tokens --------------------------------------------------------------------------------------

/** A scanner token without comments (they never matter for structure); offsets are absolute bytes. */
export interface Tok { start: number; end: number; text: string; kw: boolean }

/** Scans sql[start, end), which must begin and end at token boundaries (outside strings and comments). */
export function scanRange(sql: Buffer, start: number, end: number): Tok[] {
  if (end <= start) return [];
  const out: Tok[] = [];
  for (const t of scanSync(sql.toString('utf8', start, end)).tokens) {
    if (t.tokenName === 'C_COMMENT' || t.tokenName === 'SQL_COMMENT') continue;
    out.push({ start: t.start + start, end: t.end + start, text: t.text, kw: t.keywordKind > 0 });
  }
  return out;
}

/** True for a keyword token spelled `word` (a quoted identifier is never a keyword). */
export function isKw(t: Tok | undefined, word: string): boolean {
  return !!t && t.kw && t.text.toUpperCase() === word;
}

/** From the `(` or `[` at toks[open], the index of the matching close and the comma-separated
 *  segments at depth 1 as [first, last] token indexes (an empty list has no segment). */
export function matchBrackets(toks: Tok[], open: number): { close: number; segs: [number, number][] } | null {
  let depth = 0;
  let segStart = open + 1;
  const segs: [number, number][] = [];
  for (let i = open; i < toks.length; i++) {
    const s = toks[i].text;
    if (s === '(' || s === '[') depth++;
    else if (s === ')' || s === ']') {
      if (--depth === 0) {
        if (i > segStart || segs.length) segs.push([segStart, i - 1]);
        return { close: i, segs };
      }
    } else if (s === ',' && depth === 1) {
      segs.push([segStart, i - 1]);
      segStart = i + 1;
    }
  }
  return null;
}

/** Index of the first token starting at or after byte `at`. */
export function tokenAt(toks: Tok[], at: number): number {
  let lo = 0, hi = toks.length;
  while (lo < hi) { const m = (lo + hi) >> 1; if (toks[m].start < at) lo = m + 1; else hi = m; }
  return lo;
}

// ---- AST helpers ---------------------------------------------------------------------------------

// The JSON tree: a Node-typed field holds {Type: {...}}; a field of a fixed struct type holds the struct.
export type J = Record<string, any>;

/** [type, body] when v is a wrapped node ({Type: {...}}), else null. */
export function nodeOf(v: unknown): [string, J] | null {
  if (!v || typeof v !== 'object' || Array.isArray(v)) return null;
  const keys = Object.keys(v);
  if (keys.length !== 1) return null;
  const k = keys[0];
  const c = k.charCodeAt(0);
  const body = (v as J)[k];
  return c >= 65 && c <= 90 && body && typeof body === 'object' && !Array.isArray(body) ? [k, body] : null;
}

/** Function name parts as the parser resolved them (unquoted folded to lower case, U&"" decoded). */
export function funcName(fc: J): { name: string; schema: string | null } {
  const parts: string[] = (fc.funcname ?? []).map((p: J) => p.String?.sval ?? '');
  return { name: parts[parts.length - 1] ?? '', schema: parts.length > 1 ? parts[parts.length - 2] : null };
}

/** Smallest non-negative location in a subtree (where an expression starts, give or take a keyword). */
export function minLocation(v: unknown): number {
  let best = Infinity;
  const visit = (x: unknown): void => {
    if (!x || typeof x !== 'object') return;
    if (Array.isArray(x)) { for (const y of x) visit(y); return; }
    for (const [k, y] of Object.entries(x)) {
      if (k === 'location' && typeof y === 'number' && y >= 0 && y < best) best = y;
      else if (typeof y === 'object') visit(y);
    }
  };
  visit(v);
  return best;
}

const isLocKey = (k: string): boolean => k === 'location' || k === 'list_start' || k === 'list_end';

/** Largest location in a subtree: every token of a node lies before the next location outside it. */
function maxLocation(v: unknown): number {
  let best = -1;
  const visit = (x: unknown): void => {
    if (!x || typeof x !== 'object') return;
    for (const [k, y] of Array.isArray(x) ? x.entries() : Object.entries(x)) {
      if (typeof y === 'number') { if (isLocKey(String(k)) && y > best) best = y; } else visit(y);
    }
  };
  visit(v);
  return best;
}

/** Every `$n` in a subtree. */
export function collectParams(v: unknown, into: Set<number>): Set<number> {
  if (!v || typeof v !== 'object') return into;
  if (Array.isArray(v)) { for (const y of v) collectParams(y, into); return into; }
  const n = nodeOf(v);
  if (n && n[0] === 'ParamRef') { into.add(n[1].number ?? 0); return into; }
  for (const y of Object.values(v)) if (typeof y === 'object') collectParams(y, into);
  return into;
}

// Functions whose value depends only on their arguments (pg_catalog), so a call of constants is a constant.
export const IMMUTABLE_FUNCS: ReadonlySet<string> = new Set([
  'upper', 'lower', 'initcap', 'btrim', 'ltrim', 'rtrim', 'trim', 'substr', 'substring', 'replace', 'left', 'right',
  'repeat', 'lpad', 'rpad', 'reverse', 'translate', 'split_part', 'md5', 'length', 'char_length',
  'character_length', 'octet_length', 'bit_length', 'chr', 'ascii', 'concat', 'concat_ws', 'format',
  'quote_literal', 'quote_ident', 'quote_nullable', 'regexp_replace', 'regexp_substr', 'strpos', 'position',
  'starts_with', 'overlay', 'normalize', 'encode', 'decode', 'string_to_array', 'array_to_string', 'array_cat',
  'array_append', 'array_prepend', 'array_length', 'cardinality', 'abs', 'round', 'trunc', 'ceil', 'ceiling',
  'floor', 'mod', 'power', 'sqrt', 'sign', 'to_hex', 'json_build_object', 'jsonb_build_object',
  'json_build_array', 'jsonb_build_array', 'to_json', 'to_jsonb', 'jsonb_extract_path_text',
  'json_extract_path_text',
]);
// Node types that are constant when all their children are.
const CONST_NODES: ReadonlySet<string> = new Set([
  'A_Const', 'ParamRef', 'TypeCast', 'TypeName', 'A_Expr', 'BoolExpr', 'NullTest', 'BooleanTest', 'CaseExpr',
  'CaseWhen', 'CoalesceExpr', 'MinMaxExpr', 'A_ArrayExpr', 'RowExpr', 'CollateClause', 'A_Indirection',
  'A_Indices', 'String', 'Integer', 'Float', 'List', 'NamedArgExpr',
]);

export function plainFuncCall(fc: J): boolean {
  return !fc.agg_order && !fc.agg_filter && !fc.over && !fc.agg_star && !fc.agg_distinct && !fc.func_variadic
    && !fc.agg_within_group;
}

/** True when the expression's value is the same wherever and whenever this session evaluates it. */
export function isConstExpr(v: unknown): boolean {
  if (!v || typeof v !== 'object') return true;
  if (Array.isArray(v)) return v.every(isConstExpr);
  const n = nodeOf(v);
  if (n) {
    const [type, body] = n;
    if (type === 'FuncCall') {
      const { name, schema } = funcName(body);
      return (schema === null || schema === 'pg_catalog') && IMMUTABLE_FUNCS.has(name) && plainFuncCall(body)
        && isConstExpr(body.args ?? []);
    }
    if (!CONST_NODES.has(type)) return false;
    return Object.values(body).every(isConstExpr);
  }
  return Object.values(v).every(isConstExpr); // an unwrapped struct such as TypeCast.typeName
}

function constValue(c: J): ArgValue {
  if (c.isnull) return { literal: null, type: 'null' };
  if (c.sval) return { literal: c.sval.sval ?? '', type: 'string' };
  if (c.ival) return { literal: String(c.ival.ival ?? 0), type: 'integer' };
  if (c.fval) return { literal: c.fval.fval ?? '0', type: 'float' };
  if (c.boolval) return { literal: c.boolval.boolval ? 'true' : 'false', type: 'boolean' };
  if (c.bsval) return { literal: c.bsval.bsval ?? '', type: 'bitstring' };
  return { literal: null, type: 'null' };
}

function argValue(v: unknown): ArgValue | undefined {
  let n = nodeOf(v);
  let cast: string | undefined;
  if (n && n[0] === 'TypeCast') {
    const tn = n[1].typeName ?? {};
    if (tn.typmods || tn.arrayBounds || tn.setof || tn.pct_type) return undefined;
    const names: J[] = tn.names ?? [];
    cast = names[names.length - 1]?.String?.sval;
    n = nodeOf(n[1].arg);
  }
  if (!n) return undefined;
  if (n[0] === 'ParamRef') return cast ? { param: n[1].number ?? 0, cast } : { param: n[1].number ?? 0 };
  if (n[0] === 'A_Const') { const val = constValue(n[1]); return cast ? { ...val, cast } : val; }
  return undefined;
}

// ---- statement walk ------------------------------------------------------------------------------

interface Ctx { clause: Clause; cte: boolean; sub: boolean; call: boolean }
interface Found { fc: J; fn: SteadyFunction; schema: string | null; ctx: Ctx }

// Which clause a field of a query node is; unlisted fields keep the enclosing clause.
const FIELD_CLAUSE: Record<string, Record<string, Clause>> = {
  SelectStmt: {
    targetList: 'target', fromClause: 'from', whereClause: 'where', groupClause: 'group_by', havingClause: 'having',
    windowClause: 'window', sortClause: 'order_by', limitOffset: 'limit', limitCount: 'limit', valuesLists: 'values',
    distinctClause: 'other', lockingClause: 'other', intoClause: 'other',
  },
  InsertStmt: { returningClause: 'returning', onConflictClause: 'on_conflict', cols: 'other' },
  UpdateStmt: { targetList: 'set', fromClause: 'from', whereClause: 'where', returningClause: 'returning' },
  DeleteStmt: { usingClause: 'from', whereClause: 'where', returningClause: 'returning' },
  MergeStmt: { returningClause: 'returning' },
  JoinExpr: { quals: 'join' },
  RangeFunction: { functions: 'from_function' },
};

interface WalkState { found: Found[]; maxParam: number; locs: number[] }

function walk(v: unknown, ctx: Ctx, st: WalkState): void {
  if (!v || typeof v !== 'object') return;
  if (Array.isArray(v)) { for (const x of v) walk(x, ctx, st); return; }
  const n = nodeOf(v);
  if (!n) {
    for (const [k, x] of Object.entries(v)) {
      if (typeof x === 'object') walk(x, ctx, st);
      else if (typeof x === 'number' && isLocKey(k)) st.locs.push(x);
    }
    return;
  }
  const [type, body] = n;
  if (type === 'FuncCall') return walkFuncCall(body, ctx, st);
  if (type === 'ParamRef') st.maxParam = Math.max(st.maxParam, body.number ?? 0);
  const fields = FIELD_CLAUSE[type];
  for (const [k, x] of Object.entries(body)) {
    if (typeof x !== 'object') { if (typeof x === 'number' && isLocKey(k)) st.locs.push(x); continue; }
    if (k === 'funccall') { walkFuncCall(x, ctx, st); continue; } // CallStmt.funccall is an unwrapped FuncCall
    let c = ctx;
    if (fields?.[k]) c = { ...ctx, clause: fields[k] };
    else if (type === 'SubLink' && k === 'subselect') c = { ...ctx, sub: true };
    else if (type === 'RangeSubselect' && k === 'subquery') c = { ...ctx, sub: true };
    else if (type === 'CommonTableExpr' && k === 'ctequery') c = { ...ctx, cte: true };
    walk(x, c, st);
  }
}

function walkFuncCall(fc: J, ctx: Ctx, st: WalkState): void {
  const { name, schema } = funcName(fc);
  let inner = ctx;
  if (isSteadyFunction(name)) {
    st.found.push({ fc, fn: name, schema, ctx });
    inner = { ...ctx, call: true };
  }
  for (const [k, x] of Object.entries(fc)) {
    if (k !== 'funcname' && typeof x === 'object') walk(x, inner, st);
    else if (typeof x === 'number' && isLocKey(k)) st.locs.push(x);
  }
}

function statementKind(type: string, body: J): { kind: StatementKind; rewritable: boolean; reason?: string } {
  switch (type) {
    case 'SelectStmt': return { kind: 'select', rewritable: true };
    case 'InsertStmt': return { kind: 'insert', rewritable: true };
    case 'UpdateStmt': return { kind: 'update', rewritable: true };
    case 'DeleteStmt': return { kind: 'delete', rewritable: true };
    case 'PrepareStmt': return { kind: 'prepare', rewritable: true };
    case 'ExecuteStmt': return { kind: 'execute', rewritable: true };
    case 'CallStmt': return { kind: 'call', rewritable: true };
    case 'ExplainStmt': {
      const analyze = (body.options ?? []).some((o: J) => {
        const d = o.DefElem;
        if (d?.defname !== 'analyze') return false;
        const a = d.arg;
        if (!a) return true;
        const s = String(a.String?.sval ?? a.Boolean?.boolval ?? a.Integer?.ival ?? '').toLowerCase();
        return s === 'true' || s === 'on' || s === '1' || s === 'yes';
      });
      return analyze ? { kind: 'explain', rewritable: true }
        : { kind: 'explain', rewritable: false, reason: 'EXPLAIN without ANALYZE does not run the calls' };
    }
    case 'ViewStmt': return { kind: 'create_view', rewritable: false, reason: 'a view must keep calling the function' };
    case 'CreateFunctionStmt':
      return { kind: 'create_function', rewritable: false, reason: 'calls in a function definition run later' };
    case 'DoStmt': return { kind: 'do', rewritable: false, reason: 'a DO body is a string: its calls use the callback path' };
    case 'MergeStmt': case 'DeclareCursorStmt': return { kind: 'other', rewritable: true };
    case 'CopyStmt': return { kind: 'other', rewritable: !!body.query };
    case 'CreateTableAsStmt':
      return body.objtype === 'OBJECT_MATVIEW'
        ? { kind: 'other', rewritable: false, reason: 'a materialized view recomputes its calls on REFRESH' }
        : { kind: 'other', rewritable: true };
    default: return { kind: 'other', rewritable: false, reason: `calls in ${type} are stored in a definition` };
  }
}

// ---- findCalls -----------------------------------------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

class Internal extends Error {} // thrown when parser and scanner disagree

/**
 * Parses a query buffer (one or several statements) and returns, per statement, its range, kind and
 * every steadytext call in it. Synchronous once loadParser() has resolved. With
 * standardConformingStrings false (the session's setting), a backslash inside a plain '' string makes the
 * lexing ambiguous for us, so that buffer is reported as a failure and must be forwarded unchanged.
 */
export function findCalls(sql: Buffer, opts: { standardConformingStrings?: boolean } = {}): StatementCalls[] | ParseFailure {
  if (!ready) throw new Error('findCalls: call loadParser() first');
  if (sql.length === 0) return [];
  if (sql.length > MAX_PARSE_BYTES) return { failure: 'too_large', message: `query of ${sql.length} bytes exceeds ${MAX_PARSE_BYTES}` };
  if (sql.includes(0)) return { failure: 'encoding', message: 'query contains a NUL byte' };
  let text: string;
  try { text = utf8.decode(sql); } catch { return { failure: 'encoding', message: 'query is not valid UTF-8' }; }
  if (opts.standardConformingStrings === false && sql.includes(0x5c)) {
    try {
      for (const t of scanSync(text).tokens) {
        if (t.tokenName === 'SCONST' && t.text.startsWith("'") && t.text.includes('\\')) {
          return { failure: 'scs_backslash', message: 'backslash in a string literal with standard_conforming_strings off', position: t.start };
        }
      }
    } catch (e) { return { failure: 'syntax', message: (e as Error).message }; }
  }
  let tree: J;
  try { tree = parseSync(text); } catch (e) {
    const pos = (e as { sqlDetails?: { cursorPosition?: number } }).sqlDetails?.cursorPosition;
    return {
      failure: 'syntax', message: (e as Error).message,
      ...(pos !== undefined ? { position: Buffer.byteLength([...text].slice(0, pos).join('')) } : {}),
    };
  }
  try {
    return (tree.stmts ?? []).map((raw: J, index: number) => statementCalls(sql, raw, index));
  } catch (e) { // an inconsistency between parser and scanner: forward unchanged rather than guess
    return { failure: 'internal', message: (e as Error).message };
  }
}

const astOf = new WeakMap<StatementCalls, J>();
/** The parse tree node ({Type: {...}}) of a statement returned by findCalls. */
export function statementAst(st: StatementCalls): J | undefined { return astOf.get(st); }

function statementCalls(sql: Buffer, raw: J, index: number): StatementCalls {
  const start: number = raw.stmt_location ?? 0;
  const end: number = raw.stmt_len ? start + raw.stmt_len : sql.length;
  const n = nodeOf(raw.stmt);
  if (!n) throw new Internal('statement without a node');
  const [type, body] = n;
  const { kind, rewritable, reason } = statementKind(type, body);
  const st: WalkState = { found: [], maxParam: 0, locs: [] };
  walk(raw.stmt, { clause: 'other', cte: false, sub: false, call: false }, st);

  const sc = new Scanner(sql, end, st.locs);
  st.found.sort((a, b) => a.fc.location - b.fc.location); // outer calls first: nested ones reuse their tokens
  const calls = st.found.map((f) => buildCall(f, sc));
  const out: StatementCalls = { index, start, end, kind, calls, rewritable, maxParam: st.maxParam };
  if (calls.length && !rewritable && reason) out.reason = reason;
  if (kind === 'prepare') {
    const q = minLocation(body.query); // PREPARE name (types) AS lies before the query's first location
    out.prepare = prepareInfo(body, sc.get(start, Number.isFinite(q) ? Math.min(q, end) : end), start);
  }
  if (kind === 'execute') out.execute = executeInfo(body, sc.get(start, end), start);
  astOf.set(out, raw.stmt);
  return out;
}

function buildArgs(nodes: J[], toks: Tok[], segs: [number, number][]): CallArg[] {
  if (segs.length !== nodes.length) throw new Internal(`argument count mismatch: ${segs.length} vs ${nodes.length}`);
  return nodes.map((node, position) => {
    const [a, b] = segs[position];
    const named = nodeOf(node)?.[0] === 'NamedArgExpr' ? nodeOf(node)![1] : null;
    const value = named ? named.arg : node;
    let valueStart = toks[a].start;
    if (named) {
      const op = toks[a + 1]?.text;
      if (op !== ':=' && op !== '=>' || a + 2 > b) throw new Internal('named argument without := or =>');
      valueStart = toks[a + 2].start;
    }
    const loc = minLocation(value);
    if (loc !== Infinity && (loc < toks[a].start || loc >= toks[b].end)) throw new Internal('argument outside its tokens');
    const kind = isConstExpr(value) ? 'const' : 'row';
    const arg: CallArg = {
      position, name: named ? named.name : null, start: toks[a].start, end: toks[b].end, valueStart, kind,
      params: [...collectParams(value, new Set())].sort((x, y) => x - y),
    };
    const v = argValue(value);
    if (v) arg.value = v;
    return arg;
  });
}

// Scanning costs more than parsing (and grows with the text), so only the stretch from a call's name to the
// next parser location after everything inside it is scanned; the closing parenthesis lies in between.
class Scanner {
  private done: { from: number; to: number; toks: Tok[] }[] = [];
  private locs: number[];
  constructor(private sql: Buffer, readonly end: number, locs: number[]) { this.locs = locs.sort((a, b) => a - b); }
  get(from: number, to: number): Tok[] {
    const hit = this.done.find((r) => r.from <= from && to <= r.to);
    if (hit) return hit.toks;
    const toks = scanRange(this.sql, from, to);
    this.done.push({ from, to, toks });
    return toks;
  }
  /** The first location after x (a token start), or the statement end. */
  boundAfter(x: number): number {
    const i = this.locs.findIndex((l) => l > x);
    return i < 0 ? this.end : Math.min(this.locs[i], this.end);
  }
}

function locateCall(toks: Tok[], loc: number): { toks: Tok[]; open: number; m: { close: number; segs: [number, number][] } } | null {
  let i = tokenAt(toks, loc);
  if (toks[i]?.start !== loc) return null;
  while (i < toks.length && toks[i].text !== '(') i++;
  const m = i < toks.length ? matchBrackets(toks, i) : null;
  return m ? { toks, open: i, m } : null;
}

function buildCall(f: Found, sc: Scanner): SteadyCall {
  const loc: number = f.fc.location;
  // If the bound were ever short, scan on to the end of the statement rather than give up.
  const found = locateCall(sc.get(loc, sc.boundAfter(maxLocation(f.fc))), loc) ?? locateCall(sc.get(loc, sc.end), loc);
  if (!found) throw new Internal('unbalanced call parentheses');
  const { toks, open: i, m } = found;
  let plain = plainFuncCall(f.fc);
  let why = plain ? undefined : 'VARIADIC, ORDER BY, DISTINCT, *, FILTER or OVER in the call';
  const args = plain ? buildArgs(f.fc.args ?? [], toks, m.segs) : [];
  if (args.some((a) => a.name === ANSWER_ARG)) { plain = false; why = `the client passes ${ANSWER_ARG} itself`; }
  const params = new Set<number>();
  for (const a of args) for (const p of a.params) params.add(p);
  const call: SteadyCall = {
    fn: f.fn, schema: f.schema, start: loc, open: toks[i].start, close: toks[m.close].start, end: toks[m.close].end,
    args, kind: plain && args.every((a) => a.kind === 'const') ? 'const' : 'row',
    params: [...params].sort((x, y) => x - y),
    clause: f.ctx.clause, inCte: f.ctx.cte, inSubquery: f.ctx.sub, inCall: f.ctx.call, plain,
  };
  if (why) call.why = why;
  return call;
}

function prepareInfo(body: J, toks: Tok[], start: number): StatementCalls['prepare'] {
  let i = tokenAt(toks, start) + 1; // the token after PREPARE is the name
  const nameEnd = toks[i].end;
  i++;
  let typesOpen: number | null = null, typesClose: number | null = null;
  if (toks[i]?.text === '(') {
    const m = matchBrackets(toks, i);
    if (!m) throw new Internal('unbalanced PREPARE types');
    typesOpen = toks[i].start; typesClose = toks[m.close].start; i = m.close + 1;
  }
  if (!isKw(toks[i], 'AS') || !toks[i + 1]) throw new Internal('PREPARE without AS');
  return { name: body.name, types: (body.argtypes ?? []).length, nameEnd, typesOpen, typesClose, queryStart: toks[i + 1].start };
}

function executeInfo(body: J, toks: Tok[], start: number): StatementCalls['execute'] {
  const i = tokenAt(toks, start) + 2; // EXECUTE name (
  if (toks[i]?.text !== '(') return { name: body.name, args: [], open: null, close: null };
  const m = matchBrackets(toks, i);
  if (!m) throw new Internal('unbalanced EXECUTE arguments');
  return { name: body.name, args: buildArgs(body.params ?? [], toks, m.segs), open: toks[i].start, close: toks[m.close].start };
}
