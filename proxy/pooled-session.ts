// A client's side of pooling: which server connection it holds and when it gives it back (at the end of
// each transaction, each statement, or the session), and what must follow it from one server connection
// to the next. Settings (startup parameters, SET, RESET, set_config) are read back from the server after
// a transaction that changed them, so what the client has is exactly what the server kept (a rolled-back
// SET is gone, SET LOCAL never counts), and replayed on the next connection where it differs. Named
// prepared statements, the protocol's and SQL PREPARE's alike, follow the client through prepared.ts
// (SQL ones read back from pg_prepared_statements after the transaction that made or dropped them). What
// cannot move (session advisory locks, temporary objects, WITH HOLD cursors, LISTEN, LOAD) pins the
// connection to the client until a check after the transaction finds it let go.
//
// A statement whose result type changed since it was prepared (ALTER TABLE ...: the server refuses its
// cached plan with 0A000) is prepared again and its exchange run again, when nothing of the client's was
// done before it in that exchange, it ran outside a transaction block and nothing was sent after it: the
// Bind, the Describe of the statement (its plan is checked there too: pgx and asyncpg describe before they
// bind), or a Query that is one EXECUTE, of such an exchange is "watched" (a few fields, no handler), what
// follows it upstream up to its Sync kept in a small buffer, and the server connection's own ErrorResponse
// and ReadyForQuery handling asks the session (holdError, releaseHeld): only that error path pays.
//
// Lending: in transaction mode, a transaction's end with nobody waiting for a connection keeps the connection
// with the client, in the native relay (relay.c), which runs the next transactions with no JS at all and gives
// the session back at anything the pooler must see (a statement that may change the session, a named prepared
// statement). The pool counts a lent connection idle and reclaims it when another client needs it, a console
// command or a timer acts; between transactions it is then released here as at any transaction's end.
// Named statements the connection already has are the relay's too (prepared.ts lendable): it binds and describes
// them under their server-side names, and hands back the uses (the connection's LRU) and the exchange one began,
// which is watched here from then on as if JS had sent it (0A000).
//
// The hub: under contention a client joins its pool's native hub (pool-hub.ts), which hands servers from client to
// client in C at transaction ends. A member carries its named statements as a lend's relay does (prepared.ts
// hubTable), renamed on whichever server it holds that has them; a statement the server lacks sends the client back
// here, which prepares it there, and the client joins again at the transaction's end.
import type { Logger } from 'pino';
import type { Outgoing, ResponseHandler } from './interceptor.js';
import { PoolError, type Pool, type PoolClient, type PooledServer, type ReplicationKind } from './pool.js';
import type { PgbSubject } from './pgbouncer-log.js';
import {
  ClientStatements,
  UNKNOWN_STATEMENT,
  dropsEveryStatement,
  forgetServerStatements,
  literals,
  namesStatements,
  sweepLiterals,
  type LentStatements,
  type PreparedOutcome,
  type SharedStatement,
  type StatementCache,
} from './prepared.js';
import { Be, Fe, SYNC, query, readCString, readCommandTag, readDataRow, readErrorFields, readTxStatus, withStatementName, type TxStatus } from './protocol.js';
import { RelayPool, type HubMember, type RelayOutcome, type RelayPoolCounts, type RelayState } from './relay.js';
import { settingsKey, type PoolHub } from './pool-hub.js';
import { statementEffects, type EffectsOptions, type StatementEffects } from './statement-effects.js';
import type { RequestTracker } from './tracker.js';
import type { SessionLink } from './upstream.js';

/** What the pooled session needs of its client session (client.ts). */
export interface PooledHost {
  readonly id: number;
  readonly log: Logger;
  readonly tracker: RequestTracker;
  /** The client session as the server connection's link while it holds it. */
  readonly link: SessionLink;
  /** Sends frontend messages upstream now, their answers to the handlers (registered in the tracker). */
  sendUpstream(out: Outgoing): void;
  /** Nothing is half-sent or queued from the client: the server connection may change hands. */
  atRest(): boolean;
  /** The pool could not serve the client: it ends with this error. */
  poolFailed(err: PoolError): void;
  /** What the client did last: its last message, its transaction status, requests unanswered. */
  activity(): { lastActive: number; txStatus: TxStatus; inFlight: number };
  /** The session holds this connection now (before anything is sent on it). */
  attached(s: PooledServer): void;
  /** The connection went back to the pool (the session forgets it). */
  released(): void;
  /** How pgBouncer's logfile names the client (C-0x… db/user@address). */
  pgbSubject?(): PgbSubject;
  /**
   * Lending: hands both sockets to the native relay now (RelayPool flags; `names`: the statements it renames
   * itself, LentStatements.bytes); false when it cannot take them.
   */
  lend?(flags: number, names: Buffer | null): boolean;
  /** Lending: the relay gives the sockets back now (the session continues in JS; it reports through returned()). */
  unlend?(): void;
  /** Lending: what the relay reports while it has the sockets (null: it does not); refreshes the client's lastActive. */
  relayState?(): RelayState | null;
  /**
   * The hub: the client joins it, with `s` (the session lets go of it) or without a server, and the statements it
   * renames itself (LentStatements.bytes, or null); false: it stays in JS.
   */
  enterHub?(hub: PoolHub, s: PooledServer | null, flags: number, names: Buffer | null): boolean;
  /** The hub: takes the session back now (it reports through fromHub and hubReturned). */
  hubStop?(): void;
  /** The hub: what its relay reports while the client is a member; refreshes the client's lastActive. */
  hubState?(): RelayState | null;
  /** The hub: what C says of the client as a member (null: not one). */
  hubMember?(): HubMember | null;
}

const NO_COUNTS: RelayPoolCounts = { queries: 0, xacts: 0, queryUs: 0, xactUs: 0, queryOpenUs: -1, xactOpenUs: -1, binds: 0 };

export type PinReason = 'advisory' | 'temp' | 'hold' | 'listen' | 'load' | 'prepare';

/**
 * The exchange the pooler may run again if the server refuses its prepared statement's plan (0A000). One per
 * session, reused: watching costs a few stores per exchange, keeping what follows a copy into `rest`.
 */
interface Watch {
  /** 0: none; 1: its message is on its way upstream; 2: what follows it is being kept. */
  state: number;
  /** Fe.Bind, Fe.Describe (of a statement), or Fe.Query (a Query that is one EXECUTE). */
  code: number;
  /** The message as sent (Bind under the shared name; the Query's own copy). */
  sent: Buffer | null;
  st: SharedStatement | null;
  /** The server-side name `st` had when sent (for an EXECUTE: of the definition its copy came from). */
  version: string;
  /** The EXECUTEd name (Query). */
  name: string;
  server: PooledServer | null;
  /** What went upstream after it (up to REST_BYTES). */
  rest: Buffer | null;
  restLen: number;
  /** The server's 0A000, held back until its ReadyForQuery. */
  error: Buffer | null;
}

