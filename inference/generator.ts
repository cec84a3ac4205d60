// Text generation workers: one context with one sequence each, so no request is ever batched with
// another, and the sequence is cleared before each request so nothing of an earlier one is reused.
import type { ChatHistoryItem, LlamaChat, LlamaContext, LlamaContextSequence, LlamaModel } from 'node-llama-cpp';
import type { Logger } from 'pino';
import { InvalidArgumentError, ModelLoadError, PromptTooLongError, largerContextHint, SETTING_NAMES } from './errors.js';
import { loadModel } from './llama.js';
import type { Lane } from './scheduler.js';

export interface GenerationParams { prompt: string; maxTokens: number; seed: number; temperature: number }
export interface GenerationWorker { model: LlamaModel; context: LlamaContext; sequence: LlamaContextSequence; chat: LlamaChat }
export interface GeneratorLane extends Lane<GenerationWorker> { model: LlamaModel; contextSize: number }

// Sampling constants for temperature > 0 (part of what CACHE_KEY_VERSION stands for).
const SAMPLING = { topK: 40, topP: 0.95, minP: 0.05 } as const;

export async function openGenerator(path: string, o: { contexts: number; threads: number; contextSize: number; batchSize?: number; logger?: Logger }): Promise<GeneratorLane> {
  const model = await loadModel(path, o.logger);
  const { LlamaChat } = await import('node-llama-cpp'); // loaded by loadModel already: no start-up cost
  const contextSize = Math.min(o.contextSize, model.trainContextSize || o.contextSize);
  const workers: GenerationWorker[] = [];
  try {
    for (let i = 0; i < o.contexts; i++) {
      const context = await model.createContext({
        contextSize, sequences: 1, threads: o.threads, flashAttention: false,
        batchSize: Math.min(contextSize, o.batchSize ?? 512),
      });
      const sequence = context.getSequence();
      workers.push({ model, context, sequence, chat: new LlamaChat({ contextSequence: sequence, autoDisposeSequence: false }) });
    }
  } catch (e) {
    await Promise.allSettled(workers.map((w) => w.context.dispose()));
    await model.dispose();
    throw new ModelLoadError(`cannot create ${o.contexts} generation contexts of ${contextSize} tokens for ${path}: ${(e as Error).message}. Lower ${SETTING_NAMES.generationContextSize} or ${SETTING_NAMES.contexts}`, path, e);
  }
  return { model, contextSize, workers, threads: o.threads };
}

export async function closeGenerator(lane: GeneratorLane) {
  for (const w of lane.workers) w.chat.dispose({ disposeSequence: false });
  await Promise.allSettled(lane.workers.map((w) => w.context.dispose()));
  await lane.model.dispose();
}

/** One request, start to end. `onChunk` receives the text as it is produced; the chunks add up to the result. */
export async function generate(w: GenerationWorker, p: GenerationParams, signal: AbortSignal, onChunk?: (text: string) => void): Promise<string> {
  const history: ChatHistoryItem[] = [{ type: 'user', text: p.prompt }, { type: 'model', response: [] }];
  const size = w.context.contextSize;
  if (p.maxTokens >= size) throw new InvalidArgumentError(`max_tokens ${p.maxTokens} must be below the context size ${size}: lower max_tokens${largerContextHint('generationContextSize', size, w.model.trainContextSize)}`);
  const promptTokens = w.chat.chatWrapper.generateContextState({ chatHistory: history }).contextText.tokenize(w.model.tokenizer).length;
  // No context shift ever: an answer must not depend on how a full context was trimmed.
  if (promptTokens + p.maxTokens > size)
    throw new PromptTooLongError(
      `prompt of ${promptTokens} tokens plus max_tokens ${p.maxTokens} exceeds the context of ${size} tokens: ` +
      `shorten the prompt${promptTokens < size ? `, lower max_tokens to ${size - promptTokens} or less` : ''}${largerContextHint('generationContextSize', size, w.model.trainContextSize)}`,
      promptTokens + p.maxTokens, size);
  signal.throwIfAborted();
  await w.sequence.clearHistory();
  const res = await w.chat.generateResponse(history, {
    maxTokens: p.maxTokens,
    temperature: p.temperature,
    ...(p.temperature > 0 ? { seed: p.seed, ...SAMPLING } : {}),
    repeatPenalty: false,
    trimWhitespaceSuffix: false,
    signal, stopOnAbortSignal: false,
    onTextChunk: onChunk,
  });
  return res.response;
}
