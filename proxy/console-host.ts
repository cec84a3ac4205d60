// The admin console wired to the live pooler: console.ts renders pgBouncer's console, this file supplies it.
// PoolerConsole is the ConsoleHost: every SHOW read from the pools, their server connections and the client
// sessions at the moment it runs, every command carried out on them (pgBouncer's admin.c and janitor.c
// rules). ConsoleConnection is the ConsoleLink a client session hands its socket to once the console login
// is authenticated: it sends the console's welcome, frames what the client sends and answers in order.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { parseSetting, PgBouncerConfigError, type SettingChange } from '../config/pgbouncer.js';
import type { ClientSession } from './client.js';
import {
  CONSOLE_DATABASE,
  ConsoleSession,
  consoleStartupParams,
  statsLogLine,
  type ClientRow,
  type CommandAnswer,
  type ConfigRow,
  type ConsoleHost,
  type ConsoleUser,
  type DatabaseRow,
  type DatabaseStats,
  type DebugSocketRow,
  type DnsHostRow,
  type DnsZoneRow,
  type FdRow,
  type ListCounts,
  type MemRow,
  type PauseMode,
  type PeerPoolRow,
  type PeerRow,
  type PoolRow,
  type ShutdownMode,
  type SocketRow,
  type StatCounters,
  type StatsSnapshot,
  type SteadytextRow,
  type UserRow,
} from './console.js';
import { PoolError, poolError, type ReplicationKind, type Pool, type PoolDatabase, type PooledServer, type Pooler } from './pool.js';
import type { PinReason } from './pooled-session.js';
import type { PoolerFigures } from './metrics.js';
import type { ConsoleLink } from './pooling.js';
import { AUTH_OK, Be, SqlState, authentication, backendKeyData, errorResponse, parameterStatus, readyForQuery } from './protocol.js';
import { loadNativeRelay, socketFd } from './relay.js';
import { TAKEOVER_LOGIN, type FdAnswer, type TakeoverSource } from './takeover.js';

export interface ConsoleDeps {
  /** Read lazily: createPooling makes the pooler, and takes the console among its options. */
  pooler: () => Pooler;
  /** The proxy's open client sessions (ProxyServer.sessions, read lazily: the proxy starts after createPooling). */
  sessions: () => ClientSession[];
  /** The ini RELOAD reads again. */
  configFile: string;
  /** RELOAD: read the ini again and apply it; throws when it cannot be read. */
  reload(): void;
  /** SHUTDOWN: stop the proxy (immediate: now; wait_for_servers / wait_for_clients: as sessions finish). */
  shutdown(mode: ShutdownMode): void;
  logger: Logger;
  /** SHOW STEADYTEXT rows, where the steadytext layer runs in this process. */
  steadytext?: () => SteadytextRow[];
  /** SUSPEND, RESUME and SHOW FDS on the sockets, for the online restart (takeover.ts). */
  takeover?: TakeoverSource;
  /** The host console sessions use instead of this process's own (worker processes: console-relay.ts). */
  relay?: (host: ConsoleHost) => ConsoleHost;
  /**
   * Worker processes: console logins counted across the workers (pool-limits.ts WorkerSlots), refused by the
   * authenticator when the primary's counts say so; `leave` once the session has ended.
   */
  admission?: { admitConsole(user: string, admin: boolean): void; leaveConsole(user: string): void };
}

/** What createPooling's `console` option takes; `close` stops the console's timers. */
export type ConsoleFactory = ((session: { id: number }, user: string, address: string, own: boolean) => ConsoleLink | PoolError) & {
  close(): void;
  /** pgBouncer's signals, which act as console commands do. */
  signal(sig: PoolerSignal): void;
  /** What SHOW STATS, POOLS, DATABASES and LISTS report now, for the metrics endpoint. */
  figures(): PoolerFigures;
  /** Once the pooler exists: the stats_period window turns from now on, with pgBouncer's `stats:` log line. */
  start(): void;
};

export type PoolerSignal = 'SIGUSR1' | 'SIGUSR2' | 'SIGINT' | 'SIGTERM';

/** The admin console over the live pooler: a ConsoleLink per console login, or pgBouncer's refusal. */
export function createConsole(deps: ConsoleDeps): ConsoleFactory {
  const host = new PoolerConsole(deps);
  if (deps.relay) host.shown = deps.relay(host);
  const open = (session: { id: number }, user: string, address: string, own: boolean): ConsoleLink | PoolError => {
    const who = own ? { user, admin: true, stats: true } : host.consoleUser(user);
    if (who === null) {
      host.log.info({ user, address }, 'console login refused: not in admin_users or stats_users');
      return new PoolError({ severity: 'FATAL', code: SqlState.ProtocolViolation, message: 'not allowed' });
    }
    const refused = who.admin ? null : host.consoleLimits(session.id, user);
    if (refused) return refused;
    // The online restart's login: the proxy's own OS user on the Unix socket, named so (takeover.ts).
    const takeover = own && (session as { context?: { applicationName?: string } | null }).context?.applicationName === TAKEOVER_LOGIN;
    const link = new ConsoleConnection(host, session.id, who, own, takeover);
    if (deps.admission) {
      deps.admission.admitConsole(user, who.admin);
      link.admitted = user;
    }
    return link;
  };
  return Object.assign(open, {
    close: () => host.close(),
    signal: (sig: PoolerSignal) => host.signal(sig),
    figures: () => host.figures(),
    start: () => host.startStats(),
  });
}

// ---- the connection --------------------------------------------------------------------------------------

/** Console statements are short (a command word, a 63-byte argument, a 255-byte SET value): more is abuse. */
const MAX_MESSAGE = 1024 * 1024;
/** Messages queued behind a pending answer (PAUSE, WAIT_CLOSE) before the socket stops being read. */
const QUEUE_LIMIT = 64;
/** How long SHOW FDS waits for the receiving end to take a row (pgBouncer's console turns blocking for it). */
const FD_SEND_TIMEOUT_MS = 10_000;

