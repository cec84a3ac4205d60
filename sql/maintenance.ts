// Keeps what the proxy and the SQL functions write from growing without bound: steadytext_cache rows older
// than cache_ttl_seconds (the lookup no longer returns them, so they only take space: steadytext_cache_evict,
// the SQL API's own), log entries past their retention, and mailbox rows nobody took. Run by each database's
// proxy (Database) now and then on its service connection, in batches, so that no statement holds many locks long.
import { deleteSkipLocked, type Queryable } from './handover.js';
import { quoteIdent } from './install.js';

/** How often a database is maintained (the first time a minute after it is prepared). */
export const MAINTENANCE_EVERY_MS = 5 * 60_000;
/** Errors and events (steadytext_logs) and debug entries are kept this long. */
export const LOG_RETENTION = '7 days';
export const DEBUG_LOG_RETENTION = '1 day';
/** Rows deleted per statement: a large backlog goes in several short transactions. */
const BATCH = 10_000;

export interface Maintained { cache: number; logs: number; debugLogs: number; mailbox: number }

export async function maintain(q: Queryable, schema: string): Promise<Maintained> {
  const s = quoteIdent(schema);
  const cache = Number((await q.query(`SELECT ${s}.steadytext_cache_evict() AS n`)).rows[0]?.n ?? 0);
  const older = async (table: string, column: string, age: string): Promise<number> => {
    let total = 0;
    for (;;) {
      const r = await q.query(deleteSkipLocked(schema, table,
        `${column} OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) '${age}'::pg_catalog.interval)`, BATCH));
      total += r.rowCount ?? 0;
      if ((r.rowCount ?? 0) < BATCH) return total;
    }
  };
  const logs = await older('steadytext_logs', '"timestamp"', LOG_RETENTION);
  const debugLogs = await older('steadytext_debug_logs', '"timestamp"', DEBUG_LOG_RETENTION);
  const mailbox = await older('steadytext_mailbox', 'created_at', '10 minutes');
  return { cache, logs, debugLogs, mailbox };
}
