// Derives, from a statement whose steadytext_generate/steadytext_embed calls take row values, a read-only
// SELECT that returns the argument tuples the statement will need, so the proxy can compute them before
// forwarding the statement. The query is spliced from the client's own text (same FROM, joins, WHERE,
// GROUP BY, CTEs, `$n`), never deparsed. Prefetch is an optimisation: a superset or a subset of the needed
// tuples is acceptable, computing what the statement cannot need is not, so a statement with LIMIT,
// OFFSET or FETCH gives null, and so does a call that only some rows evaluate (CASE, COALESCE, AND/OR,
// IN lists, FILTER). What the derived query may run is decided later from the session's own catalog
// (prefetch.ts): the plan lists every function, operator, type and relation it names. Here only what no
// catalog can make safe gives null: data-modifying CTEs, locking clauses, cursors, steadytext calls.
import {
  funcName, isKw, matchBrackets, nodeOf, scanRange, statementAst, tokenAt,
  type J, type StatementCalls, type SteadyCall, type Tok,
} from './calls.js';
import { isSteadyFunction, SIGNATURES, SQL_TYPES, type Parameter } from './signatures.js';

export interface PrefetchCall {
  fn: 'steadytext_generate' | 'steadytext_embed';
  /** Index of the call in StatementCalls.calls. */
  call: number;
  /** Output column (0-based) holding each argument of the call, by argument position. */
  argColumns: number[];
}

/** A name as written: schema null when unqualified (the session's search_path finds it). */
export interface QualifiedName { schema: string | null; name: string }

/** Everything the derived query names that could run code: the session's catalog decides (prefetch.ts). */
export interface PlanObjects {
  functions: QualifiedName[];
  /** Operator names, with the comparison operators that DISTINCT, GROUP BY, joins and sorts use unnamed. */
  operators: QualifiedName[];
  /** Types cast to (a cast to a domain runs its CHECK constraints), and every function name (`name(x)` can be a cast). */
  types: QualifiedName[];
  relations: QualifiedName[];
}

