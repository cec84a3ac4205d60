// The in-band callback transport, proxy side (the SQL side is sql/migrations/005_inband.sql). A steadytext
// function that missed the cache inside a statement the proxy could not read ahead (PL/pgSQL, a trigger, a
// view) raises an INFO notice `steadytext:inband` whose detail is the same JSON request the dblink transport
// sends and whose hint is an HMAC-SHA256 of it under the database's daemon secret. The notice reaches the proxy
// at once, while the statement runs. Here it is checked (signature, database), kept from the client, and
// answered: the request is evaluated like a daemon request (daemon/responder.ts) and its answer, or the error
// to raise, is committed to steadytext_mailbox under the request's id for the requesting backend, where the
// function picks it up with a fresh snapshot; an answer that is a cache row under the key the function looked
// up is committed as that row instead (migration 009), which the function reads by that key. Meanwhile an
// advisory lock keyed by the request is held, which the function waits on, so it looks the moment the answer
// is committed rather than at its next poll.
//
// A notice that does not verify (another role raising the same text, a client replaying one) is the
// client's own: it goes through unchanged and nothing is computed or stored for it.
import { setMaxListeners } from 'node:events';
import { createHmac, timingSafeEqual } from 'node:crypto';
import pg from 'pg';
import type { ResponseHandler, SessionContext } from '../proxy/interceptor.js';
import { Be, Fe, query as queryMessage, readErrorFields } from '../proxy/protocol.js';
import type { RuntimeConfig } from '../config/runtime.js';
import { cacheRowQuery, entryKey, type CacheEntry } from './store.js';
import { findCalls, isParseFailure } from './calls.js';
import type { DatabaseRegistry } from './databases.js';
import { WireError } from './errors.js';
import { errorAnswer, wrapAnswer } from './answers.js';
import { isManagement, managementTopic, type Evaluated } from './evaluate.js';
import type { Database } from './databases.js';
import { auxQuery, deleteSkipLocked, mailboxQuery, postMailbox, type MailboxEntry, type Statement } from './handover.js';
import type { StandingWakes } from './standing-wakes.js';
import { quoteIdent } from './install.js';
import { mayStopInBlock } from './read-only-blocks.js';
import type { Responder } from './daemon/responder.js';

export const INBAND_MARKER = 'steadytext:inband';

/** Requests of one session being answered at once: a statement asks one at a time, so this only bounds abuse. */
const MAX_PER_SESSION = 16;

interface Signed {
  payload: string;
  id: string;
  backendPid: number;
  /** The large object to write the answer into (REPEATABLE READ, SERIALIZABLE), else the mailbox. */
  lo: number | null;
  /** The function waits for the answer; false: it raised 40001 and only the cache row is wanted. */
  wait: boolean;
  /** Asked from a dry run (steadytext.gather on): computed to be cached, answered to no one. */
  gather: boolean;
  /** The SQL function that asked. */
  fn: string;
  /** The function raised 40001 naming this request right after asking (read-only REPEATABLE READ or SERIALIZABLE). */
  stops: boolean;
  /** What the answer is named by when handed over in the session (migration 007), and whether it must be. */
  answerKey: string | null;
  snapshot: boolean;
  /** The session_user that asked. */
  user: string | null;
  /** The steadytext_cache key the computing function looked up (migration 009): where it looks for a cacheable answer first. */
  cacheKey: string | null;
  /** The nonce of the asking session, and whether the function found the standing lock it names held (migration 010). */
  nonce: string | null;
  armed: boolean;
}

/** How often left-behind large objects are looked for, and how old they must be to go. */
const SWEEP_EVERY_MS = 60_000;
const SWEEP_AGE = '10 minutes';

export class InbandCallbacks {
  /**
   * upstreamPooled: the proxy's upstream is a transaction pooler (pgBouncer, a cloud provider's proxy), so the
   * backend pid a session saw at login is not the one that raises its requests. A request is then taken by its
   * signature, its database, the session's own login role and an id not seen before, instead of by that pid.
   */
  constructor(
    private readonly responder: Responder,
    private readonly databases: DatabaseRegistry,
    private readonly upstreamPooled = false,
  ) {}

