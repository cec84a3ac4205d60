// The password cryptography of PostgreSQL's authentication methods, for both sides of the pooler (auth.ts
// toward clients, server-login.ts toward servers): md5 secrets and responses, SCRAM-SHA-256 keys, proofs
// and signatures (RFC 5802, RFC 7677), and the parsing of SCRAM's four messages. No I/O.
import { createHash, createHmac, pbkdf2, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { saslprep } from './saslprep.js';

export const SCRAM_MECHANISM = 'SCRAM-SHA-256';
export const SCRAM_PLUS_MECHANISM = 'SCRAM-SHA-256-PLUS';
export const SCRAM_KEY_LEN = 32;
/** What PostgreSQL (and pgBouncer, for verifiers it makes on the fly) uses. */
export const SCRAM_DEFAULT_ITERATIONS = 4096;
export const SCRAM_SALT_LEN = 16;
const SCRAM_RAW_NONCE_LEN = 18;

export interface ScramKeys {
  clientKey: Buffer;
  serverKey: Buffer;
}

export function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

export function hmac(key: Buffer, data: Buffer | string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

export function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] ^ b[i];
  return out;
}

/** Equality in time independent of the contents and of where they differ (the lengths are hashed away too). */
export function constantTimeEqual(a: Buffer | string, b: Buffer | string): boolean {
  return timingSafeEqual(sha256(Buffer.from(a)), sha256(Buffer.from(b)));
}

// ---- md5 --------------------------------------------------------------------------------------------

function md5Hex(...parts: (Buffer | string)[]): string {
  const h = createHash('md5');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

/** "md5" + md5(password + user): the md5 secret of pg_authid and auth_file. */
export function md5Secret(password: Buffer | string, user: string): string {
  return 'md5' + md5Hex(password, user);
}

/** "md5" + md5(hex digits of the secret + salt): the answer to AuthenticationMD5Password. */
export function md5Response(secret: string, salt: Buffer): string {
  return 'md5' + md5Hex(secret.slice(3), salt);
}

/** True for "md5" followed by 32 lower-case hex digits, the only md5 secret PostgreSQL and pgBouncer recognise. */
export function isMd5Secret(s: string): boolean {
  if (s.length !== 35 || !s.startsWith('md5')) return false;
  for (let i = 3; i < 35; i++) {
    const c = s.charCodeAt(i);
    if (!((c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66))) return false;
  }
  return true;
}

// ---- SCRAM keys -------------------------------------------------------------------------------------

/** The password as SCRAM hashes it: SASLprep'd, or as it is when SASLprep refuses it (as PostgreSQL does). */
export function preparePassword(password: Buffer | string): Buffer {
  const raw = Buffer.from(password);
  return saslprep(raw) ?? raw;
}

export function saltedPasswordSync(prepared: Buffer, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(prepared, salt, iterations, SCRAM_KEY_LEN, 'sha256');
}

/** SaltedPassword on the thread pool: a server may ask for many iterations. */
export function saltedPassword(prepared: Buffer, salt: Buffer, iterations: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    pbkdf2(prepared, salt, iterations, SCRAM_KEY_LEN, 'sha256', (err, key) => (err ? reject(err) : resolve(key))),
  );
}

export function keysFromSaltedPassword(salted: Buffer): { clientKey: Buffer; storedKey: Buffer; serverKey: Buffer } {
  const clientKey = hmac(salted, 'Client Key');
  return { clientKey, storedKey: sha256(clientKey), serverKey: hmac(salted, 'Server Key') };
}

/** A nonce of 18 random bytes in base64 (printable, no comma), as PostgreSQL and pgBouncer make them. */
export function scramNonce(): string {
  return randomBytes(SCRAM_RAW_NONCE_LEN).toString('base64');
}

/** AuthMessage (RFC 5802 section 3): what both proofs sign. */
export function authMessage(clientFirstBare: string, serverFirst: string, clientFinalWithoutProof: string): Buffer {
  return Buffer.from(`${clientFirstBare},${serverFirst},${clientFinalWithoutProof}`, 'latin1');
}

// ---- SCRAM messages ---------------------------------------------------------------------------------
// Messages are handled as latin1 strings: one character per byte, so what is signed is exactly what was sent.

export type Parsed<T> = T | { error: string };

export function failed<T extends object>(p: Parsed<T>): p is { error: string } {
  return 'error' in p;
}

/** Reads SCRAM attributes ("a=value", comma-separated) from `text` in order. */
class Attributes {
  pos = 0;
  constructor(readonly text: string) {}

  get done(): boolean {
    return this.pos >= this.text.length;
  }

  /** The next attribute, which must be `name`; a string describing the problem otherwise. */
  expect(name: string): { value: string } | { error: string } {
    const next = this.any();
    if (failed(next)) return next;
    if (next.name !== name) return { error: `attribute "${name}" expected, found "${next.name}"` };
    return { value: next.value };
  }

  any(): { name: string; value: string } | { error: string } {
    if (this.done) return { error: 'message ends before an expected attribute' };
    const name = this.text[this.pos];
    const c = name.charCodeAt(0);
    if (!((c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a))) return { error: `attribute expected, found ${printable(name)}` };
    if (this.text[this.pos + 1] !== '=') return { error: `"=" expected after attribute "${name}"` };
    let end = this.text.indexOf(',', this.pos + 2);
    if (end < 0) end = this.text.length;
    const value = this.text.slice(this.pos + 2, end);
    this.pos = end + 1;
    return { name, value };
  }
}

