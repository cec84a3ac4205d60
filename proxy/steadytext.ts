// The steadytext interceptor: the rewrite path. For each steadytext call a client sends whose
// arguments the proxy knows (literals, bound parameters), it computes the answer with the engine and
// appends it to the call as `_steadytext_answer`, so the database still runs the function (and checks
// EXECUTE privilege) but does no work. Simple protocol: the answer is spliced as a literal. Extended
// protocol: the statement gets one extra parameter per call at Parse, filled at each Bind, and hidden
// from the client's Describe. Anything it cannot evaluate goes to the database unchanged, where the
// function finds the answer in steadytext_cache or asks the daemon endpoint (callback path).
import type { Logger } from 'pino';
import type { Engine } from '../inference/engine.js';
import { errorAnswer, streamChunks } from '../sql/answers.js';
import type { CacheEntry } from '../sql/store.js';
import { findCalls, isParseFailure, loadParser, statementAst, type StatementCalls, type SteadyCall } from './calls.js';
import { derivePrefetch } from './prefetch-plan.js';
import type { Database, DatabaseRegistry } from './databases.js';
import { engineErrorToWire } from './daemon.js';
import { evaluateCall, PARAMETERS, type ArgValues } from './evaluate.js';
import type { Interceptor, InterceptedMessage, ResponseHandler, Rewrite, SessionContext } from './interceptor.js';
import { Be, bind, parse, query, readBind, readErrorFields, readParse, readTarget, type BindMessage } from './protocol.js';
import { answerInsertion, appendArguments, quoteLiteral, type Insertion } from './rewrite-sql.js';

export interface SteadytextOptions {
  engine: Engine;
  databases: DatabaseRegistry;
  /** Where the daemon endpoint listens, for steadytext_daemon_status. */
  daemon?: { host: string; port: number };
  logger: Logger;
}

const TEXT_OID = 25;
/** Prefetched answers written to steadytext_cache per INSERT. */
const PREFETCH_BATCH = 256;
/** Bulk prefetches log how far they are this often. */
const PROGRESS_MS = 10_000;
const INT_PARAMS = new Set(['max_tokens', 'seed']);
const FLOAT_PARAMS = new Set(['temperature']);

/** A prepared statement the proxy rewrote: how many parameters the client knows, and its calls. */
interface Plan {
  clientParams: number;
  paramTypes: number[];
  calls: SteadyCall[];
}

interface SessionState {
  plans: Map<string, Plan>;
}

