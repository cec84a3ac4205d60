// `pg-steadytext models list | pull [name|role:name|--all] | path [name|role:name]`
import { stat } from 'node:fs/promises';
import type { EngineOptions } from './engine.js';
import { ModelRegistry, type ModelSpec } from './registry.js';

const USAGE = `usage: pg-steadytext models <command>
  list                         the configured models, their sources and whether their files are present
  pull [name|role:name|--all]  download models (default: the default generation and embedding models)
  path [name|role:name]        where a model's file is (default: the model cache directory)`;

const out = (s: string) => void process.stdout.write(s + '\n');
const err = (s: string) => void process.stderr.write(s + '\n');

/** Runs the command; resolves with the process exit code (2 for a usage error). */
export async function runModelsCommand(args: string[], options: EngineOptions = {}): Promise<number> {
  let reg: ModelRegistry;
  try { reg = new ModelRegistry(options); } catch (e) { err(`error: ${(e as Error).message}`); return 1; }
  const [cmd, ...rest] = args;
  switch (cmd) {
    case 'list': return listModels(reg);
    case 'pull': return pullModels(reg, rest);
    case 'path': return modelPaths(reg, rest);
    case undefined: case 'help': case '--help': case '-h':
      out(USAGE);
      return cmd ? 0 : 2;
    default:
      err(`unknown models command '${cmd}'\n${USAGE}`);
      return 2;
  }
}

async function listModels(reg: ModelRegistry): Promise<number> {
  const rows = await Promise.all(reg.list().map(async (s) => {
    const path = reg.localPath(s);
    const size = await stat(path).then((st) => `${(st.size / 2 ** 20).toFixed(1)} MB`, () => 'missing');
    return [`${s.role}:${s.name}${s.name === reg.defaultSize ? ' (default)' : ''}`, size, s.source, path];
  }));
  const head = ['MODEL', 'FILE', 'SOURCE', 'PATH'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  for (const r of [head, ...rows]) out(r.map((c, i) => (i < r.length - 1 ? c.padEnd(widths[i]) : c)).join('  '));
  return 0;
}

async function pullModels(reg: ModelRegistry, rest: string[]): Promise<number> {
  const names = rest.filter((a) => a !== '--all');
  const specs = rest.includes('--all') ? reg.list() : names.length ? pick(reg, names) : [reg.get('generation'), reg.get('embedding')];
  if (typeof specs === 'string') { err(`error: ${specs}`); return 2; }
  let failed = 0;
  for (const s of specs) {
    try {
      const path = await reg.resolve(s, { download: true });
      out(`${s.role}:${s.name}  ${path}`);
    } catch (e) {
      failed++;
      err(`error: ${(e as Error).message}`);
    }
  }
  return failed ? 1 : 0;
}

function modelPaths(reg: ModelRegistry, rest: string[]): number {
  if (!rest.length) { out(reg.cacheDir); return 0; }
  const specs = pick(reg, rest);
  if (typeof specs === 'string') { err(`error: ${specs}`); return 2; }
  for (const s of specs) out(specs.length > 1 ? `${s.role}:${s.name}  ${reg.localPath(s)}` : reg.localPath(s));
  return 0;
}

/** The models `name` or `role:name` each designate, or the message that says which name is unknown. */
function pick(reg: ModelRegistry, names: string[]): ModelSpec[] | string {
  const all = reg.list(), picked: ModelSpec[] = [];
  for (const n of names) {
    const [role, name] = n.includes(':') ? n.split(':', 2) : [undefined, n];
    const found = all.filter((s) => s.name === name && (!role || s.role === role));
    if (!found.length) return `unknown model '${n}': known models are ${all.map((s) => `${s.role}:${s.name}`).join(', ')}`;
    picked.push(...found.filter((s) => !picked.includes(s)));
  }
  return picked;
}