class ConsoleConnection implements ConsoleLink {
  private readonly session: ConsoleSession;
  private sock: Socket | null = null;
  private onClosed: (() => void) | null = null;
  /** A message split across chunks (copied: the session's read buffer is reused). */
  private partial: Buffer | null = null;
  /** Whole messages waiting for the answer in progress. */
  private readonly queue: Buffer[] = [];
  private waiting = false;
  private holding = false;
  private ended = false;
  /** When the client last sent a message (SHOW CLIENTS request_time). */
  lastRequest = Date.now();
  /** The user the workers' admission counts this session under (ConsoleDeps.admission), given back when it ends. */
  admitted: string | null = null;

  constructor(
    private readonly host: PoolerConsole,
    readonly id: number,
    who: ConsoleUser,
    /** The proxy's own OS user on the Unix socket: SHOW FDS passes the descriptors (pgBouncer's send_one_fd). */
    private readonly ownUser = false,
    /** The online restart's login: SHOW FDS hands the sockets over to it. */
    private readonly takeoverLogin = false,
  ) {
    this.session = new ConsoleSession(host.shown, who);
  }

  start(sock: Socket, early: Buffer, closed: () => void): void {
    this.sock = sock;
    this.onClosed = closed;
    this.host.opened(this);
    // pgBouncer's welcome; the key cancels nothing (a cancel from the console's client is ignored).
    const key = randomBytes(8);
    const welcome = [authentication(AUTH_OK), ...consoleStartupParams().map(([k, v]) => parameterStatus(k, v))];
    welcome.push(backendKeyData(key.readInt32BE(0) & 0x7fffffff, key.subarray(4)), readyForQuery('I'));
    sock.write(Buffer.concat(welcome));
    sock.on('drain', () => this.pump());
    if (early.length > 0) this.data(early);
  }

  data(chunk: Buffer): void {
    if (this.ended) return;
    this.lastRequest = Date.now();
    let buf = this.partial === null ? Buffer.from(chunk) : Buffer.concat([this.partial, chunk]);
    this.partial = null;
    while (buf.length >= 5) {
      const len = buf.readInt32BE(1);
      if (len < 4 || len > MAX_MESSAGE) {
        const why = len < 4 ? `invalid message length ${len}` : `message too large for the admin console: ${len} bytes`;
        return this.finish([errorResponse({ severity: 'FATAL', code: SqlState.ProtocolViolation, message: why })]);
      }
      if (buf.length < len + 1) break;
      this.queue.push(buf.subarray(0, len + 1));
      buf = buf.subarray(len + 1);
    }
    if (buf.length > 0) this.partial = buf;
    this.pump();
  }

  /** Answers queued messages in order; an answer that waits (a Promise) holds the later ones back. */
  private pump(): void {
    while (!this.waiting && !this.ended && this.queue.length > 0) {
      const msg = this.queue.shift()!;
      let out: Buffer[] | Promise<Buffer[]>;
      try {
        out = this.session.handle(msg);
      } catch (err) {
        return this.failed(err);
      }
      if (out instanceof Promise) {
        this.waiting = true;
        out.then(
          (bufs) => {
            this.waiting = false;
            const fds = this.host.takeFdAnswer();
            if (fds !== null) this.sendFds(bufs, fds);
            else this.send(bufs);
            this.pump();
          },
          (err: unknown) => this.failed(err),
        );
        break;
      }
      const fds = this.host.takeFdAnswer();
      if (fds !== null) this.sendFds(out, fds);
      else this.send(out);
    }
    this.flowControl();
  }

  /**
   * SHOW FDS' answer. As pgBouncer's send_one_fd: the proxy's own OS user on the Unix socket gets each socket's
   * descriptor with its row (SCM_RIGHTS), the rows written whole and in order, waiting where the socket is full.
   * The takeover's login also gets the sockets' state first, and once the rows are out, what they list is its.
   */
  private sendFds(out: Buffer[], answer: FdAnswer): void {
    const sock = this.sock!;
    const io = loadNativeRelay().relay?.fds;
    const fd = socketFd(sock);
    if (!this.ownUser || !io || fd < 0 || this.ended) return this.send(out);
    if (sock.writableLength > 0) {
      // Earlier answers go first.
      this.waiting = true;
      sock.once('drain', () => {
        this.waiting = false;
        this.sendFds(out, answer);
        this.pump();
      });
      return;
    }
    const bufs = this.takeoverLogin ? [answer.notice(), ...out] : out;
    let row = 0;
    for (const b of bufs) {
      const withFd = b[0] === Be.DataRow && row < answer.fds.length ? [answer.fds[row++]] : [];
      const n = io.send(fd, b, withFd, FD_SEND_TIMEOUT_MS);
      if (n < 0) {
        this.host.log.error({ errno: -n }, 'SHOW FDS: the answer could not be sent');
        return this.finish([]);
      }
    }
    if (this.takeoverLogin) {
      this.handedOver = true;
      answer.handOver();
    }
    if (this.session.done) this.finish([]);
  }

  private send(bufs: Buffer[]): void {
    if (this.ended) return;
    if (bufs.length > 0) this.sock!.write(bufs.length === 1 ? bufs[0] : Buffer.concat(bufs));
    if (this.session.done) this.finish([]);
  }

  /** Stops reading a client that sends faster than it reads answers or than commands complete. */
  private flowControl(): void {
    const sock = this.sock;
    if (sock === null || this.ended) return;
    const full = this.queue.length >= QUEUE_LIMIT || sock.writableNeedDrain;
    if (full && !this.holding) sock.pause();
    else if (!full && this.holding) sock.resume();
    this.holding = full;
  }

  private failed(err: unknown): void {
    this.host.log.error({ err }, 'admin console failed');
    this.finish([errorResponse({ severity: 'FATAL', code: SqlState.InternalError, message: 'internal error in the admin console; see the proxy log' })]);
  }

  /** The console is done with the client (Terminate, a FATAL): last words, then the session closes. */
  private finish(last: Buffer[]): void {
    if (this.ended) return;
    for (const b of last) this.sock?.write(b);
    this.close();
    this.onClosed?.();
  }