/** Kept after a watched message: an Execute, Describe, Sync or two fit many times over. */
const REST_BYTES = 256;
const EMPTY = Buffer.alloc(0);

/**
 * What may follow a watched Bind or Describe up to its Sync for the exchange to be run again: Execute, Describe
 * of a portal, Flush; after a Describe of the statement also a Bind or Describe of that statement (under its
 * server-side name when sent, `version`: renamed when sent again, see renamed()).
 */
function repeatable(rest: Buffer, len: number, code: number, version: string): boolean {
  let pos = 0;
  while (pos + 5 <= len) {
    const c = rest[pos];
    const end = pos + 1 + rest.readInt32BE(pos + 1);
    if (end > len) return false;
    if (c === Fe.Sync) return end === len && code !== Fe.Query;
    if (code === Fe.Query) return false;
    if (!(c === Fe.Execute || c === Fe.Flush || (c === Fe.Describe && rest[pos + 5] === 0x50))) {
      if (code !== Fe.Describe || !((c === Fe.Bind || (c === Fe.Describe && rest[pos + 5] === 0x53)) && namesStatement(rest, pos, end, version)))
        return false;
    }
    pos = end;
  }
  // A Query's exchange is the Query: nothing may follow it.
  return pos === len && code === Fe.Query && len === 0;
}

/** Drops the ParameterDescription of a Describe run again. */
const NO_PARAMETERS: ResponseHandler = { onMessage: (m) => (m[0] === Be.ParameterDescription ? null : m) };

/** Does the Bind or Describe of a statement at rest[pos, end) name the statement `name`? */
function namesStatement(rest: Buffer, pos: number, end: number, name: string): boolean {
  const at = rest[pos] === Fe.Bind ? rest.indexOf(0, pos + 5) + 1 : pos + 6;
  const nul = rest.indexOf(0, at);
  return at > 0 && nul >= 0 && nul < end && rest.toString('latin1', at, nul) === name;
}

/** What followed a watched Describe, its Binds and Describes of the statement under the statement's new name. */
function renamed(rest: Buffer, len: number, nameBytes: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let pos = 0; pos < len;) {
    const end = pos + 1 + rest.readInt32BE(pos + 1);
    const m = Buffer.from(rest.subarray(pos, end));
    out.push(m[0] === Fe.Bind || (m[0] === Fe.Describe && m[5] === 0x53) ? withStatementName(m, nameBytes) : m);
    pos = end;
  }
  return out;
}

/** The server refused a prepared statement's plan because its result type changed (the routine is not translated, the message may be). */
function resultTypeChanged(f: Record<string, string>): boolean {
  return f.C === '0A000' && (f.R === 'RevalidateCachedQuery' || f.M === 'cached plan must not change result type');
}

/** Client encodings whose multibyte characters may hold ASCII bytes (PostgreSQL's names and aliases, cleaned as it cleans them). */
const NOT_ASCII_SAFE = new Set(
  [
    'sjis',
    'shiftjis',
    'mskanji',
    'win932',
    'windows932',
    'shiftjis2004',
    'big5',
    'win950',
    'windows950',
    'gbk',
    'win936',
    'windows936',
    'cp936',
  ].concat(['uhc', 'win949', 'windows949', 'gb18030', 'johab']),
);
const ASCII_SAFE: EffectsOptions = { asciiSafe: true };
const NOT_SAFE: EffectsOptions = {};

/** Startup parameters that are not settings. */
const NOT_SETTINGS = new Set(['user', 'database', 'options', 'replication']);

/** The check that decides whether a pinned client let go (one round trip, only after statements that may have). */
const PIN_CHECK =
  "SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks WHERE locktype OPERATOR(pg_catalog.=) 'advisory' AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())," +
  ' (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()),' +
  ' (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE is_holdable),' +
  ' (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels()),' +
  ' (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)';
const PIN_COLUMNS: PinReason[] = ['advisory', 'temp', 'hold', 'listen', 'prepare'];

/** Every setting the session has that is not the server's default, as text the server takes back. */
const READ_SETTINGS =
  "SELECT pg_catalog.lower(name), pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source OPERATOR(pg_catalog.=) ANY (ARRAY['client','session'])";

export class PooledSession implements PoolClient {
  server: PooledServer | null = null;
  /** The client's settings: lower-cased name → value. */
  readonly settings = new Map<string, string>();
  readonly pins = new Set<PinReason>();
  /** Protocol-level named statements (used while max_prepared_statements > 0 and the pool is not in session mode). */
  readonly statements: ClientStatements;
  /** How statementEffects reads the client's text that is not UTF-8: byte for byte where its encoding allows. */
  private effectsOpts: EffectsOptions = ASCII_SAFE;
  /** Settings may have changed in the current transaction: read them back at its end. */
  private settingsDirty = false;
  /** Pins may have been taken or let go: check at the end of the transaction. */
  private pinsDirty = false;
  /** An internal exchange (read-back, check, replay) is in flight on the server connection. */
  private internal = 0;

  /** The pooler's own exchanges in flight (each one request in the tracker). */
  get internalInFlight(): number {
    return this.internal;
  }
  /** Server messages that answered the pooler's own exchanges so far (a rerun counts only the client's: client.ts). */
  get internalMessages(): number {
    return this.internalMsgs;
  }
  private internalMsgs = 0;
  /** SQL may have prepared or dropped statements (statements.uncertain): read them back at the transaction's end. */
  private statementsDirty = false;
  private readonly watch: Watch = {
    state: 0,
    code: 0,
    sent: null,
    st: null,
    version: '',
    name: '',
    server: null,
    rest: null,
    restLen: 0,
    error: null,
  };
  /** When the client began waiting for a connection, or took one (SHOW CLIENTS, stats). */
  waitingSince = 0;
  /** Set while it leaves the hub's queue for JS's (PoolHub.starved) or SUSPEND held it, read by Pool.acquire. */
  waitedBefore = 0;
  linkedAt = 0;
  /** performance.now() at the transaction's first message (SHOW STATS' times, mostly under a millisecond); 0: none open. */
  private xactStart = 0;
  /** performance.now() at the client's current request's first message since the last ReadyForQuery; 0: none open. */
  private queryStart = 0;
  /** When the server last said it was ready (idle_transaction_timeout counts from there, as pgBouncer's does). */
  private readyAt = 0;
  private waiting = false;
  /** The client is a member of its pool's native hub (pool-hub.ts): C gives it servers; `server` is null meanwhile. */
  inHub = false;
  /** The connection is lent to the native relay (Pool.lent); what of its counts the stats have already. */
  private lent = false;
  /**
   * Transaction ends at which neither relay (the hub's, lending's) is tried, and the next back-off: a client whose
   * every transaction a relay must hand back at once (a SET each time) would pay a start and an exit per transaction
   * for nothing. Counted at each transaction's end (ready), so that a client in contention, where no lend is
   * possible, comes back to the hub.
   */
  private lendSkip = 0;
  private lendBackoff = 0;
  private seen: RelayPoolCounts = NO_COUNTS;
  private seenBytes = { fromClient: 0, fromServer: 0 };
  /** The statements the current lend's relay renames itself (null: none). */
  private lentStatements: LentStatements | null = null;
  /** The statements the client renames itself while in the hub (null: none). */
  private hubStatements: LentStatements | null = null;
  /**
   * A replication client (pgBouncer 1.23+): it owns one server connection, opened for it with its startup
   * parameters, and everything it sends is relayed as is: no settings replay, statement renaming or pin checks,
   * and no SQL of the proxy's on a walsender.
   */
  replication: ReplicationKind | null = null;
  private replicationStartup: ReadonlyMap<string, string> | null = null;

