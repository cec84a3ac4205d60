// The pooler (pgBouncer's pooler.c and janitor.c): server connections kept per (database, user) pool and
// lent to client sessions for a session, a transaction or a statement. It opens and logs in server
// connections itself (server-login.ts), keeps the limits (pool_size, reserve_pool, max_db_connections,
// max_user_connections, max_client_conn), queues clients fairly (FIFO per pool) when no connection is free,
// and runs the timers: query_wait_timeout, server_lifetime, server_idle_timeout, server_check_delay,
// server_login_retry, min_pool_size. What a client does with its connection is client.ts's and
// pooled-session.ts's business.
import type { Logger } from 'pino';
import type { DatabaseEntry, PoolMode, PoolerConfig, Secret } from '../config/pgbouncer.js';
import type { CancelKey } from './cancel.js';
import { Be, Fe, SYNC, SqlState, bind, execute, parse, query, readCommandTag, readDataRow, readErrorFields, type ErrorFields, type TxStatus } from './protocol.js';
import { loginServer, LoginError, type LoginCredentials } from './server-login.js';
import { RequestTracker } from './tracker.js';
import { PgBouncerLog } from './pgbouncer-log.js';
import { nextSocketId } from './socket-id.js';
import { ServerConnection, UpstreamUnreachable, openUpstream, sendCancel, type SessionLink, type UpstreamTarget } from './upstream.js';
import type { ResponseHandler } from './interceptor.js';
import { PoolHub } from './pool-hub.js';
import { dropsEveryStatement, forgetServerStatements } from './prepared.js';
import { statementEffects, type StatementEffects } from './statement-effects.js';
import { loadNativeRelay, tuneTcp } from './relay.js';

/** A client error in pgBouncer's words (its texts and SQLSTATEs). */
export class PoolError extends Error {
  constructor(
    readonly fields: ErrorFields,
    /** The client must be disconnected (FATAL) rather than answered with an ERROR. */
    readonly fatal = true,
  ) {
    super(fields.message);
  }
}

export const poolError = (message: string, code: string = SqlState.ProtocolViolation, hint?: string): PoolError =>
  new PoolError({ severity: 'FATAL', code, message, hint });

/** What a pool needs of a client that waits for, or holds, one of its connections. */
export interface PoolClient {
  readonly id: number;
  /** The client waited too long (query_wait_timeout) or the pool cannot serve it: it ends with this error. */
  poolFailed(err: PoolError): void;
  /** Between transactions with nothing in flight (server_fast_close may then take its connection). */
  idleInSession?(): boolean;
  /**
   * Lending (Pool.lent): the pool wants the connection it lent the client back. The native relay gives it up;
   * between transactions it is released at once, else at the end of the transaction.
   */
  reclaim?(): void;
  /** Lending: the relay is inside a request or a transaction of the client's (the hub's: on that server). */
  lentBusy?(s?: PooledServer): boolean;
  /** The hub: the id of the client holding this server of its, in a transaction (0: none). */
  holderOf?(s: PooledServer): number;
  /** Lending: milliseconds since the client last sent anything; `s`: the connection asked about (a hub holds several). */
  lentQuiet?(now: number, s?: PooledServer): number;
  /** Lending: what the relay counted so far goes into the pool's stats now (SHOW STATS). */
  lentSync?(): void;
  /** Milliseconds it waited before it came to wait here (queued in the hub, held by SUSPEND): its wait counts from then (once). */
  waitedBefore?: number;
}

/**
 * The pool limits kept across worker processes (pool-limits.ts). With it the primary counts server connections
 * and clients: a pool opens a connection only on a slot granted to it, and gives the slot back when it closes.
 */
export interface ServerSlots {
  /** Each fill pass: slots of closed connections go back, asked-for closes (yields) are done. */
  fill(pool: Pool): void;
  /** May the pool open one more connection now (a slot is granted and unused)? If not, one is asked for. */
  take(pool: Pool): boolean;
  /** A client the local limits admitted, and its leaving: the primary has the last word (max_client_conn, ...). */
  admit(db: PoolDatabase, user: string): void;
  leave(db: PoolDatabase, user: string): void;
}

export interface PoolerOptions {
  config: PoolerConfig;
  /** Where a [databases] entry without host/port points (the proxy's --upstream). */
  defaultTarget: UpstreamTarget;
  logger: Logger;
  /** The targets of an entry, one per host of its host list (TLS settings as the default target's). */
  targetsFor(entry: DatabaseEntry, fallback: UpstreamTarget): UpstreamTarget[];
}

/** Counters per pool, as SHOW STATS reports them (totals since start). */
export interface PoolStats {
  xactCount: number;
  queryCount: number;
  bytesReceived: number;
  bytesSent: number;
  xactTimeUs: number;
  queryTimeUs: number;
  waitTimeUs: number;
  clientParseCount: number;
  serverParseCount: number;
  bindCount: number;
  /** Times a client was given a server connection. */
  serverAssignmentCount: number;
}

const newStats = (): PoolStats => ({
  xactCount: 0, queryCount: 0, bytesReceived: 0, bytesSent: 0, xactTimeUs: 0, queryTimeUs: 0, waitTimeUs: 0,
  clientParseCount: 0, serverParseCount: 0, bindCount: 0, serverAssignmentCount: 0,
});

/** A replication client's kind, as the server is told it: logical ("database") or physical ("yes"). */
export type ReplicationKind = 'database' | 'yes';

/** The startup packet's `replication` value as pgBouncer reads it: "database", a true boolean, or none. */
export function replicationKind(v: string | undefined): ReplicationKind | null {
  if (v === undefined) return null;
  if (v === 'database') return 'database';
  return ['true', 'on', 'yes', '1', 't', 'y'].includes(v.toLowerCase()) ? 'yes' : null;
}

/** A replication client waiting for room in the pool for a connection of its own (pgBouncer opens one per client). */
interface ReplicationWaiter {
  client: PoolClient;
  since: number;
  kind: ReplicationKind;
  /** The client's startup parameters the server gets (application_name, options, ...). */
  params: Map<string, string>;
  done(s: PooledServer | PoolError): void;
  cancelled: boolean;
}

/** Login failures that a retry may cure: unreachable, starting up or shutting down, too many connections. */
const TRANSIENT = new Set<string>([SqlState.ConnectionFailure, '08001', '08004', '57P01', '57P02', '57P03', SqlState.TooManyConnections]);

