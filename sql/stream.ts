// Streaming steadytext_generate_stream: when a statement only reads the stream's rows (SELECT * or its
// column, from the call alone), each chunk reaches the client as a DataRow as soon as it is generated.
// The database still decides everything else: the columns come from its own Describe of the statement,
// and once the text is complete the statement itself runs (finding the answer handed over in
// steadytext_cache); its rows are the ones already sent, so only its CommandComplete and ReadyForQuery
// go on to the client. Any other statement over the stream (count(*), WHERE, LIMIT, joins...) is not
// streamed: the proxy hands the whole answer over and the database runs the statement on it.
import { streamAnswer, streamChunks } from './answers.js';
import { nodeOf, statementAst, type J, type StatementCalls, type SteadyCall } from './calls.js';
import type { Database } from './databases.js';
import { callError, cacheEntry, type ArgValues } from './evaluate.js';
import type { Outbound, Rewrite, SessionContext } from '../proxy/interceptor.js';
import { Be, close, dataRow, describe, parse, query, SYNC } from '../proxy/protocol.js';
import type { Outcome, Server } from './serve.js';

/** The one call of a statement that only reads steadytext_generate_stream's rows, if it is one. */
export function streamable(stmts: readonly StatementCalls[]): { call: SteadyCall } | undefined {
  if (stmts.length !== 1 || stmts[0].kind !== 'select' || !stmts[0].rewritable || stmts[0].calls.length !== 1) return undefined;
  const call = stmts[0].calls[0];
  if (call.fn !== 'steadytext_generate_stream' || call.clause !== 'from_function' || call.kind !== 'const' || call.inSubquery || call.inCte) return undefined;
  const sel = nodeOf(statementAst(stmts[0]));
  return sel && sel[0] === 'SelectStmt' && onlyReadsTheStream(sel[1]) ? { call } : undefined;
}

function onlyReadsTheStream(s: J): boolean {
  if ((s.op && s.op !== 'SETOP_NONE') || s.whereClause || s.groupClause || s.havingClause || s.windowClause || s.sortClause
    || s.limitCount || s.limitOffset || s.distinctClause || s.lockingClause || s.intoClause || s.withClause || s.valuesLists) return false;
  const from: J[] = s.fromClause ?? [];
  const rf = from.length === 1 ? nodeOf(from[0]) : null;
  if (!rf || rf[0] !== 'RangeFunction' || rf[1].ordinality || rf[1].lateral || rf[1].is_rowsfrom || rf[1].coldeflist) return false;
  if ((rf[1].functions ?? []).length !== 1) return false;
  return (s.targetList ?? []).every((t: J) => {
    const v = nodeOf(t.ResTarget?.val);
    return v?.[0] === 'ColumnRef' && !t.ResTarget?.indirection;
  });
}

/** A Rewrite that streams the statement, or undefined to leave it to the ordinary path. */
export async function stream(sql: Buffer, call: SteadyCall, values: ArgValues, db: Database, ctx: SessionContext, server: Server): Promise<Rewrite | undefined> {
  const r = await server.resolve(call, values, db, ctx);
  if (!r || r.req.op !== 'generate_stream') return undefined;
  const check = await server.check([{ fn: call.fn, schema: call.schema }], db, ctx, { scs: ctx.serverParams.get('standard_conforming_strings') !== 'off', extended: false });
  // Rows sent before the statement runs must be its rows: a transaction that wrote may have changed the
  // defaults the function resolves (steadytext_config_set), so it gets the statement's own rows, at once.
  if (!check?.allowed[0] || !check.unwritten) return undefined;
  const text = sql.toString('utf8');
  const head = await describeRows(ctx, text);
  if ('failed' in head) return { send: [] }; // the database's own error already reached the client
  if (!head.rowDescription) return undefined;

  const config = await db.config();
  const req = r.req;
  const rows = new RowsAhead(ctx, head.rowDescription);
  let outcome: Outcome;
  try {
    for await (const piece of server.engine.generateStream({
      prompt: req.prompt, maxTokens: req.maxTokens, seed: req.seed, temperature: 0, modelSize: req.modelSize,
      caller: `session:${ctx.id}:${ctx.database}`, signal: ctx.signal, timeoutMs: config.daemonTimeoutMs, cache: config.cacheEnabled,
    })) await rows.add(piece);
    outcome = { entry: cacheEntry(req, r.identity, { answer: streamAnswer(rows.full) }) };
  } catch (err) {
    outcome = { error: callError(call.fn, err, config.daemonTimeoutMs) };
  }
  await server.handOver([[r, outcome]], db, ctx, check.backendPid, 'stream');
  return { send: [rows.statement(text, 'entry' in outcome)] };
}

/** The statement's rows, sent to the client ahead of the statement as the text is generated. */
class RowsAhead {
  /** The text so far. */
  full = '';
  /** Chunks sent. */
  private sent = 0;
  private described = false;
  constructor(private readonly ctx: SessionContext, private readonly rowDescription: Buffer) {}

  /** Adds a generated piece; sends the chunks it makes final (once whitespace follows; the last waits for the end). */
  async add(piece: string): Promise<void> {
    this.full += piece;
    const chunks = streamChunks(this.full);
    const ready = /\s$/.test(this.full) ? chunks.length : chunks.length - 1;
    if (ready > this.sent) await this.send(chunks.slice(this.sent, ready));
    this.sent = Math.max(this.sent, ready);
  }

  private send(chunks: string[]): Promise<void> {
    return new Promise<void>((resolve) => {
      const rows = chunks.map((c) => dataRow([Buffer.from(c, 'utf8')]));
      if (!this.described) {
        rows.unshift(this.rowDescription);
        this.described = true;
      }
      // A Sync answers at once with ReadyForQuery, in order behind everything sent before: the rows go to the
      // client in its place.
      this.ctx.send({ bytes: SYNC, responses: { onMessage: (m) => (m[0] === Be.ReadyForQuery ? rows : null), onEnd: () => resolve() } });
    });
  }

  /**
   * The statement itself: its rows are those sent, then the rest of a complete text in place of its own;
   * its tag and status are the client's.
   */
  statement(text: string, complete: boolean): Outbound {
    const rest = complete ? streamChunks(this.full).slice(this.sent) : [];
    let restSent = false;
    return {
      bytes: query(text),
      responses: {
        onMessage: (m) => {
          if (m[0] === Be.RowDescription) {
            if (this.described) return null;
            this.described = true;
            return m;
          }
          if (m[0] === Be.DataRow) {
            if (restSent) return null;
            restSent = true;
            return rest.map((c) => dataRow([Buffer.from(c, 'utf8')]));
          }
          return m;
        },
      },
    };
  }
}

/** Describes the statement without running it; a failure is passed to the client as the statement's answer. */
function describeRows(ctx: SessionContext, sql: string): Promise<{ rowDescription: Buffer | undefined } | { failed: true }> {
  const name = '_steadytext_stream';
  return new Promise((resolve) => {
    let rowDescription: Buffer | undefined;
    let failed = false;
    let ends = 0;
    ctx.send({
      bytes: Buffer.concat([parse(name, sql), describe('S', name), close('S', name), SYNC]),
      responses: {
        onMessage(m) {
          if (m[0] === Be.RowDescription) rowDescription = Buffer.from(m);
          else if (m[0] === Be.ErrorResponse) { failed = true; return m; }
          else if (m[0] === Be.ReadyForQuery && failed) return m;
          return null;
        },
        onEnd() { if (++ends === 4) resolve(failed ? { failed: true } : { rowDescription }); },
      },
    });
  });
}
