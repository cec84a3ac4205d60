// Hook pausing: while an interceptor hook is pending (it answered a client message with a Promise), the
// client's later messages wait behind it, so what goes upstream stays in the order the client sent it.
// The client's frame reader stopped after the hook's message (PAUSE) and queues what follows. The socket
// goes on being read up to HOOK_BACKLOG_BYTES, because a socket that is not read does not report the
// client leaving (a socket reading through a reused buffer stops reading outright when paused), and that
// must abort the hook's work at once; past the limit reading stops, and the socket's flow control holds the
// client back. When the hook settles, its outcome goes upstream first, then reading resumes with what
// waited. The hook's work watches an AbortSignal, aborted by the client's cancel and by the session's end.
import { setMaxListeners } from 'node:events';

/** Client bytes held behind a pending hook before the socket stops being read. */
export const HOOK_BACKLOG_BYTES = 256 * 1024;

/** What the pauser needs of its session. */
export interface HookHost {
  /** Bytes the client's frame reader holds back (the queue behind the hook's message). */
  heldBytes(): number;
  /** Stop, and go on, reading the client's socket on the hook's account (the session may have other reasons). */
  pauseSocket(): void;
  resumeSocket(): void;
  /** Lets the client's frame reader go on with what it queued behind the hook's message. */
  resumeReader(): void;
  /** The session ended: a late outcome is dropped. */
  closed(): boolean;
  /** A hook settled and reading went on: whatever waited for that (a graceful shutdown) may act. */
  afterHook(): void;
  /** A bug of ours (an outcome that could not be sent): the session ends. */
  internalError(err: unknown): void;
}

export class HookPauser {
  private isPending = false;
  private controller = hookController();

  constructor(
    private readonly host: HookHost,
    private readonly backlogLimit = HOOK_BACKLOG_BYTES,
  ) {}

  /** A hook is pending: the reader holds what follows its message. */
  get pending(): boolean {
    return this.isPending;
  }

  /**
   * The signal for the next hook's work. It stays the aborted one until then: the pending hook may read
   * it only after an await of its own, and must see the abort then.
   */
  get signal(): AbortSignal {
    if (this.controller.signal.aborted) this.controller = hookController();
    return this.controller.signal;
  }

  /**
   * The hook's Promise, for the message the reader just paused at. When it settles (unless the session
   * ended first), `send` puts its outcome upstream, then reading resumes where it stopped.
   */
  hold<T>(hook: Promise<T>, send: (outcome: T) => void): void {
    this.isPending = true;
    hook.then((outcome) => this.settled(outcome, send)).catch((err) => this.host.internalError(err));
  }

  /** After client bytes went into the reader: past the limit, the socket stops being read until the hook settles. */
  limitBacklog(): void {
    if (this.isPending && this.host.heldBytes() > this.backlogLimit) this.host.pauseSocket();
  }

  /** The client cancelled: the pending hook's work stops (nothing to stop when none is pending). */
  cancel(): void {
    if (this.isPending) this.controller.abort(new Error('canceling statement due to user request'));
  }

  /** The session ended: the work of any hook stops. */
  close(): void {
    this.controller.abort(new Error('client session ended'));
  }

  private settled<T>(outcome: T, send: (outcome: T) => void): void {
    this.isPending = false;
    const host = this.host;
    if (host.closed()) return;
    send(outcome);
    host.resumeSocket();
    host.resumeReader();
    host.afterHook();
  }
}

/** One hook may start many engine requests (prefetch), each listening on the same signal. */
function hookController(): AbortController {
  const ac = new AbortController();
  setMaxListeners(0, ac.signal);
  return ac;
}
