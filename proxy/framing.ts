// Splits one direction of a session (typed messages: type byte + int32 length) into message boundaries
// without copying. Messages nobody needs to see whole are passed on as raw runs of the incoming chunks
// (a whole chunk when nothing in it needs attention); a message that must be seen whole is handed over
// as a view into the chunk, or as one assembled copy when it spans chunks.

/** onMessage result: the message stays in the pass-through run as it is. */
export const KEEP = 0;
/** onMessage result: stop after this message (not forwarded); the reader keeps the rest until resume(). */
export const PAUSE = 1;
/** onMessage result: the message is dropped. */
export const DROP = 2;
/**
 * What becomes of a message handed to onMessage: KEEP, PAUSE, DROP, or bytes to forward in its place.
 * The handler must not write to the destination itself during onMessage: the reader still holds the run
 * of bytes that precede the message and forwards them first.
 */
export type Verdict = typeof KEEP | typeof PAUSE | typeof DROP | Buffer | Buffer[];

const EMPTY = Buffer.alloc(0);

export interface FrameHandler {
  /**
   * Called once per message, in stream order, as soon as its header is known. Return true to receive
   * the whole message in onMessage, false to let its bytes pass through.
   */
  header(code: number, length: number): boolean;
  /**
   * A message header() asked for, whole. What came before it in an earlier chunk has gone to onBytes; the run
   * before it in this chunk is still held by the reader, forwarded once this returns (ahead of any replacement).
   */
  onMessage(msg: Buffer, code: number): Verdict;
  /** A run of bytes to forward unchanged. */
  onBytes(bytes: Buffer): void;
  /** The length field is impossible (< 4) or above the limit. Nothing after the previous message is forwarded. */
  onInvalid(code: number, length: number, tooLarge: boolean): void;
}

export class FrameReader {
  /** Body bytes of a passed-through message still to come in later chunks. */
  private skip = 0;
  /** A header split across chunks. */
  private readonly hdr = Buffer.alloc(5);
  private hdrLen = 0;
  /** A wanted message split across chunks, being assembled. */
  private asm: Buffer | null = null;
  private asmLen = 0;
  private asmCode = 0;
  /** Chunks (and the offset into the first) waiting while paused. */
  private queue: Buffer[] = [];
  private queueOffset = 0;
  private paused = false;
  private failed = false;
  /** The chunk being read: a message handed to onMessage as a view lies inside it (one assembled across chunks does not). */
  chunk: Buffer = EMPTY;

  constructor(
    private readonly h: FrameHandler,
    readonly maxLength: number,
  ) {}

