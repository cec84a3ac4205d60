// The daemon endpoint: the callback path. When a steadytext_* function runs where the proxy cannot see
// it (PL/pgSQL, triggers, views) and finds no cached answer, it connects here through dblink, as if this
// were a PostgreSQL server, and sends one JSON request as a simple query. We answer with one text row,
// or an ErrorResponse whose SQLSTATE dblink re-raises in the caller. Only the SQL objects know the
// password (steadytext_daemon_secret), so nothing else can use the engine through this door.
import { createHash, randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import pg from 'pg';
import type pino from 'pino';
import { streamAnswer, vectorText } from './answers.js';
import { float8FromHex } from './cache-key.js';
import { installSql, quoteIdent } from './install.js';
import { registerModels, serviceConnection, storeCacheEntry, type CacheEntry, type ModelIdentity } from './store.js';
import type { Engine, ModelRole } from '../inference/engine.js';

export type { ModelRole };
/** What the daemon uses of the inference engine (a fake with these methods serves in tests). */
export type DaemonEngine = Pick<Engine, 'generate' | 'embed' | 'modelIdentity' | 'status' | 'modelInfo' | 'load' | 'unload' | 'reload'>;

export interface DaemonOptions {
  listen: { host: string; port: number };
  /** The password the SQL objects send; a function when a proxy serves several databases, each with its own. */
  secret: string | (() => Iterable<string>);
  engine: DaemonEngine;
  /**
   * The proxy's own database connection: answers are stored in steadytext_cache through it. A function
   * maps the database a request comes from to its service URL (undefined: do not store).
   */
  serviceUrl?: string | ((database: string | undefined) => string | undefined);
  /** Schema of the steadytext objects (default "public"); the service writes name every object with it. */
  schema?: string;
  logger: pino.Logger;
  /** Overrides how the model identity for cache rows is found (default: engine.modelIdentity). */
  identity?: (role: ModelRole, size: string) => Promise<string | undefined> | string | undefined;
  /** Connections served at once (default 1000; each callback in progress holds one). */
  maxConnections?: number;
}

export interface DaemonStats {
  requests: number;
  errors: number;
  avgLatencyMs: number | null;
  connections: number;
  startedAt: Date;
}

export interface DaemonHandle {
  address: { host: string; port: number };
  /** Waits until the cache rows, counters and logs queued so far are written. */
  flush(): Promise<void>;
  stats(): DaemonStats;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------
// Wire protocol (the subset libpq and dblink use)

const PROTOCOL_3_0 = 196608;
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
const MAX_MESSAGE = 64 * 1024 * 1024;
const TEXT_OID = 25;

class Out {
  private parts: Buffer[] = [];
  constructor(public encoding: BufferEncoding = 'utf8') {}
  setEncoding(e: BufferEncoding) { this.encoding = e; }
  msg(type: string, body: Buffer = Buffer.alloc(0)) {
    const head = Buffer.alloc(5);
    head.write(type, 0, 'latin1');
    head.writeInt32BE(body.length + 4, 1);
    this.parts.push(head, body);
    return this;
  }
  cstr(s: string) { return Buffer.concat([Buffer.from(s, this.encoding), Buffer.from([0])]); }
  int32(n: number) { const b = Buffer.alloc(4); b.writeInt32BE(n); return b; }
  int16(n: number) { const b = Buffer.alloc(2); b.writeInt16BE(n); return b; }
  auth(code: number) { return this.msg('R', this.int32(code)); }
  param(name: string, value: string) { return this.msg('S', Buffer.concat([this.cstr(name), this.cstr(value)])); }
  ready() { return this.msg('Z', Buffer.from('I')); }
  complete(tag: string) { return this.msg('C', this.cstr(tag)); }
  row(column: string, value: string) {
    const desc = Buffer.concat([this.int16(1), this.cstr(column), this.int32(0), this.int16(0), this.int32(TEXT_OID), this.int16(-1), this.int32(-1), this.int16(0)]);
    const data = Buffer.from(value, this.encoding);
    return this.msg('T', desc).msg('D', Buffer.concat([this.int16(1), this.int32(data.length), data])).complete('SELECT 1');
  }
  error(e: WireError) {
    const f = (code: string, v: string | undefined) => (v === undefined ? [] : [Buffer.from(code, 'latin1'), this.cstr(v)]);
    return this.msg('E', Buffer.concat([
      ...f('S', e.severity), ...f('V', e.severity), ...f('C', e.code), ...f('M', e.message),
      ...f('D', e.detail), ...f('H', e.hint), Buffer.from([0]),
    ]));
  }
  take(): Buffer { const b = Buffer.concat(this.parts); this.parts = []; return b; }
}

/** An error to send as ErrorResponse: dblink raises it in the calling session with this SQLSTATE. */
export class WireError extends Error {
  constructor(readonly code: string, message: string, readonly hint?: string, readonly detail?: string, readonly severity: 'ERROR' | 'FATAL' = 'ERROR') {
    super(message);
  }
}

const ENCODINGS: Record<string, BufferEncoding> = { UTF8: 'utf8', SQL_ASCII: 'utf8', LATIN1: 'latin1' };

/** PostgreSQL spells encodings loosely ('utf-8', 'Unicode', 'sql_ascii', 'ISO-8859-1'). */
function canonicalEncoding(name: string): string {
  const n = name.toUpperCase().replace(/[-_]/g, '');
  return n === 'UNICODE' ? 'UTF8' : n === 'SQLASCII' ? 'SQL_ASCII' : n === 'ISO88591' ? 'LATIN1' : n;
}

// ---------------------------------------------------------------------------------------------------
// Requests

/** Who asked, as the SQL function reports it (for logs only: the secret, not these, authenticates). */
interface Origin { fn: string; user?: string; database?: string; backendPid?: number; timeoutMs?: number }
type Request = Origin & (
  | { op: 'generate' | 'generate_stream'; prompt: string; maxTokens: number; seed: number; temperature: number; modelSize: string; cache: boolean; debug: boolean; autoStart: boolean }
  | { op: 'embed'; text: string; seed: number; modelSize: string; cache: boolean; debug: boolean; autoStart: boolean }
  | { op: 'status' | 'model_info' | 'start' | 'stop' | 'restart' });

const FUNCTION_OF: Record<string, string> = {
  generate: 'steadytext_generate', generate_stream: 'steadytext_generate_stream', embed: 'steadytext_embed',
  status: 'steadytext_daemon_status', model_info: 'steadytext_model_info', start: 'steadytext_daemon_start',
  stop: 'steadytext_daemon_stop', restart: 'steadytext_daemon_restart',
};

export function parseRequest(text: string): Request {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new WireError('22P02', `pg-steadytext daemon: the request is not valid JSON (${(e as Error).message})`);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new WireError('22023', 'pg-steadytext daemon: the request must be a JSON object');
  const op = j.op;
  if (typeof op !== 'string' || !Object.hasOwn(FUNCTION_OF, op)) {
    throw new WireError('22023', `pg-steadytext daemon: unknown op ${JSON.stringify(op)}; expected one of ${Object.keys(FUNCTION_OF).join(', ')}`);
  }
  const fn = typeof j.function === 'string' && /^steadytext_\w+$/.test(j.function) ? j.function : FUNCTION_OF[op];
  const bad = (what: string, v: unknown) => new WireError('22023', `${fn}: ${what}, got ${JSON.stringify(v)}`, `Check the arguments of ${fn}.`);
  const int = (name: string, min: number) => {
    const v = j[name];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > 2147483647) throw bad(`${name} must be an integer from ${min} to 2147483647`, v);
    return v;
  };
  const str = (name: string) => {
    const v = j[name];
    if (typeof v !== 'string') throw bad(`${name} must be text`, v);
    return v;
  };
  const origin: Origin = {
    fn,
    user: typeof j.user === 'string' ? j.user : undefined,
    database: typeof j.database === 'string' ? j.database : undefined,
    backendPid: Number.isInteger(j.backend_pid) ? (j.backend_pid as number) : undefined,
    timeoutMs: typeof j.timeout_ms === 'number' && j.timeout_ms > 0 ? j.timeout_ms : undefined,
  };
  const modelSize = (): string => {
    const v = j.model_size;
    if (v === undefined || v === null) return 'small';
    if (typeof v !== 'string' || v.trim() === '') throw bad('model_size must be small, large or a model name', v);
    return v;
  };
  const flags = { cache: j.cache !== false, debug: j.debug === true, autoStart: j.auto_start !== false };
  switch (op) {
    case 'generate':
    case 'generate_stream': {
      let temperature: number;
      if (typeof j.temperature_bits === 'string') {
        try { temperature = float8FromHex(j.temperature_bits); } catch { throw bad('temperature_bits must be 16 hex digits', j.temperature_bits); }
      } else temperature = j.temperature === undefined || j.temperature === null ? 0 : (j.temperature as number);
      if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) throw bad('temperature must be a finite number >= 0', j.temperature);
      return { ...origin, op, prompt: str('prompt'), maxTokens: int('max_tokens', 1), seed: int('seed', 0), temperature, modelSize: modelSize(), ...flags };
    }
    case 'embed':
      return { ...origin, op, text: str('text'), seed: int('seed', 0), modelSize: modelSize(), ...flags };
    default:
      return { ...origin, op: op as 'status' };
  }
}

