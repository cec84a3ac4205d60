// What a statement does to the session, for transaction pooling: when clients share server connections, the
// pooler must know which statements change settings, prepare or deallocate SQL-level statements, discard
// state, or tie the client to its server connection (advisory locks, temp objects, held cursors, LISTEN,
// LOAD), and which may release such a tie.
//
// Cost: nearly every statement has none of these effects, so a byte scan decides first (prefilterHits):
// it looks for the words that start an effectful statement right after the text's start or a `;`, and for
// a few words anywhere (temp, advisory, set_config, execute, pg_settings, U&"). It may flag too much (a
// `;` inside a literal, a word in a comment), never too little: keywords are ASCII in every client
// encoding PostgreSQL accepts, and U&"" (which can spell any identifier) always counts. Only flagged text
// reaches the real PostgreSQL parser (libpg-query, WASM), whose locations are UTF-8 byte offsets.
//
// What is reported is the statement's intent if it succeeds: the pooler itself sees errors, rollbacks and
// the transaction status. Expressions stored to run later (function bodies, views, rules, triggers,
// policies, the query of a PREPARE) are not looked into; the pooler can classify a prepared statement's
// text when it is executed.
import { isUtf8 } from 'node:buffer';
import { hasSqlDetails, loadModule, parseSync, scanSync } from 'libpg-query';

export type Pin = 'advisory' | 'temp' | 'hold' | 'listen' | 'load';
export type Unpin = 'unlisten' | 'advisory_unlock' | 'close' | 'drop';

export interface StatementEffects {
  /**
   * Session settings changed by SET / RESET / SET SESSION (not SET LOCAL, SET TRANSACTION, SET CONSTRAINTS),
   * by SET SESSION AUTHORIZATION ('session_authorization'), SET ROLE ('role'), SET SESSION CHARACTERISTICS
   * (the default_transaction_* settings) and by set_config(name, value, false) with constant arguments
   * called exactly once (in the target list of a SELECT without FROM, WHERE, GROUP BY, HAVING, LIMIT or
   * set operation). The name is lower-cased (PostgreSQL matches setting names case-insensitively); '*' is
   * RESET ALL. The value is what set_config(name, value, false) takes to the same effect (PostgreSQL's
   * flattening of SET arguments: `SET search_path = a, "B"` gives 'a, "B"'); null resets to the default.
   */
  sets: { name: string; value: string | null }[];
  /** A setting may change in a way `sets` cannot say: set_config with arguments not constant, possibly
   *  called zero or several times, or not pg_catalog's; UPDATE pg_settings; SET TIME ZONE INTERVAL '...'. */
  unknownSet: boolean;
  /** DISCARD ALL / PLANS / TEMP / SEQUENCES. Several in one text: the widest ('all' > 'temp' > 'sequences' > 'plans'). */
  discard: 'all' | 'plans' | 'temp' | 'sequences' | null;
  /** SQL-level PREPARE: the name as the parser resolved it, the inner statement's text exactly as written
   *  (from its first token to its last), and the parameter types exactly as written, if given. */
  prepares: { name: string; text: string; paramTypes: string[] }[];
  /** EXECUTE name, also under EXPLAIN and CREATE TABLE AS. */
  executes: string[];
  /**
   * Present when the text is one statement and that statement's only effect is its one EXECUTE (bare, under
   * EXPLAIN or CREATE TABLE AS): the pooler may run it again after the server refused the prepared
   * statement's plan, the client having heard nothing of it yet.
   */
  executeAlone?: true;
  /**
   * The text was not UTF-8 and was read byte for byte (EffectsOptions.asciiSafe): each char of `prepares`' text
   * is one byte of the client's encoding (Buffer.from(text, 'latin1') gives the bytes back). Names are ASCII then.
   */
  bytewise?: true;
  /** DEALLOCATE [PREPARE] name; '*' for ALL. */
  deallocates: string[];
  /**
   * What ties the client to its server connection: 'advisory' (session-level advisory lock functions, not the
   * _xact_ ones), 'temp' (a temporary table, view, sequence, or object created in pg_temp, unless ON COMMIT
   * DROP), 'hold' (DECLARE ... WITH HOLD), 'listen', 'load'. In order of first appearance, without repeats.
   */
  pins: Pin[];
  /** What may release a tie: UNLISTEN, advisory unlock functions, CLOSE, DROP. (A discard is in `discard`.) */
  unpins: Unpin[];
  /** Transaction control: BEGIN / START, COMMIT / END, ROLLBACK / ABORT, savepoints, two-phase commands. */
  txControl: boolean;
}