  constructor(
    private readonly host: PooledHost,
    readonly pool: Pool,
    startup: ReadonlyMap<string, string>,
    cache: StatementCache,
  ) {
    // ignore_startup_parameters: accepted from the client and not applied, as pgBouncer does.
    const ignored = new Set(pool.pooler.settings.ignoreStartupParameters.map((p) => p.toLowerCase()));
    for (const [k, v] of startup) if (!NOT_SETTINGS.has(k.toLowerCase()) && !ignored.has(k.toLowerCase())) this.settings.set(k.toLowerCase(), v);
    const options = startup.get('options');
    if (options) {
      // `options` itself in the list: as pgBouncer, what it holds is applied only where pgBouncer tracks it, the
      // rest ignored (an operator's way to have clients' unknown switches dropped rather than carried).
      const only = ignored.has('options') ? trackedByPgBouncer(pool.pooler.settings.trackExtraParameters) : null;
      for (const [k, v] of optionSettings(options) ?? []) {
        if (!ignored.has(k) && (only === null || only.has(k))) this.settings.set(k, v);
      }
    }
    pool.clients.add(this);
    if (startup.has('replication')) this.replicationStartup = startup;
    this.statements = new ClientStatements(
      cache,
      () => pool.pooler.settings.maxPreparedStatements,
      pool.stats,
      (text) => this.pgbLog('ERROR', text),
    );
    this.encoding(this.settings.get('client_encoding'));
  }

  /** The client's encoding (unset: the database's, which is ASCII-safe), for statementEffects and statement identity. */
  private encoding(name: string | undefined): void {
    const n = (name ?? '').toLowerCase().replace(/[^a-z0-9]/g, '');
    this.effectsOpts = NOT_ASCII_SAFE.has(n) ? NOT_SAFE : ASCII_SAFE;
    this.statements.encoding = n === 'utf8' || n === 'unicode' ? '' : n;
  }

  /** Online restart (takeover.ts): the read-backs and pin check due at the end of the current transaction, carried over. */
  get due(): { settings: boolean; pins: boolean; statements: boolean } {
    return { settings: this.settingsDirty, pins: this.pinsDirty, statements: this.statementsDirty };
  }

  set due(d: { settings: boolean; pins: boolean; statements?: boolean }) {
    this.settingsDirty = d.settings;
    this.pinsDirty = d.pins;
    this.statementsDirty = d.statements ?? false;
  }

  /**
   * Online restart: the exchange watched for a 0A000, if any, is watched no more (after the handover a 0A000
   * reaches the client, as inside a transaction block); false while one is held for its ReadyForQuery.
   */
  unwatchForHandover(): boolean {
    if (this.watch.state !== 0 && this.watch.error !== null) return false;
    this.watch.state = 0;
    return true;
  }

  /** Statement names are the proxy's (pgBouncer: not in session mode, and max_prepared_statements not 0; read at each message). */
  get preparing(): boolean {
    return this.pool.mode !== 'session' && this.replication === null && this.pool.pooler.settings.maxPreparedStatements > 0;
  }

  /**
   * A replication client logged in: its own server connection is opened (waiting while the pool is full), then
   * held until it leaves. `done` gets the server's parameters for the client's welcome, or why it ends.
   */
  startReplication(kind: ReplicationKind, done: (r: Map<string, string> | PoolError) => void): void {
    this.replication = kind;
    const ignored = new Set(this.pool.pooler.settings.ignoreStartupParameters.map((p) => p.toLowerCase()));
    const params = new Map<string, string>();
    // As pgBouncer: the client's parameters and its options verbatim (any switch: the connection is its alone).
    for (const [k, v] of this.replicationStartup ?? []) {
      const key = k.toLowerCase();
      if (key === 'options' || (!NOT_SETTINGS.has(key) && !ignored.has(key))) params.set(k, v);
    }
    this.waiting = true;
    this.waitingSince = Date.now();
    this.pool.acquireReplication(this, kind, params, (s) => {
      this.waiting = false;
      this.waitingSince = 0;
      if (s instanceof PoolError) return done(s);
      this.server = s;
      this.linkedAt = Date.now();
      this.pool.stats.serverAssignmentCount++;
      s.conn.attach(this.host.link);
      this.host.attached(s);
      done(new Map(s.params));
    });
  }

  private pgbLog(level: 'ERROR' | 'LOG', text: string): void {
    this.pool.pooler.pgbLog.line(level, text, this.host.pgbSubject?.());
  }

  get id(): number {
    return this.host.id;
  }

  get pinReason(): string {
    return [...this.pins].join(',');
  }

  /**
   * SUSPEND: the client waiting for a server connection stops waiting (it moves with its request unsent, or waits
   * again at RESUME, in its place: the ms it waited so far). 0: it was not waiting.
   */
  stopWaiting(): number {
    if (!this.waiting) return 0;
    this.waiting = false;
    this.pool.forget(this);
    const waited = Math.max(1, Date.now() - this.waitingSince);
    this.waitingSince = 0;
    return waited;
  }

  /** A server connection for the client's next message: now, or null and `granted` once it has one. */
  acquire(granted: () => void): PooledServer | null {
    if (this.server) return this.server;
    this.waitingSince = Date.now() - this.waitedBefore;
    const got = this.pool.acquire(this, (s) => {
      this.waiting = false;
      // Called from another client's release: a failure here is this client's, not that one's.
      try {
        this.attach(s);
        granted();
      } catch (err) {
        this.host.log.error({ err }, 'could not hand the server connection to the client');
        this.host.poolFailed(new PoolError({ severity: 'FATAL', code: 'XX000', message: 'internal error in the pooler' }));
      }
    });
    if (got === null) {
      this.waiting = true;
      return null;
    }
    this.attach(got);
    return got;
  }

  private attach(s: PooledServer): void {
    this.server = s;
    this.linkedAt = Date.now();
    this.waitingSince = 0;
    this.pool.stats.serverAssignmentCount++;
    s.conn.attach(this.host.link);
    this.host.attached(s);
    this.replaySettings(s);
    if (this.preparing) {
      // Other clients' statements under their own names that they no longer have (prepared.ts).
      const closes = sweepLiterals(s);
      if (closes.length > 0) this.host.sendUpstream([...closes, { bytes: SYNC, handler: { onMessage: () => null } }]);
    }
  }