/** One server connection of a pool. While idle in the pool its link is itself (it swallows what comes). */
export class PooledServer implements SessionLink {
  readonly id = nextSocketId();
  readonly tracker = new RequestTracker();
  readonly log: Logger;
  conn!: ServerConnection;
  key: CancelKey | null = null;
  /** ParameterStatus values as the server reported them. */
  readonly params = new Map<string, string>();
  /** Settings the pooler applied for clients (name → value as the client set it); absent: the login default. */
  readonly applied = new Map<string, string>();
  /** Server-side prepared statement names, least recently used first (prepared.ts). */
  readonly prepared = new Map<string, true>();
  readonly createdAt = Date.now();
  lastUsed = Date.now();
  /** When it was last known good (login, check query, a transaction that ended well). */
  checkedAt = Date.now();
  client: PoolClient | null = null;
  closed = false;
  /** The connection must not be reused (an error, a lifetime over, RECONNECT): closed when released. */
  dirty = false;
  closeReason = '';
  localAddr = '';
  localPort = 0;
  /** Cancel requests for it on their way to the server (Pool.cancelFor). */
  cancelling = 0;
  /** The host of the entry's host list it is connected to (cancels go there too). */
  target: UpstreamTarget;
  /** A replication connection: its one client's alone, closed when that client leaves. */
  replication: ReplicationKind | null = null;
  private internal: { resolve(r: InternalResult): void; rows: (Buffer | null)[][]; tags: string[]; error: Record<string, string> | null } | null = null;

  constructor(readonly pool: Pool) {
    this.log = pool.log.child({ server: this.id });
    this.target = pool.db.target;
  }

  // ---- SessionLink while idle or running the pool's own queries ---------------------------------------
  readonly clientBacklog = 0;
  toClient(): void {
    // A FATAL while idle (pg_terminate_backend, a shutdown): closed now, before it is lent to a client that
    // would hear it instead of its own login's outcome; the socket's close may come an event later.
    if (this.conn.sawFatal && !this.closed && this.client === null) this.pool.gone(this, 'server conn crashed?');
  }
  serverKey(key: CancelKey): Buffer {
    this.key = key;
    return Buffer.alloc(0);
  }
  serverReady(status: TxStatus): void {
    const internal = this.internal;
    if (internal && this.tracker.size === 0) {
      this.internal = null;
      internal.resolve({ ok: internal.error === null && status === 'I', rows: internal.rows, tags: internal.tags, error: internal.error });
    }
  }
  serverParam(name: string, value: string): void {
    this.params.set(name, value);
  }
  startupError(): void {}
  countUpstreamBytes(n: number): void {
    this.pool.stats.bytesSent += n; // pgBouncer's server_bytes counts the pool's own exchanges too
  }
  serverChunkDone(): void {}
  serverDrained(): void {}
  serverError(err: Error): void {
    this.log.debug({ err: err.message }, 'server connection error');
  }
  serverClosed(): void {
    this.pool.gone(this, 'server closed the connection');
  }
  internalError(err: unknown): void {
    this.log.error({ err }, 'internal error on a pooled server connection');
    this.close('internal error');
  }

  /** Runs SQL on the idle connection (reset, check, connect_query, auth_query), its answers swallowed. */
  runInternal(sql: string, params?: string[]): Promise<InternalResult> {
    return new Promise((resolve) => {
      const rows: (Buffer | null)[][] = [];
      const tags: string[] = [];
      this.internal = { resolve, rows, tags, error: null };
      const internal = this.internal;
      const handler: ResponseHandler = {
        onMessage(msg) {
          if (msg[0] === Be.DataRow) rows.push(readDataRow(msg));
          else if (msg[0] === Be.CommandComplete) tags.push(readCommandTag(msg));
          else if (msg[0] === Be.ErrorResponse) internal.error = readErrorFields(msg);
          return null;
        },
        onEnd: (_req, how) => {
          if (how === 'closed' && this.internal === internal) {
            this.internal = null;
            resolve({ ok: false, rows, tags, error: { M: 'connection closed' } });
          }
        },
      };
      // Parameters go by the extended protocol, never spliced into the text.
      const bytes = params
        ? Buffer.concat([parse('', sql), bind({ portal: '', statement: '', paramFormats: [], params: params.map((p) => Buffer.from(p)), resultFormats: [] }), execute(), SYNC])
        : query(sql);
      for (const code of params ? [Fe.Parse, Fe.Bind, Fe.Execute, Fe.Sync] : [Fe.Query]) this.tracker.sent(code, handler);
      this.conn.write(bytes);
    });
  }

  /** Fails a pending internal query (the connection went away). */
  private failInternal(): void {
    this.tracker.close();
  }

  /** How pgBouncer's log names this connection. */
  subject() {
    return { kind: 'S' as const, id: this.id, database: this.pool.db.name, user: this.pool.user, address: `${this.target.display}` };
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    this.pool.pooler.pgbLog.closing(reason, this.createdAt, this.subject());
    this.failInternal();
    const sock = this.conn?.sock;
    if (sock && !sock.destroyed) {
      sock.end(Buffer.from([0x58, 0, 0, 0, 4]));
      setTimeout(() => sock.destroy(), 1_000).unref();
    }
  }
}

export interface InternalResult {
  ok: boolean;
  rows: (Buffer | null)[][];
  /** The CommandComplete tags, in order. */
  tags: string[];
  error: Record<string, string> | null;
}

interface Waiter {
  client: PoolClient;
  since: number;
  /** performance.now() then: SHOW STATS' wait_time in microseconds. */
  waitStart: number;
  granted(s: PooledServer): void;
}

/** One (database, user) pool. */
export class Pool {
  readonly idle: PooledServer[] = [];
  readonly active = new Set<PooledServer>();
  /**
   * Lent: idle between its client's transactions, kept with that client in the native relay (pooled-session.ts)
   * because nobody waited. Logically idle: a waiter, a console command or a timer reclaims it first.
   */
  readonly lent = new Set<PooledServer>();
  /** Released while cancel requests for it are still on their way (cancelFor). */
  private readonly parked = new Set<PooledServer>();
  /** Connections being opened or checked (they count against the limits). */
  opening = 0;
  readonly waiters: Waiter[] = [];
  /** Replication clients waiting for a connection of their own, and those being opened for them. */
  private readonly replWaiting: ReplicationWaiter[] = [];
  get replicationWaiting(): number {
    return this.replWaiting.length;
  }
  private readonly replOpening = new Set<ReplicationWaiter>();
  /** Clients logged in to this pool (their timeouts are checked by the janitor). */
  readonly clients = new Set<PoolClient & { timeouts(now: number): void }>();
  readonly stats = newStats();
  /** Server parameters as the last login reported them (the welcome clients get). */
  welcome: Map<string, string> | null = null;
  /** The last login failure, until server_login_retry has passed. */
  loginFailure: { at: number; error: PoolError } | null = null;
  /** SCRAM keys of a client that logged in with SCRAM, for logging in with a verifier only. */
  scramKeys: { clientKey: Buffer; serverKey: Buffer } | null = null;
  readonly log: Logger;
  paused = false;
  clientCount = 0;
  usedReserve = 0;
  /** Connections to close at their next release rather than lend (ServerSlots: another worker needs the slot). */
  yieldNext = 0;
  /** The native hub (pool-hub.ts), made at the first client that may join it; null: none (yet). */
  hub: PoolHub | null = null;

  constructor(
    readonly pooler: Pooler,
    readonly db: PoolDatabase,
    /** The user server connections log in as. */
    readonly user: string,
    readonly mode: PoolMode,
  ) {
    this.log = pooler.log.child({ pool: `${db.name}/${user}` });
  }

  get size(): number {
    return this.idle.length + this.active.size + this.lent.size + this.opening + this.parked.size + this.replOpening.size;
  }

