// The prefetch path: a statement whose calls take row values. The argument values it will need are read
// with the client's own privileges on its own connection (a derived SELECT, prefetch-plan.ts), computed
// concurrently, and handed over through steadytext_cache before the statement goes upstream unchanged,
// where the function finds each answer. Whatever is missed (a snapshot older than the cache rows, a value
// past the limit, a prefetch stopped early) the function still answers through the daemon, so prefetch
// may skip anything it is unsure of: failures here only cost time.
//
// The derived query runs the client's own expressions a second time, so:
// - The session's catalog decides first what it may run (safetySql): every function and operator it
//   names must be non-volatile in every schema of the session's search path, no cast it makes may run a
//   domain's CHECK, no relation be a view, materialized view or foreign table or under row level security.
// - It runs inside a fence that is always rolled back and read-only: BEGIN READ ONLY ... ROLLBACK outside
//   a transaction block; inside one, a savepoint with transaction_read_only switched on, rolled back to
//   and released. Nothing it did survives it, and nothing it tried to write was written.
// - Its rows are read through a cursor, FETCH by FETCH, each batch computed before more are read, and at
//   most `maxValues` rows in all: the proxy's memory does not grow with the table.
// - It stops when the client cancels, when the session's statement_timeout has elapsed since it began,
//   and when its backend is cancelled (pg_cancel_backend): while the proxy computes, the backend waits
//   in a statement (BackendWait), so such a cancel hits it (a backend waiting for a command drops cancels).
import type { StatementCalls } from './calls.js';
import type { ArgValues } from './evaluate.js';
import { parameter, parameterNames, servedByProxy, SQL_TYPES } from './signatures.js';
import { randomInt } from 'node:crypto';
import { auxQuery } from './handover.js';
import { WAKE_CLASS, type Database } from './databases.js';
import type { SessionContext } from '../proxy/interceptor.js';
import { derivePrefetch, type PlanObjects, type PrefetchPlan, type QualifiedName } from './prefetch-plan.js';
import type { Outcome, Resolved, Server } from './serve.js';

export interface PrefetchOptions {
  /** Most rows (argument tuples) one statement's prefetch reads and computes; the database does the rest. */
  maxValues?: number;
}

export const DEFAULT_PREFETCH_MAX_VALUES = 10_000;
/** Rows per FETCH; the next FETCH is sent once fewer than REFILL_AT values wait (it may queue behind a sleep). */
const FETCH_ROWS = 256;
const REFILL_AT = 64;
/** Answers handed over per batch. */
const HANDOVER_BATCH = 256;
/** Bulk prefetches log how far they are this often. */
const PROGRESS_MS = 10_000;
const FENCE = '_steadytext_prefetch';

type Stop = 'cancel' | 'timeout' | 'failed';

export async function prefetch(sql: Buffer, stmts: StatementCalls[], db: Database, ctx: SessionContext, server: Server, opts: PrefetchOptions = {}): Promise<void> {
  const maxValues = opts.maxValues ?? DEFAULT_PREFETCH_MAX_VALUES;
  for (const st of stmts) {
    if (ctx.signal.aborted || ctx.txStatus === 'E' || maxValues < 1) return;
    const plan = derivePrefetch(sql, st);
    if (!plan || plan.params.length > 0) continue;
    const began = performance.now();
    const calls = plan.calls.map((pc) => st.calls[pc.call]);
    // Nothing is read or computed for a role that may not run the functions.
    const check = await server.check(calls.map((c) => ({ fn: c.fn, schema: c.schema })), db, ctx, { scs: ctx.serverParams.get('standard_conforming_strings') !== 'off', extended: false });
    // The check itself may have failed the client's transaction (a cancel): nothing more may run then.
    if (!check || !check.allowed.every(Boolean) || txStatus(ctx) === 'E') continue;
    await fenced(ctx, plan, async (timeoutMs) => {
      const deadline = timeoutMs > 0 ? began + timeoutMs : Infinity;
      await serveRows({ st, plan, db, ctx, server }, check.backendPid, deadline, maxValues);
    });
  }
}

/** The status now (TypeScript would keep it narrowed across the awaits that change it). */
const txStatus = (ctx: SessionContext): string => ctx.txStatus;