  /**
   * A client message begins (its header read): the first since the last ReadyForQuery starts a request, and
   * the first of a transaction a transaction (SHOW STATS' query_count and xact_count, counted as pgBouncer does).
   */
  began(code: number): void {
    if (this.queryStart !== 0 || code === Fe.Terminate) return;
    const now = (this.queryStart = performance.now());
    this.pool.stats.queryCount++;
    if (this.xactStart === 0) {
      this.xactStart = now;
      this.pool.stats.xactCount++;
    }
  }

  /** Client messages the pooled session must see whole while it holds a connection. */
  wants(code: number): boolean {
    if (this.replication !== null) return code === Fe.Terminate;
    if (code === Fe.Query || code === Fe.Terminate) return true;
    if (!this.preparing) return code === Fe.Parse;
    return code === Fe.Parse || code === Fe.Bind || code === Fe.Describe || code === Fe.Close;
  }

  /** A client message on its way to the server connection: its effects noted, statement names moved. */
  forward(msg: Buffer, code: number): PreparedOutcome | undefined {
    if (this.replication !== null) return undefined;
    const s = this.server!;
    switch (code) {
      case Fe.Query: {
        const e = statementEffects(msg, 5, msg.length - 1, this.effectsOpts);
        this.note(e, false);
        if (e === null) return undefined;
        const send = this.preparing && namesStatements(e) ? this.sqlNames(e, s, true) : [];
        // As pgBouncer: the statements go when the server says DEALLOCATE ALL / DISCARD ALL was done.
        const handler: ResponseHandler | undefined =
          e.discard === 'all' || e.deallocates.includes('*') ? { onMessage: (m) => (this.droppedAll(m, s), m) } : undefined;
        const bytes = e.executeAlone && this.preparing ? this.watchExecute(e.executes[0], msg, s) : msg;
        if (send.length === 0 && handler === undefined && bytes === msg) return undefined;
        send.push({ bytes, handler });
        return { send };
      }
      case Fe.Parse: {
        const e = statementEffects(msg, readCStringEnd(msg, 5), msgTextEnd(msg), this.effectsOpts);
        this.note(e, true);
        if (!this.preparing) return undefined;
        const pre = e !== null && namesStatements(e) ? this.sqlNames(e, s, false) : [];
        const out = this.statements.parse(msg, s, e !== null && e.executes.length > 0 ? e.executes : null);
        if (pre.length === 0) return out;
        if (out === undefined) return { send: [...pre, { bytes: msg, handler: undefined }] };
        out.send.unshift(...pre);
        return out;
      }
      case Fe.Bind:
        return this.preparing ? this.use(msg, code, s) : undefined;
      case Fe.Describe:
        return msg[5] === 0x53 && this.preparing ? this.use(msg, code, s) : undefined;
      case Fe.Close:
        return msg[5] === 0x53 && this.preparing ? this.statements.close(msg) : undefined;
    }
    return undefined;
  }

  /** Bind, or Describe of a statement: under its shared name; the first thing its exchange runs, nothing else in flight, it may be run again (0A000). */
  private use(msg: Buffer, code: number, s: PooledServer): PreparedOutcome | undefined {
    const out = this.known(this.statements.use(msg, s), msg);
    const t = this.host.tracker;
    if (out !== undefined && out.send.length > 0 && t.exchangeClean && t.size === this.internal) this.watchUse(out, code, s);
    return out;
  }

  /** SQL naming statements: the server connection's statements of those names made the client's first (prepared.ts). */
  private sqlNames(e: StatementEffects, s: PooledServer, beforeQuery: boolean): Outgoing {
    const out = this.statements.sql(e, s, beforeQuery);
    if (e.prepares.length > 0 || e.deallocates.length > 0) this.statementsDirty = true;
    return out;
  }

  // ---- 0A000: a statement prepared again, its exchange run again ------------------------------------------

  /** Is an exchange watched (client.ts hands over what goes upstream meanwhile)? */
  get watching(): boolean {
    return this.watch.state !== 0;
  }

  private watchUse(out: PreparedOutcome, code: number, s: PooledServer): void {
    const st = this.statements.lastUsed!;
    this.watchFrom(1, code, out.send[out.send.length - 1].bytes, st, st.name, '', s);
  }

  /** Watches the exchange `sent` begins (see Watch), nothing of what follows it kept yet. */
  private watchFrom(state: number, code: number, sent: Buffer, st: SharedStatement, version: string, name: string, s: PooledServer): void {
    const w = this.watch;
    w.state = state;
    w.code = code;
    w.sent = sent;
    w.st = st;
    w.version = version;
    w.name = name;
    w.server = s;
    w.restLen = 0;
    w.error = null;
  }

  /**
   * The relay's exchange begun by a renamed Bind or Describe (o.watch, as the server got it, of the table's entry
   * o.watchEntry), if any, is watched from here on, as watchUse() would have watched it from its first message: the
   * relay began it only while nothing was outstanding, and JS has caught up with what it forwarded.
   */
  private watchRelayed(o: RelayOutcome, named: LentStatements, s: PooledServer): void {
    const sent = o.watch;
    const e = o.watchEntry >= 0 ? named.entries[o.watchEntry] : undefined;
    if (sent === null || e === undefined) return;
    const first = 1 + sent.readInt32BE(1);
    const restLen = sent.length - first;
    if (restLen > REST_BYTES || (sent[0] !== Fe.Bind && sent[0] !== Fe.Describe)) return;
    this.watchFrom(2, sent[0], sent.subarray(0, first), e.st, e.server, '', s);
    const w = this.watch;
    w.rest ??= Buffer.allocUnsafe(REST_BYTES);
    sent.copy(w.rest, 0, first);
    w.restLen = restLen;
  }

  /** A Query that is one EXECUTE of a statement the client has: watched, sent as its own copy (returned). */
  private watchExecute(name: string, msg: Buffer, s: PooledServer): Buffer {
    const t = this.host.tracker;
    const st = this.statements.get(name);
    const version = literals(s).get(name)?.version;
    if (st === undefined || !version || this.statements.uncertain.has(name) || !t.exchangeClean || t.size !== this.internal) return msg;
    const sent = Buffer.from(msg);
    this.watchFrom(1, Fe.Query, sent, st, version, name, s);
    return sent;
  }

  /** The interceptor sent a client message in its own form: no exchange is run again past it. */
  unwatch(): void {
    this.watch.state = 0;
  }

  /** Bytes went upstream on the client's account while an exchange is watched. */
  sentUpstream(bytes: Buffer): void {
    const w = this.watch;
    if (w.state === 1) {
      if (bytes === w.sent) w.state = 2;
      return;
    }
    if (w.restLen + bytes.length > REST_BYTES) {
      w.state = 0; // more than one exchange's worth: it cannot be run again anyway
      return;
    }
    w.rest ??= Buffer.allocUnsafe(REST_BYTES);
    bytes.copy(w.rest, w.restLen);
    w.restLen += bytes.length;
  }

