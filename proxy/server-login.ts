// Pooling mode: the proxy logs into PostgreSQL itself, as a client, with the credentials the pooler has
// (a password, an md5 secret, or the SCRAM keys a client proved it holds). loginServer sends the startup
// packet, answers the server's authentication request, and reads until the first ReadyForQuery; then the
// connection, quiet and paused, goes to a ServerConnection.
import type { Socket } from 'node:net';
import {
  authMessage,
  constantTimeEqual,
  failed,
  hmac,
  keysFromSaltedPassword,
  md5Response,
  md5Secret,
  parseServerFinal,
  parseServerFirst,
  preparePassword,
  saltedPassword,
  scramNonce,
  sha256,
  xor,
  SCRAM_MECHANISM,
  SCRAM_PLUS_MECHANISM,
  type ScramKeys,
} from './auth-crypto.js';
import { DROP, FrameReader, type FrameHandler, type Verdict } from './framing.js';
import {
  passwordMessage,
  readAuthentication,
  readBackendKeyData,
  readErrorFields,
  readParameterStatus,
  saslInitialResponse,
  saslResponse,
  startupMessage,
  typeName,
  Be,
  SqlState,
} from './protocol.js';
import type { OpenedUpstream } from './upstream.js';

export interface LoginCredentials {
  user: string;
  password?: string;
  /** An md5 secret ("md5" + 32 hex) from auth_file: answers md5 authentication only. */
  md5Hash?: string;
  /** A client's SCRAM keys (ClientAuth's pass-through): answer SCRAM-SHA-256 against the same verifier. */
  scramKeys?: ScramKeys;
}

export interface LoggedIn {
  /** ParameterStatus values the server reported during startup. */
  params: Map<string, string>;
  /** BackendKeyData (null if the server sent none). */
  key: { pid: number; secret: Buffer } | null;
}

/** Why a login failed: the server's ErrorResponse (`fields`), or what went wrong on the way. */
export class LoginError extends Error {
  constructor(
    readonly sqlstate: string,
    message: string,
    /** The server's ErrorResponse fields by their one-letter code, when it sent one. */
    readonly fields?: Record<string, string>,
  ) {
    super(message);
    this.name = 'LoginError';
  }
}

/** Startup-phase messages are small; anything near this is not a PostgreSQL server talking. */
const MAX_LOGIN_MESSAGE = 1 << 20;

/**
 * Sends the StartupMessage (`startup`, with `user` from `cred` unless given) on an opened upstream
 * connection, answers the server's authentication (trust, cleartext, md5, SCRAM-SHA-256 with a password or
 * with scramKeys), and reads until the first ReadyForQuery. Rejects with LoginError on the server's error,
 * after `timeoutMs`, or when the connection fails; the socket is destroyed then. On success the socket is
 * paused with no listener of this module left on it.
 */
export function loginServer(up: OpenedUpstream, startup: Map<string, string>, cred: LoginCredentials, timeoutMs: number): Promise<LoggedIn> {
  return new Promise((resolve, reject) => new ServerLogin(up, cred, resolve, reject).start(startup, timeoutMs));
}

interface ScramClient {
  nonce: string;
  clientFirstBare: string;
  /** The ServerSignature the server must send, once the proof is sent. */
  expected: Buffer | null;
  verified: boolean;
}

class ServerLogin implements FrameHandler {
  private readonly sock: Socket;
  private readonly reader = new FrameReader(this, MAX_LOGIN_MESSAGE);
  private readonly params = new Map<string, string>();
  private key: LoggedIn['key'] = null;
  private authenticated = false;
  private scram: ScramClient | null = null;
  /** Messages are handled one after another (SCRAM's key derivation is asynchronous). */
  private chain: Promise<void> = Promise.resolve();
  /** ReadyForQuery has been read: the reading stops there. */
  private ready = false;
  private settled = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly onData = (chunk: Buffer) => this.chunk(chunk);
  private readonly onError = (err: Error) => this.fail(SqlState.ConnectionFailure, `server connection failed during login: ${err.message}`);
  // Whatever was read before the close is handled first: it may be the ErrorResponse that explains it.
  private readonly onClose = () => this.enqueue(() => this.fail(SqlState.ConnectionFailure, 'server closed the connection during login'));

  constructor(
    private readonly up: OpenedUpstream,
    private readonly cred: LoginCredentials,
    private readonly resolve: (v: LoggedIn) => void,
    private readonly reject: (e: LoginError) => void,
  ) {
    this.sock = up.sock;
  }