  /** Request ids taken lately (upstreamPooled): a signed notice replayed, in any session, computes nothing again. */
  private readonly taken = new Set<string>();

  /**
   * Unless calls the proxy cannot see are set to ask through dblink only, the session keeps its Queries so
   * that a statement missing row after row can be run again (stopToGather). ('auto' may fall back to in-band
   * at any call, when the daemon endpoint does not answer the database.) Read for databases already prepared
   * (a session's first in-band request turns it on too): a session start never installs anything.
   */
  sessionStart(ctx: SessionContext): void {
    const db = this.databases.find(ctx.database);
    if (db?.secret === undefined) return;
    // At once (the native relay, which may take the session next, reads it when it starts), then as configured.
    ctx.keepQueries = true;
    if (!db.single) this.fenceReadOnly(ctx);
    db.config().then((cfg) => {
      this.configured(ctx, cfg);
      // One session (PGlite): every miss stops its statement (migration 008), in a block too, so fence from the start.
      if (db.single) this.fenceBlocks(ctx);
    }, () => {});
  }

  /** What steadytext_config says of reruns, for this session (refreshed at each in-band request). */
  private configured(ctx: SessionContext, cfg: RuntimeConfig): void {
    ctx.data.inbandRerun = cfg.inbandRerun;
    ctx.keepQueries = cfg.inbandRerun && cfg.callbackTransport !== 'dblink';
    if (!ctx.keepQueries) {
      ctx.fenceable = null;
      ctx.fenceNarrow = false;
    }
  }

  /**
   * Until the session asks in-band: only blocks that may be read-only at REPEATABLE READ or SERIALIZABLE are
   * fenced (read-only-blocks.ts), where a miss stops its statement at once and only a fence lets it run again.
   */
  private fenceReadOnly(ctx: SessionContext): void {
    if (ctx.fenceable !== null || !ctx.keepQueries || ctx.data.inbandRerun === false) return;
    ctx.fenceNarrow = true;
    ctx.fenceable = (query) =>
      mayStopInBlock(ctx.blockOpener, ctx.serverParams.get('default_transaction_read_only') === 'on') && rerunnable(query, ctx);
  }

  /**
   * A session that asked in-band has calls the proxy cannot see: from now on its statements inside transaction
   * blocks are fenced too (SessionContext.fenceable), so that one missing row after row there is gathered as
   * outside. Not before: a fence costs each statement of a block two more, and a writing one a subtransaction.
   */
  private fenceBlocks(ctx: SessionContext): void {
    if ((ctx.fenceable !== null && !ctx.fenceNarrow) || !ctx.keepQueries || ctx.data.inbandRerun === false) return;
    ctx.fenceNarrow = false;
    ctx.fenceable = (query) => rerunnable(query, ctx);
  }

  /** A server notice naming steadytext: true when it is an in-band request of ours (then answered, and hidden). */
  notice(msg: Buffer, ctx: SessionContext, backendPid: number | undefined): boolean {
    if (msg[0] !== Be.NoticeResponse) return false;
    const f = readErrorFields(msg);
    if (f.M !== INBAND_MARKER || f.D === undefined || f.H === undefined) return false;
    const db = this.databases.get(ctx.database);
    if (db.secret === undefined) {
      // First contact with this database is a callback (a trigger, say): read its secret, then check.
      void db.ready().then(
        () => this.accept(db.secret !== undefined ? this.verified(f.D, f.H, db.secret, ctx, backendPid) : null, ctx),
        (err: unknown) => ctx.log.warn({ err }, 'steadytext objects not ready; an in-band request goes unanswered'),
      );
      return true;
    }
    return this.accept(this.verified(f.D, f.H, db.secret, ctx, backendPid), ctx);
  }