  close(): void {
    if (this.ended) return;
    this.ended = true;
    this.queue.length = 0;
    this.host.gone(this);
  }

  /** SHOW FDS handed the sockets over on this connection. */
  handedOver = false;
}

// ---- the host ---------------------------------------------------------------------------------------------

const ZERO: StatCounters = {
  serverAssignmentCount: 0, xactCount: 0, queryCount: 0, bytesReceived: 0, bytesSent: 0, xactTime: 0, queryTime: 0,
  waitTime: 0, clientParseCount: 0, serverParseCount: 0, bindCount: 0,
};

/** Why a client holds its server connection, in SHOW CLIENTS' pinned column. */
const PIN_WORDS: Record<PinReason, string> = {
  advisory: 'advisory lock',
  temp: 'temporary object',
  hold: 'WITH HOLD cursor',
  listen: 'LISTEN',
  load: 'LOAD',
  prepare: 'prepared statement',
};

/** How often a pending PAUSE, SUSPEND or WAIT_CLOSE looks again (pgBouncer checks once per event loop). */
const WATCH_MS = 50;

/** strcmp order: pgBouncer keeps its databases, pools and users sorted so. */
const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** pgBouncer shows socket pointers; any identifier unique among open sockets serves. Clients even, servers odd. */
const clientPtr = (id: number) => `0x${(id * 2).toString(16)}`;
const serverPtr = (id: number) => `0x${(id * 2 + 1).toString(16)}`;

function tlsOf(sock: Socket | undefined): string {
  const t = sock as TLSSocket | undefined;
  if (!t?.encrypted) return '';
  return [t.getProtocol() ?? '', t.getCipher()?.name ?? ''].filter(Boolean).join('/');
}

interface Snapshot {
  at: number;
  counters: Map<string, StatCounters>;
}

/** A pool row of SHOW POOLS and friends: one of the pooler's, or the console's own pgbouncer/pgbouncer. */
type PoolEntry = { kind: 'pool'; name: string; user: string; pool: Pool } | { kind: 'console'; name: string; user: string };

/** SHOW CLIENTS/SERVERS' replication column: the startup parameter's kind, in pgBouncer's words. */
function replicationName(kind: ReplicationKind | null): 'none' | 'logical' | 'physical' {
  return kind === 'database' ? 'logical' : kind === 'yes' ? 'physical' : 'none';
}

