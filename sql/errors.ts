// Errors as the steadytext SQL functions raise them: an SQLSTATE, a message and a hint. The daemon endpoint
// sends them as ErrorResponse (dblink re-raises it in the caller); the serving paths hand them over
// through steadytext_mailbox (evaluate.ts). Engine failures carry a stable `code` (inference/errors.ts)
// that picks the SQLSTATE and the hint.
import type { CallError } from './answers.js';

/** An error to send as ErrorResponse: dblink raises it in the calling session with this SQLSTATE. */
export class WireError extends Error {
  constructor(readonly code: string, message: string, readonly hint?: string, readonly detail?: string, readonly severity: 'ERROR' | 'FATAL' = 'ERROR') {
    super(message);
  }
}

/** SQLSTATE and hint for an engine failure (errors carry a stable `code`, see inference/errors.ts). */
export function engineErrorToWire(fn: string, e: unknown, timeoutMs?: number): WireError {
  if (e instanceof WireError) return e;
  const code = (e as { code?: unknown })?.code;
  const message = `${fn}: ${(e as Error)?.message ?? String(e)}`;
  switch (code) {
    case 'INVALID_ARGUMENT':
      return new WireError('22023', message, `Check the arguments of ${fn}.`);
    case 'PROMPT_TOO_LONG':
      return new WireError('54000', message, 'Shorten the prompt or lower max_tokens, or use a model with a larger context.');
    case 'OVERLOADED':
      return new WireError('53000', message, 'The pg-steadytext daemon is at capacity: retry later, or spread the work over more proxies.');
    case 'TIMEOUT':
      return new WireError('57014', message, "Raise the limit with steadytext_config_set('daemon_timeout_ms', ...), or lower max_tokens.");
    case 'CANCELLED':
      return new WireError('57014', message, timeoutMs ? `The request exceeded daemon_timeout_ms (${timeoutMs} ms) or was cancelled.` : undefined);
    case 'MODEL_NOT_FOUND':
    case 'DOWNLOAD_FAILED':
      return new WireError('58P01', message, 'Put the model file where the message says (`pg-steadytext models pull` downloads it), or point the proxy at another file (--generation-model, --embedding-model).');
    case 'MODEL_LOAD_FAILED':
    case 'CLOSED':
      return new WireError('55000', message, "See the pg-steadytext proxy's log; SELECT steadytext_daemon_restart() reloads the models.");
    default:
      return new WireError('XX000', message, "See the pg-steadytext proxy's log.");
  }
}

/** An evaluated call's error (evaluate.ts) as the daemon endpoint sends it. */
export function callErrorToWire(e: CallError): WireError {
  return new WireError(e.sqlstate, e.message, e.hint || undefined);
}
