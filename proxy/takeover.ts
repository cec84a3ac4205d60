// Online restart, as pgBouncer's -R/--reboot (its takeover.c, and admin.c's SUSPEND and SHOW FDS): a new process
// takes the running one's sockets over without dropping its clients. The new process logs in to the old one's
// admin console over the Unix socket as the proxy's own OS user, sends SUSPEND, then SHOW FDS, whose rows carry
// the sockets as SCM_RIGHTS (one descriptor with each row: the native addon's fd passing), then SHUTDOWN; the old
// process exits and the new one goes on with the listeners, the clients and the server connections.
//
// SUSPEND (TakeoverSource): nothing is accepted any more (connections wait, unread, for RESUME or the handover),
// each client is read no more from a message boundary on, then its server connection no more once nothing of
// either is half-read (ClientSession.suspend). A statement still running moves with its client, as in pgBouncer:
// its answer waits in the server socket for the new process. Unlike pgBouncer, whose clients waiting for a server
// connection keep their request in its buffer and are closed at suspend_timeout when no server frees, a waiting
// client leaves the queue with its request unsent (ClientSession.suspend), which moves with it and waits in the new
// process's queue in the same order (or in the old one's again at RESUME); clients not still when suspend_timeout
// passes (mid-message, mid-login) are closed with "suspend_timeout".
//
// SHOW FDS shows pgBouncer's columns to the console. The takeover's own login (application_name TAKEOVER_LOGIN)
// also gets, in a notice before the rows, what pgBouncer's columns cannot carry, keyed by descriptor: each
// client's startup parameters and what it was told, its settings, pins, prepared statements, the protocol's and
// SQL's (under the server-side names of the statement cache, which the new cache keeps), the requests it has in
// flight, and each server connection's backend key, parameters, applied settings and the statements it holds
// (under server-side names, and under client names with their owners). Once the rows are out, what they list is
// the new process's: the old one lets go of it without a word (TakeoverSource.handOver). The login names the
// state's format (TAKEOVER_LOGIN): a process of another format hands nothing over.
//
// What does not move, as in pgBouncer: TLS clients and server connections, and console sessions; they end with
// the old process. Beyond pgBouncer's reasons: replication clients, and sessions holding the interceptor's plans
// (statements rewritten at Parse). pgBouncer resets the moved connections' ages; so does this.
//
// Unlike pgBouncer: the old process lets go of what it listed as soon as the rows are out (pgBouncer keeps it until
// SHUTDOWN), so a new process that fails after SHOW FDS loses those clients instead of the old one resuming them;
// and a client still logging in when SUSPEND comes is waited for (closed at suspend_timeout), not moved mid-login.
import { closeSync, existsSync } from 'node:fs';
import { connect as netConnect, Socket } from 'node:net';
import type { Logger } from 'pino';
import { parseSecret, type Secret } from '../config/pgbouncer.js';
import { ClientSession } from './client.js';
import type { FdRow } from './console.js';
import { PooledServer, type Pool } from './pool.js';
import type { PinReason } from './pooled-session.js';
import type { PoolingEnv } from './pooling.js';
import { literals, orphanLiteral, type ClientStatements, type SharedStatement } from './prepared.js';
import { Be, TERMINATE, errorResponse, query, readCString, readDataRow, readErrorFields, startupMessage, type TxStatus } from './protocol.js';
import { ReadBuffer } from './read-buffer.js';
import { loadNativeRelay, socketFd, type FdPassing } from './relay.js';
import type { ProxyServer } from './server.js';
import { nextSocketId } from './socket-id.js';
import { ServerConnection, socketPath } from './upstream.js';

/** The state's format: a process hands over only to a login that names the format it writes. */
const STATE_VERSION = 1;
/**
 * The application_name of the takeover's console login: it gets the state notice, and SHOW FDS hands over. A
 * process that writes another format sees an ordinary console login: it hands nothing over, the new process
 * finds no state it can read and gives up, and the old one resumes (its admin left).
 */
export const TAKEOVER_LOGIN = `pg-steadytext takeover ${STATE_VERSION}`;
/** The state notice's message (its detail is the JSON). */
const STATE_NOTICE = 'pg-steadytext takeover state';

type B64 = string;
type Pairs = [string, string][];

interface PoolState {
  db: string;
  user: string;
  welcome: Pairs | null;
  scram: { clientKey: B64; serverKey: B64 } | null;
}

