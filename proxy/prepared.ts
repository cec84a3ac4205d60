// Prepared statements under transaction and statement pooling (max_prepared_statements).
// A client's named statement lives in the proxy, not on a server connection: its Parse is kept under a
// server-side name shared by every client that prepared the same statement (identity: the full query
// text and parameter types, byte for byte, never a hash), and prepared on whichever server connection
// runs a Bind or Describe of it. Each server connection keeps at most max_prepared_statements, least
// recently used evicted with a Close. A Parse for a statement the connection already has is answered by
// the proxy (ParseComplete in its turn); Close of a client statement is answered by the proxy too.
// As in pgBouncer (src/prepare.c): a Bind or Describe of a name the client never prepared ends the client
// (the session decides, pooled-session.ts), a name whose Parse the server refused or skipped stays the
// client's (prepared again at its Bind), and max_prepared_statements is read at each use. Unlike pgBouncer,
// a Parse of a name in use gets PostgreSQL's error and the client goes on.
//
// SQL-level PREPARE / EXECUTE / DEALLOCATE share the client's names with the protocol. SQL text names a
// statement as the client does, so where SQL runs, the server connection holds the client's statement
// under the client's own name (a "literal" name, tracked per connection): before a Query or Parse whose
// text EXECUTEs, DEALLOCATEs or PREPAREs a name, the connection's statement of that name is made the
// client's (prepared from the client's definition, or closed when it is another client's), so the SQL
// runs unchanged; so before a Bind or Describe of a named statement whose own text is an EXECUTE (the protocol
// takes any statement). A name the SQL may have created or dropped is "uncertain": until the end of the
// transaction the server connection decides (a Bind, Describe, Parse or Close of it goes there under that
// name), then pg_prepared_statements is read back and the name becomes a definition like a Parse's (its
// text and resolved parameter type OIDs), which any server connection can be given, by Bind or EXECUTE.
// Text is kept as the client's bytes (read back in its client encoding, sent again in it); the same bytes
// beyond ASCII from clients of different encodings are different statements.
// A plan the server refuses because the result type changed (0A000, after ALTER TABLE and the like) gets a
// new server-side name (replan); the session decides when the exchange can run again (pooled-session.ts).
// A connection lent to the native relay (pooled-session.ts lend) binds and describes the client's statements it
// has under their server-side names by itself (lendable: only while no SQL names the client's statements), and
// what the relay used is made recently used when it gives the connection back (relayed). A client in the pool's
// native hub (pool-hub.ts) carries all such statements (hubTable), each server there the server-side names it has
// (serverNames): the hub renames a Bind or Describe on a server that has the name, and JS learns what it used on
// each server when the server leaves the hub (markUsed).
import type { Outgoing, ResponseHandler } from './interceptor.js';
import { Be, CLOSE_COMPLETE, Fe, PARSE_COMPLETE, SYNC, SqlState, close, errorResponse, parse, readCString, withStatementName } from './protocol.js';
import type { PooledServer } from './pool.js';
import { statementEffects, type EffectsOptions, type StatementEffects } from './statement-effects.js';

export interface SharedStatement {
  /** Server-side name (a new one once a server refused a copy's plan: rename). */
  name: string;
  nameBytes: Buffer;
  /** The Parse under the server-side name. */
  parse: Buffer;
  readonly key: string;
  refs: number;
}

const NOT_ASCII = /[\u0080-\uffff]/;
const NUL = Buffer.from([0]);

/** The statements all clients of one pooler prepared, by identity. */
export class StatementCache {
  private readonly byKey = new Map<string, SharedStatement>();
  private next = 1;

  get size(): number {
    return this.byKey.size;
  }

