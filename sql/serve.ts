// Serving calls ahead of their statement: resolve each call into a request and its cache key, skip what
// this proxy stored recently, ask the session whether it may run each function (handover.ts), compute
// what it may, and hand the answers over (cache rows, mailbox entries) before the statement goes on.
import { downloadWaitNote, type DownloadProgress, type Engine } from '../inference/engine.js';
import { entryKey, type CacheEntry } from './store.js';
import type { CallError } from './answers.js';
import type { SteadyCall } from './calls.js';
import type { Database } from './databases.js';
import {
  callbackTransport, cacheEntry, compute, isComputing, isManagement, manage, managementTopic, resolveRequest, roleOf,
  type ArgValues, type ComputeRequest, type ManagementFunction,
} from './evaluate.js';
import {
  checkExtended, checkSimple, checkSql, KnownKeys, knownTtlMs, postMailbox, readInstalled,
  type CheckItem, type CheckResult, type Installed, type MailboxEntry,
} from './handover.js';
import type { SessionContext } from '../proxy/interceptor.js';
import { noticeToClient } from './responses.js';

export interface ServeJob { call: SteadyCall; values: ArgValues }

/** How the statement reaches the database: decides how the check runs and whether literals were read right. */
export interface Ahead {
  /** standard_conforming_strings the literals were read with (null: parameters only, no literal read). */
  scs: boolean | null;
  /** Inside an extended-protocol batch (a Bind): the check must not end the client's implicit transaction. */
  extended: boolean;
}

/** A computing call ready to run: its request, model identity and cache key. */
export interface Resolved { fn: string; call: SteadyCall; req: ComputeRequest; identity: string; key: string }

/** A computed call: the cache row its answer becomes, or the error its function is to raise. */
export type Outcome = { entry: CacheEntry } | { error: CallError };

interface DbState { known: KnownKeys; generation: number; installed?: Promise<Installed> }

export class Server {
  private readonly dbs = new WeakMap<Database, DbState>();
  constructor(readonly engine: Engine, private readonly daemon?: { host: string; port: number }) {}

  private generation = 0;

  /** Forgets which answers this proxy stored (an administrator emptied steadytext_cache). */
  forgetStored(): void {
    this.generation++;
  }

  private stateOf(db: Database): DbState {
    let s = this.dbs.get(db);
    if (!s || s.generation !== this.generation) this.dbs.set(db, s = { known: new KnownKeys(), generation: this.generation });
    return s;
  }

  /**
   * A computing call's request and key; undefined when the database must answer it alone. While its model is
   * being downloaded the call waits, and the client of `ctx` is told why (once per download and statement).
   */
  async resolve(call: SteadyCall, values: ArgValues, db: Database, ctx?: SessionContext, inBatch = false): Promise<Resolved | undefined> {
    if (!isComputing(call.fn)) return undefined;
    const req = resolveRequest(call.fn, values, await db.config());
    if (!req) return undefined;
    let identity: string;
    const told = ctx ? (ctx.data.steadytextDownloadsTold ??= new Set<string>()) as Set<string> : undefined;
    let waited: string | undefined;
    const onWait = (p: DownloadProgress) => {
      if (!ctx || told!.has(p.path)) return;
      told!.add(waited = p.path);
      noticeToClient(ctx, downloadWaitNote(p));
    };
    try {
      identity = await db.identity(roleOf(req), req.modelSize, { signal: ctx?.signal, onWait: ctx && onWait }, db.via(ctx, inBatch));
    } catch {
      return undefined; // no model: the function reports it (through the daemon) with the engine's own words
    } finally {
      if (waited) told!.delete(waited);
    }
    return { fn: call.fn, call, req, identity, key: entryKey(cacheEntry(req, identity, { answer: '' })) };
  }

  /** True when this proxy stored the answer recently: the function will find it, nothing to do. */
  async known(r: Resolved, db: Database): Promise<boolean> {
    return (await db.config()).cacheEnabled && this.stateOf(db).known.has(r.key);
  }

  /** Asks the session which of these functions it may run (see handover.ts); undefined: none. */
  async check(items: readonly CheckItem[], db: Database, ctx: SessionContext, ahead: Ahead): Promise<CheckResult | undefined> {
    if (items.length === 0) return undefined;
    const st = this.stateOf(db);
    const schema = db.schema;
    st.installed ??= readInstalled(db.via(ctx, ahead.extended), schema).catch((err) => { st.installed = undefined; throw err; });
    let installed: Installed;
    try { installed = await st.installed; } catch (err) {
      ctx.log.warn({ err }, 'cannot read the installed steadytext functions; calls go to the database');
      return undefined;
    }
    const sql = checkSql(items, installed, schema);
    const r = ahead.extended ? await checkExtended(ctx, sql, items.length) : await checkSimple(ctx, sql, items.length);
    if (!r || r.clientEncoding !== 'UTF8' || (ahead.scs !== null && ahead.scs !== r.standardConformingStrings)) return undefined;
    // Inside a REPEATABLE READ or SERIALIZABLE block the statement reads an older snapshot than our rows:
    // computing now would only be computed again through the daemon (and a stop would act twice). Not on one
    // session (Database.single), where our rows are written in the client's own transaction and so are seen.
    if (!db.single && ctx.txStatus === 'T' && r.isolation !== 'read committed' && r.isolation !== 'read uncommitted') return undefined;
    if (r.allowed.some((a, i) => !a && installed.functions.get(items[i].fn) === undefined)) st.installed = undefined; // reinstalled?
    return r;
  }