interface ClientState {
  kind: 'client';
  pool: number;
  user: string;
  database: string;
  startup: Pairs;
  /** The ParameterStatus values the client was told. */
  told: Pairs;
  tx: TxStatus;
  pid: number;
  secret: B64;
  lastActive: number;
  requests: { codes: number[]; syncsIgnored: boolean };
  settings: Pairs;
  pins: PinReason[];
  /** Client name, server-side name, whether its Parse failed. */
  statements: [string, string, boolean][];
  /** Names its SQL may have prepared or dropped in the current transaction (read back at its end). */
  uncertain: string[];
  due: { settings: boolean; pins: boolean; statements: boolean };
  /** The old descriptor of the server connection it holds (0: none). */
  link: number;
  /** What it sent that did not go upstream (a request that waited for a server connection), read first here. */
  unsent?: B64;
}

interface ServerState {
  kind: 'server';
  pool: number;
  pid: number;
  secret: B64;
  params: Pairs;
  applied: Pairs;
  /** Server-side statement names, least recently used first. */
  prepared: string[];
  /** Statements under client names (SQL's), least recently used first: name, version, the owner's old descriptor (0: it stays). */
  literals: [string, string, number][];
  target: string;
  lastUsed: number;
  checkedAt: number;
  dirty: boolean;
  closeReason: string;
}

type SocketState = { kind: 'listener'; unix: boolean } | { kind: 'fresh' } | ClientState | ServerState;

interface HandoverState {
  version: number;
  pools: PoolState[];
  /** What auth_query found (user, secret as auth_file writes it). */
  secrets: Pairs;
  /** The statement cache's statements the moved clients use: each Parse under its server-side name. */
  statements: B64[];
  /** By the old process's descriptor. */
  sockets: Record<string, SocketState>;
}

const b64 = (b: Buffer) => b.toString('base64');
const unb64 = (s: B64) => Buffer.from(s, 'base64');

/** pgBouncer's cancel column: the 8 bytes of a cancel key (pid, secret) as one unsigned number. */
function cancelColumn(pid: number, secret: Buffer): bigint {
  return ((BigInt(pid >>> 0) << 32n) | BigInt(secret.length >= 4 ? secret.readUInt32BE(0) : 0)) & 0xffffffffffffffffn;
}

function secretText(s: Secret): string {
  return s.kind === 'plain' ? s.password : s.kind === 'md5' ? s.hash : s.text;
}

/** A parameter of a map whose keys may be in either case (ParameterStatus names vs. settings' lower case). */
function param(m: ReadonlyMap<string, string>, name: string): string | null {
  const v = m.get(name) ?? m.get(name.toLowerCase());
  return v ?? null;
}

/** SHOW FDS' answer: pgBouncer's rows and their descriptors, the state beyond them, and the handover. */
export interface FdAnswer {
  rows: FdRow[];
  /** One per row, in order. */
  fds: number[];
  /** The notice the takeover's own login gets before the rows. */
  notice(): Buffer;
  /** The rows went to the process taking over: what they list is its now. */
  handOver(): void;
}

/** What SUSPEND, RESUME and SHOW FDS do to the sockets of this process (the old one's side). */
export class TakeoverSource {
  private suspended = false;
  /** SHOW FDS handed everything over: the process ends when the takeover's login does. */
  handedOver = false;

  constructor(
    private readonly deps: {
      /** Read lazily: the console exists before the proxy listens. */
      proxy(): ProxyServer;
      pooling(): PoolingEnv;
      logger: Logger;
    },
  ) {}

  private clients(): ClientSession[] {
    return this.deps
      .proxy()
      .sessions()
      .filter((s) => !s.closed && !s.isConsole);
  }

  /** SUSPEND: connections are held unread, and every client session is suspended as soon as it can be. */
  suspend(): void {
    this.suspended = true;
    this.deps.proxy().takeover.hold(true);
    this.settled();
  }

  /** Suspends what can be now; true when every client session is still (console sessions do not count). */
  settled(): boolean {
    let all = true;
    for (const s of this.clients()) if (!s.suspend(true)) all = false;
    return all;
  }

  /** suspend_timeout passed: clients that are not still are closed, as pgBouncer's janitor closes them. */
  timedOut(): void {
    for (const s of this.clients()) if (!s.suspend(true)) s.kick('suspend_timeout');
  }

