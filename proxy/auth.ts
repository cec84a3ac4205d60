// Pooling mode: the proxy authenticates clients itself, as pgBouncer 1.24 does (its src/client.c and
// src/scram.c): the method from auth_type (or the hba rule), the secret from auth_file or auth_query.
// ClientAuth is the exchange alone, without I/O: the session sends what it returns and hands it each 'p'
// message, then sends AuthenticationOk on success or the FATAL ErrorResponse on failure.
//
// As pgBouncer: md5 with a SCRAM secret runs SCRAM instead; SCRAM with an md5 secret fails; an unknown user
// goes through the same exchange (md5 with a random salt, SCRAM with a salt fixed per user name) and fails
// only at its end, so answers do not tell which users exist. Failures carry pgBouncer's words and its
// SQLSTATE, 08P01, for all of them.
import { randomBytes } from 'node:crypto';
import type { AuthType, Secret } from '../config/pgbouncer.js';
import {
  constantTimeEqual,
  authMessage,
  failed,
  hmac,
  isMd5Secret,
  keysFromSaltedPassword,
  md5Response,
  md5Secret,
  parseClientFinal,
  parseClientFirst,
  preparePassword,
  saltedPasswordSync,
  scramNonce,
  sha256,
  xor,
  SCRAM_DEFAULT_ITERATIONS,
  SCRAM_KEY_LEN,
  SCRAM_MECHANISM,
  SCRAM_SALT_LEN,
  type ScramKeys,
} from './auth-crypto.js';
import {
  authentication,
  authenticationMD5Password,
  authenticationSASL,
  authenticationSASLContinue,
  authenticationSASLFinal,
  readPasswordMessage,
  readSASLInitialResponse,
  readSASLResponse,
  typeName,
  AUTH_CLEARTEXT_PASSWORD,
  Fe,
  SqlState,
  type ErrorFields,
} from './protocol.js';

export type AuthStep =
  /** Send `send` to the client and wait for its next PasswordMessage / SASL message ('p'). */
  | { done: false; send: Buffer }
  /**
   * Authenticated. `send` (AuthenticationSASLFinal) goes to the client before the caller's AuthenticationOk.
   * `scramKeys`: the client's ClientKey and ServerKey when it authenticated by SCRAM against a stored SCRAM
   * verifier, for logging into the server in its name (pgBouncer's SCRAM pass-through).
   */
  | { done: true; ok: true; send?: Buffer; scramKeys?: ScramKeys }
  /** Refused: the caller sends `error` as a FATAL ErrorResponse and closes. */
  | { done: true; ok: false; error: ErrorFields };

/** pgBouncer's client methods; peer comes from an hba rule only. */
export type ClientAuthMethod = Extract<AuthType, 'trust' | 'any' | 'plain' | 'md5' | 'scram-sha-256' | 'cert'> | 'peer';

export interface ClientAuthOptions {
  method: ClientAuthMethod;
  /** The user the client logs in as (its md5 secret is salted with the name). */
  user: string;
  /** The user's secret; null for a user the pooler does not know, or one it knows without a usable secret. */
  secret: Secret | null;
  /**
   * The user exists although `secret` is null: auth_query found it with a NULL password (pgBouncer stores the
   * impossible secret "md5" then). trust lets such a user in; every password method still fails for it.
   * Default: known when there is a secret.
   */
  known?: boolean;
}

/** pgBouncer's words for what it refuses (all sent with SQLSTATE 08P01). */
export const AUTH_FAILURE = {
  password: 'password authentication failed',
  sasl: 'SASL authentication failed',
  trust: '"trust" authentication failed',
  emptyPassword: 'empty password returned by client',
  mechanism: 'client selected an invalid SASL authentication mechanism',
  cert: 'certificate authentication failed',
  peer: 'peer authentication failed',
} as const;

/** What the SCRAM exchange checks against: a stored verifier, one made from a cleartext secret, or a decoy. */
interface Verifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
  /** A decoy for an unknown user (or an unusable secret): the exchange runs, the proof never passes. */
  decoy: boolean;
  /** Hand the keys on: only a stored verifier's are worth anything to the server. */
  passThrough: boolean;
}

interface ScramExchange {
  verifier: Verifier;
  clientFirstBare: string;
  cbindFlag: 'n' | 'y';
  nonce: string;
  serverFirst: string;
}

/** Salts of decoy verifiers: stable per user name within this process, unrelated to any real one. */
const DECOY_KEY = randomBytes(32);

