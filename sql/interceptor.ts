// The steadytext interceptor. For each steadytext call a client sends whose arguments the proxy can read
// (literals, bound parameters), it computes the answer before the statement reaches the database and
// hands it over through steadytext_cache (see handover.ts); the statement itself always goes upstream
// exactly as the client wrote it, so the database runs the function, checks EXECUTE, and finds the answer
// waiting. Calls that take row values are prefetched the same way (prefetch.ts); a plain read of
// steadytext_generate_stream is streamed (stream.ts). Whatever the proxy does not serve ahead, the
// function answers itself from the cache or through the daemon endpoint (callback path).
import type { Logger } from 'pino';
import type { Engine } from '../inference/engine.js';
import type { Interceptor, InterceptedMessage, ResponseHandler, Rewrite, SessionContext } from '../proxy/interceptor.js';
import { parse, query, readBind, readExecute, readParse, readTarget } from '../proxy/protocol.js';
import { argValues, boundParams } from './arguments.js';
import { findCalls, isParseFailure, loadParser, type StatementCalls, type SteadyCall } from './calls.js';
import type { Database, DatabaseRegistry } from './databases.js';
import { prefetch } from './prefetch.js';
import { constJobs, createsExtension, EXTENSION_STANDIN, EXTENSION_STANDIN_NOTICE, planParse, planQuery, splice } from './query-plan.js';
import { Responder } from './daemon/responder.js';
import { InbandCallbacks } from './inband.js';
import { afterwards, chain, hideNotice } from './responses.js';
import { Server } from './serve.js';
import { streamable, stream } from './stream.js';

export interface SteadytextOptions {
  engine: Engine;
  databases: DatabaseRegistry;
  /** Where the daemon endpoint listens, for steadytext_daemon_status. */
  daemon?: { host: string; port: number };
  logger: Logger;
  /** Most rows one statement's prefetch reads and computes (prefetch.ts); the database does the rest. */
  prefetchMaxValues?: number;
  /** The upstream is a transaction pooler: in-band requests are not tied to the backend pid seen at login (inband.ts). */
  upstreamPooled?: boolean;
}

const CANCELLED = `DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '57014', MESSAGE = 'canceling statement due to user request'; END$$`;

/** A prepared statement with calls the proxy serves at each Bind. */
/** A prepared statement's calls to serve at each Bind, or (extension) a CREATE EXTENSION pg_steadytext sent as its stand-in. */
interface Plan { paramTypes: readonly number[]; calls: SteadyCall[]; extension?: boolean }

export function createSteadytextInterceptor(o: SteadytextOptions): SteadytextInterceptor {
  return new SteadytextInterceptor(o);
}

export class SteadytextInterceptor implements Interceptor {
  /** Resolves once the parser is loaded (intercept() waits for it too). */
  readonly ready: Promise<void> = loadParser();
  private readonly server: Server;
  private readonly inband: InbandCallbacks;

  constructor(private readonly o: SteadytextOptions) {
    this.server = new Server(o.engine, o.daemon);
    const responder = new Responder({
      engine: o.engine, log: o.logger, address: o.daemon ?? { host: '', port: 0 },
      databaseFor: (name) => o.databases.get(name),
    });
    this.inband = new InbandCallbacks(responder, o.databases, o.upstreamPooled ?? false);
  }

  sessionStart(ctx: SessionContext): void {
    this.inband.sessionStart(ctx);
  }

  /** A server notice naming steadytext: an in-band callback request is answered and kept from the client. */
  notice(msg: Buffer, ctx: SessionContext, backendPid: number | undefined): boolean {
    return this.inband.notice(msg, ctx, backendPid);
  }

  async intercept(m: InterceptedMessage, ctx: SessionContext): Promise<Rewrite | undefined> {
    await this.ready;
    switch (m.type) {
      case 'Q': return this.onQuery(m.bytes.subarray(5, m.bytes.length - 1), ctx);
      case 'P': return this.onParse(m.bytes, ctx);
      case 'B': return this.onBind(m.bytes, ctx);
      case 'E':
        // The portal of a CREATE EXTENSION pg_steadytext (onBind): its stand-in's notice is not the client's.
        return extensionPortals(ctx).has(readExecute(m.bytes).portal) ? { send: [{ bytes: m.bytes, responses: HIDE_STANDIN }] } : undefined;
      case 'C': {
        const t = readTarget(m.bytes);
        if (t.kind === 'S') plans(ctx).delete(t.name);
        return undefined;
      }
    }
    return undefined;
  }

  /** Forgets which answers this proxy stored, e.g. after an administrator emptied steadytext_cache. */
  forgetStored(): void {
    this.server.forgetStored();
  }

  sessionEnd(ctx: SessionContext): void {
    plans(ctx).clear();
  }

