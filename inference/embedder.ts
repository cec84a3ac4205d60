// Embedding workers. A vector is bit-identical however it was computed only if each text is evaluated
// alone (one sequence per context: node-llama-cpp's embedding context already is) in a single batch
// (batch size = context size >= any accepted input) with flash attention pinned (see loadModel).
import type { LlamaContext, LlamaEmbeddingContext, LlamaModel } from 'node-llama-cpp';
import type { Logger } from 'pino';
import { InferenceFailedError, ModelLoadError, PromptTooLongError, largerContextHint, SETTING_NAMES } from './errors.js';
import { loadModel } from './llama.js';
import type { Lane } from './scheduler.js';

export interface EmbeddingWorker { model: LlamaModel; context: LlamaEmbeddingContext; contextSize: number }
export interface EmbedderLane extends Lane<EmbeddingWorker> { model: LlamaModel; contextSize: number; nativeDimension: number }

export async function openEmbedder(path: string, o: { name: string; contexts: number; threads: number; contextSize: number; dimension: number; logger?: Logger }): Promise<EmbedderLane> {
  const model = await loadModel(path, o.logger);
  const nativeDimension = model.embeddingVectorSize;
  if (nativeDimension < o.dimension) {
    await model.dispose();
    throw new ModelLoadError(
      `embedding model '${o.name}' (${path}) gives ${nativeDimension}-dimensional vectors but ${o.dimension} dimensions are configured: ` +
      `use a model of at least ${o.dimension} dimensions, or set ${SETTING_NAMES.embeddingDimension} to ${nativeDimension} (and the vector columns to match)`, path);
  }
  const contextSize = Math.min(o.contextSize, model.trainContextSize || o.contextSize);
  const workers: EmbeddingWorker[] = [];
  try {
    for (let i = 0; i < o.contexts; i++)
      workers.push({ model, contextSize, context: await model.createEmbeddingContext({ contextSize, batchSize: contextSize, threads: o.threads }) });
  } catch (e) {
    await Promise.allSettled(workers.map((w) => w.context.dispose()));
    await model.dispose();
    throw new ModelLoadError(`cannot create ${o.contexts} embedding contexts of ${contextSize} tokens for ${path}: ${(e as Error).message}. Lower ${SETTING_NAMES.embeddingContextSize} or ${SETTING_NAMES.contexts}`, path, e);
  }
  return { model, contextSize, nativeDimension, workers, threads: o.threads };
}

export async function closeEmbedder(lane: EmbedderLane) {
  await Promise.allSettled(lane.workers.map((w) => w.context.dispose()));
  await lane.model.dispose();
}

/** RAM held by an embedding context (node-llama-cpp keeps its inner context private). */
export const embeddingContextRam = (w: EmbeddingWorker) =>
  (w.context as unknown as { _llamaContext?: LlamaContext })._llamaContext?.memoryUsage.ram ?? 0;

/** L2-normalised vector of `dimension` components: the leading ones of the native vector (Matryoshka). */
export async function embed(w: EmbeddingWorker, text: string, dimension: number): Promise<Float32Array> {
  const tokens = w.model.tokenize(text, false);
  const length = w.context.calculateInputLength(tokens);
  if (length >= w.contextSize)
    throw new PromptTooLongError(`text of ${length} tokens does not fit the embedding context of ${w.contextSize} tokens: split the text${largerContextHint('embeddingContextSize', w.contextSize, w.model.trainContextSize)}`, length, w.contextSize);
  const { vector } = await w.context.getEmbeddingFor(tokens);
  let sum = 0;
  for (let i = 0; i < dimension; i++) sum += vector[i] * vector[i];
  const norm = Math.sqrt(sum);
  if (!(norm > 0) || !Number.isFinite(norm))
    throw new InferenceFailedError(`the embedding model returned a ${norm === 0 ? 'zero' : 'non-finite'} vector for this text: the model file is likely broken; try another embedding model`);
  const out = new Float32Array(dimension);
  for (let i = 0; i < dimension; i++) out[i] = vector[i] / norm;
  return out;
}
