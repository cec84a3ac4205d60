// pg-steadytext/inference: the inference engine on its own, with no database and no wire protocol.
//   import { createEngine } from 'pg-steadytext/inference';
//   const engine = createEngine({ generationModel: './models/generation.gguf' });
//   await engine.generate({ prompt: 'The capital of France is', maxTokens: 16 });
export {
  createEngine,
  MAX_TOKENS_LIMIT,
  type EmbedRequest,
  type Engine,
  type EngineOptions,
  type EngineStatus,
  type GenerateRequest,
  type ModelInfo,
  type ModelRole,
  type ModelSpec,
  type ModelStatus,
  type RequestControl,
  type RequestOptions,
} from './engine.js';
export {
  CancelledError,
  DownloadFailedError,
  EngineClosedError,
  InferenceError,
  InferenceFailedError,
  InvalidArgumentError,
  isInferenceError,
  ModelLoadError,
  ModelNotFoundError,
  OverloadedError,
  PromptTooLongError,
  TimeoutError,
  type InferenceErrorCode,
} from './errors.js';
// Small GGUF models with random weights (what `npm run fixtures:models` writes): real inference, gibberish text.