  /**
   * The shared statement for a client's Parse (`nameEnd`: where its name ends). `encoding`: the client's, when
   * not UTF-8 ('' otherwise): the same bytes beyond ASCII are another text in another encoding.
   */
  take(msg: Buffer, nameEnd: number, encoding = ''): SharedStatement {
    // latin1 maps each byte to one char: the key is the exact bytes of query text and parameter types.
    let key = msg.toString('latin1', nameEnd);
    // No key of a Parse starts so (a NUL, then a negative parameter count).
    if (encoding !== '' && NOT_ASCII.test(key)) key = `\0\xff${encoding}\0${key}`;
    let st = this.byKey.get(key);
    if (!st) {
      const name = `PGST_${this.next++}`;
      const nameBytes = Buffer.from(name);
      st = { name, nameBytes, parse: withStatementName(msg, nameBytes), key, refs: 0 };
      this.byKey.set(key, st);
    }
    st.refs++;
    return st;
  }

  /**
   * A server refused to run a copy of the statement (its result type changed: 0A000): a new server-side name,
   * so that no connection's copy under the old one is used again (each would fail the same way); the old
   * copies are left to their connections' eviction.
   */
  rename(st: SharedStatement): void {
    st.name = `PGST_${this.next++}`;
    st.nameBytes = Buffer.from(st.name);
    st.parse = withStatementName(st.parse, st.nameBytes);
  }

  /**
   * Online restart (takeover.ts): a statement of the replaced process, under its server-side name (its Parse's);
   * names given from now on come after it, so none names another statement on a server connection taken over.
   */
  restore(parse: Buffer): SharedStatement {
    const [name, nameEnd] = readCString(parse, 5);
    this.reserve(name);
    const key = parse.toString('latin1', nameEnd);
    let st = this.byKey.get(key);
    if (!st) {
      st = { name, nameBytes: Buffer.from(name), parse, key, refs: 0 };
      this.byKey.set(key, st);
    }
    return st;
  }

  /** Online restart: a server-side name a server connection taken over may hold is never given again. */
  reserve(name: string): void {
    const n = /^PGST_(\d+)$/.exec(name);
    if (n && Number(n[1]) >= this.next) this.next = Number(n[1]) + 1;
  }

  drop(st: SharedStatement): void {
    if (--st.refs <= 0) this.byKey.delete(st.key);
  }

  *entries(): Iterable<SharedStatement> {
    yield* this.byKey.values();
  }
}

/** What to do with one client message: what goes upstream, and the answer the proxy gives itself. */
export interface PreparedOutcome {
  send: Outgoing;
  /** The proxy's own answer, due after everything sent before it. */
  local?: Buffer;
  localSkipped?: ResponseHandler;
}

/**
 * A client error in the place of a message: the server is given a Parse that fails, so it skips to the
 * next Sync exactly as it would have for the real error, and its ErrorResponse is replaced by ours.
 */
function failWith(code: string, message: string): PreparedOutcome {
  const replacement = errorResponse({ severity: 'ERROR', code, message });
  return {
    send: [{ bytes: parse('', 'pg_steadytext_pooler_refused'), handler: { onMessage: (m) => (m[0] === Be.ErrorResponse ? replacement : m) } }],
  };
}

/** Swallows the answer of a Parse or Close the proxy sent on its own account; an error still reaches the client. */
const quiet = (onError: () => void): ResponseHandler => ({
  onMessage(msg) {
    if (msg[0] === Be.ErrorResponse) {
      onError();
      return msg;
    }
    return null;
  },
  onEnd(_req, how) {
    if (how !== 'done') onError();
  },
});

/**
 * Swallows everything of what the proxy sent ahead of a client's Query, error and ReadyForQuery included: the
 * Query's own answer says what the client needs to know (a statement that could not be prepared again does
 * not exist for its EXECUTE).
 */
const swallow = (onError: () => void): ResponseHandler => ({
  onMessage(msg) {
    if (msg[0] === Be.ErrorResponse) onError();
    return null;
  },
  onEnd(_req, how) {
    if (how !== 'done') onError();
  },
});
const SWALLOW = swallow(() => {});

/** A statement a server connection holds under a client's own name (SQL names statements so). */
interface Literal {
  /** The server-side name its definition had when it was prepared there ('' when the owner's SQL made it and it was not read back yet). */
  version: string;
  owner: ClientStatements;
}