export interface EffectsOptions {
  /** The session's standard_conforming_strings (from ParameterStatus); default true. */
  standardConformingStrings?: boolean;
  /**
   * The client encoding keeps every byte of a multibyte character at 0x80 or above (every one PostgreSQL has
   * but SJIS, BIG5, GBK, UHC, GB18030 and JOHAB): text that is not UTF-8 lexes the same read byte for byte, as
   * latin1, and is classified so (StatementEffects.bytewise) instead of getting the safe answer.
   */
  asciiSafe?: boolean;
}

/** Text longer than this is not parsed (the WASM heap grows to the largest parse and never shrinks). */
export const MAX_EFFECTS_PARSE_BYTES = 1024 * 1024;

let loading: Promise<void> | undefined;
let ready = false;
let parserRunCount = 0;

/** Loads the WASM parser; await it once before classifying (repeated calls share the load). */
export async function loadStatementParser(): Promise<void> {
  await (loading ??= loadModule().then(() => {
    ready = true;
  }));
}

/** How many times statementEffects went past the prefilter to the parser, since the process started. */
export function parserRuns(): number {
  return parserRunCount;
}

// ---- prefilter ---------------------------------------------------------------------------------------

/** Patterns are compared as `byte | 0x20`: letters lose their case; '_' becomes 0x7f (so DEL matches it: harmless). */
const folded = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'latin1'), (b) => b | 0x20);

// The statements with an effect begin with one of these words (PREPARE TRANSACTION and the rest of
// transaction control included); EXECUTE and TEMP also occur inside others, so they are searched anywhere.
const LEADING: Uint8Array[][] = Array.from({ length: 128 }, () => []);
for (const w of [
  ...['set', 'reset', 'discard', 'prepare', 'execute', 'deallocate', 'listen', 'unlisten', 'load', 'close', 'drop', 'declare'],
  ...['begin', 'start', 'commit', 'end', 'rollback', 'abort', 'savepoint', 'release'],
]) {
  LEADING[w.charCodeAt(0)].push(folded(w));
}
const ADVISORY = folded('advisory');
const SET_CONFIG = folded('set_config');
const EXECUTE = folded('execute');
const PG_TEMP = folded('pg_temp');
const PG_SETTINGS = folded('pg_settings');
const TEMP = folded('temp');
const ORARY = folded('orary');

// The scan stops only at a rare byte of each word, then looks around it: at ';' (a statement may start),
// '&' (U&"), '_' (set_config, pg_temp, pg_settings), 'x' (execute), 'v' (advisory), 'm' (temp).
const ANCHOR = new Uint8Array(256);
for (const c of ';&_xXvVmM') ANCHOR[c.charCodeAt(0)] = 1;

function matches(buf: Buffer, i: number, end: number, word: Uint8Array): boolean {
  if (i + word.length > end) return false;
  for (let j = 0; j < word.length; j++) if ((buf[i + j] | 0x20) !== word[j]) return false;
  return true;
}

