// The native steady-state relay (proxy/native/relay.c): finding and loading it, and what it hands back as
// plain values. A session hands both its sockets to it while idle and plaintext; it forwards in C until
// something JS must see, then returns the session (client.ts). The addon's arrays are unpacked here once:
// the session code sees named fields.
//
// Where it comes from, as node-gyp-build looks: build/Release/relay.node, compiled here by `npm install`
// (scripts/build-native.mjs), else a binary shipped with the package in prebuilds/<platform>-<arch>/
// whose name's tags fit this process (relay.napi.uv1.glibc.node: any Node-API Node whose libuv is 1.x,
// on glibc). The install compiles only when no prebuilt binary loads, so a published package uses its
// prebuilt one where it fits and a local build elsewhere; a development tree uses what it just built.
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Socket } from 'node:net';

export type NativeRelayMode = 'auto' | 'on' | 'off';

/** Why the relay gave a session back. */
export const RelayExit = {
  1: 'client-message',
  2: 'server-message',
  3: 'client-eof',
  4: 'server-eof',
  5: 'client-error',
  6: 'server-error',
  7: 'log-full',
  8: 'stopped',
} as const;
export type RelayExitReason = (typeof RelayExit)[keyof typeof RelayExit];

export interface RelayOutcome {
  reason: RelayExitReason;
  /** errno of a socket error. */
  errno: number;
  /** Forwarded but not yet taken by the kernel: JS writes these first. */
  toClient: Buffer;
  toServer: Buffer;
  /** Read but not forwarded, from the message the relay stopped at (or a partial one). */
  fromClient: Buffer;
  fromServer: Buffer;
  /** Type bytes of the forwarded messages that move the request tracker, since the session was last idle; server ones have the high bit set. */
  log: Buffer;
  /** The last ReadyForQuery's transaction status ('I', 'T', 'E'), or '' if none came. */
  status: string;
  bytesFromClient: number;
  bytesFromServer: number;
  /** Body bytes still to come of a large message the relay was streaming: they pass through unread. */
  skipClient: number;
  skipServer: number;
  /**
   * The Query that began the current exchange outside a transaction block, while nothing of its answer was
   * forwarded but its RowDescription (start's keepStatus), and that RowDescription's size in bytes (0: none);
   * or the exchange from a Parse of the unnamed statement (through its Sync, if it came), while nothing was
   * forwarded but the answers before its rows, and how many of those were.
   */
  query: Buffer | null;
  queryRowDescription: number;
  /** Pooling: what the relay ran of a lent connection (start's poolFlags), since it started. */
  pool: RelayPoolCounts;
  /**
   * The Binds and Describes the relay renamed, for each of start's names in its order (empty: none given). A hub
   * member's are over every server it held: the hub counts each server's instead (NativeHub.uses).
   */
  uses: number[];
  /**
   * The exchange a renamed Bind or Describe began while nothing was outstanding, as the server got it (that
   * message, then what followed it, at most 256 bytes), while it is not answered yet; null: none. watchEntry:
   * its statement's index in start's names.
   */
  watch: Buffer | null;
  watchEntry: number;
  /** The server socket's fd the session holds at the exit: a hub member's may be another than it entered with; -1: none. */
  serverFd: number;
}

/** Requests and transactions a lent pooled connection ran in the relay, as SHOW STATS counts them. */
export interface RelayPoolCounts {
  queries: number;
  xacts: number;
  queryUs: number;
  xactUs: number;
  /** Microseconds the request, and the transaction, open now have run so far; -1: none open. */
  queryOpenUs: number;
  xactOpenUs: number;
  /** Binds of renamed statements (start's names: SHOW STATS' total_bind_count). */
  binds: number;
}

/** start's poolFlags (relay.c POOL_*): what a lent pooled connection gives back to the pooler. */
export const RelayPool = {
  /** Query or Parse that may change the session (SET, PREPARE, LISTEN, temp, advisory locks, ...). */
  lend: 1,
  /** Parse, Bind, Describe or Close naming a prepared statement (the pooler renames them), but for start's names. */
  named: 2,
  /** Every ReadyForQuery (statement pooling). */
  statement: 4,
  /** Every simple Query (disable_pqexec: the pooler refuses it). */
  noQuery: 8,
} as const;