/** Runs `body` inside the read-only, always rolled back fence, if the session's catalog allows the plan. */
async function fenced(ctx: SessionContext, plan: PrefetchPlan, body: (statementTimeoutMs: number) => Promise<void>): Promise<void> {
  const inTx = ctx.txStatus === 'T';
  // Outside a block, READ COMMITTED whatever the session's default: a serializable read-only transaction
  // could wait for a safe snapshot or take part in another transaction's serialization failure.
  const open = inTx ? `SAVEPOINT ${FENCE}; SET LOCAL transaction_read_only = on` : 'BEGIN ISOLATION LEVEL READ COMMITTED, READ ONLY';
  const close = inTx ? `ROLLBACK TO SAVEPOINT ${FENCE}; RELEASE SAVEPOINT ${FENCE}` : 'ROLLBACK';
  try {
    const r = await aux(ctx, `${open}; ${safetySql(plan.objects)}`);
    if ('error' in r) {
      ctx.log.debug({ error: r.error.M }, 'prefetch check failed; the database will ask the daemon instead');
      return;
    }
    const [timeout, safe] = r.rows[0] ?? [];
    if (safe !== 't') {
      ctx.log.debug('prefetch skipped: the derived query would run volatile functions, views or domain checks');
      return;
    }
    await body(Number(timeout) || 0);
  } finally {
    // Always, even after an error above: a fence left open would hold the client's session. Once more if
    // a cancel meant for the prefetch arrived late and hit the first try.
    let r = await aux(ctx, close);
    if ('error' in r && r.error.C === '57014') r = await aux(ctx, close);
    if ('error' in r) ctx.log.warn({ error: r.error.M }, 'could not close the prefetch fence');
  }
}

/** One statement's prefetch: what serveRows and its parts share. */
interface Job {
  st: StatementCalls;
  plan: PrefetchPlan;
  db: Database;
  ctx: SessionContext;
  server: Server;
}

/**
 * Reads the derived query's rows in batches through a cursor and computes their values, a few requests
 * more than the engine has contexts at a time (each request's daemon_timeout_ms then measures its own
 * work, and the queue limit is never hit by one statement), handing answers over in batches.
 */
async function serveRows(job: Job, backendPid: number, deadline: number, maxValues: number): Promise<void> {
  const { ctx, server } = job;
  const stopping = new Stopping();
  const unwatch = stopOnCancelOrDeadline(ctx, deadline, stopping);
  // On a one-session database the wait would hold the only session; nobody else could cancel it anyway.
  const wait = new BackendWait(ctx, job.db, stopping, !job.db.single);
  const rows = new RowReader(job, maxValues, stopping, wait);
  const cpu = server.engine.status().cpu;
  const computeCtx: SessionContext = { ...ctx, signal: stopping.signal };
  const lanes: Lanes = {
    rows, stopping,
    width: Math.max(2, 2 * Math.max(cpu.generationContexts, cpu.embeddingContexts)),
    compute: (r) => server.computeOne(r, job.db, computeCtx),
    answers: new HandOvers(job, backendPid),
    progress: new Progress(ctx.log),
  };
  try {
    if (!stopping.signal.aborted) await rows.refill();
    if (rows.queue.length > 0 || !rows.exhausted) await wait.start();
    await Promise.all(Array.from({ length: lanes.width }, () => lane(lanes)));
    await Promise.all([wait.end(), rows.fetching]);
    await lanes.answers.finish();
  } finally {
    await wait.end();
    unwatch();
  }
  const { done, began } = lanes.progress;
  if (stopping.why) ctx.log.info({ done, rows: rows.read, why: stopping.why }, 'prefetch stopped; the database computes the rest');
  else if (done > HANDOVER_BATCH) ctx.log.info({ calls: done, ms: Math.round(performance.now() - began) }, 'prefetch done');
}

/** Whether, and why, the prefetch stopped; the first stop aborts the computations it started. */
class Stopping {
  private readonly ac = new AbortController();
  readonly signal = this.ac.signal;
  why: Stop | undefined;
  readonly stop = (why: Stop): void => {
    if (this.why) return;
    this.why = why;
    this.ac.abort(new Error(`prefetch stopped (${why})`));
  };
}