  /** RESUME: read and accept again. */
  resume(): void {
    if (!this.suspended) return;
    this.suspended = false;
    if (this.handedOver) return;
    this.deps.proxy().takeover.hold(false);
    for (const s of this.clients()) s.suspend(false);
  }

  /** SHOW FDS: every socket pgBouncer would list; those that can move (still, plaintext) carry their state. */
  fds(): FdAnswer {
    const proxy = this.deps.proxy();
    const pooler = this.deps.pooling().pooler;
    const out = new FdListing();
    const { listeners, held } = proxy.takeover.sockets();
    for (const l of listeners) out.row(socketRow(l.fd, 'pooler', l.addr, l.port), { kind: 'listener', unix: l.addr === 'unix' });
    const fresh = held.filter((sock) => socketFd(sock) >= 0);
    for (const sock of fresh) out.row(socketRow(socketFd(sock), 'client', sock.remoteAddress === undefined ? 'unix' : sock.remoteAddress, sock.remotePort ?? 0), { kind: 'fresh' });
    // Clients, then server connections: idle ones and those of the clients listed.
    const { moved, ownerFd, servers } = listClients(proxy, out);
    for (const pool of pooler.pools()) for (const s of pool.idle) if (idleMoves(s)) servers.set(s, { clientFd: 0, moves: true });
    for (const [s, { clientFd, moves }] of servers) out.row(serverRow(s, clientFd), moves && s.key ? serverState(s, out, ownerFd) : null);
    out.state.statements = [...out.statements.values()].map((st) => b64(st.parse));
    for (const [user, secret] of pooler.dynamicSecrets) out.state.secrets.push([user, secretText(secret)]);
    const movedServers = [...servers].filter(([, v]) => v.moves).map(([s]) => s);
    return {
      rows: out.rows,
      fds: out.fds,
      notice: () => errorResponse({ severity: 'NOTICE', code: '00000', message: STATE_NOTICE, detail: JSON.stringify(out.state) }, Be.NoticeResponse),
      handOver: () => this.handOver(fresh, moved, movedServers, listeners.length),
    };
  }

  /** SHOW FDS' rows went to the process taking over: what they list is let go of here. */
  private handOver(fresh: Socket[], moved: ClientSession[], movedServers: PooledServer[], listeners: number): void {
    const pooler = this.deps.pooling().pooler;
    this.handedOver = true;
    // No connection is opened here any more (min_pool_size): this process only waits for SHUTDOWN now.
    pooler.suspended = true;
    this.deps.proxy().takeover.release();
    for (const sock of fresh) letGo(sock);
    for (const session of moved) session.detach();
    for (const s of movedServers) {
      const i = s.pool.idle.indexOf(s);
      if (i >= 0) s.pool.idle.splice(i, 1);
      s.pool.active.delete(s);
      s.client = null;
      s.closed = true;
      s.closeReason = 'taken over';
      s.conn.reader.stop();
      letGo(s.conn.sock);
    }
    this.deps.logger.info(
      { clients: moved.length, servers: movedServers.length, listeners, waiting: fresh.length },
      'sockets handed over to the new process',
    );
    pooler.pgbLog.line('LOG', `takeover: handed over ${moved.length} clients, ${movedServers.length} server connections and ${fresh.length} connections not logged in yet`);
  }
}

/** SHOW FDS' rows and descriptors, and the state beyond them, as fds() collects them. */
class FdListing {
  readonly rows: FdRow[] = [];
  readonly fds: number[] = [];
  readonly state: HandoverState = { version: STATE_VERSION, pools: [], secrets: [], statements: [], sockets: {} };
  /** The shared statements the moved clients name, by server-side name (state.statements). */
  readonly statements = new Map<string, SharedStatement>();
  private readonly poolIndex = new Map<Pool, number>();

  row(r: FdRow, st: SocketState | null): void {
    this.rows.push(r);
    this.fds.push(r.fd);
    if (st) this.state.sockets[r.fd] = st;
  }

  /** The pool's place in state.pools, added at its first mention. */
  poolOf(p: Pool): number {
    let i = this.poolIndex.get(p);
    if (i === undefined) {
      this.poolIndex.set(p, (i = this.state.pools.length));
      const k = p.scramKeys;
      this.state.pools.push({
        db: p.db.name,
        user: p.user,
        welcome: p.welcome ? [...p.welcome] : null,
        scram: k ? { clientKey: b64(k.clientKey), serverKey: b64(k.serverKey) } : null,
      });
    }
    return i;
  }
}