  /** verify(), with the backend pid the session saw at login, or (upstreamPooled) its login role and a fresh id. */
  private verified(payload: string, mac: string, secret: string, ctx: SessionContext, backendPid: number | undefined): Signed | null {
    if (!this.upstreamPooled) return verify(payload, mac, secret, ctx.database, backendPid);
    const r = verify(payload, mac, secret, ctx.database, null);
    if (r === null || r.user !== ctx.user || this.taken.has(r.id)) return null;
    this.taken.add(r.id);
    if (this.taken.size > MAX_TAKEN_IDS) this.taken.delete(this.taken.values().next().value!);
    return r;
  }

  private accept(signed: Signed | null, ctx: SessionContext): boolean {
    if (signed === null) {
      // debug, not warn: a session can raise such notices at will, and must not be able to flood the log.
      ctx.log.debug({ event: 'inband_unsigned' }, 'a steadytext:inband notice without a valid signature: nothing computed for it');
      return false;
    }
    const inFlight = (ctx.data.inbandInFlight as number | undefined) ?? 0;
    if (inFlight >= MAX_PER_SESSION) {
      ctx.log.warn({ inFlight }, 'too many in-band requests in flight for one session; this one is dropped (its caller times out)');
      return true;
    }
    const db = this.databases.get(ctx.database);
    if (ctx.data.inbandRerun === undefined) ctx.keepQueries = true; // until the config says otherwise, below
    void db.config().then((cfg) => this.configured(ctx, cfg), () => {});
    if (!signed.gather) this.fenceBlocks(ctx);
    if (ctx.data.inbandRerun !== false) {
      // Stopped already (a read-only snapshot that cannot see the answer): run again with it, where possible.
      if (signed.stops && this.armRerun(signed, ctx)) return true;
      if (signed.wait && this.stopToGather(signed, ctx)) return true;
    }
    ctx.data.inbandInFlight = inFlight + 1;
    void this.answer(signed, ctx).finally(() => {
      ctx.data.inbandInFlight = ((ctx.data.inbandInFlight as number) ?? 1) - 1;
    });
    return true;
  }

  private async answer(r: Signed, ctx: SessionContext): Promise<void> {
    const db = this.databases.get(ctx.database);
    const standing = standingOf(r, db);
    const key = wakeKey(r.id);
    const wake = r.wait && standing === undefined ? db.holdWake(key) : null;
    // A function waiting in READ COMMITTED that sent its cache key looks in steadytext_cache first (migration 009):
    // the answer's cache row is then handed over itself, instead of being written later besides a mailbox entry.
    const rows: Promise<CacheEntry>[] | undefined = r.wait && r.lo === null && r.cacheKey !== null && !db.single ? [] : undefined;
    const e = await this.evaluate(r, ctx, rows);
    // Made only where it goes as text (mailbox, large object): a cache row takes an embedding's floats.
    const text = () => ('answer' in e ? wrapAnswer(e.answer) : errorAnswer(e.error.sqlstate, e.error.message, e.error.hint));
    if (!r.wait) return; // the responder writes the cache row the retried transaction finds
    const row = rows?.length ? await rows[0].catch((err: unknown) => {
      ctx.log.warn({ err }, 'no cache row for an in-band answer: it goes through the mailbox');
      return undefined;
    }) : undefined;
    await this.handOver(r, text, wake, key, db, ctx, row, standing);
    // The next call of this backend finds the standing lock held. Not where another proxy could run the backend's
    // next statement (upstreamPooled), nor on one session, where no call waits.
    if (standing === undefined && r.nonce !== null && !this.upstreamPooled && !db.single) void db.standing?.take(r.backendPid, r.nonce);
  }