export function createSteadytextInterceptor(o: SteadytextOptions): Interceptor & { ready: Promise<void> } {
  const ready = loadParser();

  const state = (ctx: SessionContext): SessionState =>
    (ctx.data.steadytext ??= { plans: new Map() }) as SessionState;

  /** Values by parameter name, or null when an argument is not a value the proxy knows. */
  function argValues(call: SteadyCall, params: readonly (string | null | undefined)[] | null): ArgValues | null {
    const names = PARAMETERS[call.fn];
    if (!names || !call.plain || call.inCall) return null;
    const out: ArgValues = {};
    for (const arg of call.args) {
      const name = arg.name ?? names[arg.position];
      if (!name || !names.includes(name) || !arg.value) return null;
      const v = arg.value;
      let raw: string | null;
      if ('param' in v) {
        if (!params || v.param > params.length) return null;
        const p = params[v.param - 1];
        if (p === undefined) return null; // a binary value the proxy cannot read
        raw = p;
      } else {
        raw = v.type === 'null' ? null : v.literal;
        if (v.type === 'boolean' || v.type === 'bitstring') return null;
      }
      if (raw !== null && (INT_PARAMS.has(name) || FLOAT_PARAMS.has(name))) {
        const n = Number(raw.trim());
        // Whatever PostgreSQL would coerce differently (rounding, overflow, junk) stays its business.
        if (raw.trim() === '' || !Number.isFinite(n) || (INT_PARAMS.has(name) && (!Number.isInteger(n) || Math.abs(n) > 2147483647))) return null;
        out[name] = n;
      } else {
        out[name] = raw;
      }
    }
    return out;
  }

  type Remember = (role: 'generation' | 'embedding', size: string, entry: (identity: string) => CacheEntry) => void;

  async function answer(call: SteadyCall, values: ArgValues, db: Database, ctx: SessionContext, how: 'rewrite' | 'prefetch' = 'rewrite', keep?: Remember): Promise<string | undefined> {
    const config = await db.config();
    // The shared cache row is written once, when the engine computed the answer, not again on every hit.
    const later: Parameters<Remember>[] = [];
    const remember: Remember = keep ?? ((...args) => void later.push(args));
    const computes = call.fn === 'steadytext_generate' || call.fn === 'steadytext_embed' || call.fn === 'steadytext_generate_stream';
    const outcome: { cached?: boolean } = {};
    const a = await evaluateCall(call.fn, values, {
      engine: o.engine, config, caller: `session:${ctx.id}`, signal: ctx.signal, daemon: o.daemon, remember, outcome,
    });
    if (computes && a !== undefined) {
      const failed = a.startsWith('\x01') && !a.startsWith('\x01\x01');
      const hit = !failed && outcome.cached === true;
      if (!hit) {
        for (const [role, size, entry] of later) {
          void db.identity(role, size).then((id) => db.store([entry(id)])).catch((err) => ctx.log.debug({ err }, 'cache write failed'));
        }
      }
      if (failed) {
        const [, code, message] = a.split('\x01');
        db.logEvent('error', `${how}_error`, message, { sqlstate: code, fn: call.fn, user: ctx.user });
      } else if (config.debugMode) {
        db.logEvent('debug', how, `${call.fn} answered by the proxy`, { fn: call.fn, cache_hit: hit, user: ctx.user, session: ctx.id });
      }
      db.count({
        requests: 1, [`${how}_requests`]: 1, errors: failed ? 1 : 0, cache_hits: hit ? 1 : 0, cache_misses: failed || hit ? 0 : 1,
        [call.fn === 'steadytext_embed' ? 'embed_requests' : 'generate_requests']: 1,
      });
    }
    return a;
  }

  /** The database of a session, ready (installed); undefined when it cannot be (the call then goes through as sent). */
  async function database(ctx: SessionContext): Promise<Database | undefined> {
    if ((ctx.serverParams.get('client_encoding') ?? 'UTF8').toUpperCase() !== 'UTF8') return undefined;
    const db = o.databases.get(ctx.database);
    try {
      await db.ready();
      return db;
    } catch (err) {
      ctx.log.warn({ err }, 'steadytext objects not ready in this database; calls go through unchanged');
      return undefined;
    }
  }

  function analyse(sql: Buffer, ctx: SessionContext): StatementCalls[] | undefined {
    const r = findCalls(sql, { standardConformingStrings: ctx.serverParams.get('standard_conforming_strings') !== 'off' });
    if (isParseFailure(r)) {
      ctx.log.debug({ failure: r.failure, message: r.message }, 'statement not parsed; forwarded unchanged');
      return undefined;
    }
    return r;
  }

  /** After a statement that may have changed steadytext_config, every session must see the change. */
  function configWatcher(db: Database): ResponseHandler {
    return { onMessage: (m) => m, onEnd: () => db.runtime.markStale() };
  }

  async function onQuery(msg: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const sql = msg.subarray(5, msg.length - 1);
    const stmts = analyse(sql, ctx);
    if (!stmts) return undefined;
    const db = await database(ctx);
    if (!db) return undefined;
    const streamed = streamable(stmts);
    if (streamed && ctx.txStatus !== 'E') return stream(sql, streamed.call, streamed.values, db, ctx);
    const jobs: Promise<{ call: SteadyCall; argSql: string } | undefined>[] = [];
    const replaced: { at: number; end: number; text: string }[] = [];
    const prefetches: StatementCalls[] = [];
    let touchesConfig = false;
    let readsStats = false;
    for (const st of stmts) {
      const ast = statementAst(st);
      if (ast?.CreateExtensionStmt?.extname === 'pg_steadytext') {
        // The objects are already installed (database() above): keep the statement's meaning and tag.
        replaced.push({ at: st.start, end: st.end, text: 'CREATE EXTENSION IF NOT EXISTS plpgsql' });
        continue;
      }
      if (st.kind !== 'other' && mentionsStats(sql, st.start, st.end)) readsStats = true;
      if (st.rewritable && st.calls.some((c) => c.kind === 'row')) prefetches.push(st);
      for (const call of st.calls) {
        if (call.fn === 'steadytext_config_set') touchesConfig = true;
        if (!st.rewritable || call.kind !== 'const') continue;
        const values = argValues(call, null);
        if (!values) continue;
        jobs.push(answer(call, values, db, ctx).then((a) => (a === undefined ? undefined : { call, argSql: quoteLiteral(a) })));
      }
    }
    // Prefetch before the rewrite's answers are awaited: both keep the engine busy at once.
    const prefetched = prefetches.length && ctx.txStatus !== 'E' ? prefetch(sql, prefetches, db, ctx) : undefined;
    const edits = (await Promise.all(jobs)).filter((x) => x !== undefined);
    await prefetched;
    if (readsStats) await db.flushCounters();
    if (edits.length === 0 && !touchesConfig && replaced.length === 0) return undefined;
    const out = query(splice(sql, edits.map((e) => answerInsertion(sql, e.call, e.argSql)), replaced).toString('utf8'));
    const handlers: ResponseHandler[] = [];
    if (touchesConfig) handlers.push(configWatcher(db));
    if (replaced.length) handlers.push(hideNotice('extension "plpgsql" already exists'));
    return { send: [handlers.length ? { bytes: out, responses: chain(handlers) } : out] };
  }

  /**
   * The prefetch path: a statement whose calls take row values. The argument values it will need are
   * read with the client's own privileges on its own connection (a derived SELECT DISTINCT), computed
   * concurrently, and stored in steadytext_cache before the statement goes upstream unchanged, where the
   * function finds each answer. Whatever is missed (a snapshot older than the cache rows, say) the
   * callback path still answers, so failures here only cost time.
   */
  async function prefetch(sql: Buffer, stmts: StatementCalls[], db: Database, ctx: SessionContext): Promise<void> {
    for (const st of stmts) {
      const plan = derivePrefetch(sql, st);
      if (!plan || plan.params.length > 0) continue;
      const inTx = ctx.txStatus === 'T';
      // Inside a transaction a failing SELECT must not abort the client's work: fence it with a savepoint.
      const r = await auxQuery(ctx, inTx ? `SAVEPOINT _steadytext_prefetch; ${plan.sql}; RELEASE SAVEPOINT _steadytext_prefetch` : plan.sql);
      if ('error' in r) {
        if (inTx) await auxQuery(ctx, 'ROLLBACK TO SAVEPOINT _steadytext_prefetch; RELEASE SAVEPOINT _steadytext_prefetch');
        ctx.log.debug({ error: r.error.M }, 'prefetch query failed; the database will ask the daemon instead');
        continue;
      }
      const work: (() => Promise<unknown>)[] = [];
      const pending: Promise<CacheEntry>[] = [];
      const keep: Remember = (role, size, entry) => void pending.push(db.identity(role, size).then(entry));
      for (const pc of plan.calls) {
        const call = st.calls[pc.call];
        const seen = new Set<string>();
        for (const row of r.rows) {
          const tuple = pc.argColumns.map((i) => row[i]);
          const k = JSON.stringify(tuple);
          if (seen.has(k)) continue;
          seen.add(k);
          const values = rowValues(call, tuple);
          if (values) work.push(() => answer(call, values, db, ctx, 'prefetch', keep));
        }
      }
      await runPrefetch(work, db, ctx, pending);
    }
  }

  /**
   * Feeds the engine a few requests more than it has contexts, never the whole statement at once: each
   * request's daemon_timeout_ms then measures its own work, not its wait behind thousands of others, and
   * the queue limit is never hit by one statement. Answers go to steadytext_cache in batches while the
   * engine works on the next ones.
   */
  async function runPrefetch(work: (() => Promise<unknown>)[], db: Database, ctx: SessionContext, pending: Promise<CacheEntry>[]): Promise<void> {
    const cpu = o.engine.status().cpu;
    const width = Math.max(2, 2 * Math.max(cpu.generationContexts, cpu.embeddingContexts));
    let next = 0;
    let writing: Promise<void> = Promise.resolve();
    const flush = () => {
      if (pending.length === 0) return;
      const batch = pending.splice(0);
      writing = writing.then(async () => db.store(await Promise.all(batch))).catch((err) => ctx.log.warn({ err }, 'prefetch could not store answers in steadytext_cache'));
    };
    const t = performance.now();
    let done = 0;
    let shown = t;
    const lane = async () => {
      while (next < work.length && !ctx.signal.aborted) {
        await work[next++]();
        done++;
        if (pending.length >= PREFETCH_BATCH) flush();
        if (performance.now() - shown > PROGRESS_MS) {
          shown = performance.now();
          ctx.log.info({ done, calls: work.length, seconds: Math.round((shown - t) / 1000) }, 'prefetch progress');
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(width, work.length) }, lane));
    flush();
    await writing;
    if (work.length > PREFETCH_BATCH) ctx.log.info({ calls: work.length, ms: Math.round(performance.now() - t) }, 'prefetch done');
  }

  /** A query that is just one SELECT over steadytext_generate_stream with known arguments. */
  function streamable(stmts: StatementCalls[]): { st: StatementCalls; call: SteadyCall; values: ArgValues } | undefined {
    if (stmts.length !== 1 || stmts[0].kind !== 'select' || !stmts[0].rewritable || stmts[0].calls.length !== 1) return undefined;
    const call = stmts[0].calls[0];
    if (call.fn !== 'steadytext_generate_stream' || call.clause !== 'from_function' || call.kind !== 'const' || call.inSubquery || call.inCte) return undefined;
    const values = argValues(call, null);
    return values && values.prompt !== null && values.prompt !== undefined ? { st: stmts[0], call, values } : undefined;
  }

  /**
   * Streaming: each chunk reaches the client as a DataRow as soon as it is generated. Every chunk still
   * goes through the database (the statement with that chunk as its answer), so privileges, column
   * aliases and the row's type are the database's own; the proxy only stitches the answers into one
   * result: the first RowDescription, every DataRow, then one CommandComplete and ReadyForQuery.
   * Chunks are cut as streamChunks() cuts the whole text, so the rows never depend on timing.
   */
  async function stream(sql: Buffer, call: SteadyCall, values: ArgValues, db: Database, ctx: SessionContext): Promise<Rewrite> {
    const config = await db.config();
    const text = (answer: string) => query(splice(sql, [answerInsertion(sql, call, quoteLiteral(answer))], []).toString('utf8'));
    let rows = 0;
    let described = false;
    let failed = false;
    const part = (answer: string, last: boolean) => new Promise<void>((resolve) => {
      ctx.send({
        bytes: text(answer),
        responses: {
          onMessage(m) {
            switch (m[0]) {
              case Be.RowDescription:
                if (described) return null;
                described = true;
                return m;
              case Be.DataRow: rows++; return m;
              case Be.ErrorResponse: failed = true; return m;
              case Be.CommandComplete: return last ? commandComplete(`SELECT ${rows}`) : null;
              case Be.ReadyForQuery: return last || failed ? m : null;
              default: return m;
            }
          },
          onEnd: () => resolve(),
        },
      });
    });
    const prompt = String(values.prompt);
    const maxTokens = values.max_tokens === null || values.max_tokens === undefined ? config.defaultMaxTokens : Number(values.max_tokens);
    const seed = values.seed === null || values.seed === undefined ? config.defaultSeed : Number(values.seed);
    let full = '';
    let sent = 0;
    let error: string | undefined;
    try {
      for await (const piece of o.engine.generateStream({ prompt, maxTokens, seed, temperature: 0, modelSize: config.defaultModelSize, caller: `session:${ctx.id}`, signal: ctx.signal, timeoutMs: config.daemonTimeoutMs, cache: config.cacheEnabled })) {
        full += piece;
        // A chunk is final once whitespace follows it; the last one waits for the end of the text.
        const chunks = streamChunks(full);
        const ready = /\s$/.test(full) ? chunks.length : chunks.length - 1;
        for (; sent < ready; sent++) {
          await part(JSON.stringify([chunks[sent]]), false);
          if (failed) return { send: [] };
        }
      }
    } catch (err) {
      const w = engineErrorToWire('steadytext_generate_stream', err, config.daemonTimeoutMs);
      error = errorAnswer(w.code, w.message, w.hint ?? '');
    }
    const rest = error ? [] : streamChunks(full).slice(sent);
    await part(error ?? JSON.stringify(rest), true);
    db.count({ requests: 1, rewrite_requests: 1, generate_requests: 1, errors: error ? 1 : 0 });
    return { send: [] };
  }

  async function onParse(msg: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const p = readParse(msg);
    const st = state(ctx);
    st.plans.delete(p.name);
    ctx.watched.statements.delete(p.name);
    const stmts = analyse(Buffer.from(p.sql, 'utf8'), ctx);
    if (!stmts || stmts.length !== 1 || !stmts[0].rewritable) return undefined;
    const s = stmts[0];
    const calls = s.calls.filter((c) => c.kind === 'const' && argValues(c, new Array(Math.max(s.maxParam, p.paramTypes.length)).fill('0')) !== null);
    if (calls.length === 0) return undefined;
    if (!(await database(ctx))) return undefined;
    const clientParams = Math.max(s.maxParam, p.paramTypes.length);
    const sql = appendArguments(Buffer.from(p.sql, 'utf8'), calls.map((call, i) => ({ call, argSql: `$${clientParams + i + 1}` })));
    const paramTypes = [...p.paramTypes, ...new Array(clientParams - p.paramTypes.length).fill(0), ...calls.map(() => TEXT_OID)];
    st.plans.set(p.name, { clientParams, paramTypes, calls });
    ctx.watched.statements.add(p.name);
    return { send: [parse(p.name, sql.toString('utf8'), paramTypes)] };
  }

  async function onBind(msg: Buffer, ctx: SessionContext): Promise<Rewrite | undefined> {
    const b = readBind(msg);
    const plan = state(ctx).plans.get(b.statement);
    if (!plan) return undefined;
    const db = await database(ctx);
    const params = decodeParams(b, plan);
    const answers = await Promise.all(plan.calls.map(async (call) => {
      const values = db ? argValues(call, params) : null;
      // NULL: the function takes the answer from the cache or the daemon, as if the proxy were not there.
      return values && db ? answer(call, values, db, ctx) : undefined;
    }));
    // Answers travel as text: no format codes means all text; one code applies to all, so spell it out.
    const f = b.paramFormats;
    const text = answers.map(() => 0);
    const paramFormats = f.length === 0 ? [] : f.length === 1 ? [...new Array<number>(b.params.length).fill(f[0]), ...text] : [...f, ...text];
    const out: BindMessage = {
      ...b,
      paramFormats,
      params: [...b.params, ...answers.map((a) => (a === undefined ? null : Buffer.from(a, 'utf8')))],
    };
    return { send: [bind(out)] };
  }

  function onDescribe(msg: Buffer, ctx: SessionContext): Rewrite | undefined {
    const t = readTarget(msg);
    const plan = t.kind === 'S' ? state(ctx).plans.get(t.name) : undefined;
    if (!plan) return undefined;
    // The client must see the parameters it declared, not the answers the proxy adds.
    const hide: ResponseHandler = {
      onMessage(m) {
        if (m[0] !== Be.ParameterDescription) return m;
        const n = plan.clientParams;
        const out = Buffer.allocUnsafe(7 + 4 * n);
        out[0] = Be.ParameterDescription;
        out.writeInt32BE(6 + 4 * n, 1);
        out.writeInt16BE(n, 5);
        m.copy(out, 7, 7, 7 + 4 * n);
        return out;
      },
    };
    return { send: [{ bytes: msg, responses: hide }] };
  }

  return {
    ready,
    sessionStart(ctx) {
      state(ctx);
      // Install early so the first call does not wait for it.
      void database(ctx);
    },
    sessionEnd(ctx) {
      state(ctx).plans.clear();
    },
    async intercept(m: InterceptedMessage, ctx: SessionContext): Promise<Rewrite | undefined> {
      await ready;
      switch (m.type) {
        case 'Q': return onQuery(m.bytes, ctx);
        case 'P': return onParse(m.bytes, ctx);
        case 'B': return onBind(m.bytes, ctx);
        case 'D': return onDescribe(m.bytes, ctx);
        case 'C': {
          const t = readTarget(m.bytes);
          if (t.kind === 'S') state(ctx).plans.delete(t.name);
          return undefined;
        }
      }
      return undefined;
    },
  };
}