export interface PrefetchPlan {
  sql: string;
  calls: PrefetchCall[];
  /** `$k` of the derived query is the statement's `$params[k-1]`: bind those values in that order. */
  params: number[];
  objects: PlanObjects;
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
// Each column is cast to the declared parameter type (signatures.ts), as the call coerces its argument,
// which also gives a bare `$n` or an untyped literal the type it had in the call. pg_catalog-qualified:
// no type another role put on the session's search_path is cast to.
function parameterType(fn: PrefetchCall['fn'], arg: { name: string | null; position: number }): string | undefined {
  const params: readonly Parameter[] = SIGNATURES[fn].params;
  const p = arg.name === null ? params[arg.position] : params.find((x) => x.name === arg.name);
  return p && SQL_TYPES[p.type].qualified;
}
// Operators the derived query may use without naming them (DISTINCT, GROUP BY, USING, CASE x WHEN, sorts).
const IMPLICIT_OPERATORS = ['=', '<>', '<', '>', '<=', '>='];

function aggLike(fc: J): boolean {
  return !!(fc.over || fc.agg_star || fc.agg_order || fc.agg_distinct || fc.agg_filter || fc.agg_within_group)
    || AGGREGATES.has(funcName(fc).name);
}

/**
 * True when the subtree writes, locks, reads a cursor's position or calls steadytext: no catalog makes
 * that safe to run twice. Everything else that could run code is listed by collect() for the catalog.
 */
function unsafe(v: unknown): boolean {
  if (!v || typeof v !== 'object') return false;
  if (Array.isArray(v)) return v.some(unsafe);
  const n = nodeOf(v);
  if (n) {
    const [type, body] = n;
    if (type === 'InsertStmt' || type === 'UpdateStmt' || type === 'DeleteStmt' || type === 'MergeStmt'
      || type === 'CurrentOfExpr' || type === 'IntoClause') return true;
    if (type === 'SelectStmt' && (body.lockingClause || body.intoClause)) return true;
    if (type === 'FuncCall' && (isSteadyFunction(funcName(body).name) || funcName(body).name.startsWith('_steadytext'))) return true;
    return Object.values(body).some(unsafe);
  }
  return Object.values(v).some(unsafe);
}

const BETWEEN_KINDS = new Set(['AEXPR_BETWEEN', 'AEXPR_NOT_BETWEEN', 'AEXPR_BETWEEN_SYM', 'AEXPR_NOT_BETWEEN_SYM']);

/** The name a `names` list (String nodes) spells: its last part, and the part before as the schema. */
function nameOf(parts: J[] | undefined): QualifiedName | null {
  const p = (parts ?? []).map((x: J) => x.String?.sval);
  const name = p[p.length - 1];
  if (typeof name !== 'string' || name === '') return null;
  const schema = p.length > 1 ? p[p.length - 2] : null;
  return { schema: typeof schema === 'string' ? schema : null, name };
}

/** Lists what the subtree names that the catalog must vouch for (functions, operators, casts, relations). */
function collect(v: unknown, into: PlanObjects): void {
  if (!v || typeof v !== 'object') return;
  if (Array.isArray(v)) { for (const x of v) collect(x, into); return; }
  const n = nodeOf(v);
  const body: J = n ? n[1] : v;
  const add = (list: QualifiedName[], q: QualifiedName | null) => {
    if (q && !list.some((x) => x.schema === q.schema && x.name === q.name)) list.push(q);
  };
  if (n) {
    switch (n[0]) {
      case 'FuncCall': {
        const f = funcName(body);
        add(into.functions, f);
        add(into.types, f);
        break;
      }
      case 'A_Expr':
        if (BETWEEN_KINDS.has(body.kind)) for (const op of ['<=', '>=']) add(into.operators, { schema: null, name: op });
        else add(into.operators, nameOf(body.name));
        break;
      case 'SubLink':
        if (body.operName) add(into.operators, nameOf(body.operName));
        break;
      case 'RangeVar':
        if (body.relname) add(into.relations, { schema: body.schemaname ?? null, name: body.relname });
        break;
    }
  }
  if (body.typeName && typeof body.typeName === 'object' && Array.isArray(body.typeName.names)) add(into.types, nameOf(body.typeName.names));
  for (const x of Object.values(body)) if (x && typeof x === 'object') collect(x, into);
}

/**
 * Whether the call at `loc` is evaluated only for some rows (a CASE branch, a COALESCE fallback, one side
 * of AND/OR, an IN list, an aggregate's FILTER): computing it for every row would compute what the
 * statement may never need. Undefined when the call is not found in `v`.
 */
function conditional(v: unknown, loc: number, cond = false): boolean | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const n = nodeOf(v);
  let o = v as J;
  if (n) {
    const [type, body] = n;
    if (type === 'FuncCall' && body.location === loc) return cond;
    if (type === 'SubLink' || type === 'RangeSubselect') return undefined; // another query level
    cond ||= type === 'CaseExpr' || type === 'CoalesceExpr'
      || (type === 'BoolExpr' && body.boolop !== 'NOT_EXPR')
      || (type === 'A_Expr' && body.kind === 'AEXPR_IN')
      || (type === 'FuncCall' && !!body.agg_filter);
    o = body;
  }
  for (const x of Array.isArray(o) ? o : Object.values(o)) {
    const r = conditional(x, loc, cond);
    if (r !== undefined) return r;
  }
  return undefined;
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
 * prefetch or no safe derivation. Calls in CTEs, subqueries, VALUES, RETURNING or WHERE are left out, and
 * so are calls that only some rows evaluate; a statement with LIMIT, OFFSET or FETCH gives null.
 */
export function derivePrefetch(sql: Buffer, stmt: StatementCalls): PrefetchPlan | null {
  const target = innerStatement(sql, stmt);
  if (!target) return null;
  const { type, node, toks } = target;
  const candidates = pickCalls(stmt, target);
  if (!candidates.length) return null;
  const qi = tokenAt(toks, target.qs);
  const found = type === 'SelectStmt' || type === 'InsertStmt' ? selectScope(type, node, toks, qi, toks.length, candidates)
    : type === 'UpdateStmt' ? updateScope(node, toks, qi, toks.length, candidates)
    : null;
  if (!found) return null;
  const { scope, parts } = found;
  const picked = found.picked.filter(({ c }) => !(conditional(scope.targetList, c.start) || conditional(scope.sortClause, c.start)));
  if (!picked.length) return null;
  const executed = [...found.executed, ...picked.flatMap(({ c }) => c.args.map((a) => argNode(scope, c, a.position)))];
  if (executed.some(unsafe)) return null;
  const objects: PlanObjects = { functions: [], operators: IMPLICIT_OPERATORS.map((name) => ({ schema: null, name })), types: [], relations: [] };
  collect(executed, objects);
  return emitPlan(new Emitter(sql, toks, target.types), parts, picked, objects);
}

/** The statement whose rows the calls run over, its first byte, and its tokens (those of the whole statement). */
interface Target {
  type: string;
  node: J;
  qs: number;
  toks: Tok[];
  /** PREPARE's declared parameter types (null for unknown), by `$n`. */
  types: (string | null)[];
}

/** The statement itself, or the one PREPARE or EXPLAIN wraps; null when it cannot be found. */
function innerStatement(sql: Buffer, stmt: StatementCalls): Target | null {
  const top = nodeOf(statementAst(stmt));
  if (!top) return null;
  const [type, node] = top;
  const toks = scanRange(sql, stmt.start, stmt.end);
  if (type === 'PrepareStmt' && stmt.prepare) {
    const types: (string | null)[] = [];
    if (stmt.prepare.typesOpen !== null) { // declared types become casts, since the derived query is untyped
      const m = matchBrackets(toks, tokenAt(toks, stmt.prepare.typesOpen));
      if (!m) return null;
      for (const [a, b] of m.segs) {
        const s = sql.toString('utf8', toks[a].start, toks[b].end);
        types.push(s.toLowerCase() === 'unknown' ? null : s);
      }
    }
    const [innerType, inner] = nodeOf(node.query) ?? ['', {}];
    return { type: innerType, node: inner, qs: stmt.prepare.queryStart, toks, types };
  }
  if (type === 'ExplainStmt' && stmt.rewritable) {
    const q = nodeOf(node.query);
    const i = [...level0(toks, 1, toks.length)]
      .find((j) => ['SELECT', 'WITH', 'UPDATE', 'INSERT'].some((w) => isKw(toks[j], w)));
    if (!q || i === undefined) return null;
    return { type: q[0], node: q[1], qs: toks[i].start, toks, types: [] };
  }
  return { type, node, qs: stmt.start, toks, types: [] };
}

/** A call of the statement, with its index in StatementCalls.calls. */
interface Picked { c: SteadyCall; i: number }

const WANTED_CLAUSES: Record<string, string[]> = { SelectStmt: ['target', 'order_by'], UpdateStmt: ['set'], InsertStmt: ['target'] };

/** The plain row-valued generate/embed calls at the target's own level, in the clauses whose rows it reads. */
function pickCalls(stmt: StatementCalls, target: Target): Picked[] {
  const wanted = WANTED_CLAUSES[target.type] ?? [];
  return stmt.calls
    .map((c, i) => ({ c, i }))
    .filter(({ c }) => (c.fn === 'steadytext_generate' || c.fn === 'steadytext_embed') && c.plain && c.kind === 'row'
      && !c.inCall && !c.inCte && !c.inSubquery && c.start >= target.qs && wanted.includes(c.clause));
}

/** What a statement's rows come from: the derived query's text, what it runs, and the calls it can serve. */
interface Scope {
  /** The query level whose rows the calls run over. */
  scope: J;
  parts: Derived;
  /** The subtrees the derived query runs (the calls' arguments are added later). */
  executed: unknown[];
  picked: Picked[];
}

/** A SELECT, or the SELECT an INSERT reads from, in tokens [qi, qe). */
function selectScope(type: string, node: J, toks: Tok[], qi: number, qe: number, picked: Picked[]): Scope | null {
  const src = type === 'InsertStmt' ? insertSource(node, toks, qi, qe) : { sel: node, si: qi, se: qe, outerWith: [] };
  if (!src) return null;
  const { sel } = src;
  const executed: unknown[] = type === 'InsertStmt' ? [node.withClause] : [];
  // Only the first rows are evaluated: whatever the derived query read beyond them would be wasted.
  if (sel.limitCount || sel.limitOffset) return null;
  // A call inside an aggregate runs per input row: derive over FROM/WHERE only, without the grouping.
  const perRow = picked.some(({ c }) => insideAggregate(sel.targetList, c.start) || insideAggregate(sel.sortClause, c.start));
  const kept = perRow ? picked.filter(({ c }) => !c.args.some((a) => containsAggregate(argNode(sel, c, a.position)))) : picked;
  if (!kept.length) return null;
  const parts = selectParts(sel, toks, src.si, src.se, perRow, src.outerWith);
  if (!parts) return null;
  executed.push(sel.withClause, sel.fromClause, sel.whereClause);
  if (!perRow) executed.push(sel.groupClause, sel.havingClause, sel.windowClause);
  return { scope: sel, parts, executed, picked: kept };
}

/** The SELECT of an INSERT ... SELECT: its tokens [si, se) and the INSERT's own WITH text. */
function insertSource(node: J, toks: Tok[], qi: number, qe: number): { sel: J; si: number; se: number; outerWith: Piece[] } | null {
  const s = nodeOf(node.selectStmt);
  if (!s || s[0] !== 'SelectStmt') return null;
  const lv = [...level0(toks, qi, qe)];
  const ins = lv.find((j) => isKw(toks[j], 'INSERT'));
  if (ins === undefined) return null;
  const si = lv.find((j) => j > ins && (isKw(toks[j], 'SELECT') || isKw(toks[j], 'WITH'))) ?? -1;
  if (si < 0) return null;
  const oc = node.onConflictClause ? tokenAt(toks, node.onConflictClause.location) : qe;
  const se = Math.min(oc, lv.find((j) => j > si && isKw(toks[j], 'RETURNING')) ?? qe);
  return { sel: s[1], si, se, outerWith: ins > qi ? [[qi, ins - 1]] : [] };
}

/** An UPDATE in tokens [qi, qe): the derived query reads FROM its target table (and FROM list) WHERE its WHERE. */
function updateScope(node: J, toks: Tok[], qi: number, qe: number, picked: Picked[]): Scope | null {
  if (nodeOf(node.whereClause)?.[0] === 'CurrentOfExpr') return null;
  const lv = [...level0(toks, qi, qe)];
  const upd = lv.find((j) => isKw(toks[j], 'UPDATE'));
  const firstTarget = tokenAt(toks, node.targetList?.[0]?.ResTarget?.location ?? -1);
  if (upd === undefined) return null;
  const set = lv.filter((j) => j > upd && j < firstTarget && isKw(toks[j], 'SET')).pop();
  if (set === undefined || set <= upd + 1) return null;
  if (upd > qi && !node.withClause) return null;
  const rest = updateRest(node, toks, lv, set, qe);
  if (!rest) return null;
  return {
    scope: node,
    parts: { head: upd > qi ? [[qi, upd - 1]] : [], body: ['FROM ', [upd + 1, set - 1], ...rest] },
    executed: [node.withClause, { RangeVar: node.relation }, node.fromClause, node.whereClause],
    picked,
  };
}

/** After the UPDATE's target table: its FROM list (joined with a comma) or its WHERE, up to RETURNING. */
function updateRest(node: J, toks: Tok[], lv: number[], set: number, qe: number): Piece[] | null {
  let fromIdx = -1, whereIdx = -1, ret = qe;
  for (const j of lv) {
    if (j <= set) continue;
    if (node.fromClause && fromIdx < 0 && whereIdx < 0 && isKw(toks[j], 'FROM') && !isKw(toks[j - 1], 'DISTINCT')) fromIdx = j;
    if (whereIdx < 0 && isKw(toks[j], 'WHERE')) whereIdx = j;
    if (isKw(toks[j], 'RETURNING')) { ret = j; break; }
  }
  if (node.fromClause && fromIdx < 0) return null;
  return fromIdx >= 0 ? [', ', [fromIdx + 1, ret - 1]] : whereIdx >= 0 ? [' ', [whereIdx, ret - 1]] : [];
}

/** The derived query's text, emitted in textual order (head, columns, body) so `$n` are numbered as they appear. */
function emitPlan(em: Emitter, parts: Derived, picked: Picked[], objects: PlanObjects): PrefetchPlan {
  const head = em.emit(parts.head);
  // Columns: each distinct argument text once, in call order. No DISTINCT: the proxy reads the rows in
  // batches and skips repeats itself, so the first rows come at once however large the table is.
  const columns: string[] = [];
  const calls: PrefetchCall[] = [];
  for (const { c, i } of picked) {
    const argColumns = c.args.map((a) => {
      const type = parameterType(c.fn as PrefetchCall['fn'], a);
      const text = type ? `(${em.bytes(a.valueStart, a.end)})::${type}` : em.bytes(a.valueStart, a.end);
      let k = columns.indexOf(text);
      if (k < 0) k = columns.push(text) - 1;
      return k;
    });
    calls.push({ fn: c.fn as PrefetchCall['fn'], call: i, argColumns });
  }
  const sqlText = [head, `SELECT ${columns.join(', ')}`, em.emit(parts.body)].filter(Boolean).join(' ');
  return { sql: sqlText, calls, params: em.params, objects };
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
