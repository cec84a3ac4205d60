// The listener: accepts client connections and gives each its session (client.ts), which gets its own
// upstream connection. Also stats and graceful shutdown: stop accepting, let sessions finish what they
// are running within the grace period, then end the rest with FATAL 57P01.
import { createServer, type Server, type Socket } from 'node:net';
import { createHash } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { CancelRegistry } from './cancel.js';
import { ClientSession, type SessionEnv, type Totals } from './client.js';
import type { Interceptor } from './interceptor.js';
import { adoptAccepted } from './read-buffer.js';
import { loadNativeRelay, tuneListener, type NativeRelay, type NativeRelayMode } from './relay.js';
import { parseUpstreamUrl, socketPath, type UpstreamTarget } from './upstream.js';
import { targetsFor, type PoolingEnv } from './pooling.js';
import { loadStatementParser } from './statement-effects.js';
import { nextSocketId } from './socket-id.js';
import { chmodSync, chownSync, linkSync, readFileSync, renameSync, rmSync, unlinkSync } from 'node:fs';
import { resolve } from 'node:path';
import { certAllows, clientTlsFrom, parseIdentFile, type ClientTls, type IdentMapping } from './client-tls.js';
import { matchHba, type PoolerSettings } from '../config/pgbouncer.js';
import { ClientAuth } from './auth.js';
import { poolError, type Pool } from './pool.js';

export interface ProxyOptions {
  /** Where to listen; port 0 picks a free port (see ProxyServer.address). */
  listen: { host: string; port: number };
  /**
   * postgres:// URL of the database. Host, port (or a Unix socket directory as host), sslmode (disable,
   * allow, prefer, require, verify-ca, verify-full; default prefer), sslrootcert, sslcert, sslkey.
   * User, password and database come from each client.
   */
  upstream: string;
  /** PEM certificate and key: clients may then use TLS (SSLRequest answered 'S'); else 'N'. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Pooling: pgBouncer's TLS settings (client_tls_*, server_tls_*) in place of `tls`, live as they change. */
  poolerTls?: PoolerTls;
  /** Largest client message accepted; longer ones end the session with 54000. */
  maxMessageBytes: number;
  /** Default grace period of close(). */
  shutdownGraceMs: number;
  /** Upstream TCP connect + TLS handshake limit. */
  connectTimeoutMs: number;
  logger: Logger;
  interceptor?: Interceptor;
  /** The cancel keys' registry; a worker process passes one that routes other workers' keys (proxy/workers.ts). */
  cancels?: CancelRegistry;
  /**
   * auto (default): idle plaintext sessions are relayed by the native relay when it is built, in JS
   * otherwise; on: refuse to start without it; off: always JS.
   */
  nativeRelay?: NativeRelayMode;
  /**
   * The process's event loop is the proxy's alone (the CLI): with the native relay, libuv's idle-time metrics are
   * turned off (one epoll per wakeup, not two) and the relay waits for its sockets' next events inside its own
   * callbacks (NativeRelay.ownLoop). An application that embeds the proxy keeps its loop as Node made it by
   * default, since it may read performance.eventLoopUtilization() (load shedding, health checks).
   */
  ownsLoop?: boolean;
  /** Pooling (pgbouncer.ini): clients log in to the proxy and share server connections. */
  pooling?: PoolingEnv;
  /** Also listen on `<dir>/.s.PGSQL.<port>` (pgBouncer's unix_socket_dir); '' or absent: no Unix socket. */
  unixSocketDir?: string;
  /** Worker processes: the Unix socket is the primary's, which removed a stale one (removing it here would remove the one bound for the other workers). */
  sharedUnixSocket?: boolean;
  /** Online restart (takeover.ts): the listening sockets of the process this one replaces, used instead of binding. */
  listenFds?: { tcp: number; unix: number | null };
  /**
   * pgBouncer's so_reuseport: the TCP port is bound with SO_REUSEPORT, so that other processes (peers) may listen
   * on it too and the kernel spreads connections among them. Needs the native addon (Node 20 cannot set it).
   */
  reusePort?: boolean;
}

export interface ProxyStats {
  /** Sessions open now (including those still authenticating). */
  clients: number;
  /** Bytes held in memory for all sessions now (writes not yet taken by the kernel, partial messages). */
  buffered: number;
  /** hubHandoffs: server connections the pools' native hubs handed from client to client (pool-hub.ts). */
  totals: Totals & { cancelsForwarded: number; cancelsIgnored: number; hubHandoffs: number };
}

