// The prefetch path: a statement whose calls take row values. The argument values it will need are read
// with the client's own privileges on its own connection (a derived SELECT DISTINCT, prefetch-plan.ts),
// computed concurrently, and handed over through steadytext_cache before the statement goes upstream
// unchanged, where the function finds each answer. Whatever is missed (a snapshot older than the cache
// rows, say) the function still answers through the daemon, so failures here only cost time.
import type { StatementCalls } from './calls.js';
import type { Database } from './databases.js';
import { PARAMETERS, type ArgValues } from './evaluate.js';
import { auxQuery } from './handover.js';
import type { SessionContext } from './interceptor.js';
import { derivePrefetch } from './prefetch-plan.js';
import type { Resolved, Server } from './serve.js';

/** Answers handed over per batch. */
const PREFETCH_BATCH = 256;
/** Bulk prefetches log how far they are this often. */
const PROGRESS_MS = 10_000;
const NUMERIC_PARAMS = new Set(['max_tokens', 'seed', 'temperature']);

export async function prefetch(sql: Buffer, stmts: StatementCalls[], db: Database, ctx: SessionContext, server: Server): Promise<void> {
  for (const st of stmts) {
    const plan = derivePrefetch(sql, st);
    if (!plan || plan.params.length > 0) continue;
    const calls = plan.calls.map((pc) => st.calls[pc.call]);
    // Nothing is read or computed for a role that may not run the functions.
    const check = await server.check(calls.map((c) => ({ fn: c.fn, schema: c.schema })), db, ctx, { scs: ctx.serverParams.get('standard_conforming_strings') !== 'off', extended: false });
    if (!check || !check.allowed.every(Boolean)) continue;
    const inTx = ctx.txStatus === 'T';
    // Inside a transaction a failing SELECT must not abort the client's work: fence it with a savepoint.
    const r = await auxQuery(ctx, inTx ? `SAVEPOINT _steadytext_prefetch; ${plan.sql}; RELEASE SAVEPOINT _steadytext_prefetch` : plan.sql);
    if ('error' in r) {
      if (inTx) await auxQuery(ctx, 'ROLLBACK TO SAVEPOINT _steadytext_prefetch; RELEASE SAVEPOINT _steadytext_prefetch');
      ctx.log.debug({ error: r.error.M }, 'prefetch query failed; the database will ask the daemon instead');
      continue;
    }
    const work: Resolved[] = [];
    const seenKeys = new Set<string>();
    for (const pc of plan.calls) {
      const call = st.calls[pc.call];
      const seen = new Set<string>();
      for (const row of r.rows) {
        const tuple = pc.argColumns.map((i) => row[i]);
        const k = JSON.stringify(tuple);
        if (seen.has(k)) continue;
        seen.add(k);
        const values = rowValues(call.fn, call.args, tuple);
        const res = values && await server.resolve(call, values, db);
        if (!res || seenKeys.has(res.key) || await server.known(res, db)) continue;
        seenKeys.add(res.key);
        work.push(res);
      }
    }
    await run(work, db, ctx, server, check.backendPid);
  }
}

/**
 * Feeds the engine a few requests more than it has contexts, never the whole statement at once: each
 * request's daemon_timeout_ms then measures its own work, not its wait behind thousands of others, and
 * the queue limit is never hit by one statement. Answers are handed over in batches while the engine
 * works on the next ones.
 */
async function run(work: Resolved[], db: Database, ctx: SessionContext, server: Server, backendPid: number): Promise<void> {
  const cpu = server.engine.status().cpu;
  const width = Math.max(2, 2 * Math.max(cpu.generationContexts, cpu.embeddingContexts));
  let next = 0;
  let writing: Promise<void> = Promise.resolve();
  let pending: Parameters<Server['handOver']>[0][number][] = [];
  const flush = () => {
    if (pending.length === 0) return;
    const batch = pending;
    pending = [];
    writing = writing.then(() => server.handOver(batch, db, ctx, backendPid, 'prefetch'))
      .catch((err) => ctx.log.warn({ err }, 'prefetch could not store answers in steadytext_cache'));
  };
  const t = performance.now();
  let done = 0;
  let shown = t;
  const lane = async () => {
    while (next < work.length && !ctx.signal.aborted) {
      const r = work[next++];
      const outcome = await server.computeOne(r, db, ctx);
      pending.push([r, outcome]); // not pending.push(await ...): flush() may have replaced the array meanwhile
      done++;
      if (pending.length >= PREFETCH_BATCH) flush();
      if (performance.now() - shown > PROGRESS_MS) {
        shown = performance.now();
        ctx.log.info({ done, calls: work.length, seconds: Math.round((shown - t) / 1000) }, 'prefetch progress');
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, work.length) }, lane));
  flush();
  await writing;
  if (work.length > PREFETCH_BATCH) ctx.log.info({ calls: work.length, ms: Math.round(performance.now() - t) }, 'prefetch done');
}

/** Values by parameter name from a prefetch row (one column per argument, in argument order). */
function rowValues(fn: string, args: readonly { name: string | null; position: number }[], tuple: readonly (string | null)[]): ArgValues | null {
  const names = PARAMETERS[fn as keyof typeof PARAMETERS];
  if (!names) return null;
  const out: ArgValues = {};
  for (let i = 0; i < args.length; i++) {
    const name = args[i].name ?? names[args[i].position];
    if (!name || !names.includes(name)) return null;
    const raw = tuple[i];
    out[name] = raw !== null && NUMERIC_PARAMS.has(name) ? Number(raw) : raw;
  }
  return out;
}