function printable(ch: string): string {
  const c = ch.charCodeAt(0);
  return c >= 0x21 && c <= 0x7e ? `"${ch}"` : `0x${c.toString(16).padStart(2, '0')}`;
}

/** RFC 5802 "printable": ASCII 0x21-0x7E but the comma. */
function isPrintable(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x2c) return false;
  }
  return s.length > 0;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function base64(value: string): Buffer | null {
  return BASE64.test(value) ? Buffer.from(value, 'base64') : null;
}

function textOf(data: Buffer): Parsed<{ text: string }> {
  if (data.length === 0) return { error: 'the message is empty' };
  if (data.includes(0)) return { error: 'the message contains a NUL byte' };
  return { text: data.toString('latin1') };
}

export interface ClientFirst {
  /** gs2 channel-binding flag: "n" (client cannot bind) or "y" (it could, but the server offered no binding). */
  cbindFlag: 'n' | 'y';
  bare: string;
  nonce: string;
}

/** client-first-message (the data of SASLInitialResponse). */
export function parseClientFirst(data: Buffer): Parsed<ClientFirst> {
  const t = textOf(data);
  if (failed(t)) return t;
  const text = t.text;
  const flag = text[0];
  if (flag === 'p') return { error: 'the client requires channel binding, which is not offered' };
  if (flag !== 'n' && flag !== 'y') return { error: `unexpected channel-binding flag ${printable(flag)}` };
  if (text[1] !== ',') return { error: `comma expected after the channel-binding flag, found ${printable(text[1] ?? '\0')}` };
  if (text[2] === 'a') return { error: 'the client uses an authorization identity, which is not supported' };
  if (text[2] !== ',') return { error: `comma expected after the gs2 header, found ${printable(text[2] ?? '\0')}` };
  const bare = text.slice(3);
  if (bare[0] === 'm') return { error: 'the client requires an unsupported SCRAM extension' };
  const a = new Attributes(bare);
  const user = a.expect('n'); // PostgreSQL takes the user from the startup packet, not from here
  if (failed(user)) return user;
  const nonce = a.expect('r');
  if (failed(nonce)) return nonce;
  if (!isPrintable(nonce.value)) return { error: 'the client nonce has characters that are not printable' };
  while (!a.done) {
    const ext = a.any();
    if (failed(ext)) return ext;
  }
  return { cbindFlag: flag, bare, nonce: nonce.value };
}

export interface ClientFinal {
  channelBinding: string;
  nonce: string;
  proof: Buffer;
  withoutProof: string;
}

/** client-final-message (the data of SASLResponse). */
export function parseClientFinal(data: Buffer): Parsed<ClientFinal> {
  const t = textOf(data);
  if (failed(t)) return t;
  const a = new Attributes(t.text);
  const cb = a.expect('c');
  if (failed(cb)) return cb;
  const nonce = a.expect('r');
  if (failed(nonce)) return nonce;
  for (;;) {
    const start = a.pos;
    const attr = a.any();
    if (failed(attr)) return attr.error.startsWith('message ends') ? { error: 'the proof is missing' } : attr;
    if (attr.name !== 'p') continue; // extensions, ignored
    const proof = base64(attr.value);
    if (proof === null || proof.length !== SCRAM_KEY_LEN) return { error: 'the proof is not 32 bytes in base64' };
    if (!a.done || t.text.endsWith(',')) return { error: 'garbage after the proof' };
    return { channelBinding: cb.value, nonce: nonce.value, proof, withoutProof: t.text.slice(0, start - 1) };
  }
}

export interface ServerFirst {
  nonce: string;
  salt: Buffer;
  iterations: number;
  text: string;
}

/** server-first-message (the data of AuthenticationSASLContinue), checked against the client's nonce. */
export function parseServerFirst(data: Buffer, clientNonce: string): Parsed<ServerFirst> {
  const t = textOf(data);
  if (failed(t)) return t;
  if (t.text[0] === 'm') return { error: 'the server requires an unsupported SCRAM extension' };
  const a = new Attributes(t.text);
  const nonce = a.expect('r');
  if (failed(nonce)) return nonce;
  if (!nonce.value.startsWith(clientNonce) || nonce.value.length <= clientNonce.length || !isPrintable(nonce.value)) {
    return { error: 'the server nonce does not extend the client nonce' };
  }
  const salt = a.expect('s');
  if (failed(salt)) return salt;
  const saltBytes = base64(salt.value);
  if (saltBytes === null || saltBytes.length === 0) return { error: 'the salt is not base64' };
  const iter = a.expect('i');
  if (failed(iter)) return iter;
  const iterations = Number(iter.value);
  if (!/^[0-9]+$/.test(iter.value) || !Number.isSafeInteger(iterations) || iterations < 1) {
    return { error: `invalid iteration count ${JSON.stringify(iter.value)}` };
  }
  if (!a.done) return { error: 'garbage after the iteration count' };
  return { nonce: nonce.value, salt: saltBytes, iterations, text: t.text };
}

/** server-final-message (the data of AuthenticationSASLFinal): the server's signature, or the error it reports. */
export function parseServerFinal(data: Buffer): Parsed<{ signature: Buffer }> {
  const t = textOf(data);
  if (failed(t)) return t;
  const a = new Attributes(t.text);
  const first = a.any();
  if (failed(first)) return first;
  if (first.name === 'e') return { error: `the server reports: ${first.value}` };
  if (first.name !== 'v') return { error: `attribute "v" expected, found "${first.name}"` };
  const signature = base64(first.value);
  if (signature === null || signature.length !== SCRAM_KEY_LEN) return { error: 'the server signature is not 32 bytes in base64' };
  return { signature };
}