export interface RelayState {
  /** Requests sent that still await (part of) their answer. */
  requests: number;
  /** Bytes the relay holds (partial messages, writes the kernel has not taken). */
  held: number;
  bytesFromClient: number;
  bytesFromServer: number;
  status: string;
  /** Bytes still to come of messages being streamed through (the session is mid-message). */
  streaming: number;
  pool: RelayPoolCounts;
  /** The server socket's fd the relay holds (a hub member's changes; -1: it holds none). */
  serverFd: number;
}

type Handle = object & { readonly __relay: unique symbol };
type HubHandle = object & { readonly __hub: unique symbol };
type RawCounts = [number, number, number, number, number, number, number?];
type Raw = [
  number, number, Buffer, Buffer, Buffer, Buffer, Buffer, number, number, number, number, number,
  (Buffer | null)?, number?, RawCounts?, (number[] | null)?, (Buffer | null)?, number?, number?,
];
interface Addon {
  start(clientFd: number, serverFd: number, maxMessage: number, onExit: (raw: Raw) => void, keepStatus?: number, poolFlags?: number, names?: Buffer | null): Handle;
  stop(h: Handle): Raw | null;
  state(h: Handle): [number, number, number, number, number, number, RawCounts?, number?];
  hubCreate?(onEvent: (kind: number, fd: number) => void): HubHandle;
  hubEnter?(
    hub: HubHandle, clientFd: number, serverFd: number, maxMessage: number, onExit: (raw: Raw) => void, keepStatus: number, poolFlags: number,
    names: Buffer | null, serverNames: Buffer | null,
  ): Handle;
  hubAdd?(hub: HubHandle, serverFd: number, serverNames: Buffer | null): void;
  hubUses?(hub: HubHandle): [number, number[]][];
  hubWant?(hub: HubHandle, n: number, waitedUs?: number): number[];
  hubTake?(hub: HubHandle, serverFd: number): number;
  hubMembers?(hub: HubHandle): [number, number, number, number][];
  hubStats?(hub: HubHandle): [number, number, number, number, number, number];
  peer?(fd: number): [number, number, number?] | null;
  ownLoop?(): [boolean, boolean];
  tune?(fd: number, keepalive: number, keepidle: number, keepintvl: number, keepcnt: number, userTimeoutMs: number, sendBuffer: number, receiveBuffer: number): number;
  send?(fd: number, bytes: Buffer): number;
  sendFds?(fd: number, bytes: Buffer, fds: number[], timeoutMs: number): number;
  recvFds?(fd: number, maxBytes: number, timeoutMs: number): [Buffer, number[]] | null;
  listenReusePort?(host: string, port: number, backlog: number): number;
}

export interface NativeRelay {
  /**
   * Takes over both (paused, plaintext) sockets; onExit runs once, when the relay gives them back. keepStatus:
   * the session's transaction status as a character code to keep Queries (RelayOutcome.query), else 0; plus
   * 0x100 to have a ReadyForQuery that opens a transaction block give the session back (JS fences statements there),
   * or 0x200 to have a Query mentioning ONLY do so instead (JS fences only blocks that may be read-only).
   * poolFlags: RelayPool bits, for a lent pooled connection (0: none). names: with RelayPool.named, the client's
   * statements the server connection has, which the relay renames itself: `client\0server\0` for each (prepared.ts).
   */
  start(
    clientFd: number,
    serverFd: number,
    maxMessage: number,
    onExit: (o: RelayOutcome) => void,
    keepStatus?: number,
    poolFlags?: number,
    names?: Buffer | null,
  ): Handle;
  /** Gives the sockets back now; null if the relay already did (onExit ran). */
  stop(h: Handle): RelayOutcome | null;
  state(h: Handle): RelayState;
  /** The uid, gid and pid (0: not told) of the process at the other end of a Unix socket (null: unknown, or an older addon). */
  peer(fd: number): { uid: number; gid: number; pid: number } | null;
  /**
   * Makes this thread's event loop the relay's (relay.c js_own_loop), for a process that runs nothing else: turns
   * off libuv's idle-time metrics (one epoll per wakeup instead of two; performance.eventLoopUtilization() then
   * counts no idle time) and has the relay's callbacks wait for the next event of its sockets themselves, so the
   * loop goes round only for what JS must see (wait_here). Says which of the two it did.
   */
  ownLoop(): { idleTimeOff: boolean; waits: boolean };
  /** pgBouncer's tcp_* options on a socket (relay.c js_tune): 0, or -errno; null without the call. */
  tune: ((fd: number, keepalive: number, keepidle: number, keepintvl: number, keepcnt: number, userTimeoutMs: number, sendBuffer: number, receiveBuffer: number) => number) | null;
  /** One non-blocking send(2): bytes taken (0: would block), -errno on an error; null without the call. */
  send: ((fd: number, bytes: Buffer) => number) | null;
  /** Descriptors over a Unix socket (SCM_RIGHTS), for the online restart (takeover.ts); null without the calls. */
  fds?: FdPassing | null;
  /** A listening TCP socket with SO_REUSEPORT (pgBouncer's so_reuseport): its descriptor; throws with the reason. */
  listenReusePort?: ((host: string, port: number, backlog: number) => number) | null;
  /** A pool's hand-off of server connections between clients in C (relay.c's hub; pool-hub.ts); null without it. */
  hubCreate?: ((onEvent: (event: HubEvent, serverFd: number) => void) => NativeHub) | null;
}

