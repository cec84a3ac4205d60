// Cancel keys. Each session gets a BackendKeyData of the proxy's own (random pid and secret); the real
// upstream key never reaches the client. A CancelRequest carrying a key the proxy issued cancels that
// session's running upstream query; any other key (forged, stale, wrong secret) does nothing, as with
// the server itself (no answer either way).
import { randomBytes, randomInt, timingSafeEqual } from 'node:crypto';

export interface CancelKey {
  pid: number;
  secret: Buffer;
}

interface Entry {
  secret: Buffer;
  cancel: () => void;
}

export class CancelRegistry {
  private readonly byPid = new Map<number, Entry>();
  /** CancelRequests that matched a live session. */
  forwarded = 0;
  /** CancelRequests that matched nothing. */
  ignored = 0;

  /**
   * A key for a session whose upstream key has `secretLength` bytes (4 in protocol 3.0; keep the client's
   * expectations of the negotiated version). `cancel` sends the upstream CancelRequest.
   */
  issue(secretLength: number, cancel: () => void): CancelKey {
    let pid: number;
    do pid = randomInt(1, 0x7fffffff);
    while (this.byPid.has(pid));
    const secret = randomBytes(Math.max(4, secretLength));
    this.byPid.set(pid, { secret, cancel });
    return { pid, secret };
  }

  release(pid: number): void {
    this.byPid.delete(pid);
  }

  /** Handles a client's CancelRequest; true if it matched a live session. */
  cancel(pid: number, secret: Buffer): boolean {
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
