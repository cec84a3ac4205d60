// Protocol-level prepared statements under transaction and statement pooling (max_prepared_statements).
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
import type { Outgoing, ResponseHandler } from './interceptor.js';
import { Be, CLOSE_COMPLETE, Fe, PARSE_COMPLETE, SqlState, close, errorResponse, parse, readCString, withStatementName } from './protocol.js';
import type { PooledServer } from './pool.js';

interface SharedStatement {
  /** Server-side name. */
  readonly name: string;
  readonly nameBytes: Buffer;
  /** The Parse under the server-side name. */
  readonly parse: Buffer;
  readonly key: string;
  refs: number;
}

/** The statements all clients of one pooler prepared, by identity. */
export class StatementCache {
  private readonly byKey = new Map<string, SharedStatement>();
  private next = 1;

  get size(): number {
    return this.byKey.size;
  }

  /** The shared statement for a client's Parse (`nameEnd`: where its name ends). */
  take(msg: Buffer, nameEnd: number): SharedStatement {
    // latin1 maps each byte to one char: the key is the exact bytes of query text and parameter types.
    const key = msg.toString('latin1', nameEnd);
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

/** One client's named statement: the shared statement, and whether its own Parse failed or was skipped. */
interface ClientStatement {
  readonly st: SharedStatement;
  /**
   * The server refused (or skipped, after an earlier error) the client's Parse. The name stays the client's,
   * as in pgBouncer (a pipelining client such as psycopg binds names it sent a Parse for without waiting for
   * the answer; the statement is prepared again on the server at that Bind), but a new Parse may take it.
   */
  failed: boolean;
}

/** A Bind or Describe names a statement the client never prepared (pgBouncer ends such a client). */
export const UNKNOWN_STATEMENT = Symbol('unknown statement');

/** One client's named statements. */
export class ClientStatements {
  private readonly byName = new Map<string, ClientStatement>();

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

  /** Parse. Unnamed statements pass as they are (they live within one exchange). */
  parse(msg: Buffer, server: PooledServer): PreparedOutcome | undefined {
    const [name, nameEnd] = readCString(msg, 5);
    if (name === '') return undefined;
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
    const st = this.cache.take(msg, nameEnd);
    const entry: ClientStatement = { st, failed: false };
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
    server.prepared.set(st.name, true);
    this.counts.serverParseCount++;
    send.push({
      bytes: st.parse,
      handler: {
        onMessage(m) {
          if (m[0] === Be.ErrorResponse) {
            server.prepared.delete(st.name);
            failed();
          }
          return m;
        },
        onEnd(_r, how) {
          if (how !== 'done') {
            server.prepared.delete(st.name);
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
    const c = this.byName.get(name);
    if (!c) return UNKNOWN_STATEMENT;
    const send = this.ensure(c.st, server);
    send.push({ bytes: withStatementName(msg, c.st.nameBytes), handler: undefined });
    return { send };
  }

  /** Close of a statement: forgotten here, kept on the server connections for other clients. */
  close(msg: Buffer): PreparedOutcome | undefined {
    const name = readCString(msg, 6)[0];
    if (name === '') return undefined;
    const c = this.byName.get(name);
    if (c) {
      this.byName.delete(name);
      this.cache.drop(c.st);
    }
    // The server answers CloseComplete for a name that does not exist too.
    return { send: [], local: CLOSE_COMPLETE };
  }

  /** DEALLOCATE ALL / DISCARD ALL from the client, or its session ending. */
  clear(): void {
    for (const c of this.byName.values()) this.cache.drop(c.st);
    this.byName.clear();
  }

  private ensure(st: SharedStatement, server: PooledServer): Outgoing {
    if (server.prepared.has(st.name)) {
      touch(server, st.name);
      return [];
    }
    const send = this.makeRoom(server);
    server.prepared.set(st.name, true);
    this.counts.serverParseCount++;
    send.push({ bytes: st.parse, handler: quiet(() => server.prepared.delete(st.name)) });
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

function touch(server: PooledServer, name: string): void {
  server.prepared.delete(name);
  server.prepared.set(name, true);
}
