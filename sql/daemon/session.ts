// One connection to the daemon endpoint, as a PostgreSQL server would hold it (the subset libpq and dblink
// use): startup (plain connections only), a cleartext password checked against the daemon secrets, then
// simple queries, each a JSON request answered with one text row or an ErrorResponse, or one of the
// session commands drivers send. A CancelRequest with the session's key aborts its running request.
import { createHash, randomInt } from 'node:crypto';
import type { Socket } from 'node:net';
import type pino from 'pino';
import {
  AUTH_CLEARTEXT_PASSWORD, AUTH_OK, Be, CANCEL_REQUEST_CODE, EMPTY_QUERY_RESPONSE, Fe, GSSENC_REQUEST_CODE,
  MAX_STARTUP_PACKET, PROTOCOL_3_0, REFUSE_ENCRYPTION, SSL_REQUEST_CODE, authentication, backendKeyData,
  commandComplete, dataRow, errorResponse, negotiateProtocolVersion, parameterStatus, readCancelRequest,
  readStartupPacket, readyForQuery, rowDescription, typeName,
} from '../../proxy/protocol.js';
import { WireError } from '../errors.js';
import type { Answer } from '../evaluate.js';
import { clientEncoding, sessionCommand, type ClientEncoding } from './commands.js';

/** What a session needs of the endpoint it belongs to. */
export interface SessionHost {
  readonly log: pino.Logger;
  /** Every open session (the connection limit counts them). */
  readonly sessions: Set<DaemonSession>;
  /** Authenticated sessions by backend pid, for CancelRequests. */
  readonly keys: Map<number, DaemonSession>;
  /** Whether `given`, the SHA-256 of the password sent, is the SHA-256 of a daemon secret. */
  secretMatches(given: Buffer): boolean;
  /**
   * Answers one JSON request with its answer text, or rejects with a WireError. `abort` is the
   * session's: a CancelRequest or the client going away aborts it.
   */
  respond(text: string, call: { pid: number; abort: AbortController }): Promise<Answer>;
}

/** Messages after authentication: up to a request's size. Before it, as PostgreSQL, a startup packet's. */
const MAX_MESSAGE = 64 * 1024 * 1024;
const TEXT_OID = 25;
const AUTH_TIMEOUT_MS = 10_000;

/** The fixed part of what a session reports at start (client_encoding is the session's own). */
const SERVER_PARAMETERS = {
  server_version: '15.0 (pg-steadytext daemon)', server_encoding: 'UTF8', standard_conforming_strings: 'on',
  DateStyle: 'ISO, MDY', IntervalStyle: 'postgres', TimeZone: 'UTC', integer_datetimes: 'on', is_superuser: 'off',
  session_authorization: 'steadytext', application_name: '',
};

export class DaemonSession {
  private buf: Buffer = Buffer.alloc(0);
  private state: 'startup' | 'password' | 'ready' | 'closed' = 'startup';
  private encoding: ClientEncoding = { name: 'UTF8', encoding: 'utf8' };
  /** Replies go out in message order: queries are answered asynchronously, so everything after one queues. */
  private queue: Promise<void> = Promise.resolve();
  private inflight?: AbortController;
  readonly pid = randomInt(1, 2 ** 31 - 1);
  private readonly key = Buffer.alloc(4);
  private user = '';
  private readonly authTimer: ReturnType<typeof setTimeout>;
  /** After an extended-protocol message: refused once, the rest ignored until Sync. */
  private skipToSync = false;

  constructor(private readonly socket: Socket, private readonly host: SessionHost) {
    this.key.writeInt32BE(randomInt(0, 2 ** 31 - 1));
    host.sessions.add(this);
    socket.setNoDelay(true);
    socket.on('data', (d) => this.onData(d));
    socket.on('error', () => this.close());
    socket.on('close', () => this.close());
    this.authTimer = setTimeout(() => this.fatal('08P01', 'pg-steadytext daemon: authentication timed out'), AUTH_TIMEOUT_MS);
    this.authTimer.unref();
  }

  close(): void {
    this.ended(new Error('client disconnected'));
    this.socket.destroy();
  }