/** A byte that continues an unquoted identifier or keyword: letter, digit, '_', '$', or part of a multibyte character. */
function identByte(c: number): boolean {
  const l = c | 0x20;
  return (l >= 0x61 && l <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x5f || c === 0x24 || c >= 0x80;
}

/** Past whitespace and comments (nested block comments, `--` to the end of the line). */
function skipBlank(buf: Buffer, i: number, end: number): number {
  while (i < end) {
    const c = buf[i];
    if (c === 0x20 || (c >= 0x09 && c <= 0x0d)) i++;
    else if (c === 0x2d && i + 1 < end && buf[i + 1] === 0x2d) {
      i += 2;
      while (i < end && buf[i] !== 0x0a && buf[i] !== 0x0d) i++;
    } else if (c === 0x2f && i + 1 < end && buf[i + 1] === 0x2a) {
      let depth = 1;
      i += 2;
      while (i < end && depth > 0) {
        if (buf[i] === 0x2a && i + 1 < end && buf[i + 1] === 0x2f) {
          depth--;
          i += 2;
        } else if (buf[i] === 0x2f && i + 1 < end && buf[i + 1] === 0x2a) {
          depth++;
          i += 2;
        } else i++;
      }
    } else break;
  }
  return i;
}

/** Does a statement that may start at i begin with one of the LEADING words? */
function leadingWord(buf: Buffer, i: number, end: number): boolean {
  i = skipBlank(buf, i, end);
  if (i >= end) return false;
  const c = buf[i] | 0x20;
  if (c < 0x61 || c > 0x7a) return false;
  for (const w of LEADING[c]) {
    if (matches(buf, i, end, w) && (i + w.length === end || !identByte(buf[i + w.length]))) return true;
  }
  return false;
}

/** TEMP or TEMPORARY as a word (not `template`, `attempt`). */
function tempWord(buf: Buffer, i: number, start: number, end: number): boolean {
  if ((i > start && identByte(buf[i - 1])) || !matches(buf, i, end, TEMP)) return false;
  const after = i + 4;
  return after === end || !identByte(buf[after]) || matches(buf, after, end, ORARY);
}

/**
 * True if buf[start, end) may have an effect: a statement beginning (at the start or after any `;`, past
 * blanks and comments) with SET, RESET, DISCARD, PREPARE, EXECUTE, DEALLOCATE, LISTEN, UNLISTEN, LOAD, CLOSE,
 * DROP, DECLARE or a transaction command; or anywhere the words TEMP / TEMPORARY, or advisory, set_config,
 * execute, pg_temp, pg_settings, or U&" (ASCII case-insensitive). False means statementEffects returns null.
 */
export function prefilterHits(sql: Buffer, start: number, end: number): boolean {
  if (leadingWord(sql, start, end)) return true;
  for (let i = start; i < end; i++) {
    const c = sql[i];
    if (ANCHOR[c] === 0) continue;
    switch (c | 0x20) {
      case 0x3b: // ;
        if (leadingWord(sql, i + 1, end)) return true;
        break;
      case 0x26: // U&"
        if (i > start && (sql[i - 1] | 0x20) === 0x75 && i + 1 < end && sql[i + 1] === 0x22) return true;
        break;
      case 0x7f: // _
        if (i - 3 >= start && matches(sql, i - 3, end, SET_CONFIG)) return true;
        if (i - 2 >= start && (matches(sql, i - 2, end, PG_TEMP) || matches(sql, i - 2, end, PG_SETTINGS))) return true;
        break;
      case 0x78: // x
        if (i - 1 >= start && matches(sql, i - 1, end, EXECUTE)) return true;
        break;
      case 0x76: // v
        if (i - 2 >= start && matches(sql, i - 2, end, ADVISORY)) return true;
        break;
      case 0x6d: // m
        if (i - 2 >= start && tempWord(sql, i - 2, start, end)) return true;
        break;
    }
  }
  return false;
}

/**
 * True if buf[start, end) may begin a read-only transaction block (BEGIN / START TRANSACTION / SET TRANSACTION
 * ... READ ONLY): it holds the word ONLY anywhere (ASCII case-insensitive; U&"" spells identifiers, never the
 * keyword). The relay's mentions_only is the same check.
 */
export function mentionsOnly(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i + 4 <= end; i++) {
    if ((buf[i] | 0x20) === 0x6f && (buf[i + 1] | 0x20) === 0x6e && (buf[i + 2] | 0x20) === 0x6c && (buf[i + 3] | 0x20) === 0x79) return true;
  }
  return false;
}

// ---- classification -----------------------------------------------------------------------------------

/**
 * The effects of the statement(s) in sql[start, end) (a Query's or Parse's text; it ends at the first NUL,
 * so a terminator inside the range does no harm), classified as a whole; null when there are none (decided
 * by the prefilter alone when it can) or when the text does not parse (the server reports that error).
 * Synchronous; needs loadStatementParser() first. Text that passes the prefilter but cannot be parsed
 * faithfully (longer than MAX_EFFECTS_PARSE_BYTES, not UTF-8 without opts.asciiSafe, or lexed differently with
 * standard_conforming_strings off) gets the safe answer: unknownSet, every pin and unpin, txControl.
 */
