// Cancel keys. Each session gets a BackendKeyData of the proxy's own (random pid and secret); the real
// upstream key never reaches the client. A CancelRequest carrying a key the proxy issued cancels that
// session's running upstream query; any other key (forged, stale, wrong secret) does nothing, as with
// the server itself (no answer either way).
// With several worker processes each has its own registry; a pid carries the index of the worker that
// issued it in its high bits, so a CancelRequest accepted by another worker can be routed to it.
import { randomBytes, randomInt, timingSafeEqual } from 'node:crypto';

export interface CancelKey {
  pid: number;
  secret: Buffer;
}

interface Entry {
  secret: Buffer;
  cancel: () => void;
}

/** Bits of a pid below the worker index: 16M live keys per worker, up to 128 workers in a positive int32. */
export const WORKER_PID_SHIFT = 24;
export const MAX_WORKERS = 0x80;

export interface CancelRouting {
  /** This process's worker index (0-based) and how many workers there are. */
  worker: number;
  workers: number;
  /** Delivers a CancelRequest whose key another worker issued; that worker checks it (see deliver). */
  route(worker: number, pid: number, secret: Buffer): void;
}

/**
 * pgBouncer's peering ([peers], peer_id): processes sharing a port (so_reuseport) each issue pids carrying their
 * peer id above PEER_PID_SHIFT, and a CancelRequest that reached another one is forwarded to the issuer.
 */
export interface CancelPeering {
  /** This process's peer_id (1..16383). */
  peerId: number;
  /** Forwards a CancelRequest to the peer that issued its key; false when no such peer is configured. */
  forward(peerId: number, pid: number, secret: Buffer): boolean;
}

/** Bits of a pid below the peer id: 65535 live keys per peer. */
export const PEER_PID_SHIFT = 16;
export const MAX_PEER_ID = 16383;

/** The worker whose registry issued `pid` (meaningful only for registries with routing). */
export const workerOfPid = (pid: number): number => pid >>> WORKER_PID_SHIFT;

export class CancelRegistry {
  private readonly byPid = new Map<number, Entry>();
  /** CancelRequests that matched a live session. */
  forwarded = 0;
  /** CancelRequests that matched nothing. */
  ignored = 0;
  /** CancelRequests handed to the worker that issued the key. */
  routed = 0;
  /** CancelRequests forwarded to the peer that issued the key. */
  peered = 0;

  constructor(
    private readonly routing?: CancelRouting,
    private readonly peering?: CancelPeering,
  ) {
    if (routing && !(Number.isInteger(routing.worker) && routing.worker >= 0 && routing.worker < Math.min(routing.workers, MAX_WORKERS)))
      throw new RangeError(`worker index ${routing.worker} out of range (${routing.workers} workers, at most ${MAX_WORKERS})`);
    if (peering && routing) throw new RangeError('peering and worker routing do not go together');
    if (peering && !(Number.isInteger(peering.peerId) && peering.peerId >= 1 && peering.peerId <= MAX_PEER_ID))
      throw new RangeError(`peer_id ${peering.peerId} out of range (1..${MAX_PEER_ID})`);
  }

  /**
   * A key for a session whose upstream key has `secretLength` bytes (4 in protocol 3.0; keep the client's
   * expectations of the negotiated version). `cancel` sends the upstream CancelRequest.
   */
  issue(secretLength: number, cancel: () => void): CancelKey {
    let pid: number;
    do {
      if (this.routing) pid = this.routing.worker * 2 ** WORKER_PID_SHIFT + randomInt(1, 2 ** WORKER_PID_SHIFT);
      else if (this.peering) pid = this.peering.peerId * 2 ** PEER_PID_SHIFT + randomInt(1, 2 ** PEER_PID_SHIFT);
      else pid = randomInt(1, 0x7fffffff);
    }
    while (this.byPid.has(pid));
    const secret = randomBytes(Math.max(4, secretLength));
    this.byPid.set(pid, { secret, cancel });
    return { pid, secret };
  }

  release(pid: number): void {
    this.byPid.delete(pid);
  }

  /**
   * Online restart (takeover.ts): a key the process this one replaced gave its client, which cancels here from
   * now on. False when the pid is taken (the client then keeps a key that cancels nothing).
   */
  restore(pid: number, secret: Buffer, cancel: () => void): boolean {
    if (this.byPid.has(pid) || pid <= 0) return false;
    this.byPid.set(pid, { secret: Buffer.from(secret), cancel });
    return true;
  }

  /**
   * Handles a client's CancelRequest; true if it matched a live session, or if it was routed to the
   * worker that issued the pid (which then checks the secret: a forged key does nothing there either).
   */
  cancel(pid: number, secret: Buffer): boolean {
    if (this.routing) {
      const w = workerOfPid(pid);
      if (w !== this.routing.worker) {
        if (pid <= 0 || w >= this.routing.workers) {
          this.ignored++;
          return false;
        }
        this.routed++;
        this.routing.route(w, pid, Buffer.from(secret));
        return true;
      }
    }
    if (this.peering) {
      const p = pid >>> PEER_PID_SHIFT;
      if (p !== this.peering.peerId && pid > 0) {
        if (!this.peering.forward(p, pid, Buffer.from(secret))) {
          this.ignored++;
          return false;
        }
        this.peered++;
        return true;
      }
    }
    return this.deliver(pid, secret);
  }

  /** Checks a CancelRequest against this registry's own keys only (the receiving end of routing). */
  deliver(pid: number, secret: Buffer): boolean {
    const e = this.byPid.get(pid);
    // Length is not secret; the bytes are compared in constant time.
    if (!e || e.secret.length !== secret.length || !timingSafeEqual(e.secret, secret)) {
      this.ignored++;
      return false;
    }
    this.forwarded++;
    e.cancel();
    return true;
  }
}