  /**
   * Puts `text` where the waiting function looks (mailbox or large object), committed, and wakes it (`standing`:
   * from the backend's standing lock, else from the request's `wake`). `row`: the answer's cache row, committed
   * instead of the mailbox entry when it is under the key the function looks up.
   */
  private async handOver(r: Signed, text: () => string, wake: Promise<pg.Client | null> | null, key: number, db: Database, ctx: SessionContext, row?: CacheEntry, standing?: StandingWakes): Promise<void> {
    const entry = () => ({ topic: `inband:${r.id}`, answer: text() });
    // Another key (the function's model identity not registered yet, or changed): stored later, as on every path.
    const cached = row !== undefined && entryKey(row) === r.cacheKey ? row : undefined;
    if (row !== undefined && cached === undefined) db.writeLater('cache write', () => db.store([row]));
    try {
      const holder = await wake;
      // (A standing lock let go meanwhile, the least recently used of too many, woke the function: it polls.)
      const commitThenWake = standing !== undefined && standing.holds(r.backendPid, r.nonce!)
        ? (put: Statement) => standing.commitThenWake(r.backendPid, put)
        : holder ? (put: Statement) => db.commitThenWake(holder, key, put) : undefined;
      if (commitThenWake) {
        // One round trip: the answer committed, then the lock the function waits on let go. A cache row the
        // asking client's own open block holds is given up on at once (the listener's lock_timeout, databases.ts),
        // and the mailbox answers (below).
        const put = cached !== undefined
          ? cacheRowQuery(db.schema, cached)
          : r.lo === null
            ? mailboxQuery(db.schema, r.backendPid, [entry()])
            : { text: LO_PUT(db.schema), values: [r.lo, text()] };
        await commitThenWake(put).catch(async (err: unknown) => {
          if (cached === undefined) throw err;
          // The function, woken without it, polls: the mailbox still answers it.
          ctx.log.warn({ err, id: r.id }, 'could not hand an in-band answer over as a cache row; it goes through the mailbox');
          await postMailbox(db.pool, db.schema, r.backendPid, [entry()]);
        });
      } else if (cached !== undefined) {
        // Committed before this resolves: the function's next poll sees it.
        await db.store([cached]);
      } else if (r.lo === null) {
        await postMailbox(db.pool, db.schema, r.backendPid, [entry()]);
      } else {
        await db.pool.query(LO_PUT(db.schema), [r.lo, text()]);
      }
    } catch (err) {
      ctx.log.warn({ err, id: r.id }, 'could not hand an in-band answer over; the function will time out');
    }
    this.sweep(db, ctx);
  }

  /**
   * The second miss of one exchange (a statement that misses row after row: an UPDATE through a wrapper, a
   * trigger): rather than a round trip per row, the statement is stopped now, before any of its answer reached
   * the client (the function raises the 40001 posted here, which the session withholds), run once inside a
   * rolled-back transaction with steadytext.gather on to learn every call it makes, those are computed
   * together, and it runs again finding them in steadytext_cache. False: answer this miss as usual.
   */
  private stopToGather(r: Signed, ctx: SessionContext): boolean {
    const exchange = ctx.exchange;
    const second = ctx.data.inbandExchange === exchange;
    ctx.data.inbandExchange = exchange;
    if (!second || !this.armRerun(r, ctx)) return false;
    const db = this.databases.get(ctx.database);
    const marker = rerunMarker(r);
    const key = wakeKey(r.id);
    const stop = errorAnswer(
      '40001',
      `${r.fn}: the statement was stopped to be run again with its steadytext calls answered together (${marker})`,
      'The pg-steadytext proxy runs it again by itself; if this reaches you, run the statement again.',
    );
    const standing = standingOf(r, db);
    void this.handOver(r, () => stop, standing ? null : db.holdWake(key), key, db, ctx, undefined, standing);
    return true;
  }

  /** Asks the session to run the current exchange again once it ends in the 40001 naming `r`. */
  private armRerun(r: Signed, ctx: SessionContext): boolean {
    const db = this.databases.get(ctx.database);
    const marker = rerunMarker(r);
    return ctx.rerun((query, fenced) => (rerunnable(query, ctx) ? (error) => this.gatherThenRerun(query, fenced, error, marker, r, db, ctx) : null));
  }

