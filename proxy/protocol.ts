// PostgreSQL v3 wire protocol: message type bytes, the few readers the proxy needs, and serialisers for
// the messages the proxy itself sends. Messages are plain Buffers (type byte, int32 length, body); the
// proxy forwards them as bytes and decodes only what it must look at.

/** Frontend (client → server) message type bytes. */
export const Fe = {
  Bind: 0x42, // B
  Close: 0x43, // C
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  Describe: 0x44, // D
  Execute: 0x45, // E
  Flush: 0x48, // H
  FunctionCall: 0x46, // F
  Parse: 0x50, // P
  Password: 0x70, // p (also SASLInitialResponse, SASLResponse, GSSResponse)
  Query: 0x51, // Q
  Sync: 0x53, // S
  Terminate: 0x58, // X
} as const;

/** Backend (server → client) message type bytes. */
export const Be = {
  Authentication: 0x52, // R
  BackendKeyData: 0x4b, // K
  BindComplete: 0x32, // 2
  CloseComplete: 0x33, // 3
  CommandComplete: 0x43, // C
  CopyBothResponse: 0x57, // W
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  DataRow: 0x44, // D
  EmptyQueryResponse: 0x49, // I
  ErrorResponse: 0x45, // E
  FunctionCallResponse: 0x56, // V
  NegotiateProtocolVersion: 0x76, // v
  NoData: 0x6e, // n
  NoticeResponse: 0x4e, // N
  NotificationResponse: 0x41, // A
  ParameterDescription: 0x74, // t
  ParameterStatus: 0x53, // S
  ParseComplete: 0x31, // 1
  PortalSuspended: 0x73, // s
  ReadyForQuery: 0x5a, // Z
  RowDescription: 0x54, // T
} as const;

/** Request codes of startup-phase packets (which have no type byte). */
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
/** The server's own cap on startup packets; anything longer is not a real client. */
export const MAX_STARTUP_PACKET = 10_000;
/** Sub-codes of an Authentication ('R') message. */
export const AUTH_OK = 0;
export const AUTH_CLEARTEXT_PASSWORD = 3;
export const AUTH_SASL = 10;
/** Protocol 3.0 as a startup packet and NegotiateProtocolVersion spell it (major << 16 | minor). */
export const PROTOCOL_3_0 = 196608;

/** SQLSTATEs the proxy reports itself. */
export const SqlState = {
  ProtocolViolation: '08P01',
  ConnectionFailure: '08006',
  ProgramLimitExceeded: '54000',
  FeatureNotSupported: '0A000',
  AdminShutdown: '57P01',
  InvalidAuthorizationSpecification: '28000',
  InternalError: 'XX000',
  InvalidCursorName: '34000',
  DuplicateCursor: '42P03',
  InvalidParameterValue: '22023',
  TooManyConnections: '53300',
  QueryCanceled: '57014',
  IdleInTransactionTimeout: '25P03',
  IdleSessionTimeout: '57P05',
  InvalidStatementName: '26000',
  DuplicatePreparedStatement: '42P05',
  OutOfMemory: '53200',
} as const;

export type TxStatus = 'I' | 'T' | 'E';

