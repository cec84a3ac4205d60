// The pool's side of the native hub (relay.c): server connections handed from client to client in C under
// contention, as pgBouncer's one loop does, with no JS per transaction. A client whose session state needs
// nothing replayed (the hub's settings, no statements SQL names, no pins: pooled-session.ts enterHub) joins at a
// transaction's end, with its server connection when the pool lets it keep one, else without; from then on C
// gives servers to its members in FIFO order at each transaction's end, and a member goes back to JS (holding
// whichever server it has then) at anything the pooler must see. JS stays the authority over the pool:
//  - the hub's servers are in Pool.lent, their client this object: SHOW counts them idle or active from members();
//  - one FIFO queue: JS's waiters ask servers back (want, with the oldest one's wait), which C gives at once when
//    free or idle, else at their holders' next transaction end, after its own queued clients that waited longer;
//    a server JS frees goes to the hub's oldest client when it waited longest (offer, or to JS if the server's
//    settings are not the hub's); servers to close (RECONNECT, server_lifetime) are taken back one by one;
//  - clients queued in C meet query_wait_timeout here (tick), and a hub short of servers sends its oldest queued
//    client to JS, whose wait makes the pool open connections (starved); in a worker process they stay in C and
//    count as the pool's waiters when it asks the primary for slots (pool-limits.ts), whose yields take servers back;
//  - a server freed by JS goes to the hub while clients queue there and JS has none waiting (offer);
//  - named statements: each server enters with the server-side names prepared on it (prepared.ts serverNames), its
//    members with their tables (hubTable); what C renamed on a server is made recently used when it leaves (markUsed).
import type { Pool, PoolClient, PooledServer } from './pool.js';
import { literals, markUsed, serverNames } from './prepared.js';
import { socketFd, type HubMember, type NativeHub, type NativeRelay, type RelayHandle, type RelayOutcome } from './relay.js';

/** What the hub needs of a member (the client session's hand-off, hub-handoff.ts). */
export interface HubMemberSession {
  /** Takes the member out of the hub now (it exits through its onExit as any relay); queuedMs: how long it waited there. */
  stopHub(queuedMs?: number): void;
  /** query_wait_timeout or query_timeout while queued in C: the client ends with it. */
  waitTimedOut(reason: 'query_wait_timeout' | 'query_timeout'): void;
  /** What its relay counted so far goes into the pool's stats. */
  syncCounts(): void;
  /** Milliseconds since its client last sent anything (server_idle_timeout of the server it holds between transactions). */
  quiet(now: number): number;
  /** The client's id (SHOW SERVERS' link). */
  readonly clientId: number;
}

export class PoolHub implements PoolClient {
  /** Not 0: a server the hub held served clients (server_lifetime 0 closes it at its release). */
  readonly id = -1;
  private readonly native: NativeHub;
  /** Server fd → the server in the hub, and the server-side names it entered with (C reports uses in this order: hubUses). */
  private readonly servers = new Map<number, { server: PooledServer; names: string[] }>();
  /** Client fd → member. */
  private readonly members = new Map<number, HubMemberSession>();
  /** The settings every member has and every server in the hub has applied (the first member's). */
  key: string | null = null;
  /** The last want() asked of C, so that an unchanged need costs no call. */
  private wanted = 0;
  private seenWaitUs = 0;

  constructor(
    private readonly pool: Pool,
    relay: NativeRelay,
  ) {
    this.native = relay.hubCreate!((event, fd) => {
      try {
        if (event === 'server') this.serverBack(fd);
        else if (event === 'spoke') this.spoke(fd);
        else this.starved();
      } catch (err) {
        this.pool.log.error({ err }, 'pool hub event failed');
      }
    });
  }

  /**
   * A member joins with its server (null: without one) and the statements it renames (prepared.ts hubTable's bytes);
   * the handle is stopped and read as a relay's.
   */
  enter(
    session: HubMemberSession,
    clientFd: number,
    s: PooledServer | null,
    maxMessage: number,
    onExit: (o: RelayOutcome) => void,
    keepStatus: number,
    poolFlags: number,
    names: Buffer | null,
  ): RelayHandle | null {
    const sfd = s === null ? -1 : socketFd(s.conn.sock);
    if (s !== null && sfd < 0) return null;
    const has = s === null ? null : this.adopt(s, sfd);
    let h: RelayHandle;
    try {
      h = this.native.enter(clientFd, sfd, maxMessage, onExit, keepStatus, poolFlags, names, has);
    } catch (err) {
      if (s !== null) this.disown(s, sfd);
      this.pool.log.warn({ err: (err as Error).message }, 'native hub did not take the client; it stays in JS');
      return null;
    }
    this.members.set(clientFd, session);
    return h;
  }