/** SQLSTATE and hint for an engine failure (errors carry a stable `code`, see inference/errors.ts). */
export function engineErrorToWire(fn: string, e: unknown, timeoutMs?: number): WireError {
  if (e instanceof WireError) return e;
  const code = (e as { code?: unknown })?.code;
  const message = `${fn}: ${(e as Error)?.message ?? String(e)}`;
  switch (code) {
    case 'INVALID_ARGUMENT':
      return new WireError('22023', message, `Check the arguments of ${fn}.`);
    case 'PROMPT_TOO_LONG':
      return new WireError('54000', message, 'Shorten the prompt or lower max_tokens, or use a model with a larger context.');
    case 'OVERLOADED':
      return new WireError('53000', message, 'The pg-steadytext daemon is at capacity: retry later, or spread the work over more proxies.');
    case 'TIMEOUT':
      return new WireError('57014', message, "Raise the limit with steadytext_config_set('daemon_timeout_ms', ...), or lower max_tokens.");
    case 'CANCELLED':
      return new WireError('57014', message, timeoutMs ? `The request exceeded daemon_timeout_ms (${timeoutMs} ms) or was cancelled.` : undefined);
    case 'MODEL_NOT_FOUND':
    case 'DOWNLOAD_FAILED':
      return new WireError('58P01', message, 'Give the proxy a model file (see its --help for the model options), or let it download one.');
    case 'MODEL_LOAD_FAILED':
    case 'CLOSED':
      return new WireError('55000', message, "See the pg-steadytext proxy's log; SELECT steadytext_daemon_restart() reloads the models.");
    default:
      return new WireError('XX000', message, "See the pg-steadytext proxy's log.");
  }
}

