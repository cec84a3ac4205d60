// Makes the embedded database's template (embedded/index.ts): a freshly initialized PGlite data directory, dumped
// once at install, which a first start restores in about 1.8 s instead of running initdb (5.6 s on a 2-core
// machine). Named for the PGlite version that made it; a start with another version runs initdb as before.
// Run by `npm install` (the install script). Never fails the install: without a template a first start is slower.
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
try {
  // Its package.json is not exported: read it beside the entry point's dist/ directory.
  const entry = fileURLToPath(import.meta.resolve('@electric-sql/pglite'));
  const version = JSON.parse(readFileSync(join(dirname(entry), '..', 'package.json'), 'utf8')).version;
  const file = join(root, `pglite-template-${version}.tar.gz`);
  if (!existsSync(file)) {
    const { PGlite } = await import('@electric-sql/pglite');
    const dir = mkdtempSync(join(tmpdir(), 'pglite-template-'));
    try {
      const db = await PGlite.create({ dataDir: join(dir, 'data') });
      const dump = await db.dumpDataDir('gzip');
      await db.close();
      writeFileSync(`${file}.tmp`, Buffer.from(await dump.arrayBuffer()));
      renameSync(`${file}.tmp`, file);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
} catch (err) {
  process.stderr.write(`pglite-template: no template for the embedded database (its first start runs initdb): ${err?.message ?? err}\n`);
}