/** What a hub tells JS: a server JS asked for left it; clients queue with no server free; a server spoke unasked or closed between transactions (it left the hub). */
export type HubEvent = 'server' | 'starved' | 'spoke';

/** A member's state in the hub (hubMembers). */
export const HubState = ['waiting', 'queued', 'idle', 'busy'] as const;
export type HubMemberState = (typeof HubState)[number];

export interface HubMember {
  clientFd: number;
  /** -1: none. */
  serverFd: number;
  state: HubMemberState;
  /** Microseconds queued so far (state queued). */
  queuedUs: number;
}

export interface HubStats {
  /** Servers handed from client to client in C. */
  handoffs: number;
  /** The waits those clients had, in microseconds. */
  waitUs: number;
  servers: number;
  queued: number;
  members: number;
  /** How long the oldest queued client has waited, in microseconds (0: none queued). */
  oldestQueuedUs: number;
}

/** relay.c's hub, one per pool. */
export interface NativeHub {
  /**
   * The client (and the server it holds, -1: none) join the hub; the handle works with stop and state. names: with
   * RelayPool.named, the client's statements the member renames itself (start's names); serverNames: the server-side
   * names of the statements prepared on the server, `name\0` each (a member renames only to those the server it holds has).
   */
  enter(
    clientFd: number,
    serverFd: number,
    maxMessage: number,
    onExit: (o: RelayOutcome) => void,
    keepStatus: number,
    poolFlags: number,
    names: Buffer | null,
    serverNames: Buffer | null,
  ): Handle;
  /** A free server for queued clients, with the server-side names of its statements (enter's serverNames). */
  add(serverFd: number, serverNames: Buffer | null): void;
  /**
   * The servers that left the hub (to JS, or with an exiting member) since the last call with statements renamed on
   * them: for each, the uses of each of its serverNames in their order (the connection's LRU).
   */
  uses(): { serverFd: number; uses: number[] }[];
  /**
   * Up to n servers back: those free or idle now (their fds), the rest at their holders' transaction ends ('server'
   * events); with waitedUs (JS's oldest waiter's wait), not before queued clients that waited longer.
   */
  want(n: number, waitedUs?: number): number[];
  /** One server back: 'now', 'later' (a 'server' event), or 'absent'. */
  take(serverFd: number): 'now' | 'later' | 'absent';
  members(): HubMember[];
  stats(): HubStats;
}
export type RelayHandle = Handle;

export interface FdPassing {
  /** Sends all of `bytes`, `fds` with its first byte, waiting up to timeoutMs where the socket is full: bytes sent, or -errno. */
  send(fd: number, bytes: Buffer, fds: number[], timeoutMs: number): number;
  /** One receive of up to maxBytes and the descriptors that came with it (bytes empty: end of stream); null after timeoutMs with nothing. */
  recv(fd: number, maxBytes: number, timeoutMs: number): { bytes: Buffer; fds: number[] } | null;
}

function outcome(r: Raw): RelayOutcome {
  return {
    reason: RelayExit[r[0] as keyof typeof RelayExit] ?? 'stopped',
    errno: r[1],
    toClient: r[2],
    toServer: r[3],
    fromClient: r[4],
    fromServer: r[5],
    log: r[6],
    status: r[7] ? String.fromCharCode(r[7]) : '',
    bytesFromClient: r[8],
    bytesFromServer: r[9],
    skipClient: r[10],
    skipServer: r[11],
    query: r[12] ?? null,
    queryRowDescription: r[13] ?? 0,
    pool: counts(r[14]),
    uses: r[15] ?? [],
    watch: r[16] ?? null,
    watchEntry: r[17] ?? -1,
    serverFd: r[18] ?? -1,
  };
}