export interface ErrorFields {
  severity: 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'LOG' | 'INFO' | 'DEBUG';
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

// ---- readers -------------------------------------------------------------------------------------------

/** Reads a NUL-terminated UTF-8 string at `pos`; returns it and the position after the NUL (or -1 if unterminated). */
export function readCString(buf: Buffer, pos: number, end = buf.length): [string, number] {
  const nul = buf.indexOf(0, pos);
  if (nul < 0 || nul >= end) return ['', -1];
  return [buf.toString('utf8', pos, nul), nul + 1];
}

/** ErrorResponse / NoticeResponse fields keyed by their one-letter code (S, V, C, M, D, H, P, ...). */
export function readErrorFields(msg: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 5;
  while (pos < msg.length && msg[pos] !== 0) {
    const key = String.fromCharCode(msg[pos]);
    const [value, next] = readCString(msg, pos + 1);
    if (next < 0) break;
    out[key] = value;
    pos = next;
  }
  return out;
}

/** Transaction status byte of a ReadyForQuery message. */
export function readTxStatus(msg: Buffer): TxStatus {
  return String.fromCharCode(msg[5]) as TxStatus;
}

/** BackendKeyData: process id and secret (4 bytes in protocol 3.0, up to 256 in 3.2); null if malformed. */
export function readBackendKeyData(msg: Buffer): { pid: number; secret: Buffer } | null {
  if (msg.length < 13 || msg.length > 9 + 256) return null;
  return { pid: msg.readInt32BE(5), secret: Buffer.from(msg.subarray(9)) };
}

/** ParameterStatus name and value. */
export function readParameterStatus(msg: Buffer): [string, string] {
  const [name, next] = readCString(msg, 5);
  const [value] = next < 0 ? [''] : readCString(msg, next);
  return [name, value];
}

/** CancelRequest packet (as cancelRequest writes it): the backend's process id and secret key; null if malformed. */
export function readCancelRequest(packet: Buffer): { pid: number; secret: Buffer } | null {
  if (packet.length < 16 || packet.length > 12 + 256) return null;
  return { pid: packet.readInt32BE(8), secret: Buffer.from(packet.subarray(12)) };
}

export interface StartupPacket {
  major: number;
  minor: number;
  params: Map<string, string>;
}

/** StartupMessage body: protocol version then name/value pairs ending with an empty name. Null when malformed. */
export function readStartupPacket(packet: Buffer): StartupPacket | null {
  const version = packet.readUInt32BE(4);
  const params = new Map<string, string>();
  let pos = 8;
  for (;;) {
    if (pos >= packet.length) return null;
    if (packet[pos] === 0) break;
    const [name, afterName] = readCString(packet, pos);
    if (afterName < 0) return null;
    const [value, afterValue] = readCString(packet, afterName);
    if (afterValue < 0) return null;
    params.set(name, value);
    pos = afterValue;
  }
  return { major: version >>> 16, minor: version & 0xffff, params };
}

/** Query ('Q') text. */
export function readQuery(msg: Buffer): string {
  return msg.toString('utf8', 5, msg.length - 1);
}

/** CommandComplete ('C') tag: `SELECT 1`, `DISCARD ALL`, ... */
export function readCommandTag(msg: Buffer): string {
  return msg.toString('latin1', 5, msg.length - 1);
}

export interface ParseMessage {
  name: string;
  sql: string;
  paramTypes: number[];
}

/** Parse ('P'): statement name, SQL text, parameter type OIDs. */
export function readParse(msg: Buffer): ParseMessage {
  const [name, p1] = readCString(msg, 5);
  const [sql, p2] = readCString(msg, p1);
  const n = msg.readInt16BE(p2);
  const paramTypes = new Array<number>(n);
  for (let i = 0; i < n; i++) paramTypes[i] = msg.readUInt32BE(p2 + 2 + 4 * i);
  return { name, sql, paramTypes };
}

export interface BindMessage {
  portal: string;
  statement: string;
  /** Per-parameter format codes as sent (0 entries = all text, 1 = applies to all). */
  paramFormats: number[];
  /** Parameter values as raw bytes; null for SQL NULL. */
  params: (Buffer | null)[];
  resultFormats: number[];
}

/** Bind ('B'). Parameter values are views into `msg`. */
export function readBind(msg: Buffer): BindMessage {
  const [portal, p1] = readCString(msg, 5);
  const [statement, p2] = readCString(msg, p1);
  let pos = p2;
  const nf = msg.readInt16BE(pos);
  pos += 2;
  const paramFormats: number[] = [];
  for (let i = 0; i < nf; i++, pos += 2) paramFormats.push(msg.readInt16BE(pos));
  const np = msg.readInt16BE(pos);
  pos += 2;
  const params: (Buffer | null)[] = [];
  for (let i = 0; i < np; i++) {
    const len = msg.readInt32BE(pos);
    pos += 4;
    if (len < 0) params.push(null);
    else {
      params.push(msg.subarray(pos, pos + len));
      pos += len;
    }
  }
  const nr = msg.readInt16BE(pos);
  pos += 2;
  const resultFormats: number[] = [];
  for (let i = 0; i < nr; i++, pos += 2) resultFormats.push(msg.readInt16BE(pos));
  return { portal, statement, paramFormats, params, resultFormats };
}

/** Describe ('D') / Close ('C'): 'S' statement or 'P' portal, and its name. */
export function readTarget(msg: Buffer): { kind: 'S' | 'P'; name: string } {
  return { kind: String.fromCharCode(msg[5]) as 'S' | 'P', name: readCString(msg, 6)[0] };
}

/** Execute ('E'): portal name and row limit (0 = all). */
export function readExecute(msg: Buffer): { portal: string; maxRows: number } {
  const [portal, next] = readCString(msg, 5);
  return { portal, maxRows: msg.readInt32BE(next) };
}

/** Calls `fn` for each whole message in `buf`; false if `buf` is not a sequence of whole, well-formed messages. */
export function forEachMessage(buf: Buffer, fn: (code: number, start: number, end: number) => void): boolean {
  let pos = 0;
  while (pos < buf.length) {
    if (buf.length - pos < 5) return false;
    const len = buf.readInt32BE(pos + 1);
    if (len < 4 || pos + 1 + len > buf.length) return false;
    fn(buf[pos], pos, pos + 1 + len);
    pos += 1 + len;
  }
  return true;
}

// ---- serialisers ---------------------------------------------------------------------------------------

function message(type: number, bodyLength: number): Buffer {
  const buf = Buffer.allocUnsafe(5 + bodyLength);
  buf[0] = type;
  buf.writeInt32BE(4 + bodyLength, 1);
  return buf;
}

function cstrings(type: number, parts: (string | Buffer)[], tail?: Buffer, encoding: BufferEncoding = 'utf8'): Buffer {
  const bufs = parts.map((p) => (typeof p === 'string' ? Buffer.from(p, encoding) : p));
  let len = tail ? tail.length : 0;
  for (const b of bufs) len += b.length + 1;
  const out = message(type, len);
  let pos = 5;
  for (const b of bufs) {
    pos += b.copy(out, pos);
    out[pos++] = 0;
  }
  if (tail) tail.copy(out, pos);
  return out;
}

/** ErrorResponse (or NoticeResponse with `type` = 'N'), its text in the client's `encoding`. */
export function errorResponse(f: ErrorFields, type: number = Be.ErrorResponse, encoding: BufferEncoding = 'utf8'): Buffer {
  const fields: string[] = [`S${f.severity}`, `V${f.severity}`, `C${f.code}`, `M${f.message}`];
  if (f.detail) fields.push(`D${f.detail}`);
  if (f.hint) fields.push(`H${f.hint}`);
  return cstrings(type, [...fields, ''], undefined, encoding);
}

/** Authentication ('R'): AUTH_OK, AUTH_CLEARTEXT_PASSWORD, or with its data (AUTH_SASL: the mechanisms, each NUL-terminated, then a NUL). */
export function authentication(code: number, data?: Buffer): Buffer {
  const out = message(Be.Authentication, 4 + (data?.length ?? 0));
  out.writeInt32BE(code, 5);
  data?.copy(out, 9);
  return out;
}

// ---- authentication exchanges of the pooler (it authenticates clients and logs into servers itself) ----

/** More sub-codes of an Authentication ('R') message. */
export const AUTH_MD5_PASSWORD = 5;
export const AUTH_SASL_CONTINUE = 11;
export const AUTH_SASL_FINAL = 12;

/** AuthenticationMD5Password with its 4-byte salt. */
export function authenticationMD5Password(salt: Buffer): Buffer {
  return authentication(AUTH_MD5_PASSWORD, salt);
}

/** AuthenticationSASL offering `mechanisms`. */
export function authenticationSASL(mechanisms: readonly string[]): Buffer {
  return authentication(AUTH_SASL, Buffer.from(mechanisms.map((m) => `${m}\0`).join('') + '\0', 'utf8'));
}

/** AuthenticationSASLContinue: the server's challenge (SCRAM's server-first-message). */
export function authenticationSASLContinue(data: Buffer): Buffer {
  return authentication(AUTH_SASL_CONTINUE, data);
}

/** AuthenticationSASLFinal: the server's outcome (SCRAM's server-final-message). */
export function authenticationSASLFinal(data: Buffer): Buffer {
  return authentication(AUTH_SASL_FINAL, data);
}

/** An Authentication ('R') message, by what it asks for. */
export type AuthenticationRequest =
  | { kind: 'ok' }
  | { kind: 'cleartext' }
  | { kind: 'md5'; salt: Buffer }
  | { kind: 'sasl'; mechanisms: string[] }
  | { kind: 'sasl-continue'; data: Buffer }
  | { kind: 'sasl-final'; data: Buffer }
  /** Kerberos, GSSAPI, SSPI, ...: known to the protocol, not to the pooler. */
  | { kind: 'other'; code: number };

/** Reads an Authentication message; null when malformed. Data and salt are views into `msg`. */
export function readAuthentication(msg: Buffer): AuthenticationRequest | null {
  if (msg.length < 9 || msg[0] !== Be.Authentication || msg.readInt32BE(1) !== msg.length - 1) return null;
  const code = msg.readInt32BE(5);
  const data = msg.subarray(9);
  switch (code) {
    case AUTH_OK:
      return data.length === 0 ? { kind: 'ok' } : null;
    case AUTH_CLEARTEXT_PASSWORD:
      return data.length === 0 ? { kind: 'cleartext' } : null;
    case AUTH_MD5_PASSWORD:
      return data.length === 4 ? { kind: 'md5', salt: data } : null;
    case AUTH_SASL: {
      const mechanisms: string[] = [];
      let pos = 9;
      for (;;) {
        const [name, next] = readCString(msg, pos);
        if (next < 0) return null;
        if (name === '') return next === msg.length ? { kind: 'sasl', mechanisms } : null;
        mechanisms.push(name);
        pos = next;
      }
    }
    case AUTH_SASL_CONTINUE:
      return { kind: 'sasl-continue', data };
    case AUTH_SASL_FINAL:
      return { kind: 'sasl-final', data };
    default:
      return { kind: 'other', code };
  }
}

/** StartupMessage (protocol 3.0) with these parameters (user, database, options, ...). */
export function startupMessage(params: ReadonlyMap<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of params) parts.push(Buffer.from(`${name}\0${value}\0`, 'utf8'));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  const out = Buffer.allocUnsafe(8 + body.length);
  out.writeInt32BE(8 + body.length, 0);
  out.writeInt32BE(PROTOCOL_3_0, 4);
  body.copy(out, 8);
  return out;
}

