// How the proxy hands an answer to the database ahead of the statement that needs it. Nothing is ever
// written into the statement: a computed answer goes into steadytext_cache under the key the SQL function
// computes from its own arguments, a failure or a management answer into steadytext_mailbox under the
// session's backend pid. Both tables are written only by the service role and read only through the
// functions, which still check EXECUTE. If the proxy read an argument differently from the database, the
// keys differ and the function simply does not find the answer (it asks the daemon): a misreading costs
// time, never a wrong answer.
//
// Before it computes anything for a session, the proxy asks that session (on its own connection, in
// order behind everything it sent before) whether its current role may EXECUTE the function and whether
// the name resolves to the installed function rather than one another role put earlier on its
// search_path. Every name and operator in that query is pg_catalog-qualified, so the session's own
// search_path cannot change its meaning.
import type { SessionContext } from '../proxy/interceptor.js';
import { Be, bind, close, describe, execute, FLUSH, parse, query, readDataRow, readErrorFields, SYNC } from '../proxy/protocol.js';
import { errorAnswer, type CallError } from './answers.js';
import { quoteIdent } from './install.js';
import { isSteadyFunction, STEADYTEXT_FUNCTIONS } from './signatures.js';

/** What runs the proxy's own statements: the service pool, or the session's connection (sessionQueryable). */
export interface Queryable { query(text: string, values?: any[]): Promise<{ rows: any[]; rowCount: number | null }> }

/** A statement and its parameters (a Buffer goes in binary format, as node-postgres sends it). */
export interface Statement { text: string; values: unknown[] }

/** Keys this proxy stored recently: a repeated call then costs no round trip at all. */
export class KnownKeys {
  private readonly keys = new Map<string, number>();
  constructor(private readonly max = 100_000) {}

  has(key: string, now = Date.now()): boolean {
    const until = this.keys.get(key);
    if (until === undefined) return false;
    if (until > now) return true;
    this.keys.delete(key);
    return false;
  }

  add(key: string, ttlMs: number, now = Date.now()): void {
    this.keys.delete(key);
    this.keys.set(key, now + ttlMs);
    if (this.keys.size > this.max) this.keys.delete(this.keys.keys().next().value as string);
  }

}

/**
 * How long a stored row counts as known: well inside its TTL, so the database never finds it expired, and
 * at most 30 s: a row deleted behind the proxy's back (TRUNCATE by an administrator) costs callbacks only
 * that long.
 */
export function knownTtlMs(cacheTtlSeconds: number): number {
  return Math.max(0, Math.min(cacheTtlSeconds * 500, 30_000));
}

/** The installed functions' identities, read through the service connection (pinned search_path). */
export interface Installed {
  schemaOid: number;
  /** OID of each steadytext function by name; absent when the name is overloaded (never served ahead). */
  functions: Map<string, number>;
}

export async function readInstalled(q: Queryable, schema: string): Promise<Installed> {
  const r = await q.query(
    `SELECT n.oid::int8 AS ns, p.proname::text AS name, p.oid::int8 AS oid, count(*) OVER (PARTITION BY p.proname) AS n
       FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_proc p ON p.pronamespace OPERATOR(pg_catalog.=) n.oid
      WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.text AND p.proname OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.name[])`,
    [schema, STEADYTEXT_FUNCTIONS]);
  const functions = new Map<string, number>();
  for (const row of r.rows) if (Number(row.n) === 1) functions.set(row.name as string, Number(row.oid));
  // Without rows there is nothing to serve, so the schema's OID is never needed then.
  return { schemaOid: Number(r.rows[0]?.ns ?? 0), functions };
}

/** One call to check: the function, and the schema it was qualified with (null: found through search_path). */
export interface CheckItem { fn: string; schema: string | null }

export interface CheckResult {
  backendPid: number;
  /** The session's settings right before the statement: they decide how its literals read. */
  standardConformingStrings: boolean;
  clientEncoding: string;
  /** transaction_isolation: in a REPEATABLE READ or SERIALIZABLE block, rows committed now stay invisible. */
  isolation: string;
  /** The session's transaction has written nothing yet (so it cannot have changed steadytext_config). */
  unwritten: boolean;
  /** The session's current role may write the answers itself (the cache and the mailbox: the owner, a superuser). */
  writes: boolean;
  /** Per item, in order: may this session's current role run exactly the installed function? */
  allowed: boolean[];
}