function counts(c: RawCounts | undefined): RelayPoolCounts {
  if (c === undefined) return { queries: 0, xacts: 0, queryUs: 0, xactUs: 0, queryOpenUs: -1, xactOpenUs: -1, binds: 0 };
  return { queries: c[0], xacts: c[1], queryUs: c[2], xactUs: c[3], queryOpenUs: c[4], xactOpenUs: c[5], binds: c[6] ?? 0 };
}

/** The package root: the nearest directory above this file (proxy/ or dist/proxy/) with a package.json. */
function packageRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (let dir = here, i = 0; i < 4; i++, dir = dirname(dir)) if (existsSync(join(dir, 'package.json'))) return dir;
  return dirname(here);
}

/** What a prebuilt binary's file name says it needs (node-gyp-build's tags: relay.napi.uv1.glibc.node). */
interface Tags { file: string; runtime?: string; napi: boolean; abi?: string; uv?: string; armv?: string; libc?: string; specificity: number }

function parseTags(file: string): Tags | null {
  const parts = file.split('.');
  if (parts.pop() !== 'node') return null;
  const t: Tags = { file, napi: false, specificity: 0 };
  for (const tag of parts) {
    if (tag === 'node' || tag === 'electron' || tag === 'node-webkit') t.runtime = tag;
    else if (tag === 'napi') t.napi = true;
    else if (tag.startsWith('abi')) t.abi = tag.slice(3);
    else if (tag.startsWith('uv')) t.uv = tag.slice(2);
    else if (tag.startsWith('armv')) t.armv = tag.slice(4);
    else if (tag === 'glibc' || tag === 'musl') t.libc = tag;
    else continue;
    t.specificity++;
  }
  return t;
}

let libcOfThisProcess: string | undefined;
function libc(): string {
  if (libcOfThisProcess === undefined) {
    const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
    libcOfThisProcess = header?.glibcVersionRuntime ? 'glibc' : 'musl';
  }
  return libcOfThisProcess;
}

function fits(t: Tags): boolean {
  if (t.runtime && t.runtime !== 'node') return false;
  if (t.abi && t.abi !== process.versions.modules && !t.napi) return false;
  if (t.uv && t.uv !== process.versions.uv.split('.')[0]) return false;
  if (t.armv && t.armv !== String((process.config.variables as { arm_version?: string | number }).arm_version ?? '')) return false;
  if (t.libc && process.platform === 'linux' && t.libc !== libc()) return false;
  return true;
}

/** Where the addon may be, in the order tried: the local build, then the best-fitting prebuilt binary. */
function addonCandidates(root: string): string[] {
  const found: string[] = [];
  const local = join(root, 'build', 'Release', 'relay.node');
  if (existsSync(local)) found.push(local);
  const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (existsSync(dir)) {
    const tags = readdirSync(dir).map(parseTags).filter((t): t is Tags => t !== null && fits(t));
    // An ABI-specific build before a Node-API one, then the most specific name.
    tags.sort((a, b) => (a.abi ? 0 : 1) - (b.abi ? 0 : 1) || b.specificity - a.specificity);
    found.push(...tags.map((t) => join(dir, t.file)));
  }
  return found;
}