/** PasswordMessage: a cleartext password or an md5 response. */
export function passwordMessage(password: string | Buffer): Buffer {
  return cstrings(Fe.Password, [password]);
}

/** SASLInitialResponse: the chosen mechanism and its first message (null: none, length -1). */
export function saslInitialResponse(mechanism: string, data: Buffer | null): Buffer {
  const tail = Buffer.allocUnsafe(4 + (data?.length ?? 0));
  tail.writeInt32BE(data ? data.length : -1, 0);
  data?.copy(tail, 4);
  return cstrings(Fe.Password, [mechanism], tail);
}

/** SASLResponse: the next message of the mechanism. */
export function saslResponse(data: Buffer): Buffer {
  const out = message(Fe.Password, data.length);
  data.copy(out, 5);
  return out;
}

/** True when `msg` is one whole 'p' message (type byte and a length that matches). */
function isPasswordFrame(msg: Buffer): boolean {
  return msg.length >= 5 && msg[0] === Fe.Password && msg.readInt32BE(1) === msg.length - 1;
}

/** PasswordMessage: the password's bytes (a view), or null unless the body is exactly one NUL-terminated string. */
export function readPasswordMessage(msg: Buffer): Buffer | null {
  if (!isPasswordFrame(msg)) return null;
  const nul = msg.indexOf(0, 5);
  return nul === msg.length - 1 ? msg.subarray(5, nul) : null;
}