export interface ProxyServer {
  address: { host: string; port: number };
  stats(): ProxyStats;
  /**
   * Stops accepting, lets running queries and open transactions finish for up to `graceMs` (default
   * shutdownGraceMs), then ends the remaining sessions with FATAL 57P01. Resolves when all are closed.
   */
  close(graceMs?: number): Promise<void>;
  /** Stops listening (TCP and Unix socket) and refuses connections still queued; open sessions go on. */
  stopAccepting(): void;
  /** The sessions open now (the admin console's SHOW CLIENTS). */
  sessions(): ClientSession[];
  /** Online restart (takeover.ts): the listeners as SUSPEND and the handover need them. */
  readonly takeover: ListenerTakeover;
}

export interface ListenerTakeover {
  /** SUSPEND (true): connections are accepted and held unread; RESUME (false): their sessions start. */
  hold(on: boolean): void;
  /** The listening sockets (addr 'unix' for the Unix socket) and the connections held. */
  sockets(): { listeners: { fd: number; addr: string; port: number }[]; held: Socket[] };
  /** Handed over: nothing is accepted here any more; the Unix socket's file stays for the process that has it now. */
  release(): void;
  /** A connection handed over before its session began: a session as for one accepted here. */
  accept(sock: Socket): void;
  /** A session handed over by the replaced process, made on this proxy's settings. */
  adopt(make: (env: SessionEnv) => ClientSession): void;
}

