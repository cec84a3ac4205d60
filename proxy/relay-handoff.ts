// Handing a session to the native relay (relay.ts) and taking it back. Between statements, once the
// chunk carrying a ReadyForQuery is through and nothing is in flight, held, paused or queued on either
// side, both plaintext sockets go to the relay, which forwards in C until something JS must see. It then
// gives them back with what it held: bytes forwarded but not yet written go out first, the request tracker
// replays the log of what went by, and the messages it stopped at go through the JS path. The session
// takes the sockets back itself (stop) before JS writes to either, and for good when it ends. A pooled
// session lends its server connection to the relay at a transaction's end (lend, pooled-session.ts).
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { FrameReader } from './framing.js';
import type { TxStatus } from './protocol.js';
import { socketFd, type NativeRelay, type RelayHandle, type RelayOutcome, type RelayState } from './relay.js';
import type { RequestTracker } from './tracker.js';

/** One side of the session: its socket and the reader of what it sends. */
export interface RelayEnd {
  readonly sock: Socket;
  readonly reader: FrameReader;
}

/** Counters the hand-off adds to (the proxy's Totals). */
export interface RelayCounts {
  relayStarts: number;
  relayExits: number;
  bytesFromClients: number;
  bytesFromUpstream: number;
}

/** What the hand-off needs of its session. */
export interface RelayHost {
  readonly log: Logger;
  readonly tracker: RequestTracker;
  readonly counts: RelayCounts;
  /** The session ended. */
  closed(): boolean;
  /**
   * By the session's own state the relay may take it: past startup, nothing in flight, no hook pending,
   * neither socket held back for flow control, not shutting down, no statement or portal watched for the interceptor.
   */
  idle(): boolean;
  /** Stop, and go on, reading both sockets while the relay has them (the server stays paused while the client is slow to read). */
  pauseReading(): void;
  resumeReading(): void;
  /** Writes with the session's flow control. */
  toClient(bytes: Buffer): void;
  toServer(bytes: Buffer): void;
  /** The last ReadyForQuery the relay passed said this. */
  txStatus(status: TxStatus): void;
  /** Non-zero (the transaction status's character code) when the session keeps Queries (SessionContext.keepQueries). */
  keepStatus(): number;
  /** The relay gave the session back: the Query or exchange it kept (RelayOutcome.query), or null, and what it forwarded of its answer (queryRowDescription). */
  keptQuery(query: Buffer | null, rowDescription: number): void;
  /** The session has its sockets back and is reading again: a pending shutdown acts now. */
  relayReturned(): void;
  /** Pooling: the RelayPool flags of a lent connection (absent: none). */
  poolFlags?(): number;
  /** Pooling: the statements the relay renames itself (RelayPool.named; NativeRelay.start's names), or null. */
  poolNames?(): Buffer | null;
  /**
   * Pooling: the relay gave the sockets back, with what it counted; once the session caught up with it (its
   * writes, the tracker), before JS reads anything it held.
   */
  exited?(o: RelayOutcome): void;
  internalError(err: unknown): void;
}

export class RelayHandoff {
  /** Both sockets are with the relay. */
  private handle: RelayHandle | null = null;
  /** A ReadyForQuery went by: once the chunk carrying it is through, see whether the relay can take over. */
  private check = false;
  /** The relay will not take this session (again): a socket ended under it, it could not start, or the session ends. */
  private off = false;

  constructor(
    private readonly relay: NativeRelay,
    private readonly host: RelayHost,
    private readonly client: RelayEnd,
    private readonly server: RelayEnd,
    private readonly maxMessageBytes: number,
  ) {}

  /** What the relay reports of the session while it has it, else null. */
  state(): RelayState | null {
    return this.handle === null ? null : this.relay.state(this.handle);
  }

  /** A ReadyForQuery went by (JS saw it): the relay may take over after its chunk. */
  readyForQuery(): void {
    if (!this.off) this.check = true;
  }

  /** A chunk from the server went through: hand over now if a ReadyForQuery in it made the session idle. */
  chunkDone(): void {
    if (this.check) {
      this.check = false;
      this.start();
    }
  }

  /** Pooling: hands the session over now (a transaction just ended); true when the relay has it. */
  lend(): boolean {
    this.check = false;
    this.start();
    return this.handle !== null;
  }