/** Text values of the client's parameters (binary ones for the few types the calls take), or null. */
function decodeParams(b: BindMessage, plan: Plan): (string | null | undefined)[] {
  const out: (string | null | undefined)[] = [];
  for (let i = 0; i < b.params.length; i++) {
    const v = b.params[i];
    const fmt = b.paramFormats.length === 0 ? 0 : b.paramFormats.length === 1 ? b.paramFormats[0] : b.paramFormats[i];
    if (v === null) out.push(null);
    else if (fmt === 0) out.push(v.toString('utf8'));
    else {
      const oid = plan.paramTypes[i];
      if (oid === 25 || oid === 1043) out.push(v.toString('utf8'));
      else if (oid === 23 && v.length === 4) out.push(String(v.readInt32BE(0)));
      else if (oid === 21 && v.length === 2) out.push(String(v.readInt16BE(0)));
      else if (oid === 20 && v.length === 8) out.push(String(v.readBigInt64BE(0)));
      else if (oid === 701 && v.length === 8) out.push(String(v.readDoubleBE(0)));
      else if (oid === 700 && v.length === 4) out.push(String(v.readFloatBE(0)));
      else out.push(undefined); // a value we cannot read: calls that use it are left to the database
    }
  }
  return out;
}

/** Does sql[start, end) mention steadytext_stats (ASCII case-insensitive)? Its counters are flushed first. */
function mentionsStats(sql: Buffer, start: number, end: number): boolean {
  return sql.subarray(start, end).toString('latin1').toLowerCase().includes('steadytext_stats');
}

