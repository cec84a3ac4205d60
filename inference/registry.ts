// Named models, where their files live, how they are fetched, and what identifies their content.
import { createHash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { DownloadFailedError, InvalidArgumentError, ModelNotFoundError } from './errors.js';

export type ModelRole = 'generation' | 'embedding';
/** `source` is a local .gguf path, `hf:owner/repo/path/file.gguf[#branch]`, or an https URL. */
export interface ModelSpec { name: string; role: ModelRole; source: string }

export const DEFAULT_MODELS: readonly ModelSpec[] = [
  { name: 'small', role: 'generation', source: 'hf:unsloth/gemma-3n-E2B-it-GGUF/gemma-3n-E2B-it-Q8_0.gguf' },
  { name: 'large', role: 'generation', source: 'hf:unsloth/gemma-3n-E4B-it-GGUF/gemma-3n-E4B-it-Q8_0.gguf' },
  { name: 'small', role: 'embedding', source: 'hf:Qwen/Qwen3-Embedding-0.6B-GGUF/Qwen3-Embedding-0.6B-Q8_0.gguf' },
];
export const DEFAULT_CACHE_DIR = join(homedir(), '.cache', 'pg-steadytext', 'models');
const ENV: Record<ModelRole, string> = { generation: 'PGSTEADYTEXT_GENERATION_MODEL', embedding: 'PGSTEADYTEXT_EMBEDDING_MODEL' };

export interface RegistryOptions {
  /** Where downloaded models live (default ~/.cache/pg-steadytext/models). */
  cacheDir?: string;
  /** Extra or replaced models; a name may exist once per role. */
  models?: ModelSpec[];
  /** Source (path or URI) replacing the default generation model. */
  generationModel?: string;
  /** Source (path or URI) replacing the default embedding model. */
  embeddingModel?: string;
  /** Name used when a request gives no model size (default 'small'). */
  defaultModelSize?: string;
  /** Download missing hf:/https models on first use (default true); otherwise fail with MODEL_NOT_FOUND. */
  autoDownload?: boolean;
  /** Progress bar while downloading (default: stderr is a TTY). */
  progress?: boolean;
  logger?: Logger;
}

interface Remote { url: string; file: string }

export class ModelRegistry {
  readonly cacheDir: string;
  readonly defaultSize: string;
  private specs: ModelSpec[];
  private downloads = new Map<string, Promise<string>>();

  constructor(private o: RegistryOptions = {}) {
    this.cacheDir = resolve(expandHome(o.cacheDir ?? DEFAULT_CACHE_DIR));
    this.defaultSize = o.defaultModelSize ?? 'small';
    const specs = new Map<string, ModelSpec>();
    for (const s of [...DEFAULT_MODELS, ...(o.models ?? [])]) {
      if (s.role !== 'generation' && s.role !== 'embedding') throw new InvalidArgumentError(`model '${s.name}': role must be 'generation' or 'embedding', not '${String(s.role)}'`);
      if (!s.name || !s.source) throw new InvalidArgumentError(`model ${JSON.stringify(s)}: name and source are required`);
      specs.set(`${s.role}:${s.name}`, { ...s });
    }
    for (const role of ['generation', 'embedding'] as const) {
      const override = role === 'generation' ? o.generationModel : o.embeddingModel;
      if (!override) continue;
      const key = `${role}:${this.defaultSize}`;
      specs.set(key, { name: this.defaultSize, role, source: override });
    }
    this.specs = [...specs.values()];
  }

  list(): ModelSpec[] { return this.specs.map((s) => ({ ...s })); }

  /** The model a request means. An embedding request naming only a generation size ('large') gets the
   * default embedding model: model_size picks a generator, there is one embedder unless more are added. */
  get(role: ModelRole, name?: string | null): ModelSpec {
    const want = name || this.defaultSize;
    const hit = this.specs.find((s) => s.role === role && s.name === want)
      ?? (this.specs.some((s) => s.name === want) ? this.specs.find((s) => s.role === role && s.name === this.defaultSize) ?? this.specs.find((s) => s.role === role) : undefined);
    if (!hit) {
      const known = this.specs.filter((s) => s.role === role).map((s) => s.name);
      throw new InvalidArgumentError(`unknown ${role} model '${want}': known ${role} models are ${known.map((n) => `'${n}'`).join(', ') || 'none'}`);
    }
    return hit;
  }

  /** Where the model's file is, or will be once downloaded. */
  localPath(spec: ModelSpec): string {
    const r = remote(spec.source);
    return r ? join(this.cacheDir, r.file) : resolve(expandHome(spec.source));
  }

  remoteUrl(spec: ModelSpec): string | undefined { return remote(spec.source)?.url; }

  /** The model's local file, downloading it first if it is remote, missing and `download` allows. */
  async resolve(spec: ModelSpec, opts: { download?: boolean; signal?: AbortSignal } = {}): Promise<string> {
    const path = this.localPath(spec);
    if (await isFile(path)) return path;
    const r = remote(spec.source);
    const hint = `set ${ENV[spec.role]} (or the ${spec.role} model option) to an existing .gguf file or an hf: URI`;
    if (!r) throw new ModelNotFoundError(`${spec.role} model '${spec.name}': no file at ${path}: check the path, or ${hint}`, spec.name);
    if (!(opts.download ?? this.o.autoDownload ?? true))
      throw new ModelNotFoundError(`${spec.role} model '${spec.name}' is not downloaded: run \`pg-steadytext models pull ${spec.name}\`, or download ${r.url} by hand and save it as ${path}`, spec.name);
    return this.download(spec, opts.signal);
  }

  /** Download (or resume) a remote model into the cache directory; one download per file at a time. */
  download(spec: ModelSpec, signal?: AbortSignal): Promise<string> {
    const r = remote(spec.source);
    if (!r) return this.resolve(spec);
    const path = join(this.cacheDir, r.file);
    let p = this.downloads.get(path);
    if (!p) {
      p = this.fetchModel(spec, r, path, signal).finally(() => this.downloads.delete(path));
      this.downloads.set(path, p);
    }
    return p;
  }

  private async fetchModel(spec: ModelSpec, r: Remote, path: string, signal?: AbortSignal): Promise<string> {
    const log = this.o.logger?.child({ model: spec.name, role: spec.role, url: r.url });
    const fail = (why: string, cause?: unknown) => new DownloadFailedError(
      `cannot download ${spec.role} model '${spec.name}' from ${r.url}: ${why}. ` +
      `Without network access, download that file on another machine and place it at ${path}, or set ${ENV[spec.role]} to a local .gguf file`,
      r.url, path, cause);
    const token = process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN;
    const headers: Record<string, string> = token && r.url.startsWith('https://huggingface.co/') ? { Authorization: `Bearer ${token}` } : {};
    // The downloader retries an unreachable host for minutes; one HEAD request tells within seconds.
    try {
      const timeout = AbortSignal.timeout(15_000);
      const res = await fetch(r.url, { method: 'HEAD', redirect: 'manual', headers, signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
      if (res.status === 401 || res.status === 403) throw fail(`access denied (HTTP ${res.status}); for a gated model set HF_TOKEN`);
      if (res.status === 404) throw fail('no such file (HTTP 404); check the model URI');
      if (res.status >= 400) throw fail(`HTTP ${res.status}`);
    } catch (e) {
      if (e instanceof DownloadFailedError) throw e;
      if (signal?.aborted) throw signal.reason;
      const c = (e as { cause?: { code?: string; message?: string } }).cause;
      throw fail(`network unreachable (${c?.code ?? c?.message ?? (e as Error).message})`, e);
    }
    log?.info({ path }, 'downloading model');
    let last = 0;
    try {
      const { createModelDownloader } = await import('node-llama-cpp');
      const dl = await createModelDownloader({
        modelUri: spec.source.startsWith('hf:') ? spec.source : r.url, dirPath: this.cacheDir, fileName: r.file,
        showCliProgress: this.o.progress ?? !!process.stderr.isTTY,
        deleteTempFileOnCancel: false, // an interrupted download resumes next time
        skipExisting: true,
        tokens: token ? { huggingFace: token } : undefined,
        onProgress: ({ totalSize, downloadedSize }) => {
          if (Date.now() - last < 5000) return;
          last = Date.now();
          log?.info({ downloadedMb: Math.round(downloadedSize / 2 ** 20), totalMb: Math.round(totalSize / 2 ** 20) }, 'download progress');
        },
      });
      const out = await dl.download({ signal });
      log?.info({ path: out }, 'model downloaded');
      return out;
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw fail((e as Error).message, e);
    }
  }
}

/** Remote location and cache file name (`hf_<owner>_<file>`, the name node-llama-cpp gives it) of a source. */
function remote(source: string): Remote | undefined {
  if (source.startsWith('hf:') || source.startsWith('hf://')) {
    const body = source.replace(/^hf:(\/\/)?/, '');
    const [path, branch = 'main'] = body.split('#');
    const parts = path.split('/');
    if (parts.length < 3 || !path.endsWith('.gguf'))
      throw new InvalidArgumentError(`model source '${source}': expected hf:owner/repo/file.gguf (a file, not a repository or quantization tag)`);
    const [owner, repo, ...file] = parts;
    const url = `https://huggingface.co/${owner}/${repo}/resolve/${encodeURIComponent(branch)}/${file.map(encodeURIComponent).join('/')}`;
    return { url, file: `hf_${owner}_${file[file.length - 1]}` };
  }
  if (/^https?:\/\//.test(source)) return { url: source, file: basename(new URL(source).pathname) };
  return undefined;
}

const expandHome = (p: string) => (p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p);
const isFile = (p: string) => stat(p).then((s) => s.isFile(), () => false);

const identities = new Map<string, { stamp: string; id: Promise<string> }>();

/** Content identity of a model file, cheap enough to compute at load: SHA-256 over the size, the first and
 * last MiB (GGUF header, metadata, vocabulary) and 64 evenly spaced 64 KiB samples of the tensor data.
 * Independent of the file's name, path and mtime, so proxies sharing one cache table agree on it. */
export async function modelFileIdentity(path: string): Promise<string> {
  const s = await stat(path);
  const stamp = `${s.size}:${s.mtimeMs}:${s.ino}`;
  const known = identities.get(path);
  if (known?.stamp === stamp) return known.id;
  const id = (async () => {
    const h = createHash('sha256').update(`gguf-sampled-v1:${s.size}:`);
    const f = await open(path, 'r');
    try {
      const read = async (pos: number, len: number) => {
        const buf = Buffer.alloc(Math.max(0, Math.min(len, s.size - pos)));
        const { bytesRead } = await f.read(buf, 0, buf.length, pos);
        h.update(buf.subarray(0, bytesRead));
      };
      const MiB = 1 << 20, CHUNK = 64 << 10;
      if (s.size <= 8 * MiB) await read(0, s.size);
      else {
        await read(0, MiB);
        for (let i = 0; i < 64; i++) await read(MiB + Math.floor(((s.size - 2 * MiB - CHUNK) * i) / 63), CHUNK);
        await read(s.size - MiB, MiB);
      }
    } finally { await f.close(); }
    return h.digest('hex');
  })();
  identities.set(path, { stamp, id });
  id.catch(() => identities.delete(path));
  return id;
}