export function statementEffects(sql: Buffer, start = 0, end = sql.length, opts: EffectsOptions = {}): StatementEffects | null {
  if (!ready) throw new Error('statementEffects: await loadStatementParser() first');
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > sql.length || start > end) {
    throw new RangeError(`statementEffects: range [${start}, ${end}) is not within a buffer of ${sql.length} bytes`);
  }
  if (!prefilterHits(sql, start, end)) return null;
  let stop = start;
  while (stop < end && sql[stop] !== 0) stop++;
  if (bareTransaction(sql, start, stop)) return { ...none(), txControl: true };
  const bytes = sql.subarray(start, stop);
  if (bytes.length === 0) return null;
  if (bytes.length > MAX_EFFECTS_PARSE_BYTES) return unexamined();
  const utf8 = isUtf8(bytes);
  if (!utf8 && opts.asciiSafe !== true) return unexamined();
  parserRunCount++;
  const text = bytes.toString(utf8 ? 'utf8' : 'latin1');
  if (opts.standardConformingStrings === false && bytes.includes(0x5c) && !lexesAlikeWithoutScs(text)) return unexamined();
  let tree: J;
  try {
    tree = parseSync(text);
  } catch (e) {
    if (hasSqlDetails(e)) return null;
    throw e;
  }
  try {
    const acc = none();
    const stmts: J[] = tree.stmts ?? [];
    // The parser's locations are offsets into the UTF-8 of what it was given: for text read as latin1, its UTF-8.
    const parsed = utf8 ? bytes : Buffer.from(text, 'utf8');
    for (const raw of stmts) statement(parsed, raw, acc);
    if (isNone(acc)) return null;
    if (!utf8) {
      // A name the rest of the proxy reads as UTF-8 (protocol messages): one that is not ASCII cannot be told.
      if (!acc.prepares.every((p) => ascii(p.name)) || !acc.executes.every(ascii) || !acc.deallocates.every(ascii)) return unexamined();
      acc.bytewise = true;
    }
    if (stmts.length === 1 && acc.executes.length === 1 && isNone({ ...acc, executes: [] })) acc.executeAlone = true;
    return acc;
  } catch (e) {
    if (e instanceof Inconsistent) return unexamined(); // parser and scanner disagree: do not guess
    throw e;
  }
}

const ascii = (s: string): boolean => !/[\u0080-\uffff]/.test(s);

const none = (): StatementEffects => ({
  sets: [],
  unknownSet: false,
  discard: null,
  prepares: [],
  executes: [],
  deallocates: [],
  pins: [],
  unpins: [],
  txControl: false,
});

const isNone = (e: StatementEffects): boolean =>
  !e.sets.length &&
  !e.unknownSet &&
  !e.discard &&
  !e.prepares.length &&
  !e.executes.length &&
  !e.deallocates.length &&
  !e.pins.length &&
  !e.unpins.length &&
  !e.txControl;

const unexamined = (): StatementEffects => ({
  ...none(),
  unknownSet: true,
  pins: ['advisory', 'temp', 'hold', 'listen', 'load'],
  unpins: ['unlisten', 'advisory_unlock', 'close', 'drop'],
  txControl: true,
});

class Inconsistent extends Error {}

const TX_ALONE = ['begin', 'commit', 'end', 'rollback', 'abort'].map(folded);
const TX_SECOND = ['work', 'transaction'].map(folded);
const START = folded('start');

/** Exactly `BEGIN;`, `END`, `COMMIT WORK`, `START TRANSACTION` and the like (blanks around, at most one `;` after):
 *  the hot transaction commands, known without the parser. */
function bareTransaction(b: Buffer, start: number, end: number): boolean {
  let i = skipSpaces(b, start, end);
  const first = wordEnd(b, i, end);
  const isStart = word(b, i, first, START);
  if (!isStart && !TX_ALONE.some((w) => word(b, i, first, w))) return false;
  i = skipSpaces(b, first, end);
  const second = wordEnd(b, i, end);
  if (second > i) {
    if (!(isStart ? word(b, i, second, TX_SECOND[1]) : TX_SECOND.some((w) => word(b, i, second, w)))) return false;
    i = skipSpaces(b, second, end);
  } else if (isStart) return false;
  if (i < end && b[i] === 0x3b) i = skipSpaces(b, i + 1, end);
  return i === end;
}