function wrap(addon: Addon): NativeRelay {
  return {
    start: (c, s, max, onExit, keep = 0, pool = 0, names = null) => addon.start(c, s, max, (raw) => onExit(outcome(raw)), keep, pool, names),
    stop: (h) => {
      const r = addon.stop(h);
      return r === null ? null : outcome(r);
    },
    state: (h) => {
      const s = addon.state(h);
      return { requests: s[0], held: s[1], bytesFromClient: s[2], bytesFromServer: s[3], status: s[4] ? String.fromCharCode(s[4]) : '', streaming: s[5], pool: counts(s[6]), serverFd: s[7] ?? -1 };
    },
    hubCreate: addon.hubCreate ? (onEvent) => wrapHub(addon, addon.hubCreate!((kind, fd) => onEvent(kind === 1 ? 'server' : kind === 3 ? 'spoke' : 'starved', fd))) : null,
    send: addon.send ? (fd, bytes) => addon.send!(fd, bytes) : null,
    listenReusePort: addon.listenReusePort ? (host, port, backlog) => addon.listenReusePort!(host, port, backlog) : null,
    fds:
      addon.sendFds && addon.recvFds
        ? {
            send: (fd, bytes, fds, timeoutMs) => addon.sendFds!(fd, bytes, fds, timeoutMs),
            recv: (fd, maxBytes, timeoutMs) => {
              const r = addon.recvFds!(fd, maxBytes, timeoutMs);
              return r === null ? null : { bytes: r[0], fds: r[1] };
            },
          }
        : null,
    tune: addon.tune ? (fd, ka, idle, intvl, cnt, user, snd, rcv) => addon.tune!(fd, ka, idle, intvl, cnt, user, snd, rcv) : null,
    ownLoop: () => {
      const [idleTimeOff, waits] = addon.ownLoop?.() ?? [false, false];
      return { idleTimeOff, waits };
    },
    peer: (fd) => {
      const p = addon.peer?.(fd) ?? null;
      return p === null ? null : { uid: p[0], gid: p[1], pid: p[2] ?? 0 };
    },
  };
}

function wrapHub(addon: Addon, h: HubHandle): NativeHub {
  return {
    enter: (c, s, max, onExit, keep, pool, names, serverNames) => addon.hubEnter!(h, c, s, max, (raw) => onExit(outcome(raw)), keep, pool, names, serverNames),
    add: (fd, serverNames) => addon.hubAdd!(h, fd, serverNames),
    uses: () => (addon.hubUses ? addon.hubUses(h).map(([serverFd, uses]) => ({ serverFd, uses })) : []),
    want: (n, waitedUs) => (waitedUs === undefined ? addon.hubWant!(h, n) : addon.hubWant!(h, n, waitedUs)),
    take: (fd) => {
      const r = addon.hubTake!(h, fd);
      return r === 1 ? 'now' : r === 0 ? 'later' : 'absent';
    },
    members: () => addon.hubMembers!(h).map(([clientFd, serverFd, state, queuedUs]) => ({ clientFd, serverFd, state: HubState[state] ?? 'busy', queuedUs })),
    stats: () => {
      const [handoffs, waitUs, servers, queued, members, oldestQueuedUs] = addon.hubStats!(h);
      return { handoffs, waitUs, servers, queued, members, oldestQueuedUs: oldestQueuedUs ?? 0 };
    },
  };
}

let loaded: { relay: NativeRelay | null; why: string } | undefined;

/** The relay, or null with the reason it is not available. Loaded once per process. */
export function loadNativeRelay(): { relay: NativeRelay | null; why: string } {
  if (loaded) return loaded;
  const root = packageRoot();
  const candidates = addonCandidates(root);
  if (candidates.length === 0) {
    loaded = {
      relay: null,
      why: `build/Release/relay.node is missing and no prebuilt binary in prebuilds/${process.platform}-${process.arch} fits: run \`npm run build:native\` (needs a C compiler and the headers of this Node)`,
    };
    return loaded;
  }
  const failures: string[] = [];
  for (const path of candidates) {
    try {
      loaded = { relay: wrap(createRequire(import.meta.url)(path) as Addon), why: `loaded from ${path}` };
      return loaded;
    } catch (err) {
      failures.push(`${path} does not load (${(err as Error).message})`);
    }
  }
  loaded = { relay: null, why: `${failures.join('; ')}: rebuild it with \`npm run build:native\`` };
  return loaded;
}