export class ClientAuth {
  private readonly method: 'trust' | 'any' | 'plain' | 'md5' | 'scram' | 'cert' | 'peer';
  private readonly user: string;
  /** Whether the user is known at all (trust needs no more). */
  private readonly known: boolean;
  /** The secret passwords are checked against: none for an unknown user or an empty cleartext password. */
  private readonly secret: Secret | null;
  private state: 'new' | 'password' | 'md5' | 'sasl-initial' | 'sasl-response' | 'done' = 'new';
  private md5Salt: Buffer | null = null;
  private scram: ScramExchange | null = null;
  /**
   * cert: the client's verified TLS certificate names the user (or the hba rule's ident map lets that name in);
   * peer: the OS user at the other end of the Unix socket does. Whoever knows the client's socket sets it
   * before begin(). The user must be known as well, as pgBouncer's.
   */
  certified = false;

  constructor(opts: ClientAuthOptions) {
    this.user = opts.user;
    this.known = opts.secret !== null || opts.known === true;
    // An empty cleartext secret is no secret: pgBouncer refuses it for plain and md5; so do we for SCRAM.
    this.secret = opts.secret?.kind === 'plain' && opts.secret.password === '' ? null : opts.secret;
    const m = opts.method;
    if (m === 'scram-sha-256' || (m === 'md5' && this.secret?.kind === 'scram')) this.method = 'scram';
    else this.method = m;
  }

  begin(): AuthStep {
    if (this.state !== 'new') return this.violation('authentication already begun');
    switch (this.method) {
      case 'any':
        return this.finish({ done: true, ok: true });
      case 'cert':
      case 'peer':
        return this.finish(this.certified && this.known ? { done: true, ok: true } : refuse(AUTH_FAILURE[this.method]));
      case 'trust':
        return this.finish(!this.known ? refuse(AUTH_FAILURE.trust) : { done: true, ok: true });
      case 'plain':
        this.state = 'password';
        return { done: false, send: authentication(AUTH_CLEARTEXT_PASSWORD) };
      case 'md5':
        this.state = 'md5';
        this.md5Salt = randomBytes(4);
        return { done: false, send: authenticationMD5Password(this.md5Salt) };
      case 'scram':
        this.state = 'sasl-initial';
        return { done: false, send: authenticationSASL([SCRAM_MECHANISM]) };
    }
  }

  /** A 'p' message (whole: type byte, length, body) from the client. */
  respond(msg: Buffer): AuthStep {
    if (msg.length < 5 || msg[0] !== Fe.Password) {
      return this.violation(`expected a password response ('p'), got ${msg.length === 0 ? 'nothing' : `message type ${typeName(msg[0])}`}`);
    }
    switch (this.state) {
      case 'password':
        return this.finish(this.cleartext(msg));
      case 'md5':
        return this.finish(this.md5(msg));
      case 'sasl-initial':
        return this.scramFirst(msg);
      case 'sasl-response':
        return this.finish(this.scramFinal(msg));
      case 'new':
      case 'done':
        return this.violation('unexpected password response: no authentication request is pending');
    }
  }

  private finish(step: AuthStep): AuthStep {
    this.state = 'done';
    this.scram = null;
    return step;
  }

  private violation(detail: string): AuthStep {
    return this.finish(malformed('invalid authentication message', detail));
  }

  // ---- plain and md5 -----------------------------------------------------------------------------------

  private readPassword(msg: Buffer): Buffer | AuthStep {
    const password = readPasswordMessage(msg);
    if (password === null) return malformed('invalid password packet', 'the password message is not one NUL-terminated string');
    if (password.length === 0) return refuse(AUTH_FAILURE.emptyPassword);
    return password;
  }

  private cleartext(msg: Buffer): AuthStep {
    const password = this.readPassword(msg);
    if (!Buffer.isBuffer(password)) return password;
    const s = this.secret;
    let ok = false;
    if (s?.kind === 'plain') ok = constantTimeEqual(password, s.password);
    else if (s?.kind === 'md5') ok = constantTimeEqual(md5Secret(password, this.user), s.hash);
    else if (s?.kind === 'scram') {
      // As PostgreSQL's scram_verify_plain_password: the ServerKey the password yields under the verifier's salt.
      const { serverKey } = keysFromSaltedPassword(saltedPasswordSync(preparePassword(password), s.salt, s.iterations));
      ok = constantTimeEqual(serverKey, s.serverKey);
    }
    return ok ? { done: true, ok: true } : refuse(AUTH_FAILURE.password);
  }

  private md5(msg: Buffer): AuthStep {
    const response = this.readPassword(msg);
    if (!Buffer.isBuffer(response)) return response;
    const s = this.secret;
    let stored: string | null = null;
    if (s?.kind === 'plain') stored = md5Secret(s.password, this.user);
    else if (s?.kind === 'md5') stored = s.hash;
    // Unknown user or a secret md5 cannot use: the expected answer is one no client can give.
    const expected = stored !== null && isMd5Secret(stored) ? md5Response(stored, this.md5Salt!) : randomBytes(35);
    const ok = constantTimeEqual(response, expected) && stored !== null;
    return ok ? { done: true, ok: true } : refuse(AUTH_FAILURE.password);
  }

