// Pure splicing over the client's own bytes: the statement keeps its text, comments and hints; only
// insertions at offsets that findCalls reported (UTF-8 byte offsets) are made.
import { ANSWER_ARG, type SteadyCall } from './calls.js';

export interface Insertion { at: number; text: string }

/** Inserts several texts at once. Offsets refer to the original buffer; equal offsets keep their order. */
export function insertAll(sql: Buffer, items: readonly Insertion[]): Buffer {
  if (items.length === 0) return sql;
  const sorted = items.map((x, i) => ({ ...x, i })).sort((a, b) => a.at - b.at || a.i - b.i);
  const parts: Buffer[] = [];
  let prev = 0;
  for (const { at, text } of sorted) {
    if (!Number.isInteger(at) || at < 0 || at > sql.length) throw new RangeError(`insertion offset ${at} outside 0..${sql.length}`);
    parts.push(sql.subarray(prev, at), Buffer.from(text, 'utf8'));
    prev = at;
  }
  parts.push(sql.subarray(prev));
  return Buffer.concat(parts);
}

type CallLike = Pick<SteadyCall, 'close' | 'args' | 'plain'>;

/** The insertion that appends `_steadytext_answer => argSql` before the call's closing parenthesis. */
export function answerInsertion(sql: Buffer, call: CallLike, argSql: string): Insertion {
  if (sql[call.close] !== 0x29) throw new Error(`no ")" at byte ${call.close}: call and buffer do not match`);
  if (!call.plain) throw new Error('this call cannot take an appended argument');
  return { at: call.close, text: `${call.args.length ? ', ' : ''}${ANSWER_ARG} => ${argSql}` };
}

/** Appends `_steadytext_answer => argSql` (a literal from quoteLiteral, or `$n`) to one call. */
export function appendArgument(sql: Buffer, call: CallLike, argSql: string): Buffer {
  return insertAll(sql, [answerInsertion(sql, call, argSql)]);
}

/** Appends the answer argument to several calls of the same buffer (nested calls included). */
export function appendArguments(sql: Buffer, edits: readonly { call: CallLike; argSql: string }[]): Buffer {
  return insertAll(sql, edits.map((e) => answerInsertion(sql, e.call, e.argSql)));
}

/**
 * A string literal that PostgreSQL reads back as exactly `text`, whatever it contains and whether
 * standard_conforming_strings is on or off: E'' strings always treat backslash as the escape, so doubling
 * every backslash and every quote leaves nothing to interpret. NUL cannot be stored in PostgreSQL text and
 * a lone UTF-16 surrogate has no UTF-8 form: both are rejected rather than silently altered.
 */
export function quoteLiteral(text: string): string {
  if (text.includes('\0')) throw new Error('text contains NUL, which PostgreSQL text cannot hold');
  const wellFormed = (text as { isWellFormed?: () => boolean }).isWellFormed?.() // Node >= 20
    ?? Buffer.from(text, 'utf8').toString('utf8') === text;
  if (!wellFormed) throw new Error('text is not well-formed UTF-16 (lone surrogate)');
  return `E'${text.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`;
}