  get poolSize(): number {
    const u = this.pooler.config.users.get(this.user);
    return u?.poolSize ?? this.db.entry.poolSize ?? this.pooler.settings.defaultPoolSize;
  }

  get reserveSize(): number {
    const u = this.pooler.config.users.get(this.user);
    return u?.reservePool ?? this.db.entry.reservePool ?? this.pooler.settings.reservePoolSize;
  }

  /**
   * A connection for the client: returned at once when one is idle, else null and `granted` gets it when one
   * frees or opens (FIFO), or the client's poolFailed says why none will. A callback, not a Promise: most pooled
   * transactions wait here, and each saved its promises and their microtask hops.
   */
  acquire(client: PoolClient, granted: (s: PooledServer) => void): PooledServer | null {
    const refusal = this.pooler.refusal;
    if (refusal !== null) {
      queueMicrotask(() => client.poolFailed(refusal));
      return null;
    }
    if (this.waiters.length === 0 && !this.paused) {
      const s = this.takeIdle();
      if (s) return this.lend(s, client);
    }
    // pgBouncer's check_fast_fail: while logins fail and no server is connected, a client fails at once with
    // the cached error rather than waiting (a new login is still tried, as server_login_retry allows).
    const failed = this.loginFailure;
    if (failed !== null && this.idle.length + this.active.size === 0) {
      const err = poolError(`server login has been failing, cached error: ${failed.error.message} (server_login_retry)`);
      queueMicrotask(() => client.poolFailed(err));
      this.pooler.schedule(this);
      return null;
    }
    const carried = client.waitedBefore ?? 0;
    client.waitedBefore = 0;
    const w: Waiter = { client, since: Date.now() - carried, waitStart: performance.now() - carried, granted };
    // From the hub's queue: in its place by its wait, not behind those who came after it.
    let at = this.waiters.length;
    if (carried > 0) while (at > 0 && this.waiters[at - 1].waitStart > w.waitStart) at--;
    this.waiters.splice(at, 0, w);
    this.pooler.schedule(this);
    return null;
  }

  /** Takes a waiter out of the queue (its client left). */
  forget(client: PoolClient): void {
    const i = this.waiters.findIndex((w) => w.client === client);
    if (i >= 0) this.waiters.splice(i, 1);
  }

  private takeIdle(): PooledServer | undefined {
    // Most recently used first: the others may age out (server_idle_timeout) and the pool shrinks.
    while (this.idle.length > 0) {
      const s = this.idle.pop()!;
      if (!s.closed && !s.conn.sawFatal) return s;
    }
    return undefined;
  }

  private lend(s: PooledServer, client: PoolClient): PooledServer {
    s.client = client;
    s.lastUsed = Date.now();
    this.active.add(s);
    return s;
  }

  /** The client is done with the connection. `clean`: between transactions, nothing of the client's left on it. */
  release(s: PooledServer, clean: boolean): void {
    if (s.replication !== null) return this.releaseReplication(s);
    this.active.delete(s);
    this.lent.delete(s);
    const served = s.client !== null && s.client.id !== 0;
    s.client = null;
    s.conn.attach(s);
    if (s.closed) return this.pooler.schedule(this);
    const settings = this.pooler.settings;
    if (!clean || s.dirty) return this.retire(s, s.dirty ? s.closeReason || 'marked for closing' : 'client left it in use');
    // server_lifetime 0: each connection serves one client, then closes (pgBouncer; a database's 0 means unset).
    // The login that only learns the server's parameters for a client's welcome (client id 0) does not count.
    const lifetime = (this.db.entry.serverLifetime || settings.serverLifetime) * 1000;
    if (lifetime > 0 ? Date.now() - s.createdAt >= lifetime : served) return this.retire(s, 'server lifetime over');
    s.lastUsed = Date.now();
    if (s.cancelling > 0) {
      this.parked.add(s);
      return;
    }
    const reset = settings.serverResetQuery;
    if (reset && (this.mode === 'session' || settings.serverResetQueryAlways)) {
      this.opening++;
      void s.runInternal(reset).then((r) => {
        this.opening--;
        if (!r.ok) return this.retire(s, `server_reset_query failed: ${r.error?.M ?? 'unknown error'}`);
        // Forget only what the reset undid: a reset that keeps the statements (RESET ALL, a SELECT) must
        // not make the pool Parse them again under names the server still has.
        if (r.tags.some(dropsEveryStatement)) forgetServerStatements(s);
        const e = this.resetEffects(reset);
        if (e?.discard === 'all' || e?.sets.some((x) => x.name === '*')) s.applied.clear();
        else for (const x of e?.sets ?? []) s.applied.delete(x.name);
        this.returnIdle(s);
      });
      return;
    }
    this.returnIdle(s);
  }

  private resetParsed: { sql: string; effects: StatementEffects | null } | null = null;

  /** What server_reset_query does to settings, as the parser reads it (parsed once per text: RELOAD may change it). */
  private resetEffects(sql: string): StatementEffects | null {
    if (this.resetParsed?.sql !== sql) this.resetParsed = { sql, effects: statementEffects(Buffer.from(sql)) };
    return this.resetParsed.effects;
  }

  // ---- lending ---------------------------------------------------------------------------------------------

  /**
   * May the client keep its connection past the end of its transaction, in the native relay? Only while
   * nobody waits, nothing is to happen at its release (lifetime over, reset query, a yield, a close pending)
   * and no console command holds the pool.
   */
  mayLend(s: PooledServer): boolean {
    if (this.mode !== 'transaction' || this.waiters.length > 0 || this.replWaiting.length > 0 || this.paused) return false;
    // Worker processes: a connection another worker claims (pool-limits.ts) is taken back from the relay first.
    if (this.pooler.refusal !== null || this.pooler.suspended || this.yieldNext > 0) return false;
    // Clients queued in the hub wait for it as JS waiters would.
    if (this.hub !== null && this.hub.queuedNow() > 0) return false;
    return this.clean(s);
  }

  /** Nothing is to happen to the connection at its release (a close, a reset, a cancel on its way, its lifetime over). */
  clean(s: PooledServer): boolean {
    const st = this.pooler.settings;
    if (s.dirty || s.closed || s.conn.sawFatal || s.cancelling > 0 || s.replication !== null) return false;
    if (st.serverResetQuery && st.serverResetQueryAlways) return false;
    // server_round_robin: each transaction takes the connection used longest ago, so none stays with a client.
    if (st.serverRoundRobin) return false;
    const lifetime = (this.db.entry.serverLifetime || st.serverLifetime) * 1000;
    return lifetime > 0 && Date.now() - s.createdAt < lifetime;
  }

  /**
   * The pool's hub, made on first use, when the pooler hands off in C (Pooler.handoff) and this pool can: transaction
   * mode, the native relay with the hub calls. In a worker process the hub holds only servers the worker has slots
   * for (they are in Pool.lent): a yield takes them back (pool-limits.ts), clients queued in C ask for slots (needs).
   */
  hubFor(): PoolHub | null {
    if (this.hub !== null) return this.hub;
    if (!this.pooler.handoff || this.mode !== 'transaction') return null;
    const nr = loadNativeRelay().relay;
    if (nr?.hubCreate == null) return null;
    this.hub = new PoolHub(this, nr);
    return this.hub;
  }