/**
 * Each server connection's literal names, in use order (the least recently used go first when there are too
 * many), and how many times clients had forgotten statements when it was last swept: a copy whose owner no
 * longer has it under that name (deallocated, read back as gone, renamed after 0A000, the client gone) is
 * closed when the connection is next lent, so that no client's statement outlives it on a shared connection.
 */
interface ServerLiterals {
  names: Map<string, Literal>;
  swept: number;
}
const serverLiterals = new WeakMap<PooledServer, ServerLiterals>();
/** Bumped each time a client forgets a statement or goes (sweep). */
let forgotten = 0;

function literalsOf(server: PooledServer): ServerLiterals {
  let l = serverLiterals.get(server);
  if (l === undefined) serverLiterals.set(server, (l = { names: new Map(), swept: forgotten }));
  return l;
}

/** The server connection's literal names (name → the owner and version of its copy). */
export function literals(server: PooledServer): Map<string, Literal> {
  return literalsOf(server).names;
}

/** Is the copy still its owner's statement of that name? */
function live(name: string, l: Literal): boolean {
  if (!l.owner.alive) return false;
  if (l.version === '') return l.owner.uncertain.has(name);
  return l.owner.get(name)?.name === l.version;
}

/**
 * When the connection is lent: Close for each copy that is no longer its owner's (nothing when no client
 * forgot anything since the last sweep). The caller ends them with a Sync.
 */
export function sweepLiterals(server: PooledServer): Outgoing {
  if (forgotten === 0) return [];
  const l = literalsOf(server);
  if (l.swept === forgotten) return [];
  l.swept = forgotten;
  const out: Outgoing = [];
  for (const [name, lit] of l.names) {
    if (live(name, lit)) continue;
    l.names.delete(name);
    out.push({ bytes: close('S', name), handler: SWALLOW });
  }
  return out;
}

let orphans: ClientStatements | undefined;

/**
 * Online restart (takeover.ts): a server connection taken over holds a statement under a name no client here
 * owns (its owner did not move): closed when the connection is next lent.
 */
export function orphanLiteral(server: PooledServer, name: string): void {
  orphans ??= Object.assign(new ClientStatements(new StatementCache(), () => 1, { clientParseCount: 0, serverParseCount: 0, bindCount: 0 }), { alive: false });
  literals(server).set(name, { version: '', owner: orphans });
  forgotten++;
}

/** A CommandComplete tag after which the server has no prepared statement left. */
export function dropsEveryStatement(tag: string): boolean {
  return tag === 'DEALLOCATE ALL' || tag === 'DISCARD ALL';
}

/** The server dropped every statement it had, every client's: each is prepared again where it is next used. */
export function forgetServerStatements(server: PooledServer): void {
  server.prepared.clear();
  literals(server).clear();
}

/** Does the SQL name prepared statements (PREPARE, EXECUTE, DEALLOCATE of a name)? */
export function namesStatements(e: StatementEffects): boolean {
  return e.prepares.length > 0 || e.executes.length > 0 || e.deallocates.length > 0;
}

/** One client's named statement: the shared statement, and whether its own Parse failed or was skipped. */
interface ClientStatement {
  readonly st: SharedStatement;
  /**
   * The server refused (or skipped, after an earlier error) the client's Parse. The name stays the client's,
   * as in pgBouncer (a pipelining client such as psycopg binds names it sent a Parse for without waiting for
   * the answer; the statement is prepared again on the server at that Bind), but a new Parse may take it.
   */
  failed: boolean;
  /** The names its text EXECUTEs (SQL's EXECUTE as a protocol statement): the client's statements of them go first. */
  readonly executes: readonly string[] | null;
}

/** A Bind or Describe names a statement the client never prepared (pgBouncer ends such a client). */
export const UNKNOWN_STATEMENT = Symbol('unknown statement');

/**
 * Lending (pooled-session.ts): the client's statements a server connection has, which the native relay binds
 * and describes under their server-side names by itself (relay.c named_t), as use() would send them.
 */