function wordEnd(b: Buffer, i: number, end: number): number {
  while (i < end && identByte(b[i])) i++;
  return i;
}

function word(b: Buffer, i: number, wordEnd: number, w: Uint8Array): boolean {
  return wordEnd - i === w.length && matches(b, i, wordEnd, w);
}

function skipSpaces(b: Buffer, i: number, end: number): number {
  while (i < end && (b[i] === 0x20 || (b[i] >= 0x09 && b[i] <= 0x0d))) i++;
  return i;
}

/** With standard_conforming_strings off a backslash escapes in '' literals; the parser lexes with it on.
 *  The two lexings agree unless a '' literal (as lexed with it on) holds a backslash. */
function lexesAlikeWithoutScs(text: string): boolean {
  try {
    return !scanSync(text).tokens.some((t) => t.tokenName === 'SCONST' && t.text.startsWith("'") && t.text.includes('\\'));
  } catch {
    return false;
  }
}

// ---- statements --------------------------------------------------------------------------------------

// The JSON tree: a Node-typed field holds {Type: {...}}; a field of a fixed struct type holds the struct.
type J = Record<string, any>;

const CURSOR_OPT_HOLD = 0x20;
const DISCARD: Record<string, NonNullable<StatementEffects['discard']>> = {
  DISCARD_ALL: 'all',
  DISCARD_TEMP: 'temp',
  DISCARD_SEQUENCES: 'sequences',
  DISCARD_PLANS: 'plans',
};
const DISCARD_RANK = { all: 3, temp: 2, sequences: 1, plans: 0 };

function pin(acc: StatementEffects, p: Pin): void {
  if (!acc.pins.includes(p)) acc.pins.push(p);
}
function unpin(acc: StatementEffects, u: Unpin): void {
  if (!acc.unpins.includes(u)) acc.unpins.push(u);
}

/** One statement of the tree: what only a whole statement can do, then the expressions in it. */
function statement(bytes: Buffer, raw: J, acc: StatementEffects): void {
  const wrapped: J = raw.stmt;
  const type = Object.keys(wrapped)[0];
  const b: J = wrapped[type];
  let onceCalls: Set<J> | undefined;
  switch (type) {
    case 'VariableSetStmt':
      variableSet(b, acc);
      break;
    case 'DiscardStmt': {
      const d = DISCARD[b.target];
      if (!d) throw new Inconsistent(`DISCARD ${b.target}`);
      if (!acc.discard || DISCARD_RANK[d] > DISCARD_RANK[acc.discard]) acc.discard = d;
      break;
    }
    case 'PrepareStmt': {
      const loc: number = raw.stmt_location ?? 0;
      acc.prepares.push(prepare(bytes, loc, raw.stmt_len ? loc + raw.stmt_len : bytes.length, b));
      break;
    }
    case 'DeallocateStmt':
      acc.deallocates.push(b.isall ? '*' : b.name);
      break;
    case 'DeclareCursorStmt':
      if ((b.options ?? 0) & CURSOR_OPT_HOLD) pin(acc, 'hold');
      break;
    case 'ListenStmt':
      pin(acc, 'listen');
      break;
    case 'LoadStmt':
      pin(acc, 'load');
      break;
    case 'UnlistenStmt':
      unpin(acc, 'unlisten');
      break;
    case 'ClosePortalStmt':
      unpin(acc, 'close');
      break;
    case 'DropStmt':
    case 'DropOwnedStmt':
      unpin(acc, 'drop');
      break;
    case 'TransactionStmt':
      acc.txControl = true;
      break;
    case 'SelectStmt':
      onceCalls = calledOnce(b);
      break;
  }
  walk(wrapped, acc, onceCalls);
}

// ---- SET -------------------------------------------------------------------------------------------------