export async function startProxy(opts: ProxyOptions): Promise<ProxyServer> {
  const log = opts.logger;
  // Pooled sessions classify statements (SET, PREPARE, pins) with the real parser, loaded once here.
  if (opts.pooling) await loadStatementParser();
  const target = parseUpstreamUrl(opts.upstream);
  const cancels = opts.cancels ?? new CancelRegistry();
  const sessions = new Sessions();
  const fixedContext = opts.tls ? createSecureContext({ cert: opts.tls.cert, key: opts.tls.key }) : undefined;
  const poolerTls = opts.poolerTls;
  const env: SessionEnv = {
    target,
    // Read at each SSLRequest: a RELOAD, SIGHUP or SET changes it for the handshakes that follow.
    get secureContext(): SecureContext | undefined {
      return poolerTls ? poolerTls.client.context : fixedContext;
    },
    // Pooling: pgBouncer's max_packet_size where it is the lower limit, read at each session's start (RELOAD).
    get maxMessageBytes(): number {
      return Math.min(opts.maxMessageBytes, opts.pooling?.pooler.settings.maxPacketSize ?? Infinity);
    },
    connectTimeoutMs: opts.connectTimeoutMs,
    logger: log,
    interceptor: opts.interceptor,
    cancels,
    totals: newTotals(),
    // Pooling lends a server connection to it between a client's transactions while nobody waits (pooled-session.ts).
    nativeRelay: nativeRelayFor(opts.nativeRelay ?? 'auto', opts.ownsLoop === true, log),
    pooling: opts.pooling && poolerTls ? poolerTls.wrap(opts.pooling) : opts.pooling,
    onClosed: (session) => sessions.delete(session),
  };
  let closing: Promise<void> | null = null;
  let accepting = true;
  /** SUSPEND: accepted connections wait here unread. */
  let held: Socket[] | null = null;

  const accept = (accepted: Socket) => {
    if (closing || !accepting) {
      accepted.destroy();
      return;
    }
    if (held !== null) {
      accepted.on('error', () => {});
      held.push(accepted);
      return;
    }
    env.totals.accepted++;
    const { sock: socket, input } = adoptAccepted(accepted, true);
    try {
      sessions.add(new ClientSession(nextSocketId(), socket, env, input));
    } catch (err) {
      log.error({ err }, 'could not start a session');
      socket.destroy();
    }
  };
  const server: Server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, accept);
  server.on('error', (err) => log.error({ err }, 'listener error'));
  let unix: Server | null = null;
  let address: { host: string; port: number };
  if (opts.listenFds) {
    ({ address, unix } = await adoptListeners(server, opts.listenFds, accept, log));
  } else address = await listen(server, opts.listen, opts.reusePort === true, opts.pooling?.pooler.settings.listenBacklog);
  if (opts.pooling) {
    const untuned = tuneListener(server, opts.pooling.pooler.settings);
    if (untuned) log.warn({ why: untuned }, 'tcp_socket_buffer not applied to the listening socket');
  }
  // The Unix socket's file: bound here, or adopted from the process this one took over.
  const unixFile = opts.unixSocketDir ? socketPath(opts.unixSocketDir, address.port) : null;
  if (unixFile && !opts.listenFds) {
    try {
      if (!opts.sharedUnixSocket) unlinkSync(unixFile); // a stale socket of an earlier run (pgBouncer does the same)
    } catch {
      // none there
    }
    unix = createServer({ allowHalfOpen: true, pauseOnConnect: true }, accept);
    unix.on('error', (err) => log.error({ err }, 'unix socket listener error'));
    await new Promise<void>((resolve, reject) => {
      unix!.once('error', reject);
      unix!.listen({ path: unixFile, backlog: opts.pooling?.pooler.settings.listenBacklog }, () => resolve());
    });
    if (opts.pooling) socketFileAccess(unixFile, opts.pooling.pooler.settings);
    log.info({ unixSocket: unixFile }, 'listening on a Unix socket');
  }
  log.info({ listen: `${address.host}:${address.port}`, upstream: target.display, sslmode: target.sslmode, tls: !!env.secureContext, relay: env.nativeRelay ? 'native' : 'js' }, 'proxy listening');

  let released = false;
  const unixPath = unix ? unixFile : null;
  // Taken over, the Unix socket is not bound here: closing it leaves the file, which pgBouncer removes at exit.
  const unlinkAdopted = opts.listenFds ? unixPath : null;
  const takeover: ListenerTakeover = {
    hold(on) {
      if (on) held ??= [];
      else if (held !== null) {
        const waiting = held;
        held = null;
        for (const sock of waiting) accept(sock);
      }
    },
    sockets: () => ({
      listeners: [server, unix].flatMap((srv) => {
        const fd = srv ? listenerFd(srv) : -1;
        if (fd < 0) return [];
        const a = srv!.address();
        return [srv === unix || a === null || typeof a === 'string' ? { fd, addr: 'unix', port: address.port } : { fd, addr: a.address, port: a.port }];
      }),
      held: held ?? [],
    }),
    release() {
      released = true;
      accepting = false;
      held = null;
      server.close();
      const path = unixPath;
      if (unix && path && !unlinkAdopted) {
        // Closing a socket Node bound removes its file, which the new process listens on now: it is kept under
        // another name meanwhile.
        const keep = `${path}.${process.pid}`;
        let kept = false;
        try {
          rmSync(keep, { force: true });
          linkSync(path, keep);
          kept = true;
        } catch (err) {
          log.error({ err, path }, 'the Unix socket could not be kept for the process taking over');
        }
        unix.close();
        if (kept) renameSync(keep, path);
      } else unix?.close();
    },
    accept,
    adopt: (make) => sessions.add(make(env)),
  };

  return {
    address,
    takeover,
    stats: () => sessions.stats(env.totals, cancels, opts.pooling?.pooler.pools()),
    close(graceMs = opts.shutdownGraceMs) {
      unix?.close();
      if (unlinkAdopted && !released) rmSync(unlinkAdopted, { force: true });
      closing ??= shutdown(server, sessions, graceMs, log);
      return closing;
    },
    stopAccepting() {
      if (!accepting) return;
      accepting = false;
      server.close();
      unix?.close();
    },
    sessions: () => sessions.list(),
  };
}

/** The settings whose change makes pgBouncer set its TLS up again (sbuf_tls_setup: SET of a *_tls_* key, RELOAD, SIGHUP). */
const CLIENT_TLS_FIELDS = ['clientTlsSslmode', 'clientTlsKeyFile', 'clientTlsCertFile', 'clientTlsCaFile', 'clientTlsProtocols', 'clientTlsCiphers', 'clientTlsDheparams', 'clientTlsEcdhcurve'] as const;
const SERVER_TLS_FIELDS = ['serverTlsSslmode', 'serverTlsKeyFile', 'serverTlsCertFile', 'serverTlsCaFile', 'serverTlsProtocols', 'serverTlsCiphers'] as const;

/**
 * pgBouncer's TLS of a pooler, as its sbuf_tls_setup keeps it: the clients' context (client_tls_*), and the
 * server connections' settings (server_tls_*). Set up at start and again at RELOAD, SIGHUP and a console SET of
 * a TLS setting; settings that cannot be applied (a missing file, a bad protocol list) leave the old ones in
 * use. When the server settings change, every pool's connections made with the old ones close: idle ones now,
 * the others as their clients give them back ("database configuration changed").
 */
