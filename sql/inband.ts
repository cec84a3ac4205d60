// The in-band callback transport, proxy side (the SQL side is sql/migrations/005_inband.sql). A steadytext
// function that missed the cache inside a statement the proxy could not read ahead (PL/pgSQL, a trigger, a
// view) raises an INFO notice `steadytext:inband` whose detail is the same JSON request the dblink transport
// sends and whose hint is an HMAC-SHA256 of it under the database's daemon secret. The notice reaches the proxy
// at once, while the statement runs. Here it is checked (signature, database), kept from the client, and
// answered: the request is evaluated like a daemon request (daemon/responder.ts) and its answer, or the error
// to raise, is committed to steadytext_mailbox under the request's id for the requesting backend, where the
// function picks it up with a fresh snapshot. Meanwhile an advisory lock keyed by the request is held, which
// the function waits on, so it looks the moment the answer is committed rather than at its next poll.
//
// A notice that does not verify (another role raising the same text, a client replaying one) is the
// client's own: it goes through unchanged and nothing is computed or stored for it.
import { createHmac, timingSafeEqual } from 'node:crypto';
import pg from 'pg';
import type { SessionContext } from '../proxy/interceptor.js';
import { Be, readErrorFields } from '../proxy/protocol.js';
import type { DatabaseRegistry } from './databases.js';
import { WireError } from './errors.js';
import { errorAnswer, wrapAnswer } from './answers.js';
import type { Database } from './databases.js';
import { mailboxStatement, postMailbox } from './handover.js';
import { quoteIdent } from './install.js';
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
}

/** How often left-behind large objects are looked for, and how old they must be to go. */
const SWEEP_EVERY_MS = 60_000;
const SWEEP_AGE = '10 minutes';

export class InbandCallbacks {
  constructor(
    private readonly responder: Responder,
    private readonly databases: DatabaseRegistry,
  ) {}

  /** A server notice naming steadytext: true when it is an in-band request of ours (then answered, and hidden). */
  notice(msg: Buffer, ctx: SessionContext, backendPid: number | undefined): boolean {
    if (msg[0] !== Be.NoticeResponse) return false;
    const f = readErrorFields(msg);
    if (f.M !== INBAND_MARKER || f.D === undefined || f.H === undefined) return false;
    const db = this.databases.get(ctx.database);
    if (db.secret === undefined) {
      // First contact with this database is a callback (a trigger, say): read its secret, then check.
      void db.ready().then(
        () => this.accept(db.secret !== undefined ? verify(f.D, f.H, db.secret, ctx.database, backendPid) : null, ctx),
        (err: unknown) => ctx.log.warn({ err }, 'steadytext objects not ready; an in-band request goes unanswered'),
      );
      return true;
    }
    return this.accept(verify(f.D, f.H, db.secret, ctx.database, backendPid), ctx);
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
    ctx.data.inbandInFlight = inFlight + 1;
    void this.answer(signed, ctx).finally(() => {
      ctx.data.inbandInFlight = ((ctx.data.inbandInFlight as number) ?? 1) - 1;
    });
    return true;
  }

  private async answer(r: Signed, ctx: SessionContext): Promise<void> {
    const db = this.databases.get(ctx.database);
    const abort = new AbortController();
    const stop = () => abort.abort(ctx.signal.reason);
    if (ctx.signal.aborted) stop();
    else ctx.signal.addEventListener('abort', stop, { once: true });
    // Taken now, while the answer is computed: the function blocks on it instead of polling (migration 006).
    const key = wakeKey(r.id);
    const wake = r.wait ? db.holdWake(key) : null;
    let text: string;
    try {
      text = wrapAnswer(await this.responder.respond(r.payload, { pid: r.backendPid, abort, via: 'inband' }));
    } catch (e) {
      const w = e instanceof WireError ? e : new WireError('XX000', String((e as Error)?.message ?? e));
      text = errorAnswer(w.code, w.message, w.hint ?? '');
    } finally {
      ctx.signal.removeEventListener('abort', stop);
    }
    if (!r.wait) return; // the responder writes the cache row the retried transaction finds
    const entry = { topic: `inband:${r.id}`, answer: text };
    try {
      const holder = await wake;
      if (holder) {
        // One round trip: the answer committed, then the lock the function waits on let go.
        const put = r.lo === null
          ? mailboxStatement(db.schema, r.backendPid, entry)
          : `SELECT ${quoteIdent(db.schema)}._steadytext_inband_lo_put(${r.lo}::pg_catalog.oid, ${pg.escapeLiteral(text)}::pg_catalog.text)`;
        await db.commitThenWake(holder, key, put);
      } else if (r.lo === null) {
        // Committed before this resolves: the function's next poll sees it.
        await postMailbox(db.pool, db.schema, r.backendPid, [entry]);
      } else {
        await db.pool.query(`SELECT ${quoteIdent(db.schema)}._steadytext_inband_lo_put($1::pg_catalog.oid, $2::pg_catalog.text)`, [r.lo, text]);
      }
    } catch (err) {
      ctx.log.warn({ err, id: r.id }, 'could not hand an in-band answer over; the function will time out');
    }
    this.sweep(db, ctx);
  }

  private lastSweep = new WeakMap<Database, number>();

  /** Now and then: large objects whose reader never took them (its transaction rolled back, say). */
  private sweep(db: Database, ctx: SessionContext): void {
    const now = Date.now();
    if (now - (this.lastSweep.get(db) ?? 0) < SWEEP_EVERY_MS) return;
    this.lastSweep.set(db, now);
    db.pool.query(`SELECT ${quoteIdent(db.schema)}._steadytext_inband_sweep($1::pg_catalog.interval)`, [SWEEP_AGE])
      .catch((err: unknown) => ctx.log.warn({ err }, 'could not sweep in-band large objects'));
  }
}

/** The advisory lock key of a request: its id's first 32 bits, as the SQL function computes it. */
export function wakeKey(id: string): number {
  return Number.parseInt(id.slice(0, 8), 16) | 0;
}

/**
 * The request if `mac` is its signature under `secret` and it comes from `database` and from the backend that
 * sent the notice (a signed request replayed on another connection is not answered); null otherwise.
 */
export function verify(payload: string, mac: string, secret: string, database: string, backendPid: number | undefined): Signed | null {
  if (!/^[0-9a-f]{64}$/.test(mac)) return null;
  const want = createHmac('sha256', Buffer.from(secret, 'utf8')).update(payload, 'utf8').digest();
  if (!timingSafeEqual(want, Buffer.from(mac, 'hex'))) return null;
  let j: unknown;
  try {
    j = JSON.parse(payload);
  } catch {
    return null;
  }
  const o = j as { id?: unknown; backend_pid?: unknown; database?: unknown; lo?: unknown; wait?: unknown };
  if (typeof o.id !== 'string' || !/^[0-9a-f]{32}$/.test(o.id)) return null;
  if (!Number.isInteger(o.backend_pid) || o.backend_pid !== backendPid || o.database !== database) return null;
  const lo = o.lo === null || o.lo === undefined ? null : Number(o.lo);
  if (lo !== null && !(Number.isInteger(lo) && lo > 0 && lo < 2 ** 32)) return null;
  return { payload, id: o.id, backendPid: o.backend_pid as number, lo, wait: o.wait !== false };
}