  /** A CancelRequest named this session: its running request stops (57014). */
  cancel(key: Buffer): void {
    if (key.equals(this.key)) this.inflight?.abort(new Error('cancelled by a CancelRequest'));
  }

  private ended(reason: Error): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this.authTimer);
    this.host.sessions.delete(this);
    if (this.host.keys.get(this.pid) === this) this.host.keys.delete(this.pid);
    this.inflight?.abort(reason); // nobody is left to read the answer
  }

  private send(...messages: Buffer[]): void {
    if (this.state !== 'closed') this.socket.write(messages.length === 1 ? messages[0] : Buffer.concat(messages));
  }

  private error(e: WireError): Buffer {
    return errorResponse(e, Be.ErrorResponse, this.encoding.encoding);
  }

  private fatal(code: string, message: string): void {
    if (this.state === 'closed') return;
    this.socket.end(this.error(new WireError(code, message, undefined, undefined, 'FATAL')));
    this.ended(new Error('session ended'));
  }

  // ---- framing -------------------------------------------------------------------------------------

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    try {
      for (let m = this.nextMessage(); m; m = this.nextMessage()) {
        if (this.state === 'startup') this.onStartup(m);
        else if (this.state === 'password') this.onPassword(m);
        else this.onMessage(m);
      }
    } catch (e) {
      // Whatever a client sends must never take the proxy down.
      this.host.log.debug({ err: e }, 'daemon: malformed message');
      this.fatal('08P01', 'pg-steadytext daemon: malformed message');
    }
  }

  /** The next whole message (a startup-phase packet while starting up), or undefined until more arrives. */
  private nextMessage(): Buffer | undefined {
    if (this.state === 'closed') return undefined;
    const startup = this.state === 'startup';
    if (this.buf.length < (startup ? 4 : 5)) return undefined;
    const len = this.buf.readInt32BE(startup ? 0 : 1);
    const max = this.state === 'ready' ? MAX_MESSAGE : MAX_STARTUP_PACKET;
    if (len < (startup ? 8 : 4) || len > max) {
      this.fatal('08P01', `pg-steadytext daemon: invalid message length ${len}`);
      return undefined;
    }
    const total = startup ? len : len + 1;
    if (this.buf.length < total) return undefined;
    const msg = this.buf.subarray(0, total);
    this.buf = this.buf.subarray(total);
    return msg;
  }

  // ---- startup and authentication ------------------------------------------------------------------

  private onStartup(packet: Buffer): void {
    const code = packet.readInt32BE(4);
    if (code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE) {
      this.socket.write(REFUSE_ENCRYPTION); // plain connections only; the secret protects the door
      return;
    }
    if (code === CANCEL_REQUEST_CODE) return this.onCancelRequest(packet);
    if (code >> 16 !== 3) return this.fatal('0A000', `pg-steadytext daemon: unsupported frontend protocol ${code >> 16}.${code & 0xffff}`);
    const startup = readStartupPacket(packet);
    if (!startup) return this.fatal('08P01', 'pg-steadytext daemon: invalid startup packet layout: expected terminator as last byte');
    const params = startup.params;
    const unknownOptions = [...params.keys()].filter((k) => k.startsWith('_pq_.'));
    const replies = code !== PROTOCOL_3_0 || unknownOptions.length ? [negotiateProtocolVersion(PROTOCOL_3_0, unknownOptions)] : [];
    const replication = params.get('replication');
    if (replication && replication !== 'false') return this.fatal('0A000', 'pg-steadytext daemon: replication connections are not supported');
    this.user = params.get('user') ?? '';
    const asked = params.get('client_encoding');
    this.encoding = (asked && clientEncoding(asked)) || this.encoding;
    this.state = 'password';
    this.send(...replies, authentication(AUTH_CLEARTEXT_PASSWORD));
  }

  private onCancelRequest(packet: Buffer): void {
    const c = readCancelRequest(packet);
    if (c) this.host.keys.get(c.pid)?.cancel(c.secret);
    this.close(); // no answer either way, as the server does
  }

  private onPassword(msg: Buffer): void {
    if (msg[0] !== Fe.Password) return this.fatal('08P01', `pg-steadytext daemon: expected a password message, got ${typeName(msg[0])}`);
    const body = msg.subarray(5);
    const end = body.indexOf(0);
    const given = createHash('sha256').update(end >= 0 ? body.subarray(0, end) : body).digest();
    if (!this.host.secretMatches(given)) {
      this.host.log.warn({ user: this.user, remote: this.socket.remoteAddress }, 'daemon: wrong secret');
      return this.fatal('28P01', `password authentication failed for user "${this.user}"`);
    }
    if (this.user !== 'steadytext') return this.fatal('28000', `pg-steadytext daemon: role "${this.user}" does not exist (the daemon accepts only user steadytext)`);
    clearTimeout(this.authTimer);
    this.state = 'ready';
    this.host.keys.set(this.pid, this);
    const params = Object.entries({ ...SERVER_PARAMETERS, client_encoding: this.encoding.name });
    this.send(authentication(AUTH_OK), ...params.map(([k, v]) => parameterStatus(k, v)), backendKeyData(this.pid, this.key), readyForQuery('I'));
  }

  // ---- queries -------------------------------------------------------------------------------------

  private onMessage(msg: Buffer): void {
    const then = (f: () => void | Promise<void>) => { this.queue = this.queue.then(f); };
    switch (msg[0]) {
      case Fe.Query: {
        const body = msg.subarray(5);
        const end = body.indexOf(0);
        const text = Buffer.from(body.subarray(0, end >= 0 ? end : body.length));
        return then(() => this.onQuery(text));
      }
      case Fe.Terminate:
        return this.close();
      case Fe.Sync:
        return then(() => {
          this.skipToSync = false;
          this.send(readyForQuery('I'));
        });
      case Fe.Parse: case Fe.Bind: case Fe.Describe: case Fe.Execute: case Fe.Close: case Fe.Flush: case Fe.FunctionCall:
        // Extended protocol: not for us. Report once, then ignore until Sync as PostgreSQL does.
        return then(() => {
          if (this.skipToSync) return;
          this.skipToSync = true;
          this.send(this.error(new WireError('0A000', 'the pg-steadytext daemon answers simple-protocol queries only')));
        });
      default:
        return this.fatal('08P01', `pg-steadytext daemon: unexpected message type ${typeName(msg[0])}`);
    }
  }

  private async onQuery(raw: Buffer): Promise<void> {
    if (this.state !== 'ready') return;
    const text = raw.toString(this.encoding.encoding).trim();
    let replies: Buffer[];
    try {
      if (text === '' || /^;+$/.test(text)) replies = [EMPTY_QUERY_RESPONSE];
      else if (text.startsWith('{') || text.startsWith('[')) replies = await this.onRequest(text);
      else replies = this.onCommand(text);
    } catch (e) {
      replies = [this.error(e instanceof WireError ? e : new WireError('XX000', `pg-steadytext daemon: ${(e as Error).message}`))];
    }
    this.send(...replies, readyForQuery('I'));
  }

  private onCommand(text: string): Buffer[] {
    const c = sessionCommand(text);
    switch (c.kind) {
      case 'encoding':
        this.encoding = c.to;
        return [commandComplete('SET'), parameterStatus('client_encoding', c.to.name)];
      case 'complete':
        return [commandComplete(c.tag)];
      case 'select1':
        return this.row('?column?', '1');
    }
  }

  private async onRequest(text: string): Promise<Buffer[]> {
    const abort = new AbortController();
    this.inflight = abort;
    try {
      return this.row('answer', (await this.host.respond(text, { pid: this.pid, abort })).answer);
    } finally {
      if (this.inflight === abort) this.inflight = undefined;
    }
  }

  /** A one-row, one-column text result in the client's encoding. */
  private row(column: string, value: string): Buffer[] {
    return [rowDescription([{ name: column, typeOid: TEXT_OID }]), dataRow([Buffer.from(value, this.encoding.encoding)]), commandComplete('SELECT 1')];
  }
}