export class PoolerTls {
  client: ClientTls & { identMaps: Map<string, IdentMapping[]> } = { sslmode: 'disable', context: undefined, identMaps: new Map() };
  /** What the server connections were made with (sslmode, settings, files' contents); null before the first setup. */
  private serverApplied: string | null = null;
  private watched: PoolerSettings | null = null;

  constructor(
    private readonly pooling: PoolingEnv,
    private readonly defaultTarget: UpstreamTarget,
    private readonly log: Logger,
  ) {}

  /**
   * Applies the pooler's settings now. `failure`: what to log after pgBouncer's reason when they cannot be
   * applied, the old ones staying in use; without it (at start) the reason is thrown. Watches the settings
   * object for console SETs from here on.
   */
  setup(failure?: string): boolean {
    const pooler = this.pooling.pooler;
    const st = pooler.settings;
    this.watch(st);
    let client: PoolerTls['client'];
    let serverKey: string;
    let targets: Map<string, UpstreamTarget[]> | null = null;
    try {
      client = { ...clientTlsFrom(st), identMaps: this.identMaps(st) };
      serverKey = serverTlsKey(st);
      // As pgBouncer: recycling is needed when the sslmode changed, or TLS is on and its settings changed.
      if (this.serverApplied !== null && serverKey !== this.serverApplied) {
        targets = new Map();
        for (const [name, db] of pooler.databases) targets.set(name, targetsFor(db.entry, this.defaultTarget, st));
      }
    } catch (err) {
      const why = (err as Error).message;
      if (failure === undefined) throw err;
      pooler.pgbLog.line('ERROR', why);
      pooler.pgbLog.line('ERROR', failure);
      this.log.error({ err: why }, failure);
      return false;
    }
    this.client = client;
    this.serverApplied = serverKey;
    if (targets) {
      this.log.info('server TLS settings changed: server connections made with the old ones close');
      for (const [name, t] of targets) pooler.databases.get(name)!.targets = t;
      for (const p of pooler.pools()) {
        p.closeAll(false, 'database configuration changed');
        // As pgBouncer's tag_pool_dirty: the welcome is learnt again. A login failure cached under the old
        // settings fails no client any more (pgBouncer's clients wait for the welcome instead, which a pool
        // whose logins failed lacks; ours would meet the cached error).
        p.welcome = null;
        p.loginFailure = null;
      }
    }
    return true;
  }

  /**
   * The console's SET assigns the settings object's field: accessors on the TLS fields of the object in use set
   * TLS up again at once, as pgBouncer's admin_set does (RELOAD brings a new object, watched at its setup).
   */
  private watch(st: PoolerSettings): void {
    if (this.watched === st) return;
    this.watched = st;
    for (const field of [...CLIENT_TLS_FIELDS, ...SERVER_TLS_FIELDS]) {
      let value = st[field];
      Object.defineProperty(st, field, {
        enumerable: true,
        configurable: true,
        get: () => value,
        set: (v: string) => {
          value = v;
          if (this.watched === st) this.setup('TLS settings could not be applied, still using old configuration');
        },
      });
    }
  }

  /** auth_ident_file's maps, read with the hba file (auth_type = hba); an unreadable file maps nobody. */
  private identMaps(st: PoolerSettings): Map<string, IdentMapping[]> {
    if (st.authType !== 'hba' || !st.authIdentFile) return new Map();
    try {
      return parseIdentFile(readFileSync(resolve(st.authIdentFile), 'utf8'));
    } catch (err) {
      this.pooling.pooler.pgbLog.line('WARNING', `could not load ident file ${st.authIdentFile}: ${(err as Error).message}`);
      return new Map();
    }
  }