  start(startup: Map<string, string>, timeoutMs: number): void {
    const sock = this.sock;
    if (sock.destroyed) return this.fail(SqlState.ConnectionFailure, 'server connection closed before login');
    this.timer = setTimeout(() => this.fail(SqlState.ConnectionFailure, `server login timed out after ${timeoutMs} ms`), timeoutMs);
    sock.on('error', this.onError);
    sock.on('close', this.onClose);
    if (this.up.input) this.up.input.onChunk = this.onData;
    else sock.on('data', this.onData);
    const params = new Map(startup);
    if (!params.has('user')) params.set('user', this.cred.user);
    sock.write(startupMessage(params));
    sock.resume();
  }

  // ---- reading -----------------------------------------------------------------------------------------

  private chunk(chunk: Buffer): void {
    if (this.settled) return;
    this.reader.push(chunk);
    if (this.ready && !this.reader.atBoundary) this.fail(SqlState.ProtocolViolation, 'server sent data after ReadyForQuery during login');
  }

  header(): boolean {
    return true;
  }

  onMessage(msg: Buffer, code: number): Verdict {
    if (this.ready) {
      this.fail(SqlState.ProtocolViolation, `server sent ${typeName(code)} after ReadyForQuery during login`);
      return DROP;
    }
    if (code === Be.ReadyForQuery) {
      // Nothing more is to be read here: what follows belongs to the ServerConnection.
      this.ready = true;
      this.sock.pause();
    }
    const copy = Buffer.from(msg); // a view into a read buffer that the next read reuses
    this.enqueue(() => this.handle(copy, code));
    return DROP;
  }

  onBytes(): void {
    // header() asks for every message whole: nothing passes through.
  }

  onInvalid(code: number, length: number): void {
    this.fail(SqlState.ProtocolViolation, `invalid message from server during login (type ${typeName(code)}, length ${length})`);
  }

  private enqueue(step: () => void | Promise<void>): void {
    this.chain = this.chain.then(step).catch((err: unknown) => this.fail(SqlState.InternalError, `server login failed: ${String(err)}`));
  }

  private async handle(msg: Buffer, code: number): Promise<void> {
    if (this.settled) return;
    switch (code) {
      case Be.Authentication:
        return this.authenticate(msg);
      case Be.ErrorResponse: {
        const f = readErrorFields(msg);
        return this.fail(f.C ?? SqlState.ProtocolViolation, f.M ?? 'server error during login', f);
      }
      case Be.ParameterStatus:
        this.params.set(...readParameterStatus(msg));
        return;
      case Be.BackendKeyData:
        this.key = readBackendKeyData(msg);
        return;
      case Be.NoticeResponse:
      case Be.NegotiateProtocolVersion:
        return;
      case Be.ReadyForQuery:
        if (!this.authenticated) return this.fail(SqlState.ProtocolViolation, 'server sent ReadyForQuery before authentication completed');
        return this.succeed();
      default:
        return this.fail(SqlState.ProtocolViolation, `unexpected message ${typeName(code)} from server during login`);
    }
  }

  // ---- authentication ----------------------------------------------------------------------------------

  private async authenticate(msg: Buffer): Promise<void> {
    const req = readAuthentication(msg);
    if (req === null) return this.fail(SqlState.ProtocolViolation, 'malformed authentication request from server');
    if (this.authenticated) return this.fail(SqlState.ProtocolViolation, 'server sent an authentication request after AuthenticationOk');
    const c = this.cred;
    switch (req.kind) {
      case 'ok':
        // A server that skips SCRAM's final message would go unverified.
        if (this.scram !== null && !this.scram.verified)
          return this.fail(SqlState.ProtocolViolation, 'server sent AuthenticationOk before the SCRAM exchange completed');
        this.authenticated = true;
        return;
      case 'cleartext':
        if (c.password === undefined) return this.cannot('a cleartext password');
        this.sock.write(passwordMessage(c.password));
        return;
      case 'md5': {
        const secret = c.password !== undefined ? md5Secret(c.password, c.user) : c.md5Hash;
        if (secret === undefined) return this.cannot('an md5 password');
        this.sock.write(passwordMessage(md5Response(secret, req.salt)));
        return;
      }
      case 'sasl':
        return this.scramBegin(req.mechanisms);
      case 'sasl-continue':
        return this.scramContinue(req.data);
      case 'sasl-final':
        return this.scramFinal(req.data);
      case 'other':
        return this.fail(
          SqlState.FeatureNotSupported,
          `server login failed: unsupported authentication method requested by the server (code ${req.code})`,
        );
    }
  }