  /**
   * An ErrorResponse from the server connection while an exchange is watched: true when it is the watched
   * message's 0A000 (the connection drops it; releaseHeld decides at the ReadyForQuery).
   */
  holdError(msg: Buffer): boolean {
    const w = this.watch;
    if (w.state !== 2 || w.server !== this.server || this.host.tracker.request !== w.code) return false;
    // Its Sync must have gone already: a client waiting for this answer (after a Flush) before it sends one
    // would wait for ever for a ReadyForQuery.
    if (!repeatable(w.rest ?? EMPTY, w.restLen, w.code, w.version) || !resultTypeChanged(readErrorFields(msg))) return false;
    w.error = Buffer.from(msg);
    return true;
  }

  /**
   * The ReadyForQuery after a held 0A000. Outside a transaction block, with nothing sent after the exchange
   * and nothing else in flight, the statement is prepared again (under a new name: every connection's copy is
   * stale) and the exchange sent again; its answers reach the client as if the first had not happened, and
   * null is returned (this ReadyForQuery is not the client's). Otherwise the error, then the ReadyForQuery.
   */
  releaseHeld(rfq: Buffer): Buffer[] | null {
    const w = this.watch;
    const error = w.error!;
    const state = w.state;
    w.error = null;
    w.state = 0;
    const s = this.server;
    if (
      state !== 2 ||
      s === null ||
      s !== w.server ||
      readTxStatus(rfq) !== 'I' ||
      this.host.tracker.size !== 0 ||
      !this.host.atRest() ||
      !repeatable(w.rest ?? EMPTY, w.restLen, w.code, w.version)
    ) {
      return [error, rfq];
    }
    const st = w.st!;
    let out: Outgoing;
    if (w.code === Fe.Bind) {
      out = this.statements.replan(st, w.version, s);
      out.push({ bytes: withStatementName(w.sent!, st.nameBytes), handler: undefined });
      out.push({ bytes: Buffer.from(w.rest!.subarray(0, w.restLen)), handler: undefined });
    } else if (w.code === Fe.Describe) {
      out = this.statements.replan(st, w.version, s);
      // The first try's ParameterDescription reached the client before the error (the types are the Parse's).
      out.push({ bytes: withStatementName(w.sent!, st.nameBytes), handler: NO_PARAMETERS });
      for (const m of renamed(w.rest!, w.restLen, st.nameBytes)) out.push({ bytes: m, handler: undefined });
    } else {
      out = this.statements.replanLiteral(w.name, st, w.version, s);
      out.push({ bytes: w.sent!, handler: undefined });
    }
    this.host.log.debug(
      { statement: w.name || w.version, now: st.name },
      'cached plan changed result type: statement prepared again, exchange run again',
    );
    this.host.sendUpstream(out);
    return null;
  }

  /**
   * A Bind or Describe of a name the client never prepared: pgBouncer ends the client ("prepared statement
   * did not exist"), since its pipeline cannot be answered in order otherwise.
   */
  private known(out: PreparedOutcome | undefined | typeof UNKNOWN_STATEMENT, msg: Buffer): PreparedOutcome | undefined {
    if (out !== UNKNOWN_STATEMENT) return out;
    const name = msg[0] === Fe.Bind ? readCString(msg, readCString(msg, 5)[1])[0] : readCString(msg, 6)[0];
    this.pgbLog('ERROR', `prepared statement '${name}' not found`);
    this.host.poolFailed(new PoolError({ severity: 'FATAL', code: '08P01', message: 'prepared statement did not exist' }));
    return { send: [] };
  }

  /** The server's CommandComplete of the client's DEALLOCATE ALL / DISCARD ALL: every statement is gone. */
  private droppedAll(m: Buffer, s: PooledServer): void {
    if (m[0] !== Be.CommandComplete) return;
    if (!dropsEveryStatement(readCommandTag(m))) return;
    this.statements.clear();
    forgetServerStatements(s);
  }

  /** `parsed`: from a Parse, whose effects happen later at its Execute, unseen: the statements are dropped now. */
  private note(e: StatementEffects | null, parsed: boolean): void {
    if (e === null) return;
    if (e.sets.length > 0 || e.unknownSet || e.discard === 'all') this.settingsDirty = true;
    // SET client_encoding / SET NAMES: the text that follows is in that encoding (the read-back confirms it).
    for (const x of e.sets) if (x.name === 'client_encoding' && x.value !== null) this.encoding(x.value);
    if (parsed && (e.discard === 'all' || e.deallocates.includes('*'))) {
      this.statements.clear();
      this.server?.prepared.clear();
      if (this.server) literals(this.server).clear();
    }
    // SQL PREPARE pins only where the proxy does not keep statements (session mode, max_prepared_statements 0).
    const pinPrepare = !this.preparing && (e.prepares.length > 0 || e.deallocates.length > 0);
    if (e.pins.length > 0 || e.unpins.length > 0 || pinPrepare || e.discard !== null) {
      this.pinsDirty = true;
      for (const p of e.pins) this.pins.add(p);
      if (pinPrepare && e.prepares.length > 0) this.pins.add('prepare');
    }
  }

  /**
   * ReadyForQuery reached the client. At the end of a transaction the read-back and pin check run if due,
   * then the connection goes back to the pool when the mode says so and nothing ties the client to it.
   */
  ready(status: TxStatus): void {
    const s = this.server;
    if (s === null) return;
    this.readyAt = Date.now();
    // A request ends at the ReadyForQuery after which nothing is outstanding (pgBouncer's query and
    // transaction times; a pipeline counts as one). The proxy's own exchanges are no request of the client's.
    const quiet = this.host.tracker.size === 0 && this.internal === 0;
    if (quiet) this.watch.state = 0; // the watched exchange, if any, is over
    if (quiet && this.queryStart !== 0) {
      const now = performance.now();
      this.pool.stats.queryTimeUs += Math.round((now - this.queryStart) * 1000);
      this.queryStart = 0;
      if (status === 'I' && this.xactStart !== 0) {
        this.pool.stats.xactTimeUs += Math.round((now - this.xactStart) * 1000);
        this.xactStart = 0;
      }
    }
    if (status !== 'I' || this.replication !== null) return;
    if (!quiet || !this.host.atRest()) return;
    if (this.settingsDirty) return this.readSettings(s);
    if (this.pinsDirty) return this.checkPins(s);
    if (this.statementsDirty) return this.readStatements(s);
    if (this.pool.mode === 'session' || this.pins.size > 0) return;
    if (this.lendSkip > 0) this.lendSkip--;
    else if (this.enterHub(s) || this.lend(s)) return;
    this.release(true);
  }