  /**
   * The statement stopped with our 40001: gathers its calls in a dry run, computes them, and says to run it
   * again. Inside a block whose snapshot cannot see answers committed now, they are handed over in the
   * session too (migration 007).
   */
  private async gatherThenRerun(query: Buffer, fenced: boolean, error: Buffer, marker: string, first: Signed, db: Database, ctx: SessionContext): Promise<boolean> {
    const f = readErrorFields(error);
    if (f.C !== '40001' || !f.M?.includes(marker) || db.secret === undefined) return false;
    // One session: status, model information and the daemon actions are no cache rows, and their function cannot
    // wait. Their answer (computed, or acted, once) goes where the function looks first, the mailbox topic the
    // rewrite path posts: outside a block before the dry run, so that it gathers past them; inside one after it,
    // once it has rolled the failed block back to the fence.
    const managed = db.single ? await this.manage(first, ctx) : null;
    if (managed !== null && !fenced) await postMailbox(db.via(ctx), db.schema, first.backendPid, [managed]);
    // Behind a transaction pooler the dry run may run on another backend than the statement did. Its calls are
    // computed as they come in, and (but on a one-session database, whose one connection runs the dry run)
    // stored batch by batch as they are answered, rather than each step waiting for the one before it.
    const { abort, release } = following(ctx.signal);
    const queue = new GatherQueue();
    const given = new Map<string, string>();
    let givenBytes = 0;
    let snapshots = false;
    const rows: Promise<CacheEntry>[] = [];
    const stores: Promise<void>[] = [];
    let storedUpTo = 0;
    const storeFrom = (end: number) => {
      const batch = rows.slice(storedUpTo, end);
      storedUpTo = end;
      // A failed call is not cached: the run again misses it and asks for it on its own (and gets the error).
      stores.push(Promise.allSettled(batch).then((r) => db.store(r.flatMap((x) => (x.status === 'fulfilled' ? [x.value] : [])), db.via(ctx)))
        .catch((err: unknown) => ctx.log.warn({ err }, 'could not store gathered answers; the run again asks for them one by one')));
    };
    const worker = async () => {
      for (let g = await queue.next(); g !== undefined && !abort.signal.aborted; g = await queue.next()) {
        const a = await this.responder.respond(g.payload, { pid: g.backendPid, abort, via: 'inband', collect: rows }).catch(() => undefined);
        snapshots ||= g.snapshot;
        if (fenced && a !== undefined && g.answerKey !== null && givenBytes < MAX_GIVEN_BYTES && !given.has(g.answerKey)) {
          const text = wrapAnswer(a.answer);
          given.set(g.answerKey, text);
          givenBytes += text.length;
        }
        if (!db.single && rows.length - storedUpTo >= STORE_BATCH) storeFrom(rows.length);
      }
    };
    let gathered: number;
    let finished = false;
    try {
      const working = Promise.all(Array.from({ length: GATHER_CONCURRENCY }, worker));
      gathered = await dryRun(query, fenced, this.upstreamPooled ? null : first.backendPid, db.secret, ctx, (g) => queue.push(g));
      queue.end();
      if (managed !== null && fenced) await postMailbox(db.via(ctx), db.schema, first.backendPid, [managed]);
      // Answers the stopped attempt took were put back by its rollback; nothing of this backend's waits now.
      // Rows the client's block took before the fence stay locked until it ends: skipped, never waited on.
      await db.via(ctx).query(
        deleteSkipLocked(db.schema, 'steadytext_mailbox', `backend_pid OPERATOR(pg_catalog.=) $1::pg_catalog.int4 AND topic OPERATOR(pg_catalog.~~) 'inband:%'`),
        [first.backendPid],
      ).catch((err: unknown) => ctx.log.warn({ err }, 'could not clear in-band answers of a stopped statement'));
      await working;
      // The cache rows the run again reads, committed, in multi-row INSERTs rather than one per call.
      storeFrom(rows.length);
      await Promise.all(stores);
      // (Not on a one-session database, where the service connection waits for this client's block to end.)
      if (!db.single) await this.responder.flush();
      finished = true;
    } finally {
      queue.end();
      // A failure on the way (the mailbox post): what is still computing for the run again stops.
      if (!finished) abort.abort();
      release();
    }
    // Answers are handed over in the session only where the run again's snapshot cannot see committed ones.
    if (!snapshots) given.clear();
    if (ctx.signal.aborted) return false;
    // Sent before the statement runs again, in the same transaction (after the dry run's ROLLBACK TO the fence).
    // Answered before the run again goes: a ReadyForQuery after it would end the session's wait for the rerun's own
    // RowDescription (which the client already has from the first attempt) and let that through twice.
    if (given.size > 0) await auxQuery(ctx, giveInSession(given, db.secret));
    ctx.log.debug({ gathered }, 'in-band calls gathered in a dry run; the statement runs again');
    return true;
  }

