// Typed failures of the inference engine. `code` is stable (the proxy maps it to a SQLSTATE); the message
// says what happened and what to do about it.

export type InferenceErrorCode =
  | 'MODEL_NOT_FOUND' | 'DOWNLOAD_FAILED' | 'MODEL_LOAD_FAILED' | 'INVALID_ARGUMENT' | 'PROMPT_TOO_LONG'
  | 'OVERLOADED' | 'TIMEOUT' | 'CANCELLED' | 'INFERENCE_FAILED' | 'CLOSED';

/** Engine options as a user of the CLI sets them: hints name these, not the EngineOptions fields. */
export const SETTING_NAMES = {
  generationContextSize: '--generation-context-size / PGSTEADYTEXT_GENERATION_CONTEXT_SIZE',
  embeddingContextSize: '--embedding-context-size / PGSTEADYTEXT_EMBEDDING_CONTEXT_SIZE',
  contexts: '--contexts / PGSTEADYTEXT_CONTEXTS',
  embeddingDimension: '--embedding-dimensions / PGSTEADYTEXT_EMBEDDING_DIMENSIONS',
} as const;

/** ", or raise <setting>" for a larger context, unless the model's own context length (where the setting is capped) is the limit. */
export function largerContextHint(setting: keyof typeof SETTING_NAMES, size: number, modelMost: number): string {
  if (modelMost && size >= modelMost) return ` (${size} tokens is this model's own context length)`;
  return `, or raise ${SETTING_NAMES[setting]}${modelMost ? ` (this model allows up to ${modelMost})` : ''}`;
}

export class InferenceError extends Error {
  constructor(readonly code: InferenceErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class ModelNotFoundError extends InferenceError {
  constructor(message: string, readonly model?: string) { super('MODEL_NOT_FOUND', message); }
}
export class DownloadFailedError extends InferenceError {
  constructor(message: string, readonly url: string, readonly path: string, cause?: unknown) { super('DOWNLOAD_FAILED', message, { cause }); }
}
export class ModelLoadError extends InferenceError {
  constructor(message: string, readonly path: string, cause?: unknown) { super('MODEL_LOAD_FAILED', message, { cause }); }
}
export class InvalidArgumentError extends InferenceError {
  constructor(message: string) { super('INVALID_ARGUMENT', message); }
}
export class PromptTooLongError extends InferenceError {
  constructor(message: string, readonly tokens: number, readonly limit: number) { super('PROMPT_TOO_LONG', message); }
}
export class OverloadedError extends InferenceError {
  constructor(message: string) { super('OVERLOADED', message); }
}
export class TimeoutError extends InferenceError {
  constructor(readonly timeoutMs: number) {
    super('TIMEOUT', `inference request timed out after ${timeoutMs} ms: retry later, raise the timeout, or lower max_tokens`);
  }
}
export class CancelledError extends InferenceError {
  constructor(reason?: unknown) {
    super('CANCELLED', 'inference request cancelled by the caller', { cause: reason });
  }
}
/** The model ran but gave no usable answer (a zero or non-finite vector, say): never papered over. */
export class InferenceFailedError extends InferenceError {
  constructor(message: string, cause?: unknown) { super('INFERENCE_FAILED', message, { cause }); }
}
export class EngineClosedError extends InferenceError {
  constructor() { super('CLOSED', 'the inference engine is closed'); }
}

export const isInferenceError = (e: unknown): e is InferenceError => e instanceof InferenceError;
