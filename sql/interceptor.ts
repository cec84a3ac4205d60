// The steadytext interceptor. For each steadytext call a client sends whose arguments the proxy can read
// (literals, bound parameters), it computes the answer before the statement reaches the database and
// hands it over through steadytext_cache (see handover.ts); the statement itself always goes upstream
// exactly as the client wrote it, so the database runs the function, checks EXECUTE, and finds the answer
// waiting. Calls that take row values are prefetched the same way (prefetch.ts); a plain read of
// steadytext_generate_stream is streamed (stream.ts). Whatever the proxy does not serve ahead, the
// function answers itself from the cache or through the daemon endpoint (callback path).
import type { Logger } from 'pino';
import type { Engine } from '../inference/engine.js';
import { findCalls, isParseFailure, loadParser, statementAst, type StatementCalls, type SteadyCall } from './calls.js';
import type { Database, DatabaseRegistry } from './databases.js';
import { argValues, boundParams } from './arguments.js';
import type { Interceptor, InterceptedMessage, ResponseHandler, Rewrite, SessionContext } from '../proxy/interceptor.js';
import { Be, query, readBind, readErrorFields, readParse, readTarget } from '../proxy/protocol.js';
import { prefetch } from './prefetch.js';
import { Server, type ServeJob } from './serve.js';
import { streamable, stream } from './stream.js';

export interface SteadytextOptions {
  engine: Engine;
  databases: DatabaseRegistry;
  /** Where the daemon endpoint listens, for steadytext_daemon_status. */
  daemon?: { host: string; port: number };
  logger: Logger;
  /** Most rows one statement's prefetch reads and computes (prefetch.ts); the database does the rest. */
  prefetchMaxValues?: number;
}

const CANCELLED = `DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '57014', MESSAGE = 'canceling statement due to user request'; END$$`;

/** A prepared statement with calls the proxy serves at each Bind. */
interface Plan { paramTypes: number[]; calls: SteadyCall[] }

interface SessionState { plans: Map<string, Plan> }