class PoolerConsole implements ConsoleHost {
  readonly log: Logger;
  /** What console sessions talk to: this, or the relay over every worker's. */
  shown: ConsoleHost = this;
  private mode: PauseMode = 'none';
  private shuttingDown = false;
  private readonly links = new Map<number, ConsoleConnection>();
  /** stats_period snapshots: averages run from `older` to now. */
  private older: Snapshot;
  private newer: Snapshot;
  private statsTimer: NodeJS.Timeout | null = null;
  /** The console's own requests (requested): one query and one transaction per console login, as pgBouncer counts. */
  private consoleRequests = 0;
  /** Conditions pending commands wait for, and the timer that checks them and keeps pools paused. */
  private readonly watches = new Set<{ ready(): boolean; resolve(): void }>();
  private watchTimer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private readonly deps: ConsoleDeps) {
    this.log = deps.logger.child({ component: 'console' });
    // Counters start at zero with the pools; the window's timer starts with the first console login.
    this.older = this.newer = { at: Date.now(), counters: new Map() };
  }

  private get pooler(): Pooler {
    return this.deps.pooler();
  }

  close(): void {
    this.closed = true;
    if (this.statsTimer) clearTimeout(this.statsTimer);
    if (this.watchTimer) clearInterval(this.watchTimer);
    this.statsTimer = this.watchTimer = null;
  }

  /** pgBouncer's admin_pre_login and admin_post_login: who may use the console, and how (null: not at all). */
  consoleUser(user: string): ConsoleUser | null {
    this.startStats();
    const st = this.pooler.settings;
    const admin = st.adminUsers.includes(user);
    const stats = st.statsUsers.includes(user);
    // auth_type any: everyone is let in; admin_users still decides who may run commands.
    if (st.authType === 'any') return { user, admin, stats: true };
    return admin || stats ? { user, admin, stats } : null;
  }

  /**
   * pgBouncer's check_db_connection_count and check_user_connection_count for the console: max_db_client_connections
   * and max_user_client_connections count its clients too, logged in or logging in; admin_users are exempt.
   */
  consoleLimits(asking: number, user: string): PoolError | null {
    const st = this.pooler.settings;
    const others = this.openSessions().filter((s) => s.id !== asking && s.context !== null);
    const maxDb = st.maxDbClientConnections;
    if (maxDb > 0 && others.filter((s) => s.context!.database === CONSOLE_DATABASE).length >= maxDb) {
      return poolError('no more connections allowed (max_db_client_connections)', SqlState.TooManyConnections);
    }
    const maxUser = this.pooler.config.users.get(user)?.maxUserClientConnections ?? st.maxUserClientConnections;
    if (maxUser > 0 && others.filter((s) => s.context!.user === user).length >= maxUser) {
      return poolError('no more connections allowed (max_user_client_connections)', SqlState.TooManyConnections);
    }
    return null;
  }

  /** An event pgBouncer logs: in its logfile's words, and in the structured log. */
  note(text: string, fields: Record<string, unknown> = {}): void {
    this.log.info(fields, text);
    this.pooler.pgbLog.line('LOG', text);
  }

  opened(c: ConsoleConnection): void {
    this.links.set(c.id, c);
  }

  gone(c: ConsoleConnection): void {
    this.links.delete(c.id);
    if (c.admitted !== null) this.deps.admission?.leaveConsole(c.admitted);
    c.admitted = null;
    // The process that took the sockets over went away without SHUTDOWN: there is nothing left to serve here.
    if (c.handedOver && !this.shuttingDown) {
      this.note('takeover: the new process left before SHUTDOWN, exiting');
      this.deps.shutdown('immediate');
      return;
    }
    // As pgBouncer: a suspended pooler whose last admin left resumes, or nothing could ever resume it (once its
    // sockets are handed over, there is nothing left to resume).
    if (this.links.size === 0 && this.mode === 'suspend' && !this.deps.takeover?.handedOver) {
      this.note('admin disappeared when suspended, doing RESUME');
      this.setMode('none');
    }
  }

  // ---- what is there ---------------------------------------------------------------------------------------

  private openSessions(): ClientSession[] {
    return this.deps.sessions().filter((s) => !s.closed);
  }

  /** The pooler's databases; one named pgbouncer (a lookup through "*") is never the console's, nor shown. */
  private allDatabases(): PoolDatabase[] {
    return [...this.pooler.databases.values()].filter((db) => db.name !== CONSOLE_DATABASE);
  }

  private allPools(): Pool[] {
    return this.allDatabases().flatMap((db) => [...db.pools.values()]);
  }

  /** Logged-in pooled clients per pool, and the console's own clients, in login order. */
  private clientsByPool(): { pooled: Map<Pool, ClientSession[]>; console: ClientSession[]; login: ClientSession[] } {
    const pooled = new Map<Pool, ClientSession[]>();
    const console: ClientSession[] = [];
    const login: ClientSession[] = [];
    for (const s of this.openSessions().sort((a, b) => a.id - b.id)) {
      if (!s.loggedIn) login.push(s);
      else if (s.isConsole) console.push(s);
      else if (s.pooled) {
        const list = pooled.get(s.pooled.pool) ?? [];
        list.push(s);
        pooled.set(s.pooled.pool, list);
      }
    }
    return { pooled, console, login };
  }

  /** Every pool in pgBouncer's order (database, then user), the console's own among them. */
  private poolEntries(): PoolEntry[] {
    const entries: PoolEntry[] = [{ kind: 'console', name: CONSOLE_DATABASE, user: CONSOLE_DATABASE }];
    for (const pool of this.allPools()) entries.push({ kind: 'pool', name: pool.db.name, user: pool.user, pool });
    return entries.sort((a, b) => byName(a.name, b.name) || byName(a.user, b.user));
  }

  private isWaiting(s: ClientSession): boolean {
    const p = s.pooled;
    return p !== null && p.server === null && p.waitStart() > 0;
  }

  /**
   * Idle servers split as pgBouncer lists them: ready (idle), or due for server_check_query first (used). A
   * connection lent to its client's relay (Pool.lent) is idle between that client's transactions.
   */
  private idleServers(pool: Pool, now: number): { idle: PooledServer[]; used: PooledServer[] } {
    const idle: PooledServer[] = [];
    const used: PooledServer[] = [];
    for (const s of pool.idle) if (!s.closed) (pool.needsCheck(s, now) ? used : idle).push(s);
    for (const s of pool.lent) if (!s.closed && !s.client?.lentBusy?.(s)) idle.push(s);
    return { idle, used };
  }

  /** Servers in a client's transaction: lent ones too while their relay is inside one. */
  private activeServers(pool: Pool): PooledServer[] {
    return [...pool.active, ...[...pool.lent].filter((s) => s.client?.lentBusy?.(s))];
  }

  private pinned(s: ClientSession): string {
    const p = s.pooled;
    if (p === null) return '';
    if (p.pins.size > 0) return [...p.pins].map((r) => PIN_WORDS[r]).join(', ');
    if (p.linked === null) return '';
    return p.pool.mode === 'session' ? 'session' : 'transaction';
  }

  private clientRow(s: ClientSession, now: number): ClientRow {
    const ctx = s.context;
    const r = s.remote;
    const p = s.pooled;
    const link = this.links.get(s.id);
    const waiting = this.isWaiting(s);
    return {
      user: ctx?.user ?? null,
      database: p ? p.pool.db.name : s.isConsole ? CONSOLE_DATABASE : (ctx?.database ?? null),
      replication: replicationName(p?.replication ?? null),
      state: waiting ? 'waiting' : 'active',
      addr: r.addr,
      port: r.port,
      localAddr: r.localAddr,
      localPort: r.localPort,
      connectTime: new Date(s.startedAt),
      requestTime: new Date(link ? link.lastRequest : s.lastActive),
      waitUs: waiting ? Math.max(0, now - p!.waitStart()) * 1000 : 0,
      closeNeeded: false,
      ptr: clientPtr(s.id),
      link: p?.linked ? serverPtr(p.linked.id) : '',
      remotePid: 0,
      tls: r.tls,
      applicationName: p?.settings.get('application_name') ?? ctx?.applicationName ?? '',
      preparedStatements: p?.statements?.size ?? 0,
      id: s.id,
      pinned: this.pinned(s),
    };
  }

  private serverRow(s: PooledServer, state: string): SocketRow {
    const linkOf = (id: number) => (id > 0 ? clientPtr(id) : '');
    const sock = s.conn?.sock;
    const unix = sock !== undefined && sock.remoteAddress === undefined;
    const client = s.client;
    return {
      user: s.pool.user,
      database: s.pool.db.name,
      replication: replicationName(s.replication),
      state,
      addr: unix ? 'unix' : (sock?.remoteAddress ?? ''),
      port: sock?.remotePort ?? s.pool.db.target.port,
      localAddr: unix ? 'unix' : s.localAddr,
      localPort: s.localPort,
      connectTime: new Date(s.createdAt),
      requestTime: new Date(s.lastUsed),
      waitUs: 0,
      closeNeeded: s.dirty,
      ptr: serverPtr(s.id),
      // The pool's own probe for a welcome (id 0) is no client; nor is a lent connection's, between its transactions.
      link: client && !state.endsWith('idle') ? linkOf(client.id > 0 ? client.id : (client.holderOf?.(s) ?? 0)) : '',
      remotePid: s.key?.pid ?? 0,
      tls: tlsOf(sock),
      applicationName: s.applied.get('application_name') ?? s.params.get('application_name') ?? '',
      preparedStatements: s.prepared.size,
      id: s.id,
    };
  }

  pools(): PoolRow[] {
    const now = Date.now();
    const { pooled, console } = this.clientsByPool();
    return this.poolEntries().map((e): PoolRow => {
      const row: PoolRow = {
        database: e.name, user: e.user, clActive: 0, clWaiting: 0, clActiveCancelReq: 0, clWaitingCancelReq: 0, svActive: 0,
        svActiveCancel: 0, svBeingCanceled: 0, svIdle: 0, svUsed: 0, svTested: 0, svLogin: 0, maxWaitUs: 0, poolMode: 'statement',
        loadBalanceHosts: null,
      };
      if (e.kind === 'console') return { ...row, clActive: console.length };
      const clients = pooled.get(e.pool) ?? [];
      const waiting = clients.filter((s) => this.isWaiting(s));
      const since = Math.min(...waiting.map((s) => s.pooled!.waitStart()));
      const { idle, used } = this.idleServers(e.pool, now);
      return {
        ...row,
        clActive: clients.length - waiting.length,
        clWaiting: waiting.length,
        svActive: this.activeServers(e.pool).length,
        svIdle: idle.length,
        svUsed: used.length,
        svLogin: e.pool.opening,
        maxWaitUs: waiting.length > 0 ? Math.max(0, now - since) * 1000 : 0,
        poolMode: e.pool.mode,
        loadBalanceHosts: loadBalance(e.pool.db),
      };
    });
  }

  clients(): ClientRow[] {
    const now = Date.now();
    const { pooled, console } = this.clientsByPool();
    const rows: ClientRow[] = [];
    for (const e of this.poolEntries()) {
      const list = e.kind === 'console' ? console : (pooled.get(e.pool) ?? []);
      rows.push(...list.filter((s) => !this.isWaiting(s)).map((s) => this.clientRow(s, now)));
      rows.push(...list.filter((s) => this.isWaiting(s)).map((s) => this.clientRow(s, now)));
    }
    return rows;
  }

  servers(): SocketRow[] {
    const now = Date.now();
    const rows: SocketRow[] = [];
    for (const e of this.poolEntries()) {
      if (e.kind !== 'pool') continue;
      const { idle, used } = this.idleServers(e.pool, now);
      rows.push(...this.activeServers(e.pool).map((s) => this.serverRow(s, 'active')));
      rows.push(...idle.map((s) => this.serverRow(s, 'idle')), ...used.map((s) => this.serverRow(s, 'used')));
    }
    return rows;
  }

  sockets(activeOnly: boolean): DebugSocketRow[] {
    const now = Date.now();
    const { pooled, console, login } = this.clientsByPool();
    const rows: DebugSocketRow[] = [];
    // What this proxy can tell of a socket's buffers: bytes waiting to be read on, and to be written.
    const client = (s: ClientSession, state: string): DebugSocketRow => ({
      ...this.clientRow(s, now), state, type: 'C', recvPos: s.buffered, pktPos: 0, pktRemain: 0, sendPos: 0, sendRemain: 0,
      pktAvail: s.buffered, sendAvail: 0,
    });
    const server = (s: PooledServer, state: string): DebugSocketRow => {
      const held = s.conn?.reader.buffered ?? 0;
      const unsent = s.conn?.sock.writableLength ?? 0;
      return { ...this.serverRow(s, state), type: 'S', recvPos: held, pktPos: 0, pktRemain: 0, sendPos: 0, sendRemain: unsent, pktAvail: held, sendAvail: unsent };
    };
    for (const e of this.poolEntries()) {
      const list = e.kind === 'console' ? console : (pooled.get(e.pool) ?? []);
      rows.push(...list.filter((s) => !this.isWaiting(s)).map((s) => client(s, 'cl_active')));
      rows.push(...list.filter((s) => this.isWaiting(s)).map((s) => client(s, 'cl_waiting')));
      if (e.kind !== 'pool') continue;
      const { idle, used } = this.idleServers(e.pool, now);
      rows.push(...this.activeServers(e.pool).map((s) => server(s, 'sv_active')));
      rows.push(...idle.map((s) => server(s, 'sv_idle')), ...used.map((s) => server(s, 'sv_used')));
    }
    rows.push(...login.map((s) => ({ ...client(s, 'cl_login'), user: s.context?.user ?? null, database: s.context?.database ?? null })));
    return activeOnly ? rows.filter((r) => r.recvPos > 0 || r.sendRemain > 0) : rows;
  }

  // ---- counters ----------------------------------------------------------------------------------------------

  /** Each database's counters now, added over its pools; the console's, its logins' requests (requested). */
  private counters(): Map<string, StatCounters> {
    const out = new Map<string, StatCounters>();
    if (this.consoleRequests > 0) out.set(CONSOLE_DATABASE, { ...ZERO, xactCount: this.consoleRequests, queryCount: this.consoleRequests });
    for (const pool of this.allPools()) {
      pool.syncLent(); // what relays ran of lent connections so far
      const s = pool.stats;
      const c = { ...(out.get(pool.db.name) ?? ZERO) } as Record<keyof StatCounters, number>;
      c.serverAssignmentCount += s.serverAssignmentCount;
      c.xactCount += s.xactCount;
      c.queryCount += s.queryCount;
      c.bytesReceived += s.bytesReceived;
      c.bytesSent += s.bytesSent;
      c.xactTime += s.xactTimeUs;
      c.queryTime += s.queryTimeUs;
      c.waitTime += s.waitTimeUs;
      c.clientParseCount += s.clientParseCount;
      c.serverParseCount += s.serverParseCount;
      c.bindCount += s.bindCount;
      out.set(pool.db.name, c);
    }
    return out;
  }

  startStats(): void {
    if (this.statsTimer === null) this.scheduleStats();
  }

  /**
   * Every stats_period the window moves on, and with log_stats the logfile gets pgBouncer's `stats:` line for
   * it (each worker process its own, as pgBouncer's so_reuseport processes do). Both settings are read at each
   * turn, so SET and RELOAD take effect at the next one.
   */
  private scheduleStats(): void {
    if (this.closed) return;
    const periodMs = Math.max(1, this.pooler.settings.statsPeriod) * 1000;
    this.statsTimer = setTimeout(() => {
      this.older = this.newer;
      this.newer = { at: Date.now(), counters: this.counters() };
      // The window just closed: stats() now runs from its start (older) to its end (now).
      if (this.pooler.settings.logStats) this.pooler.pgbLog.line('LOG', statsLogLine(this.stats()));
      this.scheduleStats();
    }, periodMs);
    this.statsTimer.unref();
  }

  requested(): void {
    this.consoleRequests++;
  }

  figures(): PoolerFigures {
    const st = this.pooler.settings;
    return {
      stats: this.stats().databases.map((d) => ({ database: d.database, totals: d.current })),
      pools: this.pools(),
      databases: this.databases(),
      lists: this.lists(),
      maxClientConn: st.maxClientConn,
      maxUserConnections: st.maxUserConnections,
    };
  }

  stats(): StatsSnapshot {
    const now = Date.now();
    const current = this.counters();
    const names = [...new Set([CONSOLE_DATABASE, ...current.keys()])].sort(byName);
    const databases = names.map((database): DatabaseStats => ({
      database,
      current: current.get(database) ?? ZERO,
      previous: this.older.counters.get(database) ?? ZERO,
    }));
    return { databases, periodUs: Math.max(0, now - this.older.at) * 1000 };
  }

  // ---- configuration and lists ---------------------------------------------------------------------------------

  /** The databases pgBouncer has registered: every [databases] entry, and those made from "*" so far. */
  private registered(): PoolDatabase[] {
    for (const name of this.pooler.config.databases.keys()) if (name !== '*') this.pooler.database(name);
    return this.allDatabases();
  }

  /** pgBouncer's find_database: a registered database, without making one from "*". */
  private findDatabase(name: string): PoolDatabase | null {
    return this.pooler.databases.get(name) ?? (this.pooler.config.databases.has(name) ? this.pooler.database(name) : null);
  }

  databases(): DatabaseRow[] {
    const st = this.pooler.settings;
    const consoleClients = this.clientsByPool().console.length;
    const rows: DatabaseRow[] = this.registered().map((db) => {
      const e = db.entry;
      return {
        name: db.name,
        host: e.host ?? db.target.host,
        port: e.port ?? db.target.port,
        database: e.dbname ?? db.name,
        forceUser: e.user ?? null,
        poolSize: e.poolSize ?? st.defaultPoolSize,
        minPoolSize: e.minPoolSize ?? st.minPoolSize,
        reservePoolSize: e.reservePool ?? st.reservePoolSize,
        serverLifetime: Math.floor(e.serverLifetime ?? st.serverLifetime),
        poolMode: e.poolMode ?? null,
        loadBalanceHosts: loadBalance(db),
        maxConnections: e.maxDbConnections ?? st.maxDbConnections,
        currentConnections: db.serverCount(),
        maxClientConnections: e.maxDbClientConnections ?? st.maxDbClientConnections,
        currentClientConnections: db.clientCount,
        paused: db.paused,
        disabled: db.disabled,
      };
    });
    // The console's own database as pgBouncer's admin_setup makes it.
    rows.push({
      name: CONSOLE_DATABASE, host: null, port: st.listenPort, database: CONSOLE_DATABASE, forceUser: CONSOLE_DATABASE, poolSize: 2,
      minPoolSize: st.minPoolSize, reservePoolSize: st.reservePoolSize, serverLifetime: Math.floor(st.serverLifetime), poolMode: 'statement',
      loadBalanceHosts: null, maxConnections: st.maxDbConnections, currentConnections: 0, maxClientConnections: st.maxDbClientConnections,
      currentClientConnections: consoleClients, paused: false, disabled: false,
    });
    return rows.sort((a, b) => byName(a.name, b.name));
  }

  /** pgBouncer's users: auth_file's, [users]', those pools log in as and those logged in, and its own pgbouncer. */
  private userNames(sessions: ClientSession[]): string[] {
    const names = new Set<string>([CONSOLE_DATABASE, ...this.pooler.config.authFile.keys(), ...this.pooler.config.users.keys()]);
    for (const pool of this.allPools()) names.add(pool.user);
    for (const s of sessions) if (s.loggedIn && s.context) names.add(s.context.user);
    return [...names].sort(byName);
  }

  users(): UserRow[] {
    const st = this.pooler.settings;
    const sessions = this.openSessions();
    return this.userNames(sessions).map((name) => {
      const u = this.pooler.config.users.get(name);
      return {
        name,
        poolSize: u?.poolSize ?? null,
        reservePoolSize: u?.reservePool ?? null,
        poolMode: u?.poolMode ?? null,
        maxUserConnections: u?.maxUserConnections ?? st.maxUserConnections,
        currentConnections: this.pooler.userServerCount(name),
        maxUserClientConnections: u?.maxUserClientConnections ?? st.maxUserClientConnections,
        currentClientConnections: sessions.filter((s) => s.loggedIn && s.context?.user === name).length,
      };
    });
  }

  config(): ConfigRow[] {
    return this.pooler.settings.all;
  }

  lists(): ListCounts {
    const sessions = this.openSessions();
    let pools = 1; // the console's
    let servers = 0;
    for (const pool of this.allPools()) {
      pools++;
      servers += pool.size;
    }
    return {
      databases: this.registered().length + 1,
      users: this.userNames(sessions).length,
      peers: this.pooler.config.peers.size,
      pools,
      peerPools: 0,
      freeClients: 0,
      usedClients: sessions.length,
      loginClients: sessions.filter((s) => !s.loggedIn).length,
      freeServers: 0,
      usedServers: servers,
      dnsNames: 0,
      dnsZones: 0,
      dnsQueries: 0,
      dnsPending: 0,
    };
  }

  /** SHOW FDS' last answer, for the connection that asked (its descriptors go with the rows). */
  private fdAnswer: FdAnswer | null = null;

  /** The sockets an online restart (-R) takes over (takeover.ts). */
  fds(): FdRow[] {
    const t = this.deps.takeover;
    if (!t) return [];
    this.fdAnswer = t.fds();
    return this.fdAnswer.rows;
  }

  takeFdAnswer(): FdAnswer | null {
    const a = this.fdAnswer;
    this.fdAnswer = null;
    return a;
  }

  /** Host names are resolved by the system per connection: there is no DNS cache to show. */
  dnsHosts(): DnsHostRow[] {
    return [];
  }

  dnsZones(): DnsZoneRow[] {
    return [];
  }

  pauseMode(): PauseMode {
    return this.mode;
  }

  /** [peers] as configured (peering itself, forwarding cancels, is not done here). */
  peers(): PeerRow[] {
    const st = this.pooler.settings;
    return [...this.pooler.config.peers.values()]
      .sort((a, b) => a.id - b.id)
      .map((p) => ({ peerId: p.id, host: p.host, port: p.port, poolSize: p.poolSize ?? st.defaultPoolSize }));
  }

  peerPools(): PeerPoolRow[] {
    return [];
  }

  /** JS objects have no fixed size: the counts of what pgBouncer keeps in its caches, sizes 0. */
  mem(): MemRow[] {
    const l = this.lists();
    const row = (name: string, used: number): MemRow => ({ name, size: 0, used, free: 0 });
    return [
      row('user_cache', l.users),
      row('db_cache', l.databases),
      row('pool_cache', l.pools),
      row('server_cache', l.usedServers),
      row('client_cache', l.usedClients),
    ];
  }

  steadytext(): SteadytextRow[] {
    return this.deps.steadytext?.() ?? [];
  }

  // ---- commands ------------------------------------------------------------------------------------------------

  /** The pools a command names: all of them, or those of one database. */
  private poolsOf(db?: PoolDatabase): Pool[] {
    return db ? [...db.pools.values()] : [...this.allPools()];
  }

  /** Resolves when `ready()` holds; the watch timer also keeps every pool in the pause state it should be in. */
  private waitUntil(ready: () => boolean): Promise<void> {
    if (ready()) return Promise.resolve();
    return new Promise((resolve) => {
      this.watches.add({ ready, resolve });
      this.watch();
    });
  }

  private watch(): void {
    const needed = !this.closed && (this.watches.size > 0 || this.mode !== 'none' || this.allDatabases().some((d) => d.paused));
    if (needed && this.watchTimer === null) {
      this.watchTimer = setInterval(() => this.watchTick(), WATCH_MS);
      this.watchTimer.unref();
    } else if (!needed && this.watchTimer !== null) {
      clearInterval(this.watchTimer);
      this.watchTimer = null;
    }
  }

  private watchTick(): void {
    this.enforce();
    for (const w of [...this.watches]) {
      if (!w.ready()) continue;
      this.watches.delete(w);
      w.resolve();
    }
    this.watch();
  }

  /**
   * Puts every pool in the state the pause mode and its database's flag say: paused (PAUSE also lets its idle
   * connections go, as pgBouncer's per-loop pause does) or serving. Runs on each command and on the watch timer,
   * which also catches pools made after the PAUSE (a new user, a database made from "*").
   */
  private enforce(): void {
    // Where the takeover suspends the sockets, SUSPEND lends on to waiting clients, as pgBouncer's janitor does.
    const holds = this.mode === 'pause' || (this.mode === 'suspend' && !this.deps.takeover);
    this.pooler.holding = holds;
    for (const pool of this.allPools()) {
      const paused = holds || pool.db.paused;
      if (!paused) pool.releaseServers();
      else pool.holdServers(this.mode !== 'suspend', 'pause mode');
    }
    this.pooler.suspended = (this.mode === 'suspend' && !this.deps.takeover) || this.deps.takeover?.handedOver === true;
  }

  private setMode(mode: PauseMode): void {
    if (this.mode === 'suspend' && mode !== 'suspend') this.deps.takeover?.resume();
    this.mode = mode;
    this.enforce();
    this.watch();
  }

  private serversOut(pools: Pool[]): number {
    return pools.reduce((n, p) => n + p.serversOut, 0);
  }

  pause(database?: string): CommandAnswer {
    if (database === undefined) {
      this.note('PAUSE command issued');
      this.setMode('pause');
      return this.waitUntil(() => this.mode !== 'pause' || this.serversOut(this.poolsOf()) === 0);
    }
    this.note(`PAUSE '${database}' command issued`, { database });
    const db = this.pooler.database(database);
    if (db === null) return { refused: 'no_such_database' };
    db.paused = true;
    this.enforce();
    this.watch();
    return this.waitUntil(() => !db.paused || this.serversOut(this.poolsOf(db)) === 0);
  }

  resume(database?: string): CommandAnswer {
    if (database === undefined) {
      this.note('RESUME command issued');
      if (this.shuttingDown) return { refused: 'shutting_down' };
      if (this.mode === 'none') return { refused: 'not_paused' };
      this.setMode('none');
      return;
    }
    this.note(`RESUME '${database}' command issued`, { database });
    const db = this.findDatabase(database);
    if (db === null) return { refused: 'no_such_database' };
    if (!db.paused) return { refused: 'not_paused' };
    db.paused = false;
    this.enforce();
    this.watch();
  }

  /**
   * SUSPEND, as pgBouncer's: nothing is accepted, and each client session is read no more once it is between
   * messages, its server connection too (takeover.ts); the answer waits until all are (clients not by
   * suspend_timeout are closed). Without the takeover: no connection is lent or opened, and the answer waits until
   * no session holds unsent bytes.
   */
  suspend(): CommandAnswer {
    if (this.allDatabases().some((d) => d.paused)) return { refused: 'paused_databases' };
    this.note('SUSPEND command issued');
    this.setMode('suspend');
    const timeout = this.pooler.settings.suspendTimeout;
    const deadline = timeout > 0 ? Date.now() + timeout * 1000 : Infinity;
    const t = this.deps.takeover;
    if (!t) {
      const flushed = () => this.openSessions().every((s) => s.isConsole || s.buffered === 0);
      return this.waitUntil(() => this.mode !== 'suspend' || flushed() || Date.now() >= deadline);
    }
    t.suspend();
    return this.waitUntil(() => {
      if (this.mode !== 'suspend' || t.settled()) return true;
      if (Date.now() < deadline) return false;
      t.timedOut();
      return true;
    });
  }

  reconnect(database?: string): CommandAnswer {
    this.note(database === undefined ? 'RECONNECT command issued' : `RECONNECT '${database}' command issued`, { database });
    const db = database === undefined ? undefined : this.pooler.database(database);
    if (db === null) return { refused: 'no_such_database' };
    for (const pool of this.poolsOf(db)) pool.closeAll(false, 'database configuration changed');
  }

  kill(database: string): CommandAnswer {
    this.note(`KILL '${database}' command issued`, { database });
    const db = this.pooler.database(database);
    if (db === null) return { refused: 'no_such_database' };
    // As pgBouncer: the database stays paused after KILL, until RESUME.
    db.paused = true;
    for (const s of this.openSessions()) if (s.pooled?.pool.db === db) s.kick('database removed');
    for (const pool of db.pools.values()) pool.closeAll(true, 'database removed');
    this.enforce();
    this.watch();
  }

  killClient(id: number): CommandAnswer {
    this.note(`KILL_CLIENT '${id}' command issued`, { id });
    const s = this.openSessions().find((x) => x.id === id);
    if (!s) return { refused: 'client_not_found' };
    s.kick('admin forced disconnect');
  }

  disable(database: string): CommandAnswer {
    this.note(`DISABLE '${database}' command issued`, { database });
    const db = this.pooler.database(database);
    if (db === null) return { refused: 'no_such_database' };
    db.disabled = true;
  }

  enable(database: string): CommandAnswer {
    this.note(`ENABLE '${database}' command issued`, { database });
    const db = this.findDatabase(database);
    if (db === null) return { refused: 'no_such_database' };
    db.disabled = false;
  }

  reload(): CommandAnswer {
    this.note('RELOAD command issued', { config: this.deps.configFile });
    try {
      this.deps.reload();
    } catch (err) {
      // pgBouncer answers RELOAD and logs; the console's user hears why too.
      const why = err instanceof Error ? err.message : String(err);
      this.log.error({ err: why }, 'configuration not reloaded');
      this.pooler.pgbLog.line('ERROR', `configuration not reloaded: ${why}`);
      return { notice: `configuration not reloaded, still using the old one: ${why}` };
    }
    this.enforce();
  }

  shutdown(mode: ShutdownMode): CommandAnswer {
    this.note(mode === 'immediate' ? 'SHUTDOWN command issued' : `SHUTDOWN ${mode.toUpperCase()} command issued`, { mode });
    this.beginShutdown(mode);
  }

  private beginShutdown(mode: ShutdownMode): void {
    this.shuttingDown = true;
    // WAIT_FOR_SERVERS lends no more connections: a client that needs one (or waits for one) is let go.
    if (mode === 'wait_for_servers') {
      if (this.mode === 'none') this.setMode('pause');
      this.pooler.refuseWaiters(poolError('server shutting down', SqlState.AdminShutdown));
    }
    // After the console's answer is written.
    setImmediate(() => this.deps.shutdown(mode));
  }

  /**
   * As pgBouncer's main.c: USR1 pauses, USR2 resumes (not while shutting down), INT shuts down once servers are
   * released and TERM once clients have left; either of them again while shutting down exits at once.
   */
  signal(sig: PoolerSignal): void {
    if (sig === 'SIGUSR1') {
      if (this.mode !== 'none') return this.note('got SIGUSR1, but already paused/suspended');
      this.note('got SIGUSR1, pausing all activity');
      return this.setMode('pause');
    }
    if (sig === 'SIGUSR2') {
      if (this.shuttingDown) return this.note('got SIGUSR2 while shutting down, ignoring');
      if (this.mode === 'none') return this.note('got SIGUSR2, but not paused/suspended');
      this.note(`got SIGUSR2, continuing from ${this.mode.toUpperCase()}`);
      return this.setMode('none');
    }
    if (this.shuttingDown) {
      this.note(`got ${sig} while shutting down, fast exit`);
      return this.deps.shutdown('immediate');
    }
    this.note(sig === 'SIGINT' ? 'got SIGINT, shutting down, waiting for all servers connections to be released' : 'got SIGTERM, shutting down, waiting for all clients disconnect');
    this.beginShutdown(sig === 'SIGINT' ? 'wait_for_servers' : 'wait_for_clients');
  }

  waitClose(database?: string): CommandAnswer {
    this.note(database === undefined ? 'WAIT_CLOSE command issued' : `WAIT_CLOSE '${database}' command issued`, { database });
    const db = database === undefined ? undefined : this.pooler.database(database);
    if (db === null) return { refused: 'no_such_database' };
    return this.waitUntil(() => this.poolsOf(db).every((p) => p.closingServers === 0));
  }

  set(key: string, value: string): CommandAnswer {
    let change: SettingChange | null;
    try {
      change = parseSetting(key, value);
    } catch (err) {
      if (!(err instanceof PgBouncerConfigError)) throw err;
      return { refused: 'set_failed', detail: err.message };
    }
    if (change === null) return { refused: 'set_failed', detail: `unknown parameter: ${key}` };
    this.note(`SET ${key} = ${value} command issued`, { key, value });
    // pgBouncer accepts a setting it reads only at start, and changes nothing.
    if (!change.changeable) return;
    const st = this.pooler.settings;
    Object.assign(st, { [change.field]: change.typed });
    const row = st.all.find((r) => r.key === key);
    if (row) row.value = change.shown;
  }
}

/** SHOW POOLS / DATABASES load_balance_hosts: only for an entry whose host lists several hosts. */
function loadBalance(db: PoolDatabase): string | null {
  return db.entry.host?.includes(',') ? (db.entry.loadBalanceHosts ?? 'round-robin') : null;
}