/** Drops the NoticeResponse with this exact message (the one our own replacement statement causes). */
function hideNotice(message: string): ResponseHandler {
  return { onMessage: (m) => (m[0] === Be.NoticeResponse && readErrorFields(m).M === message ? null : m) };
}

function chain(hs: ResponseHandler[]): ResponseHandler {
  return {
    onMessage(m, req) {
      let cur: Buffer[] = [m];
      for (const h of hs) {
        const next: Buffer[] = [];
        for (const x of cur) {
          const r = h.onMessage(x, req);
          if (r) next.push(...(Array.isArray(r) ? r : [r]));
        }
        cur = next;
      }
      return cur.length === 1 ? cur[0] : cur;
    },
    onEnd(req, how) { for (const h of hs) h.onEnd?.(req, how); },
  };
}

/** Insertions and whole-range replacements over the original offsets, in one pass (ranges never overlap insertions). */
function splice(sql: Buffer, inserts: Insertion[], replaces: { at: number; end: number; text: string }[]): Buffer {
  const ops = [...inserts.map((i) => ({ at: i.at, end: i.at, text: i.text })), ...replaces].sort((a, b) => a.at - b.at);
  const parts: Buffer[] = [];
  let prev = 0;
  for (const op of ops) {
    parts.push(sql.subarray(prev, op.at), Buffer.from(op.text, 'utf8'));
    prev = op.end;
  }
  parts.push(sql.subarray(prev));
  return Buffer.concat(parts);
}

