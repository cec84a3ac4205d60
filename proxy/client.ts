// One client session: the client side of the protocol. Reads the startup packets (SSLRequest → TLS,
// GSSENCRequest → 'N', CancelRequest, StartupMessage), opens the session's own upstream connection and
// relays authentication as bytes, then forwards everything the client sends: whole chunks, walking only
// message boundaries, except the messages the interception seam must see. It owns the session's state
// (request tracker, cancel key, transaction status) and its ending: on errors, client disconnects,
// upstream loss and graceful shutdown.
import { setMaxListeners } from 'node:events';
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { CancelKey, CancelRegistry } from './cancel.js';
import { FrameReader, KEEP, PAUSE, type FrameHandler, type Verdict } from './framing.js';
import { Seam, type Interceptor, type Outgoing, type SessionContext } from './interceptor.js';
import {
  ACCEPT_ENCRYPTION,
  CANCEL_REQUEST_CODE,
  Fe,
  GSSENC_REQUEST_CODE,
  MAX_STARTUP_PACKET,
  REFUSE_ENCRYPTION,
  SSL_REQUEST_CODE,
  SqlState,
  TERMINATE,
  backendKeyData,
  errorResponse,
  forEachMessage,
  readStartupPacket,
  typeName,
  type ErrorFields,
  type TxStatus,
} from './protocol.js';
import type { ReadBuffer } from './read-buffer.js';
import { socketFd, type NativeRelay, type RelayHandle, type RelayOutcome } from './relay.js';
import { RequestTracker } from './tracker.js';
import { ServerConnection, UpstreamUnreachable, openUpstream, sendCancel, type OpenedUpstream, type SessionLink, type UpstreamTarget } from './upstream.js';

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

// Reasons the client socket is not being read.
const PAUSE_BACKPRESSURE = 1;
const PAUSE_HOOK = 2;
/**
 * While a hook runs the reader holds back what follows; the socket goes on being read up to this much,
 * because a socket that is not read does not report the client leaving (a socket reading through a
 * reused buffer stops reading outright when paused), and that must abort the hook's work at once.
 */
const HOOK_BACKLOG_BYTES = 256 * 1024;
const PAUSE_CONNECTING = 4;
const PAUSE_RELAY = 8;

/** The server's own authentication_timeout default: a client that never finishes startup is dropped. */
const STARTUP_TIMEOUT_MS = 60_000;

export class ClientSession implements FrameHandler, SessionLink {
  log: Logger;
  readonly tracker = new RequestTracker();
  readonly startedAt = Date.now();
  private phase = STARTUP;
  private sock: Socket;
  private readonly raw: Socket;
  private readonly clientAddress: string;
  private startupBuf: Buffer | null = null;
  /** Client bytes that arrived after the StartupMessage, before the upstream was there to take them. */
  private early: Buffer[] = [];
  private reader: FrameReader | null = null;
  private server: ServerConnection | null = null;
  private seam: Seam | null = null;
  private ctx: MutableContext | null = null;
  private paused = 0;
  private serverPaused = false;
  private hookPending = false;
  private hookAbort = hookController();
  private upstreamKey: CancelKey | null = null;
  private key: CancelKey | null = null;
  private draining = false;
  /** The client sent Terminate: the server's goodbye needs no message of ours. */
  private terminated = false;
  private startupTimer: NodeJS.Timeout | null;
  /** Both sockets are with the native relay. */
  private relay: RelayHandle | null = null;
  /** A ReadyForQuery went by: once the chunk carrying it is through, see whether the relay can take over. */
  private relayCheck = false;
  /** The relay will not take this session (again): a socket ended under it, or it could not start. */
  private relayOff = false;
  private readonly onData = (chunk: Buffer) => this.data(chunk);