  /** A member exited (onExit, or stopped): the server it holds, if any, is its session's from now on. */
  left(clientFd: number, o: RelayOutcome, client: PoolClient): PooledServer | null {
    this.members.delete(clientFd);
    this.forgetKey();
    const s = o.serverFd >= 0 ? (this.servers.get(o.serverFd)?.server ?? null) : null;
    if (s === null) return null;
    this.disown(s, o.serverFd);
    s.client = client;
    this.pool.active.add(s);
    return s;
  }

  /** Is this server one the hub may hold (clean, its settings the hub's, no yield pending: Pool.yieldNext)? */
  fits(s: PooledServer, applied: string): boolean {
    return this.pool.clean(s) && this.pool.yieldNext === 0 && this.key === applied && s.conn.plain && socketFd(s.conn.sock) >= 0;
  }

  /**
   * A server JS freed while nobody waits in JS: the hub's when clients queue there and it fits. True: taken.
   */
  offer(s: PooledServer): boolean {
    if (this.members.size === 0 || !this.pool.hubOpen() || !this.fits(s, settingsKey(s.applied)) || literals(s).size > 0) return false;
    if (s.conn.reader.buffered > 0 || !s.conn.reader.atBoundary || s.conn.sock.writableLength > 0) return false;
    if (this.native.stats().queued === 0) return false;
    const fd = socketFd(s.conn.sock);
    s.conn.sock.pause();
    const has = this.adopt(s, fd);
    this.wanted = 0;
    try {
      this.native.add(fd, has);
    } catch (err) {
      this.disown(s, fd);
      s.conn.sock.resume();
      this.pool.log.warn({ err: (err as Error).message }, 'native hub did not take the server');
      return false;
    }
    return true;
  }

  /**
   * JS waiters need n servers: the hub's free and idle ones now, the rest as their transactions end; with waitedUs
   * (the oldest JS waiter's wait) after the clients queued here that waited longer, as one FIFO queue.
   */
  want(n: number, waitedUs?: number): void {
    if (n === this.wanted && n === 0) return;
    const was = this.wanted;
    this.wanted = n;
    for (const fd of this.native.want(n, n > 0 ? waitedUs : undefined)) this.serverBack(fd);
    // JS asks no more (RESUME, its waiters served): clients queued in C meanwhile get the pool's idle servers.
    if (n === 0 && was > 0) while (this.native.stats().queued > 0 && this.pool.offerIdle(this));
  }

  /** Has a client queued here waited longer than waitedUs (JS's oldest waiter's wait)? */
  queuedLonger(waitedUs: number): boolean {
    return this.members.size > 0 && this.native.stats().oldestQueuedUs > waitedUs;
  }

  /** This server leaves the hub (to be closed, or RECONNECT): now if free or idle, else at its holder's transaction end. */
  take(s: PooledServer): void {
    const fd = socketFd(s.conn.sock);
    if (this.servers.get(fd)?.server !== s) return;
    if (this.native.take(fd) === 'now') return this.serverBack(fd);
    // In a transaction: its client goes back to JS with it (as a lent one's), which releases it at the transaction's end.
    const m = this.native.members().find((x) => x.serverFd === fd);
    if (m !== undefined) this.members.get(m.clientFd)?.stopHub();
  }

  /**
   * Worker processes: another worker needs this server's slot (pool-limits.ts yieldIdle). It leaves the hub now if
   * free or held between transactions (its holder waits without one from then on), and true: the caller closes it
   * and gives the slot back. False: in a transaction (asked back from C, it comes to the pool at its end: Pool.fill).
   */
  yieldServer(s: PooledServer): boolean {
    const fd = socketFd(s.conn.sock);
    if (this.servers.get(fd)?.server !== s || this.lentBusy(s)) return false;
    // 'later': a transaction began since the snapshot; C gives it back at its end, as any server JS asked for.
    if (this.native.take(fd) !== 'now') return false;
    this.disown(s, fd);
    s.client = null;
    s.conn.attach(s);
    if (s.conn.sock.isPaused()) s.conn.sock.resume();
    return true;
  }