export interface LentStatements {
  /** `client\0server\0` for each, the relay's table (NativeRelay.start's names). */
  readonly bytes: Buffer;
  /** In the same order: each statement and the server-side name the relay uses for it. */
  readonly entries: readonly { readonly st: SharedStatement; readonly server: string }[];
}

/** One client's named statements. */
export class ClientStatements {
  private readonly byName = new Map<string, ClientStatement>();
  /**
   * Names the client's SQL may have prepared or dropped on the server connection it holds: that connection
   * decides about them (they go there under their own name) until they are read back (settle).
   */
  readonly uncertain = new Set<string>();
  /** The statement of the last Bind or Describe that use() sent under a shared name. */
  lastUsed: SharedStatement | null = null;
  /** False once the client is gone (its copies under its own names are closed: sweepLiterals). */
  alive = true;
  /** Some server connection was given a copy of the client's under the client's own name (SQL named one). */
  private hasLiterals = false;
  /** The client encoding when it is not UTF-8 (lower case, '' otherwise): a part of a statement's identity. */
  encoding = '';
  /** The last lendable() table and the client statements it was made of; the same of hubTable(). */
  private lentLast: { value: LentStatements; from: ClientStatement[] } | null = null;
  private hubLast: { value: LentStatements; from: ClientStatement[] } | null = null;

  constructor(
    private readonly cache: StatementCache,
    /** max_prepared_statements, read at each use (SET max_prepared_statements takes effect at once). */
    private readonly maxPerServer: () => number,
    private readonly counts: { clientParseCount: number; serverParseCount: number; bindCount: number },
    /** pgBouncer's log line about this client (ERROR for a refused name). */
    private readonly report: (text: string) => void = () => {},
  ) {}

  get size(): number {
    return this.byName.size;
  }

  /** Server connections keep at most this many. */
  private get perServer(): number {
    return Math.max(1, this.maxPerServer());
  }

  /** A client may hold at most this many (memory bound against a client preparing without end). */
  private get perClient(): number {
    return Math.max(1000, 20 * this.maxPerServer());
  }

  *names(): IterableIterator<[string, SharedStatement]> {
    for (const [name, c] of this.byName) yield [name, c.st];
  }

  /** A server connection's copy of a statement of the client's under the client's own name. */
  private literal(version: string): Literal {
    this.hasLiterals = true;
    return { version, owner: this };
  }

  /** The client's statement of that name, if it has one the server did not refuse. */
  get(name: string): SharedStatement | undefined {
    const c = this.byName.get(name);
    return c !== undefined && !c.failed ? c.st : undefined;
  }

  /** Online restart (takeover.ts): the client's statements, and whether each one's Parse failed. */
  *handover(): IterableIterator<[string, SharedStatement, boolean]> {
    for (const [name, c] of this.byName) yield [name, c.st, c.failed];
  }

  /** Online restart: a statement the client had in the replaced process (the cache's, restored). */
  adopt(name: string, st: SharedStatement, failed: boolean): void {
    if (this.byName.has(name)) return;
    st.refs++;
    this.byName.set(name, { st, failed, executes: null });
  }

  /** Online restart: a server connection taken over holds a copy of this client's under the client's own name. */
  adoptLiteral(server: PooledServer, name: string, version: string): void {
    literals(server).set(name, this.literal(version));
    forgotten++; // a copy that is stale already goes at the next lend
  }