const scramOf = (p: Pool | undefined) => ({ scramClientKey: p?.scramKeys?.clientKey ?? null, scramServerKey: p?.scramKeys?.serverKey ?? null });

/** The row of a socket no client is logged in on yet (a listener, a connection not logged in). */
function socketRow(fd: number, task: 'pooler' | 'client', addr: string, port: number): FdRow {
  return {
    fd, task, user: null, database: null, addr, port, cancel: 0, link: 0,
    clientEncoding: null, stdStrings: null, datestyle: null, timezone: null, password: null, scramClientKey: null, scramServerKey: null,
  };
}

/**
 * The logged-in pooled clients' rows (those that can move with their state), listed in `out`; the clients that
 * move, the descriptor of each moving client's statements, and the server connections the clients hold.
 */
function listClients(proxy: ProxyServer, out: FdListing) {
  const moved: ClientSession[] = [];
  const ownerFd = new Map<ClientStatements, number>();
  const servers = new Map<PooledServer, { clientFd: number; moves: boolean }>();
  for (const session of proxy.sessions()) {
    const p = session.pooled;
    const ctx = session.context;
    if (session.closed || session.isConsole || !session.loggedIn || p === null || ctx === null || session.remote.tls !== '') continue;
    const h = session.handover();
    if (h === null) continue;
    const fd = h.fd;
    const s = p.server;
    const serverFd = s ? socketFd(s.conn.sock) : -1;
    const told = ctx.serverParams;
    const r: FdRow = {
      fd,
      task: 'client',
      user: ctx.user,
      database: p.pool.db.name,
      addr: session.remote.addr,
      port: session.remote.port,
      cancel: h.key ? cancelColumn(h.key.pid, h.key.secret) : 0,
      link: serverFd > 0 ? serverFd : 0,
      clientEncoding: param(p.settings, 'client_encoding') ?? param(told, 'client_encoding'),
      stdStrings: param(p.settings, 'standard_conforming_strings') ?? param(told, 'standard_conforming_strings'),
      datestyle: param(p.settings, 'DateStyle') ?? param(told, 'DateStyle'),
      timezone: param(p.settings, 'TimeZone') ?? param(told, 'TimeZone'),
      password: null,
      ...scramOf(p.pool),
    };
    let st: ClientState | null = null;
    if (h.moves && h.key !== null) {
      const entries: [string, string, boolean][] = [];
      for (const [name, shared, failed] of p.statements.handover()) {
        out.statements.set(shared.name, shared);
        entries.push([name, shared.name, failed]);
      }
      st = {
        kind: 'client',
        pool: out.poolOf(p.pool),
        user: ctx.user,
        database: ctx.database,
        startup: [...ctx.startupParams],
        told: [...told],
        tx: ctx.txStatus,
        pid: h.key.pid,
        secret: b64(h.key.secret),
        lastActive: session.lastActive,
        requests: session.tracker.handover()!,
        settings: [...p.settings],
        pins: [...p.pins],
        statements: entries,
        uncertain: [...p.statements.uncertain],
        due: p.due,
        link: serverFd > 0 ? serverFd : 0,
      };
      const unsent = session.unsentInput();
      if (unsent.length > 0) st.unsent = b64(unsent);
      moved.push(session);
      ownerFd.set(p.statements, fd);
    }
    if (s && serverFd > 0) servers.set(s, { clientFd: fd, moves: st !== null });
    out.row(r, st);
  }
  return { moved, ownerFd, servers };
}

/** A server connection's row; `clientFd`: its client's (0: idle). */
function serverRow(s: PooledServer, clientFd: number): FdRow {
  const sock = s.conn.sock;
  const key = s.key;
  return {
    fd: socketFd(sock),
    task: 'server',
    user: s.pool.user,
    database: s.pool.db.name,
    addr: sock.remoteAddress ?? 'unix',
    port: sock.remotePort ?? 0,
    cancel: key ? cancelColumn(key.pid, key.secret) : 0,
    link: clientFd,
    clientEncoding: param(s.params, 'client_encoding'),
    stdStrings: param(s.params, 'standard_conforming_strings'),
    datestyle: param(s.params, 'DateStyle'),
    timezone: param(s.params, 'TimeZone'),
    password: null,
    ...scramOf(s.pool),
  };
}