  /**
   * May clients join the hub now (nothing holds the pool: PAUSE, SUSPEND, a shutdown)? A pending yield (yieldNext)
   * does not close it: the hub gives one server back (fill), and takes none meanwhile (PoolHub.fits).
   */
  hubOpen(): boolean {
    return !this.paused && this.pooler.refusal === null && !this.pooler.suspended;
  }

  /** Worker processes: clients queued in the hub wait for a server as JS waiters do (slots are asked for them). */
  hubWaiting(): number {
    return this.hub === null || this.pooler.slots === null ? 0 : this.hub.queuedNow();
  }

  /** Starved hub: an idle connection that fits goes to it. */
  offerIdle(hub: PoolHub): boolean {
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const s = this.idle[i];
      if (s.closed || s.conn.sawFatal) continue;
      this.idle.splice(i, 1);
      if (hub.offer(s)) return true;
      this.idle.splice(i, 0, s);
    }
    return false;
  }

  /** Could a connection be opened now for a client that has waited `waitedMs` (reserve_pool after reserve_pool_timeout)? */
  roomToOpen(waitedMs = 0): boolean {
    const failure = this.loginFailure;
    if (failure && Date.now() - failure.at < this.pooler.settings.serverLoginRetry * 1000) return false;
    return !this.paused && this.size < this.poolSize + this.reserveFor(waitedMs);
  }

  /** The reserve a client that has waited `waitedMs` may use (pgBouncer: once the oldest waited reserve_pool_timeout). */
  private reserveFor(waitedMs: number): number {
    return this.reserveSize > 0 && waitedMs >= this.pooler.settings.reservePoolTimeout * 1000 ? this.reserveSize : 0;
  }

  /** The client's relay has the connection now. */
  lendOut(s: PooledServer): void {
    this.active.delete(s);
    this.lent.add(s);
    s.lastUsed = Date.now();
  }

  /** The relay gave it back to its client's JS (it met what the pooler must see, or was reclaimed). */
  takeBack(s: PooledServer): void {
    if (!this.lent.delete(s)) return;
    this.active.add(s);
  }

  /**
   * Takes lent connections back, those between transactions first; up to `n` (all by default). waitedUs: for JS's
   * waiters, the oldest one's wait (the hub's clients that waited longer are served first).
   */
  reclaimLent(n = Infinity, hubToo = true, waitedUs?: number): void {
    if (this.lent.size === 0) return;
    const hub = this.hub;
    const all = [...this.lent].filter((s) => s.client !== hub);
    const idleFirst = [...all.filter((s) => !s.client?.lentBusy?.(s)), ...all.filter((s) => s.client?.lentBusy?.(s))];
    for (const s of idleFirst.slice(0, n)) if (this.lent.has(s)) s.client?.reclaim?.();
    // The hub's: free and idle ones now, the rest at their transactions' ends, before its queued clients get them.
    if (hub !== null && hubToo) hub.want(n === Infinity ? 1e9 : Math.max(0, n - idleFirst.length), waitedUs);
  }

  /** What the relays counted goes into the stats (SHOW STATS reads them). */
  syncLent(): void {
    for (const s of this.lent) if (s.client !== this.hub) s.client?.lentSync?.();
    this.hub?.lentSync();
  }

  private returnIdle(s: PooledServer): void {
    if (s.closed) return this.pooler.schedule(this);
    if (this.yieldNext > 0) {
      this.yieldNext--;
      return this.retire(s, 'evicted');
    }
    // PAUSE drains: a paused pool lends nothing, even to clients already waiting.
    const first = this.waiters[0];
    // One queue: a client queued in the hub that waited longer than JS's oldest waiter gets it first; in C if the
    // connection has the hub's settings, else the client comes to wait here, ahead of younger waiters (acquire).
    if (first && this.hub !== null && this.hubOpen() && this.hub.queuedLonger(this.waitedUs(first))) {
      if (this.hub.offer(s)) {
        this.pooler.schedule(this); // the offer reset what JS asks of the hub: fill asks again
        return;
      }
      this.hub.sendOldestToJs();
    }
    const w = this.waiters.shift();
    if (w) {
      this.stats.waitTimeUs += Math.round((performance.now() - w.waitStart) * 1000);
      w.granted(this.lend(s, w.client));
      return;
    }
    // Nobody waits in JS: clients queued in the hub get it.
    if (this.hub !== null && this.hubOpen() && this.hub.offer(s)) return;
    // takeIdle takes the last: server_round_robin puts a returned connection first, to be used after the others.
    if (this.pooler.settings.serverRoundRobin) this.idle.unshift(s);
    else this.idle.push(s);
    this.pooler.schedule(this);
  }

  private retire(s: PooledServer, reason: string): void {
    s.log.debug({ reason }, 'closing server connection');
    s.close(reason);
    this.pooler.schedule(this);
  }

  /** The connection closed on its own (the server ended it, the network failed). */
  gone(s: PooledServer, reason: string): void {
    if (!s.closed) s.close(reason);
    const i = this.idle.indexOf(s);
    if (i >= 0) this.idle.splice(i, 1);
    // An active one: its client hears it from the session (serverClosed) and releases it.
    this.pooler.schedule(this);
  }

  /** Opens connections while clients wait and the limits allow, and up to min_pool_size. */
  fill(): void {
    this.pooler.slots?.fill(this);
    // A connection another worker needs goes at its release: a lent one is released now.
    if (this.yieldNext > 0) this.reclaimLent(this.yieldNext);
    if (this.paused || this.pooler.suspended) return;
    if (this.replWaiting.length > 0) {
      this.reclaimLent(this.replWaiting.length);
      this.fillReplication();
    }
    const want = Math.max(this.waiters.length + this.hubWaiting() - this.opening, this.minPoolSize() - this.size);
    let opened = 0;
    for (; opened < want; opened++) {
      if (!this.mayOpen()) break;
      this.open();
    }
    // Waiters a new connection will not serve take a lent one back: the pool grows to its size first, as
    // pgBouncer's would with no idle connection, rather than have clients take turns on one connection.
    const short = this.waiters.length - this.opening;
    // A yield pending (worker processes): the hub's next server to end a transaction comes back, to be closed.
    if (short > 0) this.reclaimLent(short + this.yieldNext, true, this.yieldNext === 0 && this.waiters.length > 0 ? this.waitedUs(this.waiters[0]) : undefined);
    else if (this.yieldNext === 0) this.hub?.want(0); // JS needs none of the hub's servers: its queued clients have them all
  }

  private waitedUs(w: Waiter): number {
    return Math.max(0, (performance.now() - w.waitStart) * 1000);
  }

  minPoolSize(): number {
    // As pgBouncer's janitor: only a pool with clients, or one of a database with a forced user, is kept at it.
    if (this.clients.size === 0 && !this.db.entry.user) return 0;
    return this.db.entry.minPoolSize ?? this.pooler.settings.minPoolSize;
  }

  private mayOpen(): boolean {
    const failure = this.loginFailure;
    if (failure && Date.now() - failure.at < this.pooler.settings.serverLoginRetry * 1000) return false;
    if (this.pooler.slots !== null) return this.pooler.slots.take(this);
    const oldest = this.waiters[0];
    const limit = this.poolSize + (oldest ? this.reserveFor(Date.now() - oldest.since) : 0);
    if (this.size >= limit) return false;
    if (this.size >= this.poolSize) this.pooler.pgbLog.line('LOG', 'taking connection from reserve_pool');
    const maxDb = this.db.entry.maxDbConnections ?? this.pooler.settings.maxDbConnections;
    if (maxDb > 0 && this.db.serverCount() >= maxDb) return this.pooler.evictIdle(this, (p) => p.db === this.db);
    const maxUser = this.pooler.config.users.get(this.user)?.maxUserConnections ?? this.pooler.settings.maxUserConnections;
    if (maxUser > 0 && this.pooler.userServerCount(this.user) >= maxUser) return this.pooler.evictIdle(this, (p) => p.user === this.user);
    return true;
  }

  private open(): void {
    this.opening++;
    const s = new PooledServer(this);
    this.connect(s).then(
      () => {
        this.opening--;
        this.loginFailure = null;
        this.returnIdle(s);
      },
      (err: unknown) => {
        this.opening--;
        this.loginFailed(err, s);
        this.pooler.schedule(this);
      },
    );
  }

  // ---- replication clients: a connection each, opened with the client's own startup parameters ----------

  /**
   * A replication connection for the client, opened for it alone as soon as the pool has room (an idle
   * connection is evicted to make it). `done` gets it, lent to the client, or the error the client ends with.
   */
  acquireReplication(client: PoolClient, kind: ReplicationKind, params: Map<string, string>, done: (s: PooledServer | PoolError) => void): void {
    const refusal = this.pooler.refusal;
    if (refusal !== null) return queueMicrotask(() => done(refusal));
    this.replWaiting.push({ client, since: Date.now(), kind, params, done, cancelled: false });
    this.pooler.schedule(this);
  }

  /** The replication client left before it got its connection. */
  forgetReplication(client: PoolClient): void {
    const i = this.replWaiting.findIndex((w) => w.client === client);
    if (i >= 0) this.replWaiting.splice(i, 1);
    for (const w of this.replOpening) if (w.client === client) w.cancelled = true;
  }

  private fillReplication(): void {
    while (this.replWaiting.length > 0 && this.roomForReplication(this.replWaiting[0])) this.openReplication(this.replWaiting.shift()!);
  }

  /** pgBouncer's launch_new_connection for a replication client: at the pool's size an idle connection is evicted. */
  private roomForReplication(w: ReplicationWaiter): boolean {
    if (this.pooler.slots !== null) return this.pooler.slots.take(this);
    const limit = this.poolSize + this.reserveFor(Date.now() - w.since);
    while (this.size >= limit && this.idle.length > 0) this.idle.shift()!.close('evicted');
    if (this.size >= limit) return false;
    const maxDb = this.db.entry.maxDbConnections ?? this.pooler.settings.maxDbConnections;
    if (maxDb > 0 && this.db.serverCount() >= maxDb) {
      if (this.idle.length > 0) this.idle.shift()!.close('evicted');
      else if (!this.pooler.evictIdle(this, (p) => p.db === this.db)) return false;
    }
    const maxUser = this.pooler.config.users.get(this.user)?.maxUserConnections ?? this.pooler.settings.maxUserConnections;
    if (maxUser > 0 && this.pooler.userServerCount(this.user) >= maxUser) {
      if (this.idle.length > 0) this.idle.shift()!.close('evicted');
      else if (!this.pooler.evictIdle(this, (p) => p.user === this.user)) return false;
    }
    return true;
  }

  private openReplication(w: ReplicationWaiter): void {
    this.replOpening.add(w);
    const s = new PooledServer(this);
    s.replication = w.kind;
    this.connect(s, w.params).then(
      () => {
        this.replOpening.delete(w);
        if (w.cancelled) {
          s.conn.attach(s);
          this.retire(s, 'replication client was closed');
          return;
        }
        this.stats.waitTimeUs += (Date.now() - w.since) * 1000;
        w.done(this.lend(s, w.client));
      },
      (err: unknown) => {
        this.replOpening.delete(w);
        // Not the pool's failure (pgBouncer): a missing REPLICATION role or pg_hba.conf line fails this client
        // alone, and normal clients go on logging in.
        const f = err instanceof LoginError ? err.fields : undefined;
        if (f?.S && f.M) this.pooler.pgbLog.line('ERROR', `S: login failed: ${f.S}: ${f.M}`);
        this.log.warn({ err: f?.M ?? (err as Error)?.message }, 'replication connection login failed');
        this.pooler.pgbLog.closing('login failed', s.createdAt, s.subject());
        if (!w.cancelled) w.done(poolError('login failed'));
        this.pooler.schedule(this);
      },
    );
  }

  /** The replication client is done: its connection closes (never lent to another client). */
  private releaseReplication(s: PooledServer): void {
    this.active.delete(s);
    s.client = null;
    s.conn.attach(s);
    this.retire(s, 'replication client disconnected');
  }

  private async connect(s: PooledServer, replicationParams?: Map<string, string>): Promise<void> {
    const settings = this.pooler.settings;
    const timeoutMs = Math.max(1, settings.serverConnectTimeout * 1000);
    const up = await this.openHost(s, timeoutMs);
    const startup = new Map<string, string>([
      ['user', this.user],
      ['database', this.db.entry.dbname ?? this.db.name],
    ]);
    const e = this.db.entry;
    if (e.clientEncoding) startup.set('client_encoding', e.clientEncoding);
    if (e.datestyle) startup.set('DateStyle', e.datestyle);
    if (e.timezone) startup.set('TimeZone', e.timezone);
    if (e.applicationName) startup.set('application_name', e.applicationName);
    // A replication connection gets the client's own parameters in its startup: a physical walsender takes no SET.
    if (s.replication !== null && replicationParams) {
      for (const [k, v] of replicationParams) startup.set(k, v);
      startup.set('replication', s.replication);
    }
    let logged;
    try {
      logged = await loginServer(up, startup, this.credentials(), timeoutMs);
    } catch (err) {
      up.sock.destroy();
      throw err;
    }
    for (const [k, v] of logged.params) s.params.set(k, v);
    s.key = logged.key;
    s.localAddr = up.sock.localAddress ?? '';
    s.localPort = up.sock.localPort ?? 0;
    s.conn = new ServerConnection(s, up, true);
    const untuned = tuneTcp(up.tcp ?? up.sock, settings);
    if (untuned) s.log.warn({ why: untuned }, 'tcp_* settings not applied to the server connection');
    const from = s.localAddr.includes(':') ? `[${s.localAddr}]` : s.localAddr;
    this.pooler.pgbLog.line('LOG', `new connection to server (from ${from}:${s.localPort})`, s.subject());
    if (s.replication !== null) return; // its parameters are its client's, not the pool's welcome; no connect_query on a walsender
    this.welcome = new Map(logged.params);
    const cq = e.connectQuery;
    if (cq) {
      const r = await s.runInternal(cq);
      if (!r.ok) {
        s.close('connect_query failed');
        throw poolError(`connect_query failed: ${r.error?.M ?? 'unknown error'}`, r.error?.C ?? SqlState.ProtocolViolation);
      }
    }
    s.log.debug('server connection logged in');
  }

  /**
   * A connection to one host of the entry's list, as load_balance_hosts says: round-robin (the default) takes
   * the next host for each connection; disable keeps to the first host that works and moves on when it fails.
   */
  private async openHost(s: PooledServer, timeoutMs: number): Promise<Awaited<ReturnType<typeof openUpstream>>> {
    const db = this.db;
    const n = db.targets.length;
    const roundRobin = (db.entry.loadBalanceHosts ?? 'round-robin') === 'round-robin';
    if (!roundRobin && n > 1) {
      // disable: connections open one at a time, as pgBouncer's, so that one opening while another finds the
      // first host dead starts from the host that works instead of failing on the dead one too.
      const before = db.opening;
      let done!: () => void;
      db.opening = new Promise<void>((resolve) => (done = resolve));
      await before;
      try {
        return await this.openFrom(s, timeoutMs, db, n, false);
      } finally {
        done();
      }
    }
    return this.openFrom(s, timeoutMs, db, n, roundRobin);
  }

  private async openFrom(s: PooledServer, timeoutMs: number, db: PoolDatabase, n: number, roundRobin: boolean): Promise<Awaited<ReturnType<typeof openUpstream>>> {
    // From this connection's own start: connections opening at the same time each go round the whole list.
    const start = db.nextHost % n;
    if (roundRobin) db.nextHost = (start + 1) % n;
    for (let tried = 1; ; tried++) {
      const i = (start + tried - 1) % n;
      s.target = db.targets[i];
      try {
        return await openUpstream(s.target, timeoutMs);
      } catch (err) {
        const reason = err instanceof UpstreamUnreachable ? err.reason : '';
        // pgBouncer's words: its janitor's "connect timeout" past server_connect_timeout.
        const why = reason.startsWith('DNS lookup failed') ? 'server DNS lookup failed' : reason.endsWith('(connect timeout)') ? 'connect timeout' : 'server connect failed';
        this.pooler.pgbLog.closing(why, Date.now(), s.subject());
        if (!roundRobin && db.nextHost === i) db.nextHost = (i + 1) % n;
        if (tried >= n) throw err;
        this.log.warn({ host: s.target.display, err: (err as Error).message }, 'server host failed, trying the next of the host list');
      }
    }
  }

  /** How server connections of this pool log in: the entry's password, else the auth_file secret, else none. */
  private credentials(): LoginCredentials {
    const e = this.db.entry;
    if (e.user && e.password !== undefined) return { user: this.user, password: e.password };
    const secret: Secret | undefined = this.pooler.config.authFile.get(this.user) ?? this.pooler.dynamicSecrets.get(this.user);
    if (secret?.kind === 'plain') return { user: this.user, password: secret.password };
    if (secret?.kind === 'md5') return { user: this.user, md5Hash: secret.hash };
    if (secret?.kind === 'scram' && this.scramKeys) return { user: this.user, scramKeys: this.scramKeys };
    if (e.password !== undefined) return { user: this.user, password: e.password };
    return { user: this.user };
  }

  private loginFailed(err: unknown, s: PooledServer): void {
    let pe: PoolError;
    if (err instanceof LoginError) {
      const f = err.fields ?? {};
      pe = new PoolError({ severity: 'FATAL', code: f.C ?? err.sqlstate ?? SqlState.ConnectionFailure, message: f.M ?? err.message, detail: f.D, hint: f.H });
    } else if (err instanceof PoolError) {
      pe = err;
    } else {
      pe = poolError(`server connection failed: ${(err as Error)?.message ?? String(err)}`, SqlState.ConnectionFailure);
    }
    this.log.warn({ err: pe.message }, 'server login failed');
    if (err instanceof LoginError && err.fields?.S) this.pooler.pgbLog.line('WARNING', `server login failed: ${err.fields.S} ${err.fields.M ?? ''}`);
    this.pooler.pgbLog.closing(pe.message, s.createdAt, s.subject());
    this.loginFailure = { at: Date.now(), error: pe };
    // A database that is down or restarting comes back: waiting clients stay queued (query_wait_timeout bounds
    // the wait) and the janitor tries again after server_login_retry. A refusal (credentials, no such
    // database) will not heal by waiting: those clients hear why at once.
    if (TRANSIENT.has(pe.fields.code)) return;
    for (const w of this.waiters.splice(0)) w.client.poolFailed(pe);
  }

  /** The janitor's pass: waits timed out, idle connections aged, lifetimes over, checks due. */
  tick(now: number): void {
    const st = this.pooler.settings;
    for (const c of this.clients) c.timeouts(now);
    const refusal = this.pooler.refusal;
    if (refusal !== null) for (const w of this.waiters.splice(0)) w.client.poolFailed(refusal);
    if (refusal !== null) for (const w of this.replWaiting.splice(0)) w.done(refusal);
    const waitLimit = (st.queryWaitTimeout || st.queryTimeout) * 1000;
    while (waitLimit > 0 && this.replWaiting.length > 0 && now - this.replWaiting[0].since >= waitLimit) {
      this.replWaiting.shift()!.done(poolError(st.queryWaitTimeout ? 'query_wait_timeout' : 'query_timeout', SqlState.ConnectionFailure));
    }
    // query_timeout covers the wait for a server connection too, the wait at login included (pgBouncer's janitor).
    if (st.queryTimeout > 0) {
      const limit = st.queryTimeout * 1000;
      while (this.waiters.length > 0 && now - this.waiters[0].since > limit) {
        const w = this.waiters.shift()!;
        w.client.poolFailed(poolError('query_timeout', SqlState.ConnectionFailure));
      }
    }
    if (st.queryWaitTimeout > 0) {
      const limit = st.queryWaitTimeout * 1000;
      while (this.waiters.length > 0 && now - this.waiters[0].since >= limit) {
        const w = this.waiters.shift()!;
        w.client.poolFailed(poolError('query_wait_timeout', SqlState.ConnectionFailure));
      }
    }
    // server_fast_close: a session-mode connection marked for closing goes at the end of its client's transaction.
    if (st.serverFastClose && this.mode === 'session') {
      for (const s of this.active) if (s.dirty && !s.closed && s.client?.idleInSession?.()) s.client.poolFailed(poolError(s.closeReason || 'database configuration changed'));
    }
    const idleLimit = st.serverIdleTimeout * 1000;
    const lifetime = (this.db.entry.serverLifetime || st.serverLifetime) * 1000;
    // Lent connections meet server_lifetime and server_idle_timeout at their release: reclaimed when due.
    for (const s of [...this.lent]) {
      const over = (lifetime > 0 && now - s.createdAt >= lifetime) || (idleLimit > 0 && (s.client?.lentQuiet?.(now, s) ?? 0) > idleLimit);
      if (!over) continue;
      if (this.hub !== null && s.client === this.hub) this.hub.take(s);
      else s.client?.reclaim?.();
    }
    if (this.hub !== null) this.hub.tick(st.queryWaitTimeout * 1000, st.queryTimeout * 1000);
    const keep = this.minPoolSize();
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const s = this.idle[i];
      // (server_lifetime 0 closes a connection at its release, once it served a client.)
      const over = (lifetime > 0 && now - s.createdAt >= lifetime) || (idleLimit > 0 && now - s.lastUsed > idleLimit);
      if (over && this.size > keep) {
        this.idle.splice(i, 1);
        this.retire(s, now - s.createdAt >= lifetime ? 'server lifetime over' : 'server idle timeout');
      }
    }
    this.fill();
  }

  /** server_check_delay: an idle connection unused for longer is checked before a client gets it. */
  needsCheck(s: PooledServer, now: number): boolean {
    const st = this.pooler.settings;
    return st.serverCheckDelay >= 0 && !!st.serverCheckQuery && now - s.checkedAt > st.serverCheckDelay * 1000;
  }

  /** Closes every connection (RECONNECT closes them as they come back; KILL at once). */
  closeAll(now: boolean, reason: string): void {
    // The hub's connections are marked first: those it gives back at their transactions' ends are closed then.
    for (const s of this.hub?.held ?? []) {
      s.dirty = true;
      s.closeReason = reason;
      this.hub!.take(s);
    }
    this.reclaimLent();
    for (const s of this.idle.splice(0)) s.close(reason);
    for (const s of this.parked) s.close(reason);
    for (const s of this.active) {
      if (now) s.close(reason);
      else {
        s.dirty = true;
        s.closeReason = reason;
      }
    }
  }

  /**
   * A client cancels what runs on its connection. Until the server has taken every such request, the
   * connection goes to no other client: a late cancel would hit that client's statement (pgBouncer does the same).
   */
  cancelFor(s: PooledServer): void {
    if (!s.key) return;
    s.cancelling++;
    void sendCancel(s.target, s.key, Math.max(1, this.pooler.settings.serverConnectTimeout * 1000), this.log).then(() => {
      if (--s.cancelling > 0 || !this.parked.delete(s)) return;
      this.release(s, true); // released clean before it was parked
    });
  }

  // ---- console operations ----

  /**
   * PAUSE, SUSPEND: no connection is lent from now on (acquire queues clients). `closeIdle` (PAUSE): idle ones
   * are closed, as pgBouncer lets go of a paused database's connections; SUSPEND keeps them.
   */
  holdServers(closeIdle: boolean, reason: string): void {
    this.paused = true;
    this.reclaimLent();
    if (closeIdle) for (const s of this.idle.splice(0)) s.close(reason);
  }

  /** Connections lent to clients or being set up (logging in, running the reset query): PAUSE waits for none. */
  get serversOut(): number {
    // The hub's: once asked back (reclaimLent), those left are in a transaction.
    return this.active.size + this.opening + this.parked.size + this.replOpening.size + (this.hub?.held.length ?? 0);
  }

  /** RESUME: waiting clients get the idle connections, and new ones open for those left (fill). */
  releaseServers(): void {
    if (!this.paused) return;
    this.paused = false;
    while (this.waiters.length > 0) {
      const s = this.takeIdle();
      if (!s) break;
      this.returnIdle(s);
    }
    this.pooler.schedule(this);
  }

  /** Open connections RECONNECT or RELOAD marked for closing: WAIT_CLOSE waits for none. */
  get closingServers(): number {
    let n = 0;
    for (const s of this.lent) if (s.dirty && !s.closed) n++;
    for (const s of this.idle) if (s.dirty && !s.closed) n++;
    for (const s of this.active) if (s.dirty && !s.closed) n++;
    return n;
  }
}

