// Builds the native steady-state relay (proxy/native/relay.c) into build/Release/relay.node (node-gyp's
// layout), against the headers of the Node that runs it: one C file, one `cc` call, no Python, make or C++
// toolchain, no download of headers. Run by `npm install` (the install script, so also where the package is
// installed from a registry) with --if-no-prebuild: then nothing is compiled when a binary shipped in
// prebuilds/<platform>-<arch>/ loads here (proxy/relay.ts looks there as node-gyp-build does).
// --prebuild writes prebuilds/<platform>-<arch>/relay.napi.uv1[.glibc|.musl].node instead, for a release:
// Node-API plus libuv 1.x, both ABI-stable, so one binary serves every Node of that platform.
// Never fails the install: without a C compiler or Node's headers the proxy relays in JS, and says so.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'proxy', 'native', 'relay.c');
const quiet = process.argv.includes('--quiet');
const prebuild = process.argv.includes('--prebuild');
const ifNoPrebuild = process.argv.includes('--if-no-prebuild');
const prebuildDir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);

function libc() {
  if (process.platform !== 'linux') return '';
  return process.report?.getReport().header?.glibcVersionRuntime ? 'glibc' : 'musl';
}

/** The prebuilt file this script writes for this platform (its tags are those proxy/relay.ts checks). */
function prebuildName() {
  const tags = ['relay', 'napi', `uv${process.versions.uv.split('.')[0]}`];
  const arm = process.config.variables.arm_version;
  if (process.arch === 'arm' && arm) tags.push(`armv${arm}`);
  if (libc()) tags.push(libc());
  return `${tags.join('.')}.node`;
}

/** A shipped binary for this platform that loads in this Node, if any. */
function loadablePrebuild() {
  const file = join(prebuildDir, prebuildName());
  if (!existsSync(file)) return null;
  try {
    createRequire(import.meta.url)(file);
    return file;
  } catch (err) {
    if (!quiet) console.warn(`build-native: ${file} does not load here (${err.message}): compiling instead`);
    return null;
  }
}

function headers() {
  const candidates = [process.env.PGSTEADYTEXT_NODE_HEADERS, join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node', '/usr/local/include/node'];
  for (const dir of candidates) {
    if (!dir || !existsSync(join(dir, 'uv.h')) || !existsSync(join(dir, 'node_api.h'))) continue;
    const v = readFileSync(join(dir, 'node_version.h'), 'utf8');
    const n = (k) => new RegExp(`#define NODE_${k}_VERSION (\\d+)`).exec(v)?.[1];
    const version = `v${n('MAJOR')}.${n('MINOR')}.${n('PATCH')}`;
    if (version === process.version) return dir;
    if (!quiet) console.warn(`build-native: skipping ${dir}: headers of Node ${version}, running ${process.version}`);
  }
  return null;
}

function main() {
  const out = prebuild ? join(prebuildDir, prebuildName()) : join(root, 'build', 'Release', 'relay.node');
  mkdirSync(join(root, 'build'), { recursive: true }); // exists even when nothing is built (the Dockerfile copies it)
  if (ifNoPrebuild && !prebuild) {
    const shipped = loadablePrebuild();
    if (shipped) {
      if (!quiet) console.log(`build-native: using the prebuilt ${shipped}`);
      return;
    }
  }
  if (process.platform !== 'linux' && process.platform !== 'darwin') return skip(`not supported on ${process.platform}`);
  const inc = headers();
  if (!inc) return skip(`no headers of Node ${process.version} found (set PGSTEADYTEXT_NODE_HEADERS to the include/node directory of this Node)`);
  const cc = process.env.CC || 'cc';
  mkdirSync(dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  // NAPI_VERSION 8 (Node 12.22+): what the relay uses, pinned so that a binary built on a newer Node loads on an older one.
  const flags = ['-O2', '-std=c11', '-D_POSIX_C_SOURCE=200809L', '-DNAPI_VERSION=8', '-Wall', '-Wextra', '-Wno-unused-parameter', '-fPIC', '-shared', '-DNODE_GYP_MODULE_NAME=relay', '-I', inc];
  if (process.platform === 'darwin') flags.push('-undefined', 'dynamic_lookup');
  const r = spawnSync(cc, [...flags, '-o', tmp, source], { encoding: 'utf8' });
  if (r.error) return skip(`${cc} not found (install a C compiler, e.g. build-essential)`);
  if (r.status !== 0) return skip(`${cc} failed:\n${r.stderr}`);
  if (r.stderr.trim() && !quiet) console.warn(r.stderr.trim());
  renameSync(tmp, out);
  if (!quiet) console.log(`build-native: built ${out}`);
}

function skip(why) {
  if (prebuild) {
    console.error(`build-native: the prebuilt relay was not built (${why})`);
    process.exitCode = 1;
    return;
  }
  console.warn(`build-native: the native relay was not built (${why}); the proxy will relay in JS, which is slower.`);
}

main();