/** Settings whose SET arguments PostgreSQL quotes as identifiers when flattening (GUC_LIST_QUOTE). */
const LIST_QUOTE = new Set([
  'search_path',
  'temp_tablespaces',
  'local_preload_libraries',
  'session_preload_libraries',
  'shared_preload_libraries',
  'unix_socket_directories',
]);
/** SET SESSION CHARACTERISTICS AS TRANSACTION sets these. */
const SESSION_CHARACTERISTICS: Record<string, string> = {
  transaction_isolation: 'default_transaction_isolation',
  transaction_read_only: 'default_transaction_read_only',
  transaction_deferrable: 'default_transaction_deferrable',
};

/** PostgreSQL matches setting names with ASCII-only case folding. */
function settingName(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out += c >= 65 && c <= 90 ? String.fromCharCode(c + 32) : s[i];
  }
  return out;
}

function variableSet(b: J, acc: StatementEffects): void {
  if (b.is_local) return;
  const name = settingName(b.name ?? '');
  switch (b.kind) {
    case 'VAR_SET_VALUE': {
      const value = flatten(name, b.args ?? []);
      if (value === undefined) acc.unknownSet = true;
      else acc.sets.push({ name, value });
      return;
    }
    case 'VAR_SET_DEFAULT':
    case 'VAR_RESET':
      acc.sets.push({ name, value: null });
      return;
    case 'VAR_RESET_ALL':
      acc.sets.push({ name: '*', value: null });
      return;
    case 'VAR_SET_MULTI': // SET TRANSACTION ... only lasts for the transaction
      if (b.name !== 'SESSION CHARACTERISTICS') return;
      for (const item of b.args ?? []) {
        const d: J | undefined = item.DefElem;
        const target: string | undefined = d && SESSION_CHARACTERISTICS[d.defname];
        const value = target && d?.arg ? flatten(target, [d.arg]) : undefined;
        if (target && value !== undefined) acc.sets.push({ name: target, value });
        else acc.unknownSet = true;
      }
      return;
    case 'VAR_SET_CURRENT': // FROM CURRENT keeps the value
      return;
    default:
      throw new Inconsistent(`SET kind ${b.kind}`);
  }
}

/** SET's arguments as one string, the way PostgreSQL flattens them before setting; undefined for an
 *  INTERVAL (which PostgreSQL normalises through the interval type: not reproduced here). */
function flatten(name: string, args: J[]): string | undefined {
  const parts: string[] = [];
  for (const a of args) {
    const c: J | undefined = a.A_Const;
    if (!c) return undefined;
    if (c.ival) parts.push(String(c.ival.ival ?? 0));
    else if (c.fval) parts.push(c.fval.fval);
    else if (c.sval) {
      const s: string = c.sval.sval ?? '';
      parts.push(LIST_QUOTE.has(name) ? quoteIdentifier(s) : s);
    } else return undefined;
  }
  return parts.length ? parts.join(', ') : undefined;
}

/** PostgreSQL's quote_identifier: bare when lower-case letters, digits and '_' (not first a digit), and not a keyword beyond unreserved. */
function quoteIdentifier(s: string): string {
  let safe = s.length > 0 && ((s[0] >= 'a' && s[0] <= 'z') || s[0] === '_');
  for (let i = 1; safe && i < s.length; i++) safe = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] === '_';
  if (safe) {
    const toks = scanSync(s).tokens;
    safe = !(toks.length === 1 && toks[0].keywordKind > 1);
  }
  return safe ? s : `"${s.replaceAll('"', '""')}"`;
}

// ---- PREPARE ---------------------------------------------------------------------------------------------

interface Tok {
  start: number;
  end: number;
  text: string;
  keyword: boolean;
}

/** The statement's tokens without comments; offsets into bytes. */
function tokens(bytes: Buffer, start: number, end: number): Tok[] {
  const out: Tok[] = [];
  for (const t of scanSync(bytes.toString('utf8', start, end)).tokens) {
    if (t.tokenName === 'C_COMMENT' || t.tokenName === 'SQL_COMMENT') continue;
    out.push({ start: start + t.start, end: start + t.end, text: t.text, keyword: t.keywordKind > 0 });
  }
  return out;
}

