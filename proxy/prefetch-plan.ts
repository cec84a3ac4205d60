// Derives, from a statement whose steadytext_generate/steadytext_embed calls take row values, a read-only
// SELECT that returns the DISTINCT argument tuples the statement will need, so the proxy can compute them
// before forwarding the statement. The query is spliced from the client's own text (same FROM, joins,
// WHERE, GROUP BY, CTEs, `$n`), never deparsed. Prefetch is an optimisation: a superset or a subset of the
// needed tuples is acceptable, running anything with side effects is not, so unknown functions,
// data-modifying CTEs, locking clauses and cursors give null.
import {
  IMMUTABLE_FUNCS, STEADYTEXT_FUNCTIONS, funcName, isKw, matchBrackets, nodeOf, scanRange, statementAst, tokenAt,
  type J, type StatementCalls, type SteadyCall, type Tok,
} from './calls.js';

export interface PrefetchCall {
  fn: 'steadytext_generate' | 'steadytext_embed';
  /** Index of the call in StatementCalls.calls. */
  call: number;
  /** Output column (0-based) holding each argument of the call, by argument position. */
  argColumns: number[];
}

export interface PrefetchPlan {
  sql: string;
  calls: PrefetchCall[];
  /** `$k` of the derived query is the statement's `$params[k-1]`: bind those values in that order. */
  params: number[];
}

// Aggregates and window functions: a call inside one is evaluated per input row, not per group.
const AGGREGATES: ReadonlySet<string> = new Set([
  'count', 'sum', 'avg', 'min', 'max', 'string_agg', 'array_agg', 'json_agg', 'jsonb_agg', 'json_object_agg',
  'jsonb_object_agg', 'bool_and', 'bool_or', 'every', 'bit_and', 'bit_or', 'bit_xor', 'stddev', 'stddev_pop',
  'stddev_samp', 'variance', 'var_pop', 'var_samp', 'corr', 'covar_pop', 'covar_samp', 'percentile_cont',
  'percentile_disc', 'mode', 'xmlagg', 'range_agg', 'range_intersect_agg', 'any_value',
  'row_number', 'rank', 'dense_rank', 'percent_rank', 'cume_dist', 'ntile', 'lag', 'lead', 'first_value',
  'last_value', 'nth_value',
]);
// Functions without side effects that may run in the derived query (besides IMMUTABLE_FUNCS and AGGREGATES).
const READ_ONLY_FUNCS: ReadonlySet<string> = new Set([
  'now', 'clock_timestamp', 'statement_timestamp', 'transaction_timestamp', 'timeofday', 'random', 'date_trunc',
  'date_part', 'extract', 'age', 'to_char', 'to_date', 'to_timestamp', 'to_number', 'make_date', 'make_time',
  'make_timestamp', 'make_timestamptz', 'make_interval', 'date_bin', 'timezone', 'isfinite', 'justify_days',
  'justify_hours', 'justify_interval', 'coalesce', 'nullif', 'greatest', 'least', 'unnest', 'generate_series',
  'array_position', 'array_positions', 'array_remove', 'array_replace', 'array_dims', 'array_lower',
  'array_upper', 'jsonb_array_elements', 'jsonb_array_elements_text', 'json_array_elements',
  'json_array_elements_text', 'jsonb_each', 'jsonb_each_text', 'json_each', 'json_each_text', 'jsonb_typeof',
  'json_typeof', 'jsonb_array_length', 'json_array_length', 'jsonb_object_keys', 'json_object_keys',
  'jsonb_path_query', 'jsonb_path_exists', 'jsonb_path_match', 'regexp_match', 'regexp_matches', 'regexp_like',
  'regexp_count', 'regexp_instr', 'regexp_split_to_table', 'regexp_split_to_array', 'string_to_table',
  'current_setting', 'gen_random_uuid', 'pg_column_size', 'num_nulls', 'num_nonnulls', 'cosine_distance',
  'l2_distance', 'l1_distance', 'inner_product', 'vector_dims', 'vector_norm', 'l2_normalize', 'subvector',
]);
const STEADY: ReadonlySet<string> = new Set(STEADYTEXT_FUNCTIONS);
// Declared parameter types (seed signatures): each column is cast like the call coerces its argument, which
// also gives a bare `$n` or an untyped literal the type it had in the call.
const SIGNATURES: Record<PrefetchCall['fn'], [string, string][]> = {
  steadytext_generate: [['prompt', 'text'], ['max_tokens', 'int4'], ['seed', 'int4'], ['temperature', 'float8'], ['model_size', 'text']],
  steadytext_embed: [['text', 'text'], ['seed', 'int4'], ['model_size', 'text']],
};

