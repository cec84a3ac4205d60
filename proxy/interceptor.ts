// THE INTERCEPTION SEAM. Every Query ('Q') and Parse ('P') a client sends passes through Seam.offer().
// A byte-level, ASCII case-insensitive search for `steadytext` (or `U&"`, which can spell any identifier
// with escapes) decides: a message without it goes upstream untouched and costs one scan of its bytes.
// A message with it is handed to the Interceptor, which may answer later (a Promise) and may replace the
// message by other frontend messages. Bind/Describe/Execute/Close reach the interceptor only when they
// name a statement or portal it asked to watch (e.g. the statement it rewrote at Parse).
//
// Ordering: the session stops reading the client while a hook is pending, so later messages (pipelined
// or not) wait behind it, and the socket's own flow control holds the client back; responses to earlier
// messages keep flowing to the client meanwhile.
//
// Responses: a replacement may carry a ResponseHandler. The session's RequestTracker (tracker.ts) knows
// which backend messages answer which frontend message; it shows the handler exactly the messages that
// answer the message(s) it was attached to, and the handler may pass, rewrite or swallow each of them.
// Requests without a handler cost nothing beyond the tracker's bookkeeping: their responses are
// forwarded as raw chunks.
//
// Auxiliary statements: while its hook is pending, an interceptor may send requests of its own with
// ctx.send() and swallow (or pass on) their answers with a handler, e.g. the prefetch path's derived
// SELECT. They run in the client's own session, so with its privileges and snapshot; mind txStatus ('E':
// they would fail; 'T': fence anything that may fail with a savepoint).
//
// Failure: a hook that throws or rejects, or returns bytes that are not whole frontend messages, is
// logged at warn and the original message is forwarded unchanged (the database still has the real SQL
// functions, so the statement keeps its meaning).
import type { Logger } from 'pino';
import { Fe, forEachMessage, readCString, type TxStatus } from './protocol.js';