  // ---- SCRAM-SHA-256 -----------------------------------------------------------------------------------

  private scramFirst(msg: Buffer): AuthStep {
    const initial = readSASLInitialResponse(msg);
    if (initial === null) return this.finish(malformed(AUTH_FAILURE.sasl, 'malformed SASLInitialResponse message'));
    if (initial.mechanism !== SCRAM_MECHANISM) return this.finish(refuse(AUTH_FAILURE.mechanism));
    if (initial.data === null) return this.finish(malformed(AUTH_FAILURE.sasl, 'SASLInitialResponse without the client-first-message'));
    const first = parseClientFirst(initial.data);
    if (failed(first)) return this.finish(malformed(AUTH_FAILURE.sasl, `malformed SCRAM message: ${first.error}`));
    // pgBouncer fails here, at the first message, for a user whose secret is an md5 hash.
    if (this.secret?.kind === 'md5') return this.finish(refuse(AUTH_FAILURE.sasl));
    const verifier = this.verifier();
    const nonce = first.nonce + scramNonce();
    const serverFirst = `r=${nonce},s=${verifier.salt.toString('base64')},i=${verifier.iterations}`;
    this.scram = { verifier, clientFirstBare: first.bare, cbindFlag: first.cbindFlag, nonce, serverFirst };
    this.state = 'sasl-response';
    return { done: false, send: authenticationSASLContinue(Buffer.from(serverFirst, 'latin1')) };
  }

  private verifier(): Verifier {
    const s = this.secret;
    if (s?.kind === 'scram') {
      return { iterations: s.iterations, salt: s.salt, storedKey: s.storedKey, serverKey: s.serverKey, decoy: false, passThrough: true };
    }
    if (s?.kind === 'plain') {
      // A verifier made on the fly, with a fresh salt, as pgBouncer does: its keys open nothing elsewhere.
      const salt = randomBytes(SCRAM_SALT_LEN);
      const keys = keysFromSaltedPassword(saltedPasswordSync(preparePassword(s.password), salt, SCRAM_DEFAULT_ITERATIONS));
      return { iterations: SCRAM_DEFAULT_ITERATIONS, salt, storedKey: keys.storedKey, serverKey: keys.serverKey, decoy: false, passThrough: false };
    }
    const salt = hmac(DECOY_KEY, this.user).subarray(0, SCRAM_SALT_LEN);
    const keys = randomBytes(2 * SCRAM_KEY_LEN);
    return {
      iterations: SCRAM_DEFAULT_ITERATIONS,
      salt,
      storedKey: keys.subarray(0, SCRAM_KEY_LEN),
      serverKey: keys.subarray(SCRAM_KEY_LEN),
      decoy: true,
      passThrough: false,
    };
  }

  private scramFinal(msg: Buffer): AuthStep {
    const x = this.scram!;
    const data = readSASLResponse(msg);
    if (data === null) return malformed(AUTH_FAILURE.sasl, 'malformed SASLResponse message');
    const final = parseClientFinal(data);
    if (failed(final)) return malformed(AUTH_FAILURE.sasl, `malformed SCRAM message: ${final.error}`);
    // No channel binding is offered, so the client must repeat its gs2 header: "n,," or "y,," in base64.
    const expectedBinding = x.cbindFlag === 'n' ? 'biws' : 'eSws';
    if (final.channelBinding !== expectedBinding)
      return malformed(AUTH_FAILURE.sasl, 'unexpected SCRAM channel-binding attribute in client-final-message');
    if (!constantTimeEqual(final.nonce, x.nonce)) return malformed(AUTH_FAILURE.sasl, 'invalid SCRAM response (nonce does not match)');
    const v = x.verifier;
    const signed = authMessage(x.clientFirstBare, x.serverFirst, final.withoutProof);
    // The proof is ClientKey XOR HMAC(StoredKey, AuthMessage): undo the XOR, and the key must hash to StoredKey.
    const clientKey = xor(final.proof, hmac(v.storedKey, signed));
    if (!constantTimeEqual(sha256(clientKey), v.storedKey) || v.decoy) return refuse(AUTH_FAILURE.sasl);
    const send = authenticationSASLFinal(Buffer.from(`v=${hmac(v.serverKey, signed).toString('base64')}`, 'latin1'));
    return v.passThrough
      ? { done: true, ok: true, send, scramKeys: { clientKey, serverKey: Buffer.from(v.serverKey) } }
      : { done: true, ok: true, send };
  }
}

function refuse(message: string): AuthStep {
  return { done: true, ok: false, error: { severity: 'FATAL', code: SqlState.ProtocolViolation, message } };
}

function malformed(message: string, detail: string): AuthStep {
  return { done: true, ok: false, error: { severity: 'FATAL', code: SqlState.ProtocolViolation, message, detail } };
}