function aggLike(fc: J): boolean {
  return !!(fc.over || fc.agg_star || fc.agg_order || fc.agg_distinct || fc.agg_filter || fc.agg_within_group)
    || AGGREGATES.has(funcName(fc).name);
}

/** True when running the subtree could write, lock, call back into steadytext or run unknown code. */
function unsafe(v: unknown): boolean {
  if (!v || typeof v !== 'object') return false;
  if (Array.isArray(v)) return v.some(unsafe);
  const n = nodeOf(v);
  if (n) {
    const [type, body] = n;
    if (type === 'InsertStmt' || type === 'UpdateStmt' || type === 'DeleteStmt' || type === 'MergeStmt'
      || type === 'CurrentOfExpr' || type === 'IntoClause') return true;
    if (type === 'SelectStmt' && (body.lockingClause || body.intoClause)) return true;
    if (type === 'FuncCall') {
      const { name, schema } = funcName(body);
      if (STEADY.has(name) || (schema !== null && schema !== 'pg_catalog')) return true;
      if (!IMMUTABLE_FUNCS.has(name) && !READ_ONLY_FUNCS.has(name) && !AGGREGATES.has(name)) return true;
    }
    return Object.values(body).some(unsafe);
  }
  return Object.values(v).some(unsafe);
}

/** Whether any agg-like function encloses the FuncCall at `loc` (within `v`), or undefined if not found. */
function insideAggregate(v: unknown, loc: number, inAgg = false): boolean | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const n = nodeOf(v);
  let o = v as J;
  if (n && n[0] === 'FuncCall') {
    if (n[1].location === loc) return inAgg;
    inAgg ||= aggLike(n[1]);
    o = n[1];
  } else if (n && (n[0] === 'SubLink' || n[0] === 'RangeSubselect')) return undefined; // another query level
  for (const x of Array.isArray(o) ? o : Object.values(o)) {
    const r = insideAggregate(x, loc, inAgg);
    if (r !== undefined) return r;
  }
  return undefined;
}

function containsAggregate(v: unknown): boolean {
  if (!v || typeof v !== 'object') return false;
  if (Array.isArray(v)) return v.some(containsAggregate);
  const n = nodeOf(v);
  if (n && (n[0] === 'SubLink' || n[0] === 'RangeSubselect')) return false;
  if (n && n[0] === 'FuncCall' && aggLike(n[1])) return true;
  return Object.values(n ? n[1] : v).some(containsAggregate);
}

/** Depth-0 token indexes in [from, to) of a bracket-balanced range. */
function* level0(toks: Tok[], from: number, to: number): Generator<number> {
  let depth = 0;
  for (let i = from; i < to; i++) {
    const s = toks[i].text;
    if (s === '(' || s === '[') depth++;
    else if (s === ')' || s === ']') depth--;
    else if (depth === 0) yield i;
  }
}

const isParamTok = (s: string): boolean => {
  if (s.length < 2 || s[0] !== '$') return false;
  for (let i = 1; i < s.length; i++) if (s.charCodeAt(i) < 48 || s.charCodeAt(i) > 57) return false;
  return true;
};