/** PREPARE name [(type, ...)] AS statement: the parser has no end offsets, so the scanner's tokens give the text. */
function prepare(bytes: Buffer, start: number, end: number, b: J): StatementEffects['prepares'][number] {
  const toks = tokens(bytes, start, end);
  if (toks[0]?.text.toUpperCase() !== 'PREPARE') throw new Inconsistent(`PREPARE ${b.name}: the statement does not start with PREPARE`);
  const paramTypes: string[] = [];
  let i = 2; // past PREPARE and the name
  if (toks[i]?.text === '(') {
    let depth = 0;
    let first = i + 1;
    for (; i < toks.length; i++) {
      const t = toks[i].text;
      if (t === '(') depth++;
      else if ((t === ')' && --depth === 0) || (t === ',' && depth === 1)) {
        if (first < i) paramTypes.push(bytes.toString('utf8', toks[first].start, toks[i - 1].end));
        first = i + 1;
        if (depth === 0) break;
      }
    }
    i++;
  }
  const as = toks[i];
  const body = toks[i + 1];
  if (!as?.keyword || as.text.toUpperCase() !== 'AS' || !body || paramTypes.length !== (b.argtypes?.length ?? 0)) {
    throw new Inconsistent(`PREPARE ${b.name}: tokens do not match the parse tree`);
  }
  return { name: b.name, text: bytes.toString('utf8', body.start, toks[toks.length - 1].end), paramTypes };
}

// ---- expressions -----------------------------------------------------------------------------------------

/** Nodes whose expressions are stored to run later, not now. */
const STORED = new Set(['CreateFunctionStmt', 'ViewStmt', 'RuleStmt', 'CreateTrigStmt', 'CreatePolicyStmt', 'AlterPolicyStmt', 'PrepareStmt']);

const ADVISORY_LOCKS = new Set(['pg_advisory_lock', 'pg_advisory_lock_shared', 'pg_try_advisory_lock', 'pg_try_advisory_lock_shared']);
const ADVISORY_UNLOCKS = new Set(['pg_advisory_unlock', 'pg_advisory_unlock_shared', 'pg_advisory_unlock_all']);

const tempSchema = (s: unknown): boolean => typeof s === 'string' && (s === 'pg_temp' || s.startsWith('pg_temp_'));
/** A relation that outlives the transaction in the session's temporary schema. */
const tempRel = (rel: J | undefined, onCommit?: string): boolean =>
  !!rel && (rel.relpersistence === 't' || tempSchema(rel.schemaname)) && onCommit !== 'ONCOMMIT_DROP';
const tempName = (names: J[] | undefined): boolean => !!names && names.length > 1 && tempSchema(names[names.length - 2].String?.sval);

/** Statements creating an object, and whether they create it in the temporary schema. */
const CREATES_TEMP: Record<string, (b: J) => boolean> = {
  CreateStmt: (b) => tempRel(b.relation, b.oncommit),
  CreateTableAsStmt: (b) => tempRel(b.into?.rel, b.into?.onCommit),
  SelectStmt: (b) => tempRel(b.intoClause?.rel, b.intoClause?.onCommit),
  ViewStmt: (b) => tempRel(b.view),
  CreateSeqStmt: (b) => tempRel(b.sequence),
  CompositeTypeStmt: (b) => tempRel(b.typevar),
  CreateFunctionStmt: (b) => tempName(b.funcname),
  CreateEnumStmt: (b) => tempName(b.typeName),
  CreateRangeStmt: (b) => tempName(b.typeName),
  CreateDomainStmt: (b) => tempName(b.domainname),
  DefineStmt: (b) => tempName(b.defnames),
};

/** Every node of the tree except stored expressions. */
function walk(v: unknown, acc: StatementEffects, once: Set<J> | undefined): void {
  if (Array.isArray(v)) {
    for (const x of v) walk(x, acc, once);
    return;
  }
  if (v === null || typeof v !== 'object') return;
  for (const k in v) {
    const x: unknown = (v as J)[k];
    if (x === null || typeof x !== 'object') continue;
    const c = k.charCodeAt(0);
    if (c >= 65 && c <= 90 && !Array.isArray(x)) {
      node(k, x, acc, once);
      if (STORED.has(k)) continue;
    }
    walk(x, acc, once);
  }
}

