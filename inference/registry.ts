// Named models, where their files live, how they are fetched, and what identifies their content.
import { createHash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { DownloadFailedError, InvalidArgumentError, ModelNotFoundError } from './errors.js';

export type ModelRole = 'generation' | 'embedding';
/** `source` is a local .gguf path, `hf:owner/repo/path/file.gguf[#branch]`, or an http(s) URL. */
export interface ModelSpec {
  name: string; role: ModelRole; source: string;
  /** The file's size in bytes, roughly, when known before it is downloaded (told to whoever must fetch it by hand). */
  size?: number;
}

export const DEFAULT_MODELS: readonly ModelSpec[] = [
  { name: 'small', role: 'generation', source: 'hf:unsloth/gemma-3n-E2B-it-GGUF/gemma-3n-E2B-it-Q8_0.gguf', size: 4.79e9 },
  { name: 'large', role: 'generation', source: 'hf:unsloth/gemma-3n-E4B-it-GGUF/gemma-3n-E4B-it-Q8_0.gguf', size: 7.35e9 },
  { name: 'small', role: 'embedding', source: 'hf:Qwen/Qwen3-Embedding-0.6B-GGUF/Qwen3-Embedding-0.6B-Q8_0.gguf', size: 639_150_592 },
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

/** A download under way: what the caller of a model waits for. */
export interface DownloadProgress {
  role: ModelRole; name: string;
  /** The file's name in the model directory, and its full path there. */
  file: string; path: string;
  url: string;
  downloadedBytes: number;
  /** 0 until the server has told the size (or the spec's expected size). */
  totalBytes: number;
}

/** A model file that is not where the registry expects it. */
export interface MissingModel { spec: ModelSpec; path: string; url?: string }

export class ModelRegistry {
  readonly cacheDir: string;
  readonly defaultSize: string;
  private specs: ModelSpec[];
  private downloads = new Map<string, Promise<string>>();
  private progress = new Map<string, DownloadProgress>();

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

  /** Whether missing remote models are downloaded when first needed (RegistryOptions.autoDownload). */
  get downloadsAllowed(): boolean { return this.o.autoDownload ?? true; }

  /** Of these models (default: the default generation and embedding models), those whose file is not there. */
  async missing(specs: readonly ModelSpec[] = [this.get('generation'), this.get('embedding')]): Promise<MissingModel[]> {
    const out: MissingModel[] = [];
    for (const spec of specs) {
      const path = this.localPath(spec);
      if (!(await isFile(path))) out.push({ spec, path, url: this.remoteUrl(spec) });
    }
    return out;
  }

  /** The downloads under way, with how far each has come. */
  downloading(): DownloadProgress[] { return [...this.progress.values()].map((p) => ({ ...p })); }

  /**
   * The model's local file, downloading it first if it is remote, missing and `download` allows. `onWait` is
   * told when the caller is about to wait for a download (its own or one already running).
   */
  async resolve(spec: ModelSpec, opts: { download?: boolean; signal?: AbortSignal; onWait?: (p: DownloadProgress) => void } = {}): Promise<string> {
    const path = this.localPath(spec);
    if (await isFile(path)) return path;
    const r = remote(spec.source);
    const hint = `set ${ENV[spec.role]} (or the ${spec.role} model option) to an existing .gguf file or an hf: URI`;
    if (!r) throw new ModelNotFoundError(`${spec.role} model '${spec.name}': no file at ${path}: check the path, or ${hint}`, spec.name);
    if (!(opts.download ?? this.downloadsAllowed))
      throw new ModelNotFoundError(`${spec.role} model '${spec.name}' is not downloaded${this.downloadsAllowed ? '' : ' and downloads are off (--no-download)'}: ${fetchByHand(spec, r.url, this.cacheDir, path)}`, spec.name);
    const p = this.download(spec, opts.signal);
    const progress = this.progress.get(path);
    if (progress) opts.onWait?.({ ...progress });
    return p;
  }

  /** Download (or resume) a remote model into the cache directory; one download per file at a time. */
  download(spec: ModelSpec, signal?: AbortSignal): Promise<string> {
    const r = remote(spec.source);
    if (!r) return this.resolve(spec);
    const path = join(this.cacheDir, r.file);
    let p = this.downloads.get(path);
    if (!p) {
      this.progress.set(path, { role: spec.role, name: spec.name, file: r.file, path, url: r.url, downloadedBytes: 0, totalBytes: spec.size ?? 0 });
      p = this.fetchModel(spec, r, path, signal).finally(() => { this.downloads.delete(path); this.progress.delete(path); });
      this.downloads.set(path, p);
    }
    return p;
  }

  private async fetchModel(spec: ModelSpec, r: Remote, path: string, signal?: AbortSignal): Promise<string> {
    const log = this.o.logger?.child({ model: spec.name, role: spec.role, url: r.url });
    const fail = (why: string, cause?: unknown) => new DownloadFailedError(
      `cannot download ${spec.role} model '${spec.name}' from ${r.url}: ${why}; ${fetchByHand(spec, r.url, this.cacheDir, path)}, or set ${ENV[spec.role]} to a local .gguf file`,
      r.url, path, cause);
    const token = process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN;
    const headers: Record<string, string> = token && r.url.startsWith(hfEndpoint()) ? { Authorization: `Bearer ${token}` } : {};
    // The downloader retries an unreachable host for minutes; one HEAD request tells within seconds.
    try {
      const timeout = AbortSignal.timeout(15_000);
      const res = await fetch(r.url, { method: 'HEAD', redirect: 'manual', headers, signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
      if (res.status === 401 || res.status === 403) throw fail(`access denied (HTTP ${res.status}); for a gated model set HF_TOKEN`);
      if (res.status === 404) throw fail('no such file (HTTP 404); check the model URI');
      if (res.status >= 400) throw fail(`HTTP ${res.status}`);
      // Hugging Face answers with a redirect to its storage that tells the size; a plain server, with the file's.
      const size = Number(res.headers.get('x-linked-size') ?? (res.status < 300 ? res.headers.get('content-length') : undefined));
      const progress = this.progress.get(path);
      if (progress && size > 0) progress.totalBytes = size;
    } catch (e) {
      if (e instanceof DownloadFailedError) throw e;
      if (signal?.aborted) throw signal.reason;
      const c = (e as { cause?: { code?: string; message?: string } }).cause;
      throw fail(`network unreachable (${c?.code ?? c?.message ?? (e as Error).message})`, e);
    }
    log?.info({ path, totalBytes: this.progress.get(path)?.totalBytes || undefined }, 'downloading model');
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
          const progress = this.progress.get(path);
          if (progress) {
            progress.downloadedBytes = downloadedSize;
            if (totalSize > 0) progress.totalBytes = totalSize;
          }
          if (Date.now() - last < 5000) return;
          last = Date.now();
          log?.info({ percent: percentOf(downloadedSize, totalSize), downloadedBytes: downloadedSize, totalBytes: totalSize }, 'download progress');
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

/** "about 4.8 GB" (decimal units, as Hugging Face shows sizes), or '' for an unknown size. */
export function aboutSize(bytes: number | undefined): string {
  if (!bytes) return '';
  return bytes >= 1e9 ? `about ${(bytes / 1e9).toFixed(1)} GB` : `about ${Math.max(1, Math.round(bytes / 1e6))} MB`;
}

const percentOf = (done: number, total: number) => (total > 0 ? Math.min(100, Math.floor((done * 100) / total)) : undefined);

/** The notice a call waiting for a download gets: which file, how far, and that the call waits. */
export function downloadWaitNote(p: DownloadProgress): string {
  const pct = percentOf(p.downloadedBytes, p.totalBytes);
  const how = [pct === undefined ? undefined : `${pct}%`, aboutSize(p.totalBytes) ? `of ${aboutSize(p.totalBytes).replace('about ', '')}` : undefined].filter(Boolean).join(' ');
  return `steadytext: downloading ${p.role} model '${p.name}' (${p.file}${how ? `, ${how}` : ''}), the call waits for it`;
}

/** How a user gets a model file without the proxy's download: the file, its size, where it goes, the command. */
function fetchByHand(spec: ModelSpec, url: string, dir: string, path: string): string {
  const size = aboutSize(spec.size);
  return `put ${basename(path)}${size ? ` (${size})` : ''} from ${url} into ${dir}, or run \`pg-steadytext models pull${spec.name === 'small' ? '' : ` ${spec.role}:${spec.name}`}\` where the network allows`;
}

/** One line for the start of `serve`: the models that are missing, with fetchByHand's advice for each. */
export function missingModelsMessage(missing: readonly MissingModel[], dir: string): string {
  return missing.map((m) => (m.url
    ? `${m.spec.role} model '${m.spec.name}' is not downloaded: ${fetchByHand(m.spec, m.url, dir, m.path)}`
    : `${m.spec.role} model '${m.spec.name}': no file at ${m.path}`)).join('; ');
}

/** Hugging Face's address as node-llama-cpp resolves it (a mirror through MODEL_ENDPOINT or HF_ENDPOINT), with a final slash. */
function hfEndpoint(): string {
  for (const v of [process.env.MODEL_ENDPOINT, process.env.HF_ENDPOINT]) {
    if (v && /^https?:\/\//.test(v)) return v.endsWith('/') ? v : `${v}/`;
  }
  return 'https://huggingface.co/';
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
    const url = `${hfEndpoint()}${owner}/${repo}/resolve/${encodeURIComponent(branch)}/${file.map(encodeURIComponent).join('/')}`;
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