/** What the process taking over needs of a server connection that moves (its key known). */
function serverState(s: PooledServer, out: FdListing, ownerFd: ReadonlyMap<ClientStatements, number>): ServerState {
  const key = s.key!;
  return {
    kind: 'server',
    pool: out.poolOf(s.pool),
    pid: key.pid,
    secret: b64(key.secret),
    params: [...s.params],
    applied: [...s.applied],
    prepared: [...s.prepared.keys()],
    literals: [...literals(s)].map(([name, l]): [string, string, number] => [name, l.version, ownerFd.get(l.owner) ?? 0]),
    target: s.target.display,
    lastUsed: s.lastUsed,
    checkedAt: s.checkedAt,
    dirty: s.dirty,
    closeReason: s.closeReason,
  };
}

/** An idle server connection moves when nothing of it is half-read or unsent and it is plaintext. */
function idleMoves(s: PooledServer): boolean {
  const c = s.conn;
  return (
    !s.closed &&
    !s.dirty &&
    s.client === null &&
    s.replication === null &&
    s.key !== null &&
    c.plain &&
    !c.sawFatal &&
    s.tracker.size === 0 &&
    c.reader.atBoundary &&
    !c.reader.isPaused &&
    c.reader.buffered === 0 &&
    c.sock.writableLength === 0 &&
    socketFd(c.sock) >= 0
  );
}

/** Our descriptor of a socket that is the new process's now: closed without a shutdown (no FIN), nothing written. */
function letGo(sock: Socket): void {
  sock.removeAllListeners();
  sock.on('error', () => {});
  sock.destroy();
}

// ---- the new process's side ------------------------------------------------------------------------------------

/** One SHOW FDS row as it arrived, with the descriptor that came with it. */
interface Received {
  oldFd: number;
  task: string;
  fd: number;
}

/** The console connection to the old process, read natively (SCM_RIGHTS) and blocking: nothing else runs yet. */
class Channel {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending: number[] = [];

  constructor(
    private readonly fd: number,
    private readonly io: FdPassing,
    private readonly what: () => string,
  ) {}

  send(msg: Buffer): void {
    const n = this.io.send(this.fd, msg, [], 10_000);
    if (n < 0) throw new Error(`could not write to the running process's console (errno ${-n}) ${this.what()}`);
  }

  /** The next message, and for a DataRow the descriptor sent with it. `deadline`: Date.now() limit (0: none). */
  next(deadline: number): { msg: Buffer; fd: number | null } {
    for (;;) {
      if (this.buf.length >= 5) {
        const len = this.buf.readInt32BE(1);
        if (len < 4) throw new Error(`invalid message from the running process's console ${this.what()}`);
        if (this.buf.length >= len + 1) {
          const msg = this.buf.subarray(0, len + 1);
          this.buf = this.buf.subarray(len + 1);
          if (msg[0] !== Be.DataRow) return { msg, fd: null };
          const fd = this.pending.shift();
          if (fd === undefined) throw new Error(`a SHOW FDS row came without its descriptor ${this.what()}`);
          return { msg, fd };
        }
      }
      const wait = deadline === 0 ? -1 : deadline - Date.now();
      if (deadline !== 0 && wait <= 0) throw new Error(`the running process did not answer in time ${this.what()}`);
      const got = this.io.recv(this.fd, 256 * 1024, wait);
      if (got === null) continue;
      this.pending.push(...got.fds);
      if (got.bytes.length === 0) throw new Error(`the running process closed its console connection ${this.what()}`);
      this.buf = this.buf.length === 0 ? got.bytes : Buffer.concat([this.buf, got.bytes]);
    }
  }

  /** Descriptors received and not matched to a row (closed: they are nobody's). */
  closeUnused(): void {
    for (const fd of this.pending.splice(0)) closeSync(fd);
  }
}

export interface TakeoverOptions {
  /** unix_socket_dir and listen_port: where the running process's console is. */
  unixSocketDir: string;
  port: number;
  /** suspend_timeout, in seconds (0: none). */
  suspendTimeout: number;
  logger: Logger;
  /** pgBouncer's log lines (the ini's logfile). */
  note(text: string): void;
}