/** SASLInitialResponse: mechanism and data (a view; null when sent as length -1); null when malformed. */
export function readSASLInitialResponse(msg: Buffer): { mechanism: string; data: Buffer | null } | null {
  if (!isPasswordFrame(msg)) return null;
  const [mechanism, pos] = readCString(msg, 5);
  if (pos < 0 || msg.length - pos < 4) return null;
  const len = msg.readInt32BE(pos);
  if (len === -1) return pos + 4 === msg.length ? { mechanism, data: null } : null;
  if (len < 0 || pos + 4 + len !== msg.length) return null;
  return { mechanism, data: msg.subarray(pos + 4) };
}

/** SASLResponse: the mechanism's data (a view); null when the frame is malformed. */
export function readSASLResponse(msg: Buffer): Buffer | null {
  return isPasswordFrame(msg) ? msg.subarray(5) : null;
}

/** NegotiateProtocolVersion: the newest version the server speaks (as PROTOCOL_3_0) and the `_pq_.` options it does not know. */
export function negotiateProtocolVersion(newest: number, unrecognised: readonly string[]): Buffer {
  const names = unrecognised.map((o) => Buffer.from(o, 'utf8'));
  const out = message(Be.NegotiateProtocolVersion, names.reduce((n, name) => n + name.length + 1, 8));
  let pos = out.writeInt32BE(newest, 5);
  pos = out.writeInt32BE(names.length, pos);
  for (const name of names) {
    pos += name.copy(out, pos);
    out[pos++] = 0;
  }
  return out;
}

