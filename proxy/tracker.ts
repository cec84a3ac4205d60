// The in-flight request FIFO of one session: for each frontend message sent upstream that the server
// answers, what answer is still due. The server answers strictly in order, so the head of the FIFO owns
// every backend message until its terminating one. It costs a byte push per request and a switch per
// response (with the framing, ~0.2 us per pgbench transaction against ~25 us of socket work), so it always
// runs rather than starting when an interceptor shows interest, which would miss requests already in
// flight. It tells when a session is idle (graceful shutdown, cancel on disconnect), and when an
// interceptor attached a ResponseHandler to a request, which messages that handler must see.
// Rules (PostgreSQL protocol, "Message Flow"):
//   Parse → ParseComplete; Bind → BindComplete; Close → CloseComplete;
//   Describe → [ParameterDescription] then RowDescription | NoData;
//   Execute → rows, then CommandComplete | EmptyQueryResponse | PortalSuspended (COPY sub-protocols inside);
//   Sync, Query, FunctionCall → ... ReadyForQuery;
//   an ErrorResponse ends an extended-protocol request, and the server skips everything up to the next Sync;
//   during COPY FROM STDIN the server ignores Sync and Flush until CopyDone/CopyFail.
import { Be, Fe } from './protocol.js';
import type { ResponseHandler } from './interceptor.js';

/** Marks a CopyDone/CopyFail in the FIFO: no answer of its own, it bounds the Syncs a copy-in ignores. */
const COPY_END = 0;
/**
 * A request answered by the proxy itself (the pooler's ParseComplete for a statement the server connection
 * already has): its bytes go to the client when it reaches the head, in order; an error ahead of it in the
 * same batch skips it, as the server would have skipped the real message.
 */
const LOCAL = 1;

export type EndHow = 'done' | 'skipped' | 'closed';

export class RequestTracker {
  private codes = new Uint8Array(256);
  private handlers: (ResponseHandler | undefined)[] = new Array(256);
  private head = 0;
  private count = 0;
  /** Entries with a handler: zero means no backend message needs to be seen whole on their account. */
  private withHandler = 0;
  /** The server is in copy-in mode and has consumed every Sync up to the client's CopyDone/CopyFail. */
  private syncsIgnored = false;
  /** Handler notifications deferred until the current backend message was shown to its handler. */
  private ends: [ResponseHandler, number, EndHow][] = [];
  private currentRequest = 0;
  /** Bytes of LOCAL entries, by FIFO slot. */
  private locals: (Buffer | undefined)[] = new Array(256);
  /** A Bind or Execute went upstream since the last Sync, Query or FunctionCall (its exchange has run something). */
  private exchangeRan = false;

  /** Requests still awaiting (part of) their answer. */
  get size(): number {
    return this.count;
  }

  /** The request whose answer the current backend message belongs to (valid after received()). */
  get request(): number {
    return this.currentRequest;
  }

  /**
   * Nothing of the client's current exchange ran yet: no Bind or Execute since the last Sync, Query or
   * FunctionCall (the pooler may run an exchange again from a Bind sent now, if the server refuses it).
   */
  get exchangeClean(): boolean {
    return !this.exchangeRan;
  }

  /** A frontend message went upstream. */
  sent(code: number, handler?: ResponseHandler): void {
    switch (code) {
      case Fe.Bind:
      case Fe.Execute:
        this.exchangeRan = true;
        this.syncsIgnored = false;
        this.push(code, handler);
        return;
      case Fe.Query:
      case Fe.FunctionCall:
        this.exchangeRan = false;
        this.syncsIgnored = false;
        this.push(code, handler);
        return;
      case Fe.Parse:
      case Fe.Describe:
      case Fe.Close:
        this.syncsIgnored = false; // anything else ends a copy-in (the server reports an error)
        this.push(code, handler);
        return;
      case Fe.Sync:
        this.exchangeRan = false;
        if (this.syncsIgnored) return handler?.onEnd?.(code, 'skipped');
        this.push(code, handler);
        return;
      case Fe.CopyDone:
      case Fe.CopyFail:
        if (this.syncsIgnored) this.syncsIgnored = false;
        else if (this.count > 0) this.push(COPY_END, undefined);
        return;
      default:
        // CopyData, Flush, Terminate, password messages: no answer of their own.
        if (handler) handler.onEnd?.(code, 'done');
    }
  }