/** What a session tells its interceptor. Fields reflect the session at the time of the call. */
export interface SessionContext {
  /** Proxy-wide session number (also in every log line of the session). */
  readonly id: number;
  readonly user: string;
  readonly database: string;
  readonly applicationName: string | undefined;
  /** "address:port" of the client. */
  readonly clientAddress: string;
  /** Startup parameters the client sent (user, database, options, application_name, ...). */
  readonly startupParams: ReadonlyMap<string, string>;
  /** ParameterStatus values the server reported (server_version, client_encoding, standard_conforming_strings, ...). */
  readonly serverParams: ReadonlyMap<string, string>;
  /** Transaction status from the latest ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' in a failed one. */
  readonly txStatus: TxStatus;
  /**
   * Statement and portal names whose Bind / Describe / Execute / Close must reach the interceptor. The
   * interceptor adds names; the seam removes a statement when the client closes it or parses another
   * statement under its name without a rewrite, and a portal when it is closed, re-bound or when the
   * transaction ends (ReadyForQuery 'I').
   */
  readonly watched: { readonly statements: Set<string>; readonly portals: Set<string> };
  /** The session's logger (session id, client address, user, database). */
  readonly log: Logger;
  /** The interceptor's own per-session state. */
  data: Record<string, unknown>;
  /**
   * Aborted when the client cancels (CancelRequest) while a hook is pending, or when the session ends:
   * work a hook started for the client (e.g. a generation) should stop then. Read it when the work starts.
   */
  signal: AbortSignal;
  /**
   * While a hook is pending: sends frontend messages upstream at once, ahead of the hook's own answer,
   * with a handler that sees (and usually swallows) their responses. This is how an interceptor runs an
   * auxiliary query on the session's own connection, with the client's own privileges.
   */
  send(out: Outbound): void;
  /**
   * Set by the interceptor (default false): the session keeps each Query that begins an exchange outside a
   * transaction block, and each extended-protocol exchange of the unnamed statement (Parse, Bind, Describes,
   * one Execute, Sync) read in one piece (proxy/rerun-exchange.ts), so that rerun() can send it again. A view
   * of the bytes read, copied only when a rerun is armed.
   */
  keepQueries: boolean;
  /**
   * Set by the interceptor (default null): which Queries inside a transaction block the session fences, so
   * that rerun() can run them again there too. A fenced Query goes upstream between `SAVEPOINT
   * steadytext_fence` and `RELEASE SAVEPOINT steadytext_fence`, whose answers the client never sees; the
   * predicate must refuse transaction control. At most FENCES_PER_TRANSACTION per transaction: each writing
   * one costs the transaction a subtransaction id, and past 64 PostgreSQL's snapshots overflow.
   */
  fenceable: ((query: Buffer) => boolean) | null;
  /**
   * Set by the interceptor with fenceable (default false): only blocks that may be read-only are offered to
   * fenceable: the session's default_transaction_read_only is on, or the Query that began the block, or a later
   * one of it, mentions ONLY (a byte check; blockOpener holds it). The native relay keeps every other block.
   */
  fenceNarrow: boolean;
  /**
   * With fenceNarrow: the Query that began the current transaction block, or the first later one of it that
   * mentions ONLY (a SET TRANSACTION READ ONLY), a copy; null when none seen mentions ONLY.
   */
  readonly blockOpener: Buffer | null;
  /** Queries kept so far (keepQueries): tells one exchange from the next. */
  readonly exchange: number;
  /**
   * From notice(): asks to run the client's current exchange again rather than answer the client with this
   * attempt. Possible only when the exchange is kept (keepQueries), nothing of its answer has reached the client
   * (but a Query's RowDescription, an exchange's answers before its Execute, which the rerun's do not repeat),
   * nothing was sent after it, and it is not itself a rerun; `plan` sees the Query (or the exchange), and
   * whether it is fenced (inside a transaction block, SAVEPOINT steadytext_fence just before it), and may decline
   * (null). On true, the session withholds the ErrorResponse that ends this attempt (the interceptor sees to it
   * that it ends in one) and its ReadyForQuery, reads nothing more from the client, and calls what `plan`
   * returned with that error, as a pending hook (ctx.send works, ctx.signal aborts on cancel): on true the
   * Query goes upstream again and its answer is the client's; on false the withheld error and ReadyForQuery
   * go to the client after all.
   */
  rerun(plan: (query: Buffer, fenced: boolean) => ((error: Buffer) => Promise<boolean>) | null): boolean;
}

/** A frontend message handed to the interceptor. */
export interface InterceptedMessage {
  /** Type byte as a character: 'Q' | 'P' | 'B' | 'D' | 'E' | 'C'. */
  readonly type: string;
  /** The whole message (type byte, length, body) exactly as the client sent it. Read-only; stays valid. */
  readonly bytes: Buffer;
  /** 'match': its text passed the prefilter (Q, P). 'watched': it names a watched statement or portal. */
  readonly reason: 'match' | 'watched';
}

/**
 * Sees the backend messages answering the frontend messages it was attached to. Synchronous: it runs on
 * the response path. For each frontend message of the attached bytes, onEnd is called once.
 */
export interface ResponseHandler {
  /**
   * One backend message (whole: type byte, length, body; stays valid after the call). `request` is the
   * type byte of the frontend message it answers. Return `msg` to forward it, other bytes (zero or more whole backend messages) to
   * forward instead, or null to forward nothing. Asynchronous messages (ParameterStatus, Notification)
   * never come here; NoticeResponse does when it arrives while the request is being answered.
   */
  onMessage(msg: Buffer, request: number): Buffer | Buffer[] | null;
  /**
   * The request is answered ('done'), was skipped by the server because an earlier message of the same
   * extended-protocol batch failed ('skipped'), or the session ended first ('closed').
   */
  onEnd?(request: number, how: 'done' | 'skipped' | 'closed'): void;
}

