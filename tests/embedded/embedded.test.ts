// The embedded default, through the real CLI: `pg-steadytext serve` with no upstream runs PGlite (with pgvector)
// in a worker thread and pools its clients onto its one session. The seed document runs on it (PL/pgSQL, the
// trigger, the views: in-band, where every miss stops its statement and the proxy runs it again); the real psql
// and node-postgres work at once, in and out of blocks, with answers byte-identical to the engine's; the data is
// there after a restart; a second process on the same directory is refused; COPY FROM STDIN gets a clear error
// and the database goes on.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import pg from 'pg';
import { createEngine } from '../../inference/engine.js';
import { tinyModels } from '../fixtures/models.js';
import { spawnCli } from '../proxy/helpers.js';
import { silent, type Stack } from '../api/helpers.js';
import { seedSuite } from '../api/seed-suite.js';

const PSQL = spawnSync('sh', ['-c', 'command -v psql || ls /usr/lib/postgresql/*/bin/psql'], { encoding: 'utf8' }).stdout.trim().split('\n')[0];

let models: { generation: string; embedding: string };
const running = new Set<() => void>();
afterAll(() => { for (const kill of running) kill(); });

interface Embedded {
  url: string;
  port: number;
  pid: number;
  lines(): Record<string, unknown>[];
  output(): string;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

/** The CLI with no upstream, on a free port, once it says it is ready. */
async function start(args: string[]): Promise<Embedded> {
  const { child, output } = spawnCli(['serve', '--listen', '127.0.0.1:0', '--log-format', 'json', '--contexts', '1', ...args], {
    PGSTEADYTEXT_UPSTREAM: '', PGSTEADYTEXT_GENERATION_MODEL: models.generation, PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding,
  });
  const kill = () => child.kill('SIGKILL');
  running.add(kill);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => { running.delete(kill); resolve(code); }));
  const lines = () => output().split('\n').flatMap((l) => { try { return [JSON.parse(l) as Record<string, unknown>]; } catch { return []; } });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    void exited.then((code) => reject(new Error(`pg-steadytext exited (${code}):\n${output()}`)));
    setTimeout(() => reject(new Error(`pg-steadytext not ready after 50 s:\n${output()}`)), 50_000).unref();
    const look = () => {
      const r = lines().find((l) => l.msg === 'pg-steadytext ready');
      if (r) resolve(r);
    };
    child.stdout.on('data', look);
    child.stderr.on('data', look);
  });
  const port = (ready.listen as { port: number }).port;
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    pid: child.pid!,
    lines,
    output,
    stop: () => { child.kill('SIGTERM'); return exited; },
  };
}