  /**
   * Parse. Unnamed statements pass as they are (they live within one exchange). `executes`: the names its text
   * EXECUTEs, if any (statementEffects).
   */
  parse(msg: Buffer, server: PooledServer, executes: readonly string[] | null = null): PreparedOutcome | undefined {
    const [name, nameEnd] = readCString(msg, 5);
    if (name === '') return undefined;
    if (this.uncertain.size > 0 && this.uncertain.has(name)) {
      // The server knows whether the client's SQL left a statement of that name: it answers.
      literals(server).set(name, this.literal(''));
      return undefined;
    }
    const had = this.byName.get(name);
    if (had && !had.failed) {
      // pgBouncer closes the client here; the error PostgreSQL itself gives lets it go on.
      this.report(`prepared statement '${name}' was already prepared`);
      return failWith(SqlState.DuplicatePreparedStatement, `prepared statement "${name}" already exists`);
    }
    if (had) {
      this.byName.delete(name);
      this.cache.drop(had.st);
    }
    if (this.byName.size >= this.perClient) {
      return failWith(SqlState.ProgramLimitExceeded, `too many prepared statements in this session (${this.perClient}); Close or DEALLOCATE some`);
    }
    const st = this.cache.take(msg, nameEnd, this.encoding);
    const entry: ClientStatement = { st, failed: false, executes };
    this.byName.set(name, entry);
    this.counts.clientParseCount++;
    const failed = () => {
      entry.failed = true;
    };
    if (server.prepared.has(st.name)) {
      touch(server, st.name);
      return { send: [], local: PARSE_COMPLETE, localSkipped: { onMessage: (m) => m, onEnd: (_r, how) => how === 'skipped' && failed() } };
    }
    const send = this.makeRoom(server);
    const sentName = st.name; // the statement may be renamed before the answer comes
    server.prepared.set(sentName, true);
    this.counts.serverParseCount++;
    send.push({
      bytes: st.parse,
      handler: {
        onMessage(m) {
          if (m[0] === Be.ErrorResponse) {
            server.prepared.delete(sentName);
            failed();
          }
          return m;
        },
        onEnd(_r, how) {
          if (how !== 'done') {
            server.prepared.delete(sentName);
            failed();
          }
        },
      },
    });
    return { send };
  }

  /**
   * Bind, or Describe of a statement: the server connection gets the statement first if it lacks it.
   * UNKNOWN_STATEMENT: the client never prepared that name.
   */
  use(msg: Buffer, server: PooledServer): PreparedOutcome | undefined | typeof UNKNOWN_STATEMENT {
    const name = msg[0] === Fe.Bind ? readCString(msg, readCString(msg, 5)[1])[0] : readCString(msg, 6)[0];
    if (name === '') return undefined;
    if (msg[0] === Fe.Bind) this.counts.bindCount++;
    if (this.uncertain.size > 0 && this.uncertain.has(name)) return undefined;
    const c = this.byName.get(name);
    if (!c) return UNKNOWN_STATEMENT;
    const send = c.executes === null ? this.ensure(c.st, server) : this.executing(c, server);
    send.push({ bytes: withStatementName(msg, c.st.nameBytes), handler: undefined });
    this.lastUsed = c.st;
    return { send };
  }

  /**
   * The statements the relay may rename by itself on `server` while it is lent: those whose definition is certain
   * (a Parse's, not failed, whose text EXECUTEs nothing) and that the connection has prepared. null when there are
   * none, or when SQL names any of the client's statements (uncertain names, copies under the client's names):
   * then every message naming a statement goes to use() as before.
   */
  lendable(server: PooledServer): LentStatements | null {
    if (this.uncertain.size > 0 || this.hasLiterals || this.byName.size === 0) return null;
    const t = this.table((c) => server.prepared.has(c.st.name), this.lentLast);
    this.lentLast = t;
    return t?.value ?? null;
  }

  /**
   * The native hub (pooled-session.ts enterHub): the statements a member may rename by itself, on whichever server
   * it holds has them (relay.c checks each server's names): lendable()'s, on any server. null when SQL names any of
   * the client's statements (the client cannot join then); an empty table when none can be renamed.
   */
  hubTable(): LentStatements | null {
    if (this.uncertain.size > 0 || this.hasLiterals) return null;
    const t = this.table(() => true, this.hubLast);
    this.hubLast = t;
    return t?.value ?? NO_STATEMENTS;
  }

