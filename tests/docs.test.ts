// The documentation stays true: docs/sql-api.md is what its generator writes from sql/signatures.ts and the
// migrations, each of its examples runs through a real proxy and gives the columns it shows, and every
// relative link in README.md and docs/*.md reaches a file (and a heading, when it names one).
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { renderSqlApi, sqlApiExamples, SQL_API_PATH } from '../scripts/docs-sql-api.js';
import { SPECS } from '../config/settings.js';
import { isSteadyFunction } from '../sql/signatures.js';
import { startStack, type Stack } from './api/helpers.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

describe('SQL API reference', () => {
  test('docs/sql-api.md is what npm run docs:sql-api writes', () => {
    expect(readFileSync(SQL_API_PATH, 'utf8'), 'stale: run npm run docs:sql-api').toBe(renderSqlApi());
  });

  describe('its examples, through the proxy', () => {
    let stack: Stack;
    let client: pg.Client;
    beforeAll(async () => {
      stack = await startStack('st_docs');
      client = await stack.connect();
    });
    afterAll(async () => {
      await stack?.stop();
    });

    // In the reference's order: a later example may rely on an earlier one (steadytext_daemon_stop, then a call).
    test.each(sqlApiExamples().map((e) => [e.sql, e] as const))('%s', async (_sql, e) => {
      if (e.setup) await client.query(e.setup);
      // Values as PostgreSQL prints them (t, not true), as the reference shows them.
      const r = await client.query<string[]>({ text: e.sql, rowMode: 'array', types: { getTypeParser: () => (v: string) => v } });
      expect(r.fields.map((f) => f.name)).toEqual(e.columns);
      if (e.exactRows) expect(r.rows).toHaveLength(e.rows.length);
      if (e.exactValues) expect(r.rows).toEqual(e.rows);
    });
  });
});

describe('comparison with the extension', () => {
  // The extension's API reference names each function in a heading of its own.
  const seed = readFileSync(join(ROOT, 'tests/fixtures/seed/pg_steadytext.md'), 'utf8');
  const api = [...seed.matchAll(/^#### (steadytext_\w+)$/gm)].map((m) => m[1]);

  test('every function of the extension is installed, and docs/comparison.md says so', () => {
    expect(api.length).toBeGreaterThan(10);
    const comparison = readFileSync(join(ROOT, 'docs/comparison.md'), 'utf8');
    for (const fn of api) {
      expect(isSteadyFunction(fn), `${fn} is not in sql/signatures.ts`).toBe(true);
      expect(comparison, `docs/comparison.md does not list ${fn}`).toMatch(new RegExp(`^\\|.*\`${fn}\\(.*\\| implemented`, 'm'));
    }
  });
});

describe('options named in docs/', () => {
  // The CLI's own flags besides the settings (cli.ts), and other programs' flags the pages quote.
  const COMMAND_FLAGS = ['config', 'all', 'reboot', 'database', 'json', 'markdown', 'help', 'version', 'daemon', 'quiet', 'verbose', 'user'];
  const OTHER_PROGRAMS = ['exclude-table-data'];

  test('every --flag is one the CLI takes', () => {
    const known = new Set<string>([...COMMAND_FLAGS, ...OTHER_PROGRAMS]);
    for (const s of Object.values(SPECS)) {
      known.add(s.flag);
      if (s.kind === 'bool') known.add(`no-${s.flag}`);
    }
    const unknown: string[] = [];
    for (const f of readdirSync(join(ROOT, 'docs')).filter((x) => x.endsWith('.md'))) {
      for (const m of readFileSync(join(ROOT, 'docs', f), 'utf8').matchAll(/(?<![\w-])--([a-z][a-z-]*)/g)) if (!known.has(m[1])) unknown.push(`${f}: --${m[1]}`);
    }
    expect(unknown).toEqual([]);
  });
});

/** GitHub's heading anchors: lower case, punctuation dropped (but - and _), spaces to -. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

function anchors(markdown: string): Set<string> {
  const out = new Set<string>();
  const seen = new Map<string, number>();
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const h = !fenced && /^#{1,6} (.*)$/.exec(line);
    if (!h) continue;
    const base = slug(h[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n ? `${base}-${n}` : base);
  }
  return out;
}

/** Relative link targets of a markdown file, outside code: [text](target). */
function links(markdown: string): string[] {
  const text = markdown.replace(/```[\s\S]*?```/g, '').replace(/`[^`\n]*`/g, '');
  return [...text.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]).filter((t) => !/^[a-z][a-z+.-]*:/i.test(t));
}

describe('links', () => {
  const files = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

  test('README links to every page of docs/', () => {
    const readme = links(readFileSync(join(ROOT, 'README.md'), 'utf8'));
    for (const f of files.slice(1)) expect(readme, `README.md does not link to ${f}`).toContain(f);
  });

  test.each(files)('every relative link of %s reaches a file and its heading', (file) => {
    const from = join(ROOT, file);
    const broken: string[] = [];
    for (const target of links(readFileSync(from, 'utf8'))) {
      const [path, anchor] = target.split('#');
      const to = path ? resolve(dirname(from), decodeURIComponent(path)) : from;
      if (!existsSync(to)) {
        broken.push(`${target}: no file ${relative(ROOT, to)}`);
        continue;
      }
      if (anchor && to.endsWith('.md') && !anchors(readFileSync(to, 'utf8')).has(anchor)) broken.push(`${target}: no heading #${anchor} in ${relative(ROOT, to)}`);
    }
    expect(broken).toEqual([]);
  });

  test('the anchors are GitHub\'s', () => {
    expect(slug('Troubleshooting: `pg-steadytext doctor`')).toBe('troubleshooting-pg-steadytext-doctor');
    expect(slug('In pgBouncer\'s place: pooling from a pgbouncer.ini')).toBe('in-pgbouncers-place-pooling-from-a-pgbouncerini');
    expect(slug('steadytext_generate')).toBe('steadytext_generate');
    expect([...anchors('# A\n```\n# not a heading\n```\n## A\n')]).toEqual(['a', 'a-1']);
  });
});