/**
 * pgBouncer's takeover_init to takeover_finish_part1: logs in to the running process's console, suspends it and
 * receives its sockets. Null when no process listens there (pgBouncer then boots normally).
 */
export async function takeOver(o: TakeoverOptions): Promise<Takeover | null> {
  if (!o.unixSocketDir) throw new Error('cannot reboot if unix dir not configured');
  if (o.unixSocketDir.startsWith('@')) throw new Error('cannot reboot with abstract Unix socket');
  const io = loadNativeRelay().relay?.fds;
  if (!io) throw new Error(`cannot reboot: the native addon's descriptor passing is not available (${loadNativeRelay().why})`);
  const path = socketPath(o.unixSocketDir, o.port);
  if (!existsSync(path)) {
    o.note('old process not found, try to continue normally');
    return null;
  }
  const sock = netConnect({ path });
  sock.pause(); // read natively from here on: libuv's reads would drop the descriptors
  const connected = await new Promise<Error | null>((resolve) => {
    sock.once('connect', () => resolve(null));
    sock.once('error', resolve);
  });
  if (connected !== null) {
    const code = (connected as NodeJS.ErrnoException).code;
    sock.destroy();
    if (code === 'ECONNREFUSED' || code === 'ENOENT') {
      o.note('old process not found, try to continue normally');
      return null;
    }
    throw new Error(`cannot reach the running process at ${path}: ${connected.message}`);
  }
  sock.on('error', () => {});
  const fd = socketFd(sock);
  let step = 'logging in';
  const ch = new Channel(fd, io, () => `(${step}, ${path})`);
  try {
    o.note('takeover_init: launching connection');
    ch.send(
      startupMessage(
        new Map([
          ['user', 'pgbouncer'],
          ['database', 'pgbouncer'],
          ['application_name', TAKEOVER_LOGIN],
        ]),
      ),
    );
    const loginBy = Date.now() + 30_000;
    answer(ch, loginBy, () => {});
    step = 'SUSPEND';
    o.note('login OK, sending SUSPEND');
    ch.send(query('SUSPEND;'));
    answer(ch, o.suspendTimeout > 0 ? Date.now() + o.suspendTimeout * 1000 + 30_000 : 0, () => {});
    step = 'SHOW FDS';
    o.note('SUSPEND finished, sending SHOW FDS');
    ch.send(query('SHOW FDS;'));
    let state: HandoverState | null = null;
    const received: Received[] = [];
    answer(ch, Date.now() + 60_000, (msg, rowFd) => {
      if (msg[0] === Be.NoticeResponse) {
        const f = readErrorFields(msg);
        if (f.M === STATE_NOTICE) state = JSON.parse(f.D ?? 'null') as HandoverState;
      } else if (msg[0] === Be.DataRow) {
        const cols = readDataRow(msg);
        received.push({ oldFd: Number(cols[0]?.toString() ?? '-1'), task: cols[1]?.toString() ?? '', fd: rowFd! });
      }
    });
    ch.closeUnused();
    if (state === null || (state as HandoverState).version !== STATE_VERSION) {
      for (const r of received) closeSync(r.fd);
      throw new Error('the running process sent no takeover state it can read (is it pg-steadytext of the same version?)');
    }
    o.note('SHOW FDS finished');
    return new Takeover(sock, state, received, o);
  } catch (err) {
    sock.destroy();
    throw err;
  }
}

/** Reads one answer up to its ReadyForQuery; an ErrorResponse fails the takeover with the old process's words. */
function answer(ch: Channel, deadline: number, each: (msg: Buffer, fd: number | null) => void): void {
  let error: Record<string, string> | null = null;
  for (;;) {
    const { msg, fd } = ch.next(deadline);
    if (msg[0] === Be.ErrorResponse) error = readErrorFields(msg);
    else if (msg[0] === Be.ReadyForQuery) break;
    else if (msg[0] === Be.Authentication && msg.readInt32BE(5) !== 0) {
      throw new Error('the running process asks for a password: the reboot must run as the OS user the running process runs as');
    } else each(msg, fd);
    if (error !== null && error.V === 'FATAL') break;
  }
  if (error !== null) throw new Error(`the running process refused the takeover: ${error.M ?? 'unknown error'}`);
}