  /** The renamable statements `on` accepts, as the relay's table; `last` again when it holds the same. */
  private table(
    on: (c: ClientStatement) => boolean,
    last: { value: LentStatements; from: ClientStatement[] } | null,
  ): { value: LentStatements; from: ClientStatement[] } | null {
    const from: [string, ClientStatement][] = [];
    for (const [name, c] of this.byName) if (!c.failed && c.executes === null && on(c)) from.push([name, c]);
    if (from.length === 0) return null;
    // The last table again when it holds the same statements under the same server-side names (a lend per
    // transaction when clients take turns): no bytes built.
    if (last !== null && last.from.length === from.length && from.every(([, c], i) => last.from[i] === c && last.value.entries[i].server === c.st.name)) return last;
    const parts: Buffer[] = [];
    for (const [name, c] of from) parts.push(Buffer.from(`${name}\0`), c.st.nameBytes, NUL);
    const entries = from.map(([, c]) => ({ st: c.st, server: c.st.name }));
    return { value: { bytes: Buffer.concat(parts), entries }, from: from.map(([, c]) => c) };
  }

  /**
   * The relay gave the connection back: the statements it bound or described (`uses` for each of `lent`'s
   * entries) are the connection's most recently used, as use() would have made them (the busiest last).
   */
  relayed(server: PooledServer, lent: LentStatements, uses: readonly number[]): void {
    markUsed(
      server,
      lent.entries.map((e) => e.server),
      uses,
    );
  }

  /** Close of a statement: forgotten here, kept on the server connections for other clients. */
  close(msg: Buffer): PreparedOutcome | undefined {
    const name = readCString(msg, 6)[0];
    if (name === '') return undefined;
    if (this.uncertain.size > 0 && this.uncertain.has(name)) return undefined; // the server closes it; read back later
    const c = this.byName.get(name);
    if (c) {
      this.byName.delete(name);
      this.cache.drop(c.st);
      if (this.hasLiterals) forgotten++;
    }
    // The server answers CloseComplete for a name that does not exist too.
    return { send: [], local: CLOSE_COMPLETE };
  }

  /** DEALLOCATE ALL / DISCARD ALL from the client (uncertain names are read back). */
  clear(): void {
    for (const c of this.byName.values()) this.cache.drop(c.st);
    if (this.hasLiterals && this.byName.size > 0) forgotten++;
    this.byName.clear();
  }

  /** The client is gone. */
  end(): void {
    this.clear();
    this.alive = false;
    if (this.hasLiterals) forgotten++;
  }

  /**
   * A Query's or Parse's SQL names statements (PREPARE, EXECUTE, DEALLOCATE): what must go upstream before it
   * so that the server connection's statement of each name is the client's, and the names it may create or
   * drop become uncertain. Before a Query the messages end with a Sync and their answers are swallowed (the
   * Query must run whatever becomes of them); before a Parse (within the client's pipeline, no Sync) an
   * error reaches the client, whose messages the server then skips as it would after the client's own.
   */
  sql(e: StatementEffects, server: PooledServer, beforeQuery: boolean): Outgoing {
    const out: Outgoing = [];
    const names = new Set<string>();
    for (const p of e.prepares) names.add(p.name);
    for (const n of e.executes) names.add(n);
    for (const n of e.deallocates) if (n !== '*') names.add(n);
    for (const n of names) this.mirror(n, server, out, names, beforeQuery);
    const lits = literals(server);
    for (const p of e.prepares) {
      this.uncertain.add(p.name);
      lits.delete(p.name);
      lits.set(p.name, this.literal(''));
    }
    for (const n of e.deallocates) {
      if (n === '*') continue;
      this.uncertain.add(n);
      lits.delete(n);
      lits.set(n, this.literal(''));
    }
    if (out.length > 0 && beforeQuery) out.push({ bytes: SYNC, handler: SWALLOW });
    return out;
  }

