// Protocol-level prepared statements under transaction and statement pooling (max_prepared_statements).
// A client's named statement lives in the proxy, not on a server connection: its Parse is kept under a
// server-side name shared by every client that prepared the same statement (identity: the full query
// text and parameter types, byte for byte, never a hash), and prepared on whichever server connection
// runs a Bind or Describe of it. Each server connection keeps at most max_prepared_statements, least
// recently used evicted with a Close. A Parse for a statement the connection already has is answered by
// the proxy (ParseComplete in its turn); Close of a client statement is answered by the proxy too.
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

/** One client's named statements. */
export class ClientStatements {
  private readonly byName = new Map<string, SharedStatement>();

  constructor(
    private readonly cache: StatementCache,
    /** Server connections keep at most this many (max_prepared_statements). */
    private readonly perServer: number,
    /** A client may hold at most this many (memory bound against a client preparing without end). */
    private readonly perClient: number,
    private readonly counts: { clientParseCount: number; serverParseCount: number; bindCount: number },
  ) {}

  get size(): number {
    return this.byName.size;
  }

  names(): IterableIterator<[string, SharedStatement]> {
    return this.byName.entries();
  }

  /** Parse. Unnamed statements pass as they are (they live within one exchange). */
  parse(msg: Buffer, server: PooledServer): PreparedOutcome | undefined {
    const [name, nameEnd] = readCString(msg, 5);
    if (name === '') return undefined;
    if (this.byName.has(name)) return failWith(SqlState.DuplicatePreparedStatement, `prepared statement "${name}" already exists`);
    if (this.byName.size >= this.perClient) {
      return failWith(SqlState.ProgramLimitExceeded, `too many prepared statements in this session (${this.perClient}); Close or DEALLOCATE some`);
    }
    const st = this.cache.take(msg, nameEnd);
    this.byName.set(name, st);
    this.counts.clientParseCount++;
    const forget = () => {
      if (this.byName.get(name) === st) {
        this.byName.delete(name);
        this.cache.drop(st);
      }
    };
    if (server.prepared.has(st.name)) {
      touch(server, st.name);
      return { send: [], local: PARSE_COMPLETE, localSkipped: { onMessage: (m) => m, onEnd: (_r, how) => how === 'skipped' && forget() } };
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
            forget();
          }
          return m;
        },
        onEnd(_r, how) {
          if (how !== 'done') {
            server.prepared.delete(st.name);
            forget();
          }
        },
      },
    });
    return { send };
  }

  /** Bind, or Describe of a statement: the server connection gets the statement first if it lacks it. */
  use(msg: Buffer, server: PooledServer): PreparedOutcome | undefined {
    const name = msg[0] === Fe.Bind ? readCString(msg, readCString(msg, 5)[1])[0] : readCString(msg, 6)[0];
    if (name === '') return undefined;
    const st = this.byName.get(name);
    if (!st) return undefined; // the server answers "does not exist", as it would
    if (msg[0] === Fe.Bind) this.counts.bindCount++;
    const send = this.ensure(st, server);
    send.push({ bytes: withStatementName(msg, st.nameBytes), handler: undefined });
    return { send };
  }

  /** Close of a statement: forgotten here, kept on the server connections for other clients. */
  close(msg: Buffer): PreparedOutcome | undefined {
    const name = readCString(msg, 6)[0];
    if (name === '') return undefined;
    const st = this.byName.get(name);
    if (st) {
      this.byName.delete(name);
      this.cache.drop(st);
    }
    // The server answers CloseComplete for a name that does not exist too.
    return { send: [], local: CLOSE_COMPLETE };
  }

  /** DEALLOCATE ALL / DISCARD ALL from the client, or its session ending. */
  clear(): void {
    for (const st of this.byName.values()) this.cache.drop(st);
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
    while (server.prepared.size >= this.perServer && server.prepared.size > 0) {
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