/** Stops the prefetch when the client cancels and at the deadline; returns what undoes the watching. */
function stopOnCancelOrDeadline(ctx: SessionContext, deadline: number, stopping: Stopping): () => void {
  const onCancel = () => stopping.stop('cancel');
  ctx.signal.addEventListener('abort', onCancel);
  if (ctx.signal.aborted) stopping.stop('cancel');
  const timer = deadline < Infinity ? setTimeout(() => stopping.stop('timeout'), Math.max(0, deadline - performance.now())) : undefined;
  timer?.unref?.();
  return () => {
    if (timer) clearTimeout(timer);
    ctx.signal.removeEventListener('abort', onCancel);
  };
}

/**
 * The derived query's rows through a cursor, FETCH by FETCH (the next one asked for while the current
 * batch still computes), queued as the requests no cache row answers yet, each once.
 */
class RowReader {
  readonly queue: Resolved[] = [];
  read = 0;
  exhausted = false;
  fetching: Promise<void> | undefined;
  private readonly seen = new Set<string>(); // cache keys, at most maxValues per call
  private declare: string;

  constructor(private readonly job: Job, private readonly maxValues: number, private readonly stopping: Stopping, private readonly wait: BackendWait) {
    this.declare = `DECLARE ${FENCE} NO SCROLL CURSOR FOR ${job.plan.sql}; `;
  }

  /** The FETCH under way, or a new one. */
  refill(): Promise<void> {
    return this.fetching ??= this.fetch().finally(() => { this.fetching = undefined; });
  }

  private async fetch(): Promise<void> {
    const { ctx } = this.job;
    try {
      const n = Math.min(FETCH_ROWS, this.maxValues - this.read);
      const r = await this.wait.run(`${this.declare}FETCH FORWARD ${n} FROM ${FENCE}`);
      this.declare = '';
      if ('error' in r) {
        this.exhausted = true;
        ctx.log.debug({ error: r.error.M }, 'prefetch query failed; the database will ask the daemon instead');
        return this.stopping.stop(stopOf(r.error));
      }
      this.read += r.rows.length;
      if (r.rows.length < n) this.exhausted = true;
      else if (this.read >= this.maxValues) {
        this.exhausted = true;
        ctx.log.info({ rows: this.read, max: this.maxValues }, 'prefetch stopped at prefetch-max-values; the database computes the rest');
      }
      for (const row of r.rows) await this.enqueue(row);
    } catch (err) {
      this.exhausted = true;
      ctx.log.debug({ err }, 'prefetch could not read its rows');
      this.stopping.stop('failed');
    }
  }

  private async enqueue(row: (string | null)[]): Promise<void> {
    const { st, plan, db, server, ctx } = this.job;
    for (const pc of plan.calls) {
      const call = st.calls[pc.call];
      const values = rowValues(call.fn, call.args, pc.argColumns.map((i) => row[i]));
      const res = values && await server.resolve(call, values, db, ctx);
      if (!res || this.seen.has(res.key) || await server.known(res, db)) continue;
      this.seen.add(res.key);
      this.queue.push(res);
    }
  }
}

const WAIT_ENDED = 'pg-steadytext: prefetch wait ended: ';

/**
 * While the engine works, the backend waits in one statement: on an advisory lock the proxy holds on a connection
 * of its own (Database.holdWake) and lets go of to end the wait, so a cancel of the backend (pg_cancel_backend,
 * the client's, statement_timeout) hits the wait and stops the prefetch. The cancel is caught inside the wait
 * (the fence stays usable, the server logs no error) and named in a notice. A backend between statements drops
 * a cancel, so it is never left between them: what runs next (a FETCH, the next wait) is sent before the wait
 * is let go of. The proxy never cancels the wait itself: PostgreSQL before 17 may deliver one cancel twice.
 */
class BackendWait {
  private current: Wait | undefined;
  private ending = false;
  private readonly check: string;
  constructor(private readonly ctx: SessionContext, private readonly db: Database, private readonly stopping: Stopping, private readonly enabled: boolean) {
    // A backend whose proxy went away leaves the wait within a second where the server can tell (14+).
    this.check = Number.parseInt(ctx.serverParams.get('server_version') ?? '', 10) >= 14 ? 'SET LOCAL client_connection_check_interval = 1000; ' : '';
  }