/** A socket on a descriptor received, paused; read through a reused buffer, as accepted and opened ones are. */
function socketOn(fd: number, allowHalfOpen: boolean): { sock: Socket; input: ReadBuffer } {
  const input = new ReadBuffer();
  return { sock: paused(fd, allowHalfOpen, { buffer: input.next, callback: input.callback }), input };
}

function paused(fd: number, allowHalfOpen: boolean, onread?: { buffer: () => Buffer; callback: (n: number, b: Buffer) => boolean }): Socket {
  return new Socket({ fd, readable: true, writable: true, allowHalfOpen, pauseOnCreate: true, onread } as ConstructorParameters<typeof Socket>[0]);
}

/** The sockets received, until they are the proxy's (adopt) and the old process has gone (finish). */
export class Takeover {
  /** The listening sockets, for startProxy in place of binding. */
  readonly listenFds: { tcp: number; unix: number | null };
  private readonly byOldFd = new Map<number, number>();

  constructor(
    private readonly sock: Socket,
    private readonly state: HandoverState,
    received: Received[],
    private readonly o: TakeoverOptions,
  ) {
    let tcp = -1;
    let unix: number | null = null;
    for (const r of received) {
      const st = state.sockets[r.oldFd];
      if (st?.kind === 'listener') {
        if (st.unix) unix = r.fd;
        else if (tcp < 0) tcp = r.fd;
        else closeSync(r.fd);
      } else if (st) this.byOldFd.set(r.oldFd, r.fd);
      else closeSync(r.fd); // listed, not moving: the old process ends it
    }
    if (tcp < 0) throw new Error('the running process handed over no TCP listening socket');
    this.listenFds = { tcp, unix };
  }

  /** The server connections, then the clients, put where they were: into the pools and the proxy's sessions. */
  adopt(proxy: ProxyServer, pooling: PoolingEnv): void {
    const pooler = pooling.pooler;
    const log = this.o.logger;
    for (const [user, text] of this.state.secrets) if (!pooler.dynamicSecrets.has(user)) pooler.dynamicSecrets.set(user, parseSecret(text));
    const pools = this.state.pools.map((p): Pool | null => {
      const db = pooler.database(p.db);
      if (db === null) return null;
      const pool = pooler.pool(db, p.user);
      if (!pool.welcome && p.welcome) pool.welcome = new Map(p.welcome);
      if (!pool.scramKeys && p.scram) pool.scramKeys = { clientKey: unb64(p.scram.clientKey), serverKey: unb64(p.scram.serverKey) };
      return pool;
    });
    const shared = new Map<string, SharedStatement>();
    for (const parse of this.state.statements) {
      const st = pooling.statements.restore(unb64(parse));
      shared.set(readCString(st.parse, 5)[0], st);
    }
    const servers = new Map<number, PooledServer>();
    let idle = 0;
    for (const [oldFd, fd] of this.byOldFd) {
      const st = this.state.sockets[oldFd];
      if (st?.kind !== 'server') continue;
      const pool = pools[st.pool];
      if (!pool) {
        end(fd, TERMINATE);
        continue;
      }
      try {
        servers.set(oldFd, serverOn(fd, pool, st, pooling));
      } catch (err) {
        log.error({ err }, 'a server connection could not be taken over');
        end(fd, TERMINATE);
      }
    }
    const linked = new Set<PooledServer>();
    const owners = new Map<number, ClientStatements>();
    const unsentOf: [ClientSession, Buffer][] = [];
    let clients = 0;
    for (const [oldFd, fd] of this.byOldFd) {
      const st = this.state.sockets[oldFd];
      if (st?.kind === 'fresh') {
        proxy.takeover.accept(paused(fd, true));
        continue;
      }
      if (st?.kind !== 'client') continue;
      const pool = pools[st.pool];
      const server = st.link ? (servers.get(st.link) ?? null) : null;
      if (!pool || (st.link && !server)) {
        end(
          fd,
          errorResponse({
            severity: 'FATAL',
            code: '08P01',
            message: pool ? 'server connection lost in the takeover' : `no such database: ${st.database}`,
          }),
        );
        continue;
      }
      if (server) linked.add(server);
      const { sock, input } = socketOn(fd, true);
      try {
        const unsent = st.unsent ? unb64(st.unsent) : null;
        proxy.takeover.adopt((env) => {
          const session = ClientSession.adopt(nextSocketId(), sock, input, env, {
            user: st.user,
            database: st.database,
            startup: new Map(st.startup),
            serverParams: new Map(st.told),
            txStatus: st.tx,
            key: { pid: st.pid, secret: unb64(st.secret) },
            lastActive: st.lastActive,
            requests: st.requests,
            pool,
            server,
            restore(p) {
              p.settings.clear();
              for (const [k, v] of st.settings) p.settings.set(k, v);
              for (const pin of st.pins) p.pins.add(pin);
              for (const [name, serverName, failed] of st.statements) {
                const shared1 = shared.get(serverName);
                if (shared1) p.statements.adopt(name, shared1, failed);
              }
              for (const name of st.uncertain) p.statements.uncertain.add(name);
              p.due = st.due;
              owners.set(oldFd, p.statements);
            },
          });
          if (unsent !== null) unsentOf.push([session, unsent]);
          return session;
        });
      } catch (err) {
        log.error({ err }, 'a client could not be taken over');
        letGo(sock);
        if (server) {
          linked.delete(server);
          server.close('its client could not be taken over');
        }
        continue;
      }
      clients++;
    }
    // SQL's statements under client names: their owners' here, or closed at the next lend when their owner stayed.
    for (const [oldFd, s] of servers) {
      const st = this.state.sockets[oldFd] as ServerState;
      for (const [name, version, owner] of st.literals ?? []) {
        const statements = owners.get(owner);
        if (statements) statements.adoptLiteral(s, name, version);
        else orphanLiteral(s, name);
      }
    }
    for (const s of servers.values()) {
      if (linked.has(s)) continue;
      s.pool.idle.push(s);
      idle++;
    }
    // Requests that waited for a server connection in the old process wait here, in their order, once the pools
    // have their idle connections; before anything the clients' sockets hold (they are read after this turn).
    for (const [session, bytes] of unsentOf) session.feedUnsent(bytes);
    for (const p of pools) if (p) pooler.schedule(p);
    const fresh = [...this.byOldFd.keys()].filter((fd) => this.state.sockets[fd]?.kind === 'fresh').length;
    log.info({ clients, servers: servers.size, idle, fresh }, 'sockets taken over');
    this.o.note(`takeover: took over ${clients} clients, ${servers.size} server connections and ${fresh} connections not logged in yet`);
  }