/** The check as one SELECT whose meaning no search_path can change (only ASCII: any client encoding). */
export function checkSql(items: readonly CheckItem[], installed: Installed, schema: string): string {
  const cols = items.map(({ fn, schema: qualified }) => {
    const oid = installed.functions.get(fn);
    // Only names of the signature table are ever written into the query.
    if (!oid || !isSteadyFunction(fn) || (qualified !== null && qualified !== schema)) return 'false';
    const may = `coalesce(pg_catalog.has_function_privilege(${oid}::pg_catalog.oid, 'EXECUTE'), false)`;
    if (qualified !== null) return may;
    const inPath = `EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.oid OPERATOR(pg_catalog.=) ${installed.schemaOid}::pg_catalog.oid
      AND n.nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.current_schemas(false)))`;
    const shadowed = `EXISTS (SELECT FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
      WHERE p.proname OPERATOR(pg_catalog.=) '${fn}'::pg_catalog.name AND n.oid OPERATOR(pg_catalog.<>) ${installed.schemaOid}::pg_catalog.oid
      AND n.nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.current_schemas(false)))`;
    return `${may} AND ${inPath} AND NOT ${shadowed}`;
  });
  // By oid, found in the installed schema: a missing table is NULL (false), never an error in the client's block.
  const writes = ['steadytext_cache', 'steadytext_mailbox'].map((t) => `(SELECT pg_catalog.has_table_privilege(c.oid, 'INSERT, UPDATE')
      FROM pg_catalog.pg_class c WHERE c.relnamespace OPERATOR(pg_catalog.=) ${installed.schemaOid}::pg_catalog.oid AND c.relname OPERATOR(pg_catalog.=) '${t}'::pg_catalog.name)`).join(' AND ');
  return `SELECT pg_catalog.pg_backend_pid(), pg_catalog.current_setting('standard_conforming_strings'), pg_catalog.current_setting('client_encoding'), pg_catalog.current_setting('transaction_isolation'), pg_catalog.pg_current_xact_id_if_assigned() IS NULL, coalesce(${writes}, false)${cols.map((c) => `, ${c}`).join('')}`;
}

function result(row: (string | null)[] | undefined, n: number): CheckResult | undefined {
  if (!row || row.length !== 6 + n) return undefined;
  return {
    backendPid: Number(row[0]),
    standardConformingStrings: row[1] === 'on',
    clientEncoding: String(row[2]).toUpperCase(),
    isolation: String(row[3]),
    unwritten: row[4] === 't',
    writes: row[5] === 't',
    allowed: row.slice(6).map((v) => v === 't'),
  };
}

/** Runs the check as a simple query on the session's own connection (for a Query message). */
export async function checkSimple(ctx: SessionContext, sql: string, n: number): Promise<CheckResult | undefined> {
  const r = await auxQuery(ctx, sql);
  return 'rows' in r ? result(r.rows[0], n) : undefined;
}

/**
 * Runs the check inside an extended-protocol batch (for a Bind), without ending it (auxExtended). If the server
 * is skipping to the client's Sync after an error, the check is skipped too and nothing is computed.
 */
export async function checkExtended(ctx: SessionContext, sql: string, n: number): Promise<CheckResult | undefined> {
  const r = await auxExtended(ctx, '_steadytext_check', sql, [], true, false);
  return 'rows' in r ? result(r.rows[0], n) : undefined;
}

/**
 * Runs one statement with real parameters (text) on the session's own connection, as a named statement and
 * portal of our own, closed again. `inBatch`: inside the client's extended-protocol batch, which must stay whole:
 * a Flush rather than a Sync (the server holds extended-protocol answers until one of them), and a failure is
 * the client's to see, since its batch is aborted from there on. Otherwise Sync, and the client sees nothing.
 */
export function auxExtended(ctx: SessionContext, name: string, sql: string, params: readonly unknown[], inBatch: boolean, names = true): Promise<{ rows: (string | null)[][]; fields: string[] } | { error: Record<string, string> }> {
  const values = params.map((v) => (v === null || v === undefined ? null : Buffer.isBuffer(v) ? v : Buffer.from(paramText(v), 'utf8')));
  // A Buffer is a value in its type's binary form (an embedding, store.ts), as node-postgres sends it.
  const paramFormats = params.some((v) => Buffer.isBuffer(v)) ? params.map((v) => (Buffer.isBuffer(v) ? 1 : 0)) : [];
  const bytes = Buffer.concat([
    parse(name, sql), bind({ portal: name, statement: name, paramFormats, params: values, resultFormats: [] }),
    // The column names (`names`) come with a Describe of the portal.
    ...(names ? [describe('P', name)] : []), execute(name), close('P', name), close('S', name), inBatch ? FLUSH : SYNC,
  ]);
  // Flush is answered by nothing; each other message once.
  const answered = (inBatch ? 5 : 6) + (names ? 1 : 0);
  return new Promise((resolve) => {
    const rows: (string | null)[][] = [];
    let fields: string[] = [];
    let ends = 0;
    let error: Record<string, string> | undefined;
    ctx.send({
      bytes,
      responses: {
        onMessage(m) {
          if (m[0] === Be.DataRow) rows.push(textRow(m));
          else if (m[0] === Be.RowDescription) fields = fieldNames(m);
          else if (m[0] === Be.ErrorResponse) {
            error = readErrorFields(m);
            return inBatch ? m : null;
          }
          return null;
        },
        onEnd(_req, how) {
          if (how !== 'done') error ??= { M: `session ${how}` };
          if (++ends === answered) resolve(error ? { error } : { rows, fields });
        },
      },
    });
  });
}