  /** The backend waits from now on (until end()). */
  async start(): Promise<void> {
    if (this.enabled && !this.current) await this.renew(undefined);
  }

  /** Runs `sql` next: sent behind the wait, which then ends, and followed by the next wait. */
  async run(sql: string): ReturnType<typeof auxQuery> {
    const r = aux(this.ctx, sql);
    const w = this.current;
    if (w) {
      await this.renew(w);
      w.wake();
    }
    return r;
  }

  /** A new wait after `prev`, sent behind what was sent before; none once ending (end() may come meanwhile). */
  private async renew(prev: Wait | undefined): Promise<void> {
    const next = this.ending ? undefined : await this.begin();
    if (!this.ending && this.current === prev) this.current = next;
    else next?.wake();
  }

  /** Ends the wait; resolves once the backend is out of it. */
  async end(): Promise<void> {
    this.ending = true;
    const w = this.current;
    this.current = undefined;
    if (w) {
      w.wake();
      await w.done;
    }
  }

  /** A new wait, sent behind whatever was sent before; undefined when the proxy cannot hold a lock for it. */
  private async begin(): Promise<Wait | undefined> {
    const key = randomInt(0x7fffffff);
    const holder = await this.db.holdWake(key);
    if (!holder || this.stopping.signal.aborted || this.ending) {
      if (holder) void this.db.wake(holder, key);
      return undefined;
    }
    const w = new Wait(() => this.db.wake(holder, key));
    const sql = `SET LOCAL client_min_messages = notice; SET LOCAL lock_timeout = '10s'; ${this.check}DO $steadytext$BEGIN
  PERFORM pg_catalog.pg_advisory_lock_shared(${WAKE_CLASS}, ${key}) /* pg-steadytext: computing prefetched answers */;
  PERFORM pg_catalog.pg_advisory_unlock_shared(${WAKE_CLASS}, ${key});
  RAISE NOTICE '${WAIT_ENDED}woken';
EXCEPTION WHEN query_canceled THEN
  RAISE NOTICE '${WAIT_ENDED}%', SQLERRM;
WHEN lock_not_available THEN
  RAISE NOTICE '${WAIT_ENDED}expired';
END$steadytext$`;
    w.done = aux(this.ctx, sql, (m) => {
      if (m.startsWith(WAIT_ENDED)) w.endedBy = m.slice(WAIT_ENDED.length);
    }).then(async (r) => {
      w.wake(); // whatever ended it, the lock is let go of
      if ('error' in r) return this.stopping.stop(stopOf(r.error));
      const by = w.endedBy ?? '';
      // Any other ending is a cancel the wait caught (57014): its message tells a statement_timeout from the rest.
      if (by !== 'woken' && by !== 'expired') return this.stopping.stop(stopOf({ C: '57014', M: by }));
      // Not ended by the proxy (the lock held too long by another session, or its connection lost): wait again.
      if (this.current === w) await this.renew(w);
    });
    return w;
  }
}

/** One wait of the backend: `wake` lets go of its lock, once. */
class Wait {
  done: Promise<void> = Promise.resolve();
  endedBy: string | undefined;
  private woken = false;
  constructor(private readonly letGo: () => Promise<void>) {}

  wake(): void {
    if (this.woken) return;
    this.woken = true;
    void this.letGo();
  }
}

/** Outcomes handed over to steadytext_cache in batches, one batch after the other. */
class HandOvers {
  private writing: Promise<void> = Promise.resolve();
  private pending: [Resolved, Outcome][] = [];
  constructor(private readonly job: Job, private readonly backendPid: number) {}

  add(r: Resolved, outcome: Outcome): void {
    this.pending.push([r, outcome]);
    if (this.pending.length >= HANDOVER_BATCH) this.flush();
  }

  /** Hands the last batch over and waits for every batch. */
  async finish(): Promise<void> {
    this.flush();
    await this.writing;
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    const { db, ctx, server } = this.job;
    this.writing = this.writing.then(() => server.handOver(batch, db, ctx, this.backendPid, 'prefetch'))
      .catch((err) => ctx.log.warn({ err }, 'prefetch could not store answers in steadytext_cache'));
  }
}