  /** The server connection's statement `name` made the client's: prepared under that name, or closed. */
  private mirror(name: string, server: PooledServer, out: Outgoing, keep: Set<string>, beforeQuery: boolean): void {
    if (this.uncertain.has(name)) return; // the server holds the client's truth about it already
    const lits = literals(server);
    const have = lits.get(name);
    const st = this.get(name);
    if (st !== undefined && have !== undefined && have.version === st.name) {
      // Another client's copy of the same definition serves as well.
      lits.delete(name);
      lits.set(name, this.literal(st.name));
      return;
    }
    if (have !== undefined || server.prepared.has(name)) {
      out.push({ bytes: close('S', name), handler: beforeQuery ? SWALLOW : quiet(() => {}) });
      lits.delete(name);
      server.prepared.delete(name);
    }
    if (st === undefined) return;
    this.evictLiterals(server, keep, out, beforeQuery);
    const lit: Literal = this.literal(st.name);
    lits.set(name, lit);
    const gone = () => {
      if (lits.get(name) === lit) lits.delete(name);
    };
    out.push({ bytes: withStatementName(st.parse, Buffer.from(name)), handler: beforeQuery ? swallow(gone) : quiet(gone) });
  }

  /** Beyond max_prepared_statements, the least recently used literal names go (not those in use now). */
  private evictLiterals(server: PooledServer, keep: Set<string>, out: Outgoing, beforeQuery: boolean): void {
    const lits = literals(server);
    if (lits.size < this.perServer) return;
    for (const [name, lit] of lits) {
      if (lits.size < this.perServer) return;
      if (keep.has(name) || lit.version === '') continue;
      lits.delete(name);
      out.push({ bytes: close('S', name), handler: beforeQuery ? SWALLOW : quiet(() => {}) });
    }
  }

  /**
   * The uncertain names read back from pg_prepared_statements on `server` (rows: name, from_sql, parameter
   * type OIDs as text, statement): each becomes the client's definition, or is gone. A name whose
   * definition cannot be told stays uncertain (the session keeps the connection then).
   */
  settle(rows: (Buffer | null)[][], server: PooledServer, opts: EffectsOptions): void {
    const lits = literals(server);
    const found = new Map<string, (Buffer | null)[]>();
    for (const r of rows) if (r[0]) found.set(r[0].toString(), r);
    for (const name of [...this.uncertain]) {
      const row = found.get(name);
      const had = this.byName.get(name);
      if (row === undefined) {
        if (had) {
          this.byName.delete(name);
          this.cache.drop(had.st);
          forgotten++;
        }
        lits.delete(name);
        this.uncertain.delete(name);
        continue;
      }
      const def = definition(name, row, opts);
      if (def === null) continue;
      const st = this.cache.take(def.parse, 6, this.encoding);
      this.byName.set(name, { st, failed: false, executes: def.executes });
      if (had) {
        this.cache.drop(had.st);
        if (had.st !== st) forgotten++;
      }
      lits.delete(name);
      lits.set(name, this.literal(st.name));
      this.uncertain.delete(name);
    }
  }

  /**
   * A server refused the plan of its copy of `st` under the server-side name `failed` (0A000): the statement
   * gets a new name (unless another retry gave it one already), the stale copy is closed, and the
   * statement prepared again on this connection.
   */
  replan(st: SharedStatement, failed: string, server: PooledServer): Outgoing {
    if (st.name === failed) {
      this.cache.rename(st);
      forgotten++; // copies under client names made from the old one are stale too
    }
    const out: Outgoing = [];
    if (server.prepared.delete(failed)) out.push({ bytes: close('S', failed), handler: quiet(() => {}) });
    out.push(...this.ensure(st, server));
    return out;
  }

  /**
   * The same for the copy a SQL EXECUTE used, under the client's own name `name` (version: the server-side
   * name of the definition it was prepared from): closed and prepared again under that name, before a Query.
   */
  replanLiteral(name: string, st: SharedStatement, version: string, server: PooledServer): Outgoing {
    if (st.name === version) {
      this.cache.rename(st);
      forgotten++;
    }
    const lits = literals(server);
    const lit: Literal = this.literal(st.name);
    lits.delete(name);
    lits.set(name, lit);
    const gone = () => {
      if (lits.get(name) === lit) lits.delete(name);
    };
    return [
      { bytes: close('S', name), handler: SWALLOW },
      { bytes: withStatementName(st.parse, Buffer.from(name)), handler: swallow(gone) },
      { bytes: SYNC, handler: SWALLOW },
    ];
  }