// ---------------------------------------------------------------------------------------------------
// Background writes through the service connection (search_path pinned: every object named with its
// schema, every parameter typed, so nothing another role created is found instead)

class ServiceWriter {
  private pool?: pg.Pool;
  private pending = new Set<Promise<void>>();
  private counters: Record<string, number> = {};
  private registered = new Map<string, string>();
  private timer?: ReturnType<typeof setInterval>;
  private readonly s: string;

  constructor(url: string | undefined, private schema: string, private log: pino.Logger) {
    this.s = quoteIdent(schema);
    if (!url) return;
    this.pool = new pg.Pool({ ...serviceConnection(url, 'pg-steadytext daemon'), max: 2, idleTimeoutMillis: 30_000 });
    this.pool.on('error', (e) => this.log.warn({ err: e }, 'daemon service connection failed'));
    this.timer = setInterval(() => this.flushCounters(), 5_000);
    this.timer.unref();
  }

  get enabled() { return Boolean(this.pool); }

  count(deltas: Record<string, number>) {
    for (const [k, v] of Object.entries(deltas)) this.counters[k] = (this.counters[k] ?? 0) + v;
  }

  storeAnswer(role: ModelRole, size: string, entry: CacheEntry) {
    this.run('cache write', async (c) => {
      // The SQL functions look identities up in steadytext_models; keep ours there so they find the row.
      const reg = `${role}\0${size}`;
      if (this.registered.get(reg) !== entry.identity) {
        await registerModels(c, [{ role, size, identity: entry.identity }], this.schema);
        this.registered.set(reg, entry.identity);
      }
      await storeCacheEntry(c, entry, this.schema);
    });
  }

  logEvent(level: 'debug' | 'info' | 'warning' | 'error', event: string, message: string, details: object) {
    this.run('log write', (c) => c.query(
      `SELECT ${this.s}.steadytext_log($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text, $4::pg_catalog.jsonb)`,
      [level, event, message, JSON.stringify(details)]).then(() => undefined));
  }

  private flushCounters() {
    const deltas = this.counters;
    if (!this.pool || Object.keys(deltas).length === 0) return;
    this.counters = {};
    this.run('stats write', (c) => c.query(`SELECT ${this.s}.steadytext_stats_bump($1::pg_catalog.jsonb)`, [JSON.stringify(deltas)]).then(() => undefined));
  }