  /** The mailbox entry answering a management function's request (its topic, as the rewrite path posts it), else null. */
  private async manage(r: Signed, ctx: SessionContext): Promise<MailboxEntry | null> {
    return isManagement(r.fn) ? { topic: managementTopic(r.fn), ...await this.evaluate(r, ctx) } : null;
  }

  /** The responder's answer to a request, or its failure as the SQL function raises it; stops when the session does. */
  private async evaluate(r: Signed, ctx: SessionContext, collect?: Promise<CacheEntry>[]): Promise<Evaluated> {
    const { abort, release } = following(ctx.signal);
    try {
      return await this.responder.respond(r.payload, { pid: r.backendPid, abort, via: 'inband', collect });
    } catch (e) {
      const w = e instanceof WireError ? e : new WireError('XX000', String((e as Error)?.message ?? e));
      return { error: { sqlstate: w.code, message: w.message, hint: w.hint ?? '' } };
    } finally {
      release();
    }
  }

  private lastSweep = new WeakMap<Database, number>();

  /** Now and then: large objects whose reader never took them (its transaction rolled back, say), standing locks of ended backends. */
  private sweep(db: Database, ctx: SessionContext): void {
    const now = Date.now();
    if (now - (this.lastSweep.get(db) ?? 0) < SWEEP_EVERY_MS) return;
    this.lastSweep.set(db, now);
    db.pool.query(`SELECT ${quoteIdent(db.schema)}._steadytext_inband_sweep($1::pg_catalog.interval)`, [SWEEP_AGE])
      .catch((err: unknown) => ctx.log.warn({ err }, 'could not sweep in-band large objects'));
    db.standing?.sweep(db.pool).catch((err: unknown) => ctx.log.warn({ err }, 'could not look for ended backends\' standing wake-up locks'));
  }
}

/** The requests a dry run gathers, taken by the workers that compute them while it still runs. */
class GatherQueue {
  private readonly items: Signed[] = [];
  private head = 0;
  private ended = false;
  private waiting: (() => void)[] = [];

  push(g: Signed): void {
    this.items.push(g);
    this.waiting.shift()?.();
  }

  end(): void {
    this.ended = true;
    for (const w of this.waiting.splice(0)) w();
  }

  /** The next request, or undefined once the dry run ended and none is left. */
  async next(): Promise<Signed | undefined> {
    while (this.head === this.items.length && !this.ended) await new Promise<void>((r) => this.waiting.push(r));
    return this.head < this.items.length ? this.items[this.head++] : undefined;
  }
}

/** An AbortController (what the responder takes) that the session's signal aborts too; release() unhooks it. */
function following(signal: AbortSignal): { abort: AbortController; release: () => void } {
  const abort = new AbortController();
  // Every call of a gathered statement listens to it: as many as the statement had misses, not a leak.
  setMaxListeners(0, abort.signal);
  const stop = () => abort.abort(signal.reason);
  if (signal.aborted) stop();
  else signal.addEventListener('abort', stop, { once: true });
  return { abort, release: () => signal.removeEventListener('abort', stop) };
}