/** A database clients may connect to (a [databases] entry, or one made from the "*" fallback). */
export class PoolDatabase {
  readonly pools = new Map<string, Pool>();
  paused = false;
  disabled = false;
  clientCount = 0;
  /** The host list's next host (load_balance_hosts). */
  nextHost = 0;
  /** load_balance_hosts = disable: the connection being opened now, which the next one waits for. */
  opening: Promise<void> = Promise.resolve();
  /** An auto-database: when it last had neither clients nor server connections (0: it has some now). */
  inactiveSince = 0;

  constructor(
    readonly name: string,
    public entry: DatabaseEntry,
    /** One per host of the entry's host list. */
    public targets: UpstreamTarget[],
    /** Made from the "*" entry (autodb). */
    readonly auto: boolean,
  ) {}

  /** The first host: where the entry is said to point (SHOW DATABASES). */
  get target(): UpstreamTarget {
    return this.targets[0];
  }

  serverCount(): number {
    let n = 0;
    for (const p of this.pools.values()) n += p.size;
    return n;
  }
}

/** All the pools, their limits and the janitor. */
export class Pooler {
  readonly databases = new Map<string, PoolDatabase>();
  /** Transaction pools hand server connections between clients in the native hub (pool-hub.ts); off: JS does. */
  handoff = false;
  readonly log: Logger;
  config: PoolerConfig;
  suspended = false;
  /** The console holds every pool (PAUSE, SUSPEND): one made meanwhile starts held, as one of a paused database. */
  holding = false;
  /** Secrets auth_query found (user → secret). */
  readonly dynamicSecrets = new Map<string, Secret>();
  clientCount = 0;
  /** Set in a worker process: the limits are counted across workers. */
  slots: ServerSlots | null = null;
  /** The ini's logfile, in pgBouncer's format. */
  readonly pgbLog: PgBouncerLog;
  private readonly due = new Set<Pool>();
  private dueScheduled = false;
  private readonly janitor: NodeJS.Timeout;
  private readonly userClients = new Map<string, number>();