  /** Servers handed from client to client in C so far (the metrics' hub hand-offs). */
  get handoffs(): number {
    return this.native.stats().handoffs;
  }

  /** Clients queued in C now. */
  queuedNow(): number {
    return this.members.size === 0 ? 0 : this.native.stats().queued;
  }

  /** Servers of the hub, as Pool.lent holds them (for take). */
  get held(): PooledServer[] {
    return [...this.servers.values()].map((e) => e.server);
  }

  /** The janitor: clients queued in C past query_wait_timeout (or query_timeout) end as JS waiters would. */
  tick(waitLimitMs: number, queryTimeoutMs: number): void {
    if (this.members.size === 0) return;
    // Servers left the hub meanwhile (closed, taken by JS): queued clients are not forgotten.
    if (this.native.stats().queued > 0) this.starved();
    if (waitLimitMs <= 0 && queryTimeoutMs <= 0) return;
    for (const m of this.snapshot()) {
      if (m.state !== 'queued') continue;
      const waited = m.queuedUs / 1000;
      const reason = queryTimeoutMs > 0 && waited > queryTimeoutMs ? 'query_timeout' : waitLimitMs > 0 && waited >= waitLimitMs ? 'query_wait_timeout' : null;
      if (reason === null) continue;
      this.members.get(m.clientFd)?.waitTimedOut(reason);
    }
  }

  /** Hand-offs and waits in C so far; the waits go into SHOW STATS' wait time. */
  sync(): { handoffs: number; queued: number; members: number; servers: number } {
    const st = this.native.stats();
    this.pool.stats.waitTimeUs += st.waitUs - this.seenWaitUs;
    this.seenWaitUs = st.waitUs;
    return st;
  }

  /** What C says of each member now (SHOW CLIENTS, SERVERS, POOLS), read once per turn of the event loop. */
  snapshot(): HubMember[] {
    if (this.seen === null) {
      this.seen = this.native.members();
      queueMicrotask(() => (this.seen = null));
    }
    return this.seen;
  }
  private seen: HubMember[] | null = null;

  /** The state in the hub of the member on this client fd (null: not a member). */
  memberState(clientFd: number): HubMember | null {
    return this.snapshot().find((m) => m.clientFd === clientFd) ?? null;
  }

  /** The hub's server on this fd (null: none). */
  serverOf(fd: number): PooledServer | null {
    return this.servers.get(fd)?.server ?? null;
  }

  holderOf(s: PooledServer): number {
    const fd = socketFd(s.conn.sock);
    const m = this.snapshot().find((x) => x.serverFd === fd && x.state === 'busy');
    return m === undefined ? 0 : (this.members.get(m.clientFd)?.clientId ?? 0);
  }

  /** Every member back to JS (the pool stops using the hub: RELOAD, shutdown, takeover). */
  stopAll(): void {
    for (const m of [...this.members.values()]) m.stopHub();
  }

  // ---- PoolClient, for the hub's servers in Pool.lent ----

  poolFailed(): void {}

  reclaim(): void {
    this.want(Math.max(this.wanted, 0) + 1);
  }

  lentBusy(s?: PooledServer): boolean {
    if (s === undefined) return false;
    const fd = socketFd(s.conn.sock);
    return this.snapshot().some((m) => m.serverFd === fd && m.state === 'busy');
  }

  /** server_idle_timeout: a server held between transactions is as quiet as its holder's client; a free one since it came. */
  lentQuiet(now: number, s?: PooledServer): number {
    if (s === undefined) return 0;
    const fd = socketFd(s.conn.sock);
    const m = this.snapshot().find((x) => x.serverFd === fd);
    if (m === undefined) return now - s.lastUsed;
    if (m.state === 'busy') return 0;
    return this.members.get(m.clientFd)?.quiet(now) ?? 0;
  }

  lentSync(): void {
    this.sync();
    for (const m of this.members.values()) m.syncCounts();
  }

  // ----

  /** The server joins the pool's lent ones, the hub's client; returns the server-side names of its statements for C. */
  private adopt(s: PooledServer, fd: number): Buffer | null {
    const { names, bytes } = serverNames(s);
    this.servers.set(fd, { server: s, names });
    this.pool.active.delete(s);
    this.pool.lent.add(s);
    s.client = this;
    s.lastUsed = Date.now();
    return bytes;
  }

