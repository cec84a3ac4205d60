// A pooled session's membership of its pool's native hub (pool-hub.ts, relay.c): joining with the client's
// socket (and its server connection, if it keeps one), and taking the session back when the hub's relay exits,
// holding whichever server it has then, or none. The catch-up is the relay's (relay-handoff.ts): what it
// forwarded but did not write goes out first, the request tracker replays its log, the messages it stopped at go
// through the JS path; what differs is that the server is known only at the exit.
import type { Logger } from 'pino';
import type { FrameReader } from './framing.js';
import type { PoolHub } from './pool-hub.js';
import type { PooledServer } from './pool.js';
import type { TxStatus } from './protocol.js';
import type { RelayCounts, RelayEnd } from './relay-handoff.js';
import { catchUp, quiet } from './relay-handoff.js';
import { socketFd, type HubMember, type NativeRelay, type RelayHandle, type RelayOutcome, type RelayState } from './relay.js';
import type { RequestTracker } from './tracker.js';

/** What the membership needs of its session (client.ts). */
export interface HubHost {
  readonly log: Logger;
  readonly tracker: RequestTracker;
  readonly counts: RelayCounts;
  closed(): boolean;
  /** By the session's own state the relay may take it (RelayHost.idle). */
  idle(): boolean;
  pauseClient(): void;
  resumeClient(): void;
  toClient(bytes: Buffer): void;
  toServer(bytes: Buffer): void;
  txStatus(status: TxStatus): void;
  keepStatus(): number;
  keptQuery(query: Buffer | null, rowDescription: number): void;
  /** The relay exited holding this server (null: none): the session holds it from now on, before the catch-up. */
  holds(s: PooledServer | null): void;
  /** The relay exited: its counts (PooledSession.hubReturned), after the catch-up. */
  exited(o: RelayOutcome): void;
  relayReturned(): void;
  /** query_wait_timeout while queued in C. */
  waitTimedOut(reason: string): void;
  /** What the relay counted so far goes into the stats (PooledSession.hubSync). */
  sync(): void;
  internalError(err: unknown): void;
}

export class HubHandoff {
  private handle: RelayHandle | null = null;
  private clientFd = -1;

  constructor(
    private readonly relay: NativeRelay,
    private readonly hub: PoolHub,
    private readonly host: HubHost,
    private readonly client: RelayEnd,
    private readonly maxMessageBytes: number,
    /** The session's PoolClient: the server it exits with is linked to it. */
    private readonly owner: Parameters<PoolHub['left']>[2],
  ) {}

  get clientId(): number {
    return this.owner.id;
  }

  /** What C says of the session as a member (null: not one). */
  member(): HubMember | null {
    return this.handle === null ? null : this.hub.memberState(this.clientFd);
  }

  get active(): boolean {
    return this.handle !== null;
  }

  state(): RelayState | null {
    return this.handle === null ? null : this.relay.state(this.handle);
  }

  /**
   * Joins the hub now, with `s` (paused under the relay from now on; the caller has let go of it) or without a
   * server, and the statements it renames itself (names: prepared.ts hubTable's bytes, or null); false when a
   * socket is not quiet or the hub would not take it (nothing changed then).
   */
  enter(s: { server: PooledServer; end: RelayEnd } | null, poolFlags: number, names: Buffer | null): boolean {
    if (this.handle !== null || !quiet(this.client) || !this.host.idle()) return false;
    if (s !== null && !quiet(s.end)) return false;
    const cfd = socketFd(this.client.sock);
    if (cfd < 0) return false;
    this.host.pauseClient();
    if (s !== null) s.end.sock.pause();
    const h = this.hub.enter(this, cfd, s?.server ?? null, this.maxMessageBytes, (o) => {
      try {
        this.ended(o);
      } catch (err) {
        this.host.internalError(err);
      }
    }, this.host.keepStatus(), poolFlags, names);
    if (h === null) {
      this.host.resumeClient();
      if (s !== null) s.end.sock.resume();
      return false;
    }
    this.handle = h;
    this.clientFd = cfd;
    this.host.counts.relayStarts++;
    return true;
  }

  /** Takes the session back now (its server too, if it holds one); a client queued in C keeps its wait so far. */
  stopHub(queuedMs = 0): void {
    if (this.handle === null) return;
    if (queuedMs > 0) this.owner.waitedBefore = queuedMs;
    const o = this.relay.stop(this.handle);
    if (o !== null) this.ended(o);
  }

  syncCounts(): void {
    this.host.sync();
  }

  quiet(now: number): number {
    return this.owner.lentQuiet?.(now) ?? 0;
  }

  waitTimedOut(reason: 'query_wait_timeout' | 'query_timeout'): void {
    this.stopHub();
    this.host.waitTimedOut(reason);
  }

  private ended(o: RelayOutcome): void {
    this.handle = null;
    const host = this.host;
    const s = this.hub.left(this.clientFd, o, this.owner);
    host.holds(s);
    const counts = host.counts;
    counts.relayExits++;
    counts.bytesFromClients += o.bytesFromClient;
    counts.bytesFromUpstream += o.bytesFromServer;
    const server: { sock: RelayEnd['sock']; reader: FrameReader } | null = s === null ? null : s.conn;
    if (server !== null && o.skipServer > 0) server.reader.passThrough(o.skipServer);
    if (o.skipClient > 0) this.client.reader.passThrough(o.skipClient);
    if (host.closed()) return host.exited(o);
    host.log.trace({ reason: o.reason, errno: o.errno, server: o.serverFd }, 'native hub gave the session back');
    catchUp(host, o, server !== null);
    host.exited(o);
    if (server !== null && o.fromServer.length > 0) server.reader.push(o.fromServer);
    if (o.fromClient.length > 0 && !host.closed()) this.client.reader.push(o.fromClient);
    if (host.closed()) return;
    host.resumeClient();
    if (server !== null && server.sock.isPaused()) server.sock.resume();
    host.relayReturned();
  }
}