/** The file descriptor of a plain TCP or Unix socket, or -1. */
export function socketFd(sock: unknown): number {
  const fd = (sock as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * The largest write(2) while tcp_socket_buffer is set, as pgBouncer's writes are at most pkt_buf. Linux takes a
 * whole write into one segment of up to 64 kB however small SO_SNDBUF is, and a full send buffer then waits for
 * that segment's (delayed) ACK: through the pooler, a pg_basebackup with pgBouncer's test.ini crawled at ~2 MB/s.
 */
let sendPiece = 0;

/** pgBouncer's tcp_* settings, as tuneTcp takes them. */
export interface TcpTuning {
  tcpKeepalive: boolean;
  tcpKeepidle: number;
  tcpKeepintvl: number;
  tcpKeepcnt: number;
  tcpUserTimeout: number;
  tcpSocketBuffer: number;
}

/**
 * pgBouncer's tune_socket on a connected TCP socket (Unix sockets are left alone): keepalive with its idle time,
 * interval and count, TCP_USER_TIMEOUT and the send buffer; 0 leaves an option at the system's default. The
 * receive buffer is the listening socket's (tuneListener), which accepted connections inherit before their
 * handshake; server connections keep the system's. Returns null when done, else why not (the addon missing:
 * keepalive alone, through Node; or the kernel's refusal).
 */
export function tuneTcp(sock: Socket, t: TcpTuning): string | null {
  if (sock.remoteAddress === undefined && sock.localPort === undefined) return null; // a Unix socket
  const tune = loadNativeRelay().relay?.tune;
  const fd = socketFd(sock);
  if (!tune || fd < 0) {
    sock.setKeepAlive(t.tcpKeepalive, t.tcpKeepidle * 1000);
    return t.tcpKeepintvl || t.tcpKeepcnt || t.tcpUserTimeout || t.tcpSocketBuffer ? 'the native addon is not built: only tcp_keepalive and tcp_keepidle apply' : null;
  }
  sendPiece = Math.max(0, t.tcpSocketBuffer);
  // Node hands the writes queued behind a full socket to one writev, which the kernel again takes whole.
  if (sendPiece > 0) (sock as unknown as { _writev: unknown })._writev = null;
  const rc = tune(fd, t.tcpKeepalive ? 1 : 0, t.tcpKeepidle, t.tcpKeepintvl, t.tcpKeepcnt, t.tcpUserTimeout, t.tcpSocketBuffer, 0);
  return rc === 0 ? null : `setsockopt failed (errno ${-rc})`;
}

/** tcp_socket_buffer on a listening TCP socket: both buffers, inherited by the connections it accepts. */
export function tuneListener(server: unknown, t: TcpTuning): string | null {
  if (t.tcpSocketBuffer <= 0) return null;
  const tune = loadNativeRelay().relay?.tune;
  const fd = socketFd(server);
  if (!tune) return 'the native addon is not built: tcp_socket_buffer does not apply';
  if (fd < 0) return "the listening socket is another process's (workers): tcp_socket_buffer applies to the send buffers only";
  const rc = tune(fd, -1, 0, 0, 0, 0, t.tcpSocketBuffer, t.tcpSocketBuffer);
  return rc === 0 ? null : `setsockopt failed (errno ${-rc})`;
}

/** Who is at the other end of a Unix socket (pgBouncer's getpeereid), or null where the addon cannot tell. */
export function peerCredentials(sock: unknown): { uid: number; gid: number; pid: number } | null {
  const fd = socketFd(sock);
  return fd < 0 ? null : (loadNativeRelay().relay?.peer(fd) ?? null);
}

let sendCall: ((fd: number, bytes: Buffer) => number) | null | undefined;

/**
 * socket.write for a plain socket with nothing queued: one send(2) from C instead of Node's stream layers (a
 * WriteWrap and its callbacks per write, the largest JS cost of a pooled transaction). What the kernel does
 * not take, and every error, goes through socket.write, which queues or reports it as before. `fd` is the
 * socket's (socketFd), read once: a destroyed socket is never written to directly, so a reused number is safe.
 */
export function writeFast(sock: Socket, fd: number, bytes: Buffer): boolean {
  sendCall ??= loadNativeRelay().relay?.send ?? null;
  if (sendPiece > 0 && bytes.length > sendPiece) return writePieces(sock, fd, bytes);
  if (!sendsDirectly(sock, fd)) return sock.write(bytes);
  const n = sendCall!(fd, bytes);
  if (n === bytes.length) return true;
  return sock.write(n > 0 ? bytes.subarray(n) : bytes);
}

/** Whether a write may skip Node's stream: the call exists, the socket is plain, open, and has nothing queued. */
function sendsDirectly(sock: Socket, fd: number): boolean {
  return sendCall != null && fd >= 0 && sock.writableLength === 0 && !sock.destroyed && sock.writable && !sock.connecting;
}

function writePieces(sock: Socket, fd: number, bytes: Buffer): boolean {
  let at = 0;
  if (sendsDirectly(sock, fd)) {
    while (at < bytes.length) {
      const piece = bytes.subarray(at, at + sendPiece);
      const n = sendCall!(fd, piece);
      if (n <= 0) break;
      at += n;
      if (n < piece.length) break;
    }
  }
  let room = true;
  for (; at < bytes.length; at += sendPiece) room = sock.write(bytes.subarray(at, at + sendPiece)) && room;
  return room;
}