/** Copies source text while renumbering `$n` densely (the derived query may use fewer parameters). */
class Emitter {
  readonly params: number[] = [];
  constructor(private sql: Buffer, private toks: Tok[], private types: (string | null)[] = []) {}
  /** Text of tokens [a, b] inclusive (comments inside kept). */
  text(a: number, b: number): string {
    if (b < a) return '';
    let out = '';
    let pos = this.toks[a].start;
    for (let i = a; i <= b; i++) {
      const t = this.toks[i];
      if (!isParamTok(t.text)) continue;
      const n = Number(t.text.slice(1));
      let k = this.params.indexOf(n) + 1;
      if (k === 0) k = this.params.push(n);
      const type = this.types[n - 1];
      out += this.sql.toString('utf8', pos, t.start) + (type ? `($${k}::${type})` : `$${k}`);
      pos = t.end;
    }
    return out + this.sql.toString('utf8', pos, this.toks[b].end);
  }
  emit(pieces: Piece[]): string {
    return pieces.map((p) => (typeof p === 'string' ? p : this.text(p[0], p[1]))).join('');
  }
  /** Text of the tokens covering bytes [start, end). */
  bytes(start: number, end: number): string {
    return this.text(tokenAt(this.toks, start), tokenAt(this.toks, end) - 1);
  }
}

// Pieces of the derived query: literal text, or a range [first, last] of the statement's tokens. Emitted at
// the end in textual order so `$n` are renumbered in the order they appear.
type Piece = string | [number, number];
interface Derived { head: Piece[]; body: Piece[] }

/** SELECT scope in tokens [qi, qe): WITH text, and the FROM..WHERE[..GROUP BY..HAVING..WINDOW] text. */
function selectParts(sel: J, toks: Tok[], qi: number, qe: number, perRow: boolean, outerWith: Piece[]): Derived | null {
  if (sel.op !== 'SETOP_NONE' || sel.valuesLists) return null;
  let selIdx = -1, clause = -1, group = -1, tail = qe;
  for (const i of level0(toks, qi, qe)) {
    const t = toks[i], prev = toks[i - 1]; // IS DISTINCT FROM, WITHIN GROUP are not clauses
    if (selIdx < 0) { if (isKw(t, 'SELECT')) selIdx = i; continue; }
    if (isKw(t, 'UNION') || isKw(t, 'INTERSECT') || isKw(t, 'EXCEPT') || (clause >= 0 && isKw(t, 'INTO'))) return null;
    const fromKw = isKw(t, 'FROM') && !isKw(prev, 'DISTINCT');
    const groupKw = (isKw(t, 'GROUP') && !isKw(prev, 'WITHIN')) || isKw(t, 'HAVING') || isKw(t, 'WINDOW');
    if (clause < 0 && (fromKw || groupKw || isKw(t, 'WHERE'))) clause = i;
    if (clause >= 0 && group < 0 && groupKw) group = i;
    if (['ORDER', 'LIMIT', 'OFFSET', 'FETCH', 'FOR'].some((w) => isKw(t, w))) { tail = i; break; }
  }
  if (selIdx < 0) return null;
  let head = outerWith;
  if (selIdx > qi) {
    if (!sel.withClause || !isKw(toks[qi], 'WITH') || outerWith.length) return null;
    head = [[qi, selIdx - 1]];
  }
  if (clause < 0) return { head, body: [] };
  if (!perRow && group >= 0 && !groupBySafe(sel)) return null;
  const end = perRow && group >= 0 ? group : tail;
  return { head, body: end > clause ? [[clause, end - 1]] : [] };
}

/** GROUP BY 1 or GROUP BY <output alias> would mean something else once the target list is replaced. */
function groupBySafe(sel: J): boolean {
  const aliases = new Set<string>((sel.targetList ?? []).map((t: J) => t.ResTarget?.name).filter(Boolean));
  const ok = (v: unknown): boolean => {
    const n = nodeOf(v);
    if (!n) return true;
    if (n[0] === 'A_Const') return false;
    if (n[0] === 'GroupingSet') return (n[1].content ?? []).every(ok);
    if (n[0] === 'RowExpr') return (n[1].args ?? []).every(ok);
    if (n[0] === 'ColumnRef') {
      const f: J[] = n[1].fields ?? [];
      return !(f.length === 1 && aliases.has(f[0].String?.sval));
    }
    return true;
  };
  return (sel.groupClause ?? []).every(ok);
}