function psql(url: string, sql: string): { out: string; err: string; status: number | null } {
  const r = spawnSync(PSQL, ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', url, '-c', sql], { encoding: 'utf8' });
  return { out: r.stdout.trim(), err: r.stderr.trim(), status: r.status };
}

/** psql without waiting: the node-postgres client works meanwhile. */
function psqlAsync(url: string, file: string[]): Promise<{ out: string; err: string; status: number | null }> {
  return new Promise((resolve) => {
    const p = spawn(PSQL, ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', url, ...file.flatMap((c) => ['-c', c])]);
    let out = '', err = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    p.on('close', (status) => resolve({ out: out.trim(), err: err.trim(), status }));
  });
}

beforeAll(async () => {
  models = await tinyModels();
  // The templates as npm install makes them (only what is missing: the migrations may have changed since).
  const made = spawnSync(process.execPath, [join(import.meta.dirname, '../../scripts/pglite-template.mjs')], { encoding: 'utf8', timeout: 170_000 });
  expect(made.stderr).toBe('');
}, 240_000);

// Autocommit through psql's simple protocol; then each statement in its own REPEATABLE READ block through the
// extended protocol: a miss of a call the proxy cannot see stops its statement (PGlite's one session), which runs again in the block.
for (const { name, inBlock, extended, level } of [
  { name: '', inBlock: false, extended: false, level: '' },
  { name: ', each statement in a repeatable read block, extended protocol', inBlock: true, extended: true, level: 'repeatable\\ read' },
]) {
  describe(`the seed document on the embedded database${name}`, () => {
    seedSuite({
      start: async () => {
        const e = await start(['--memory']);
        const clients: pg.Client[] = [];
        const stack = {
          pid: e.pid,
          url: () => e.url,
          async connect(url?: string) {
            const c = new pg.Client(url ?? e.url);
            await c.connect();
            clients.push(c);
            return c;
          },
          async stop() {
            await Promise.all(clients.map((c) => c.end().catch(() => {})));
            await e.stop();
          },
        };
        return stack as unknown as Stack;
      },
      url: (s) => {
        if (level === '') return s.url();
        const u = new URL(s.url());
        u.searchParams.set('options', `-c default_transaction_isolation=${level}`);
        return u.toString();
      },
      inBlock,
      extended,
      pid: (s) => (s as unknown as { pid: number }).pid,
    });
  });
}

describe('a data directory of its own', () => {
  let dir: string;
  let e: Embedded;
  let expected: { gen: string[]; embed: number[] };
  beforeAll(async () => {
    dir = join(mkdtempSync(join(tmpdir(), 'st-embedded-')), 'pgdata');
    const engine = createEngine({ generationModel: models.generation, embeddingModel: models.embedding, logger: silent });
    const gen = [];
    for (const p of ['psql says', 'row one', 'row two', 'row three', 'in a block']) gen.push(await engine.generate({ prompt: p, maxTokens: 12, seed: 42, temperature: 0 }));
    const embed = Array.from(await engine.embed({ text: 'a product', seed: 42 }));
    await engine.close();
    expected = { gen, embed };
    e = await start(['--data-dir', dir]);
  }, 120_000);
  afterAll(async () => { await e?.stop(); });

  test('the banner says what it fronts, where its data is, and how to connect', () => {
    const ready = e.lines().find((l) => l.msg === 'pg-steadytext ready')!;
    expect(ready.upstream).toMatch(/^embedded: PostgreSQL \d+\.\d+ \(PGlite [\d.]+\), data /);
    expect(ready.upstream).toContain(dir);
    expect(ready.connect).toBe(`psql -h 127.0.0.1 -p ${e.port} -U postgres postgres`);
    // A new directory starts from the template npm install made (scripts/pglite-template.mjs), not from initdb: the
    // one with the steadytext objects of these migrations installed, so the start has nothing to install.
    const created = e.lines().find((l) => String(l.msg).startsWith('creating the embedded database'));
    expect(created?.from).toMatch(/pglite-template-[\d.]+-sql-[\d.]+-[0-9a-f]{12}\.tar\.gz$/);
    expect(e.lines().filter((l) => l.msg === 'steadytext SQL objects installed')).toEqual([]);
    expect(ready.sqlVersion).toBeDefined();
  });

  test('psql and node-postgres at once: rewrite, PL/pgSQL, a trigger, blocks; answers are the engine\'s', async () => {
    const c = new pg.Client(e.url);
    await c.connect();
    try {
      await c.query(`CREATE TABLE notes (id int PRIMARY KEY, body text, summary text, emb vector(1024))`);
      await c.query(`CREATE FUNCTION summarize(t text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN steadytext_generate(t, 12, 42); END $$`);
      await c.query(`CREATE FUNCTION notes_fill() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.summary := summarize(NEW.body); NEW.emb := steadytext_embed('a product'); RETURN NEW; END $$`);
      await c.query(`CREATE TRIGGER notes_fill BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION notes_fill()`);
      // psql's statements and node-postgres's block interleave on the one session, a transaction at a time.
      const fromPsql = psqlAsync(e.url, [
        `SELECT steadytext_generate('psql says', 12, 42)`,
        `SELECT count(*) FROM pg_class`,
      ]);
      await c.query('BEGIN');
      await c.query(`INSERT INTO notes (id, body) VALUES (1, 'row one'), (2, 'row two')`);
      const inBlock = await c.query(`SELECT steadytext_generate('in a block', 12, 42) AS g`);
      await c.query('COMMIT');
      await c.query({ text: `INSERT INTO notes (id, body) VALUES ($1, $2)`, values: [3, 'row three'] });
      const p = await fromPsql;
      expect(p.err).toBe('');
      expect(p.out.split('\n')[0]).toBe(expected.gen[0]);
      expect(inBlock.rows[0].g).toBe(expected.gen[4]);
      const rows = (await c.query(`SELECT id, summary, emb::text AS emb FROM notes ORDER BY id`)).rows;
      expect(rows.map((r) => r.summary)).toEqual(expected.gen.slice(1, 4));
      const emb = JSON.parse(rows[0].emb as string) as number[];
      expect(emb).toHaveLength(1024);
      expect(emb.map((x) => Math.fround(x))).toEqual(expected.embed.map((x) => Math.fround(x)));
      // A search through the index operator ranks the row itself first.
      const near = await c.query(`SELECT id FROM notes ORDER BY emb <=> steadytext_embed('a product') LIMIT 1`);
      expect(near.rowCount).toBe(1);
    } finally {
      await c.end();
    }
  });

  test('COPY FROM STDIN is refused with 0A000 and what to do instead; the session and the database go on', async () => {
    const r = spawnSync(PSQL, ['-X', '-v', 'ON_ERROR_STOP=1', e.url], { input: 'COPY notes (id, body) FROM STDIN;\n9\tnine\n\\.\n', encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('COPY FROM STDIN is not supported by the embedded database (PGlite)');
    expect(r.stderr).toContain('HINT:  Load the rows with INSERT');
    const c = new pg.Client(e.url);
    await c.connect();
    await expect(c.query({ text: `COPY notes (id, body) FROM STDIN`, queryMode: 'extended' } as pg.QueryConfig)).rejects.toMatchObject({ code: '0A000' });
    expect((await c.query('SELECT count(*)::int AS n FROM notes')).rows[0].n).toBe(3);
    await c.end();
    // COPY TO STDOUT works.
    expect(psql(e.url, `COPY (SELECT id FROM notes ORDER BY id) TO STDOUT`).out).toBe('1\n2\n3');
  });

  test('a second process on the same data directory is refused, naming the first', async () => {
    const second = spawnSync(process.execPath, ['--import', 'tsx', join(import.meta.dirname, '../../cli.ts'), '--data-dir', dir, '--listen', '127.0.0.1:0'], {
      encoding: 'utf8', env: { ...process.env, PGSTEADYTEXT_UPSTREAM: '' }, timeout: 60_000,
    });
    expect(second.status).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`the embedded database in ${dir} is in use by process \\d+: stop that one`));
  });

  test('stopped and started again, it finds its data and its cached answers', async () => {
    expect(await e.stop()).toBe(0);
    e = await start(['--data-dir', dir]);
    const c = new pg.Client(e.url);
    await c.connect();
    try {
      const rows = (await c.query(`SELECT id, summary FROM notes ORDER BY id`)).rows;
      expect(rows.map((r) => r.summary)).toEqual(expected.gen.slice(1, 4));
      const cached = await c.query(`SELECT count(*)::int AS n FROM steadytext_cache`);
      expect(cached.rows[0].n).toBeGreaterThanOrEqual(4);
      expect((await c.query(`SELECT summarize('row one') AS s`)).rows[0].s).toBe(expected.gen[1]);
    } finally {
      await c.end();
    }
  });
});