  /** A simple-protocol Query: stream it, or serve its calls ahead, then let it go on (as written, mostly). */
  private async onQuery(sql: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const stmts = this.analyse(sql, ctx);
    if (!stmts) return undefined;
    const db = await this.database(ctx);
    if (!db) return undefined;
    const streamed = await this.tryStream(sql, stmts, db, ctx);
    if (streamed) return streamed;
    const plan = planQuery(sql, stmts);
    if (ctx.txStatus !== 'E') {
      const ahead = { scs: ctx.serverParams.get('standard_conforming_strings') !== 'off', extended: false };
      // Prefetch while the constant calls compute: both keep the engine busy at once.
      await Promise.all([
        this.server.serve(plan.jobs, db, ctx, ahead, 'rewrite'),
        // Not on a one-session database: its cursor and the answers' writes would take turns with the statement
        // itself; the calls are gathered in-band there instead (one round for the statement, as prefetch).
        plan.prefetches.length && !db.single ? prefetch(sql, plan.prefetches, db, ctx, this.server, { maxValues: this.o.prefetchMaxValues }) : undefined,
      ]);
    }
    // The client cancelled while the proxy worked for this statement: the statement is what was cancelled,
    // so it fails as a cancelled statement would, inside the database (a transaction block is aborted).
    if (ctx.signal.aborted) return { send: [query(CANCELLED)] };
    if (plan.readsStats) await db.flushCounters(db.via(ctx));
    if (!plan.touchesConfig && plan.replaced.length === 0) return undefined;
    const handlers: ResponseHandler[] = [];
    if (plan.touchesConfig) handlers.push(afterwards(() => db.runtime.markStale()));
    if (plan.replaced.length) handlers.push(HIDE_STANDIN);
    return { send: [{ bytes: query(splice(sql, plan.replaced).toString('utf8')), responses: chain(handlers) }] };
  }

  private async tryStream(sql: Buffer, stmts: StatementCalls[], db: Database, ctx: SessionContext): Promise<Rewrite | undefined> {
    const shape = streamable(stmts);
    if (!shape || ctx.txStatus === 'E') return undefined;
    const values = argValues(shape.call, null);
    return values ? stream(sql, shape.call, values, db, ctx, this.server) : undefined;
  }

  /** A Parse: remember the calls to serve at each Bind of this statement, and watch its name. */
  private async onParse(msg: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const p = readParse(msg);
    plans(ctx).delete(p.name);
    ctx.watched.statements.delete(p.name);
    const stmts = this.analyse(Buffer.from(p.sql, 'utf8'), ctx);
    if (stmts?.length === 1 && createsExtension(stmts[0])) {
      if (!(await this.database(ctx))) return undefined;
      plans(ctx).set(p.name, { paramTypes: p.paramTypes, calls: [], extension: true });
      ctx.watched.statements.add(p.name);
      return { send: [parse(p.name, EXTENSION_STANDIN, p.paramTypes)] };
    }
    const calls = planParse(stmts, p.paramTypes);
    // Install now, so the first Bind does not wait for it.
    if (calls.length === 0 || !(await this.database(ctx))) return undefined;
    plans(ctx).set(p.name, { paramTypes: p.paramTypes, calls });
    ctx.watched.statements.add(p.name);
    return undefined;
  }

  /** A Bind of a watched statement: serve its calls with these parameter values, then let it go on. */
  private async onBind(msg: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const b = readBind(msg);
    const plan = plans(ctx).get(b.statement);
    if (plan?.extension) {
      extensionPortals(ctx).add(b.portal);
      ctx.watched.portals.add(b.portal);
      return undefined;
    }
    if (!plan || ctx.txStatus === 'E') return undefined;
    const db = await this.database(ctx);
    if (!db) return undefined;
    // Parameter values are data: no setting of the session changes how they read.
    await this.server.serve(constJobs(plan.calls, boundParams(b, plan.paramTypes)), db, ctx, { scs: null, extended: true }, 'rewrite');
    return undefined;
  }

  /** The database of a session, installed on this first use; undefined when it cannot be (calls then go through as sent). */
  private async database(ctx: SessionContext): Promise<Database | undefined> {
    const db = this.o.databases.get(ctx.database);
    try {
      await db.ready();
      return db;
    } catch (err) {
      ctx.log.warn({ err }, 'steadytext objects not ready in this database; calls go through unchanged');
      return undefined;
    }
  }

  private analyse(sql: Buffer, ctx: SessionContext): StatementCalls[] | undefined {
    const r = findCalls(sql, { standardConformingStrings: ctx.serverParams.get('standard_conforming_strings') !== 'off' });
    if (isParseFailure(r)) {
      ctx.log.debug({ failure: r.failure, message: r.message }, 'statement not parsed; forwarded unchanged');
      return undefined;
    }
    return r;
  }
}

const HIDE_STANDIN = hideNotice(EXTENSION_STANDIN_NOTICE);

/** Portals bound to a CREATE EXTENSION pg_steadytext (until the session's portals go, at the end of a transaction). */
function extensionPortals(ctx: SessionContext): Set<string> {
  const w = ctx.watched.portals;
  const s = (ctx.data.steadytextExtensionPortals ??= new Set<string>()) as Set<string>;
  for (const p of s) if (!w.has(p)) s.delete(p);
  return s;
}

/** The session's prepared statements with calls, in the interceptor's per-session data. */
function plans(ctx: SessionContext): Map<string, Plan> {
  return (ctx.data.steadytextPlans ??= new Map<string, Plan>()) as Map<string, Plan>;
}
