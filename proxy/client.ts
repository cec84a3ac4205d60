// One client session: the client side of the protocol, from the first byte to the close. Reads the
// startup packets (SSLRequest and GSSENCRequest: client-tls.ts; CancelRequest; StartupMessage), opens the
// session's own upstream connection and relays authentication as bytes, then forwards everything the
// client sends: whole chunks, walking only message boundaries, except the messages the interception seam
// must see. While a hook of the seam is pending the client's later messages wait (hook-pause.ts); while
// the session is idle and plaintext the native relay may carry it (relay-handoff.ts). It owns the
// session's state (request tracker, cancel key, transaction status) and its ending: on errors, client
// disconnects, upstream loss and graceful shutdown.
import type { Socket } from 'node:net';
import { hostname } from 'node:os';
import type { SecureContext, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { CancelKey, CancelRegistry } from './cancel.js';
import { acceptTls, answerEncryptionRequest, isEncryptionRequest, peerCertNames } from './client-tls.js';
import { DROP, FrameReader, KEEP, PAUSE, type FrameHandler, type Verdict } from './framing.js';
import { HookPauser } from './hook-pause.js';
import { Seam, type Interceptor, type Outgoing, type ResponseHandler, type SessionContext } from './interceptor.js';
import {
  CANCEL_REQUEST_CODE,
  Fe,
  MAX_STARTUP_PACKET,
  SqlState,
  TERMINATE,
  backendKeyData,
  errorResponse,
  forEachMessage,
  query as queryMessage,
  readStartupPacket,
  typeName,
  type ErrorFields,
  type StartupPacket,
  type TxStatus,
} from './protocol.js';
import type { ReadBuffer } from './read-buffer.js';
import { RelayHandoff } from './relay-handoff.js';
import { HubHandoff } from './hub-handoff.js';
import type { PoolHub } from './pool-hub.js';
import { rerunnableExchange } from './rerun-exchange.js';
import { mentionsOnly } from './statement-effects.js';
import { RelayPool, peerCredentials, socketFd, tuneTcp, writeFast, type NativeRelay, type RelayOutcome } from './relay.js';
import { RequestTracker } from './tracker.js';
import { ServerConnection, UpstreamUnreachable, openUpstream, sendCancel, type OpenedUpstream, type SessionLink, type UpstreamTarget } from './upstream.js';
import type { ConsoleLink, PoolingEnv } from './pooling.js';
import { PooledSession, optionSettings } from './pooled-session.js';
import { PoolError, poolError, replicationKind, type Pool, type PoolDatabase, type PooledServer } from './pool.js';
import { Be, Fe as FeCodes, authentication, AUTH_OK, parameterStatus, readyForQuery } from './protocol.js';
import type { ClientAuth } from './auth.js';

/** Settings and shared state every session of one proxy uses. */
export interface SessionEnv {
  target: UpstreamTarget;
  secureContext: SecureContext | undefined;
  maxMessageBytes: number;
  connectTimeoutMs: number;
  logger: Logger;
  interceptor: Interceptor | undefined;
  cancels: CancelRegistry;
  totals: Totals;
  /** Idle plaintext sessions are handed to it (relay.ts); null relays everything in JS. */
  nativeRelay: NativeRelay | null;
  /** Present when the proxy pools server connections (pgbouncer.ini): clients log in to the proxy itself. */
  pooling?: PoolingEnv;
  onClosed(session: ClientSession): void;
}

export interface Totals {
  accepted: number;
  closed: number;
  bytesFromClients: number;
  bytesFromUpstream: number;
  protocolErrors: number;
  upstreamFailures: number;
  /** Messages handed to the interceptor. */
  intercepted: number;
  /** Messages it replaced. */
  rewritten: number;
  /** Times a session was handed to the native relay, and given back. */
  relayStarts: number;
  relayExits: number;
}

// Session phases.
const STARTUP = 0; // reading startup packets
const CONNECTING = 1; // StartupMessage read, upstream connection being opened
const AUTH = 2; // startup relayed, authentication under way
const READY = 3; // first ReadyForQuery passed
const CLOSED = 4;
const LOCAL_AUTH = 5; // pooling: the proxy authenticates the client itself

// Reasons the client socket is not being read.
const PAUSE_BACKPRESSURE = 1; // the server is slow to take what the client sends
const PAUSE_HOOK = 2; // a hook is pending and enough waits behind it (hook-pause.ts)
const PAUSE_CONNECTING = 4; // no upstream yet to take what the client sends
const PAUSE_RELAY = 8; // the native relay reads it (relay-handoff.ts)
const PAUSE_POOL = 16; // pooling: waiting for a server connection
/** SUSPEND holds a waiting client's unsent request for the takeover (suspend) up to these sizes, per client and in all. */
const HELD_UNSENT_PER_CLIENT = 1 << 20;
const HELD_UNSENT_TOTAL = 64 << 20;
const heldUnsent = { bytes: 0 };
const PAUSE_SUSPEND = 32; // SUSPEND: nothing more is read until RESUME or the handover (takeover.ts)
const PAUSE_RERUN = 64; // the current exchange will run again (SessionContext.rerun)
const PAUSE_FENCE = 128; // a statement waits for the answer to the fence's own last statement
/** Fenced Queries in one transaction (SessionContext.fenceable): a writing one takes a subtransaction id; past 64, snapshots overflow. */
const FENCES_PER_TRANSACTION = 32;
const FENCE = queryMessage('SAVEPOINT steadytext_fence');
const UNFENCE = queryMessage('RELEASE SAVEPOINT steadytext_fence');
/** A block the proxy brought back from failure (ROLLBACK TO its fence) fails again where the client is told it failed. */
const REFAIL = queryMessage("DO $$BEGIN RAISE EXCEPTION 'pg-steadytext: the statement stopped to be run again was not'; END$$");
/** A rerun exchange's Parse, Bind and Describe: the client has their answers from the first attempt. */
const ANSWERED: ResponseHandler = { onMessage: (m) => (m[0] === Be.ErrorResponse || m[0] === Be.NoticeResponse ? m : null) };
/** Most bytes a client waiting for a server connection copies out of the read buffer (holdsInput). */
const OWN_QUEUE_BYTES = 16 * 1024;

/** The server's own authentication_timeout default: a client that never finishes startup is dropped. */
const STARTUP_TIMEOUT_MS = 60_000;

export class ClientSession implements FrameHandler, SessionLink {
  log: Logger;
  readonly tracker = new RequestTracker();
  readonly startedAt = Date.now();
  private phase = STARTUP;
  /** The client's socket: `raw` as accepted, or the TLS socket over it. */
  private sock: Socket;
  private readonly raw: Socket;
  /** The plain client socket's descriptor for writeFast (-1: written through the stream only). */
  private readonly rawFd: number;
  private readonly clientAddress: string;
  private startupBuf: Buffer | null = null;
  /** Client bytes that arrived after the StartupMessage, before the upstream was there to take them. */
  private early: Buffer[] = [];
  private reader: FrameReader | null = null;
  private server: ServerConnection | null = null;
  private seam: Seam | null = null;
  private ctx: MutableContext | null = null;
  /** PAUSE_* reasons the client socket is not read now. */
  private paused = 0;
  /** The server socket is not read: the client is slow to take what it sends. */
  private serverPaused = false;
  /**
   * The Query that began the current exchange outside a transaction block (ctx.keepQueries). A view, not a
   * copy: where it points into the reused read buffer, valid while input.reads is keptReads.
   */
  private keptQuery: Buffer | null = null;
  private keptReads = -1;
  /**
   * The server connection's message count when it was kept; what the native relay forwarded of its answer: a
   * Query's RowDescription (its bytes), an exchange's answers before its rows (how many).
   */
  private keptMsgs = 0;
  /** PooledSession.internalMessages when the exchange was kept. */
  private keptInternal = 0;
  /** Server messages answering what hooks sent (ctx.send), and their count when the exchange was kept. */
  private hookAnswers = 0;
  private keptHookAnswers = 0;
  private keptRelayT = 0;
  /** Queries kept so far (ctx.exchange). */
  private keptCount = 0;
  /** The Query that began the current transaction block, or a later one of it, kept when it may make it read-only (ctx.blockOpener). */
  private opener: Buffer | null = null;
  /** The kept Query is fenced (SessionContext.fenceable); Queries fenced in the current transaction. */
  private keptFenced = false;
  private fences = 0;
  /**
   * The fence's own statements in flight. A statement that comes while they are the only thing in flight
   * (the client had its ReadyForQuery before the RELEASE after it was answered) waits for them (fenceWaiting):
   * decided earlier, it would go unfenced and be answered miss by miss (40001 in a read-only REPEATABLE READ block).
   */
  private ownFences = 0;
  private fenceWaiting: Buffer | null = null;
  /** The fence's own statements: their answers are the proxy's (a RELEASE after a failed statement fails too). */
  private readonly fenceHandler: ResponseHandler = {
    onMessage: () => null,
    onEnd: () => this.fenceAnswered(),
  };
  /** The current exchange runs again (ctx.rerun): what then decides, and the error that ended the attempt. */
  private rerunning: { then: (error: Buffer) => Promise<boolean>; query: Buffer; error: Buffer | null; dropT: boolean; fenced: boolean } | null = null;
  /** The current exchange is itself a rerun: it is not run again. */
  private isRerun = false;
  /**
   * An extended-protocol exchange being kept (its Parse read, its Sync not yet): the chunk it is read from,
   * where its Parse starts there, its bytes so far, input.reads then. Kept only when read in one piece.
   */
  private extChunk: Buffer | null = null;
  private extStart = 0;
  private extLen = 0;
  private extReads = -1;
  /** The exchange began inside a transaction block behind the fence's SAVEPOINT: its RELEASE follows the next Sync. */
  private extFenced = false;
  private unfenceAtSync = false;
  private readonly hooks = new HookPauser({
    heldBytes: () => this.reader!.buffered,
    pauseSocket: () => this.pauseClient(PAUSE_HOOK),
    resumeSocket: () => this.resumeClient(PAUSE_HOOK),
    resumeReader: () => this.reader!.resume(),
    closed: () => this.phase === CLOSED,
    afterHook: () => this.drainIfDraining(),
    internalError: (err) => this.internalError(err),
  });
  /**
   * Present from the upstream connection on when the session is plaintext both ways and the native relay is
   * loaded; pooling: for the server connection held now (relayServer), made when it is first lent.
   */
  private relay: RelayHandoff | null = null;
  private relayServer: ServerConnection | null = null;
  /** Pooling: the session's membership of its pool's native hub (pool-hub.ts), made when it first joins. */
  private hubMember: HubHandoff | null = null;
  /** Pooling: the client bytes the relay had read at the last look (lastActive moves when they grow). */
  private relaySeenIn = -1;
  /** Pooling: the RelayPool flags and renamed statements of the current lend (PooledSession.lend). */
  private lendFlags = 0;
  private lendNames: Buffer | null = null;
  private upstreamKey: CancelKey | null = null;
  private key: CancelKey | null = null;
  private draining = false;
  /** The client sent Terminate: the server's goodbye needs no message of ours. */
  private terminated = false;
  private startupTimer: NodeJS.Timeout | null;
  private readonly onData = (chunk: Buffer) => this.data(chunk);
  /** Pooling: the client's side of the pool (null in the transparent mode). */
  pooled: PooledSession | null = null;
  private poolDb: PoolDatabase | null = null;
  private auth: ClientAuth | null = null;
  private authBuf: Buffer | null = null;
  /** Pooling: when the client last sent something, and when its transaction began (timeouts). */
  lastActive = Date.now();

  constructor(
    readonly id: number,
    socket: Socket,
    private readonly env: SessionEnv,
    /** Present when the socket reads through a reused buffer (read-buffer.ts) instead of 'data' events. */
    private readonly input?: ReadBuffer,
  ) {
    this.raw = this.sock = socket;
    this.rawFd = input ? socketFd(socket) : -1;
    this.clientAddress = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.log = env.logger.child({ session: id, client: this.clientAddress });
    socket.setNoDelay(true);
    // Pooling: pgBouncer's tcp_* settings (tcp_keepalive on, the system's timings, by default).
    const untuned = env.pooling ? tuneTcp(socket, env.pooling.pooler.settings) : (socket.setKeepAlive(true, 60_000), null);
    if (untuned) this.log.warn({ why: untuned }, 'tcp_* settings not applied to the client connection');
    this.listen(socket);
    // Pooling: pgBouncer's client_login_timeout (0: none) and its words.
    const loginLimit = env.pooling ? env.pooling.pooler.settings.clientLoginTimeout * 1000 : STARTUP_TIMEOUT_MS;
    this.startupTimer =
      loginLimit > 0
        ? setTimeout(() => {
            this.log.warn('startup not finished in time');
            this.fail(SqlState.ProtocolViolation, env.pooling ? 'client_login_timeout' : 'timeout: the connection startup did not complete in time');
          }, loginLimit)
        : null;
    this.startupTimer?.unref();
  }

  /** In a transaction or waiting for an answer: shutdown waits for it (within its grace period). */
  get busy(): boolean {
    if (this.phase !== READY) return false;
    const relayed = this.relay?.state();
    if (relayed) {
      return relayed.requests > 0 || relayed.held > 0 || relayed.streaming > 0 || (relayed.status !== '' && relayed.status !== 'I');
    }
    if (this.server === null) return this.hooks.pending || (this.reader !== null && !this.reader.atBoundary);
    return (
      this.tracker.size > 0 ||
      this.hooks.pending ||
      this.ctx!.txStatus !== 'I' ||
      !this.reader!.atBoundary ||
      !this.server.reader.atBoundary
    );
  }

  /** Bytes this session holds in memory (unsent writes both ways, partial messages, paused input). */
  get buffered(): number {
    let n = this.sock.writableLength + (this.reader?.buffered ?? 0);
    for (const c of this.early) n += c.length;
    if (this.server) n += this.server.sock.writableLength + this.server.reader.buffered;
    return n + (this.relay?.state()?.held ?? 0);
  }

  /** Bytes the native relay has moved for this session and not yet added to the totals (it adds them on exit). */
  get relayBytes(): { fromClient: number; fromServer: number } {
    const relayed = this.relay?.state();
    if (!relayed) return { fromClient: 0, fromServer: 0 };
    return { fromClient: relayed.bytesFromClient, fromServer: relayed.bytesFromServer };
  }

  get closed(): boolean {
    return this.phase === CLOSED;
  }

  // ---- client socket -------------------------------------------------------------------------------

  private listen(sock: Socket): void {
    const input = sock === this.raw ? this.input : undefined;
    if (input) {
      input.onChunk = (chunk) => {
        this.data(chunk);
        if (this.holdsInput()) input.retained = true;
      };
    } else {
      sock.on('data', this.onData);
    }
    // Accepted paused (pauseOnConnect): reading starts once the listeners are on.
    if (this.paused === 0) sock.resume();
    sock.on('drain', () => this.clientDrained());
    sock.on('end', () => this.clientEnded());
    sock.on('error', (err) => this.clientError(err));
    sock.on('close', () => this.close('client closed the connection'));
  }

  /**
   * Does anything still point into the chunk just read (so the read buffer must not be reused)? A client
   * waiting in the pool's queue holds a copy of its message and of the few bytes after it: most pooled
   * transactions wait, and a fresh 64 KiB read buffer for each made the GC the pooler's largest cost.
   */
  private holdsInput(): boolean {
    if (this.phase !== READY || this.reader === null || this.hooks.pending) return true;
    if (this.server !== null && this.server.sock.writableLength > 0) return true;
    if (!this.reader.isPaused) return false;
    return this.paused !== PAUSE_POOL || !this.reader.ownQueue(OWN_QUEUE_BYTES);
  }

  private data(chunk: Buffer): void {
    this.env.totals.bytesFromClients += chunk.length;
    try {
      if (this.reader !== null) {
        // SHOW STATS total_received: per chunk, as the client's messages after login (console's aside).
        if (this.pooled !== null) this.pooled.pool.stats.bytesReceived += chunk.length;
        this.reader.push(chunk);
        this.hooks.limitBacklog();
      }
      else if (this.phase === STARTUP) this.startupData(chunk);
      else if (this.phase === CONNECTING) this.early.push(chunk);
      else if (this.phase === LOCAL_AUTH) this.authData(chunk);
      else if (this.phase === READY && this.console !== null) this.console.data(chunk);
    } catch (err) {
      this.internalError(err);
    }
  }

  /** A bug of ours must cost one session, never the process. */
  internalError(err: unknown): void {
    this.log.error({ err }, 'internal error; session closed');
    this.fatal({ severity: 'FATAL', code: SqlState.InternalError, message: 'internal error in pg-steadytext proxy; see its log' });
    this.close('internal error');
  }

  private pauseClient(reason: number): void {
    if (this.paused === 0) this.sock.pause();
    this.paused |= reason;
  }

  private resumeClient(reason: number): void {
    if ((this.paused & reason) === 0) return;
    this.paused &= ~reason;
    if (this.paused === 0 && this.phase !== CLOSED) this.sock.resume();
  }

  private clientDrained(): void {
    if (this.serverPaused) {
      this.serverPaused = false;
      this.server?.sock.resume();
    }
  }

  get clientBacklog(): number {
    return this.sock.writableLength;
  }

  /** Server → client. */
  toClient(bytes: Buffer): void {
    if (this.phase === CLOSED) return;
    if (!writeFast(this.sock, this.sock === this.raw ? this.rawFd : -1, bytes) && !this.serverPaused && this.server) {
      this.serverPaused = true;
      this.server.sock.pause();
    }
  }

  private clientEnded(): void {
    if (this.phase === CLOSED) return;
    if (this.startupBuf !== null || (this.reader !== null && !this.reader.atBoundary)) {
      // The client half-closed mid-message; it may still read our reason.
      this.protocolError(SqlState.ProtocolViolation, 'incomplete message from client: the connection was closed in the middle of a message');
      return;
    }
    this.close('client closed the connection');
  }

  private clientError(err: Error): void {
    this.log.debug({ err: err.message }, 'client socket error');
    this.close(`client socket error: ${err.message}`);
  }

  // ---- startup phase -------------------------------------------------------------------------------

  private startupData(chunk: Buffer): void {
    let buf = this.startupBuf === null ? chunk : Buffer.concat([this.startupBuf, chunk]);
    this.startupBuf = null;
    while (this.phase === STARTUP) {
      if (buf.length < 8) {
        if (buf.length >= 4 && !plausibleStartupLength(buf.readInt32BE(0))) return this.badStartupLength(buf.readInt32BE(0));
        if (buf.length > 0) this.startupBuf = buf;
        return;
      }
      const len = buf.readInt32BE(0);
      if (!plausibleStartupLength(len)) return this.badStartupLength(len);
      if (buf.length < len) {
        this.startupBuf = buf;
        return;
      }
      const packet = buf.subarray(0, len);
      buf = buf.subarray(len);
      const code = packet.readUInt32BE(4);
      if (isEncryptionRequest(code)) {
        const tlsOffered = this.env.secureContext !== undefined && this.sock === this.raw;
        const answer = answerEncryptionRequest(this.sock, code, len, buf.length, tlsOffered);
        if (answer === 'tls') return this.startTls();
        if (answer !== 'refused') return this.protocolError(SqlState.ProtocolViolation, answer.violation);
        continue;
      }
      if (code === CANCEL_REQUEST_CODE) return this.cancelRequest(packet);
      return this.startupMessage(packet, buf);
    }
  }

  private badStartupLength(len: number): void {
    this.protocolError(SqlState.ProtocolViolation, `invalid length of startup packet (${len} bytes; at most ${MAX_STARTUP_PACKET})`);
  }

  private startTls(): void {
    this.sock = acceptTls(this.raw, this.input, this.env.secureContext!, () => this.close('client closed the connection'));
    this.listen(this.sock);
    this.log = this.log.child({ tls: true });
  }

  private cancelRequest(packet: Buffer): void {
    const len = packet.length;
    if (len < 16 || len > 12 + 256) return this.protocolError(SqlState.ProtocolViolation, 'invalid length of cancel request');
    const pid = packet.readInt32BE(8);
    const matched = this.env.cancels.cancel(pid, packet.subarray(12));
    this.log.info({ pid, matched }, matched ? 'cancel request forwarded' : 'cancel request with an unknown key ignored');
    // No answer either way, as the server does.
    this.sock.end();
    this.close('cancel request handled');
  }

  private startupMessage(packet: Buffer, rest: Buffer): void {
    const sp = readStartupPacket(packet);
    if (sp === null) return this.protocolError(SqlState.ProtocolViolation, 'invalid startup packet layout: expected terminator as last byte');
    if (sp.major !== 3) {
      return this.protocolError(
        SqlState.FeatureNotSupported,
        `unsupported frontend protocol ${sp.major}.${sp.minor}: server supports 3.0 to 3.x`,
      );
    }
    const user = sp.params.get('user');
    if (!user) return this.protocolError(SqlState.InvalidAuthorizationSpecification, 'no PostgreSQL user name specified in startup packet');
    const database = sp.params.get('database') || user;
    this.log = this.log.child({ user, db: database });
    this.ctx = this.sessionContext(sp, user, database);
    if (this.env.interceptor) this.seam = new Seam(this.env.interceptor, this.ctx, this.env.totals);
    if (this.env.pooling) return this.pooledStartup(sp, user, database, rest);
    this.phase = CONNECTING;
    if (rest.length > 0) this.early.push(rest);
    this.pauseClient(PAUSE_CONNECTING);
    this.connect(Buffer.from(packet)).catch((err) => this.internalError(err));
  }

  /** What the interceptor sees of the session. */
  private sessionContext(sp: StartupPacket, user: string, database: string): MutableContext {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const session = this;
    return {
      id: this.id,
      user,
      database,
      applicationName: sp.params.get('application_name'),
      clientAddress: this.clientAddress,
      startupParams: sp.params,
      serverParams: new Map(),
      txStatus: 'I',
      watched: { statements: new Set(), portals: new Set() },
      log: this.log,
      data: {},
      signal: this.hooks.signal,
      send: (out) => {
        if (!this.hooks.pending || this.phase === CLOSED) throw new Error('ctx.send is only for a pending interceptor hook');
        const h = out.responses;
        // Counted apart from the client's exchange (armRerun): a Bind's hook writes after its Parse was kept.
        const counted: ResponseHandler = {
          onMessage: (m, req) => (this.hookAnswers++, h.onMessage(m, req)),
          onEnd: h.onEnd && ((req, how) => h.onEnd!(req, how)),
        };
        for (const b of this.replacement([{ bytes: out.bytes, handler: counted }])) this.onBytes(b);
      },
      keepQueries: false,
      fenceable: null,
      fenceNarrow: false,
      get blockOpener() {
        return session.opener;
      },
      get exchange() {
        return session.keptCount;
      },
      rerun: (then) => this.armRerun(then),
    };
  }

  /**
   * A Query goes upstream unchanged: kept (a view) when it begins an exchange outside a transaction block
   * (ctx.keepQueries), or inside one, fenced (ctx.fenceable): then true, and it goes through fencedAround().
   */
  private keepQuery(msg: Buffer, reads = this.readsNow()): boolean {
    const ctx = this.ctx!;
    const idle = this.nothingInFlight();
    if (ctx.keepQueries && ctx.txStatus === 'I' && idle) {
      this.keep(msg, reads, 0);
      return false;
    }
    if (ctx.txStatus === 'T' && idle && this.fences < FENCES_PER_TRANSACTION && this.blockFenced() && ctx.fenceable!(msg)) {
      this.fences++;
      this.keep(msg, reads, 0);
      this.keptMsgs += 2; // the SAVEPOINT's CommandComplete and ReadyForQuery come first
      this.keptFenced = true;
      return true;
    }
    // A SET TRANSACTION READ ONLY sent on its own inside a block makes it read-only from there on: the block's
    // statements after it are fenced as in a block begun READ ONLY (the relay gives back a Query mentioning ONLY).
    if (ctx.txStatus === 'T' && this.opener === null && ctx.fenceNarrow) this.opener = this.openerOf(msg, -1);
    this.keep(null, -1, 0);
    return false;
  }

  /**
   * A Parse of the unnamed statement goes upstream unchanged: it may begin an exchange to keep (ctx.keepQueries),
   * then kept once its Sync comes in the same chunk (extHeader), as a view like a Query.
   */
  private keepParse(msg: Buffer): boolean {
    this.keep(null, -1, 0);
    this.extChunk = null;
    const ctx = this.ctx!;
    if (!ctx.keepQueries || msg[5] !== 0 || this.unfenceAtSync || !this.nothingInFlight()) return false;
    const chunk = this.reader!.chunk;
    // A view into the chunk being read, not a copy assembled across chunks.
    if (msg.buffer !== chunk.buffer || msg.byteOffset < chunk.byteOffset || msg.byteOffset + msg.length > chunk.byteOffset + chunk.length) return false;
    let fenced = false;
    if (ctx.txStatus === 'T') {
      if (!this.blockFenced() || this.fences >= FENCES_PER_TRANSACTION || !ctx.fenceable!(msg)) return false;
      this.fences++;
      fenced = true;
    } else if (ctx.txStatus !== 'I') {
      return false;
    }
    this.extFenced = this.unfenceAtSync = fenced;
    this.extChunk = chunk;
    this.extStart = msg.byteOffset - chunk.byteOffset;
    this.extLen = msg.length;
    this.extReads = this.readsNow();
    return fenced;
  }

  /** Nothing of the client's in flight (the pooler's own settings replay may be, ahead of it): a message begins an exchange. */
  private nothingInFlight(): boolean {
    return this.tracker.size === (this.pooled?.internalInFlight ?? 0);
  }

  /** The read generation a view into the client's read buffer is valid for (-1: views stay valid, no reused buffer). */
  private readsNow(): number {
    return this.sock === this.raw && this.input !== undefined ? this.input.reads : -1;
  }

  /** A message header after a kept Parse: Bind, Describe and Execute add to the exchange, Sync ends it, anything else drops it. */
  private extHeader(code: number, length: number): void {
    const chunk = this.extChunk!;
    this.extLen += 1 + length;
    if ((code !== Fe.Bind && code !== Fe.Describe && code !== Fe.Execute && code !== Fe.Sync) || this.extStart + this.extLen > chunk.length) {
      this.extChunk = null;
      return;
    }
    if (code !== Fe.Sync) return;
    this.extChunk = null;
    const view = chunk.subarray(this.extStart, this.extStart + this.extLen);
    if (rerunnableExchange(view) === null) return;
    this.keptQuery = view;
    this.keptReads = this.extReads;
    this.keptCount++;
    if (this.extFenced) {
      this.keptFenced = true;
      this.keptMsgs += 2; // the SAVEPOINT's CommandComplete and ReadyForQuery come first
    }
  }

  /** A fenced Parse goes upstream behind the fence's SAVEPOINT; a Sync after one, ahead of its RELEASE. */
  private fencedAround(msg: Buffer, code: number, before: Buffer | null, after: Buffer | null): Buffer[] {
    const out = before !== null ? this.replacement([{ bytes: before, handler: this.fenceHandler }]) : [];
    const v = this.pooled !== null ? this.pooledForward(msg, code) : (this.tracker.sent(code), KEEP);
    if (v === KEEP) out.push(msg);
    else if (Buffer.isBuffer(v)) out.push(v);
    else if (Array.isArray(v)) out.push(...v);
    if (after !== null) out.push(...this.replacement([{ bytes: after, handler: this.fenceHandler }]));
    return out;
  }

  /** The exchange now begun: its Query (or none to run again), where it reads from, what the relay forwarded of its answer. */
  private keep(query: Buffer | null, reads: number, relayRowDescription: number): void {
    this.keptQuery = query;
    this.keptReads = reads;
    this.keptMsgs = this.server?.received ?? 0;
    this.keptInternal = this.pooled?.internalMessages ?? 0;
    this.keptHookAnswers = this.hookAnswers;
    this.keptRelayT = relayRowDescription;
    if (query !== null) this.keptCount++;
    this.isRerun = false;
    this.keptFenced = false;
  }

  /** ctx.rerun: see SessionContext. */
  private armRerun(plan: (query: Buffer, fenced: boolean) => ((error: Buffer) => Promise<boolean>) | null): boolean {
    const view = this.keptQuery;
    const ext = view !== null && view[0] === Fe.Parse ? rerunnableExchange(view) : null;
    if (view !== null && view[0] === Fe.Parse && ext === null) return false; // the relay kept it before its Sync
    // In flight: the Query (and the fence's RELEASE), or the exchange's Execute and Sync.
    if (view === null || this.isRerun || this.rerunning !== null || this.tracker.size !== (ext ? 2 : 1) + (this.keptFenced ? 1 : 0) || this.hooks.pending || this.phase === CLOSED) return false;
    // Nothing of its answer went to the client, or only its RowDescription (of an exchange: only the answers
    // before its Execute): counted in server messages (the bytes before this notice in its chunk are forwarded
    // only after it), the interceptor's own notices aside.
    const s = this.server;
    // This notice included; the pooler's own exchanges (a settings replay ahead of the client's) left out.
    const seen = (s?.received ?? 0) - this.keptMsgs - ((this.pooled?.internalMessages ?? 0) - this.keptInternal) - (this.hookAnswers - this.keptHookAnswers);
    let dropT = this.keptRelayT > 0;
    if (ext !== null) {
      // The native relay counts the answers it forwarded before it gave the session back (keep()).
      if (seen + this.keptRelayT !== ext.answered + 1) return false;
      dropT = false;
    } else if (seen === 2 && !dropT && s!.prevCode === Be.RowDescription) dropT = true;
    else if (seen !== 1) return false;
    // The client sent more since (read into the same buffer): the Query's bytes may be gone.
    if (this.keptReads >= 0 && this.input!.reads !== this.keptReads) return false;
    const q = Buffer.from(view);
    const then = plan(q, this.keptFenced);
    if (then === null) return false;
    this.rerunning = { then, query: q, error: null, dropT, fenced: this.keptFenced };
    this.pauseClient(PAUSE_RERUN);
    return true;
  }

  private async connect(startup: Buffer): Promise<void> {
    let up: OpenedUpstream;
    try {
      up = await openUpstream(this.env.target, this.env.connectTimeoutMs);
    } catch (err) {
      return this.upstreamUnreachable(err);
    }
    if (this.phase === CLOSED) {
      up.sock.destroy();
      return;
    }
    const server = (this.server = new ServerConnection(this, up));
    server.write(startup);
    this.phase = AUTH;
    const reader = (this.reader = new FrameReader(this, this.env.maxMessageBytes));
    this.relay = this.relayHandoff(server, reader);
    const early = this.early;
    this.early = [];
    for (const chunk of early) reader.push(chunk);
    this.resumeClient(PAUSE_CONNECTING);
  }

  private upstreamUnreachable(err: unknown): void {
    this.env.totals.upstreamFailures++;
    const reason = err instanceof UpstreamUnreachable ? err.message : `cannot connect to upstream database at ${this.env.target.display}: ${String(err)}`;
    this.log.warn({ upstream: this.env.target.display, err: reason }, 'upstream unreachable');
    this.fatal({
      severity: 'FATAL',
      code: SqlState.ConnectionFailure,
      message: reason,
      hint: `Check that PostgreSQL is running at ${this.env.target.display} and accepts connections from the proxy, and that the proxy's upstream URL is right.`,
    });
    this.close('upstream unreachable');
  }

  // ---- pooling: login to the proxy, server connections lent per transaction --------------------------

  private pooledStartup(sp: StartupPacket, user: string, database: string, rest: Buffer): void {
    const pooling = this.env.pooling!;
    if (pooling.isConsole(database)) return this.consoleStartup(user, database, rest);
    const db = pooling.pooler.database(database);
    // As pgBouncer: a database it does not have is refused only after the authentication (authStep).
    if (db === null) return this.startAuth(user, database, rest);
    const options = sp.params.get('options');
    const replication = replicationKind(sp.params.get('replication'));
    // A replication client's options go to its own server connection verbatim: any switch is fine there.
    if (options && replication === null && optionSettings(options) === null) {
      return this.fail(SqlState.ProtocolViolation, "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed");
    }
    const refused = pooling.pooler.admit(db, user);
    if (refused) return this.fail(refused.fields.code, refused.fields.message);
    this.poolDb = db;
    if (pooling.pooler.settings.logConnections) pooling.pooler.pgbLog.line('LOG', `login attempt: db=${database} user=${user} tls=${this.sock !== this.raw ? 'yes' : 'no'} replication=${replication ?? 'no'}`, this.pgbSubject());
    const pool = pooling.pooler.pool(db, user);
    this.pooled = new PooledSession(this.pooledHost(), pool, this.withHostInAppName(sp.params), pooling.statements);
    if (replication !== null) this.pooled.replication = replication;
    this.startAuth(user, database, rest);
  }

  /** The proxy's own authentication, for pooled and console clients alike (auth_query may make it wait). */
  private startAuth(user: string, database: string, rest: Buffer): void {
    this.phase = LOCAL_AUTH;
    if (rest.length > 0) this.authBuf = rest;
    const tls = this.sock !== this.raw;
    const auth = this.env.pooling!.authenticator(user, database, this.clientAddress, {
      tls,
      certNames: tls ? peerCertNames(this.sock as TLSSocket) : null,
      peerUid: this.remote.addr === 'unix' ? (peerCredentials(this.raw)?.uid ?? null) : null,
    });
    if (auth instanceof Promise) {
      auth.then((a) => this.authBegin(a), (err: unknown) => this.internalError(err));
      return;
    }
    this.authBegin(auth);
  }

  private authBegin(auth: ClientAuth | PoolError): void {
    if (this.phase !== LOCAL_AUTH) return;
    if (auth instanceof PoolError) return this.fail(auth.fields.code, auth.fields.message);
    this.auth = auth;
    this.authStep(auth.begin());
  }

  /** Password messages during the proxy's own authentication. */
  private authData(chunk: Buffer): void {
    let buf = this.authBuf === null ? chunk : Buffer.concat([this.authBuf, chunk]);
    this.authBuf = null;
    while (this.phase === LOCAL_AUTH && buf.length >= 5) {
      const len = buf.readInt32BE(1);
      if (buf[0] !== FeCodes.Password || len < 4 || len > MAX_STARTUP_PACKET) {
        return this.protocolError(SqlState.ProtocolViolation, `expected a password message during authentication, got ${typeName(buf[0])}`);
      }
      if (buf.length < len + 1) break;
      const msg = Buffer.from(buf.subarray(0, len + 1));
      buf = buf.subarray(len + 1);
      this.authStep(this.auth!.respond(msg));
    }
    if (buf.length > 0) {
      if (this.phase === LOCAL_AUTH) this.authBuf = Buffer.from(buf);
      else if (this.phase === READY && this.console !== null) this.console.data(Buffer.from(buf));
      else if (this.phase === READY || this.phase === CONNECTING) this.early.push(Buffer.from(buf));
    }
  }

  private authStep(step: ReturnType<ClientAuth['begin']>): void {
    if (this.phase !== LOCAL_AUTH) return;
    if (!step.done) {
      this.sock.write(step.send);
      if (this.authBuf !== null) {
        const b = this.authBuf;
        this.authBuf = null;
        this.authData(b);
      }
      return;
    }
    if (!step.ok) {
      this.log.info({ code: step.error.code }, 'client authentication failed');
      this.logClosing(step.error.message);
      this.fatal(step.error);
      return this.close(step.error.message);
    }
    if (step.send) this.sock.write(step.send);
    this.auth = null;
    if (this.console !== null) return this.consoleStarted();
    if (this.pooled === null) return this.fail(SqlState.ProtocolViolation, `no such database: ${this.ctx!.database}`);
    if (step.scramKeys) this.pooled.pool.scramKeys = step.scramKeys;
    this.phase = CONNECTING; // learning the server's parameters
    this.pauseClient(PAUSE_CONNECTING);
    if (this.pooled.replication !== null) return this.replicationStart(this.pooled.replication);
    this.env.pooling!.welcome(this.pooled.pool).then(
      (params) => this.welcomed(params),
      (err: unknown) => {
        const f = err instanceof PoolError ? err.fields : { severity: 'FATAL', code: SqlState.ConnectionFailure, message: String(err) };
        this.logClosing(f.message);
        this.fatal(f as ErrorFields);
        this.close(f.message);
      },
    );
  }

  /**
   * A replication client logged in to the proxy: its own server connection opens now (pgBouncer links it at
   * once), and the client's welcome is that connection's parameters. A refused login ends the client with
   * pgBouncer's "login failed".
   */
  private replicationStart(kind: NonNullable<PooledSession['replication']>): void {
    this.pooled!.startReplication(kind, (r) => {
      if (this.phase === CLOSED) return;
      if (r instanceof PoolError) return this.fail(r.fields.code, r.fields.message);
      this.welcomed(r);
    });
  }

  /** Logged in to the proxy: the client gets the server's parameters (its own where it set them) and a key. */
  private welcomed(params: Map<string, string>): void {
    if (this.phase === CLOSED) return;
    const mine = this.pooled!.settings;
    const out: Buffer[] = [authentication(AUTH_OK)];
    for (const [k, v] of params) {
      const own = mine.get(k.toLowerCase());
      out.push(parameterStatus(k, own ?? v));
      this.ctx!.serverParams.set(k, own ?? v);
    }
    this.key = this.env.cancels.issue(4, () => this.cancelUpstream());
    out.push(backendKeyData(this.key.pid, this.key.secret), readyForQuery('I'));
    this.sock.write(Buffer.concat(out));
    this.phase = READY;
    if (this.startupTimer) clearTimeout(this.startupTimer);
    this.startupTimer = null;
    this.log.info('client connected');
    this.seam?.sessionStart();
    const reader = (this.reader = new FrameReader(this, this.env.maxMessageBytes));
    const early = this.early;
    this.early = [];
    for (const chunk of early) reader.push(chunk);
    this.resumeClient(PAUSE_CONNECTING);
  }

  // ---- the admin console (console-host.ts): logged in as pooled clients are, then handed the socket ----

  /** The console's side once it has the socket: the session feeds it what the client sends. */
  private console: ConsoleLink | null = null;

  private consoleStartup(user: string, database: string, rest: Buffer): void {
    const pooling = this.env.pooling!;
    // As pgBouncer: who may use the console is settled before the password exchange, then the same authentication.
    // pgBouncer's admin_pre_login: "pgbouncer" from the proxy's own OS user on the Unix socket needs no password.
    const own = user === 'pgbouncer' && this.remote.addr === 'unix' && peerCredentials(this.raw)?.uid === process.getuid?.();
    const c = pooling.consoleFor(this, user, this.clientAddress, own);
    if (c instanceof PoolError) return this.fail(c.fields.code, c.fields.message);
    this.console = c;
    if (!own) return this.startAuth(user, database, rest);
    this.log.info('pgbouncer access from unix socket');
    if (rest.length > 0) this.authBuf = rest;
    this.consoleStarted();
  }

  /** Authenticated: the console sends its own welcome and reads everything from here on. */
  private consoleStarted(): void {
    const early = this.authBuf ?? Buffer.alloc(0);
    this.authBuf = null;
    this.phase = READY;
    if (this.startupTimer) clearTimeout(this.startupTimer);
    this.startupTimer = null;
    this.console!.start(this.sock, early, () => this.close('console client left'));
  }

  /** Is this a session of the admin console? */
  get isConsole(): boolean {
    return this.console !== null;
  }

  /** Logged in (pooled or console): past authentication and the welcome. */
  get loggedIn(): boolean {
    return this.phase === READY;
  }

  /** Who the client logged in as, and its transaction status (null before its StartupMessage). */
  get context(): SessionContext | null {
    return this.ctx;
  }

  /** The client's socket for SHOW CLIENTS: addresses ('unix' for a Unix socket) and its TLS, '' when plaintext. */
  get remote(): { addr: string; port: number; localAddr: string; localPort: number; tls: string } {
    const s = this.sock;
    const unix = s.remoteAddress === undefined && s.remotePort === undefined;
    let tls = '';
    if (s !== this.raw) {
      const t = s as TLSSocket;
      tls = [t.getProtocol?.() ?? '', t.getCipher?.()?.name ?? ''].filter(Boolean).join('/');
    }
    return {
      addr: unix ? 'unix' : (s.remoteAddress ?? ''),
      port: s.remotePort ?? 0,
      localAddr: unix ? 'unix' : (s.localAddress ?? ''),
      localPort: s.localPort ?? 0,
      tls,
    };
  }

  /** The admin console ends the session (KILL, KILL_CLIENT): FATAL 08P01 with pgBouncer's reason. */
  kick(reason: string): void {
    this.fail(SqlState.ProtocolViolation, reason);
  }

  private pooledHost() {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const session = this;
    return {
      id: this.id,
      get log() {
        return session.log;
      },
      tracker: this.tracker,
      link: this as SessionLink,
      sendUpstream: (out: Outgoing) => {
        for (const b of this.replacement(out)) this.onBytes(b);
      },
      atRest: () => !this.hooks.pending && this.reader !== null && this.reader.atBoundary && (this.server === null || this.server.reader.atBoundary),
      poolFailed: (err: PoolError) => {
        this.logClosing(err.message);
        this.fatal(err.fields);
        this.close(err.message);
      },
      activity: () => ({ lastActive: this.lastActive, txStatus: this.ctx!.txStatus, inFlight: this.tracker.size }),
      lend: (flags: number, names: Buffer | null) => this.lend(flags, names),
      unlend: () => {
        this.relay?.stop(false);
        this.hubMember?.stopHub();
      },
      enterHub: (hub: PoolHub, s: PooledServer | null, flags: number, names: Buffer | null) => this.enterHub(hub, s, flags, names),
      hubStop: () => this.hubMember?.stopHub(),
      hubMember: () => this.hubMember?.member() ?? null,
      hubState: () => this.relaySeen(this.hubMember?.state() ?? null),
      relayState: () => this.relaySeen(this.relay?.state() ?? null),
      pgbSubject: () => this.pgbSubject(),
      attached: (s: PooledServer) => {
        this.server = s.conn;
        this.upstreamKey = s.key;
      },
      released: () => {
        this.relay?.stop(true);
        this.relay = this.relayServer = null;
        const held = this.server;
        this.server = null;
        this.upstreamKey = null;
        // Paused for flow control, or by a relay that gave it back as the session closed: the pool reads it again.
        if (held !== null && (this.serverPaused || held.sock.isPaused())) {
          this.serverPaused = false;
          held.sock.resume();
        }
      },
    };
  }

  /** Pooling: the held server connection goes to the native relay with the client's socket (PooledSession.lend). */
  private lend(flags: number, names: Buffer | null): boolean {
    const server = this.server;
    if (server === null || this.reader === null || this.suspending) return false;
    this.lendFlags = flags;
    this.lendNames = names;
    if (this.relayServer !== server) {
      this.relay = this.relayHandoff(server, this.reader, true);
      this.relayServer = server;
    }
    if (this.relay === null || !this.relay.lend()) return false;
    this.relaySeenIn = -1;
    return true;
  }

  /** What a relay reports of the session; the client was active when it read more bytes since the last look. */
  private relaySeen<T extends { bytesFromClient: number }>(st: T | null): T | null {
    if (st !== null && st.bytesFromClient !== this.relaySeenIn) {
      this.relaySeenIn = st.bytesFromClient;
      this.lastActive = Date.now();
    }
    return st;
  }

  /** Pooling: the client (with `s`, which the session lets go of, or without a server) joins the pool's native hub. */
  private enterHub(hub: PoolHub, s: PooledServer | null, flags: number, names: Buffer | null): boolean {
    const nr = this.env.nativeRelay;
    if (nr === null || this.reader === null || this.suspending || this.sock !== this.raw || this.input === undefined) return false;
    if (s !== null && (this.server !== s.conn || this.serverPaused || !s.conn.plain)) return false;
    const m = (this.hubMember ??= new HubHandoff(nr, hub, this.hubHost(), { sock: this.raw, reader: this.reader }, this.env.maxMessageBytes, this.pooled!));
    if (!m.enter(s === null ? null : { server: s, end: s.conn }, flags | (this.pqexecDisallowed() ? RelayPool.noQuery : 0), names)) return false;
    this.relaySeenIn = -1;
    if (s !== null) {
      // The hub holds it now: the session forgets it (its lending relay, if any, is not running: JS had the sockets).
      this.relay = this.relayServer = null;
      this.server = null;
      this.upstreamKey = null;
    }
    return true;
  }

  private hubHost() {
    return {
      log: this.log,
      tracker: this.tracker,
      counts: this.env.totals,
      closed: () => this.phase === CLOSED,
      idle: () => this.idleForRelay(),
      pauseClient: () => this.pauseClient(PAUSE_RELAY),
      resumeClient: () => this.resumeClient(PAUSE_RELAY),
      toClient: (bytes: Buffer) => this.toClient(bytes),
      toServer: (bytes: Buffer) => this.onBytes(bytes),
      txStatus: (status: TxStatus) => this.setTxStatus(status, true),
      keepStatus: () => this.relayKeepStatus(),
      keptQuery: (q: Buffer | null, rowDescription: number) => this.keep(q, -1, rowDescription),
      holds: (s: PooledServer | null) => this.pooled?.fromHub(s),
      exited: (o: RelayOutcome) => this.pooled?.hubReturned(o),
      sync: () => this.pooled?.hubSync(),
      relayReturned: () => this.drainIfDraining(),
      waitTimedOut: (reason: string) => {
        const err = poolError(reason, SqlState.ConnectionFailure);
        this.logClosing(err.message);
        this.fatal(err.fields);
        this.close(err.message);
      },
      internalError: (err: unknown) => this.internalError(err),
    };
  }

  private pooledReady(): void {
    if (this.phase === CLOSED) return;
    // The latest status, not the one this ReadyForQuery carried: a later one may have come in the same chunk.
    this.pooled!.ready(this.ctx!.txStatus);
    if (this.draining) setImmediate(() => this.drainCheck());
  }

  /** A message arrived and the client holds no server connection: take one (waiting in the pool's queue if need be). */
  private pooledAcquire(view: Buffer): Verdict | null {
    let msg: Buffer | null = null;
    const got = this.pooled!.acquire(() => {
      this.waitingMsg = null;
      if (this.phase === CLOSED) return this.pooled?.release(true);
      try {
        this.reader!.requeue(msg!);
        this.resumeClient(PAUSE_POOL);
        this.reader!.resume();
      } catch (err) {
        this.internalError(err);
      }
    });
    if (got !== null) return null;
    // A copy: the message waits, and the read buffer it was read into is reused meanwhile (holdsInput).
    msg = this.waitingMsg = Buffer.from(view);
    this.pauseClient(PAUSE_POOL);
    return PAUSE;
  }

  /** The message goes to the held server connection, statement names moved (prepared.ts). */
  private pooledForward(msg: Buffer, code: number): Verdict {
    const out = this.pooled!.forward(msg, code);
    if (out === undefined) {
      this.tracker.sent(code);
      return KEEP;
    }
    const bufs = this.replacement(out.send);
    if (out.local && this.tracker.sentLocal(out.local, out.localSkipped)) this.sock.write(out.local);
    return bufs.length > 0 ? bufs : DROP;
  }

  // ---- client → server (FrameHandler of the client stream) -----------------------------------------

  header(code: number, length: number): boolean {
    this.lastActive = Date.now();
    if (this.extChunk !== null) this.extHeader(code, length);
    if (this.pooled !== null) {
      this.pooled.began(code);
      if (this.server === null || this.pooled.wants(code)) return true;
    }
    // The RELEASE of a fenced exchange goes after its Sync (onMessage).
    if (this.unfenceAtSync && (code === Fe.Sync || code === Fe.Query)) return true;
    if (this.seam !== null && this.seam.wants(code)) return true;
    this.tracker.sent(code);
    if (code === Fe.Terminate) this.terminated = true;
    return false;
  }

  onMessage(msg: Buffer, code: number): Verdict {
    if (this.unfenceAtSync && code === Fe.Sync) {
      this.unfenceAtSync = false;
      return this.fencedAround(msg, code, null, UNFENCE);
    }
    if (this.unfenceAtSync && code === Fe.Query) {
      // A Query before the fenced batch's Sync (the server runs it all the same): the fence goes first, so
      // that no savepoint of the client's can be inside it.
      this.unfenceAtSync = false;
      const pre = this.replacement([{ bytes: UNFENCE, handler: this.fenceHandler }]);
      const v = this.onMessage(msg, code);
      if (v === KEEP) return [...pre, msg];
      if (v === DROP) return pre;
      if (v === PAUSE) {
        queueMicrotask(() => this.onBytes(pre[0])); // after the run before the Query, before the Query
        return PAUSE;
      }
      return Buffer.isBuffer(v) ? [...pre, v] : [...pre, ...v];
    }
    if (this.ownFences > 0 && (code === Fe.Query || code === Fe.Parse) && this.tracker.size === (this.pooled?.internalInFlight ?? 0) + this.ownFences) {
      // A copy: the read buffer moves on meanwhile. The rest of its chunk stays queued behind it (requeue).
      this.fenceWaiting = Buffer.from(msg);
      this.pauseClient(PAUSE_FENCE);
      return PAUSE;
    }
    if (this.pooled !== null) {
      if (code === Fe.Terminate) {
        this.terminated = true;
        this.close('client close request');
        return DROP;
      }
      if (code === Fe.Query && this.pqexecDisallowed()) {
        // pgBouncer's disable_pqexec: a simple Query can carry several statements (an injected `; DROP ...`).
        this.env.pooling!.pooler.pgbLog.line('ERROR', 'client used "Query" packet type', this.pgbSubject());
        this.fail(SqlState.ProtocolViolation, 'PQexec disallowed');
        return DROP;
      }
      if (this.server === null) {
        const v = this.pooledAcquire(msg);
        if (v !== null) return v;
      }
      if (this.seam === null || !this.seam.wants(code)) return this.pooledForward(msg, code);
    }
    this.ctx!.signal = this.hooks.signal;
    const r = this.seam!.offer(msg, code);
    if (code === Fe.Query) {
      if (r !== undefined) this.keptQuery = null;
      else if (this.keepQuery(msg)) return this.fencedAround(msg, code, FENCE, UNFENCE);
    } else if (code === Fe.Parse) {
      if (r !== undefined) this.keep(null, -1, 0);
      else if (this.keepParse(msg)) return this.fencedAround(msg, code, FENCE, null);
    }
    if (r === undefined) {
      if (this.pooled !== null) return this.pooledForward(msg, code);
      this.tracker.sent(code);
      return KEEP;
    }
    // The interceptor sends it in its own form: no exchange is run again past it (pooled-session.ts, 0A000).
    this.pooled?.unwatch();
    if (r instanceof Promise) {
      this.hooks.hold(r, (out) => this.sendHookOutcome(out, msg, code));
      return PAUSE;
    }
    return this.replacement(r);
  }

  /**
   * A settled hook's answer goes upstream where its message stood: the message itself, or its replacement. A
   * Query the interceptor let go unchanged is kept (a copy: the read buffer moved on meanwhile) and fenced as
   * any other (keepQuery), unless it is itself a run again (`fresh` false).
   */
  private sendHookOutcome(out: Outgoing | undefined, original: Buffer, code: number, fresh = true): void {
    if (out === undefined && fresh && code === Fe.Query && this.keepQuery(Buffer.from(original), -1)) {
      for (const b of this.fencedAround(original, code, FENCE, UNFENCE)) this.onBytes(b);
      return;
    }
    // A Parse with visible calls the proxy could not serve ahead (a snapshot older than its answers): still a
    // view into its chunk, whose Bind ... Sync follow it there, so its exchange is kept and fenced as any other.
    if (out === undefined && fresh && code === Fe.Parse && this.keepParse(original)) {
      for (const b of this.fencedAround(original, code, FENCE, null)) this.onBytes(b);
      return;
    }
    if (out === undefined) {
      if (this.pooled !== null) {
        const v = this.pooledForward(original, code);
        if (v === KEEP) this.onBytes(original);
        else if (Buffer.isBuffer(v)) this.onBytes(v);
        else if (Array.isArray(v)) for (const b of v) this.onBytes(b);
        return;
      }
      this.tracker.sent(code);
      this.onBytes(original);
    } else {
      for (const b of this.replacement(out)) this.onBytes(b);
    }
  }

  /** One of the fence's own statements is answered (or the session ended): a statement waiting for them goes on. */
  private fenceAnswered(): void {
    if (--this.ownFences > 0 || this.fenceWaiting === null) return;
    // After the chunk that carried the answer: its ReadyForQuery has set the transaction status by then.
    queueMicrotask(() => {
      const msg = this.fenceWaiting;
      this.fenceWaiting = null;
      if (msg === null || this.phase === CLOSED) return;
      try {
        this.reader!.requeue(msg);
        this.resumeClient(PAUSE_FENCE);
        this.reader!.resume();
      } catch (err) {
        this.internalError(err);
      }
    });
  }

  /** Registers what the replacement will be answered with and returns its bytes to send. */
  private replacement(out: Outgoing): Buffer[] {
    const bufs: Buffer[] = [];
    for (const { bytes, handler } of out) {
      if (handler === this.fenceHandler) this.ownFences++; // one Query each
      forEachMessage(bytes, (c) => {
        this.tracker.sent(c, handler);
        if (c === Fe.Terminate) this.terminated = true;
      });
      bufs.push(bytes);
    }
    return bufs;
  }

  /** Client → server. */
  onBytes(bytes: Buffer): void {
    const server = this.server;
    if (server === null || this.phase === CLOSED) return;
    const pooled = this.pooled;
    if (pooled !== null && pooled.watching) pooled.sentUpstream(bytes);
    if (!server.write(bytes)) this.pauseClient(PAUSE_BACKPRESSURE);
  }

  onInvalid(code: number, length: number, tooLarge: boolean): void {
    if (tooLarge) {
      this.protocolError(
        SqlState.ProgramLimitExceeded,
        `message of type ${typeName(code)} is too large: ${length} bytes, the proxy accepts at most ${this.reader?.maxLength ?? this.env.maxMessageBytes} (${this.limitName()})`,
      );
    } else {
      this.protocolError(SqlState.ProtocolViolation, `invalid message length ${length} for message of type ${typeName(code)}`);
    }
  }

  // ---- server → client events (SessionLink) ---------------------------------------------------------

  serverKey(key: CancelKey): Buffer {
    this.upstreamKey = key;
    if (this.key !== null) this.env.cancels.release(this.key.pid);
    this.key = this.env.cancels.issue(key.secret.length, () => this.cancelUpstream());
    return backendKeyData(this.key.pid, this.key.secret);
  }

  serverReady(status: TxStatus, first: boolean): void {
    this.setTxStatus(status);
    if (this.rerunning !== null && this.rerunning.error === null) {
      // The attempt ended without the error it was to end in: its answer went to the client as it came.
      this.rerunning = null;
      this.resumeClient(PAUSE_RERUN);
    }
    if (this.pooled !== null) {
      // The proxy's own fenced work (a prefetch's rolled-back read) is not the client's transaction block.
      // A replication connection is its client's alone, as in session mode (pgBouncer).
      if (status === 'T' && this.pooled.pool.mode === 'statement' && this.pooled.replication === null && !this.hooks.pending) {
        // Before the ReadyForQuery: the client hears it as the answer to the statement that opened the block.
        this.fatal({ severity: 'FATAL', code: SqlState.ProtocolViolation, message: 'transaction blocks not allowed in statement pooling mode' });
        this.close('transaction block in statement pooling mode');
        return;
      }
      // After the chunk holding this ReadyForQuery went to the client: the connection may change hands then.
      queueMicrotask(() => this.pooledReady());
      return;
    }
    this.relay?.readyForQuery();
    if (first) {
      this.phase = READY;
      if (this.startupTimer) clearTimeout(this.startupTimer);
      this.startupTimer = null;
      this.log.info({ serverVersion: this.ctx!.serverParams.get('server_version') }, 'client connected');
      this.seam?.sessionStart();
    }
    // Shutdown acts after the ReadyForQuery has reached the client.
    if (this.draining) setImmediate(() => this.drainCheck());
  }

  /** `relayed`: the relay's last ReadyForQuery, whose block's Query JS did not keep. */
  private setTxStatus(status: TxStatus, relayed = false): void {
    const ctx = this.ctx!;
    const was = ctx.txStatus;
    ctx.txStatus = status;
    if (status === 'I') {
      this.fences = 0;
      this.opener = null;
    } else if (was === 'I' && status === 'T') {
      this.opener = relayed ? null : this.openerOf(this.keptQuery, this.keptReads);
    }
    this.seam?.ready(status);
  }

  /** A Query of a block (the kept one that began it, or a later one), copied if it may make the block read-only (ctx.fenceNarrow). */
  private openerOf(q: Buffer | null, reads: number): Buffer | null {
    if (q === null || q[0] !== Fe.Query || !this.ctx!.fenceNarrow || (reads !== -1 && reads !== this.readsNow())) return null;
    return mentionsOnly(q, 5, q.length - 1) ? Buffer.from(q) : null;
  }

  /** Statements of the current block are offered to ctx.fenceable (all of them, or those of a block that may be read-only). */
  private blockFenced(): boolean {
    const ctx = this.ctx!;
    if (ctx.fenceable === null) return false;
    return !ctx.fenceNarrow || this.opener !== null || this.defaultReadOnly();
  }

  serverParam(name: string, value: string): void {
    this.ctx!.serverParams.set(name, value);
  }

  serverNotice(msg: Buffer): boolean {
    return this.seam !== null && this.seam.notice(msg, this.upstreamKey?.pid);
  }

  holdError(msg: Buffer): boolean {
    if (this.rerunning !== null && this.rerunning.error === null) {
      this.rerunning.error = Buffer.from(msg);
      return true;
    }
    return this.pooled !== null && this.pooled.watching && this.pooled.holdError(msg);
  }

  releaseHeld(rfq: Buffer): Buffer[] | null {
    const r = this.rerunning;
    if (r !== null && r.error !== null) {
      this.rerunning = null;
      this.heldRerun(r, Buffer.from(rfq));
      return null;
    }
    return this.pooled !== null ? this.pooled.releaseHeld(rfq) : [rfq];
  }

  /**
   * The attempt of a rerun exchange ended in its withheld error: `then` decides, as a pending hook (the server
   * connection stays with the client meanwhile), whether the Query runs again or the client gets the error.
   */
  private heldRerun(r: { then: (error: Buffer) => Promise<boolean>; query: Buffer; error: Buffer | null; dropT: boolean; fenced: boolean }, rfq: Buffer): void {
    const { query, dropT, fenced } = r;
    const error = r.error!;
    this.ctx!.signal = this.hooks.signal;
    // `then` runs once the hook is pending (ctx.send needs that), from a microtask.
    this.hooks.hold(Promise.resolve().then(() => r.then(error)).catch((err: unknown) => {
      this.log.warn({ err }, 'an exchange to run again failed; the client gets the error of its first attempt');
      return false;
    }), (again) => {
      if (again) {
        this.isRerun = true;
        const ext = query[0] === Fe.Parse ? rerunnableExchange(query) : null;
        if (ext !== null) {
          // The client has the answers up to the Execute: those of the second attempt are dropped, errors aside.
          const out = [{ bytes: query.subarray(0, ext.execute), handler: ANSWERED }, { bytes: query.subarray(ext.execute), handler: undefined }];
          if (fenced) out.push({ bytes: UNFENCE, handler: this.fenceHandler });
          for (const b of this.replacement(out)) this.onBytes(b);
        } else {
          if (dropT && this.server !== null) this.server.dropRowDescription = true;
          this.sendHookOutcome(undefined, query, Fe.Query, false);
          // Still inside the fence (ROLLBACK TO keeps the savepoint), which goes once the statement is through.
          if (fenced) for (const b of this.replacement([{ bytes: UNFENCE, handler: this.fenceHandler }])) this.onBytes(b);
        }
      } else {
        // The gathering rolled back to the fence, so the block is no longer failed: it must be, as the client hears.
        if (fenced && this.ctx!.txStatus === 'T') for (const b of this.replacement([{ bytes: REFAIL, handler: this.fenceHandler }])) this.onBytes(b);
        // Cancelled while it gathered: what the client asked for, not the error that stopped the first attempt.
        const cancelled = this.ctx!.signal.aborted
          ? errorResponse({ severity: 'ERROR', code: SqlState.QueryCanceled, message: 'canceling statement due to user request' })
          : error;
        this.toClient(Buffer.concat([cancelled, rfq]));
        if (this.pooled !== null) queueMicrotask(() => this.pooledReady());
      }
      this.resumeClient(PAUSE_RERUN);
    });
  }

  startupError(fields: Record<string, string>): void {
    this.log.info({ code: fields.C, error: fields.M }, 'upstream refused the session');
  }

  countUpstreamBytes(n: number): void {
    this.env.totals.bytesFromUpstream += n;
    if (this.pooled !== null) this.pooled.pool.stats.bytesSent += n; // SHOW STATS total_sent, of the lent connection
  }

  serverChunkDone(): void {
    this.relay?.chunkDone();
  }

  serverDrained(): void {
    this.resumeClient(PAUSE_BACKPRESSURE);
  }

  serverError(err: Error): void {
    this.log.warn({ err: err.message }, 'upstream connection error');
  }

  serverClosed(): void {
    if (this.phase === CLOSED) return;
    this.pooled?.server?.pool.gone(this.pooled.server, 'server closed the connection');
    if (!this.terminated && !this.server!.sawFatal) {
      this.fatal({
        severity: 'FATAL',
        code: SqlState.ConnectionFailure,
        message: 'the upstream database closed the connection unexpectedly',
        hint: 'The server may have been restarted or the backend terminated; reconnect.',
      });
    }
    this.close('upstream closed the connection');
  }

  // ---- the native relay -----------------------------------------------------------------------------

  /** The hand-off to the native relay, for a session plaintext both ways; null: everything is relayed in JS. */
  private relayHandoff(server: ServerConnection, reader: FrameReader, lending = false): RelayHandoff | null {
    const nr = this.env.nativeRelay;
    if (nr === null || this.sock !== this.raw || this.input === undefined || !server.plain) return null;
    const host = {
      log: this.log,
      tracker: this.tracker,
      counts: this.env.totals,
      closed: () => this.phase === CLOSED,
      idle: () => this.idleForRelay(),
      pauseReading: () => {
        this.pauseClient(PAUSE_RELAY);
        server.sock.pause();
      },
      resumeReading: () => {
        this.resumeClient(PAUSE_RELAY);
        if (!this.serverPaused) server.sock.resume();
      },
      toClient: (bytes: Buffer) => this.toClient(bytes),
      toServer: (bytes: Buffer) => this.onBytes(bytes),
      txStatus: (status: TxStatus) => this.setTxStatus(status, true),
      relayReturned: () => this.drainIfDraining(),
      keepStatus: () => this.relayKeepStatus(),
      // A Query the relay forwarded, its own copy (or none since it took over: what JS kept before is over).
      keptQuery: (q: Buffer | null, rowDescription: number) => this.keep(q, -1, rowDescription),
      internalError: (err: unknown) => this.internalError(err),
      // Read at each lend: they change between lends (the client's statements, max_prepared_statements).
      poolFlags: () => (lending ? this.lendFlags : 0) | (this.pqexecDisallowed() ? RelayPool.noQuery : 0),
      poolNames: () => (lending ? this.lendNames : null),
      exited: (o: RelayOutcome) => this.pooled?.returned(o),
    };
    return new RelayHandoff(nr, host, { sock: this.raw, reader }, server, this.env.maxMessageBytes);
  }

  /** Idle between statements by the session's own state: nothing in flight, pending or paused, nothing watched. */
  private idleForRelay(): boolean {
    if (this.phase !== READY || this.tracker.size > 0 || this.hooks.pending || this.draining || this.suspending) return false;
    if (this.paused !== 0 || this.serverPaused) return false;
    const w = this.ctx!.watched;
    // Inside a transaction block JS fences the statements (ctx.fenceable).
    return w.statements.size === 0 && w.portals.size === 0 && !(this.ctx!.txStatus === 'T' && this.blockFenced());
  }

  /**
   * A relay's keepStatus (NativeRelay.start): the transaction status to keep Queries from, plus 0x100 to have a
   * transaction block begun give the session back, for JS to fence its statements, or 0x200 (ctx.fenceNarrow) to
   * have only a Query that may make a block read-only do so.
   */
  private relayKeepStatus(): number {
    const ctx = this.ctx!;
    if (!ctx.keepQueries) return 0;
    const fence = ctx.fenceable === null ? 0 : ctx.fenceNarrow && !this.defaultReadOnly() ? 0x200 : 0x100;
    return ctx.txStatus.charCodeAt(0) | fence;
  }

  /** The session's default_transaction_read_only (PostgreSQL 14+ reports it): every block may be read-only. */
  private defaultReadOnly(): boolean {
    return this.ctx!.serverParams.get('default_transaction_read_only') === 'on';
  }

  // ---- cancel, shutdown, end -----------------------------------------------------------------------

  private cancelUpstream(): void {
    this.hooks.cancel();
    // In the hub the server held is C's to know: JS takes the session (and that server) back to cancel on it.
    if (this.hubMember?.active) this.hubMember.stopHub();
    // Nothing running upstream (a hook's statement is not sent yet): the backend would ignore the cancel
    // now, and one that arrives late would hit the client's next statement instead.
    if (this.upstreamKey === null || this.phase === CLOSED) return;
    const inFlight = this.relay?.state()?.requests ?? this.tracker.size;
    if (inFlight === 0) return;
    const held = this.pooled?.server;
    if (held) return held.pool.cancelFor(held);
    void sendCancel(this.env.target, this.upstreamKey, this.env.connectTimeoutMs, this.log);
  }

  /** Graceful shutdown: end the session as soon as it is idle (between transactions). */
  shutdown(): void {
    this.draining = true;
    this.relay?.stop(false); // draining: it will not take the session again
    this.drainCheck();
  }

  private drainIfDraining(): void {
    if (this.draining) this.drainCheck();
  }

  private drainCheck(): void {
    if (this.phase === CLOSED || this.busy) return;
    this.terminate();
  }

  /** Ends the session now with FATAL 57P01 (shutdown; also at the end of the grace period). */
  terminate(): void {
    if (this.phase === CLOSED) return;
    this.relay?.stop(true);
    this.hubMember?.stopHub();
    this.fatal({ severity: 'FATAL', code: SqlState.AdminShutdown, message: 'terminating connection due to administrator command' });
    this.close('proxy shutting down');
  }

  /** Sends a FATAL ErrorResponse if the client's stream is between messages. */
  private fatal(f: ErrorFields): void {
    if (this.phase === CLOSED || this.sock.destroyed || !this.sock.writable) return;
    this.relay?.stop(true);
    this.hubMember?.stopHub();
    if (this.server !== null && !this.server.reader.atBoundary) return;
    // pgBouncer's log_pooler_errors: each error the pooler itself sends a client (the server's are relayed).
    if (this.env.pooling?.pooler.settings.logPoolerErrors) this.env.pooling.pooler.pgbLog.line('WARNING', `pooler error: ${f.message}`, this.pgbSubject());
    this.sock.write(errorResponse(f));
  }

  private protocolError(code: string, message: string): void {
    this.env.totals.protocolErrors++;
    this.log.warn({ code }, message);
    this.fatal({ severity: 'FATAL', code, message });
    this.close(message);
  }

  /** Which setting bounds this client's messages: ours, or pgBouncer's max_packet_size where it was the lower. */
  private limitName(): string {
    return this.reader?.maxLength === this.env.pooling?.pooler.settings.maxPacketSize ? 'max_packet_size' : 'maxMessageBytes';
  }

  private pqexecDisallowed(): boolean {
    return this.env.pooling?.pooler.settings.disablePqexec === true;
  }

  private fail(code: string, message: string): void {
    this.logClosing(message);
    this.fatal({ severity: 'FATAL', code, message });
    this.close(message);
  }

  /** Ends the session (idempotent): upstream closed (its running query cancelled), client socket ended. */
  close(reason: string): void {
    if (this.phase === CLOSED) return;
    this.logClosing(reason);
    const busy = this.busy;
    const wasReady = this.phase === READY;
    this.phase = CLOSED;
    this.releaseUnsent();
    this.relay?.stop(true); // closed already: only its counts and where the readers stand are taken back
    this.hubMember?.stopHub(); // the server it holds, if any, is released below
    if (this.startupTimer) clearTimeout(this.startupTimer);
    this.reader?.stop();
    this.console?.close();
    if (this.pooled !== null) this.endPooled(busy);
    else if (this.server !== null) this.closeUpstream(this.server, busy);
    if (!this.sock.destroyed) {
      this.sock.end();
      // A client that never reads would keep the socket half-open; give the goodbye a moment, no more.
      setTimeout(() => this.sock.destroy(), 1_000).unref();
    }
    if (this.key !== null) this.env.cancels.release(this.key.pid);
    this.tracker.close();
    this.hooks.close();
    if (wasReady) this.seam?.sessionEnd();
    this.env.totals.closed++;
    const log = { reason, durationMs: Date.now() - this.startedAt };
    if (wasReady) this.log.info(log, 'client disconnected');
    else this.log.debug(log, 'connection closed before the session started');
    this.env.onClosed(this);
  }

  private closingLogged = false;

  /** pgBouncer's "closing because" line, once: before the client hears the error, as pgBouncer writes it. */
  private logClosing(reason: string): void {
    if (this.closingLogged || !this.env.pooling || !this.ctx) return;
    this.closingLogged = true;
    const why = reason === 'client closed the connection' ? 'client unexpected eof' : reason;
    this.env.pooling.pooler.pgbLog.closing(why, this.startedAt, this.pgbSubject());
  }

  /**
   * pgBouncer's application_name_add_host: the client's address after its application_name (`app` when it gave
   * none), as `name - 10.0.0.5:53210`, `name - [::1]:53210` or, over the Unix socket, `name - unix(PID@HOST):PORT`.
   */
  private withHostInAppName(params: ReadonlyMap<string, string>): ReadonlyMap<string, string> {
    const st = this.env.pooling?.pooler.settings;
    if (!st?.applicationNameAddHost) return params;
    const r = this.remote;
    const where =
      r.addr === 'unix'
        ? `unix(${peerCredentials(this.raw)?.pid ?? 0}@${hostname()}):${st.listenPort}`
        : r.addr.includes(':')
          ? `[${r.addr}]:${r.port}`
          : `${r.addr}:${r.port}`;
    return new Map(params).set('application_name', `${params.get('application_name') ?? 'app'} - ${where}`);
  }

  /** How pgBouncer's log names this client. */
  pgbSubject() {
    return { kind: 'C' as const, id: this.id, database: this.ctx?.database ?? '(nodb)', user: this.ctx?.user ?? '(nouser)', address: this.clientAddress };
  }

  /** Pooling: the held connection goes back (closed if the client left it mid-transaction or mid-message). */
  private endPooled(busy: boolean): void {
    const pooled = this.pooled!;
    const held = pooled.server;
    if (held && busy && this.tracker.size > 0) held.pool.cancelFor(held);
    this.tracker.close();
    pooled.end(!busy && !this.hooks.pending);
    this.server = null;
    if (this.poolDb) this.env.pooling!.pooler.leave(this.poolDb, this.ctx!.user);
    this.poolDb = null;
  }

  /** The session's upstream connection ends with it: Terminate when between messages, a running statement cancelled. */
  private closeUpstream(server: ServerConnection, busy: boolean): void {
    server.reader.stop();
    if (busy && this.upstreamKey !== null && this.tracker.size > 0) {
      // Closing the socket alone leaves a running statement running until it next talks to the client.
      void sendCancel(this.env.target, this.upstreamKey, this.env.connectTimeoutMs, this.log);
    }
    if (server.writable && this.reader?.atBoundary !== false && !this.terminated) server.sock.end(TERMINATE);
    else server.sock.end();
    setTimeout(() => server.sock.destroy(), 1_000).unref();
  }

  // ---- online restart (takeover.ts) -----------------------------------------------------------------

  /** SUSPEND is on: the client is read no more from a message boundary on. */
  private suspending = false;
  /** Suspended through: neither socket is read and nothing is half-done (a handover may take the session). */
  private still = false;
  /** The message waiting for a server connection (pooledAcquire), while it waits. */
  private waitingMsg: Buffer | null = null;
  /** SUSPEND took it out of the pool's queue after it waited this long (ms); its request is back in the reader. */
  private heldWaitMs = 0;
  /** The bytes it holds so (counted in heldUnsent.bytes until RESUME or its end). */
  private heldBytes = 0;

  private releaseUnsent(): void {
    heldUnsent.bytes -= this.heldBytes;
    this.heldBytes = 0;
  }

  /** Taken over: what the client sent to the old process that did not go upstream, read before its socket. */
  feedUnsent(bytes: Buffer): void {
    if (this.phase === READY) this.reader?.push(bytes);
  }

  /** SHOW FDS: what the client sent that has not gone upstream (a request SUSPEND held while it waited): moves with it. */
  unsentInput(): Buffer {
    return this.heldWaitMs > 0 && this.reader !== null ? this.reader.takeQueued() : Buffer.alloc(0);
  }

  /**
   * SUSPEND, as pgBouncer suspends a socket once its buffer is empty: the client is read no more from a message
   * boundary on, then its server connection no more once that one is between messages too and every answer
   * still due is the client's own (a running statement's answer waits in the socket). True once both are still.
   * suspend(false) is RESUME: both are read again.
   */
  suspend(on: boolean): boolean {
    if (!on) {
      if (this.suspending) {
        this.suspending = this.still = false;
        this.resumeClient(PAUSE_SUSPEND);
        if (this.server !== null && !this.serverPaused) this.server.sock.resume();
        // Held while it waited for a server connection: its request is read again and waits again, in its place.
        if (this.heldWaitMs > 0 && this.pooled !== null) {
          this.pooled.waitedBefore = this.heldWaitMs;
          this.heldWaitMs = 0;
          this.releaseUnsent();
          this.reader?.resume();
        }
      }
      return false;
    }
    this.suspending = true;
    if (this.still) return true;
    this.pooled?.reclaim(); // a lent connection: JS must hold both sockets to stop reading them
    const r = this.reader;
    if (this.phase !== READY || this.pooled === null || r === null) return false;
    // Waiting for a server connection: it stops waiting here, its request unsent and back in the reader, and moves
    // so (the new process queues it) rather than being closed at suspend_timeout while every server is busy.
    // The bytes so held go into the takeover's state: bounded per client and in all (else the old way).
    const waitingMsg = this.waitingMsg;
    const size = waitingMsg === null ? 0 : waitingMsg.length + r.buffered;
    const fits = size <= HELD_UNSENT_PER_CLIENT && heldUnsent.bytes + size <= HELD_UNSENT_TOTAL;
    if (waitingMsg !== null && fits && this.server === null && (this.paused & PAUSE_SUSPEND) === 0 && r.atBoundary) {
      const waited = this.pooled.stopWaiting();
      if (waited > 0) {
        this.waitingMsg = null;
        this.heldWaitMs = waited;
        this.heldBytes = size;
        heldUnsent.bytes += size;
        this.pauseClient(PAUSE_SUSPEND);
        r.requeue(waitingMsg);
        this.resumeClient(PAUSE_POOL);
      }
    }
    // (Held so, it is paused already and holds no server: the checks below find it still.)
    if ((this.paused & PAUSE_SUSPEND) === 0) {
      if (!r.atBoundary || r.isPaused || r.buffered > 0) return false;
      this.pauseClient(PAUSE_SUSPEND);
    }
    if (this.hooks.pending || this.sock.writableLength > 0 || this.tracker.handover() === null) return false;
    const s = this.server;
    if (s !== null && (!s.reader.atBoundary || s.reader.isPaused || s.reader.buffered > 0 || s.sock.writableLength > 0)) return false;
    if (!this.pooled.unwatchForHandover()) return false;
    s?.sock.pause();
    return (this.still = true);
  }

  /**
   * SHOW FDS: the client's socket and cancel key (null under TLS, which ends here as in pgBouncer), and whether the
   * session can move to the process taking over now: still, and neither a replication client nor one holding
   * the interceptor's plans.
   */
  handover(): { fd: number; key: CancelKey | null; moves: boolean } | null {
    const p = this.pooled;
    const fd = socketFd(this.raw);
    if (fd < 0 || this.sock !== this.raw) return null;
    const w = this.ctx?.watched;
    const moves =
      this.still && p !== null && this.key !== null && p.replication === null && w !== undefined && w.statements.size === 0 && w.portals.size === 0 &&
      (this.server === null || (this.server.plain && socketFd(this.server.sock) >= 0));
    return { fd, key: this.key, moves };
  }

  /** Handed over: the session ends here without a word to either side (the new process has the sockets). */
  detach(): void {
    if (this.phase === CLOSED) return;
    this.phase = CLOSED;
    this.releaseUnsent();
    this.reader?.stop();
    this.server?.reader.stop();
    this.server = null;
    if (this.key !== null) this.env.cancels.release(this.key.pid);
    const p = this.pooled;
    if (p !== null) {
      p.pool.clients.delete(p);
      p.server = null; // the takeover detaches the server connection itself
    }
    if (this.poolDb) this.env.pooling!.pooler.leave(this.poolDb, this.ctx!.user);
    this.poolDb = null;
    this.hooks.close();
    this.seam?.sessionEnd();
    this.raw.removeAllListeners();
    this.raw.on('error', () => {});
    this.raw.destroy(); // our descriptor only: no FIN while the new process holds the socket
    this.env.onClosed(this);
  }

  /**
   * A pooled session handed over by the process this one replaces, going on where it stood: logged in, with its
   * cancel key, its requests in flight, and the server connection it held.
   */
  static adopt(id: number, socket: Socket, input: ReadBuffer, env: SessionEnv, a: AdoptedSession): ClientSession {
    const c = new ClientSession(id, socket, env, input);
    c.resumeAdopted(a);
    return c;
  }

  private resumeAdopted(a: AdoptedSession): void {
    if (this.startupTimer) clearTimeout(this.startupTimer);
    this.startupTimer = null;
    const pooling = this.env.pooling!;
    this.log = this.log.child({ user: a.user, db: a.database, takenOver: true });
    const ctx = (this.ctx = this.sessionContext({ major: 3, minor: 0, params: a.startup }, a.user, a.database));
    ctx.txStatus = a.txStatus;
    for (const [k, v] of a.serverParams) ctx.serverParams.set(k, v);
    if (this.env.interceptor) this.seam = new Seam(this.env.interceptor, ctx, this.env.totals);
    const refused = pooling.pooler.admit(a.pool.db, a.user);
    if (refused) this.log.warn({ err: refused.message }, 'client taken over beyond this configuration\'s limits');
    else this.poolDb = a.pool.db;
    const pooled = (this.pooled = new PooledSession(this.pooledHost(), a.pool, a.startup, pooling.statements));
    a.restore(pooled);
    this.key = a.key;
    if (!this.env.cancels.restore(a.key.pid, a.key.secret, () => this.cancelUpstream())) this.log.warn('the cancel key of this client is in use here: its cancels are ignored');
    this.tracker.adopt(a.requests);
    this.lastActive = a.lastActive;
    this.reader = new FrameReader(this, this.env.maxMessageBytes);
    this.phase = READY;
    const s = a.server;
    if (s !== null) {
      s.client = pooled;
      a.pool.active.add(s);
      pooled.server = s;
      pooled.linkedAt = Date.now();
      s.conn.attach(this);
      this.server = s.conn;
      this.upstreamKey = s.key;
    }
    this.seam?.sessionStart();
  }
}

/** What takeover.ts gives a session handed over by the process this one replaces (ClientSession.adopt). */
export interface AdoptedSession {
  user: string;
  database: string;
  startup: Map<string, string>;
  /** The ParameterStatus values the client was told. */
  serverParams: Map<string, string>;
  txStatus: TxStatus;
  key: CancelKey;
  lastActive: number;
  /** Its requests awaiting answers (RequestTracker.handover). */
  requests: { codes: number[]; syncsIgnored: boolean };
  pool: Pool;
  /** Puts back what follows the client between server connections (settings, pins, statements). */
  restore(pooled: PooledSession): void;
  /** The server connection it held, taken over too. */
  server: PooledServer | null;
}

interface MutableContext extends SessionContext {
  txStatus: TxStatus;
  readonly serverParams: Map<string, string>;
}

function plausibleStartupLength(len: number): boolean {
  return len >= 8 && len <= MAX_STARTUP_PACKET;
}