/** Frontend messages with a handler for their answers. */
export interface Outbound {
  bytes: Buffer;
  responses: ResponseHandler;
}

/** The interceptor's answer: what goes upstream instead of the message, in order ([] drops it). */
export interface Rewrite {
  /** Each entry holds one or more whole frontend messages; an Outbound also receives their answers. */
  send: (Buffer | Outbound)[];
}

export interface Interceptor {
  /** Once per session, when authentication succeeded (first ReadyForQuery). */
  sessionStart?(ctx: SessionContext): void;
  /**
   * A message that passed the prefilter or names a watched statement/portal. Return undefined to forward
   * it unchanged, or a Rewrite; either may come as a Promise (the session waits, in order).
   */
  intercept(msg: InterceptedMessage, ctx: SessionContext): Rewrite | undefined | Promise<Rewrite | undefined>;
  /**
   * A NoticeResponse from the server that names steadytext, while the session's statement runs (the SQL
   * functions' in-band callback asks this way). Synchronous, on the response path: start any work and
   * return at once. True: the notice is the interceptor's and never reaches the client. `backendPid`: the
   * server backend that sent it (the connection the statement runs on, pooled or not), when known.
   */
  notice?(msg: Buffer, ctx: SessionContext, backendPid: number | undefined): boolean;
  /** Once per session, when it ends (also after a failed authentication, if sessionStart ran). */
  sessionEnd?(ctx: SessionContext): void;
}

/** A replacement validated and flattened: bytes to send, each with its optional handler. */
export type Outgoing = { bytes: Buffer; handler: ResponseHandler | undefined }[];

// ---- prefilter ---------------------------------------------------------------------------------------

const STEADYTEXT = Buffer.from('steadytext');

/**
 * True if buf[start, end) contains `steadytext` in any ASCII letter case, or `U&"` / `u&"`. Multibyte
 * UTF-8 never contains ASCII bytes, so no false negative; a false positive only costs a parse later.
 */
export function mentionsSteadytext(buf: Buffer, start: number, end: number): boolean {
  const last = end - STEADYTEXT.length;
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if ((c | 0x20) === 0x73 /* s */ && i <= last) {
      let j = 1;
      while (j < 10 && (buf[i + j] | 0x20) === STEADYTEXT[j]) j++;
      if (j === 10) return true;
    } else if (c === 0x26 /* & */ && i > start && (buf[i - 1] | 0x20) === 0x75 /* u */ && i + 1 < end && buf[i + 1] === 0x22) {
      return true;
    }
  }
  return false;
}

// ---- the seam, one per session -------------------------------------------------------------------------

export class Seam {
  constructor(
    private readonly interceptor: Interceptor,
    readonly ctx: SessionContext,
    /** Proxy-wide counters: messages handed to the interceptor, and those it replaced. */
    private readonly counts: { intercepted: number; rewritten: number },
  ) {}

  /** At the header of a client message: must the session see it whole? */
  wants(code: number): boolean {
    if (code === Fe.Query || code === Fe.Parse) return true;
    if (code === Fe.Bind || code === Fe.Describe || code === Fe.Execute || code === Fe.Close) {
      const w = this.ctx.watched;
      return w.statements.size > 0 || w.portals.size > 0;
    }
    return false;
  }