  /** True between messages: nothing half-read, so the peer's stream can take a message of ours. */
  get atBoundary(): boolean {
    return this.skip === 0 && this.hdrLen === 0 && this.asm === null;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Bytes held back (paused queue, split header, partial assembly): bounded by the reader's own pause. */
  get buffered(): number {
    let n = this.hdrLen + this.asmLen - this.queueOffset;
    for (const c of this.queue) n += c.length;
    return n;
  }

  push(chunk: Buffer): void {
    if (this.failed) return;
    if (this.paused) {
      this.queue.push(chunk);
      return;
    }
    this.run(chunk, 0);
  }

  /** Continue after a PAUSE. Returns when done or paused again. */
  resume(): void {
    if (!this.paused || this.failed) return;
    this.paused = false;
    while (this.queue.length > 0 && !this.paused && !this.failed) {
      const chunk = this.queue.shift()!;
      const offset = this.queueOffset;
      this.queueOffset = 0;
      this.run(chunk, offset);
    }
  }

  private pauseAt(chunk: Buffer, pos: number): void {
    this.paused = true;
    if (pos < chunk.length) {
      this.queue.unshift(chunk);
      this.queueOffset = pos;
    }
  }

  private run(buf: Buffer, pos: number): void {
    this.chunk = buf;
    // The run of bytes to forward starts here, including the tail of a message passed through earlier.
    let start = pos;
    // Finish whatever the previous chunk left open.
    if (this.skip > 0) {
      pos = this.skipTail(buf, pos);
    } else if (this.asm !== null) {
      start = pos = this.finishAssembly(buf, pos);
      if (pos < 0) return;
    } else if (this.hdrLen > 0) {
      pos = this.finishHeader(buf, pos);
      if (pos < 0) return;
      return this.run(buf, pos);
    }
    this.walk(buf, start, pos);
  }

  /**
   * The per-message path: walks whole messages from `pos`, forwarding the run of bytes from `start` in as
   * few writes as it can (one for the whole chunk when nothing in it is wanted). Allocates nothing unless a
   * wanted message spans chunks.
   */
  private walk(buf: Buffer, start: number, pos: number): void {
    const end = buf.length;
    const h = this.h;
    while (pos < end) {
      if (end - pos < 5) return this.holdHeader(buf, start, pos);
      const code = buf[pos];
      const length = buf.readInt32BE(pos + 1);
      if (length < 4 || length > this.maxLength) {
        if (pos > start) h.onBytes(buf.subarray(start, pos));
        this.check(code, length);
        return;
      }
      const next = pos + 1 + length;
      if (!h.header(code, length)) {
        if (next <= end) pos = next;
        else {
          this.skip = next - end;
          pos = end;
        }
        continue;
      }
      if (next > end) return this.startAssembly(buf, start, pos, code, length);
      const v = h.onMessage(buf.subarray(pos, next), code);
      if (this.failed) return;
      if (v === KEEP) {
        pos = next; // a message only looked at stays in the run: one write for the whole chunk
        continue;
      }
      if (pos > start) h.onBytes(buf.subarray(start, pos));
      pos = next;
      start = next;
      if (v === PAUSE) return this.pauseAt(buf, pos);
      if (v !== DROP) this.emit(v);
    }
    if (pos > start) h.onBytes(start === 0 ? buf : buf.subarray(start, end));
  }

  /** The body of a passed-through message goes on in this chunk: returns where it ends (or the chunk does). */
  private skipTail(buf: Buffer, pos: number): number {
    const n = Math.min(this.skip, buf.length - pos);
    this.skip -= n;
    return pos + n;
  }

  /**
   * Adds this chunk's part of a wanted message spanning chunks; once whole, hands it over. Returns where the
   * chunk goes on, or -1 when it is used up, the reader paused or failed.
   */
  private finishAssembly(buf: Buffer, pos: number): number {
    const asm = this.asm!;
    const n = Math.min(asm.length - this.asmLen, buf.length - pos);
    buf.copy(asm, this.asmLen, pos, pos + n);
    this.asmLen += n;
    pos += n;
    if (this.asmLen < asm.length) return -1;
    this.asm = null;
    this.asmLen = 0;
    const v = this.h.onMessage(asm, this.asmCode);
    if (this.failed) return -1;
    if (v === KEEP) this.h.onBytes(asm);
    else if (v === PAUSE) {
      this.pauseAt(buf, pos);
      return -1;
    } else if (v !== DROP) this.emit(v);
    return pos;
  }

  /**
   * Completes a header split across chunks; once whole, starts passing its message through or assembling
   * it. Returns where the chunk goes on, or -1 when it is used up or the length is invalid.
   */
  private finishHeader(buf: Buffer, pos: number): number {
    const n = Math.min(5 - this.hdrLen, buf.length - pos);
    buf.copy(this.hdr, this.hdrLen, pos, pos + n);
    this.hdrLen += n;
    if (this.hdrLen < 5) return -1;
    this.hdrLen = 0;
    const code = this.hdr[0];
    const length = this.hdr.readInt32BE(1);
    if (!this.check(code, length)) return -1;
    if (this.h.header(code, length)) {
      this.asm = Buffer.allocUnsafe(1 + length);
      this.hdr.copy(this.asm, 0, 0, 5);
      this.asmLen = 5;
      this.asmCode = code;
    } else {
      this.h.onBytes(Buffer.from(this.hdr)); // the held-back header; hdr itself is reused
      this.skip = length - 4;
    }
    return pos + n;
  }

  /** The chunk ends inside a header: the run before it goes, the header's start waits for the next chunk. */
  private holdHeader(buf: Buffer, start: number, pos: number): void {
    if (pos > start) this.h.onBytes(buf.subarray(start, pos));
    buf.copy(this.hdr, 0, pos, buf.length);
    this.hdrLen = buf.length - pos;
  }

  /** A wanted message goes on in later chunks: the run before it goes, its start is copied to be assembled. */
  private startAssembly(buf: Buffer, start: number, pos: number, code: number, length: number): void {
    if (pos > start) this.h.onBytes(buf.subarray(start, pos));
    this.asm = Buffer.allocUnsafe(1 + length);
    buf.copy(this.asm, 0, pos, buf.length);
    this.asmLen = buf.length - pos;
    this.asmCode = code;
  }

  private emit(v: Buffer | Buffer[]): void {
    if (Buffer.isBuffer(v)) this.h.onBytes(v);
    else for (const b of v) this.h.onBytes(b);
  }

  /**
   * The next `n` bytes are the rest of a message whose start went by elsewhere (the native relay was
   * streaming it): they pass through unread. Only between messages.
   */
  passThrough(n: number): void {
    if (!this.atBoundary || this.paused) throw new Error('passThrough only between messages');
    this.skip = n;
  }

  /**
   * While paused after `msg` (onMessage returned PAUSE): `msg` is delivered again first on resume. The
   * pooler pauses a message until a server connection is there to take it, then lets it run its course.
   */
  requeue(msg: Buffer): void {
    if (!this.paused) throw new Error('requeue only while paused');
    // Joined with what follows it in one buffer: a batch (Parse, Bind, ..., Sync) stays one chunk, which is what
    // lets a session keep it to run again (client.ts keepParse).
    if (this.queue.length > 0) {
      this.queue[0] = Buffer.concat([msg, this.queue[0].subarray(this.queueOffset)]);
      this.queueOffset = 0;
      return;
    }
    this.queue.unshift(msg);
  }

  /**
   * While paused: copies the queued bytes out of the chunks they point into, when they are no more than
   * `limit` bytes, so that a socket's read buffer can be reused. Returns whether the queue now owns its bytes.
   */
  ownQueue(limit: number): boolean {
    if (this.buffered - this.hdrLen - this.asmLen > limit) return false;
    if (this.queue.length === 0) return true;
    const first = this.queue[0].subarray(this.queueOffset);
    this.queueOffset = 0;
    this.queue = this.queue.length === 1 ? [Buffer.from(first)] : [Buffer.concat([first, ...this.queue.slice(1)])];
    return true;
  }

  /** While paused between messages: the bytes waiting to be read, taken out (a takeover moves them). */
  takeQueued(): Buffer {
    if (!this.paused || !this.atBoundary) throw new Error('takeQueued only while paused between messages');
    const out = Buffer.concat(this.queue.map((c, i) => (i === 0 ? c.subarray(this.queueOffset) : c)));
    this.queue = [];
    this.queueOffset = 0;
    return out;
  }

  /** Stop for good (the session is ending): nothing more is delivered. */
  stop(): void {
    this.failed = true;
    this.queue = [];
  }

  private check(code: number, length: number): boolean {
    if (length >= 4 && length <= this.maxLength) return true;
    this.failed = true;
    this.h.onInvalid(code, length, length > this.maxLength);
    return false;
  }
}