export function parameterStatus(name: string, value: string | Buffer): Buffer {
  return cstrings(Be.ParameterStatus, [name, value]);
}

export function readyForQuery(status: TxStatus): Buffer {
  const out = message(Be.ReadyForQuery, 1);
  out[5] = status.charCodeAt(0);
  return out;
}

/** One column of a RowDescription; what is left out is what an expression column has (no table, -1, text format). */
export interface FieldDescription {
  /** The column's name: a Buffer when it is already in the client's encoding. */
  name: string | Buffer;
  typeOid: number;
  tableOid?: number;
  columnNumber?: number;
  typeSize?: number;
  typeModifier?: number;
  format?: 0 | 1;
}

export function rowDescription(fields: readonly FieldDescription[]): Buffer {
  const names = fields.map((f) => (typeof f.name === 'string' ? Buffer.from(f.name, 'utf8') : f.name));
  const out = message(Be.RowDescription, names.reduce((n, name) => n + name.length + 19, 2));
  let pos = out.writeInt16BE(fields.length, 5);
  fields.forEach((f, i) => {
    pos += names[i].copy(out, pos);
    out[pos++] = 0;
    pos = out.writeUInt32BE(f.tableOid ?? 0, pos);
    pos = out.writeInt16BE(f.columnNumber ?? 0, pos);
    pos = out.writeUInt32BE(f.typeOid, pos);
    pos = out.writeInt16BE(f.typeSize ?? -1, pos);
    pos = out.writeInt32BE(f.typeModifier ?? -1, pos);
    pos = out.writeInt16BE(f.format ?? 0, pos);
  });
  return out;
}

export function commandComplete(tag: string): Buffer {
  return cstrings(Be.CommandComplete, [tag]);
}

export const EMPTY_QUERY_RESPONSE = Buffer.from([Be.EmptyQueryResponse, 0, 0, 0, 4]);
/** BindComplete, NoData, PortalSuspended: the bodiless answers of the extended protocol (the admin console gives them itself). */
export const BIND_COMPLETE = Buffer.from([Be.BindComplete, 0, 0, 0, 4]);
export const NO_DATA = Buffer.from([Be.NoData, 0, 0, 0, 4]);
export const PORTAL_SUSPENDED = Buffer.from([Be.PortalSuspended, 0, 0, 0, 4]);

/** ParameterDescription: the type OID of each parameter of a prepared statement. */
export function parameterDescription(typeOids: readonly number[]): Buffer {
  const out = message(Be.ParameterDescription, 2 + 4 * typeOids.length);
  let pos = out.writeInt16BE(typeOids.length, 5);
  for (const oid of typeOids) pos = out.writeUInt32BE(oid, pos);
  return out;
}

export function backendKeyData(pid: number, secret: Buffer): Buffer {
  const out = message(Be.BackendKeyData, 4 + secret.length);
  out.writeInt32BE(pid, 5);
  secret.copy(out, 9);
  return out;
}

/** CancelRequest packet (startup phase: no type byte). */
export function cancelRequest(pid: number, secret: Buffer): Buffer {
  const out = Buffer.allocUnsafe(12 + secret.length);
  out.writeInt32BE(12 + secret.length, 0);
  out.writeInt32BE(CANCEL_REQUEST_CODE, 4);
  out.writeInt32BE(pid, 8);
  secret.copy(out, 12);
  return out;
}

export function sslRequest(): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeInt32BE(8, 0);
  out.writeInt32BE(SSL_REQUEST_CODE, 4);
  return out;
}

/** The one-byte answers to SSLRequest / GSSENCRequest. */
export const ACCEPT_ENCRYPTION = Buffer.from('S');
export const REFUSE_ENCRYPTION = Buffer.from('N');

export const TERMINATE = Buffer.from([Fe.Terminate, 0, 0, 0, 4]);
export const SYNC = Buffer.from([Fe.Sync, 0, 0, 0, 4]);
export const FLUSH = Buffer.from([Fe.Flush, 0, 0, 0, 4]);