/**
 * The backend's standing lock (migration 010) a waiting function blocks on, when it found it held and it is
 * this proxy's; else the function blocks on one taken for the request as it is accepted (migration 006).
 */
function standingOf(r: Signed, db: Database): StandingWakes | undefined {
  return r.wait && r.armed && r.nonce !== null && db.standing?.holds(r.backendPid, r.nonce) ? db.standing : undefined;
}

/** Writes an answer into the large object the function of a read-write REPEATABLE READ or SERIALIZABLE block reads. */
const LO_PUT = (schema: string) => `SELECT ${quoteIdent(schema)}._steadytext_inband_lo_put($1::pg_catalog.oid, $2::pg_catalog.text)`;

/** Request ids remembered against replay (upstreamPooled); a replay after this many others is taken again. */
const MAX_TAKEN_IDS = 100_000;

/** Most bytes of answers one rerun hands over in the session; the rest are asked for one by one. */
const MAX_GIVEN_BYTES = 32 * 1024 * 1024;

/**
 * The statement that hands `answers` (by request key) over in the session until the transaction ends: one
 * transaction-local setting per first two hex digits of the key, a JSON object of key → HMAC + answer.
 */
function giveInSession(answers: ReadonlyMap<string, string>, secret: string): string {
  const slots = new Map<string, Record<string, string>>();
  for (const [key, text] of answers) {
    const mac = createHmac('sha256', Buffer.from(secret, 'utf8')).update(key + text, 'utf8').digest('hex');
    const name = `steadytext.answers_${key.slice(0, 2)}`;
    let slot = slots.get(name);
    if (slot === undefined) slots.set(name, (slot = {}));
    slot[key] = mac + text;
  }
  const settings: Record<string, string> = {};
  for (const [name, slot] of slots) settings[name] = JSON.stringify(slot);
  return `SELECT pg_catalog.count(pg_catalog.set_config(t.key, t.value, true)) FROM pg_catalog.jsonb_each_text(${pg.escapeLiteral(JSON.stringify(settings))}::pg_catalog.jsonb) AS t`;
}

/** Requests computed at once for a gathered statement (the engine's queue holds the rest fairly). */
const GATHER_CONCURRENCY = 8;
/** Gathered answers stored in one steadytext_cache write while the rest are computed. */
const STORE_BATCH = 128;
/** Requests one dry run gathers at most, and their total size; the run again asks for the rest one by one. */
const MAX_GATHERED = 10_000;
const MAX_GATHERED_BYTES = 64 * 1024 * 1024;

/** Statement kinds a dry run may run and roll back, and the session may run again (no transaction control, no PREPARE; EXPLAIN ANALYZE runs its statement). */
const RERUNNABLE = new Set(['select', 'insert', 'update', 'delete', 'call', 'do', 'execute', 'explain']);

/** The Query (or the exchange's Parse) holds only statements that may run in a rolled-back dry run and then again. */
function rerunnable(query: Buffer, ctx: SessionContext): boolean {
  let text = query.subarray(5, query.length - 1);
  if (query[0] === Fe.Parse) {
    const start = query.indexOf(0, 5) + 1; // after the statement's name
    text = query.subarray(start, query.indexOf(0, start));
  }
  const r = findCalls(text, { standardConformingStrings: ctx.serverParams.get('standard_conforming_strings') !== 'off' });
  return !isParseFailure(r) && r.length > 0 && r.every((st) => RERUNNABLE.has(st.kind));
}

/**
 * Runs `query` inside a transaction that is rolled back (inside the client's block: back to the fence the
 * stopped attempt left, which stays), with steadytext.gather on, on the session's own connection, and returns
 * the requests its calls made (signed by the same backend). Nothing of it reaches the client; an error in it
 * only ends the gathering early.
 */