  /**
   * An answer the proxy gives itself, in the place of a request. Returns true when nothing is in flight
   * ahead of it: the caller sends the bytes to the client now. Otherwise they wait for their turn
   * (takeLocal); `onSkipped` hears when an error ahead of it in the batch skips it.
   */
  sentLocal(bytes: Buffer, onSkipped?: ResponseHandler): boolean {
    if (this.count === 0) return true;
    this.push(LOCAL, onSkipped);
    this.locals[(this.head + this.count - 1) & (this.codes.length - 1)] = bytes;
    return false;
  }

  /** The head is a local answer now due (checked after received()). */
  get localDue(): boolean {
    return this.count > 0 && this.codes[this.head] === LOCAL;
  }

  /** The local answers now at the head, in order (after the message that made them due). */
  takeLocal(): Buffer[] {
    const out: Buffer[] = [];
    while (this.count > 0 && this.codes[this.head] === LOCAL) {
      out.push(this.locals[this.head]!);
      this.pop();
    }
    return out;
  }

  /**
   * A backend message with this type starts. Updates the FIFO and returns the handler that must see the
   * message (call finish() after it did), or undefined when nobody needs it.
   */
  received(code: number): ResponseHandler | undefined {
    if (this.count === 0) return undefined;
    // Truly asynchronous messages belong to no request.
    if (code === Be.ParameterStatus || code === Be.NotificationResponse) return undefined;
    const req = this.codes[this.head];
    let handler = this.withHandler > 0 ? this.handlers[this.head] : undefined;
    switch (code) {
      case Be.ReadyForQuery:
        handler = this.completeThroughSync();
        break;
      case Be.ErrorResponse:
        if (req !== Fe.Sync && req !== Fe.Query && req !== Fe.FunctionCall) this.failExtended();
        break;
      case Be.CopyInResponse:
      case Be.CopyBothResponse:
        this.copyIn();
        break;
      case Be.ParseComplete:
      case Be.BindComplete:
      case Be.CloseComplete:
      case Be.NoData:
        this.complete();
        break;
      case Be.RowDescription:
        if (req === Fe.Describe) this.complete();
        break;
      case Be.CommandComplete:
      case Be.EmptyQueryResponse:
      case Be.PortalSuspended:
        if (req === Fe.Execute) this.complete();
        break;
    }
    if (code !== Be.ReadyForQuery) this.currentRequest = req;
    if (handler === undefined) this.flushEnds();
    return handler;
  }

  /** After the handler returned from seeing the current message. */
  finish(): void {
    this.flushEnds();
  }

  /**
   * Online restart (takeover.ts): the requests still awaiting answers, oldest first, when every one of them is
   * the client's own (no handler, no answer of the proxy's); null otherwise.
   */
  handover(): { codes: number[]; syncsIgnored: boolean } | null {
    if (this.withHandler > 0 || this.ends.length > 0) return null;
    const codes: number[] = [];
    for (let k = 0; k < this.count; k++) {
      const code = this.codes[(this.head + k) & (this.codes.length - 1)];
      if (code === LOCAL) return null;
      codes.push(code);
    }
    return { codes, syncsIgnored: this.syncsIgnored };
  }

  /** Online restart: the requests a session of the replaced process had in flight (handover()), into an empty FIFO. */
  adopt(h: { codes: number[]; syncsIgnored: boolean }): void {
    if (this.count > 0) throw new Error('adopt into a tracker in use');
    for (const code of h.codes) if (code !== LOCAL) this.push(code, undefined);
    this.syncsIgnored = h.syncsIgnored;
  }

  /** Session over: every handler still waiting hears 'closed'. */
  close(): void {
    while (this.count > 0) {
      const h = this.pop();
      if (h) this.ends.push([h, this.currentRequest, 'closed']);
    }
    this.flushEnds();
  }

  private push(code: number, handler: ResponseHandler | undefined): void {
    if (this.count === this.codes.length) this.grow();
    const i = (this.head + this.count) & (this.codes.length - 1);
    this.codes[i] = code;
    this.handlers[i] = handler;
    if (handler) this.withHandler++;
    this.count++;
  }