/** A parameter as text, as node-postgres sends it: arrays as array literals, other objects as JSON. */
function paramText(v: unknown): string {
  if (Array.isArray(v)) return `{${v.map((e) => (e === null ? 'NULL' : `"${String(e).replace(/[\\"]/g, '\\$&')}"`)).join(',')}}`;
  if (typeof v === 'string') return v;
  return typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint' ? String(v) : JSON.stringify(v);
}

/** Column names of a RowDescription. */
function fieldNames(m: Buffer): string[] {
  const out: string[] = [];
  let pos = 7;
  for (let i = m.readInt16BE(5); i > 0; i--) {
    const end = m.indexOf(0, pos);
    out.push(m.toString('utf8', pos, end));
    pos = end + 19;
  }
  return out;
}

/** The proxy's statements as the service connection takes them, run on the session's own connection (auxExtended). */
export function sessionQueryable(ctx: SessionContext, inBatch: boolean): Queryable {
  return {
    async query(text: string, values: readonly unknown[] = []) {
      const r = await auxExtended(ctx, '_steadytext_write', text, values, inBatch);
      if ('error' in r) throw Object.assign(new Error(r.error.M ?? 'failed'), { code: r.error.C });
      return { rows: r.rows.map((row) => Object.fromEntries(r.fields.map((f, i) => [f, row[i]]))), rowCount: r.rows.length };
    },
  };
}

/** Runs a simple query on the session's own connection; the client sees none of its responses (notices go to `onNotice`). */
export function auxQuery(ctx: SessionContext, sql: string, onNotice?: (message: string) => void): Promise<{ rows: (string | null)[][] } | { error: Record<string, string> }> {
  return new Promise((resolve) => {
    const rows: (string | null)[][] = [];
    let error: Record<string, string> | undefined;
    ctx.send({
      bytes: query(sql),
      responses: {
        onMessage(m) {
          if (m[0] === Be.DataRow) rows.push(textRow(m));
          else if (m[0] === Be.ErrorResponse) error = readErrorFields(m);
          else if (m[0] === Be.NoticeResponse && onNotice) onNotice(readErrorFields(m).M ?? '');
          return null;
        },
        onEnd(_req, how) {
          resolve(error ? { error } : how === 'done' ? { rows } : { error: { M: `session ${how}` } });
        },
      },
    });
  });
}

/** A DataRow's columns as text (the check and the prefetch read text columns only). */
export function textRow(m: Buffer): (string | null)[] {
  return readDataRow(m).map((v) => (v === null ? null : v.toString('utf8')));
}

/** A mailbox entry: what the function of this backend finds under this topic, an answer or an error to raise. */
export type MailboxEntry = { topic: string } & ({ answer: string } | { error: CallError });

/** The text of an entry as the SQL function reads it: an error only here takes its in-band form. */
const mailboxText = (e: MailboxEntry): string => ('error' in e ? errorAnswer(e.error.sqlstate, e.error.message, e.error.hint) : e.answer);

/**
 * Deletes the rows of one of our tables matching `where` (at most `limit`) that no open transaction holds: a
 * row a client's block took (and so locked) is left for later, never waited on, since that block may itself
 * be waiting on the proxy.
 */
export function deleteSkipLocked(schema: string, table: string, where: string, limit?: number): string {
  const t = `${quoteIdent(schema)}.${table}`;
  return `DELETE FROM ${t} WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY(
     SELECT ctid FROM ${t} WHERE ${where}${limit === undefined ? '' : ` LIMIT ${limit | 0}`} FOR UPDATE SKIP LOCKED))`;
}

/** Writes mailbox entries for one backend (committed before this resolves; old ones go in sql/maintenance.ts). */
export async function postMailbox(q: Queryable, schema: string, backendPid: number, entries: readonly MailboxEntry[]): Promise<void> {
  if (entries.length === 0) return;
  const m = mailboxQuery(schema, backendPid, entries);
  await q.query(m.text, m.values);
}

/** The INSERT of postMailbox. */
export function mailboxQuery(schema: string, backendPid: number, entries: readonly MailboxEntry[]): Statement {
  const values = entries.map((_, i) => `($1::pg_catalog.int4, $${2 * i + 2}::pg_catalog.text, $${2 * i + 3}::pg_catalog.text, pg_catalog.clock_timestamp())`);
  return {
    text: `INSERT INTO ${quoteIdent(schema)}.steadytext_mailbox AS m (backend_pid, topic, answer, created_at) VALUES ${values.join(', ')}
     ON CONFLICT (backend_pid, topic) DO UPDATE SET answer = EXCLUDED.answer, created_at = EXCLUDED.created_at`,
    values: [backendPid, ...entries.flatMap((e) => [e.topic, mailboxText(e)])],
  };
}