  // ---- the hub: servers handed between clients in C (pool-hub.ts) ------------------------------------------

  /**
   * At a transaction's end with nothing due: a client whose session needs nothing replayed on any of the hub's
   * servers (the hub's settings, no statements SQL names, no pins) joins the hub; with its server when nobody waits
   * in JS and the server fits, else without (the server goes back to the pool first). True: the server is let go of.
   */
  private enterHub(s: PooledServer): boolean {
    if (this.host.enterHub === undefined || this.replication !== null || this.watch.state !== 0) return false;
    if (this.statements.uncertain.size > 0 || this.pins.size > 0) return false;
    // Its named statements go with it (renamed in C on a server that has them, else the client comes back here);
    // none that SQL names (they live on one server connection under the client's own names).
    const named = this.statements.size > 0 ? this.statements.hubTable() : null;
    if (this.statements.size > 0 && named === null) return false;
    const hub = this.pool.hubFor();
    if (hub === null || !this.pool.hubOpen()) return false;
    const key = settingsKey(this.settings);
    hub.key ??= key;
    if (hub.key !== key) return false;
    // Every other message naming a statement goes to JS: no client reaches another's on a shared server.
    const flags = RelayPool.lend | RelayPool.named;
    const names = named !== null && named.entries.length > 0 ? named : null;
    const keep = this.pool.waiters.length === 0 && this.pool.replicationWaiting === 0 && hub.fits(s, settingsKey(s.applied)) && literals(s).size === 0;
    if (!keep) {
      this.release(true);
      if (this.host.enterHub(hub, null, flags, names?.bytes ?? null)) this.joined(names);
      return true;
    }
    if (!this.host.enterHub(hub, s, flags, names?.bytes ?? null)) return false;
    // The hub holds it: no longer the session's (Pool.lent has it, its client the hub).
    this.server = null;
    this.linkedAt = 0;
    this.joined(names);
    return true;
  }

  private joined(names: LentStatements | null): void {
    this.inHub = true;
    this.hubStatements = names;
    this.seen = NO_COUNTS;
    this.seenBytes = { fromClient: 0, fromServer: 0 };
  }

  /** The hub's relay exited holding `s` (null: none): the session's connection from now on. */
  fromHub(s: PooledServer | null): void {
    if (s === null) return;
    this.server = s;
    this.linkedAt = Date.now();
    s.conn.attach(this.host.link);
    this.host.attached(s);
  }

  /** The hub's relay exited: what it counted goes into the stats; between transactions the connection goes back as at ready(). */
  hubReturned(o: RelayOutcome): void {
    if (!this.inHub) return;
    this.inHub = false;
    this.relayEnded(o);
    const named = this.hubStatements;
    this.hubStatements = null;
    // The uses went to each server as it left the hub (pool-hub.ts); the exchange a renamed message began is on the
    // server held now (C hands servers over only between exchanges), watched from here on as a lend's.
    const s = this.server;
    if (named !== null && s !== null) this.watchRelayed(o, named, s);
    // Stopped between transactions holding a server (a timer, the console): no ReadyForQuery will release it.
    if (this.server !== null) queueMicrotask(() => this.ready(this.host.activity().txStatus));
  }

  /** When the client began waiting for a connection (0: it does not wait), in JS or queued in the hub (SHOW CLIENTS, POOLS). */
  waitStart(): number {
    if (!this.inHub) return this.waitingSince;
    const m = this.host.hubMember?.();
    return m?.state === 'queued' ? Date.now() - Math.floor(m.queuedUs / 1000) : 0;
  }

  /** What the hub's relay counted so far goes into the stats (SHOW STATS). */
  hubSync(): void {
    const st = this.inHub ? this.host.hubState?.() : null;
    if (st) this.count(st.pool, { fromClient: st.bytesFromClient, fromServer: st.bytesFromServer });
  }

  // ---- lending: the connection kept with the client, in the native relay ----------------------------------

  /** At a transaction's end with nothing due: the relay takes the session when the pool lets the client keep the connection. */
  private lend(s: PooledServer): boolean {
    if (this.replication !== null || this.watch.state !== 0 || this.host.lend === undefined || !this.pool.mayLend(s)) return false;
    // Named statements are renamed per server connection (prepared.ts): the relay hands them to JS, but for those
    // of the client's this connection has, which it renames itself.
    const named = this.preparing ? this.statements.lendable(s) : null;
    if (!this.host.lend(RelayPool.lend | (this.preparing ? RelayPool.named : 0), named?.bytes ?? null)) return false;
    this.lent = true;
    this.lentStatements = named;
    this.seen = NO_COUNTS;
    this.seenBytes = { fromClient: 0, fromServer: 0 };
    this.pool.lendOut(s);
    return true;
  }

  /** What the relay counted since the last look goes into the pool's stats. */
  private count(c: RelayPoolCounts, bytes: { fromClient: number; fromServer: number }): void {
    const st = this.pool.stats;
    const was = this.seen;
    st.queryCount += c.queries - was.queries;
    st.xactCount += c.xacts - was.xacts;
    // Each transaction the relay began is one pgBouncer would have assigned the connection for.
    st.serverAssignmentCount += c.xacts - was.xacts;
    st.queryTimeUs += c.queryUs - was.queryUs;
    st.xactTimeUs += c.xactUs - was.xactUs;
    st.bindCount += c.binds - was.binds;
    st.bytesReceived += bytes.fromClient - this.seenBytes.fromClient;
    st.bytesSent += bytes.fromServer - this.seenBytes.fromServer;
    this.seen = c;
    this.seenBytes = bytes;
  }

  /**
   * The relay gave the sockets back (it met something the pooler must see, a socket ended, or it was stopped):
   * the connection is the client's active one again, and a request or transaction the relay began goes on being timed here.
   */
  returned(o: RelayOutcome): void {
    if (!this.lent) return;
    this.lent = false;
    this.relayEnded(o);
    const named = this.lentStatements;
    this.lentStatements = null;
    const s = this.server;
    if (s === null) return;
    this.pool.takeBack(s);
    if (named === null) return;
    this.statements.relayed(s, named, o.uses);
    this.watchRelayed(o, named, s);
  }

  /**
   * A relay (lending's or the hub's) gave the session back: what it counted goes into the stats, a client it
   * handed back at once is lent less eagerly, and a request or transaction it began goes on being timed here.
   */
  private relayEnded(o: RelayOutcome): void {
    const c = o.pool;
    this.count(c, { fromClient: o.bytesFromClient, fromServer: o.bytesFromServer });
    if (c.xacts > 0) this.lendBackoff = 0;
    else if (o.reason === 'client-message') this.lendSkip = this.lendBackoff = Math.min(64, this.lendBackoff * 2 || 1);
    const now = performance.now();
    this.queryStart = c.queryOpenUs >= 0 ? now - c.queryOpenUs / 1000 : 0;
    this.xactStart = c.xactOpenUs >= 0 ? now - c.xactOpenUs / 1000 : 0;
    this.readyAt = 0; // idle_transaction_timeout counts from the client's last message then
  }