  /**
   * pgBouncer's takeover_finish: SHUTDOWN to the old process; resolves once it has gone (its console connection
   * closed) and its pidfile with it.
   */
  finish(pidfile: string): Promise<void> {
    this.o.note('sending SHUTDOWN;');
    const sock = this.sock;
    return new Promise<void>((resolve) => {
      sock.on('data', () => {}); // its last words, if any
      sock.once('close', () => resolve());
      sock.resume();
      sock.write(query('SHUTDOWN;'));
    }).then(async () => {
      if (pidfile) {
        this.o.note('waiting for old pidfile to go away');
        for (let i = 0; i < 100 && existsSync(pidfile); i++) await new Promise((r) => setTimeout(r, 100));
      }
      this.o.note('old process killed, resuming work');
    });
  }
}

/** An idle or linked server connection of the old process, on the descriptor received. */
function serverOn(fd: number, pool: Pool, st: ServerState, pooling: PoolingEnv): PooledServer {
  const { sock, input } = socketOn(fd, false);
  const s = new PooledServer(pool);
  s.key = { pid: st.pid, secret: unb64(st.secret) };
  for (const [k, v] of st.params) s.params.set(k, v);
  for (const [k, v] of st.applied) s.applied.set(k, v);
  for (const name of st.prepared) {
    pooling.statements.reserve(name);
    s.prepared.set(name, true);
  }
  s.target = pool.db.targets.find((t) => t.display === st.target) ?? pool.db.target;
  s.localAddr = sock.localAddress ?? '';
  s.localPort = sock.localPort ?? 0;
  s.lastUsed = st.lastUsed;
  s.checkedAt = st.checkedAt;
  s.dirty = st.dirty;
  s.closeReason = st.closeReason;
  s.conn = new ServerConnection(s, { sock, input }, true);
  return s;
}

/** A descriptor received that cannot be taken over: its last words, then closed. */
function end(fd: number, last: Buffer): void {
  const sock = new Socket({ fd, readable: false, writable: true });
  sock.on('error', () => {});
  sock.end(last);
  setTimeout(() => sock.destroy(), 1_000).unref();
}