/** Counts the answers; a bulk prefetch logs how far it is every PROGRESS_MS. */
class Progress {
  readonly began = performance.now();
  done = 0;
  private shown = this.began;
  constructor(private readonly log: SessionContext['log']) {}

  count(rows: number): void {
    this.done++;
    if (performance.now() - this.shown > PROGRESS_MS) {
      this.shown = performance.now();
      this.log.info({ done: this.done, rows, seconds: Math.round((this.shown - this.began) / 1000) }, 'prefetch progress');
    }
  }
}

interface Lanes {
  rows: RowReader;
  stopping: Stopping;
  /** How many lanes compute at once. */
  width: number;
  compute(r: Resolved): Promise<Outcome>;
  answers: HandOvers;
  progress: Progress;
}

/** One lane: computes queued requests one after the other, refilling the queue before it runs low. */
async function lane(l: Lanes): Promise<void> {
  const { rows, stopping } = l;
  while (!stopping.signal.aborted) {
    if (!rows.exhausted && rows.queue.length < Math.max(l.width, REFILL_AT)) void rows.refill();
    const r = rows.queue.shift();
    if (!r) {
      if (rows.fetching) await rows.fetching;
      else if (rows.exhausted) return;
      continue;
    }
    const outcome = await l.compute(r);
    // Stopped by statement_timeout (or a failure): what it cut short is left to the database. Stopped by
    // a cancel: the failure is handed over, so the statement the cancel was meant for ends with it.
    if ('error' in outcome && stopping.signal.aborted && stopping.why !== 'cancel') continue;
    l.answers.add(r, outcome);
    l.progress.count(rows.read);
  }
}

/** Why an auxiliary statement failed: 57014 is a cancel or statement_timeout. */
function stopOf(error: Record<string, string>): Stop {
  if (error.C !== '57014') return 'failed';
  return /statement timeout/.test(error.M ?? '') ? 'timeout' : 'cancel';
}

/** auxQuery that never throws (ctx.send does once the session has ended). */
async function aux(ctx: SessionContext, sql: string, onNotice?: (message: string) => void): ReturnType<typeof auxQuery> {
  try {
    return await auxQuery(ctx, sql, onNotice);
  } catch (err) {
    return { error: { M: String(err) } };
  }
}

/** A text value spelled in ASCII only, so neither client_encoding nor standard_conforming_strings change it. */
function literal(s: string): string {
  return `pg_catalog.convert_from(pg_catalog.decode('${Buffer.from(s, 'utf8').toString('hex')}', 'hex'), 'UTF8')`;
}

const EQ = 'OPERATOR(pg_catalog.=)';
const CHAR = (c: string) => `'${c}'::pg_catalog."char"`;
/** A function that may not run twice: volatile, or one that calls steadytext (its source says so). */
const badProc = (p: string) => `(${p}.provolatile ${EQ} ${CHAR('v')}
      OR pg_catalog.strpos(pg_catalog.lower(${p}.prosrc), 'steadytext') OPERATOR(pg_catalog.>) 0)`;

/**
 * One row: the session's statement_timeout in milliseconds, and whether the derived query may run. Asked
 * on the session's own connection, so names resolve with its search_path and role; conservative: every
 * candidate a name could resolve to in that path must be acceptable. Every name and operator in this
 * query is pg_catalog-qualified, so no search_path changes its meaning.
 */