/** Values by parameter name from a prefetch row (one column per argument, in argument order). */
function rowValues(call: SteadyCall, tuple: readonly (string | null)[]): ArgValues | null {
  const names = PARAMETERS[call.fn];
  if (!names) return null;
  const out: ArgValues = {};
  for (let i = 0; i < call.args.length; i++) {
    const arg = call.args[i];
    const name = arg.name ?? names[arg.position];
    if (!name || !names.includes(name)) return null;
    const raw = tuple[i];
    out[name] = raw !== null && (INT_PARAMS.has(name) || FLOAT_PARAMS.has(name)) ? Number(raw) : raw;
  }
  return out;
}

/** Runs a simple query on the session's own connection; the client sees none of its responses. */
function auxQuery(ctx: SessionContext, sql: string): Promise<{ rows: (string | null)[][] } | { error: Record<string, string> }> {
  return new Promise((resolve) => {
    const rows: (string | null)[][] = [];
    let error: Record<string, string> | undefined;
    ctx.send({
      bytes: query(sql),
      responses: {
        onMessage(m) {
          if (m[0] === Be.DataRow) rows.push(readDataRow(m));
          else if (m[0] === Be.ErrorResponse) error = readErrorFields(m);
          return null;
        },
        onEnd(_req, how) {
          resolve(error ? { error } : how === 'done' ? { rows } : { error: { M: `session ${how}` } });
        },
      },
    });
  });
}

function readDataRow(m: Buffer): (string | null)[] {
  const n = m.readInt16BE(5);
  const out: (string | null)[] = new Array(n);
  let pos = 7;
  for (let i = 0; i < n; i++) {
    const len = m.readInt32BE(pos);
    pos += 4;
    if (len < 0) out[i] = null;
    else { out[i] = m.toString('utf8', pos, pos + len); pos += len; }
  }
  return out;
}

function commandComplete(tag: string): Buffer {
  const b = Buffer.alloc(6 + Buffer.byteLength(tag));
  b[0] = Be.CommandComplete;
  b.writeInt32BE(b.length - 1, 1);
  b.write(tag, 5);
  return b;
}