  /** Computes one request; never throws. */
  async computeOne(r: Resolved, db: Database, ctx: SessionContext): Promise<Outcome> {
    const config = await db.config();
    const e = await compute(r.req, { engine: this.engine, config, caller: `session:${ctx.id}:${ctx.database}`, signal: ctx.signal });
    return 'answer' in e ? { entry: cacheEntry(r.req, r.identity, e) } : e;
  }

  /** Hands computed answers over: cache rows, and failures in the session's mailbox (committed on return). */
  async handOver(done: readonly [Resolved, Outcome][], db: Database, ctx: SessionContext, backendPid: number, how: 'rewrite' | 'prefetch' | 'stream', inBatch = false, own = false): Promise<void> {
    const config = await db.config();
    const entries: CacheEntry[] = [];
    const posts: MailboxEntry[] = [];
    let errors = 0, embeds = 0;
    for (const [r, o] of done) {
      if (r.req.op === 'embed') embeds++;
      if ('entry' in o) entries.push(o.entry);
      else {
        errors++;
        posts.push({ topic: `error:${r.key}`, error: o.error });
        db.logEvent('error', `${how}_error`, o.error.message, { sqlstate: o.error.sqlstate, fn: r.fn, user: ctx.user });
      }
    }
    const w = db.via(ctx, inBatch, own);
    // One after the other on a session's connection (writer): it answers in order anyway.
    if (w === db.pool) await Promise.all([db.store(entries), postMailbox(w, db.schema, backendPid, posts)]);
    else await db.store(entries, w).then(() => postMailbox(w, db.schema, backendPid, posts));
    // Rows written in the client's open block (`own`) are not there for others until it commits, if it does.
    if (config.cacheEnabled && !(own && !db.single)) {
      const known = this.stateOf(db).known;
      const ttl = knownTtlMs(config.cacheTtlSeconds);
      for (const e of entries) known.add(entryKey(e), ttl);
    }
    if (config.debugMode && entries.length) db.logEvent('debug', how, `${entries.length} answer(s) computed by the proxy`, { user: ctx.user, session: ctx.id });
    db.count({ [`${how}_requests`]: done.length, errors, embed_requests: embeds, generate_requests: done.length - embeds });
  }

  /**
   * Serves a message's calls with constant arguments: computing calls through the cache, management calls
   * (status, start, stop...) through the mailbox. Returns once everything is handed over.
   */
  async serve(jobs: readonly ServeJob[], db: Database, ctx: SessionContext, ahead: Ahead, how: 'rewrite'): Promise<void> {
    if (jobs.length === 0) return;
    // In job order: what each call is, so the check's answers map back by position.
    const pending: ({ manage: ManagementFunction; schema: string | null } | { compute: Resolved })[] = [];
    const seen = new Set<string>();
    for (const j of jobs) {
      if (isManagement(j.call.fn)) {
        pending.push({ manage: j.call.fn, schema: j.call.schema });
        continue;
      }
      const r = await this.resolve(j.call, j.values, db, ctx, ahead.extended);
      if (!r || seen.has(r.key) || await this.known(r, db)) continue;
      seen.add(r.key);
      pending.push({ compute: r });
    }
    const items = pending.map((p) => ('manage' in p ? { fn: p.manage, schema: p.schema } : { fn: p.compute.fn, schema: p.compute.call.schema }));
    const check = await this.check(items, db, ctx, ahead);
    if (!check) return;
    const allowed = pending.filter((_, i) => check.allowed[i]);
    const okCompute = allowed.flatMap((p) => ('compute' in p ? [p.compute] : []));
    const okManage = allowed.flatMap((p) => ('manage' in p ? [p.manage] : []));
    const [done, managed] = await Promise.all([
      Promise.all(okCompute.map(async (r) => [r, await this.computeOne(r, db, ctx)] as [Resolved, Outcome])),
      this.manageAll(okManage, db),
    ]);
    // Inside a block that has written, the client may hold the row an answer would replace (a mailbox topic it
    // took earlier in the block: a second steadytext_daemon_start()), which the service connection would wait on
    // until the block ends, and the block waits on this statement: such writes go in the client's own transaction
    // when its role may write them; else the service connection gives up after its lock_timeout, and the function,
    // missing the answer, asks in-band (Database.pool).
    const own = ctx.txStatus === 'T' && !check.unwritten && check.writes;
    if (db.single || own) {
      // On the client's connection, in turn (Database.via).
      if (done.length) await this.handOver(done, db, ctx, check.backendPid, how, ahead.extended, own);
      await postMailbox(db.via(ctx, ahead.extended, own), db.schema, check.backendPid, managed);
      return;
    }
    await Promise.all([
      done.length ? this.handOver(done, db, ctx, check.backendPid, how) : undefined,
      postMailbox(db.pool, db.schema, check.backendPid, managed),
    ]);
  }

  /** Management calls in order (a stop then a start in one statement act in that order). */
  private async manageAll(fns: readonly ManagementFunction[], db: Database): Promise<MailboxEntry[]> {
    const config = await db.config();
    const out = new Map<string, MailboxEntry>();
    for (const fn of fns) {
      const topic = managementTopic(fn);
      out.set(topic, { topic, ...await manage(fn, this.engine, this.daemon, config, callbackTransport(config, db.dblink, this.daemon !== undefined)) });
    }
    return [...out.values()];
  }
}