function dryRun(query: Buffer, fenced: boolean, backendPid: number | null, secret: string, ctx: SessionContext, onGathered: (g: Signed) => void): Promise<number> {
  return new Promise((resolve) => {
    let gathered = 0;
    let bytes = 0;
    const collect: ResponseHandler = {
      onMessage(m) {
        if (m[0] !== Be.NoticeResponse || gathered >= MAX_GATHERED || bytes >= MAX_GATHERED_BYTES) return null;
        bytes += m.length;
        const f = readErrorFields(m);
        if (f.M !== INBAND_MARKER || f.D === undefined || f.H === undefined) return null;
        const g = verify(f.D, f.H, secret, ctx.database, backendPid);
        if (g !== null && g.gather) {
          gathered++;
          onGathered(g);
        }
        return null;
      },
    };
    const [begin, end] = fenced
      ? ["ROLLBACK TO SAVEPOINT steadytext_fence; SET LOCAL steadytext.gather = 'on'", 'ROLLBACK TO SAVEPOINT steadytext_fence']
      : ["BEGIN; SET LOCAL steadytext.gather = 'on'", 'ROLLBACK'];
    ctx.send({ bytes: queryMessage(begin), responses: collect });
    ctx.send({ bytes: query, responses: collect });
    ctx.send({
      bytes: queryMessage(end),
      responses: { onMessage: () => null, onEnd: () => resolve(gathered) },
    });
  });
}

/** What the 40001 that stops a statement for request `r` says, the proxy's or the function's own (migration 007). */
function rerunMarker(r: Signed): string {
  return `steadytext:rerun:${r.id}`;
}

/** The advisory lock key of a request: its id's first 32 bits, as the SQL function computes it. */
export function wakeKey(id: string): number {
  return Number.parseInt(id.slice(0, 8), 16) | 0;
}

/**
 * The request if `mac` is its signature under `secret` and it comes from `database` and from the backend that
 * sent the notice (a signed request replayed on another connection is not answered); null otherwise.
 * `backendPid`: the pid the request must name (undefined: none known, nothing verifies); null: any (upstreamPooled).
 */
export function verify(payload: string, mac: string, secret: string, database: string, backendPid: number | undefined | null): Signed | null {
  if (!/^[0-9a-f]{64}$/.test(mac)) return null;
  const want = createHmac('sha256', Buffer.from(secret, 'utf8')).update(payload, 'utf8').digest();
  if (!timingSafeEqual(want, Buffer.from(mac, 'hex'))) return null;
  let j: unknown;
  try {
    j = JSON.parse(payload);
  } catch {
    return null;
  }
  const o = j as {
    id?: unknown; backend_pid?: unknown; database?: unknown; lo?: unknown; wait?: unknown; gather?: unknown; function?: unknown;
    stops?: unknown; answer_key?: unknown; snapshot?: unknown; user?: unknown; cache_key?: unknown; nonce?: unknown; armed?: unknown;
  };
  if (typeof o.id !== 'string' || !/^[0-9a-f]{32}$/.test(o.id)) return null;
  if (!Number.isInteger(o.backend_pid) || (backendPid !== null && o.backend_pid !== backendPid) || o.database !== database) return null;
  const lo = o.lo === null || o.lo === undefined ? null : Number(o.lo);
  if (lo !== null && !(Number.isInteger(lo) && lo > 0 && lo < 2 ** 32)) return null;
  return {
    payload, id: o.id, backendPid: o.backend_pid as number, lo, wait: o.wait !== false, gather: o.gather === true,
    fn: typeof o.function === 'string' ? o.function : 'steadytext',
    stops: o.stops === true,
    answerKey: typeof o.answer_key === 'string' && /^[0-9a-f]{32}$/.test(o.answer_key) ? o.answer_key : null,
    snapshot: o.snapshot === true,
    user: typeof o.user === 'string' ? o.user : null,
    cacheKey: typeof o.cache_key === 'string' && /^[0-9a-f]{64}$/.test(o.cache_key) ? o.cache_key : null,
    nonce: typeof o.nonce === 'string' && /^[0-9a-f]{32}$/.test(o.nonce) ? o.nonce : null,
    armed: o.armed === true,
  };
}