  /**
   * A whole client message that wants() asked for. Returns undefined to forward it unchanged, else the
   * replacement, or a Promise of either (which never rejects).
   */
  offer(msg: Buffer, code: number): Outgoing | undefined | Promise<Outgoing | undefined> {
    const w = this.ctx.watched;
    switch (code) {
      case Fe.Query:
        return mentionsSteadytext(msg, 5, msg.length) ? this.call(msg, 'Q', 'match') : undefined;
      case Fe.Parse:
        if (mentionsSteadytext(msg, 5, msg.length)) return this.call(msg, 'P', 'match');
        if (w.statements.size > 0) w.statements.delete(readCString(msg, 5)[0]);
        return undefined;
      case Fe.Bind: {
        const [portal, next] = readCString(msg, 5);
        w.portals.delete(portal);
        if (w.statements.size > 0 && w.statements.has(readCString(msg, next)[0])) return this.call(msg, 'B', 'watched');
        return undefined;
      }
      case Fe.Describe:
      case Fe.Close: {
        const set = msg[5] === 0x53 /* S */ ? w.statements : w.portals;
        const name = readCString(msg, 6)[0];
        if (!set.has(name)) return undefined;
        if (code === Fe.Close) set.delete(name);
        return this.call(msg, code === Fe.Close ? 'C' : 'D', 'watched');
      }
      case Fe.Execute:
        return w.portals.has(readCString(msg, 5)[0]) ? this.call(msg, 'E', 'watched') : undefined;
    }
    return undefined;
  }

  /** A server NoticeResponse: true when the interceptor took it (the client must not see it). */
  notice(msg: Buffer, backendPid: number | undefined): boolean {
    if (this.interceptor.notice === undefined || !mentionsSteadytext(msg, 5, msg.length)) return false;
    try {
      return this.interceptor.notice(msg, this.ctx, backendPid) === true;
    } catch (err) {
      this.ctx.log.warn({ err }, 'interceptor failed on a notice; forwarded unchanged');
      return false;
    }
  }

  /** ReadyForQuery: portals do not outlive their transaction. */
  ready(status: TxStatus): void {
    if (status === 'I' && this.ctx.watched.portals.size > 0) this.ctx.watched.portals.clear();
  }

  sessionStart(): void {
    try {
      this.interceptor.sessionStart?.(this.ctx);
    } catch (err) {
      this.ctx.log.warn({ err }, 'interceptor sessionStart failed');
    }
  }

  sessionEnd(): void {
    try {
      this.interceptor.sessionEnd?.(this.ctx);
    } catch (err) {
      this.ctx.log.warn({ err }, 'interceptor sessionEnd failed');
    }
  }

  private call(bytes: Buffer, type: string, reason: 'match' | 'watched'): Outgoing | undefined | Promise<Outgoing | undefined> {
    this.counts.intercepted++;
    let r: Rewrite | undefined | Promise<Rewrite | undefined>;
    try {
      r = this.interceptor.intercept({ type, bytes, reason }, this.ctx);
    } catch (err) {
      this.ctx.log.warn({ err, type }, 'interceptor failed; message forwarded unchanged');
      return undefined;
    }
    if (r !== null && typeof r === 'object' && typeof (r as Promise<unknown>).then === 'function') {
      return (r as Promise<Rewrite | undefined>).then(
        (v) => this.validate(v, type),
        (err: unknown) => {
          this.ctx.log.warn({ err, type }, 'interceptor failed; message forwarded unchanged');
          return undefined;
        },
      );
    }
    return this.validate(r as Rewrite | undefined, type);
  }

  private validate(r: Rewrite | undefined, type: string): Outgoing | undefined {
    if (r === undefined || r === null) return undefined;
    if (!Array.isArray(r.send)) {
      this.ctx.log.warn({ type }, 'interceptor returned no send list; original forwarded');
      return undefined;
    }
    const out: Outgoing = [];
    for (const item of r.send) {
      const bytes = Buffer.isBuffer(item) ? item : item?.bytes;
      const handler = Buffer.isBuffer(item) ? undefined : item?.responses;
      if (!Buffer.isBuffer(bytes) || !forEachMessage(bytes, noop)) {
        this.ctx.log.warn({ type }, 'interceptor returned bytes that are not whole frontend messages; original forwarded');
        return undefined;
      }
      out.push({ bytes, handler });
    }
    this.counts.rewritten++;
    return out;
  }
}

function noop(): void {}