  /** The pool needs the connection back: the relay gives it up; between transactions it is released now (as at ready()). */
  reclaim(): void {
    if (this.inHub) {
      this.host.hubStop?.(); // the session has the server it held in the hub, if any: released below as a lent one
    } else {
      if (!this.lent) return;
      this.host.unlend?.();
    }
    const s = this.server;
    if (this.lent) {
      // Cannot happen (the relay reports every return), but a connection left lent would keep waiters waiting.
      this.lent = false;
      if (s !== null) this.pool.takeBack(s);
    }
    if (s === null) return;
    const a = this.host.activity();
    if (a.txStatus !== 'I' || a.inFlight > 0 || this.internal > 0 || !this.host.atRest()) return; // released at its ReadyForQuery
    if (this.settingsDirty || this.pinsDirty || this.statementsDirty || this.pins.size > 0) return;
    this.release(true);
  }

  /** The connection as the console shows the client linked to it: none while lent between transactions (it is idle then). */
  get linked(): PooledServer | null {
    if (this.inHub) return this.host.hubMember?.()?.state === 'busy' ? this.pool.hub!.serverOf(this.host.hubMember()!.serverFd) : null;
    return this.lent && !this.lentBusy() ? null : this.server;
  }

  lentBusy(): boolean {
    const st = this.lent ? this.host.relayState?.() : null;
    return st != null && (st.requests > 0 || st.held > 0 || st.streaming > 0 || (st.status !== '' && st.status !== 'I'));
  }

  lentQuiet(now: number): number {
    if (this.lent) this.host.relayState?.();
    else if (this.inHub) this.host.hubState?.();
    return now - this.host.activity().lastActive;
  }

  lentSync(): void {
    const st = this.lent ? this.host.relayState?.() : null;
    if (st) this.count(st.pool, { fromClient: st.bytesFromClient, fromServer: st.bytesFromServer });
  }

  /** Gives the connection back (clean: between transactions with nothing of the client's on it). */
  release(clean: boolean): void {
    const s = this.server;
    if (s === null) return;
    this.server = null;
    this.linkedAt = 0;
    this.watch.state = 0;
    this.host.released();
    this.lent = false;
    this.pool.release(s, clean && this.internal === 0);
  }

  /** The session ends: the connection goes back if it is between transactions, else it is closed. */
  end(clean: boolean): void {
    this.host.unlend?.();
    this.pool.clients.delete(this);
    if (this.waiting && this.replication !== null) this.pool.forgetReplication(this);
    else if (this.waiting) this.pool.forget(this);
    if (this.server && this.pins.size > 0) this.server.dirty = true; // temp objects, locks: nobody else may get them
    this.statements.end();
    this.release(clean && this.pins.size === 0 && this.pool.mode !== 'session' ? true : clean);
  }

  /** client_idle_timeout, idle_transaction_timeout, query_timeout (the janitor, about 4 times a second). */
  timeouts(now: number): void {
    const st = this.pool.pooler.settings;
    const u = this.pool.pooler.config.users.get(this.pool.user);
    const clientIdle = (u?.clientIdleTimeout ?? st.clientIdleTimeout) * 1000;
    const idleTx = (u?.idleTransactionTimeout ?? st.idleTransactionTimeout) * 1000;
    const queryTimeout = (u?.queryTimeout ?? st.queryTimeout) * 1000;
    if (this.lent || this.inHub) {
      // The relay's session: once quiet past the shortest limit, JS takes it back and judges as below.
      const limits = [clientIdle, idleTx, queryTimeout].filter((l) => l > 0);
      if (this.inHub) this.host.hubState?.();
      if (limits.length === 0 || this.lentQuiet(now) <= Math.min(...limits)) return;
      this.reclaim();
    }
    const a = this.host.activity();
    const quiet = now - a.lastActive;
    if (a.inFlight > 0) {
      if (queryTimeout > 0 && quiet > queryTimeout && this.server) {
        this.server.dirty = true;
        this.pool.cancelFor(this.server);
        this.host.poolFailed(new PoolError({ severity: 'FATAL', code: '08P01', message: 'query timeout' }));
      }
      return;
    }
    if (this.waiting) return; // query_timeout and query_wait_timeout of the wait: the pool's (Pool.tick)
    if (a.txStatus !== 'I' && this.server) {
      // From the server's last ReadyForQuery, not the client's last message (a long statement is not idleness).
      if (idleTx > 0 && now - Math.max(a.lastActive, this.readyAt) > idleTx) {
        this.server.dirty = true;
        this.host.poolFailed(new PoolError({ severity: 'FATAL', code: '08P01', message: 'idle transaction timeout' }));
      }
      return;
    }
    if (clientIdle > 0 && quiet > clientIdle)
      this.host.poolFailed(new PoolError({ severity: 'FATAL', code: '08P01', message: 'client_idle_timeout' }));
  }

  idleInSession(): boolean {
    const a = this.host.activity();
    return a.txStatus === 'I' && a.inFlight === 0 && this.host.atRest();
  }

  poolFailed(err: PoolError): void {
    this.host.poolFailed(err);
  }

  // ---- internal exchanges on the client's connection ----------------------------------------------------

  private internalQuery(s: PooledServer, sql: string, done: (rows: (Buffer | null)[][], ok: boolean) => void): void {
    const rows: (Buffer | null)[][] = [];
    let ok = true;
    this.internal++;
    const handler: ResponseHandler = {
      onMessage: (msg) => {
        this.internalMsgs++;
        if (msg[0] === Be.DataRow) rows.push(readDataRow(msg));
        else if (msg[0] === Be.ErrorResponse) ok = false;
        return null;
      },
      onEnd: (_req, how) => {
        this.internal--;
        if (how !== 'done') ok = false;
        try {
          if (this.server === s) done(rows, ok);
        } catch (err) {
          this.host.log.error({ err }, 'pooled session bookkeeping failed');
        }
      },
    };
    this.host.sendUpstream([{ bytes: query(sql), handler }]);
  }

  private readSettings(s: PooledServer): void {
    this.settingsDirty = false;
    this.internalQuery(s, READ_SETTINGS, (rows, ok) => {
      if (!ok) {
        s.dirty = true; // unknown state: never lend it to another client
        return;
      }
      const now = new Map<string, string>();
      for (const [k, v] of rows) if (k && v) now.set(k.toString(), v.toString());
      this.settings.clear();
      for (const [k, v] of now) this.settings.set(k, v);
      this.encoding(now.get('client_encoding'));
      s.applied.clear();
      for (const [k, v] of now) s.applied.set(k, v);
      this.afterInternal();
    });
  }