  private run(what: string, work: (c: pg.Pool) => Promise<void>) {
    if (!this.pool) return;
    if (this.pending.size >= 1000) {
      this.log.warn({ what }, 'daemon service writes are backing up; dropping one');
      return;
    }
    const p: Promise<void> = work(this.pool)
      .catch((e) => this.log.warn({ err: e, what }, 'daemon service write failed'))
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  async flush() {
    this.flushCounters();
    while (this.pending.size) await Promise.all([...this.pending]);
  }

  async close() {
    if (this.timer) clearInterval(this.timer);
    await this.flush();
    await this.pool?.end();
  }
}

// ---------------------------------------------------------------------------------------------------
// The server

export async function startDaemon(opts: DaemonOptions): Promise<DaemonHandle> {
  const log = opts.logger.child({ component: 'daemon' });
  const digest = (x: string) => createHash('sha256').update(x, 'utf8').digest();
  const fixedDigest = typeof opts.secret === 'string' ? digest(opts.secret) : undefined;
  const secretMatches = (given: Buffer) => {
    if (fixedDigest) return timingSafeEqual(given, fixedDigest);
    let ok = false;
    for (const s of (opts.secret as () => Iterable<string>)()) ok = timingSafeEqual(given, digest(s)) || ok;
    return ok;
  };
  const writers = new Map<string, ServiceWriter>();
  const noWriter = new ServiceWriter(undefined, opts.schema ?? 'public', log);
  const writerFor = (database: string | undefined): ServiceWriter => {
    const url = typeof opts.serviceUrl === 'function' ? opts.serviceUrl(database) : opts.serviceUrl;
    if (!url) return noWriter;
    let w = writers.get(url);
    if (!w) writers.set(url, w = new ServiceWriter(url, opts.schema ?? 'public', log));
    return w;
  };
  const startedAt = new Date();
  const all = new Set<Session>();
  const sessions = new Map<number, Session>(); // authenticated, by backend pid (CancelRequest)
  const maxConnections = opts.maxConnections ?? 1000;
  let requests = 0, errors = 0, latencyTotal = 0;
  let closing = false;

  const identityFor = async (role: ModelRole, size: string): Promise<string | undefined> => {
    return opts.identity ? opts.identity(role, size) : opts.engine.modelIdentity(role, size);
  };

  const server: Server = createServer((socket) => {
    if (closing || all.size >= maxConnections) {
      socket.end(new Out().error(new WireError('53300', 'sorry, too many connections to the pg-steadytext daemon', undefined, undefined, 'FATAL')).take());
      return;
    }
    new Session(socket);
  });

  class Session {
    private buf: Buffer = Buffer.alloc(0);
    private state: 'startup' | 'password' | 'ready' | 'closed' = 'startup';
    private out = new Out();
    private queue: Promise<void> = Promise.resolve();
    private inflight?: AbortController;
    private readonly pid = randomInt(1, 2 ** 31 - 1);
    private readonly key = randomInt(0, 2 ** 31 - 1);
    private user = '';
    private clientEncoding = 'UTF8';
    private authTimer: ReturnType<typeof setTimeout>;
    private skipToSync = false;

    constructor(private socket: Socket) {
      all.add(this);
      socket.setNoDelay(true);
      socket.on('data', (d) => this.onData(d));
      socket.on('error', () => this.close());
      socket.on('close', () => this.close());
      this.authTimer = setTimeout(() => this.fatal('08P01', 'pg-steadytext daemon: authentication timed out'), 10_000);
      this.authTimer.unref();
    }

    close() {
      this.ended(new Error('client disconnected'));
      this.socket.destroy();
    }

    private ended(reason: Error) {
      if (this.state === 'closed') return;
      this.state = 'closed';
      clearTimeout(this.authTimer);
      all.delete(this);
      if (sessions.get(this.pid) === this) sessions.delete(this.pid);
      this.inflight?.abort(reason); // nobody is left to read the answer
    }

    private send() {
      if (this.state !== 'closed') this.socket.write(this.out.take());
    }

    private fatal(code: string, message: string) {
      if (this.state === 'closed') return;
      this.socket.end(this.out.error(new WireError(code, message, undefined, undefined, 'FATAL')).take());
      this.ended(new Error('session ended'));
    }

    private onData(d: Buffer) {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      try {
        for (;;) {
          if (this.state === 'closed') return;
          const startup = this.state === 'startup';
          const headLen = startup ? 4 : 5;
          if (this.buf.length < headLen) return;
          const len = this.buf.readInt32BE(startup ? 0 : 1);
          // Before authentication only small messages (as PostgreSQL, 10000 bytes for a startup packet).
          const max = this.state === 'ready' ? MAX_MESSAGE : 10_000;
          if (len < (startup ? 8 : 4) || len > max) return this.fatal('08P01', `pg-steadytext daemon: invalid message length ${len}`);
          const total = startup ? len : len + 1;
          if (this.buf.length < total) return;
          const msg = this.buf.subarray(0, total);
          this.buf = this.buf.subarray(total);
          if (startup) this.onStartup(msg.subarray(4));
          else this.onMessage(String.fromCharCode(msg[0]), msg.subarray(5));
        }
      } catch (e) {
        // Whatever a client sends must never take the proxy down.
        log.debug({ err: e }, 'daemon: malformed message');
        this.fatal('08P01', 'pg-steadytext daemon: malformed message');
      }
    }

    private onStartup(body: Buffer) {
      const code = body.readInt32BE(0);
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
        this.socket.write('N'); // plain connections only; the secret protects the door
        return;
      }
      if (code === CANCEL_REQUEST) {
        if (body.length >= 12) {
          const target = sessions.get(body.readInt32BE(4));
          if (target && target.key === body.readInt32BE(8)) target.cancel();
        }
        this.close();
        return;
      }
      if (code >> 16 !== 3) return this.fatal('0A000', `pg-steadytext daemon: unsupported frontend protocol ${code >> 16}.${code & 0xffff}`);
      const params: Record<string, string> = {};
      const parts = body.subarray(4).toString('utf8').split('\0');
      for (let i = 0; i + 1 < parts.length && parts[i] !== ''; i += 2) params[parts[i]] = parts[i + 1];
      const unknownOptions = Object.keys(params).filter((k) => k.startsWith('_pq_.'));
      if (code !== PROTOCOL_3_0 || unknownOptions.length) {
        this.out.msg('v', Buffer.concat([this.out.int32(PROTOCOL_3_0), this.out.int32(unknownOptions.length), ...unknownOptions.map((o) => this.out.cstr(o))]));
      }
      if (params.replication && params.replication !== 'false') return this.fatal('0A000', 'pg-steadytext daemon: replication connections are not supported');
      this.user = params.user ?? '';
      const enc = params.client_encoding ? canonicalEncoding(params.client_encoding) : 'UTF8';
      if (ENCODINGS[enc]) {
        this.out.setEncoding(ENCODINGS[enc]);
        this.clientEncoding = enc;
      }
      this.state = 'password';
      this.out.auth(3); // AuthenticationCleartextPassword
      this.send();
    }

    private onMessage(type: string, body: Buffer) {
      if (this.state === 'password') {
        if (type !== 'p') return this.fatal('08P01', `pg-steadytext daemon: expected a password message, got '${type}'`);
        const end = body.indexOf(0);
        const given = createHash('sha256').update(end >= 0 ? body.subarray(0, end) : body).digest();
        if (!secretMatches(given)) {
          log.warn({ user: this.user, remote: this.socket.remoteAddress }, 'daemon: wrong secret');
          return this.fatal('28P01', `password authentication failed for user "${this.user}"`);
        }
        if (this.user !== 'steadytext') return this.fatal('28000', `pg-steadytext daemon: role "${this.user}" does not exist (the daemon accepts only user steadytext)`);
        clearTimeout(this.authTimer);
        this.state = 'ready';
        sessions.set(this.pid, this);
        this.out.auth(0);
        for (const [k, v] of Object.entries({
          server_version: '15.0 (pg-steadytext daemon)', server_encoding: 'UTF8', client_encoding: this.clientEncoding,
          standard_conforming_strings: 'on', DateStyle: 'ISO, MDY', IntervalStyle: 'postgres', TimeZone: 'UTC',
          integer_datetimes: 'on', is_superuser: 'off', session_authorization: 'steadytext', application_name: '',
        })) this.out.param(k, v);
        this.out.msg('K', Buffer.concat([this.out.int32(this.pid), this.out.int32(this.key)]));
        this.out.ready();
        this.send();
        return;
      }
      // Replies go out in message order: queries are answered asynchronously, so everything queues.
      const then = (f: () => void | Promise<void>) => { this.queue = this.queue.then(f); };
      switch (type) {
        case 'Q': {
          const end = body.indexOf(0);
          const text = Buffer.from(body.subarray(0, end >= 0 ? end : body.length));
          return then(() => this.onQuery(text));
        }
        case 'X':
          return this.close();
        case 'S':
          return then(() => {
            this.skipToSync = false;
            this.out.ready();
            this.send();
          });
        case 'P': case 'B': case 'D': case 'E': case 'C': case 'H': case 'F':
          // Extended protocol: not for us. Report once, then ignore until Sync as PostgreSQL does.
          return then(() => {
            if (this.skipToSync) return;
            this.skipToSync = true;
            this.out.error(new WireError('0A000', 'the pg-steadytext daemon answers simple-protocol queries only'));
            this.send();
          });
        default:
          return this.fatal('08P01', `pg-steadytext daemon: unexpected message type '${type}'`);
      }
    }

    cancel() {
      this.inflight?.abort(new Error('cancelled by a CancelRequest'));
    }

    private async onQuery(raw: Buffer) {
      if (this.state !== 'ready') return;
      const text = raw.toString(this.out.encoding).trim();
      try {
        if (text === '' || /^;+$/.test(text)) {
          this.out.msg('I');
        } else if (text.startsWith('{') || text.startsWith('[')) {
          await this.onRequest(text);
        } else {
          this.onSql(text);
        }
      } catch (e) {
        this.out.error(e instanceof WireError ? e : new WireError('XX000', `pg-steadytext daemon: ${(e as Error).message}`));
      }
      this.out.ready();
      this.send();
    }

    // libpq and dblink send a few session commands of their own: accept them as a server would.
    private onSql(text: string) {
      const sql = text.replace(/;\s*$/, '').trim();
      const enc = /^set\s+(?:session\s+)?client_encoding\s*(?:to|=)\s*'?([\w-]+)'?$/i.exec(sql);
      if (enc) {
        const canonical = canonicalEncoding(enc[1]);
        const e = ENCODINGS[canonical];
        if (!e) throw new WireError('0A000', `the pg-steadytext daemon supports client encodings UTF8, SQL_ASCII and LATIN1, not ${enc[1]}`);
        this.out.setEncoding(e);
        this.out.complete('SET').param('client_encoding', canonical);
        return;
      }
      if (/^(set|reset)\b/i.test(sql)) {
        this.out.complete(/^set/i.test(sql) ? 'SET' : 'RESET');
        return;
      }
      if (/^select\s+1$/i.test(sql)) {
        this.out.row('?column?', '1');
        return;
      }
      if (/^(begin|start\s+transaction|commit|end|rollback|abort)\b/i.test(sql)) {
        // dblink never opens transactions here; answer harmlessly for generic clients and poolers.
        const verb = sql.split(/\s+/)[0].toUpperCase();
        this.out.complete(verb === 'START' ? 'START TRANSACTION' : verb === 'END' ? 'COMMIT' : verb === 'ABORT' ? 'ROLLBACK' : verb);
        return;
      }
      throw new WireError('0A000', 'the pg-steadytext daemon endpoint answers steadytext requests only, not SQL',
        'It is reached by the steadytext_* functions through dblink; connect to the proxy or the database for SQL.');
    }

    private async onRequest(text: string) {
      const t0 = performance.now();
      let req: Request | undefined;
      const ac = new AbortController();
      this.inflight = ac;
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        req = parseRequest(text);
        const r = req;
        // The engine enforces timeout_ms itself; this backstop covers work outside it (loading models).
        const limit = r.timeoutMs ? r.timeoutMs + 2000 : undefined;
        const signal = ac.signal;
        const answer = await Promise.race([
          this.answer(r, signal),
          new Promise<never>((_, reject) => {
            const fail = () => reject(new WireError('57014', `${r.fn}: canceling statement due to user request`));
            if (signal.aborted) fail(); else signal.addEventListener('abort', fail, { once: true });
            if (limit) {
              timer = setTimeout(() => {
                reject(engineErrorToWire(r.fn, Object.assign(new Error(`the pg-steadytext daemon gave up after ${r.timeoutMs} ms (daemon_timeout_ms)`), { code: 'TIMEOUT' })));
                ac.abort(new Error('daemon_timeout_ms elapsed'));
              }, limit);
            }
          }),
        ]);
        this.out.row('answer', answer);
        requests++;
        latencyTotal += performance.now() - t0;
        const writer = writerFor(r.database);
        if (r.op === 'generate' || r.op === 'generate_stream' || r.op === 'embed') {
          writer.count({ callback_requests: 1, [r.op === 'embed' ? 'embed_requests' : 'generate_requests']: 1 });
          if (r.debug) {
            writer.logEvent('debug', 'callback', `${r.fn} answered by the daemon`, {
              op: r.op, model_size: r.modelSize, ms: Math.round(performance.now() - t0), user: r.user ?? null, database: r.database ?? null,
            });
          }
        }
      } catch (e) {
        const w = engineErrorToWire(req?.fn ?? 'pg-steadytext daemon', e, req?.timeoutMs);
        errors++;
        const writer = writerFor(req?.database);
        writer.count({ errors: 1 });
        writer.logEvent('error', 'callback_error', w.message, { sqlstate: w.code, op: req?.op ?? null, user: req?.user ?? null });
        log.info({ sqlstate: w.code, err: w.message, op: req?.op, user: req?.user, database: req?.database }, 'daemon request failed');
        this.out.error(w);
      } finally {
        if (timer) clearTimeout(timer);
        if (this.inflight === ac) this.inflight = undefined;
      }
    }