  /** The server left the hub (C has let go of it): what C renamed on the servers that left is made recently used. */
  private disown(s: PooledServer, fd: number): void {
    for (const g of this.native.uses()) {
      const e = this.servers.get(g.serverFd);
      if (e !== undefined) markUsed(e.server, e.names, g.uses);
    }
    this.servers.delete(fd);
    this.pool.lent.delete(s);
    this.forgetKey();
  }

  /** An empty hub takes the settings of the next client that joins. */
  private forgetKey(): void {
    if (this.members.size === 0 && this.servers.size === 0) this.key = null;
  }

  /** C gave a server back (asked for, or it spoke or closed while free): the pool has it again, reading it. */
  private serverBack(fd: number): void {
    const s = this.servers.get(fd)?.server;
    if (s === undefined) return;
    this.disown(s, fd);
    this.pool.active.add(s);
    // Read by Node again before the pool places it (a queued hub client may take it straight back: offer pauses it).
    if (s.conn.sock.isPaused()) s.conn.sock.resume();
    this.pool.release(s, true);
    if (s.closed) this.starved(); // closed (RECONNECT, its lifetime over): clients queued in C may need another opened
  }

  /**
   * A server spoke unasked or closed between transactions (a FATAL: terminated, shut down): Node reads it first (its
   * FATAL or end closes it, as an idle pool connection's does), and only then is it released, so that it does not
   * go straight back to a queued client unread.
   */
  private spoke(fd: number): void {
    const s = this.servers.get(fd)?.server;
    if (s === undefined) return;
    this.disown(s, fd);
    this.pool.active.add(s);
    s.client = null;
    s.conn.attach(s);
    s.conn.sock.resume();
    // Two turns: the first runs before the loop's next poll, the second after Node read what the server sent.
    setImmediate(() => setImmediate(() => (s.client === null && this.pool.active.has(s) ? this.pool.release(s, true) : undefined)));
  }

  /**
   * Clients queue in C and no server is free or idle there: JS waiters are served first (the pool asks); with
   * room in the pool, the oldest queued client goes to JS, whose wait opens a connection; an idle pool server
   * that fits joins.
   */
  private starved(): void {
    // PAUSE, SUSPEND, a shutdown: clients queued in C wait in JS instead, where the console's rules are kept.
    if (!this.pool.hubOpen()) {
      for (const m of this.native.members()) if (m.state === 'queued') this.members.get(m.clientFd)?.stopHub();
      return;
    }
    if (this.pool.waiters.length > 0) return;
    if (this.pool.offerIdle(this)) return;
    // A connection lent to a client outside the hub: taken back, it comes here at its release (Pool.returnIdle).
    if (this.pool.lent.size > this.servers.size) return this.pool.reclaimLent(1, false);
    // Worker processes: the pool counts the clients queued here as waiting (WorkerSlots.needs), asks the primary
    // for slots for them and opens connections on those granted, which come here (Pool.returnIdle), as a JS
    // waiter's would; the clients stay in C meanwhile (query_wait_timeout still applies: tick).
    if (this.pool.pooler.slots !== null && this.pool.idle.length === 0) return this.pool.pooler.schedule(this.pool);
    const oldest = this.oldestQueued();
    if (oldest === null) return;
    // An idle connection that does not fit (other settings), or room to open one (the reserve once the oldest has
    // waited reserve_pool_timeout in C: tick asks again): JS serves the client, its wait counted from its queuing.
    if (this.pool.idle.length === 0 && !this.pool.roomToOpen(Math.floor(oldest.queuedUs / 1000))) return;
    this.sendToJs(oldest);
  }

  /** The oldest client queued here waits in JS from now on (a connection JS has does not fit the hub). */
  sendOldestToJs(): void {
    const oldest = this.oldestQueued();
    if (oldest !== null) this.sendToJs(oldest);
  }

  private oldestQueued(): HubMember | null {
    let oldest: HubMember | null = null;
    for (const m of this.native.members()) if (m.state === 'queued' && (oldest === null || m.queuedUs > oldest.queuedUs)) oldest = m;
    return oldest;
  }

  private sendToJs(m: HubMember): void {
    this.members.get(m.clientFd)?.stopHub(Math.max(1, Math.floor(m.queuedUs / 1000)));
  }
}

/** Settings as one comparable string (names are lower-cased already). */
export function settingsKey(m: ReadonlyMap<string, string>): string {
  return JSON.stringify([...m].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)));
}
