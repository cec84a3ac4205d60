// Which transaction blocks an in-band miss would stop outright. A function that misses the cache inside a
// read-only block at REPEATABLE READ or SERIALIZABLE can neither see an answer committed later nor receive one
// through a large object (writing is refused), so it stops its statement with 40001 (migration 007); only a
// fenced statement can then be run again with the answers handed over in the session. A session is fenced in
// full once it asked in-band; before that, only the blocks this says may be such are (SessionContext.fenceNarrow),
// so that a session's first read-only block does not fail where later ones succeed.
//
// Known from what the proxy sees: the Query that began the block (BEGIN / START TRANSACTION options, a SET
// TRANSACTION in the same text), or a later Query of the block mentioning ONLY (a SET TRANSACTION READ ONLY of its
// own, client.ts), and the session's default_transaction_read_only, which PostgreSQL 14+ reports (SET SESSION
// CHARACTERISTICS sets it). The isolation level's default is not reported, so a read-only block is taken to be at
// REPEATABLE READ unless the Query says otherwise.
import { parseSync } from 'libpg-query';
import { nodeOf, type J } from './calls.js';

const decided = new WeakMap<Buffer, boolean>();

/**
 * True when the block begun by `opener` (a Query message, or null when unknown) may be read-only at
 * REPEATABLE READ or SERIALIZABLE, given the session's default_transaction_read_only.
 */
export function mayStopInBlock(opener: Buffer | null, defaultReadOnly: boolean): boolean {
  if (opener === null) return defaultReadOnly;
  let d = decided.get(opener);
  if (d === undefined) {
    const c = characteristics(opener);
    d = (c.readOnly ?? defaultReadOnly) && c.isolation !== 'read committed' && c.isolation !== 'read uncommitted';
    decided.set(opener, d);
  }
  return d;
}

interface Characteristics {
  /** undefined: the session's default. */
  readOnly?: boolean;
  isolation?: string;
}

/** What the Query's transaction control says of the block it begins (nothing when it does not parse). */
function characteristics(query: Buffer): Characteristics {
  const out: Characteristics = {};
  let stmts: J[];
  try {
    stmts = parseSync(query.toString('utf8', 5, query.length - 1)).stmts ?? [];
  } catch {
    return out;
  }
  for (const raw of stmts) {
    const n = nodeOf(raw.stmt);
    if (n === null) continue;
    const [type, body] = n;
    const options = type === 'TransactionStmt' && (body.kind === 'TRANS_STMT_BEGIN' || body.kind === 'TRANS_STMT_START')
      ? body.options
      : type === 'VariableSetStmt' && body.kind === 'VAR_SET_MULTI' && body.name === 'TRANSACTION'
        ? body.args
        : undefined;
    for (const o of (options ?? []) as J[]) {
      const def = nodeOf(o);
      if (def === null || def[0] !== 'DefElem') continue;
      const value = nodeOf(def[1].arg)?.[1];
      if (def[1].defname === 'transaction_read_only') out.readOnly = (value?.ival?.ival ?? 0) !== 0;
      else if (def[1].defname === 'transaction_isolation' && typeof value?.sval?.sval === 'string') out.isolation = value.sval.sval;
    }
  }
  return out;
}