/** DataRow: each column's bytes (views into msg), null for SQL NULL. */
export function readDataRow(msg: Buffer): (Buffer | null)[] {
  const n = msg.readInt16BE(5);
  const out: (Buffer | null)[] = new Array(n);
  let pos = 7;
  for (let i = 0; i < n; i++) {
    const len = msg.readInt32BE(pos);
    pos += 4;
    out[i] = len < 0 ? null : msg.subarray(pos, (pos += len));
  }
  return out;
}

/** Query; the SQL as text (UTF-8) or as the bytes of another client encoding. */
export function query(sql: string | Buffer): Buffer {
  return cstrings(Fe.Query, [sql]);
}

export function parse(name: string, sql: string | Buffer, paramTypes: readonly number[] = []): Buffer {
  const tail = Buffer.allocUnsafe(2 + 4 * paramTypes.length);
  tail.writeInt16BE(paramTypes.length, 0);
  paramTypes.forEach((oid, i) => tail.writeUInt32BE(oid, 2 + 4 * i));
  return cstrings(Fe.Parse, [name, sql], tail);
}

export function bind(b: BindMessage): Buffer {
  let len = 2 + 2 * b.paramFormats.length + 2 + 2 + 2 * b.resultFormats.length;
  for (const p of b.params) len += 4 + (p ? p.length : 0);
  const tail = Buffer.allocUnsafe(len);
  let pos = tail.writeInt16BE(b.paramFormats.length, 0);
  for (const f of b.paramFormats) pos = tail.writeInt16BE(f, pos);
  pos = tail.writeInt16BE(b.params.length, pos);
  for (const p of b.params) {
    pos = tail.writeInt32BE(p ? p.length : -1, pos);
    if (p) pos += p.copy(tail, pos);
  }
  pos = tail.writeInt16BE(b.resultFormats.length, pos);
  for (const f of b.resultFormats) pos = tail.writeInt16BE(f, pos);
  return cstrings(Fe.Bind, [b.portal, b.statement], tail);
}

export function describe(kind: 'S' | 'P', name: string): Buffer {
  return cstrings(Fe.Describe, [kind + name]);
}

export function dataRow(values: readonly (Buffer | null)[]): Buffer {
  let len = 2;
  for (const v of values) len += 4 + (v ? v.length : 0);
  const out = message(Be.DataRow, len);
  let pos = out.writeInt16BE(values.length, 5);
  for (const v of values) {
    pos = out.writeInt32BE(v ? v.length : -1, pos);
    if (v) pos += v.copy(out, pos);
  }
  return out;
}

export function close(kind: 'S' | 'P', name: string): Buffer {
  return cstrings(Fe.Close, [kind + name]);
}

export function execute(portal = '', maxRows = 0): Buffer {
  const tail = Buffer.allocUnsafe(4);
  tail.writeInt32BE(maxRows, 0);
  return cstrings(Fe.Execute, [portal], tail);
}

/**
 * The message with its statement name replaced: Parse (the name it defines), Bind (the statement it binds),
 * Describe/Close of a statement. The pooler's prepared statements (prepared.ts) move names this way.
 */
export function withStatementName(msg: Buffer, name: Buffer): Buffer {
  let at: number;
  if (msg[0] === Fe.Bind) at = msg.indexOf(0, 5) + 1;
  else if (msg[0] === Fe.Parse) at = 5;
  else at = 6; // Describe / Close: after the 'S'
  const end = msg.indexOf(0, at);
  const out = Buffer.allocUnsafe(msg.length - (end - at) + name.length);
  msg.copy(out, 0, 0, at);
  name.copy(out, at);
  msg.copy(out, at + name.length, end);
  out.writeInt32BE(out.length - 1, 1);
  return out;
}

/** ParseComplete, CloseComplete: the answers the pooler gives itself. */
export const PARSE_COMPLETE = Buffer.from([Be.ParseComplete, 0, 0, 0, 4]);
export const CLOSE_COMPLETE = Buffer.from([Be.CloseComplete, 0, 0, 0, 4]);

/** Printable form of a type byte for logs and error messages. */
export function typeName(code: number): string {
  return code >= 0x20 && code < 0x7f ? `'${String.fromCharCode(code)}'` : `0x${code.toString(16).padStart(2, '0')}`;
}
