// What the proxy will do for one message, decided from its parsed statements alone (no I/O): which calls
// it serves ahead (constant arguments), which statements it prefetches (row arguments), and what the
// message needs besides (a CREATE EXTENSION pg_steadytext to keep, a config change to watch, stats to
// flush first). Pure, so each rule is a unit test.
import { argValues, type BoundParams } from './arguments.js';
import { statementAst, type StatementCalls, type SteadyCall } from './calls.js';
import type { ServeJob } from './serve.js';

export interface Replacement { at: number; end: number; text: string }

export interface QueryPlan {
  jobs: ServeJob[];
  prefetches: StatementCalls[];
  /** Statements to send differently, by byte range of the message's SQL. */
  replaced: Replacement[];
  /** A steadytext_config_set runs: every session must see the change once it completes. */
  touchesConfig: boolean;
  /** steadytext_stats is read: the proxy's pending counters go in first. */
  readsStats: boolean;
}

/**
 * `CREATE EXTENSION pg_steadytext`: the objects are installed before any statement naming steadytext goes on,
 * so it is sent as EXTENSION_STANDIN, which keeps its meaning (nothing to do) and its command tag, and whose
 * NOTICE (EXTENSION_STANDIN_NOTICE) the client is not shown.
 */
export function createsExtension(st: StatementCalls): boolean {
  return statementAst(st)?.CreateExtensionStmt?.extname === 'pg_steadytext';
}
export const EXTENSION_STANDIN = 'CREATE EXTENSION IF NOT EXISTS plpgsql';
export const EXTENSION_STANDIN_NOTICE = 'extension "plpgsql" already exists, skipping';

/** The plan of a simple-protocol Query (sql: the message's SQL bytes). */
export function planQuery(sql: Buffer, stmts: readonly StatementCalls[]): QueryPlan {
  const plan: QueryPlan = { jobs: [], prefetches: [], replaced: [], touchesConfig: false, readsStats: false };
  for (const st of stmts) {
    if (createsExtension(st)) {
      plan.replaced.push({ at: st.start, end: st.end, text: EXTENSION_STANDIN });
      continue;
    }
    if (st.kind !== 'other' && mentionsStats(sql, st.start, st.end)) plan.readsStats = true;
    if (st.calls.some((c) => c.fn === 'steadytext_config_set')) plan.touchesConfig = true;
    if (!servedAhead(stmts, st)) continue;
    if (st.calls.some((c) => c.kind === 'row')) plan.prefetches.push(st);
    plan.jobs.push(...constJobs(st.calls, null));
  }
  return plan;
}

/** The calls of a Parse the proxy serves at each Bind (those whose arguments are literals or parameters). */
export function planParse(stmts: readonly StatementCalls[] | undefined, paramTypes: readonly number[]): SteadyCall[] {
  if (!stmts || stmts.length !== 1 || !servedAhead(stmts, stmts[0])) return [];
  const s = stmts[0];
  const probe = { values: new Array<string>(Math.max(s.maxParam, paramTypes.length)).fill('0'), types: paramTypes };
  return s.calls.filter((c) => c.kind === 'const' && argValues(c, probe) !== null);
}

/** Jobs for the calls whose argument values the proxy can read (with the Bind's parameters, if any). */
export function constJobs(calls: readonly SteadyCall[], params: BoundParams | null): ServeJob[] {
  const jobs: ServeJob[] = [];
  for (const call of calls) {
    if (call.kind !== 'const') continue;
    const values = argValues(call, params);
    if (values) jobs.push({ call, values });
  }
  return jobs;
}

/**
 * Whether the proxy may serve a statement's calls ahead: the statement runs its calls now (not a
 * definition, not PREPARE), and nothing before it in the same message can change the session's role or
 * search_path first (only transaction control may precede it), so the check made before it holds for it.
 */
export function servedAhead(stmts: readonly StatementCalls[], st: StatementCalls): boolean {
  if (!st.rewritable || st.kind === 'prepare') return false;
  for (const prev of stmts) {
    if (prev === st) return true;
    const t = Object.keys(statementAst(prev) ?? {})[0];
    if (t !== 'TransactionStmt' && t !== 'VariableShowStmt') return false;
  }
  return false;
}

/** Does sql[start, end) mention steadytext_stats (ASCII case-insensitive)? */
function mentionsStats(sql: Buffer, start: number, end: number): boolean {
  return sql.subarray(start, end).toString('latin1').toLowerCase().includes('steadytext_stats');
}

/** Whole-range replacements over the original offsets. */
export function splice(sql: Buffer, replaces: readonly Replacement[]): Buffer {
  const parts: Buffer[] = [];
  let prev = 0;
  for (const op of [...replaces].sort((a, b) => a.at - b.at)) {
    parts.push(sql.subarray(prev, op.at), Buffer.from(op.text, 'utf8'));
    prev = op.end;
  }
  parts.push(sql.subarray(prev));
  return Buffer.concat(parts);
}