  constructor(private readonly opts: PoolerOptions) {
    this.config = opts.config;
    this.log = opts.logger.child({ component: 'pooler' });
    this.pgbLog = new PgBouncerLog(opts.config.settings.logfile, () => this.settings.verbose, () => this.settings.logDisconnections);
    this.janitor = setInterval(() => this.tick(), 250);
    this.janitor.unref();
  }

  get settings() {
    return this.config.settings;
  }

  /** The database entry a client names, or null (pgBouncer: "no such database"). */
  database(name: string): PoolDatabase | null {
    let db = this.databases.get(name);
    if (db) return db;
    const entry = this.config.databases.get(name);
    if (entry) {
      db = new PoolDatabase(name, entry, this.opts.targetsFor(entry, this.opts.defaultTarget), false);
    } else {
      const star = this.config.databases.get('*');
      if (!star) return null;
      const e: DatabaseEntry = { ...star, name, dbname: star.dbname ?? name };
      db = new PoolDatabase(name, e, this.opts.targetsFor(e, this.opts.defaultTarget), true);
      this.pgbLog.line('LOG', `registered new auto-database: ${name}`);
    }
    this.databases.set(name, db);
    return db;
  }

  /** The pool a client of `db` logging in as `user` uses (the entry's forced user shares one pool). */
  pool(db: PoolDatabase, user: string): Pool {
    const serverUser = db.entry.user ?? user;
    let p = db.pools.get(serverUser);
    if (!p) {
      const mode = this.config.users.get(user)?.poolMode ?? db.entry.poolMode ?? this.settings.poolMode;
      p = new Pool(this, db, serverUser, mode);
      db.pools.set(serverUser, p);
      // Else it would lend connections until the console's next look (a client logging in under PAUSE gets none).
      if (this.holding || db.paused) p.holdServers(false, 'pause mode');
    }
    return p;
  }