  /**
   * The sessions' side of the pooling: pgBouncer's client_tls_sslmode require and verify-* refuse plaintext
   * clients but on the Unix socket ("SSL required"), and the cert method (auth_type cert, or the hba rule's)
   * lets in a client whose verified certificate names the user, or whose name the rule's ident map takes to it.
   */
  wrap(pooling: PoolingEnv): PoolingEnv {
    return {
      ...pooling,
      authenticator: (user, database, address, who) => {
        const { tls, certNames, peerUid: peer } = who;
        const local = address.startsWith('/') || address.startsWith('?');
        const mode = this.client.sslmode;
        if (!tls && !local && (mode === 'require' || mode === 'verify-ca' || mode === 'verify-full')) return poolError('SSL required');
        const pooler = pooling.pooler;
        const st = pooler.settings;
        const rule = st.authType === 'hba' ? matchHba(pooler.config.hba ?? [], { local, ssl: tls, database, user, address: address.replace(/:\d+$/, '') }) : null;
        const got = pooling.authenticator(user, database, address, who);
        if (rule?.method === 'peer') {
          // pgBouncer's peer: the Unix socket's OS user is the user, or the rule's ident map takes it to the user.
          const certifyPeer = <T>(a: T): T => {
            if (!(a instanceof ClientAuth)) return a;
            const why = (reason: string) => pooler.pgbLog.line('ERROR', `${database}/${user}@${address} ${reason}`);
            const os = peer === null ? null : osUserName(peer);
            a.certified = os === null ? (why('peer authentication needs a Unix socket whose peer is known'), false) : certAllows([os], user, rule.map, this.client.identMaps, why);
            return a;
          };
          return got instanceof Promise ? got.then(certifyPeer) : certifyPeer(got);
        }
        if (st.authType !== 'cert' && rule?.method !== 'cert') return got;
        const certify = <T>(a: T): T => {
          if (!(a instanceof ClientAuth)) return a;
          const why = (reason: string) => pooler.pgbLog.line('ERROR', `${database}/${user}@${address} ${reason}`);
          a.certified = tls ? certAllows(certNames, user, rule?.map, this.client.identMaps, why) : (why('TLS connection required'), false);
          return a;
        };
        return got instanceof Promise ? got.then(certify) : certify(got);
      },
    };
  }
}

/** The name /etc/passwd gives a uid (pgBouncer's getpwuid), or null. */
function osUserName(uid: number): string | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f.length > 2 && Number(f[2]) === uid) return f[0];
    }
  } catch {
    // no passwd file: nobody is known
  }
  return null;
}

/** What decides whether server connections must be made again: the sslmode, and under TLS its settings and files. */
function serverTlsKey(st: PoolerSettings): string {
  if (st.serverTlsSslmode === 'disable') return 'disable';
  const digest = (file: string) => (file ? createHash('sha256').update(readFileSync(file)).digest('hex') : '');
  return JSON.stringify([...SERVER_TLS_FIELDS.map((f) => st[f]), digest(st.serverTlsCaFile), digest(st.serverTlsCertFile), digest(st.serverTlsKeyFile)]);
}

function newTotals(): Totals {
  return {
    accepted: 0,
    closed: 0,
    bytesFromClients: 0,
    bytesFromUpstream: 0,
    protocolErrors: 0,
    upstreamFailures: 0,
    intercepted: 0,
    rewritten: 0,
    relayStarts: 0,
    relayExits: 0,
  };
}

/** The native relay as `mode` asks: null relays everything in JS (off, or auto when it is not built). */
function nativeRelayFor(mode: NativeRelayMode, ownsLoop: boolean, log: Logger): NativeRelay | null {
  if (mode === 'off') return null;
  const { relay, why } = loadNativeRelay();
  if (relay === null && mode === 'on') throw new Error(`native relay is required (nativeRelay on) but not available: ${why}`);
  if (relay === null) log.warn({ why }, 'native relay not available: relaying in JS, which costs more CPU per message');
  else if (ownsLoop) {
    const owned = relay.ownLoop();
    if (!owned.idleTimeOff) log.debug('event loop idle-time metrics left on (unknown libuv layout): one more epoll per wakeup');
    if (!owned.waits) log.debug('the native relay does not wait in its callbacks here (Linux only): the event loop goes round for each of its events');
  }
  return relay;
}

/** A listening socket's descriptor (-1 when closed or not a plain handle). */
function listenerFd(srv: Server): number {
  const fd = (srv as Server & { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/** Online restart: listens on the sockets handed over, as pgBouncer's use_pooler_socket does. */
async function adoptListeners(server: Server, fds: { tcp: number; unix: number | null }, accept: (s: Socket) => void, log: Logger): Promise<{ address: { host: string; port: number }; unix: Server | null }> {
  const on = (srv: Server, fd: number) =>
    new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ fd }, () => {
        srv.removeListener('error', reject);
        resolve();
      });
    });
  await on(server, fds.tcp);
  const a = server.address();
  if (a === null || typeof a === 'string') throw new Error('the TCP listening socket taken over is not one');
  let unix: Server | null = null;
  if (fds.unix !== null) {
    unix = createServer({ allowHalfOpen: true, pauseOnConnect: true }, accept);
    unix.on('error', (err) => log.error({ err }, 'unix socket listener error'));
    await on(unix, fds.unix);
    log.info({ fd: fds.unix }, 'listening on the Unix socket taken over');
  }
  return { address: { host: a.address, port: a.port }, unix };
}

