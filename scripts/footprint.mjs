// npm run footprint [-- --install] [--dir PATH]
// What node_modules weighs on disk, broken down: node-llama-cpp's binary packages one by one (@node-llama-cpp/*:
// the CPU build of this platform, its GPU builds, other architectures), node-llama-cpp itself, libpg-query, PGlite,
// the rest.
//   (default)  this checkout's node_modules (or --dir PATH), dev dependencies included.
//   --install  as a user gets it: `npm pack` of this checkout (scripts off: the tree's dist/ as it is), then the
//              tarball installed into two temp dirs, each timed and checked (the CPU binary loads, the CLI runs):
//                full  npm install --omit=dev TARBALL
//                slim  npm install --omit=dev --omit=optional TARBALL @node-llama-cpp/<platform>@<version>
//              (the README's "Install size"). The temp dirs are removed afterwards.
// Sizes are disk usage (allocated blocks, as du counts them), in MB of 2^20 bytes.
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({ options: { install: { type: 'boolean', default: false }, dir: { type: 'string' } } });
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const mb = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MB`;

/** Disk usage of a tree, as `du` counts it (blocks, symlinks not followed). */
function diskUsage(path) {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return 0;
  }
  let total = st.blocks * 512;
  if (st.isDirectory()) for (const e of readdirSync(path)) total += diskUsage(join(path, e));
  return total;
}

/** node-llama-cpp's prebuilt package for this machine (its optionalDependencies' naming). */
export function cpuPackage() {
  const os = { linux: 'linux', darwin: 'mac', win32: 'win' }[process.platform];
  if (!os) return undefined;
  return `@node-llama-cpp/${os}-${process.arch}${os === 'mac' && process.arch === 'arm64' ? '-metal' : ''}`;
}

/** Rows of the breakdown: each @node-llama-cpp/* package, node-llama-cpp, libpg-query, PGlite, everything else. */
function breakdown(nodeModules) {
  const total = diskUsage(nodeModules);
  const rows = [];
  const scoped = join(nodeModules, '@node-llama-cpp');
  const cpu = cpuPackage();
  let binaries = [];
  try {
    binaries = readdirSync(scoped).sort();
  } catch {
    /* none installed */
  }
  for (const name of binaries) {
    const pkg = `@node-llama-cpp/${name}`;
    const kind = pkg === cpu ? 'CPU build, this platform' : /cuda|vulkan|metal/.test(name) ? 'GPU build' : 'other platform';
    rows.push([pkg, diskUsage(join(scoped, name)), kind]);
  }
  rows.sort((a, b) => b[1] - a[1]);
  for (const [pkg, why] of [
    ['node-llama-cpp', 'JS, llama.cpp sources for a build from source'],
    ['libpg-query', 'PostgreSQL parser (WASM)'],
    ['@electric-sql/pglite', 'the embedded database: PostgreSQL in WASM'],
    ['@electric-sql/pglite-pgvector', 'pgvector for it'],
  ]) {
    rows.push([pkg, diskUsage(join(nodeModules, pkg)), why]);
  }
  const counted = rows.reduce((a, r) => a + r[1], 0);
  rows.push(['everything else', total - counted, `${readdirSync(nodeModules).filter((e) => !e.startsWith('.')).length} top-level entries`]);
  return { total, rows };
}

function print(title, { total, rows }) {
  console.log(`\n${title}: ${mb(total)}`);
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [name, bytes, note] of rows) console.log(`  ${name.padEnd(w)}  ${mb(bytes).padStart(9)}  ${note}`);
}

function run(cmd, args, cwd) {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', shell: process.platform === 'win32' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}) in ${cwd}:\n${r.stderr || r.stdout}`);
  return { out: r.stdout, seconds: (performance.now() - t0) / 1000 };
}

/** getLlama as inference/llama.ts calls it, run from the install (a file, not -e: its test process re-runs our argv). */
function checkCpuBinary(dir) {
  writeFileSync(
    join(dir, 'check.mjs'),
    "import { getLlama } from 'node-llama-cpp';\nconst t = performance.now();\nconst l = await getLlama({ gpu: false, build: 'never' });\n" +
      'console.log(`${l.buildType} CPU binary loads in ${Math.round(performance.now() - t)} ms`);\n',
  );
  return run(process.execPath, ['check.mjs'], dir).out.trim();
}

async function installs() {
  const cpu = cpuPackage();
  if (!cpu) throw new Error(`no node-llama-cpp prebuilt package is known for ${process.platform}`);
  const version = JSON.parse(readFileSync(join(root, 'node_modules/node-llama-cpp/package.json'), 'utf8')).version;
  const work = mkdtempSync(join(tmpdir(), 'pgst-footprint-'));
  try {
    const packed = run('npm', ['pack', '--ignore-scripts', '--silent', '--pack-destination', work], root).out.trim().split('\n').pop();
    const tarball = join(work, packed);
    console.log(`packed ${packed}: ${mb(lstatSync(tarball).size)} (npm ${run('npm', ['--version'], work).out.trim()}, node ${process.version})`);
    const variants = [
      ['full', ['install', '--omit=dev', '--no-audit', '--no-fund', tarball]],
      ['slim', ['install', '--omit=dev', '--omit=optional', '--no-audit', '--no-fund', tarball, `${cpu}@${version}`]],
    ];
    for (const [name, args] of variants) {
      const dir = join(work, name);
      mkdirSync(dir);
      // npm 11 runs a dependency's install scripts only when allowScripts names it (older npm ignores the field):
      // ours builds the native relay, node-llama-cpp's test-loads its binary.
      const allowScripts = { 'pg-steadytext': true, 'node-llama-cpp': true };
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `footprint-${name}`, private: true, allowScripts }));
      const { seconds } = run('npm', args, dir);
      print(
        `${name}: npm ${args.map((a) => (a === tarball ? packed : a)).join(' ')}  (${seconds.toFixed(0)} s)`,
        breakdown(join(dir, 'node_modules')),
      );
      const relay = existsSync(join(dir, 'node_modules/pg-steadytext/build/Release/relay.node'))
        ? 'native relay built'
        : 'no native relay (relays in JS)';
      console.log(
        `  check: ${checkCpuBinary(dir)}; ${relay}; ${run(process.execPath, ['node_modules/pg-steadytext/dist/cli.js', 'version'], dir).out.trim()}`,
      );
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (opt.install) await installs();
else print(opt.dir ?? join(root, 'node_modules'), breakdown(opt.dir ?? join(root, 'node_modules')));