  /** The server asks for something these credentials cannot give: pgBouncer's "wrong password type", and why. */
  private cannot(what: string): void {
    const have = this.cred.scramKeys ? 'only SCRAM keys' : this.cred.md5Hash !== undefined ? 'only an md5 secret' : 'no usable password';
    const message = 'server login failed: wrong password type';
    this.fail(SqlState.ProtocolViolation, message, {
      C: SqlState.ProtocolViolation,
      M: message,
      D: `The server asks for ${what} for user "${this.cred.user}", and the pooler has ${have} (a SCRAM secret serves only after a client logged in by SCRAM).`,
    });
  }

  private scramBegin(mechanisms: string[]): void {
    if (this.scram !== null) return this.fail(SqlState.ProtocolViolation, 'server sent AuthenticationSASL twice');
    if (!mechanisms.includes(SCRAM_MECHANISM)) {
      if (mechanisms.includes(SCRAM_PLUS_MECHANISM)) {
        return this.fail(
          SqlState.FeatureNotSupported,
          'server login failed: the server offers only SCRAM-SHA-256-PLUS (channel binding), which the pooler does not do',
        );
      }
      return this.fail(
        SqlState.FeatureNotSupported,
        `server login failed: none of the server's SASL authentication mechanisms are supported (${mechanisms.join(', ')})`,
      );
    }
    if (this.cred.password === undefined && this.cred.scramKeys === undefined) return this.cannot('SCRAM-SHA-256 authentication');
    const nonce = scramNonce();
    // "n": no channel binding (the pooler never binds, even over TLS); the user name is the startup packet's.
    const clientFirstBare = `n=,r=${nonce}`;
    this.scram = { nonce, clientFirstBare, expected: null, verified: false };
    this.sock.write(saslInitialResponse(SCRAM_MECHANISM, Buffer.from(`n,,${clientFirstBare}`, 'latin1')));
  }

  private async scramContinue(data: Buffer): Promise<void> {
    const x = this.scram;
    if (x === null || x.expected !== null) return this.fail(SqlState.ProtocolViolation, 'unexpected AuthenticationSASLContinue from server');
    const first = parseServerFirst(data, x.nonce);
    if (failed(first)) return this.fail(SqlState.ProtocolViolation, `malformed SCRAM message from server: ${first.error}`);
    let keys: ScramKeys;
    if (this.cred.scramKeys) keys = this.cred.scramKeys;
    else keys = keysFromSaltedPassword(await saltedPassword(preparePassword(this.cred.password!), first.salt, first.iterations));
    if (this.settled) return;
    const withoutProof = `c=biws,r=${first.nonce}`;
    const signed = authMessage(x.clientFirstBare, first.text, withoutProof);
    const proof = xor(keys.clientKey, hmac(sha256(keys.clientKey), signed));
    x.expected = hmac(keys.serverKey, signed);
    this.sock.write(saslResponse(Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'latin1')));
  }

  private scramFinal(data: Buffer): void {
    const x = this.scram;
    if (x === null || x.expected === null || x.verified)
      return this.fail(SqlState.ProtocolViolation, 'unexpected AuthenticationSASLFinal from server');
    const final = parseServerFinal(data);
    if (failed(final)) return this.fail(SqlState.ProtocolViolation, `malformed SCRAM message from server: ${final.error}`);
    // The server proves it knows the verifier too; a server that cannot is not the one configured.
    if (!constantTimeEqual(final.signature, x.expected))
      return this.fail(SqlState.ProtocolViolation, 'server login failed: invalid server signature');
    x.verified = true;
  }

  // ---- the end -----------------------------------------------------------------------------------------

  private detach(): void {
    clearTimeout(this.timer);
    this.reader.stop();
    const sock = this.sock;
    if (this.up.input) this.up.input.onChunk = () => {};
    else sock.removeListener('data', this.onData);
    sock.removeListener('error', this.onError);
    sock.removeListener('close', this.onClose);
    sock.pause();
  }

  private succeed(): void {
    if (this.settled) return;
    this.settled = true;
    this.detach();
    this.resolve({ params: this.params, key: this.key });
  }

  private fail(sqlstate: string, message: string, fields?: Record<string, string>): void {
    if (this.settled) return;
    this.settled = true;
    this.detach();
    this.sock.destroy();
    this.reject(new LoginError(sqlstate, message, fields));
  }
}