  /** A client logs in: the client-count limits, or the error pgBouncer gives. */
  admit(db: PoolDatabase, user: string): PoolError | null {
    const st = this.settings;
    if (st.maxClientConn > 0 && this.clientCount >= st.maxClientConn) {
      return poolError('no more connections allowed (max_client_conn)', SqlState.TooManyConnections);
    }
    if (db.disabled) return poolError(`database "${db.name}" is disabled`, SqlState.ConnectionFailure);
    const maxDb = db.entry.maxDbClientConnections ?? st.maxDbClientConnections;
    if (maxDb > 0 && db.clientCount >= maxDb) return poolError('no more connections allowed (max_db_client_connections)', SqlState.TooManyConnections);
    const maxUser = this.config.users.get(user)?.maxUserClientConnections ?? st.maxUserClientConnections;
    if (maxUser > 0 && (this.userClients.get(user) ?? 0) >= maxUser) {
      return poolError('no more connections allowed (max_user_client_connections)', SqlState.TooManyConnections);
    }
    this.clientCount++;
    db.clientCount++;
    this.userClients.set(user, (this.userClients.get(user) ?? 0) + 1);
    this.slots?.admit(db, user);
    return null;
  }

  /** The client admitted by admit() left. */
  leave(db: PoolDatabase, user: string): void {
    this.slots?.leave(db, user);
    this.clientCount--;
    db.clientCount--;
    const n = (this.userClients.get(user) ?? 1) - 1;
    if (n > 0) this.userClients.set(user, n);
    else this.userClients.delete(user);
  }