  private pop(): ResponseHandler | undefined {
    const h = this.handlers[this.head];
    this.currentRequest = this.codes[this.head];
    if (this.currentRequest === LOCAL) this.locals[this.head] = undefined;
    if (h) {
      this.handlers[this.head] = undefined;
      this.withHandler--;
    }
    this.head = (this.head + 1) & (this.codes.length - 1);
    this.count--;
    return h;
  }

  /** The head request got its last message; copy-end markers that reach the head are due nothing. */
  private complete(): void {
    const req = this.codes[this.head];
    const h = this.pop();
    if (h) this.ends.push([h, req, 'done']);
    this.dropMarkers();
  }

  private dropMarkers(): void {
    while (this.count > 0 && this.codes[this.head] === COPY_END) this.pop();
  }

  /**
   * ReadyForQuery ends the Sync/Query/FunctionCall at the head; anything still ahead of one was skipped
   * (only after a desynchronisation; this resynchronises). Returns the handler that owns the message.
   */
  private completeThroughSync(): ResponseHandler | undefined {
    let owner: ResponseHandler | undefined;
    while (this.count > 0) {
      const req = this.codes[this.head];
      const h = this.pop();
      const sync = req === Fe.Sync || req === Fe.Query || req === Fe.FunctionCall;
      if (h && req !== COPY_END) this.ends.push([h, req, sync ? 'done' : 'skipped']);
      if (sync) {
        owner = h;
        break;
      }
    }
    this.dropMarkers();
    return owner;
  }

  /** An extended-protocol request failed: it is done, and the server discards everything up to the next Sync. */
  private failExtended(): void {
    this.complete();
    while (this.count > 0 && this.codes[this.head] !== Fe.Sync) {
      const req = this.codes[this.head];
      const h = this.pop();
      if (h && req !== COPY_END) this.ends.push([h, req, 'skipped']);
    }
  }

  /**
   * The head request started COPY FROM STDIN: the server now ignores Syncs until the client's CopyDone or
   * CopyFail. Those already queued behind the head are removed; later ones are not queued at all.
   */
  private copyIn(): void {
    const mask = this.codes.length - 1;
    const keptCodes: number[] = [];
    const keptHandlers: (ResponseHandler | undefined)[] = [];
    const keptLocals: (Buffer | undefined)[] = [];
    let i = 1;
    let sawEnd = false;
    for (; i < this.count; i++) {
      const at = (this.head + i) & mask;
      const code = this.codes[at];
      const h = this.handlers[at];
      if (code === COPY_END) {
        sawEnd = true;
        i++;
        break;
      }
      if (code === Fe.Sync) {
        if (h) {
          this.withHandler--;
          this.ends.push([h, code, 'skipped']);
        }
        continue;
      }
      keptCodes.push(code);
      keptHandlers.push(h);
      keptLocals.push(this.locals[at]);
    }
    for (; i < this.count; i++) {
      const at = (this.head + i) & mask;
      keptCodes.push(this.codes[at]);
      keptHandlers.push(this.handlers[at]);
      keptLocals.push(this.locals[at]);
    }
    // Rewrite the FIFO behind the head in place.
    for (let k = 0; k < keptCodes.length; k++) {
      const at = (this.head + 1 + k) & mask;
      this.codes[at] = keptCodes[k];
      this.handlers[at] = keptHandlers[k];
      this.locals[at] = keptLocals[k];
    }
    for (let k = keptCodes.length + 1; k < this.count; k++) this.handlers[(this.head + k) & mask] = undefined;
    this.count = keptCodes.length + 1;
    if (!sawEnd) this.syncsIgnored = true;
  }

  private grow(): void {
    const n = this.codes.length * 2;
    const codes = new Uint8Array(n);
    const handlers: (ResponseHandler | undefined)[] = new Array(n);
    const locals: (Buffer | undefined)[] = new Array(n);
    for (let k = 0; k < this.count; k++) {
      const at = (this.head + k) & (this.codes.length - 1);
      codes[k] = this.codes[at];
      handlers[k] = this.handlers[at];
      locals[k] = this.locals[at];
    }
    this.codes = codes;
    this.handlers = handlers;
    this.locals = locals;
    this.head = 0;
  }

  private flushEnds(): void {
    if (this.ends.length === 0) return;
    const ends = this.ends;
    this.ends = [];
    for (const [h, req, how] of ends) {
      try {
        h.onEnd?.(req, how);
      } catch {
        // a handler's own failure must not break the stream; the session logs handler errors where it calls them
      }
    }
  }
}