    private async answer(req: Request, signal: AbortSignal): Promise<string> {
      const engine = opts.engine;
      // The engine takes turns between callers: one per database session, whatever connection it used.
      const caller = req.backendPid !== undefined ? `callback:${req.database ?? ''}:${req.backendPid}` : `callback:${this.pid}`;
      // A stop holds for every path: with daemon_auto_start off, only steadytext_daemon_start loads again.
      if ((req.op === 'generate' || req.op === 'generate_stream' || req.op === 'embed') && !req.autoStart && !engine.status().running) {
        throw new WireError('55000', `${req.fn}: the pg-steadytext models are stopped and daemon_auto_start is false`,
          "Run SELECT steadytext_daemon_start(), or SELECT steadytext_config_set('daemon_auto_start', 'true').");
      }
      switch (req.op) {
        case 'generate':
        case 'generate_stream': {
          const text = await engine.generate({ prompt: req.prompt, maxTokens: req.maxTokens, seed: req.seed, temperature: req.temperature, modelSize: req.modelSize, caller, signal, timeoutMs: req.timeoutMs });
          const answer = req.op === 'generate' ? text : streamAnswer(text);
          if (req.cache) {
            const { op, prompt, maxTokens, seed, temperature } = req;
            this.store(req.database, 'generation', req.modelSize, (identity) => ({ op, identity, prompt, maxTokens, seed, temperature, response: answer }));
          }
          return answer;
        }
        case 'embed': {
          const answer = vectorText(await engine.embed({ text: req.text, seed: req.seed, modelSize: req.modelSize, caller, signal, timeoutMs: req.timeoutMs }));
          if (req.cache) {
            const { text, seed } = req;
            this.store(req.database, 'embedding', req.modelSize, (identity) => ({ op: 'embed', identity, text, seed, embedding: answer }));
          }
          return answer;
        }
        case 'status': {
          // The engine serves every path (rewrite, prefetch, callback): its counters are the daemon's.
          const st = engine.status();
          return JSON.stringify({
            running: st.running, pid: st.pid, host: address.host, port: address.port,
            uptime_seconds: st.uptimeSeconds, requests_processed: st.requestsProcessed, errors_count: st.errorsCount,
            avg_latency_ms: st.requestsProcessed ? st.avgLatencyMs : null,
          });
        }
        case 'model_info':
          return JSON.stringify(engine.modelInfo().map((m) => ({
            model_type: m.modelType, model_size: m.modelSize, loaded: m.loaded, memory_mb: m.memoryMb,
          })));
        case 'start':
          await engine.load();
          return 'true';
        case 'stop':
          await engine.unload();
          return 'true';
        case 'restart':
          await engine.reload();
          return 'true';
      }
    }