export function createSteadytextInterceptor(o: SteadytextOptions): Interceptor & { ready: Promise<void> } {
  const ready = loadParser();
  const server = new Server(o.engine, o.daemon);

  const state = (ctx: SessionContext): SessionState =>
    (ctx.data.steadytext ??= { plans: new Map() }) as SessionState;

  /** The database of a session, installed on this first use; undefined when it cannot be (calls then go through as sent). */
  async function database(ctx: SessionContext): Promise<Database | undefined> {
    const db = o.databases.get(ctx.database);
    try {
      await db.ready();
      return db;
    } catch (err) {
      ctx.log.warn({ err }, 'steadytext objects not ready in this database; calls go through unchanged');
      return undefined;
    }
  }

  function analyse(sql: Buffer, ctx: SessionContext): StatementCalls[] | undefined {
    const r = findCalls(sql, { standardConformingStrings: ctx.serverParams.get('standard_conforming_strings') !== 'off' });
    if (isParseFailure(r)) {
      ctx.log.debug({ failure: r.failure, message: r.message }, 'statement not parsed; forwarded unchanged');
      return undefined;
    }
    return r;
  }

  async function onQuery(msg: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const sql = msg.subarray(5, msg.length - 1);
    const stmts = analyse(sql, ctx);
    if (!stmts) return undefined;
    const db = await database(ctx);
    if (!db) return undefined;
    const shape = streamable(stmts);
    if (shape && ctx.txStatus !== 'E') {
      const values = argValues(shape.call, null);
      if (values) {
        const r = await stream(sql, shape.call, values, db, ctx, server);
        if (r) return r;
      }
    }
    const jobs: ServeJob[] = [];
    const replaced: { at: number; end: number; text: string }[] = [];
    const prefetches: StatementCalls[] = [];
    let touchesConfig = false;
    let readsStats = false;
    for (const st of stmts) {
      const ast = statementAst(st);
      if (ast?.CreateExtensionStmt?.extname === 'pg_steadytext') {
        // The objects are already installed (database() above): keep the statement's meaning and tag.
        replaced.push({ at: st.start, end: st.end, text: 'CREATE EXTENSION IF NOT EXISTS plpgsql' });
        continue;
      }
      if (st.kind !== 'other' && mentionsStats(sql, st.start, st.end)) readsStats = true;
      for (const call of st.calls) if (call.fn === 'steadytext_config_set') touchesConfig = true;
      if (!servedAhead(stmts, st)) continue;
      if (st.calls.some((c) => c.kind === 'row')) prefetches.push(st);
      for (const call of st.calls) {
        if (call.kind !== 'const') continue;
        const values = argValues(call, null);
        if (values) jobs.push({ call, values });
      }
    }
    if (ctx.txStatus !== 'E') {
      const ahead = { scs: ctx.serverParams.get('standard_conforming_strings') !== 'off', extended: false };
      // Prefetch while the constant calls compute: both keep the engine busy at once.
      await Promise.all([server.serve(jobs, db, ctx, ahead, 'rewrite'), prefetches.length ? prefetch(sql, prefetches, db, ctx, server, { maxValues: o.prefetchMaxValues }) : undefined]);
    }
    // The client cancelled while the proxy worked for this statement: the statement is what was cancelled,
    // so it fails as a cancelled statement would, inside the database (a transaction block is aborted).
    if (ctx.signal.aborted) return { send: [query(CANCELLED)] };
    if (readsStats) await db.flushCounters();
    if (!touchesConfig && replaced.length === 0) return undefined;
    const out = query(splice(sql, replaced).toString('utf8'));
    const handlers: ResponseHandler[] = [];
    if (touchesConfig) handlers.push(configWatcher(db));
    if (replaced.length) handlers.push(hideNotice('extension "plpgsql" already exists'));
    return { send: [{ bytes: out, responses: chain(handlers) }] };
  }

  async function onParse(msg: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const p = readParse(msg);
    const st = state(ctx);
    st.plans.delete(p.name);
    ctx.watched.statements.delete(p.name);
    const stmts = analyse(Buffer.from(p.sql, 'utf8'), ctx);
    if (!stmts || stmts.length !== 1 || !servedAhead(stmts, stmts[0])) return undefined;
    const s = stmts[0];
    const n = Math.max(s.maxParam, p.paramTypes.length);
    const probe = { values: new Array(n).fill('0'), types: p.paramTypes };
    const calls = s.calls.filter((c) => c.kind === 'const' && argValues(c, probe) !== null);
    if (calls.length === 0) return undefined;
    // Install now, so the first Bind does not wait for it.
    if (!(await database(ctx))) return undefined;
    st.plans.set(p.name, { paramTypes: p.paramTypes, calls });
    ctx.watched.statements.add(p.name);
    return undefined;
  }

  async function onBind(msg: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const b = readBind(msg);
    const plan = state(ctx).plans.get(b.statement);
    if (!plan || ctx.txStatus === 'E') return undefined;
    const db = await database(ctx);
    if (!db) return undefined;
    const params = boundParams(b, plan.paramTypes);
    const jobs: ServeJob[] = [];
    for (const call of plan.calls) {
      const values = argValues(call, params);
      if (values) jobs.push({ call, values });
    }
    // Parameter values are data: no setting of the session changes how they read.
    await server.serve(jobs, db, ctx, { scs: null, extended: true }, 'rewrite');
    return undefined;
  }

  return {
    ready,
    sessionEnd(ctx) {
      state(ctx).plans.clear();
    },
    async intercept(m: InterceptedMessage, ctx: SessionContext): Promise<Rewrite | undefined> {
      await ready;
      switch (m.type) {
        case 'Q': return onQuery(m.bytes, ctx);
        case 'P': return onParse(m.bytes, ctx);
        case 'B': return onBind(m.bytes, ctx);
        case 'C': {
          const t = readTarget(m.bytes);
          if (t.kind === 'S') state(ctx).plans.delete(t.name);
          return undefined;
        }
      }
      return undefined;
    },
  };
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

/** After a statement that may have changed steadytext_config, every session must see the change. */
function configWatcher(db: Database): ResponseHandler {
  return { onMessage: (m) => m, onEnd: () => db.runtime.markStale() };
}

/** Does sql[start, end) mention steadytext_stats (ASCII case-insensitive)? Its counters are flushed first. */
function mentionsStats(sql: Buffer, start: number, end: number): boolean {
  return sql.subarray(start, end).toString('latin1').toLowerCase().includes('steadytext_stats');
}

/** Drops the NoticeResponse with this exact message (the one our own replacement statement causes). */
function hideNotice(message: string): ResponseHandler {
  return { onMessage: (m) => (m[0] === Be.NoticeResponse && readErrorFields(m).M === message ? null : m) };
}

function chain(hs: ResponseHandler[]): ResponseHandler {
  return {
    onMessage(m, req) {
      let cur: Buffer[] = [m];
      for (const h of hs) {
        const next: Buffer[] = [];
        for (const x of cur) {
          const r = h.onMessage(x, req);
          if (r) next.push(...(Array.isArray(r) ? r : [r]));
        }
        cur = next;
      }
      return cur.length === 1 ? cur[0] : cur;
    },
    onEnd(req, how) { for (const h of hs) h.onEnd?.(req, how); },
  };
}

/** Whole-range replacements over the original offsets. */
function splice(sql: Buffer, replaces: { at: number; end: number; text: string }[]): Buffer {
  const parts: Buffer[] = [];
  let prev = 0;
  for (const op of [...replaces].sort((a, b) => a.at - b.at)) {
    parts.push(sql.subarray(prev, op.at), Buffer.from(op.text, 'utf8'));
    prev = op.end;
  }
  parts.push(sql.subarray(prev));
  return Buffer.concat(parts);
}