  constructor(
    readonly id: number,
    socket: Socket,
    private readonly env: SessionEnv,
    /** Present when the socket reads through a reused buffer (read-buffer.ts) instead of 'data' events. */
    private readonly input?: ReadBuffer,
  ) {
    this.raw = this.sock = socket;
    this.clientAddress = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.log = env.logger.child({ session: id, client: this.clientAddress });
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 60_000);
    this.listen(socket);
    this.startupTimer = setTimeout(() => {
      this.log.warn('startup not finished in time');
      this.fail(SqlState.ProtocolViolation, 'timeout: the connection startup did not complete in time');
    }, STARTUP_TIMEOUT_MS);
    this.startupTimer.unref();
  }

  /** In a transaction or waiting for an answer: shutdown waits for it (within its grace period). */
  get busy(): boolean {
    if (this.phase !== READY) return false;
    if (this.relay !== null) {
      const st = this.env.nativeRelay!.state(this.relay);
      return st.requests > 0 || st.held > 0 || st.streaming > 0 || (st.status !== '' && st.status !== 'I');
    }
    return (
      this.tracker.size > 0 ||
      this.hookPending ||
      this.ctx!.txStatus !== 'I' ||
      !this.reader!.atBoundary ||
      !this.server!.reader.atBoundary
    );
  }

  /** Bytes this session holds in memory (unsent writes both ways, partial messages, paused input). */
  get buffered(): number {
    let n = this.sock.writableLength + (this.reader?.buffered ?? 0);
    for (const c of this.early) n += c.length;
    if (this.server) n += this.server.sock.writableLength + this.server.reader.buffered;
    if (this.relay !== null) n += this.env.nativeRelay!.state(this.relay).held;
    return n;
  }

  /** Bytes the native relay has moved for this session and not yet added to the totals (it adds them on exit). */
  get relayBytes(): { fromClient: number; fromServer: number } {
    if (this.relay === null) return { fromClient: 0, fromServer: 0 };
    const st = this.env.nativeRelay!.state(this.relay);
    return { fromClient: st.bytesFromClient, fromServer: st.bytesFromServer };
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

  /** Does anything still point into the chunk just read (so the read buffer must not be reused)? */
  private holdsInput(): boolean {
    return this.phase !== READY || this.hookPending || this.reader!.isPaused || (this.server !== null && this.server.sock.writableLength > 0);
  }

  private data(chunk: Buffer): void {
    this.env.totals.bytesFromClients += chunk.length;
    try {
      if (this.reader !== null) {
        this.reader.push(chunk);
        if (this.hookPending && this.reader.buffered > HOOK_BACKLOG_BYTES) this.pauseClient(PAUSE_HOOK);
      }
      else if (this.phase === STARTUP) this.startupData(chunk);
      else if (this.phase === CONNECTING) this.early.push(chunk);
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
    if (!this.sock.write(bytes) && !this.serverPaused && this.server) {
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
      if (code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE) {
        if (len !== 8) return this.protocolError(SqlState.ProtocolViolation, 'invalid length of SSL or GSS encryption request');
        // Bytes sent before the handshake would be readable on the wire (CVE-2021-23214).
        if (buf.length > 0) return this.protocolError(SqlState.ProtocolViolation, 'received unencrypted data after SSL or GSS encryption request');
        if (code === SSL_REQUEST_CODE && this.env.secureContext && this.sock === this.raw) return this.startTls();
        this.sock.write(REFUSE_ENCRYPTION);
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
    this.sock.write(ACCEPT_ENCRYPTION);
    this.raw.removeListener('data', this.onData);
    if (this.input) this.input.onChunk = () => {};
    this.raw.removeAllListeners('end');
    const tls = new TLSSocket(this.raw, { isServer: true, secureContext: this.env.secureContext });
    this.sock = tls;
    this.listen(tls);
    // Errors of the raw socket surface on the TLS socket; a handshake failure closes the session.
    this.raw.removeAllListeners('error');
    this.raw.on('error', () => {});
    this.raw.removeAllListeners('close');
    this.raw.on('close', () => this.close('client closed the connection'));
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
    this.ctx = {
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
      signal: this.hookAbort.signal,
      send: (out) => {
        if (!this.hookPending || this.phase === CLOSED) throw new Error('ctx.send is only for a pending interceptor hook');
        const v = this.replacement([{ bytes: out.bytes, handler: out.responses }]);
        for (const b of v as Buffer[]) this.onBytes(b);
      },
    };
    if (this.env.interceptor) this.seam = new Seam(this.env.interceptor, this.ctx, this.env.totals);
    this.phase = CONNECTING;
    if (rest.length > 0) this.early.push(rest);
    this.pauseClient(PAUSE_CONNECTING);
    this.connect(Buffer.from(packet)).catch((err) => this.internalError(err));
  }

  private async connect(startup: Buffer): Promise<void> {
    let up: OpenedUpstream;
    try {
      up = await openUpstream(this.env.target, this.env.connectTimeoutMs);
    } catch (err) {
      this.env.totals.upstreamFailures++;
      const reason = err instanceof UpstreamUnreachable ? err.message : `cannot connect to upstream database at ${this.env.target.display}: ${String(err)}`;
      this.log.warn({ upstream: this.env.target.display, err: reason }, 'upstream unreachable');
      this.fatal({
        severity: 'FATAL',
        code: SqlState.ConnectionFailure,
        message: reason,
        hint: `Check that PostgreSQL is running at ${this.env.target.display} and accepts connections from the proxy, and that the proxy's upstream URL is right.`,
      });
      return this.close('upstream unreachable');
    }
    if (this.phase === CLOSED) {
      up.sock.destroy();
      return;
    }
    this.server = new ServerConnection(this, up);
    this.server.write(startup);
    this.phase = AUTH;
    this.reader = new FrameReader(this, this.env.maxMessageBytes);
    const early = this.early;
    this.early = [];
    for (const chunk of early) this.reader.push(chunk);
    this.resumeClient(PAUSE_CONNECTING);
  }

  // ---- client → server (FrameHandler of the client stream) -----------------------------------------

  header(code: number): boolean {
    if (this.seam !== null && this.seam.wants(code)) return true;
    this.tracker.sent(code);
    if (code === Fe.Terminate) this.terminated = true;
    return false;
  }

  onMessage(msg: Buffer, code: number): Verdict {
    if (this.hookAbort.signal.aborted && this.ctx) {
      this.hookAbort = hookController();
      this.ctx.signal = this.hookAbort.signal;
    }
    const r = this.seam!.offer(msg, code);
    if (r === undefined) {
      this.tracker.sent(code);
      return KEEP;
    }
    if (r instanceof Promise) {
      this.hookPending = true;
      r.then((out) => this.hookDone(out, msg, code)).catch((err) => this.internalError(err));
      return PAUSE;
    }
    return this.replacement(r);
  }

  /**
   * Stops the work of the pending hook. ctx.signal stays the aborted one until the next hook starts: the
   * pending hook may read it only after an await of its own, and must see the abort then.
   */
  private abortHook(reason: Error): void {
    this.hookAbort.abort(reason);
  }

  private hookDone(out: Outgoing | undefined, original: Buffer, code: number): void {
    this.hookPending = false;
    if (this.phase === CLOSED) return;
    const v = out === undefined ? (this.tracker.sent(code), original) : this.replacement(out);
    if (Buffer.isBuffer(v)) this.onBytes(v);
    else if (Array.isArray(v)) for (const b of v) this.onBytes(b);
    this.resumeClient(PAUSE_HOOK);
    this.reader!.resume();
    if (this.draining) this.drainCheck();
  }

  /** Registers what the replacement will be answered with and hands its bytes to the reader to send. */
  private replacement(out: Outgoing): Verdict {
    const bufs: Buffer[] = [];
    for (const { bytes, handler } of out) {
      forEachMessage(bytes, (c) => {
        this.tracker.sent(c, handler);
        if (c === Fe.Terminate) this.terminated = true;
      });
      bufs.push(bytes);
    }
    return bufs;
  }

  onBytes(bytes: Buffer): void {
    const server = this.server;
    if (server === null || this.phase === CLOSED) return;
    if (!server.write(bytes)) this.pauseClient(PAUSE_BACKPRESSURE);
  }

  onInvalid(code: number, length: number, tooLarge: boolean): void {
    if (tooLarge) {
      this.protocolError(
        SqlState.ProgramLimitExceeded,
        `message of type ${typeName(code)} is too large: ${length} bytes, the proxy accepts at most ${this.env.maxMessageBytes} (maxMessageBytes)`,
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
    const ctx = this.ctx!;
    ctx.txStatus = status;
    this.seam?.ready(status);
    if (this.env.nativeRelay !== null && !this.relayOff) this.relayCheck = true;
    if (first) {
      this.phase = READY;
      if (this.startupTimer) clearTimeout(this.startupTimer);
      this.startupTimer = null;
      this.log.info({ serverVersion: ctx.serverParams.get('server_version') }, 'client connected');
      this.seam?.sessionStart();
    }
    // Shutdown acts after the ReadyForQuery has reached the client.
    if (this.draining) setImmediate(() => this.drainCheck());
  }

  serverParam(name: string, value: string): void {
    this.ctx!.serverParams.set(name, value);
  }

  startupError(fields: Record<string, string>): void {
    this.log.info({ code: fields.C, error: fields.M }, 'upstream refused the session');
  }

  countUpstreamBytes(n: number): void {
    this.env.totals.bytesFromUpstream += n;
  }

  serverChunkDone(): void {
    if (this.relayCheck) {
      this.relayCheck = false;
      this.startRelay();
    }
  }

  // ---- the native relay ------------------------------------------------------------------------------

  /**
   * Hands both sockets to the native relay if the session is idle between statements: nothing in flight,
   * held, paused or queued on either side, plaintext both ways, no watched statements.
   */
  private startRelay(): void {
    const nr = this.env.nativeRelay;
    const server = this.server;
    if (nr === null || this.relay !== null || this.relayOff || this.phase !== READY || server === null) return;
    if (this.sock !== this.raw || this.input === undefined || !server.plain) return;
    if (this.tracker.size > 0 || this.hookPending || this.paused !== 0 || this.serverPaused || this.draining) return;
    const r = this.reader!;
    const sr = server.reader;
    if (!r.atBoundary || r.isPaused || r.buffered > 0 || !sr.atBoundary || sr.isPaused || sr.buffered > 0) return;
    if (this.sock.writableLength > 0 || server.sock.writableLength > 0) return;
    const w = this.ctx!.watched;
    if (w.statements.size > 0 || w.portals.size > 0) return;
    // A socket reading through `onread` has a Readable that stays in its `reading` state after the first
    // read; one that is not there yet could start reading from a nextTick of resume() under the relay.
    if (!readableSettled(this.raw) || !readableSettled(server.sock)) return;
    const cfd = socketFd(this.raw);
    const sfd = socketFd(server.sock);
    if (cfd < 0 || sfd < 0) {
      this.relayOff = true;
      return;
    }
    this.pauseClient(PAUSE_RELAY);
    server.sock.pause();
    try {
      this.relay = nr.start(cfd, sfd, this.env.maxMessageBytes, (o) => {
        try {
          this.relayEnded(o);
        } catch (err) {
          this.internalError(err);
        }
      });
    } catch (err) {
      this.relayOff = true;
      this.log.warn({ err: (err as Error).message }, 'native relay did not start; this session relays in JS');
      server.sock.resume();
      this.resumeClient(PAUSE_RELAY);
      return;
    }
    this.env.totals.relayStarts++;
  }

  /**
   * Takes the sockets back from the relay now, before JS writes to either. `final`: the session is ending,
   * the relay must not take it again.
   */
  private stopRelay(final: boolean): void {
    if (final) this.relayOff = true;
    if (this.relay === null) return;
    const o = this.env.nativeRelay!.stop(this.relay);
    if (o !== null) this.relayEnded(o);
  }

  /**
   * The relay gave the session back: what it had forwarded but not written goes out first, the request
   * tracker learns what went by, and the messages it stopped at go through the JS path.
   */
  private relayEnded(o: RelayOutcome): void {
    this.relay = null;
    const totals = this.env.totals;
    totals.relayExits++;
    totals.bytesFromClients += o.bytesFromClient;
    totals.bytesFromUpstream += o.bytesFromServer;
    // A message the relay was streaming: the readers continue inside it (and close() sees it unfinished).
    if (o.skipServer > 0) this.server!.reader.passThrough(o.skipServer);
    if (o.skipClient > 0) this.reader!.passThrough(o.skipClient);
    if (this.phase === CLOSED) return;
    this.log.trace({ reason: o.reason, errno: o.errno }, 'native relay gave the session back');
    const server = this.server!;
    if (o.toServer.length > 0 && !server.write(o.toServer)) this.pauseClient(PAUSE_BACKPRESSURE);
    if (o.toClient.length > 0 && !this.sock.write(o.toClient)) this.serverPaused = true;
    for (const code of o.log) {
      if (code & 0x80) this.tracker.received(code & 0x7f);
      else this.tracker.sent(code);
    }
    if (o.status !== '') {
      this.ctx!.txStatus = o.status as TxStatus;
      this.seam?.ready(o.status as TxStatus);
    }
    // A socket that ended or failed under the relay: Node finds out on its next read and the session ends.
    if (o.reason.endsWith('eof') || o.reason.endsWith('error')) this.relayOff = true;
    this.relayCheck = false;
    if (o.fromServer.length > 0) server.reader.push(o.fromServer);
    if (o.fromClient.length > 0 && this.phase !== CLOSED) this.reader!.push(o.fromClient);
    if (this.phase === CLOSED) return;
    this.resumeClient(PAUSE_RELAY);
    if (!this.serverPaused) server.sock.resume();
    if (this.draining) this.drainCheck();
    else this.serverChunkDone();
  }

  serverDrained(): void {
    this.resumeClient(PAUSE_BACKPRESSURE);
  }

  serverError(err: Error): void {
    this.log.warn({ err: err.message }, 'upstream connection error');
  }

  serverClosed(): void {
    if (this.phase === CLOSED) return;
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

  // ---- cancel, shutdown, end -----------------------------------------------------------------------

  private cancelUpstream(): void {
    if (this.hookPending) this.abortHook(new Error('canceling statement due to user request'));
    // Nothing running upstream (a hook's statement is not sent yet): the backend would ignore the cancel
    // now, and one that arrives late would hit the client's next statement instead.
    if (this.upstreamKey === null || this.phase === CLOSED) return;
    const inFlight = this.relay !== null ? this.env.nativeRelay!.state(this.relay).requests : this.tracker.size;
    if (inFlight === 0) return;
    sendCancel(this.env.target, this.upstreamKey, this.env.connectTimeoutMs, this.log);
  }

  /** Graceful shutdown: end the session as soon as it is idle (between transactions). */
  shutdown(): void {
    this.draining = true;
    this.stopRelay(false); // draining: it will not take the session again
    this.drainCheck();
  }

  private drainCheck(): void {
    if (this.phase === CLOSED || this.busy) return;
    this.terminate();
  }

  /** Ends the session now with FATAL 57P01 (shutdown; also at the end of the grace period). */
  terminate(): void {
    if (this.phase === CLOSED) return;
    this.stopRelay(true);
    this.fatal({ severity: 'FATAL', code: SqlState.AdminShutdown, message: 'terminating connection due to administrator command' });
    this.close('proxy shutting down');
  }

  /** Sends a FATAL ErrorResponse if the client's stream is between messages. */
  private fatal(f: ErrorFields): void {
    if (this.phase === CLOSED || this.sock.destroyed || !this.sock.writable) return;
    this.stopRelay(true);
    if (this.server !== null && !this.server.reader.atBoundary) return;
    this.sock.write(errorResponse(f));
  }

  private protocolError(code: string, message: string): void {
    this.env.totals.protocolErrors++;
    this.log.warn({ code }, message);
    this.fatal({ severity: 'FATAL', code, message });
    this.close(message);
  }

  private fail(code: string, message: string): void {
    this.fatal({ severity: 'FATAL', code, message });
    this.close(message);
  }

  /** Ends the session (idempotent): upstream closed (its running query cancelled), client socket ended. */
  close(reason: string): void {
    if (this.phase === CLOSED) return;
    const busy = this.busy;
    const wasReady = this.phase === READY;
    this.phase = CLOSED;
    this.stopRelay(true); // closed already: only its counts and where the readers stand are taken back
    if (this.startupTimer) clearTimeout(this.startupTimer);
    this.reader?.stop();
    const server = this.server;
    if (server !== null) {
      server.reader.stop();
      if (busy && this.upstreamKey !== null && this.tracker.size > 0) {
        // Closing the socket alone leaves a running statement running until it next talks to the client.
        sendCancel(this.env.target, this.upstreamKey, this.env.connectTimeoutMs, this.log);
      }
      if (server.writable && this.reader?.atBoundary !== false && !this.terminated) server.sock.end(TERMINATE);
      else server.sock.end();
      setTimeout(() => server.sock.destroy(), 1_000).unref();
    }
    if (!this.sock.destroyed) {
      this.sock.end();
      // A client that never reads would keep the socket half-open; give the goodbye a moment, no more.
      setTimeout(() => this.sock.destroy(), 1_000).unref();
    }
    if (this.key !== null) this.env.cancels.release(this.key.pid);
    this.tracker.close();
    this.hookAbort.abort(new Error('client session ended'));
    if (wasReady) this.seam?.sessionEnd();
    this.env.totals.closed++;
    const log = { reason, durationMs: Date.now() - this.startedAt };
    if (wasReady) this.log.info(log, 'client disconnected');
    else this.log.debug(log, 'connection closed before the session started');
    this.env.onClosed(this);
  }
}

interface MutableContext extends SessionContext {
  txStatus: TxStatus;
  readonly serverParams: Map<string, string>;
}

function readableSettled(sock: Socket): boolean {
  return (sock as Socket & { _readableState?: { reading?: boolean } })._readableState?.reading === true;
}

function plausibleStartupLength(len: number): boolean {
  return len >= 8 && len <= MAX_STARTUP_PACKET;
}

/** One hook may start many engine requests (prefetch), each listening on the same signal. */
function hookController(): AbortController {
  const ac = new AbortController();
  setMaxListeners(0, ac.signal);
  return ac;
}