    // Asynchronous: the caller has its answer; later calls find it in steadytext_cache.
    private store(database: string | undefined, role: ModelRole, size: string, entry: (identity: string) => CacheEntry) {
      const writer = writerFor(database);
      if (!writer.enabled) return;
      void (async () => {
        const identity = await identityFor(role, size);
        if (identity) writer.storeAnswer(role, size, entry(identity)); // without one no lookup could match
      })().catch((e) => log.warn({ err: e }, 'daemon: no model identity for the cache'));
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen.port, opts.listen.host, () => { server.off('error', reject); resolve(); });
  });
  const bound = server.address() as AddressInfo;
  const address = { host: opts.listen.host, port: bound.port };
  log.info({ host: address.host, port: address.port }, 'daemon endpoint listening');

  return {
    address,
    flush: async () => { await Promise.all([...writers.values()].map((w) => w.flush())); },
    stats: () => ({ requests, errors, avgLatencyMs: requests ? latencyTotal / requests : null, connections: all.size, startedAt }),
    async close() {
      if (closing) return;
      closing = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of [...all]) s.close();
      });
      await Promise.all([...writers.values()].map((w) => w.close()));
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Database preparation at proxy start-up

export type { ModelIdentity };

export interface PrepareOptions {
  /** Where the database reaches this daemon (dblink runs on the database server). */
  daemonHost?: string;
  daemonPort?: number;
  schema?: string;
  /** Model identities to register in steadytext_models (the daemon also registers them lazily). */
  identities?: ModelIdentity[];
  /**
   * Whether to write daemonHost/daemonPort into steadytext_config: 'if-default' (default) only replaces
   * the built-in defaults, so an address an administrator set is kept; 'always'; 'never'.
   */
  advertise?: 'if-default' | 'always' | 'never';
  logger?: pino.Logger;
}

