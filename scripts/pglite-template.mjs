// Makes the embedded database's templates (embedded/index.ts), dumped once at install, which a first start restores
// instead of running initdb (5.6 s on a 2-core machine) and installing the steadytext objects (1 s):
//   pglite-template-<PGlite version>.tar.gz            a freshly initialized PGlite data directory
//   pglite-template-<PGlite version>-sql-<v>-<d>.tar.gz the same with the steadytext objects installed by the
//       project's own installer (sql/install.ts installSql, through the embedded database as the CLI runs it), named
//       for their version and a digest of the migrations (sql/install.ts objectsTag, as cli.ts asks for it): a start with
//       other migrations takes the bare one and installs. Only the objects: the daemon secret, model identities and
//       the daemon address are each instance's own, written at its first start (prepareDatabase).
// Run by `npm install` (the install script) and again after tsc (prepare): the installer comes from the sources
// when they are there (a checkout: tsx is installed), else from dist/ (a published package). Never fails the
// install: without a template a first start is slower.
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const warn = (what, err) => process.stderr.write(`pglite-template: ${what}: ${err?.message ?? err}\n`);
// A PGlite that never answers must not hold the install up.
setTimeout(() => {
  warn('gave up', 'still not done after 180 s');
  process.exit(0);
}, 180_000).unref();

/** Writes a dump beside its final name, then renames it: a reader never sees half a file, nor do two writers collide. */
async function write(file, dump) {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, Buffer.from(await dump.arrayBuffer()));
  renameSync(tmp, file);
}

/** The installer and the embedded start, from the sources in a checkout, else from the build; null: neither. */
async function modules() {
  const from = async (dir, ext) => ({
    install: await import(pathToFileURL(join(root, dir, 'sql', `install.${ext}`)).href),
    embedded: await import(pathToFileURL(join(root, dir, 'embedded', `index.${ext}`)).href),
  });
  if (existsSync(join(root, 'sql', 'install.ts'))) {
    try {
      (await import('tsx/esm/api')).register();
      return await from('.', 'ts');
    } catch {
      // no tsx (dev dependencies left out): the build, if any
    }
  }
  return existsSync(join(root, 'dist', 'sql', 'install.js')) ? from('dist', 'js') : null;
}

/** The bare template restored, the objects installed through the embedded database, dumped. */
async function withObjects(version) {
  const m = await modules();
  if (!m) return;
  const file = join(root, m.embedded.templateName(version, await m.install.objectsTag()));
  if (existsSync(file)) return;
  const dir = mkdtempSync(join(tmpdir(), 'pglite-template-'));
  try {
    const dataDir = join(dir, 'data');
    const db = await m.embedded.startEmbedded({ dataDir, logger: { info() {}, error() {} }, onCrash() {} }).ready;
    try {
      const { default: pg } = await import('pg');
      const client = new pg.Client(db.url);
      await client.connect();
      try {
        await m.install.installSql(client, { schema: 'public' });
      } finally {
        await client.end();
      }
    } finally {
      await db.stop();
    }
    const { PGlite } = await import('@electric-sql/pglite');
    const { vector } = await import('@electric-sql/pglite-pgvector');
    const pglite = await PGlite.create({ dataDir, extensions: { vector } });
    const dump = await pglite.dumpDataDir('gzip');
    await pglite.close();
    await write(file, dump);
    // Ones made with other migrations are of no more use.
    for (const f of readdirSync(root)) {
      if (f.startsWith(`pglite-template-${version}-sql-`) && f.endsWith('.tar.gz') && f !== basename(file)) rmSync(join(root, f), { force: true });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

let version;
try {
  // Its package.json is not exported: read it beside the entry point's dist/ directory.
  const entry = fileURLToPath(import.meta.resolve('@electric-sql/pglite'));
  version = JSON.parse(readFileSync(join(dirname(entry), '..', 'package.json'), 'utf8')).version;
  const file = join(root, `pglite-template-${version}.tar.gz`);
  if (!existsSync(file)) {
    const { PGlite } = await import('@electric-sql/pglite');
    const dir = mkdtempSync(join(tmpdir(), 'pglite-template-'));
    try {
      const db = await PGlite.create({ dataDir: join(dir, 'data') });
      const dump = await db.dumpDataDir('gzip');
      await db.close();
      await write(file, dump);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
} catch (err) {
  warn('no template for the embedded database (its first start runs initdb)', err);
  version = undefined;
}
if (version) {
  try {
    await withObjects(version);
  } catch (err) {
    warn('no template with the steadytext objects (a first start installs them)', err);
  }
}
process.exit(0);