  /**
   * A statement whose text EXECUTEs the client's statements (by name, when it runs, where it runs): those go to
   * the server connection first under the client's names, as before a Query or Parse that EXECUTEs them.
   */
  private executing(c: ClientStatement, server: PooledServer): Outgoing {
    const out: Outgoing = [];
    const names = new Set(c.executes);
    for (const n of names) this.mirror(n, server, out, names, false);
    out.push(...this.ensure(c.st, server));
    return out;
  }

  private ensure(st: SharedStatement, server: PooledServer): Outgoing {
    if (server.prepared.has(st.name)) {
      touch(server, st.name);
      return [];
    }
    const send = this.makeRoom(server);
    const sentName = st.name;
    // A client's own statement under this very name (SQL can spell it): the shared one takes the name.
    if (literals(server).delete(sentName)) send.push({ bytes: close('S', sentName), handler: quiet(() => {}) });
    server.prepared.set(sentName, true);
    this.counts.serverParseCount++;
    send.push({ bytes: st.parse, handler: quiet(() => server.prepared.delete(sentName)) });
    return send;
  }

  /** Evicts the least recently used statements of the connection beyond its limit. */
  private makeRoom(server: PooledServer): Outgoing {
    const out: Outgoing = [];
    const limit = this.perServer;
    while (server.prepared.size >= limit && server.prepared.size > 0) {
      const oldest = server.prepared.keys().next().value as string;
      server.prepared.delete(oldest);
      out.push({ bytes: close('S', oldest), handler: quiet(() => {}) });
    }
    return out;
  }
}

/** An empty table: a client whose statements the relay cannot rename (failed, or EXECUTEing others). */
const NO_STATEMENTS: LentStatements = { bytes: Buffer.alloc(0), entries: [] };

/**
 * A server's statements a relay bound or described (`uses` for each of `names`, server-side names) become its most
 * recently used, as use() would have made them (the busiest last); names it no longer has are passed over.
 */
export function markUsed(server: PooledServer, names: readonly string[], uses: readonly number[]): void {
  const used = names.map((n, i) => [uses[i] ?? 0, n] as const).filter(([n]) => n > 0);
  used.sort((a, b) => a[0] - b[0]);
  for (const [, name] of used) if (server.prepared.has(name)) touch(server, name);
}

/** The hub (pool-hub.ts): the server-side names of the statements a server has, as relay.c takes them (`name\0` each). */
export function serverNames(server: PooledServer): { names: string[]; bytes: Buffer | null } {
  const names = [...server.prepared.keys()];
  return { names, bytes: names.length === 0 ? null : Buffer.from(names.map((n) => `${n}\0`).join('')) };
}

function touch(server: PooledServer, name: string): void {
  server.prepared.delete(name);
  server.prepared.set(name, true);
}

/**
 * A read-back row's statement as a Parse (unnamed; the cache names it): the text a Parse gave, or the
 * PREPARE's inner statement found in the SQL that made it (the last PREPARE of that name in the text),
 * with the parameter types the server resolved, byte for byte in the client's encoding; and the names a
 * Parse's text EXECUTEs. null when the text cannot be told.
 */
function definition(name: string, row: (Buffer | null)[], opts: EffectsOptions): { parse: Buffer; executes: string[] | null } | null {
  const [, fromSql, types, statement] = row;
  if (!fromSql || !types || !statement) return null;
  const oids = types.toString().replace(/^\{|\}$/g, '');
  const paramTypes = oids === '' ? [] : oids.split(',').map(Number);
  if (paramTypes.some((t) => !Number.isInteger(t) || t < 0)) return null;
  const e = statementEffects(statement, 0, statement.length, opts);
  const executes = e !== null && e.executes.length > 0 ? e.executes : null;
  if (fromSql.toString() !== 't') return { parse: parse('', statement, paramTypes), executes };
  const p = e?.prepares.filter((x) => x.name === name).at(-1);
  if (p === undefined) return null;
  return { parse: parse('', Buffer.from(p.text, e!.bytewise ? 'latin1' : 'utf8'), paramTypes), executes: null };
}