  /** Takes the sockets back now, before JS writes to either. `final`: the session is ending, the relay must not take it again. */
  stop(final: boolean): void {
    if (final) this.off = true;
    if (this.handle === null) return;
    const o = this.relay.stop(this.handle);
    if (o !== null) this.ended(o);
  }

  private start(): void {
    if (this.handle !== null || this.off || !quiet(this.client) || !quiet(this.server) || !this.host.idle()) return;
    const cfd = socketFd(this.client.sock);
    const sfd = socketFd(this.server.sock);
    if (cfd < 0 || sfd < 0) {
      this.off = true;
      return;
    }
    this.host.pauseReading();
    try {
      this.handle = this.relay.start(cfd, sfd, this.maxMessageBytes, (o) => {
        try {
          this.ended(o);
        } catch (err) {
          this.host.internalError(err);
        }
      }, this.host.keepStatus(), this.host.poolFlags?.() ?? 0, this.host.poolNames?.() ?? null);
    } catch (err) {
      this.off = true;
      this.host.log.warn({ err: (err as Error).message }, 'native relay did not start; this session relays in JS');
      this.host.resumeReading();
      return;
    }
    this.host.counts.relayStarts++;
  }

  /** The relay gave the session back: the messages it stopped at go through the JS path, then both sockets are read again. */
  private ended(o: RelayOutcome): void {
    this.handle = null;
    const host = this.host;
    const counts = host.counts;
    counts.relayExits++;
    counts.bytesFromClients += o.bytesFromClient;
    counts.bytesFromUpstream += o.bytesFromServer;
    // A message the relay was streaming: the readers continue inside it (and close() sees it unfinished).
    if (o.skipServer > 0) this.server.reader.passThrough(o.skipServer);
    if (o.skipClient > 0) this.client.reader.passThrough(o.skipClient);
    if (host.closed()) return host.exited?.(o);
    host.log.trace({ reason: o.reason, errno: o.errno }, 'native relay gave the session back');
    catchUp(host, o, true);
    // After the catch-up: the pooler may watch the relay's exchange from here on (0A000, pooled-session.ts), and
    // what was written just now is part of that exchange already, not sent after it.
    host.exited?.(o);
    // A socket that ended or failed under the relay: Node finds out on its next read and the session ends.
    if (o.reason.endsWith('eof') || o.reason.endsWith('error')) this.off = true;
    this.check = false;
    if (o.fromServer.length > 0) this.server.reader.push(o.fromServer);
    if (o.fromClient.length > 0 && !host.closed()) this.client.reader.push(o.fromClient);
    if (host.closed()) return;
    host.resumeReading();
    host.relayReturned();
    this.chunkDone();
  }

}

/** What a session's catching up with a relay needs of it (RelayHost's, and the hub member's, hub-handoff.ts). */
export type CatchUpHost = Pick<RelayHost, 'toServer' | 'toClient' | 'tracker' | 'txStatus' | 'keptQuery'>;

/**
 * The session catches up with a relay: what it forwarded but did not write goes out first (to the server only
 * when the session has one), then the tracker and the transaction status learn what went by.
 */
export function catchUp(host: CatchUpHost, o: RelayOutcome, hasServer: boolean): void {
  if (hasServer && o.toServer.length > 0) host.toServer(o.toServer);
  if (o.toClient.length > 0) host.toClient(o.toClient);
  for (const code of o.log) {
    if (code & 0x80) host.tracker.received(code & 0x7f);
    else host.tracker.sent(code);
  }
  if (o.status !== '') host.txStatus(o.status as TxStatus);
  host.keptQuery(o.query, o.queryRowDescription);
}

/** Nothing half-read, queued or unsent on this side, and its socket in a state the relay can read under. */
export function quiet({ sock, reader }: RelayEnd): boolean {
  if (!reader.atBoundary || reader.isPaused || reader.buffered > 0 || sock.writableLength > 0) return false;
  // A socket reading through `onread` has a Readable that stays in its `reading` state after the first
  // read; one that is not there yet could start reading from a nextTick of resume() under the relay.
  return (sock as Socket & { _readableState?: { reading?: boolean } })._readableState?.reading === true;
}