/**
 * Installs or upgrades the SQL objects, creates the daemon secret on first use (or reads the existing
 * one: every proxy of a database shares it), registers model identities and the daemon address.
 * The service role must own the steadytext objects (it created them, or is a member of their owner), and
 * be the only role besides superusers that can create objects in their schema (installSql refuses otherwise).
 */
export async function prepareDatabase(serviceUrl: string, o: PrepareOptions = {}): Promise<{ secret: string; version: string; dblink: boolean; migrated: string[]; schema: string; role: string; superuser: boolean }> {
  const client = new pg.Client(serviceConnection(serviceUrl, 'pg-steadytext install'));
  // A connection lost mid-install fails the query in progress; without a listener it would also crash the process.
  client.on('error', (err) => o.logger?.warn({ err }, 'install connection lost'));
  await client.connect();
  try {
    const res = await installSql(client, { schema: o.schema });
    const s = quoteIdent(res.schema);
    let secret: string;
    try {
      await client.query(`INSERT INTO ${s}.steadytext_daemon_secret (id, secret) VALUES (1, $1::pg_catalog.text) ON CONFLICT (id) DO NOTHING`, [randomBytes(32).toString('hex')]);
      secret = (await client.query(`SELECT secret FROM ${s}.steadytext_daemon_secret WHERE id OPERATOR(pg_catalog.=) 1`)).rows[0].secret;
    } catch (e) {
      if ((e as { code?: string }).code === '42501') {
        throw new Error(`pg-steadytext: the service role cannot read ${res.schema}.steadytext_daemon_secret: connect the proxy's service URL as the role that owns the steadytext objects (or a member of it)`, { cause: e });
      }
      throw e;
    }
    await registerModels(client, o.identities ?? [], res.schema);
    const mode = o.advertise ?? 'if-default';
    if (mode !== 'never') {
      const wildcard = (h?: string) => !h || h === '0.0.0.0' || h === '::' || h === '*';
      const wants: Array<[string, string | undefined, string]> = [
        ['daemon_host', wildcard(o.daemonHost) ? undefined : o.daemonHost, 'localhost'],
        ['daemon_port', o.daemonPort === undefined ? undefined : String(o.daemonPort), '5557'],
      ];
      for (const [key, value, builtin] of wants) {
        if (value === undefined) continue;
        const cur = (await client.query(`SELECT value FROM ${s}.steadytext_config WHERE key OPERATOR(pg_catalog.=) $1::pg_catalog.text`, [key])).rows[0]?.value;
        if (cur === value || (mode === 'if-default' && cur !== undefined && cur !== builtin)) continue;
        await client.query(`SELECT ${s}.steadytext_config_set($1::pg_catalog.text, $2::pg_catalog.text)`, [key, value]);
        o.logger?.info({ key, value }, 'daemon address written to steadytext_config');
      }
    }
    const who = (await client.query(`SELECT CURRENT_USER::pg_catalog.text AS role, pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on' AS superuser`)).rows[0];
    return { secret, version: res.version, dblink: res.dblink, migrated: res.migrated, schema: res.schema, role: who.role, superuser: who.superuser };
  } finally {
    await client.end().catch(() => undefined);
  }
}