export function safetySql(o: PlanObjects): string {
  const rows: string[] = [];
  const want = (kind: string, q: QualifiedName) =>
    rows.push(`('${kind}'::pg_catalog.text, ${q.schema === null ? 'NULL::pg_catalog.text' : literal(q.schema)}, ${literal(q.name)})`);
  for (const q of o.functions) want('f', q);
  for (const q of o.operators) want('o', q);
  for (const q of o.types) want('t', q);
  for (const q of o.relations) want('r', q);
  if (rows.length === 0) want('o', { schema: null, name: '=' });
  const kind = (k: string) => `w.k ${EQ} '${k}'::pg_catalog.text`;
  return `WITH want(k, nsp, nam) AS (VALUES ${rows.join(', ')}),
  w(k, nam, ns) AS (
    SELECT want.k, want.nam::pg_catalog.name, n.oid FROM want JOIN pg_catalog.pg_namespace n
      ON CASE WHEN want.nsp IS NULL
              THEN n.nspname ${EQ} ANY (pg_catalog.current_schemas(true)) OR n.oid ${EQ} pg_catalog.pg_my_temp_schema()
              ELSE n.nspname ${EQ} want.nsp::pg_catalog.name END),
  -- Domains whose coercion may run code: with a CHECK constraint, or over another domain.
  domains(oid) AS (SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typtype ${EQ} ${CHAR('d')} AND (
    EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.contypid ${EQ} t.oid AND k.contype ${EQ} ${CHAR('c')})
    OR EXISTS (SELECT FROM pg_catalog.pg_type b WHERE b.oid ${EQ} t.typbasetype AND b.typtype ${EQ} ${CHAR('d')})))
SELECT (SELECT s.setting FROM pg_catalog.pg_settings s WHERE s.name ${EQ} 'statement_timeout'::pg_catalog.text),
  NOT EXISTS (SELECT FROM w JOIN pg_catalog.pg_proc p ON p.proname ${EQ} w.nam AND p.pronamespace ${EQ} w.ns
    WHERE ${kind('f')} AND (${badProc('p')}
      OR EXISTS (SELECT FROM domains d WHERE d.oid ${EQ} ANY (p.proargtypes::pg_catalog.oid[]))
      OR EXISTS (SELECT FROM pg_catalog.pg_aggregate a JOIN pg_catalog.pg_proc s
          ON s.oid ${EQ} ANY (ARRAY[a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn,
                                   a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn]::pg_catalog.oid[])
        WHERE a.aggfnoid ${EQ} p.oid AND ${badProc('s')})))
  AND NOT EXISTS (SELECT FROM w JOIN pg_catalog.pg_operator o ON o.oprname ${EQ} w.nam AND o.oprnamespace ${EQ} w.ns
      JOIN pg_catalog.pg_proc p ON p.oid ${EQ} o.oprcode::pg_catalog.oid
    WHERE ${kind('o')} AND (${badProc('p')}
      OR EXISTS (SELECT FROM domains d WHERE d.oid ${EQ} o.oprleft OR d.oid ${EQ} o.oprright)))
  AND NOT EXISTS (SELECT FROM w JOIN pg_catalog.pg_type t ON t.typname ${EQ} w.nam AND t.typnamespace ${EQ} w.ns
    WHERE ${kind('t')} AND t.oid ${EQ} ANY (ARRAY(SELECT d.oid FROM domains d)))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid ${EQ} c.castfunc WHERE ${badProc('p')})
  AND NOT EXISTS (SELECT FROM w JOIN pg_catalog.pg_class c ON c.relname ${EQ} w.nam AND c.relnamespace ${EQ} w.ns
    WHERE ${kind('r')} AND (c.relrowsecurity OR EXISTS (
      WITH RECURSIVE tree(oid) AS (SELECT c.oid UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent ${EQ} tree.oid)
      SELECT FROM tree JOIN pg_catalog.pg_class k ON k.oid ${EQ} tree.oid
       WHERE k.relkind ${EQ} ANY (ARRAY[${CHAR('v')}, ${CHAR('m')}, ${CHAR('f')}]))))`;
}

/** Values by parameter name from a prefetch row (one column per argument, in argument order). */
function rowValues(fn: string, args: readonly { name: string | null; position: number }[], tuple: readonly (string | null)[]): ArgValues | null {
  if (!servedByProxy(fn)) return null;
  const names = parameterNames(fn);
  const out: ArgValues = {};
  for (let i = 0; i < args.length; i++) {
    const name = args[i].name ?? names[args[i].position];
    const param = name === undefined ? undefined : parameter(fn, name);
    if (!name || !param) return null;
    const raw = tuple[i];
    out[name] = raw !== null && SQL_TYPES[param.type].reads !== 'text' ? Number(raw) : raw;
  }
  return out;
}