/**
 * pgBouncer's unix_socket_mode (default 0777: any local user may connect, whatever the umask) and
 * unix_socket_group on the socket file; as pgBouncer, a group that does not exist or cannot be given stops the start.
 */
function socketFileAccess(path: string, st: PoolerSettings): void {
  chmodSync(path, st.unixSocketMode);
  if (st.unixSocketGroup) chownSync(path, -1, groupId(st.unixSocketGroup));
}

function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new Error(`could not find group '${group}' (unix_socket_group)`);
}

/** Starts listening; resolves with the address bound (the port chosen when 0 was asked for). `backlog`: pgBouncer's listen_backlog. */
async function listen(server: Server, at: { host: string; port: number }, reusePort = false, backlog?: number): Promise<{ host: string; port: number }> {
  let fd = -1;
  if (reusePort) {
    const bind = loadNativeRelay().relay?.listenReusePort;
    if (!bind) throw new Error('so_reuseport needs the native addon (npm run build:native), which this Node cannot do without');
    const host = at.host === 'localhost' ? '127.0.0.1' : at.host;
    fd = bind(host, at.port, backlog ?? 511);
  }
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    const done = () => {
      server.removeListener('error', onError);
      resolve();
    };
    if (fd >= 0) server.listen({ fd }, done);
    else server.listen({ port: at.port, host: at.host, backlog }, done);
  });
  const bound = server.address();
  return {
    host: typeof bound === 'object' && bound ? bound.address : at.host,
    port: typeof bound === 'object' && bound ? bound.port : at.port,
  };
}

/** The open sessions: what they hold, and when the last has closed. */
class Sessions {
  private readonly open = new Set<ClientSession>();
  private allClosed: (() => void) | null = null;

  get size(): number {
    return this.open.size;
  }

  add(s: ClientSession): void {
    this.open.add(s);
  }

  delete(s: ClientSession): void {
    this.open.delete(s);
    if (this.open.size === 0) this.allClosed?.();
  }

  /** Resolves once no session is open (at once if none is). */
  closed(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.allClosed = resolve;
      if (this.open.size === 0) resolve();
    });
  }

  /** A copy to iterate over while sessions close. */
  list(): ClientSession[] {
    return [...this.open];
  }

  /** The totals so far, with what the native relay moved and has not yet counted, and what sessions hold now. */
  stats(totals: Totals, cancels: CancelRegistry, pools: Iterable<Pool> = []): ProxyStats {
    let hubHandoffs = 0;
    for (const p of pools) hubHandoffs += p.hub?.handoffs ?? 0;
    const t = { ...totals, cancelsForwarded: cancels.forwarded, cancelsIgnored: cancels.ignored, hubHandoffs };
    let buffered = 0;
    for (const s of this.open) {
      buffered += s.buffered;
      const r = s.relayBytes;
      t.bytesFromClients += r.fromClient;
      t.bytesFromUpstream += r.fromServer;
    }
    return { clients: this.open.size, buffered, totals: t };
  }
}

/**
 * Graceful shutdown: stop accepting, let every session end once it is idle, and end those still open
 * when the grace period is over. Resolves when all sessions and the listener are closed.
 */
async function shutdown(server: Server, sessions: Sessions, graceMs: number, log: Logger): Promise<void> {
  log.info({ sessions: sessions.size, graceMs }, 'proxy shutting down');
  const listenerClosed = new Promise<void>((resolve) => server.close(() => resolve()));
  const drained = sessions.closed();
  for (const s of sessions.list()) s.shutdown();
  let timer: NodeJS.Timeout | undefined;
  const graceOver = new Promise<'grace'>((resolve) => {
    timer = setTimeout(() => resolve('grace'), Math.max(0, graceMs));
  });
  if ((await Promise.race([drained, graceOver])) === 'grace') {
    log.warn({ sessions: sessions.size }, 'grace period over: terminating remaining sessions');
    for (const s of sessions.list()) s.terminate();
  }
  clearTimeout(timer);
  await drained;
  await listenerClosed;
  log.info('proxy stopped');
}
