// The server side of a session: where the upstream is (URL, sslmode), opening the connection (TCP or Unix
// socket, then TLS as sslmode says), and the relay of everything the server sends. During startup the
// relay looks at each message (it swaps BackendKeyData for the proxy's own, hides channel-binding SCRAM
// mechanisms, notes ParameterStatus and the first ReadyForQuery); afterwards it only walks message
// boundaries and forwards whole chunks, stopping at a message only when the request tracker or the
// session must see it.
import { readFileSync } from 'node:fs';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { checkServerIdentity, connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { FrameReader, KEEP, DROP, type FrameHandler, type Verdict } from './framing.js';
import type { ResponseHandler } from './interceptor.js';
import { ReadBuffer } from './read-buffer.js';
import { socketFd, writeFast } from './relay.js';
import {
  AUTH_SASL,
  Be,
  cancelRequest,
  readBackendKeyData,
  readCString,
  readErrorFields,
  readParameterStatus,
  readTxStatus,
  sslRequest,
  typeName,
  type TxStatus,
} from './protocol.js';
import type { RequestTracker } from './tracker.js';
import type { CancelKey } from './cancel.js';
import type { Logger } from 'pino';

export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

export interface UpstreamTarget {
  host: string;
  port: number;
  /** Unix-domain socket path when the host is a directory. */
  path?: string;
  sslmode: SslMode;
  /** TLS options for tls.connect (absent when sslmode never uses TLS). */
  tls?: ConnectionOptions;
  /** "host:port" (or the socket path) for messages. */
  display: string;
}

const SSL_MODES: SslMode[] = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];

/** The file of a PostgreSQL (or pgBouncer) Unix socket in `dir` for `port`, as libpq names it. */
export function socketPath(dir: string, port: number): string {
  return `${dir.replace(/\/$/, '')}/.s.PGSQL.${port}`;
}

/**
 * Where to connect, from a postgres:// URL. Only the location and the TLS settings matter: user,
 * database and password come from each client's own startup and authentication.
 */