  userServerCount(user: string): number {
    let n = 0;
    for (const db of this.databases.values()) {
      const p = db.pools.get(user);
      if (p) n += p.size;
    }
    return n;
  }

  /** At a limit shared by pools: closes an idle connection of another matching pool to make room. */
  evictIdle(asking: Pool, match: (p: Pool) => boolean): boolean {
    for (const db of this.databases.values()) {
      for (const p of db.pools.values()) {
        if (p === asking || !match(p) || p.idle.length === 0) continue;
        const s = p.idle.shift()!;
        s.close('evicted');
        return true; // out of the idle list, it no longer counts: the asking pool opens in its place now
      }
    }
    // A lent connection is idle too: taken back from its client's relay, it is evicted as any idle one.
    for (const db of this.databases.values()) {
      for (const p of db.pools.values()) {
        if (p === asking || !match(p) || p.lent.size === 0) continue;
        p.reclaimLent(1);
        if (p.idle.length > 0) {
          p.idle.shift()!.close('evicted');
          return true;
        }
      }
    }
    return false;
  }

  /** A pool has work (waiters, a returned connection): it runs once after the current event. */
  schedule(p: Pool): void {
    this.due.add(p);
    if (this.dueScheduled) return;
    this.dueScheduled = true;
    queueMicrotask(() => {
      this.dueScheduled = false;
      const pools = [...this.due];
      this.due.clear();
      for (const pool of pools) pool.fill();
    });
  }

  private tick(): void {
    const now = Date.now();
    // pgBouncer's janitor: a database with a forced user and min_pool_size has its pool before any client comes.
    for (const [name, e] of this.config.databases) {
      if (name === '*' || !e.user || (e.minPoolSize ?? this.settings.minPoolSize) <= 0) continue;
      const db = this.database(name);
      if (db && !db.pools.has(e.user)) this.pool(db, e.user);
    }
    for (const db of this.databases.values()) for (const p of db.pools.values()) p.tick(now);
    this.dropIdleAutodbs(now);
  }

  /**
   * pgBouncer's autodb_idle_timeout: a database made from "*" that has had neither clients nor server connections
   * for that long is forgotten, pools, counters and all, so that clients naming ever new databases cannot grow the
   * pooler without end. One named again is made anew.
   */
  private dropIdleAutodbs(now: number): void {
    const limitMs = this.settings.autodbIdleTimeout * 1000;
    for (const [name, db] of this.databases) {
      if (!db.auto) continue;
      let busy = db.clientCount > 0;
      for (const p of db.pools.values()) busy ||= p.clients.size > 0 || p.size > 0;
      if (busy) db.inactiveSince = 0;
      else if (db.inactiveSince === 0) db.inactiveSince = now;
      else if (limitMs > 0 && !db.paused && now - db.inactiveSince > limitMs) {
        for (const p of db.pools.values()) p.closeAll(true, 'auto-database idle');
        this.databases.delete(name);
        this.log.debug({ database: name }, 'idle auto-database removed (autodb_idle_timeout)');
      }
    }
  }

  /** Shutting down (WAIT_FOR_SERVERS): every waiting client, and each that asks from now on, gets this error. */
  refusal: PoolError | null = null;

  /** Those waiting now hear it on the janitor's next pass, as in pgBouncer. */
  refuseWaiters(err: PoolError): void {
    this.refusal = err;
    for (const p of this.pools()) p.reclaimLent();
  }

  /** Connections lent out or being set up, in every pool (WAIT_FOR_SERVERS waits until none). */
  get serversOut(): number {
    let n = 0;
    for (const p of this.pools()) n += p.serversOut;
    return n;
  }

  /** Every pool (SHOW POOLS, RECONNECT, ...). */
  *pools(): Iterable<Pool> {
    for (const db of this.databases.values()) yield* db.pools.values();
  }

  /** A new configuration (RELOAD, SIGHUP): clients stay; entries whose target changed reconnect as they come back. */
  reload(config: PoolerConfig): void {
    this.config = config;
    // The relays were started on the old settings (max_prepared_statements): they start again on the new ones.
    for (const p of this.pools()) p.reclaimLent();
    for (const [name, db] of this.databases) {
      const entry = config.databases.get(name) ?? (db.auto ? config.databases.get('*') : undefined);
      if (!entry) continue;
      const e = db.auto ? { ...entry, name, dbname: entry.dbname ?? name } : entry;
      const targets = this.opts.targetsFor(e, this.opts.defaultTarget);
      const moved = targets.map((t) => t.display).join() !== db.targets.map((t) => t.display).join() || (e.dbname ?? name) !== (db.entry.dbname ?? name) || e.user !== db.entry.user;
      db.entry = e;
      db.targets = targets;
      if (moved) for (const p of db.pools.values()) p.closeAll(false, 'database configuration changed');
    }
  }

  close(): void {
    clearInterval(this.janitor);
    this.pgbLog.close();
    for (const p of this.pools()) p.closeAll(true, 'pooler shutting down');
  }
}

export type { ResponseHandler };
