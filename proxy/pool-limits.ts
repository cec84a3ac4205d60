// Pool limits across worker processes. pgBouncer counts its limits per process, so N processes behind
// so_reuseport allow N times default_pool_size, max_client_conn, max_db_connections...: its users' most
// upvoted complaint. Here the primary counts (PoolLimits) and each worker asks it (WorkerSlots, the pool's
// ServerSlots): a pool opens a server connection only on a slot the primary granted, and gives it back when
// the connection closes; a client logging in is admitted by the primary's counts. IPC happens when a
// connection opens or closes and when a client logs in or out, never per transaction: between transactions
// a worker lends its own connections as one process does.
//
// When a pool is at its limit and clients wait in one worker, the primary asks others to give up a
// connection of it: an idle one (idle a little while, so a client between two transactions keeps its own),
// or the next one released when that worker holds two more than the asking one (or the asking worker has
// none and has waited a while), so every worker with clients gets its fair part. At max_db_connections or
// max_user_connections, idle connections of the other pools go at once, as pgBouncer's evict does.
import type { Logger } from 'pino';
import { CONSOLE_DATABASE } from './console.js';
import type { IpcChannel } from './ipc.js';
import { poolError, type Pool, type PoolDatabase, type PoolError, type PooledServer, type Pooler, type ServerSlots } from './pool.js';
import { SqlState } from './protocol.js';

const TAG = 'steadytext-limits';
/** A connection of a pool idle this long may go to another worker whose clients wait for one. */
const SOFT_IDLE_MS = 100;
/** A worker whose clients have waited this long with no connection of the pool takes one from the busiest. */
const STARVE_MS = 500;
/** How often asks no longer needed are withdrawn, yields looked at again and the primary re-decides. */
const TICK_MS = 100;

/** A pool's limits as the worker that asks reads them from its configuration (the same in every worker). */
export interface SlotLimits {
  poolSize: number;
  reserveSize: number;
  reserveTimeoutMs: number;
  maxDb: number;
  maxUser: number;
  minPool: number;
}

type YieldKind = 'soft' | 'now' | 'hard';
type Yields = Record<YieldKind, boolean>;
const NO_YIELDS: Yields = { soft: false, now: false, hard: false };

type FromWorker =
  | { tag: typeof TAG; kind: 'ask'; db: string; user: string; limits: SlotLimits; wait: number; min: number }
  | { tag: typeof TAG; kind: 'withdraw'; db: string; user: string; wait: number; min: number }
  | { tag: typeof TAG; kind: 'release'; db: string; user: string; n: number; yielded: YieldKind | null }
  | { tag: typeof TAG; kind: 'admit'; id: number; db: string; user: string; maxClient: number; maxDb: number; maxUser: number; console?: boolean }
  | { tag: typeof TAG; kind: 'leave'; db: string; user: string; n: number };
type ToWorker =
  | { tag: typeof TAG; kind: 'grant'; db: string; user: string; min: boolean; reserve: boolean }
  | { tag: typeof TAG; kind: 'yield'; db: string; user: string; yields: Yields }
  | { tag: typeof TAG; kind: 'admitted'; id: number; error: string | null };

const keyOf = (db: string, user: string) => `${db}\u0000${user}`;

// ---- the primary --------------------------------------------------------------------------------------------

/** One worker's part of a pool, as the primary counts it. */
interface Share {
  /** Slots granted and not given back (open connections, and those opening). */
  held: number;
  /** Slots asked for clients that wait, and for min_pool_size. */
  askWait: number;
  askMin: number;
  /** Since when askWait has been above 0. */
  waitSince: number;
  /** The yields this worker was asked for and has not done. */
  sent: Yields;
}

interface GlobalPool {
  db: string;
  user: string;
  limits: SlotLimits;
  shares: Map<number, Share>;
}

/** Why a pool may not open a connection now (null: it may; 'reserve': from reserve_pool). */
type Block = null | 'reserve' | 'pool' | 'db' | 'user';