export function parseUpstreamUrl(url: string): UpstreamTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`upstream is not a valid URL: ${JSON.stringify(url)}`);
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new Error(`upstream URL must start with postgres:// or postgresql:// (got ${u.protocol}//)`);
  }
  const q = u.searchParams;
  let host = q.get('host') ?? decodeURIComponent(u.hostname);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (!host) host = 'localhost';
  const port = Number(q.get('port') ?? (u.port || 5432));
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`upstream port is not valid: ${u.port}`);
  const sslmode = (q.get('sslmode') ?? 'prefer') as SslMode;
  if (!SSL_MODES.includes(sslmode)) throw new Error(`upstream sslmode must be one of ${SSL_MODES.join(', ')} (got ${sslmode})`);

  if (host.startsWith('/')) {
    // libpq never uses TLS over a Unix socket.
    const path = socketPath(host, port);
    return { host, port, path, sslmode: 'disable', display: path };
  }
  const display = `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
  if (sslmode === 'disable' || sslmode === 'allow') return { host, port, sslmode, display };

  const rootcert = q.get('sslrootcert');
  const read = (what: string, file: string) => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new Error(`cannot read upstream ${what} ${file}: ${(err as Error).message}`, { cause: err });
    }
  };
  const tls: ConnectionOptions = {};
  if (isIP(host) === 0) tls.servername = host;
  const cert = q.get('sslcert');
  const key = q.get('sslkey');
  if (cert) tls.cert = read('sslcert', cert);
  if (key) tls.key = read('sslkey', key);
  // As libpq: require with a root certificate verifies the chain like verify-ca.
  const verify = sslmode === 'verify-ca' || sslmode === 'verify-full' || (sslmode === 'require' && !!rootcert);
  if (!verify) {
    tls.rejectUnauthorized = false;
  } else {
    tls.rejectUnauthorized = true;
    if (rootcert && rootcert !== 'system') tls.ca = read('sslrootcert', rootcert);
    tls.checkServerIdentity =
      sslmode === 'verify-full' ? (_name, peer) => checkServerIdentity(host, peer) : () => undefined;
  }
  return { host, port, sslmode, tls, display };
}

/** A failure to reach the upstream, with a message fit for the client. */
export class UpstreamUnreachable extends Error {
  constructor(
    readonly target: UpstreamTarget,
    readonly reason: string,
  ) {
    super(`cannot connect to upstream database at ${target.display}: ${reason}`);
  }
}

/** OpenSSL's verification failures as Node codes them: logged in OpenSSL's (and pgBouncer's) words too. */
const CERT_ERRORS = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_UNTRUSTED', 'CERT_REJECTED',
  'CERT_SIGNATURE_FAILURE', 'ERR_TLS_CERT_ALTNAME_INVALID',
]);

function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException & { hostname?: string };
  if (e?.code === 'ENOTFOUND' || e?.code === 'EAI_AGAIN') return `DNS lookup failed (${e.code} ${e.hostname ?? ''})`.trim();
  return e?.message ?? String(err);
}

export interface OpenedUpstream {
  sock: Socket;
  /** The TCP (or Unix) socket itself, under TLS too: socket options go on it. */
  tcp?: Socket;
  /** Present for plaintext TCP: the socket reads through it (no 'data' events). */
  input: ReadBuffer | undefined;
}

/** Opens a connection to the upstream, negotiating TLS per sslmode. Resolves once startup can be sent. */
export function openUpstream(t: UpstreamTarget, timeoutMs: number): Promise<OpenedUpstream> {
  return new Promise((resolve, reject) => {
    // The reused buffer serves plaintext reads. prefer gets one too: when the server declines TLS the
    // session is as plain as under disable and must reach the same fast paths (the relay, the buffer).
    // After an upgrade the TLS socket reads the handle itself and the buffer goes unused.
    const input = !t.tls || t.sslmode === 'prefer' ? new ReadBuffer() : undefined;
    const onread = input ? { buffer: input.next, callback: input.callback } : undefined;
    let sock: Socket = t.path ? netConnect({ path: t.path, onread }) : netConnect({ host: t.host, port: t.port, onread });
    const tcp = sock;
    let settled = false;
    const fail = (reason: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      reject(new UpstreamUnreachable(t, reason));
    };
    const ok = (plain: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.removeListener('error', onError);
      sock.pause(); // the relay resumes it once its listeners are on
      resolve({ sock, input: plain ? input : undefined, tcp });
    };
    const onError = (err: Error) => fail(describe(err));
    const timer = setTimeout(() => fail(`no connection within ${timeoutMs} ms (connect timeout)`), timeoutMs);
    sock.on('error', onError);
    sock.once('connect', () => {
      if (!t.tls) return ok(true);
      sock.write(sslRequest());
      const answered = (answer: Buffer) => {
        sock.pause();
        if (input) input.onChunk = () => {};
        // More than one byte before the handshake would be readable by anyone on the path (CVE-2021-23222).
        if (answer.length !== 1) return fail('unexpected data after the answer to SSLRequest');
        if (answer[0] === 0x4e /* N */) {
          if (t.sslmode === 'prefer') return ok(true);
          return fail(`server does not support SSL, but sslmode=${t.sslmode}`);
        }
        if (answer[0] !== 0x53 /* S */) return fail(`unexpected answer to SSLRequest (${typeName(answer[0])})`);
        sock.removeListener('error', onError);
        const raw = sock;
        raw.on('error', () => {}); // the TLS socket reports it
        sock = tlsConnect({ ...t.tls, socket: raw });
        sock.on('error', (err) => fail(`TLS: ${CERT_ERRORS.has((err as NodeJS.ErrnoException).code ?? '') ? 'certificate verify failed: ' : ''}${describe(err)}`));
        sock.once('secureConnect', () => {
          sock.removeAllListeners('error');
          ok(false);
        });
      };
      // A socket with onread delivers no 'data' events.
      if (input) input.onChunk = answered;
      else sock.once('data', answered);
    });
  });
}

/** Sends a CancelRequest for `key` on a new upstream connection; failures are logged, never thrown. */
/** Resolves once the server has taken the request (it closes the connection then) or it could not be sent. */
export function sendCancel(t: UpstreamTarget, key: CancelKey, timeoutMs: number, log: Logger): Promise<void> {
  return openUpstream(t, timeoutMs).then(
    ({ sock }) =>
      new Promise<void>((resolve) => {
        sock.on('error', () => {});
        sock.once('close', () => resolve());
        sock.resume();
        // The server closes the connection after reading the request; end() flushes it first.
        sock.end(cancelRequest(key.pid, key.secret));
        setTimeout(() => sock.destroy(), timeoutMs).unref();
      }),
    (err: Error) => log.warn({ err: err.message }, 'could not send cancel request upstream'),
  );
}

/** What the relay needs from its session (implemented by ClientSession). */
export interface SessionLink {
  readonly log: Logger;
  readonly tracker: RequestTracker;
  /** Bytes for the client. */
  toClient(bytes: Buffer): void;
  /** Bytes written to the client but not yet taken by the kernel (they may be views of a read buffer). */
  readonly clientBacklog: number;
  /** The server's BackendKeyData; returns the message to give the client instead. */
  serverKey(key: CancelKey): Buffer;
  /** ReadyForQuery from the server; `first` for the one that ends startup. */
  serverReady(status: TxStatus, first: boolean): void;
  serverParam(name: string, value: string): void;
  /** A NoticeResponse that names steadytext (the in-band callback's request): true when it must not reach the client. */
  serverNotice?(msg: Buffer): boolean;
  /**
   * Pooling: an ErrorResponse the session may hold back until the ReadyForQuery after it (the 0A000 retry,
   * pooled-session.ts); true: held (not forwarded). Asked of errors only: the success path pays nothing.
   */
  holdError?(msg: Buffer): boolean;
  /** The ReadyForQuery after a held error: what goes to the client instead (null: nothing, the exchange runs again). */
  releaseHeld?(rfq: Buffer): Buffer[] | null;
  /** An ErrorResponse during startup (authentication failed, database missing, ...). */
  startupError(fields: Record<string, string>): void;
  countUpstreamBytes(n: number): void;
  /** A chunk from the server went through (plaintext connections). */
  serverChunkDone(): void;
  serverDrained(): void;
  serverClosed(): void;
  serverError(err: Error): void;
  /** A bug of ours: the session ends, the process goes on. */
  internalError(err: unknown): void;
}

/** Relays what the server sends to the client. */
export class ServerConnection implements FrameHandler {
  readonly reader: FrameReader;
  readonly sock: Socket;
  /** A response handler saw a message (a view it may have kept). */
  private handlerRan = false;
  /** A FATAL/PANIC ErrorResponse went to the client: the server's closing needs no words of ours. */
  sawFatal = false;
  /** The session held back an ErrorResponse (holdError): the next ReadyForQuery is its to answer. */
  private held = false;
  private ready = false;
  private handler: ResponseHandler | undefined;
  /** Plaintext, read through a ReadBuffer: the native relay can take the socket. */
  readonly plain: boolean;
  /** Its file descriptor for writeFast, -1 when written through the stream only. */
  private readonly fd: number;
  /** Messages received so far (asynchronous ones aside), and the type and length of the one before the latest (SessionContext.rerun). */
  received = 0;
  prevCode = 0;
  prevLength = 0;
  private lastCode = 0;
  private lastLength = 0;
  /** A rerun's RowDescription the client already has from the first attempt: the next one is dropped. */
  dropRowDescription = false;

  constructor(
    private s: SessionLink,
    { sock, input }: OpenedUpstream,
    /** The pooler logged the connection in itself (server-login.ts): no startup phase to relay. */
    loggedIn = false,
  ) {
    this.sock = sock;
    this.ready = loggedIn;
    this.plain = input !== undefined;
    this.fd = this.plain ? socketFd(sock) : -1;
    // Server lengths are trusted up to the protocol's own limit.
    const reader = (this.reader = new FrameReader(this, 0x7fffffff));
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 60_000);
    if (input) {
      input.onChunk = (chunk: Buffer) => {
        this.s.countUpstreamBytes(chunk.length);
        try {
          reader.push(chunk);
        } catch (err) {
          this.s.internalError(err);
        }
        // The chunk is a view of the read buffer: keep the buffer if anything still points into it.
        if (this.s.clientBacklog > 0 || reader.isPaused || this.handlerRan) {
          input.retained = true;
          this.handlerRan = false;
        }
        this.s.serverChunkDone();
      };
    } else {
      sock.on('data', (chunk: Buffer) => {
        this.s.countUpstreamBytes(chunk.length);
        try {
          reader.push(chunk);
        } catch (err) {
          this.s.internalError(err);
        }
      });
    }
    sock.on('drain', () => this.s.serverDrained());
    sock.on('error', (err) => this.s.serverError(err));
    sock.on('close', () => this.s.serverClosed());
    sock.resume();
  }

  /** The pooler hands the connection to another session (or to itself while the connection is idle). */
  attach(link: SessionLink): void {
    this.s = link;
  }

  get link(): SessionLink {
    return this.s;
  }

  /** Writes to the server; false when its buffer is full (wait for serverDrained). */
  write(bytes: Buffer): boolean {
    return writeFast(this.sock, this.fd, bytes);
  }

  get writable(): boolean {
    return !this.sock.destroyed && this.sock.writable;
  }

  header(code: number, length: number): boolean {
    if (!this.ready) return true; // startup: every message is looked at
    // Asynchronous messages answer nothing: a settings replay's ParameterStatus is no part of a statement's answer.
    if (code !== Be.ParameterStatus && code !== Be.NotificationResponse) {
      this.received++;
      this.prevCode = this.lastCode;
      this.prevLength = this.lastLength;
      this.lastCode = code;
      this.lastLength = length;
    }
    const t = this.s.tracker;
    const h = t.received(code);
    if (h !== undefined) this.handler = h;
    return h !== undefined || t.localDue || code === Be.ReadyForQuery || code === Be.ParameterStatus || code === Be.ErrorResponse || code === Be.NoticeResponse ||
      (code === Be.RowDescription && this.dropRowDescription);
  }

  onMessage(msg: Buffer, code: number): Verdict {
    let verdict: Verdict = KEEP;
    if (this.handler !== undefined) {
      const h = this.handler;
      this.handler = undefined;
      verdict = this.runHandler(h, msg);
    }
    if (!this.ready) return this.startup(msg, code);
    if (code === Be.RowDescription && this.dropRowDescription && verdict === KEEP) {
      this.dropRowDescription = false;
      return DROP;
    }
    // Local answers due after this message follow it (taken before serverReady may hand the connection on).
    if (this.s.tracker.localDue) verdict = withLocal(verdict, msg, this.s.tracker.takeLocal());
    if (code === Be.ReadyForQuery) {
      this.dropRowDescription = false; // the rerun ended without one (an error before its first row)
      if (this.held) verdict = this.releaseHeld(verdict, msg);
      this.s.serverReady(readTxStatus(msg), false);
    } else if (code === Be.ParameterStatus) this.s.serverParam(...readParameterStatus(msg));
    else if (code === Be.ErrorResponse) {
      this.noteError(msg);
      if (verdict === KEEP && this.s.holdError?.(msg) === true) {
        this.held = true;
        verdict = DROP;
      }
    } else if (code === Be.NoticeResponse && verdict === KEEP && this.s.serverNotice?.(msg) === true) {
      // The interceptor's own (an in-band request): not part of what the client's statement answered.
      this.received--;
      this.lastCode = this.prevCode;
      this.lastLength = this.prevLength;
      this.prevCode = this.prevLength = 0;
      return DROP;
    }
    return verdict;
  }

  onBytes(bytes: Buffer): void {
    this.s.toClient(bytes);
  }

  onInvalid(code: number, length: number): void {
    this.s.log.warn({ type: typeName(code), length }, 'invalid message length from upstream server');
    this.sock.destroy();
  }

  private runHandler(h: ResponseHandler, msg: Buffer): Verdict {
    this.handlerRan = true;
    let out: Buffer | Buffer[] | null;
    try {
      out = h.onMessage(msg, this.s.tracker.request);
    } catch (err) {
      this.s.log.warn({ err }, 'response handler failed; message forwarded unchanged');
      out = msg;
    }
    this.s.tracker.finish();
    if (out === msg) return KEEP;
    if (out === null) return DROP;
    return out;
  }

  /** The held error's ReadyForQuery: the session says what the client gets for both. */
  private releaseHeld(verdict: Verdict, msg: Buffer): Verdict {
    this.held = false;
    const out = this.s.releaseHeld?.(msg) ?? null;
    if (out === null) return DROP;
    if (verdict === KEEP) return out;
    // A handler rewrote the ReadyForQuery: the error goes before whatever it made of it.
    const rest = verdict === DROP ? [] : Buffer.isBuffer(verdict) ? [verdict] : Array.isArray(verdict) ? verdict : [];
    return [out[0], ...rest];
  }

  private noteError(msg: Buffer): void {
    const sev = readErrorFields(msg).V;
    if (sev === 'FATAL' || sev === 'PANIC') this.sawFatal = true;
  }

  private startup(msg: Buffer, code: number): Verdict {
    switch (code) {
      case Be.Authentication:
        if (msg.length >= 9 && msg.readInt32BE(5) === AUTH_SASL) return withoutChannelBinding(msg);
        return KEEP;
      case Be.BackendKeyData: {
        const key = readBackendKeyData(msg);
        if (key === null) {
          this.s.log.warn('malformed BackendKeyData from upstream; cancel will not be available');
          return DROP;
        }
        return this.s.serverKey(key);
      }
      case Be.ParameterStatus:
        this.s.serverParam(...readParameterStatus(msg));
        return KEEP;
      case Be.ReadyForQuery:
        this.ready = true;
        this.s.serverReady(readTxStatus(msg), true);
        return KEEP;
      case Be.ErrorResponse:
        this.noteError(msg);
        this.s.startupError(readErrorFields(msg));
        return KEEP;
      default:
        return KEEP; // NoticeResponse, NegotiateProtocolVersion
    }
  }
}

function withLocal(verdict: Verdict, msg: Buffer, local: Buffer[]): Verdict {
  if (verdict === KEEP) return [msg, ...local];
  if (verdict === DROP) return local;
  if (Array.isArray(verdict)) return [...verdict, ...local];
  if (Buffer.isBuffer(verdict)) return [verdict, ...local];
  return verdict;
}

/**
 * AuthenticationSASL without the -PLUS mechanisms: channel binding ties SCRAM to the TLS connection the
 * client sees, which ends at the proxy, so the server would reject it.
 */
function withoutChannelBinding(msg: Buffer): Verdict {
  const names: string[] = [];
  let pos = 9;
  let dropped = false;
  while (pos < msg.length && msg[pos] !== 0) {
    const [name, next] = readCString(msg, pos);
    if (next < 0) return KEEP;
    if (name.endsWith('-PLUS')) dropped = true;
    else names.push(name);
    pos = next;
  }
  if (!dropped || names.length === 0) return KEEP;
  const body = Buffer.concat([...names.map((n) => Buffer.from(`${n}\0`)), Buffer.from([0])]);
  const out = Buffer.allocUnsafe(9 + body.length);
  out[0] = Be.Authentication;
  out.writeInt32BE(8 + body.length, 1);
  out.writeInt32BE(AUTH_SASL, 5);
  body.copy(out, 9);
  return out;
}