  private checkPins(s: PooledServer): void {
    this.pinsDirty = false;
    this.internalQuery(s, PIN_CHECK, (rows, ok) => {
      const row = rows[0];
      const keepLoad = this.pins.has('load');
      // With the proxy keeping statements, 'prepare' is the read-back's to give and take (readStatements).
      const keepPrepare = this.preparing && this.pins.has('prepare');
      this.pins.clear();
      if (keepLoad) this.pins.add('load');
      if (keepPrepare) this.pins.add('prepare');
      if (!ok || !row) {
        this.pins.add('advisory'); // could not tell: keep the connection
        return;
      }
      PIN_COLUMNS.forEach((reason, i) => {
        if (reason === 'prepare' && this.preparing) return; // other clients' statements stay on the connection
        if (Number(row[i]?.toString() ?? '0') > 0) this.pins.add(reason);
      });
      this.afterInternal();
    });
  }

  /**
   * The names SQL may have prepared or dropped, read back: each becomes a definition the client can take to
   * any server connection, or is gone. One that cannot be told keeps the client on this connection ('prepare').
   */
  private readStatements(s: PooledServer): void {
    this.statementsDirty = false;
    const names = [...this.statements.uncertain];
    if (names.length === 0) {
      this.pins.delete('prepare');
      return this.afterInternal();
    }
    const sql =
      'SELECT name, from_sql, parameter_types::pg_catalog.oid[]::pg_catalog.text, statement FROM pg_catalog.pg_prepared_statements' +
      ` WHERE name OPERATOR(pg_catalog.=) ANY (ARRAY[${names.map(literal).join(', ')}]::pg_catalog.text[])`;
    this.internalQuery(s, sql, (rows, ok) => {
      if (ok) this.statements.settle(rows, s, this.effectsOpts);
      if (this.statements.uncertain.size > 0) {
        this.host.log.warn(
          { statements: [...this.statements.uncertain] },
          'could not read back SQL prepared statements; the client keeps its server connection',
        );
        this.pins.add('prepare');
      } else this.pins.delete('prepare');
      this.afterInternal();
    });
  }

  /** An internal exchange ended; the connection may go back now (the same rules as at ReadyForQuery). */
  private afterInternal(): void {
    queueMicrotask(() => this.ready(this.host.activity().txStatus));
  }

  /**
   * The client's settings where the connection's differ: reset what the last client set, set what this one has.
   * set_config answers with the server's own spelling of each value (DateStyle 'ISO' is 'ISO, MDY'): that becomes
   * the client's, as pgBouncer's varcache_set_canonical does, so that a connection that has it is not set again.
   */
  private replaySettings(s: PooledServer): void {
    const resets = [...s.applied.keys()].filter((k) => !this.settings.has(k));
    const sets = [...this.settings].filter(([k, v]) => s.applied.get(k) !== v);
    if (resets.length === 0 && sets.length === 0) return;
    const parts = resets.map((k) => `RESET ${ident(k)}`);
    if (sets.length > 0) parts.push(`SELECT ${sets.map(([k, v]) => `pg_catalog.set_config(${literal(k)}, ${literal(v)}, false)`).join(', ')}`);
    s.applied.clear();
    for (const [k, v] of this.settings) s.applied.set(k, v);
    const log = this.pool.pooler.pgbLog;
    log.line('DEBUG', `varcache_apply: ${[...resets.map((k) => `RESET ${shownName(k)};`), ...sets.map(([k, v]) => `SET ${shownName(k)}=${shownLiteral(v)};`)].join('')}`, s.subject());
    this.internalQuery(s, parts.join('; '), (rows, ok) => {
      if (!ok) {
        // A setting this server connection refuses (another server version, say): say so, keep serving.
        this.host.log.warn('could not carry the session settings over to the server connection');
        s.applied.clear();
        s.dirty = true;
        return;
      }
      sets.forEach(([k, v], i) => {
        const canonical = rows[0]?.[i]?.toString();
        // Unless the client changed it since (its own SET's value is read back from the server anyway).
        if (canonical === undefined || canonical === v || this.settings.get(k) !== v) return;
        log.line('DEBUG', `varcache_set_canonical: setting ${shownName(k)} to its canonical version ${v} -> ${canonical}`, this.host.pgbSubject?.());
        this.settings.set(k, canonical);
        if (s.applied.get(k) === v) s.applied.set(k, canonical);
      });
    });
  }
}

/** The settings pgBouncer keeps per client: its five and track_extra_parameters. */
function trackedByPgBouncer(extra: readonly string[]): Set<string> {
  const out = new Set(['client_encoding', 'datestyle', 'timezone', 'standard_conforming_strings', 'application_name']);
  for (const p of extra) out.add(p.toLowerCase());
  return out;
}

/**
 * `-c name=value` and `--name=value` of the startup `options`, backslash escapes as libpq writes them; null when
 * it holds anything else (another switch, a name without a value), which could not be replayed on another server.
 */
export function optionSettings(options: string): [string, string][] | null {
  const words: string[] = [];
  let cur = '';
  let any = false;
  for (let i = 0; i < options.length; i++) {
    const c = options[i];
    if (c === '\\' && i + 1 < options.length) {
      cur += options[++i];
      any = true;
    } else if (c === ' ' || c === '\t') {
      if (any) words.push(cur);
      cur = '';
      any = false;
    } else {
      cur += c;
      any = true;
    }
  }
  if (any) words.push(cur);
  const out: [string, string][] = [];
  for (let i = 0; i < words.length; i++) {
    let w = words[i];
    if (w === '-c' && i + 1 < words.length) w = words[++i];
    else if (w.startsWith('-c')) w = w.slice(2);
    else if (w.startsWith('--')) w = w.slice(2);
    else return null;
    const eq = w.indexOf('=');
    if (eq <= 0) return null;
    out.push([w.slice(0, eq).toLowerCase().replaceAll('-', '_'), w.slice(eq + 1)]);
  }
  return out;
}

/** A string literal whatever standard_conforming_strings says (E'' with both quote and backslash escaped). */
function literal(s: string): string {
  return `E'${s.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`;
}

// pgBouncer's log lines name a setting as PostgreSQL spells it and quote as pg_quote_literal does (E'' only for a
// backslash), which log alerts written for pgBouncer match; settings are kept under lower-case names here.
const SPELLED = new Map(['DateStyle', 'IntervalStyle', 'TimeZone'].map((n) => [n.toLowerCase(), n]));
function shownName(k: string): string {
  return SPELLED.get(k) ?? k;
}
function shownLiteral(v: string): string {
  return v.includes('\\') ? literal(v) : `'${v.replaceAll("'", "''")}'`;
}

function ident(s: string): string {
  return `"${s.replaceAll('"', '""')}"`;
}

function readCStringEnd(msg: Buffer, pos: number): number {
  return msg.indexOf(0, pos) + 1;
}

/** Where a Parse's SQL text ends (its NUL). */
function msgTextEnd(msg: Buffer): number {
  return msg.indexOf(0, readCStringEnd(msg, 5));
}

export { readErrorFields };
