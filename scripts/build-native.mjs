// Builds the native steady-state relay (proxy/native/relay.c) into build/relay.node, against the headers
// of the Node that runs it (uv.h must match the libuv inside that Node). Run by `npm install` (prepare).
// Never fails the install: without a C compiler or Node's headers the proxy relays in JS, and says so.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'proxy', 'native', 'relay.c');
const out = join(root, 'build', 'relay.node');
const quiet = process.argv.includes('--quiet');

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
  mkdirSync(dirname(out), { recursive: true }); // exists even when nothing is built (the Dockerfile copies it)
  if (process.platform !== 'linux' && process.platform !== 'darwin') return skip(`not supported on ${process.platform}`);
  const inc = headers();
  if (!inc) return skip(`no headers of Node ${process.version} found (set PGSTEADYTEXT_NODE_HEADERS to the include/node directory of this Node)`);
  const cc = process.env.CC || 'cc';
  const tmp = `${out}.${process.pid}.tmp`;
  const flags = ['-O2', '-std=c11', '-D_POSIX_C_SOURCE=200809L', '-Wall', '-Wextra', '-Wno-unused-parameter', '-fPIC', '-shared', '-DNODE_GYP_MODULE_NAME=relay', '-I', inc];
  if (process.platform === 'darwin') flags.push('-undefined', 'dynamic_lookup');
  const r = spawnSync(cc, [...flags, '-o', tmp, source], { encoding: 'utf8' });
  if (r.error) return skip(`${cc} not found (install a C compiler, e.g. build-essential)`);
  if (r.status !== 0) return skip(`${cc} failed:\n${r.stderr}`);
  if (r.stderr.trim() && !quiet) console.warn(r.stderr.trim());
  renameSync(tmp, out);
  if (!quiet) console.log(`build-native: built ${out}`);
}

function skip(why) {
  console.warn(`build-native: the native relay was not built (${why}); the proxy will relay in JS, which is slower.`);
}

main();