/** The primary's counts: server connections per pool and worker, clients per database and user, the fair queue. */
export class PoolLimits {
  private readonly channels = new Map<number, IpcChannel>();
  private readonly pools = new Map<string, GlobalPool>();
  /** Clients admitted per worker: key (database, user) → count. */
  private readonly clients = new Map<number, Map<string, number>>();
  private readonly log: Logger;
  private timer: NodeJS.Timeout | null = null;

  constructor(logger: Logger) {
    this.log = logger.child({ component: 'pool-limits' });
  }

  /** Serves a (re)started worker's channel; the returned detach forgets all it held (its process is gone). */
  attach(channel: IpcChannel, worker: number): () => void {
    this.channels.set(worker, channel);
    const off = channel.onMessage((m: FromWorker) => {
      if (m?.tag === TAG) this.receive(worker, m);
    });
    return () => {
      off();
      if (this.channels.get(worker) === channel) this.channels.delete(worker);
      this.clients.delete(worker);
      for (const p of this.pools.values()) p.shares.delete(worker);
      this.dispatch();
    };
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Server connections counted now for a pool (tests, SHOW). */
  held(db: string, user: string): number {
    const p = this.pools.get(keyOf(db, user));
    return p ? this.total(p) : 0;
  }

  private send(worker: number, m: ToWorker): void {
    this.channels.get(worker)?.send(m);
  }

  private receive(w: number, m: FromWorker): void {
    switch (m.kind) {
      case 'admit':
        return this.send(w, { tag: TAG, kind: 'admitted', id: m.id, error: this.admit(w, m) });
      case 'leave': {
        const mine = this.clients.get(w);
        const k = keyOf(m.db, m.user);
        const n = (mine?.get(k) ?? 0) - m.n;
        if (n > 0) mine!.set(k, n);
        else mine?.delete(k);
        return;
      }
      case 'ask': {
        const p = this.pool(m.db, m.user);
        p.limits = m.limits;
        const sh = this.share(p, w);
        if (sh.askWait === 0 && m.wait > 0) sh.waitSince = Date.now();
        sh.askWait += m.wait;
        sh.askMin += m.min;
        break;
      }
      case 'withdraw': {
        const sh = this.pools.get(keyOf(m.db, m.user))?.shares.get(w);
        if (!sh) return;
        sh.askWait = Math.max(0, sh.askWait - m.wait);
        sh.askMin = Math.max(0, sh.askMin - m.min);
        break;
      }
      case 'release': {
        const sh = this.pools.get(keyOf(m.db, m.user))?.shares.get(w);
        if (!sh) return;
        sh.held = Math.max(0, sh.held - m.n);
        if (m.yielded) sh.sent[m.yielded] = false;
        break;
      }
    }
    this.dispatch();
  }

  /**
   * max_client_conn, max_db_client_connections, max_user_client_connections over every worker's clients. Console
   * sessions count as one process counts them (console-host.ts consoleLimits): in max_db_client_connections of the
   * console's database, and in a console login's max_user_client_connections with the user's pooled clients; never in
   * max_client_conn, nor in a pooled client's user limit.
   */
  private admit(w: number, m: Extract<FromWorker, { kind: 'admit' }>): string | null {
    let all = 0;
    let db = 0;
    let user = 0;
    for (const counts of this.clients.values()) {
      for (const [k, n] of counts) {
        const [d, u] = k.split('\u0000');
        const ofConsole = d === CONSOLE_DATABASE;
        if (!ofConsole) all += n;
        if (d === m.db) db += n;
        if (u === m.user && (m.console || !ofConsole)) user += n;
      }
    }
    if (m.maxClient > 0 && all >= m.maxClient) return 'no more connections allowed (max_client_conn)';
    if (m.maxDb > 0 && db >= m.maxDb) return 'no more connections allowed (max_db_client_connections)';
    if (m.maxUser > 0 && user >= m.maxUser) return 'no more connections allowed (max_user_client_connections)';
    let mine = this.clients.get(w);
    if (!mine) this.clients.set(w, (mine = new Map()));
    const k = keyOf(m.db, m.user);
    mine.set(k, (mine.get(k) ?? 0) + 1);
    return null;
  }

  private pool(db: string, user: string): GlobalPool {
    const k = keyOf(db, user);
    let p = this.pools.get(k);
    if (!p) {
      p = { db, user, limits: { poolSize: 0, reserveSize: 0, reserveTimeoutMs: 0, maxDb: 0, maxUser: 0, minPool: 0 }, shares: new Map() };
      this.pools.set(k, p);
    }
    return p;
  }

  private share(p: GlobalPool, w: number): Share {
    let sh = p.shares.get(w);
    if (!sh) p.shares.set(w, (sh = { held: 0, askWait: 0, askMin: 0, waitSince: 0, sent: { ...NO_YIELDS } }));
    return sh;
  }

  private total(p: GlobalPool): number {
    let n = 0;
    for (const sh of p.shares.values()) n += sh.held;
    return n;
  }

  private totalWhere(match: (p: GlobalPool) => boolean): number {
    let n = 0;
    for (const p of this.pools.values()) if (match(p)) n += this.total(p);
    return n;
  }

  private oldestWait(p: GlobalPool): number {
    let since = Infinity;
    for (const sh of p.shares.values()) if (sh.askWait > 0 && sh.waitSince < since) since = sh.waitSince;
    return since;
  }

  /** pgBouncer's limits (pool_size, then reserve_pool after reserve_pool_timeout, max_db/user_connections) over all workers. */
  private block(p: GlobalPool, now: number): Block {
    const l = p.limits;
    const total = this.total(p);
    let limit = l.poolSize;
    if (l.reserveSize > 0 && now - this.oldestWait(p) >= l.reserveTimeoutMs) limit += l.reserveSize;
    if (total >= limit) return 'pool';
    if (l.maxDb > 0 && this.totalWhere((q) => q.db === p.db) >= l.maxDb) return 'db';
    if (l.maxUser > 0 && this.totalWhere((q) => q.user === p.user) >= l.maxUser) return 'user';
    return total >= l.poolSize ? 'reserve' : null;
  }

  /** The worker whose waiting clients are served next: the one holding fewest of the pool's connections, then the longest waiting. */
  private nextAsker(p: GlobalPool): [number, Share] | null {
    let best: [number, Share] | null = null;
    for (const e of p.shares) {
      const sh = e[1];
      if (sh.askWait === 0) continue;
      if (best === null || sh.held < best[1].held || (sh.held === best[1].held && sh.waitSince < best[1].waitSince)) best = e;
    }
    return best;
  }

  private grant(p: GlobalPool, w: number, sh: Share, min: boolean, reserve: boolean): void {
    sh.held++;
    if (min) sh.askMin--;
    else if (--sh.askWait > 0) sh.waitSince = Date.now();
    this.send(w, { tag: TAG, kind: 'grant', db: p.db, user: p.user, min, reserve });
  }

  /** Grants what the limits allow, pools whose clients have waited longest first; then asks for yields where clients still wait. */
  private dispatch(): void {
    const now = Date.now();
    for (let progress = true; progress; ) {
      progress = false;
      const waiting = [...this.pools.values()].filter((p) => this.oldestWait(p) < Infinity).sort((a, b) => this.oldestWait(a) - this.oldestWait(b));
      for (const p of waiting) {
        const b = this.block(p, now);
        if (b !== null && b !== 'reserve') continue;
        const [w, sh] = this.nextAsker(p)!;
        this.grant(p, w, sh, false, b === 'reserve');
        progress = true;
      }
    }
    // min_pool_size: only within pool_size and the other limits, and never by taking another worker's connection.
    for (const p of this.pools.values()) {
      for (const [w, sh] of p.shares) {
        while (sh.askMin > 0 && this.total(p) < p.limits.minPool && this.block(p, now) === null) this.grant(p, w, sh, true, false);
      }
    }
    this.askYields(now);
    const waiting = [...this.pools.values()].some((p) => this.oldestWait(p) < Infinity);
    if (waiting && this.timer === null) {
      this.timer = setInterval(() => this.dispatch(), TICK_MS);
      this.timer.unref();
    } else if (!waiting && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  /** Where a pool's clients wait and its limit is reached: which workers should give up which connections. */
  private askYields(now: number): void {
    const want = new Map<Share, Yields>();
    const wanted = (sh: Share): Yields => {
      let y = want.get(sh);
      if (!y) want.set(sh, (y = { ...NO_YIELDS }));
      return y;
    };
    for (const p of this.pools.values()) {
      const next = this.nextAsker(p);
      if (next === null) continue;
      const b = this.block(p, now);
      if (b === null || b === 'reserve') continue;
      const [asker, a] = next;
      // The same pool in other workers: an idle connection goes where clients wait; a busy one when it is unfair.
      let busiest: Share | null = null;
      for (const [w, sh] of p.shares) {
        if (w === asker || sh.held === 0) continue;
        if (sh.held >= a.held) wanted(sh).soft = true;
        if (busiest === null || sh.held > busiest.held) busiest = sh;
      }
      if (busiest !== null && (busiest.held >= a.held + 2 || (a.held === 0 && now - a.waitSince >= STARVE_MS))) wanted(busiest).hard = true;
      // At a limit shared by pools, the other pools' idle connections (pgBouncer's evict).
      if (b === 'db' || b === 'user') {
        for (const q of this.pools.values()) {
          if (q === p || (b === 'db' ? q.db !== p.db : q.user !== p.user)) continue;
          for (const sh of q.shares.values()) if (sh.held > 0) wanted(sh).now = true;
        }
      }
    }
    for (const p of this.pools.values()) {
      for (const [w, sh] of p.shares) {
        const y = want.get(sh) ?? NO_YIELDS;
        if (y.soft === sh.sent.soft && y.now === sh.sent.now && y.hard === sh.sent.hard) continue;
        sh.sent = { ...y };
        this.send(w, { tag: TAG, kind: 'yield', db: p.db, user: p.user, yields: { ...y } });
      }
    }
  }
}

// ---- a worker -----------------------------------------------------------------------------------------------

/** A pool's slots as a worker sees them. */
interface Local {
  db: string;
  user: string;
  /** Slots granted and not given back. */
  held: number;
  askWait: number;
  askMin: number;
  yields: Yields;
  /** pool.yieldNext was set for a hard yield: when it is back to 0, the connection has gone. */
  hardPending: boolean;
}

/** Client admissions of one (database, user): see admit() for how a leave is matched to them. */
interface Admissions {
  live: number;
  pending: number;
  refused: number;
  /** Leaves matched to pending admissions: their answer, when it comes, is given back at once. */
  abandoned: number;
  held: number;
}

/**
 * A worker's side (the pooler's ServerSlots): asks the primary for server connection slots and client
 * admissions, gives them back, and closes connections the primary asks for.
 */
export class WorkerSlots implements ServerSlots {
  private readonly local = new Map<string, Local>();
  /** The same, by pool object: fill() runs after most transactions and must not build a key each time. */
  private readonly byPool = new WeakMap<Pool, Local>();
  private readonly admissions = new Map<string, Admissions>();
  private readonly tickets = new Map<number, (error: PoolError | null) => void>();
  private nextTicket = 1;
  /** The admission of the client admit() saw last, for the authenticator that runs next (ticket()). */
  private last: { db: string; user: string; answer: Promise<PoolError | null> } | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly pooler: Pooler,
    private readonly channel: IpcChannel,
  ) {
    channel.onMessage((m: ToWorker) => {
      if (m?.tag === TAG) this.receive(m);
    });
    // The primary is gone: nobody to ask. The worker stops (workers.ts); until then, waiting clients wait.
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  close(): void {
    clearInterval(this.timer);
  }

  // ---- server connections ----

  private state(db: string, user: string): Local {
    const k = keyOf(db, user);
    let st = this.local.get(k);
    if (!st) this.local.set(k, (st = { db, user, held: 0, askWait: 0, askMin: 0, yields: { ...NO_YIELDS }, hardPending: false }));
    return st;
  }

  private of(pool: Pool): Local {
    let st = this.byPool.get(pool);
    if (st === undefined) this.byPool.set(pool, (st = this.state(pool.db.name, pool.user)));
    return st;
  }

  private poolOf(st: Local): Pool | undefined {
    return this.pooler.databases.get(st.db)?.pools.get(st.user);
  }

  /** Connections the pool would open now: for waiting clients (in JS, or queued in the native hub), and up to min_pool_size. */
  private needs(pool: Pool): { wait: number; min: number } {
    if (pool.paused || this.pooler.suspended) return { wait: 0, min: 0 };
    const failure = pool.loginFailure;
    if (failure && Date.now() - failure.at < this.pooler.settings.serverLoginRetry * 1000) return { wait: 0, min: 0 };
    const wait = Math.max(0, pool.waiters.length + pool.replicationWaiting + pool.hubWaiting() - pool.opening);
    return { wait, min: Math.max(0, pool.minPoolSize() - pool.size - wait) };
  }

  private limits(pool: Pool): SlotLimits {
    const st = this.pooler.settings;
    const u = this.pooler.config.users.get(pool.user);
    return {
      poolSize: pool.poolSize,
      reserveSize: pool.reserveSize,
      reserveTimeoutMs: st.reservePoolTimeout * 1000,
      maxDb: pool.db.entry.maxDbConnections ?? st.maxDbConnections,
      maxUser: u?.maxUserConnections ?? st.maxUserConnections,
      minPool: pool.db.entry.minPoolSize ?? st.minPoolSize,
    };
  }

  private release(st: Local, n: number, yielded: YieldKind | null): void {
    st.held -= n;
    this.channel.send({ tag: TAG, kind: 'release', db: st.db, user: st.user, n, yielded } satisfies FromWorker);
  }

  fill(pool: Pool): void {
    const st = this.of(pool);
    if (st.hardPending && pool.yieldNext === 0) {
      st.hardPending = false;
      st.yields.hard = false;
      // The connection it closed is out of pool.size (a pool made anew since has none to give; the primary hears it is done).
      this.release(st, st.held > pool.size ? 1 : 0, 'hard');
    }
    if (st.yields.soft || st.yields.now) this.yieldIdle(pool, st);
    const spare = st.held - pool.size;
    if (spare <= 0) return;
    const { wait, min } = this.needs(pool);
    if (spare > wait + min) this.release(st, spare - wait - min, null);
  }

  take(pool: Pool): boolean {
    const st = this.of(pool);
    if (st.held > pool.size) return true;
    const { wait, min } = this.needs(pool);
    if (wait > st.askWait || min > st.askMin) {
      const more = { wait: Math.max(0, wait - st.askWait), min: Math.max(0, min - st.askMin) };
      st.askWait += more.wait;
      st.askMin += more.min;
      this.channel.send({ tag: TAG, kind: 'ask', db: st.db, user: st.user, limits: this.limits(pool), ...more } satisfies FromWorker);
    }
    return false;
  }

  /**
   * Closes an idle connection another worker needs more: idle a while (soft), or any idle one (now, hard). A
   * connection lent to its client's relay is idle between that client's transactions: taken back, it goes too; one
   * in the native hub is idle when free or held between transactions (quiet as its holder's client), and leaves it.
   */
  private yieldIdle(pool: Pool, st: Local): boolean {
    const now = Date.now();
    const kindOf = (idleMs: number): YieldKind | null => (st.yields.now ? 'now' : st.yields.hard ? 'hard' : idleMs >= SOFT_IDLE_MS ? 'soft' : null);
    for (let i = 0; i < pool.idle.length; i++) {
      const s = pool.idle[i];
      if (s.closed) continue;
      const kind = kindOf(now - s.lastUsed);
      if (kind === null) continue;
      pool.idle.splice(i, 1);
      return this.yielded(pool, st, s, kind);
    }
    for (const s of [...pool.lent]) {
      const c = s.client;
      if (s.closed || c === null || c.lentBusy?.(s)) continue;
      const kind = kindOf(c.lentQuiet?.(now, s) ?? 0);
      if (kind === null) continue;
      if (c === pool.hub) {
        if (pool.hub.yieldServer(s)) return this.yielded(pool, st, s, kind);
        continue;
      }
      c.reclaim?.();
      // Released between transactions: idle now, unless a client of this worker was waiting and has it.
      const i = pool.idle.indexOf(s);
      if (i < 0) continue;
      pool.idle.splice(i, 1);
      return this.yielded(pool, st, s, kind);
    }
    return false;
  }

  private yielded(pool: Pool, st: Local, s: PooledServer, kind: YieldKind): true {
    s.close('evicted');
    st.yields[kind] = false;
    if (kind === 'hard' && st.hardPending) {
      st.hardPending = false;
      pool.yieldNext = 0;
    }
    this.release(st, 1, kind);
    return true;
  }

  private receive(m: ToWorker): void {
    if (m.kind === 'admitted') return this.admitted(m.id, m.error);
    const st = this.state(m.db, m.user);
    const pool = this.poolOf(st);
    if (m.kind === 'grant') {
      st.held++;
      if (m.min) st.askMin = Math.max(0, st.askMin - 1);
      else st.askWait = Math.max(0, st.askWait - 1);
      if (m.reserve) this.pooler.pgbLog.line('LOG', 'taking connection from reserve_pool');
      // Used by the fill pass it schedules, or given back there when no longer needed.
      if (pool) this.pooler.schedule(pool);
      else this.release(st, 1, null);
      return;
    }
    st.yields = { ...m.yields, hard: st.yields.hard };
    if (m.yields.hard && !st.yields.hard) {
      st.yields.hard = true;
      // An idle connection goes now; else the next one released (Pool.returnIdle).
      if (!pool || !this.yieldIdle(pool, st)) {
        if (pool) {
          pool.yieldNext = 1;
          st.hardPending = true;
        }
      }
    } else if (!m.yields.hard && st.yields.hard) {
      st.yields.hard = false;
      if (st.hardPending && pool) {
        pool.yieldNext = 0;
        this.pooler.schedule(pool); // the hub is asked for no server any more (Pool.fill)
      }
      st.hardPending = false;
    }
    if (pool && (st.yields.soft || st.yields.now)) this.pooler.schedule(pool);
  }

  /** Asks no longer needed are withdrawn (not at once: waiters come and go with every transaction); soft yields looked at again. */
  private tick(): void {
    for (const [k, st] of this.local) {
      const pool = this.poolOf(st);
      if (!pool) {
        if (st.held > 0) this.release(st, st.held, null);
        if (st.askWait > 0 || st.askMin > 0) this.withdraw(st, st.askWait, st.askMin);
        if (st.held === 0 && !st.yields.soft && !st.yields.now && !st.yields.hard) this.local.delete(k);
        continue;
      }
      // Only whether a worker asks matters to the primary (whom to grant, where to ask for yields), not how much:
      // asks go back once nothing waits, not as the number of waiting clients moves with each transaction.
      const { wait, min } = this.needs(pool);
      const spare = Math.max(0, st.held - pool.size);
      const waitGone = wait <= spare && st.askWait > 0;
      const minGone = min <= Math.max(0, spare - wait) && st.askMin > 0;
      if (waitGone || minGone) this.withdraw(st, waitGone ? st.askWait : 0, minGone ? st.askMin : 0);
      if (st.yields.soft || st.yields.now) this.pooler.schedule(pool);
    }
  }

  private withdraw(st: Local, wait: number, min: number): void {
    st.askWait -= wait;
    st.askMin -= min;
    this.channel.send({ tag: TAG, kind: 'withdraw', db: st.db, user: st.user, wait, min } satisfies FromWorker);
  }

  // ---- clients ----

  private admission(db: string, user: string): Admissions {
    const k = keyOf(db, user);
    let a = this.admissions.get(k);
    if (!a) this.admissions.set(k, (a = { live: 0, pending: 0, refused: 0, abandoned: 0, held: 0 }));
    return a;
  }

  /**
   * A client the local limits let in asks the primary. Leaves name no client, so the counts go by number:
   * a leave is matched to a refused admission first, then to a pending one (given back when answered), then to
   * a held one. Whichever client it was, the primary counts at least the clients that hold an admission.
   */
  admit(db: PoolDatabase, user: string): void {
    const st = this.pooler.settings;
    this.request(db.name, user, {
      maxClient: st.maxClientConn,
      maxDb: db.entry.maxDbClientConnections ?? st.maxDbClientConnections,
      maxUser: this.pooler.config.users.get(user)?.maxUserClientConnections ?? st.maxUserClientConnections,
    });
  }

  /**
   * A console login, counted across workers as one process counts its console sessions (admin_users are counted,
   * never refused); the authenticator waits for the answer, as for a pooled client (ticket()).
   */
  admitConsole(user: string, admin: boolean): void {
    const st = this.pooler.settings;
    const maxUser = this.pooler.config.users.get(user)?.maxUserClientConnections ?? st.maxUserClientConnections;
    this.request(CONSOLE_DATABASE, user, { maxClient: 0, maxDb: admin ? 0 : st.maxDbClientConnections, maxUser: admin ? 0 : maxUser }, true);
  }

  /** The console session admitConsole() counted has ended. */
  leaveConsole(user: string): void {
    this.clientLeft(CONSOLE_DATABASE, user);
  }

  private request(dbName: string, user: string, limits: { maxClient: number; maxDb: number; maxUser: number }, ofConsole = false): void {
    const a = this.admission(dbName, user);
    a.live++;
    a.pending++;
    const id = this.nextTicket++;
    const answer = new Promise<PoolError | null>((resolve) => this.tickets.set(id, resolve));
    this.last = { db: dbName, user, answer };
    // The authenticator asks for it in the same turn (client.ts: admit, then the authentication starts).
    queueMicrotask(() => {
      if (this.last?.answer === answer) this.last = null;
    });
    this.channel.send({ tag: TAG, kind: 'admit', id, db: dbName, user, ...limits, ...(ofConsole ? { console: true } : {}) } satisfies FromWorker);
    const ticketDb = dbName;
    const ticketUser = user;
    void answer.then((error) => {
      a.pending--;
      if (a.abandoned > 0) {
        a.abandoned--;
        if (error === null) this.channel.send({ tag: TAG, kind: 'leave', db: ticketDb, user: ticketUser, n: 1 } satisfies FromWorker);
      } else if (error !== null) a.refused++;
      else a.held++;
    });
  }

  leave(db: PoolDatabase, user: string): void {
    this.clientLeft(db.name, user);
  }

  private clientLeft(dbName: string, user: string): void {
    const a = this.admission(dbName, user);
    a.live--;
    if (a.refused > 0) a.refused--;
    else if (a.pending > a.abandoned) a.abandoned++;
    else if (a.held > 0) {
      a.held--;
      this.channel.send({ tag: TAG, kind: 'leave', db: dbName, user, n: 1 } satisfies FromWorker);
    }
    if (a.live === 0 && a.pending === 0) this.admissions.delete(keyOf(dbName, user));
  }

  /** The primary's answer for the client admit() saw just before (same database and user), or null if there is none. */
  ticket(database: string, user: string): Promise<PoolError | null> | null {
    const last = this.last;
    this.last = null;
    return last !== null && last.db === database && last.user === user ? last.answer : null;
  }

  private admitted(id: number, error: string | null): void {
    const resolve = this.tickets.get(id);
    if (!resolve) return;
    this.tickets.delete(id);
    resolve(error === null ? null : poolError(error, SqlState.TooManyConnections));
  }
}
