// Response handlers the steadytext layer attaches to the statements it forwards (see the seam's
// ResponseHandler in proxy/interceptor.ts).
import type { ResponseHandler, SessionContext } from '../proxy/interceptor.js';
import { Be, close, errorResponse, FLUSH, readErrorFields } from '../proxy/protocol.js';

/** Calls `done` once the statement is answered (e.g. a config change every session must then see). */
export function afterwards(done: () => void): ResponseHandler {
  return { onMessage: (m) => m, onEnd: () => done() };
}

/** Drops the NoticeResponse with this exact message (the one our own replacement statement causes). */
export function hideNotice(message: string): ResponseHandler {
  return { onMessage: (m) => (m[0] === Be.NoticeResponse && readErrorFields(m).M === message ? null : m) };
}

/**
 * Tells the client something while its statement waits in a hook (a download, say): a NOTICE it gets at once.
 * It rides on the answer to a Close of a statement that does not exist (no error, nothing changes in the
 * session, in or out of an extended-protocol batch: a Flush, not a Sync), whose CloseComplete the notice
 * replaces. Under a transaction pool the session then holds its server connection until the statement is
 * answered, as it does while the answer is computed.
 */
export function noticeToClient(ctx: SessionContext, message: string): void {
  ctx.send({
    bytes: Buffer.concat([close('S', '_steadytext_notice'), FLUSH]),
    responses: { onMessage: (m) => (m[0] === Be.CloseComplete ? errorResponse({ severity: 'NOTICE', code: '00000', message }, Be.NoticeResponse) : null) },
  });
}

/** The handlers one after another: each sees what the previous passed on. */
export function chain(hs: readonly ResponseHandler[]): ResponseHandler {
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