function node(type: string, b: J, acc: StatementEffects, once: Set<J> | undefined): void {
  switch (type) {
    case 'FuncCall':
      funcCall(b, acc, once?.has(b) ?? false);
      return;
    case 'ExecuteStmt':
      acc.executes.push(b.name);
      return;
    case 'UpdateStmt': // pg_settings' update rule calls set_config(name, setting, false)
      if (b.relation?.relname === 'pg_settings' && (b.relation.schemaname == null || b.relation.schemaname === 'pg_catalog')) acc.unknownSet = true;
      return;
  }
  if (CREATES_TEMP[type]?.(b)) pin(acc, 'temp');
}

/** The calls a SELECT evaluates exactly once: top-level targets when nothing filters or multiplies rows. */
function calledOnce(s: J): Set<J> | undefined {
  if (s.fromClause || s.whereClause || s.groupClause || s.havingClause || s.limitCount || s.limitOffset || s.valuesLists || s.op !== 'SETOP_NONE') {
    return undefined;
  }
  const out = new Set<J>();
  for (const t of s.targetList ?? []) if (t.ResTarget?.val?.FuncCall) out.add(t.ResTarget.val.FuncCall);
  return out;
}

function funcCall(fc: J, acc: StatementEffects, once: boolean): void {
  const parts: string[] = (fc.funcname ?? []).map((p: J) => p.String?.sval ?? '');
  const name = parts[parts.length - 1];
  if (name === 'set_config') setConfig(fc, parts.length > 1 ? parts[parts.length - 2] : null, acc, once);
  else if (ADVISORY_LOCKS.has(name)) pin(acc, 'advisory');
  else if (ADVISORY_UNLOCKS.has(name)) unpin(acc, 'advisory_unlock');
}

function setConfig(fc: J, schema: string | null, acc: StatementEffects, once: boolean): void {
  const args = setConfigArgs(fc);
  if (!args || (schema !== null && schema !== 'pg_catalog')) {
    acc.unknownSet = true;
    return;
  }
  const isLocal = constBool(args[2]);
  if (isLocal === true) return; // like SET LOCAL: gone at the end of the transaction
  const name = constText(args[0]);
  const value = constText(args[1]);
  if (once && isLocal === false && typeof name === 'string' && value !== undefined) acc.sets.push({ name: settingName(name), value });
  else acc.unknownSet = true;
}

/** The three arguments of a plain positional call; undefined for any other form (set_config has no
 *  parameter names in PostgreSQL 15, but one may have been created that resolves: not ours to guess). */
function setConfigArgs(fc: J): J[] | undefined {
  if (fc.agg_star || fc.agg_distinct || fc.func_variadic || fc.agg_order || fc.agg_filter || fc.over) return undefined;
  const args: J[] = fc.args ?? [];
  return args.length === 3 && !args.some((x) => x.NamedArgExpr) ? args : undefined;
}

/** A constant text argument: a string literal or NULL (null), optionally cast to text; undefined otherwise. */
function constText(e: J): string | null | undefined {
  const c: J | undefined = e.A_Const ?? castTo(e, 'text')?.A_Const;
  if (!c) return undefined;
  if (c.isnull) return null;
  return c.sval ? (c.sval.sval ?? '') : undefined;
}

/** A constant boolean argument as set_config reads it (NULL is false); undefined when not constant. */
function constBool(e: J): boolean | undefined {
  const c: J | undefined = e.A_Const ?? castTo(e, 'bool')?.A_Const;
  if (!c) return undefined;
  if (c.isnull) return false;
  if (c.boolval) return c.boolval.boolval ?? false;
  return c.sval ? parseBool(c.sval.sval ?? '') : undefined;
}

function castTo(e: J, type: string): J | undefined {
  const t: J | undefined = e.TypeCast?.typeName;
  if (!t?.names || t.typmods || t.arrayBounds) return undefined;
  return t.names[t.names.length - 1].String?.sval === type ? e.TypeCast.arg : undefined;
}

/** PostgreSQL's boolean input: a prefix of true/false/yes/no, on/off (two letters at least), 1/0, any case. */
function parseBool(s: string): boolean | undefined {
  const v = s.trim().toLowerCase();
  if (!v) return undefined;
  if ('true'.startsWith(v) || 'yes'.startsWith(v) || v === 'on' || v === '1') return true;
  if ('false'.startsWith(v) || 'no'.startsWith(v) || v === 'of' || v === 'off' || v === '0') return false;
  return undefined;
}