/**
 * The prefetch query of a statement from findCalls over the same buffer, or null when there is nothing to
 * prefetch or no safe derivation. Calls in CTEs, subqueries, VALUES, RETURNING or WHERE are left out.
 */
export function derivePrefetch(sql: Buffer, stmt: StatementCalls): PrefetchPlan | null {
  const ast = statementAst(stmt);
  const top = nodeOf(ast);
  if (!top) return null;
  let [type, node] = top;
  let qs = stmt.start;
  const types: (string | null)[] = [];
  const toks = scanRange(sql, stmt.start, stmt.end);
  if (type === 'PrepareStmt' && stmt.prepare) {
    if (stmt.prepare.typesOpen !== null) { // declared types become casts, since the derived query is untyped
      const m = matchBrackets(toks, tokenAt(toks, stmt.prepare.typesOpen));
      if (!m) return null;
      for (const [a, b] of m.segs) {
        const s = sql.toString('utf8', toks[a].start, toks[b].end);
        types.push(s.toLowerCase() === 'unknown' ? null : s);
      }
    }
    qs = stmt.prepare.queryStart;
    [type, node] = nodeOf(node.query) ?? ['', {}];
  } else if (type === 'ExplainStmt' && stmt.rewritable) {
    const q = nodeOf(node.query);
    const i = [...level0(toks, 1, toks.length)]
      .find((j) => ['SELECT', 'WITH', 'UPDATE', 'INSERT'].some((w) => isKw(toks[j], w)));
    if (!q || i === undefined) return null;
    qs = toks[i].start;
    [type, node] = q;
  }
  const wanted: Record<string, string[]> = { SelectStmt: ['target', 'order_by'], UpdateStmt: ['set'], InsertStmt: ['target'] };
  const picked = stmt.calls
    .map((c, i) => ({ c, i }))
    .filter(({ c }) => (c.fn === 'steadytext_generate' || c.fn === 'steadytext_embed') && c.plain && c.kind === 'row'
      && !c.inCall && !c.inCte && !c.inSubquery && c.start >= qs && (wanted[type] ?? []).includes(c.clause));
  if (!picked.length) return null;

  const qi = tokenAt(toks, qs);
  const qe = toks.length;
  const em = new Emitter(sql, toks, types);
  let scope: J = node; // the query level whose rows the calls run over
  let executed: unknown[] = [];
  let parts: Derived | null = null;

  if (type === 'SelectStmt' || type === 'InsertStmt') {
    let sel = node, si = qi, se = qe;
    let outerWith: Piece[] = [];
    if (type === 'InsertStmt') {
      const s = nodeOf(node.selectStmt);
      if (!s || s[0] !== 'SelectStmt') return null;
      sel = s[1];
      const lv = [...level0(toks, qi, qe)];
      const ins = lv.find((j) => isKw(toks[j], 'INSERT'));
      if (ins === undefined) return null;
      if (ins > qi) outerWith = [[qi, ins - 1]];
      si = lv.find((j) => j > ins && (isKw(toks[j], 'SELECT') || isKw(toks[j], 'WITH'))) ?? -1;
      if (si < 0) return null;
      const oc = node.onConflictClause ? tokenAt(toks, node.onConflictClause.location) : qe;
      se = Math.min(oc, lv.find((j) => j > si && isKw(toks[j], 'RETURNING')) ?? qe);
      executed.push(node.withClause);
    }
    scope = sel;
    // A call inside an aggregate runs per input row: derive over FROM/WHERE only, without the grouping.
    const perRow = picked.some(({ c }) => insideAggregate(sel.targetList, c.start) || insideAggregate(sel.sortClause, c.start));
    if (perRow) {
      for (let k = picked.length - 1; k >= 0; k--) {
        if (picked[k].c.args.some((a) => containsAggregate(argNode(scope, picked[k].c, a.position)))) picked.splice(k, 1);
      }
      if (!picked.length) return null;
    }
    parts = selectParts(sel, toks, si, se, perRow, outerWith);
    executed.push(sel.withClause, sel.fromClause, sel.whereClause);
    if (!perRow) executed.push(sel.groupClause, sel.havingClause, sel.windowClause);
  } else if (type === 'UpdateStmt') {
    if (nodeOf(node.whereClause)?.[0] === 'CurrentOfExpr') return null;
    const lv = [...level0(toks, qi, qe)];
    const upd = lv.find((j) => isKw(toks[j], 'UPDATE'));
    const firstTarget = tokenAt(toks, node.targetList?.[0]?.ResTarget?.location ?? -1);
    if (upd === undefined) return null;
    const set = lv.filter((j) => j > upd && j < firstTarget && isKw(toks[j], 'SET')).pop();
    if (set === undefined || set <= upd + 1) return null;
    if (upd > qi && !node.withClause) return null;

    let fromIdx = -1, whereIdx = -1, ret = qe;
    for (const j of lv) {
      if (j <= set) continue;
      if (node.fromClause && fromIdx < 0 && whereIdx < 0 && isKw(toks[j], 'FROM') && !isKw(toks[j - 1], 'DISTINCT')) fromIdx = j;
      if (whereIdx < 0 && isKw(toks[j], 'WHERE')) whereIdx = j;
      if (isKw(toks[j], 'RETURNING')) { ret = j; break; }
    }
    if (node.fromClause && fromIdx < 0) return null;
    const rest: Piece[] = fromIdx >= 0 ? [', ', [fromIdx + 1, ret - 1]] : whereIdx >= 0 ? [' ', [whereIdx, ret - 1]] : [];
    parts = { head: upd > qi ? [[qi, upd - 1]] : [], body: ['FROM ', [upd + 1, set - 1], ...rest] };
    executed = [node.withClause, node.relation, node.fromClause, node.whereClause];
  } else return null;
  if (!parts) return null;

  for (const { c } of picked) for (const a of c.args) executed.push(argNode(scope, c, a.position));
  if (executed.some(unsafe)) return null;
  const head = em.emit(parts.head);
  // Columns: each distinct argument text once, in call order.
  const columns: string[] = [];
  const calls: PrefetchCall[] = [];
  for (const { c, i } of picked) {
    const sig = SIGNATURES[c.fn as PrefetchCall['fn']];
    const argColumns = c.args.map((a) => {
      const type = (a.name === null ? sig[a.position] : sig.find(([n]) => n === a.name))?.[1];
      const text = type ? `(${em.bytes(a.valueStart, a.end)})::${type}` : em.bytes(a.valueStart, a.end);
      let k = columns.indexOf(text);
      if (k < 0) k = columns.push(text) - 1;
      return k;
    });
    calls.push({ fn: c.fn as PrefetchCall['fn'], call: i, argColumns });
  }
  const sqlText = [head, `SELECT DISTINCT ${columns.join(', ')}`, em.emit(parts.body)].filter(Boolean).join(' ');
  return { sql: sqlText, calls, params: em.params };
}

/** The AST of a call's argument (the value of a named one), found by the call's location. */
function argNode(scope: J, call: SteadyCall, position: number): unknown {
  let found: J | undefined;
  const visit = (v: unknown): void => {
    if (found || !v || typeof v !== 'object') return;
    const n = nodeOf(v);
    if (n && n[0] === 'FuncCall' && n[1].location === call.start) { found = n[1]; return; }
    for (const x of Array.isArray(v) ? v : Object.values(n ? n[1] : v)) visit(x);
  };
  visit(scope);
  const a = found?.args?.[position];
  const named = nodeOf(a);
  return named && named[0] === 'NamedArgExpr' ? named[1].arg : a;
}
