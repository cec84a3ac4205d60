// Standing wake-up locks of in-band calls (sql/migrations/010_inband_standing_wake.sql). Once a backend has
// asked in-band, the proxy holds a lock for it on the database's listener connection, keyed by an HMAC under
// the daemon secret of the backend's pid and the nonce its session keeps: its next waiting call finds the lock
// held and blocks on it at once, instead of napping until the proxy has taken a lock for that request, a round
// trip after the notice, while the model computes the answer. Answered, the lock is let go (the call wakes to
// the committed answer) and taken again behind it.
import { createHmac } from 'node:crypto';
import type pg from 'pg';
import type { Queryable, Statement } from './handover.js';

/** The advisory lock class of the standing locks ('STEY'); the per-request ones are 'STEX' (databases.ts). */
export const STANDING_CLASS = 1398031705;

/** Standing locks one listener holds at most (the least recently used go first): each takes a lock table slot. */
const MAX_STANDING = 256;

/** A session-level advisory lock (class, key) on the listener, taken if free: the per-request wake-up's too (databases.ts). */
export const TRY_LOCK = 'SELECT pg_catalog.pg_try_advisory_lock($1::pg_catalog.int4, $2::pg_catalog.int4) AS held';
// Blocking, within the listener's lock_timeout: granted once the function just woken lets go of its shared hold.
const LOCK = 'SELECT pg_catalog.pg_advisory_lock($1::pg_catalog.int4, $2::pg_catalog.int4)';
export const UNLOCK = 'SELECT pg_catalog.pg_advisory_unlock($1::pg_catalog.int4, $2::pg_catalog.int4)';
const ALIVE = 'SELECT pid FROM pg_catalog.pg_stat_activity WHERE pid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int4[])';

/**
 * Commits `write` (one statement, on its own) and lets go of the advisory lock (class, key) behind it, in one round
 * trip on the lock's pipelined connection: the function waiting on the lock wakes to the committed answer. The
 * unlock runs after the write's Sync, whether it committed or failed.
 */
export async function commitThenUnlock(holder: pg.Client, write: Statement, lockClass: number, key: number): Promise<void> {
  const done = holder.query(write.text, write.values);
  const woken = holder.query(UNLOCK, [lockClass, key]);
  try {
    await done;
  } finally {
    await woken.catch(() => {});
  }
}

/** The key of a backend's standing lock, as _steadytext_inband_call computes it: the HMAC's first 32 bits. */
export function standingKey(secret: string, backendPid: number, nonce: string): number {
  return createHmac('sha256', Buffer.from(secret, 'utf8')).update(`wake:${backendPid}:${nonce}`, 'utf8').digest().readInt32BE(0);
}

interface Held { key: number; nonce: string }

/** The standing locks held on one listener connection (pipelined: each call below is one round trip). */
export class StandingWakes {
  private readonly held = new Map<number, Held>();
  private readonly taking = new Set<number>();

  constructor(private readonly holder: pg.Client, private readonly secret: () => string | undefined) {}

  /** Whether the lock a call of `backendPid` with `nonce` found held is this one's. */
  holds(backendPid: number, nonce: string): boolean {
    return this.held.get(backendPid)?.nonce === nonce;
  }

  /**
   * After a request of `backendPid` that found no standing lock: takes one for its session's `nonce`, letting
   * go of the one for an earlier nonce. Never throws; a key another session holds (only a shared hold left by a
   * cancelled call can be) is simply not taken.
   */
  async take(backendPid: number, nonce: string): Promise<void> {
    const secret = this.secret();
    if (secret === undefined || this.taking.has(backendPid) || this.holds(backendPid, nonce)) return;
    this.taking.add(backendPid);
    try {
      void this.release(backendPid);
      const key = standingKey(secret, backendPid, nonce);
      if ((await this.holder.query(TRY_LOCK, [STANDING_CLASS, key])).rows[0]?.held !== true) return;
      this.held.set(backendPid, { key, nonce });
      if (this.held.size > MAX_STANDING) void this.release(this.held.keys().next().value!);
    } catch {
      // the listener is gone: so are its locks, and this object with it
    } finally {
      this.taking.delete(backendPid);
    }
  }

  /**
   * commitThenUnlock with `backendPid`'s standing lock, so that its waiting call wakes to the committed answer, then
   * takes the lock again, in the same round trip. Taken again only once the woken call lets go of its shared hold:
   * if that does not come within the listener's lock_timeout, the backend's next request goes the old way, and
   * takes it afresh.
   */
  async commitThenWake(backendPid: number, write: Statement): Promise<void> {
    const h = this.held.get(backendPid);
    if (h === undefined) throw new Error(`no standing wake-up lock for backend ${backendPid}`);
    this.held.delete(backendPid);
    this.held.set(backendPid, h); // the most recently used
    const woken = commitThenUnlock(this.holder, write, STANDING_CLASS, h.key);
    this.holder.query(LOCK, [STANDING_CLASS, h.key]).catch(() => {
      if (this.held.get(backendPid) === h) this.held.delete(backendPid);
    });
    await woken;
  }

  /** Lets go of the standing locks of backends that have ended (`q`: any service connection). */
  async sweep(q: Queryable): Promise<void> {
    const pids = [...this.held.keys()];
    if (pids.length === 0) return;
    const alive = new Set((await q.query(ALIVE, [pids])).rows.map((r: { pid: number }) => r.pid));
    await Promise.all(pids.filter((pid) => !alive.has(pid)).map((pid) => this.release(pid)));
  }

  private async release(backendPid: number): Promise<void> {
    const h = this.held.get(backendPid);
    if (h === undefined) return;
    this.held.delete(backendPid);
    await this.holder.query(UNLOCK, [STANDING_CLASS, h.key]).catch(() => {});
  }
}
