// The README's commands, run or checked so that they cannot drift from the product:
// - every `npm ...` and `pg-steadytext ...` command in its shell blocks and inline code names an npm script of
//   package.json and a subcommand, flag and environment variable the CLI's help and settings know;
// - the quick start, run as written against the test cluster: `npm run fixtures:models -- DIR`, then the documented
//   `pg-steadytext serve --upstream ...` with the models from that DIR, then the documented psql line (the real
//   psql) and `SELECT 1` through it; only the addresses are the test's (the cluster's URL, a free port, a temp
//   dir). The startup banner says where it listens, what it fronts (password redacted) and which models are
//   present, or missing with the command that fetches them.
// - the one-command start, as written: `npx pg-steadytext` with no upstream (the embedded database, in a temp data
//   dir, with the fixture models), then its psql line (the real psql) at the port it listens on.
// `npx pg-steadytext` runs package.json's bin, dist/cli.js, compiled from cli.ts: here cli.ts runs through tsx (no
// build needed), and the bin is checked to be that file.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { settingsMarkdown } from '../config/settings.js';
import { spawnCli } from './proxy/helpers.js';
import { adminQuery } from './api/helpers.js';
import { tinyModels } from './fixtures/models.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(join(root, 'README.md'), 'utf8');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string>; bin: Record<string, string> };
const PSQL = join(process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin', 'psql');

/** The README's sections by their `## ` heading. */
function section(title: string): string {
  const start = README.indexOf(`\n## ${title}\n`);
  if (start < 0) throw new Error(`README.md has no "## ${title}" section`);
  const end = README.indexOf('\n## ', start + 1);
  return README.slice(start, end < 0 ? undefined : end);
}

/** Commands of the ```bash blocks: continuation lines joined, comments dropped. */
function shellCommands(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/```(?:bash|sh|shell)\n([\s\S]*?)```/g)) {
    for (const line of m[1].replace(/\\\n\s*/g, ' ').split('\n')) {
      const cmd = line.replace(/\s+#\s.*$/, '').trim();
      if (cmd && !cmd.startsWith('#')) out.push(cmd);
    }
  }
  return out;
}

/** Words of a command line, quotes removed ("..." and '...' kept whole). */
const words = (cmd: string) => [...cmd.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]);

/** Leading VAR=value assignments, and the rest of the words. */
function splitEnv(cmd: string): { env: Record<string, string>; argv: string[] } {
  const argv = words(cmd);
  const env: Record<string, string> = {};
  while (argv.length && /^[A-Z_][A-Z0-9_]*=/.test(argv[0])) {
    const [k, ...v] = argv.shift()!.split('=');
    env[k] = v.join('=');
  }
  return { env, argv };
}

/** The README's npm and pg-steadytext commands: every shell block's, and inline code that starts with one. */
function documentedCommands(): string[] {
  // The startup banner's message reads like a command; it is checked below as the ready line's message.
  const inline = [...README.matchAll(/`((?:npx |npm |pg-steadytext )[^`]+)`/g)].map((m) => m[1]).filter((c) => c !== READY);
  return [...shellCommands(README), ...inline].filter((c) => /^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:npx pg-steadytext|pg-steadytext|npm)\b/.test(c));
}

/** The message of the startup banner, the log line that says the proxy is ready. */
const READY = 'pg-steadytext ready';
const HELP = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'cli.ts'), '--help'], { encoding: 'utf8', cwd: root }).stdout;
const ENV_VARS = new Set([...settingsMarkdown().matchAll(/PGSTEADYTEXT_[A-Z0-9_]+/g)].map((m) => m[0]));

/** What is wrong with one documented command, if anything. */
function problems(cmd: string): string[] {
  const { env, argv } = splitEnv(cmd);
  const out = Object.keys(env)
    .filter((k) => k.startsWith('PGSTEADYTEXT_') && !ENV_VARS.has(k))
    .map((k) => `unknown environment variable ${k}`);
  if (argv[0] === 'npm') {
    // npm's own commands the README may show; test and start run scripts of package.json.
    const builtin: Record<string, string | undefined> = {
      install: undefined,
      ci: undefined,
      ls: undefined,
      pack: undefined,
      'install-scripts': undefined,
      test: 'test',
      start: 'start',
    };
    if (argv[1] === 'run') {
      if (!pkg.scripts[argv[2]]) out.push(`no npm script "${argv[2]}" in package.json`);
    } else if (!(argv[1] in builtin)) out.push(`npm ${argv[1]} is not a command the README should need`);
    else if (builtin[argv[1]] && !pkg.scripts[builtin[argv[1]]!]) out.push(`no npm script "${argv[1]}" in package.json`);
    return out;
  }
  const args = argv[0] === 'npx' ? argv.slice(2) : argv.slice(1);
  const sub = args[0];
  const usage = HELP.split('\n').filter((l) => l.trimStart().startsWith(`pg-steadytext ${sub}`));
  if (sub && !sub.startsWith('-') && !usage.length) out.push(`the CLI's help has no subcommand "${sub}"`);
  if (sub === 'models' && args[1] && !args[1].startsWith('-') && !usage.some((l) => new RegExp(`\\b${args[1]}\\b`).test(l)))
    out.push(`no "models ${args[1]}"`);
  for (const a of args) {
    const flag = /^--[a-z][a-z-]*/.exec(a)?.[0];
    if (flag && !HELP.includes(flag) && !HELP.includes(flag.replace(/^--no-/, '--'))) out.push(`the CLI's help knows no flag ${flag}`);
  }
  return out;
}

describe('README', () => {
  test('its npm scripts, CLI subcommands, flags and environment variables exist', () => {
    expect(HELP).toContain('usage:');
    const cmds = documentedCommands();
    // The quick start's three kinds at least: an install, a start, a model fetch.
    expect(cmds.some((c) => c.startsWith('npm install'))).toBe(true);
    expect(cmds.some((c) => / serve /.test(c))).toBe(true);
    expect(cmds.some((c) => c.includes('models pull'))).toBe(true);
    expect(Object.fromEntries(cmds.map((c) => [c, problems(c)]).filter(([, p]) => p.length))).toEqual({});
    // `npx pg-steadytext` is the bin, built from cli.ts (tsconfig's include, outDir dist).
    expect(pkg.bin['pg-steadytext']).toBe('dist/cli.js');
    const tsconfig = readFileSync(join(root, 'tsconfig.json'), 'utf8');
    expect(tsconfig).toMatch(/"outDir":\s*"(\.\/)?dist"/);
    expect(tsconfig).toMatch(/"include":\s*\[[^\]]*"cli\.ts"/);
  });

  test("the slim install's llama.cpp packages are at the version node-llama-cpp depends on", () => {
    // Installed from the lockfile: what `npm install` resolves node-llama-cpp to.
    const version = (JSON.parse(readFileSync(join(root, 'node_modules/node-llama-cpp/package.json'), 'utf8')) as { version: string }).version;
    const named = [...section('Install size').matchAll(/@node-llama-cpp\/[a-z0-9-]+@([0-9][^\s`]*)/g)].map((m) => m[1]);
    expect(named.length).toBeGreaterThan(0);
    expect(new Set(named)).toEqual(new Set([version]));
  });

  test('the check catches a command that drifted', () => {
    expect(problems('npm run no-such-script')).toEqual(['no npm script "no-such-script" in package.json']);
    expect(problems('npx pg-steadytext serve --no-such-flag 1')).toEqual(["the CLI's help knows no flag --no-such-flag"]);
    expect(problems('npx pg-steadytext launch')).toEqual(['the CLI\'s help has no subcommand "launch"']);
    expect(problems('PGSTEADYTEXT_NO_SUCH=1 npx pg-steadytext serve')).toEqual(['unknown environment variable PGSTEADYTEXT_NO_SUCH']);
    expect(problems('npx pg-steadytext serve --no-auto-install --upstream postgres://x')).toEqual([]);
  });

  test('the one-command start, run as written: the embedded database answers the documented psql line', async () => {
    const cmds = shellCommands(section('Start in one command'));
    expect(cmds[0]).toBe('npm install');
    expect(cmds[1]).toBe('npx pg-steadytext');
    const psqlArgs = words(cmds.find((c) => c.startsWith('psql '))!).slice(1);
    const models = await tinyModels();
    const { child, output } = spawnCli(['--data-dir', join(mkdtempSync(join(tmpdir(), 'pgst-readme-emb-')), 'pgdata'), '--listen', '127.0.0.1:0', '--log-format', 'json'], {
      PGSTEADYTEXT_UPSTREAM: '', PGSTEADYTEXT_GENERATION_MODEL: models.generation, PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding,
    });
    try {
      const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
        child.once('exit', (code) => reject(new Error(`pg-steadytext exited (${code}):\n${output()}`)));
        const look = () => {
          const l = output().split('\n').find((x) => x.includes(`"${READY}"`));
          if (l) resolve(JSON.parse(l) as Record<string, unknown>);
        };
        child.stderr.on('data', look);
        child.stdout.on('data', look);
      });
      expect(ready.upstream).toMatch(/^embedded: PostgreSQL/);
      const { port } = ready.listen as { port: number };
      // The documented line, at this port: its -p is the default 6432.
      const p = psqlArgs.indexOf('-p');
      expect(psqlArgs[p + 1]).toBe('6432');
      psqlArgs[p + 1] = String(port);
      const r = spawnSync(PSQL, ['-X', '-A', '-t', ...psqlArgs], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.trim().length).toBeGreaterThan(0);
    } finally {
      child.kill('SIGTERM');
    }
  }, 120_000);

  describe('the quick start, run as written', () => {
    const stops: (() => void)[] = [];
    let database: string;
    let upstream: URL;
    beforeAll(async () => {
      database = `st_readme_${randomBytes(4).toString('hex')}`;
      await adminQuery(`CREATE DATABASE ${database}`);
      upstream = new URL(inject('db').adminUrl);
      upstream.pathname = `/${database}`;
    });
    afterAll(async () => {
      for (const stop of stops) stop();
      await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    });

    /** The documented serve command with the test's addresses, through the CLI; resolves with its ready line. */
    async function start(
      cmd: string,
      extraEnv: Record<string, string> = {},
    ): Promise<{ ready: Record<string, unknown>; url: (sqlUrl: string) => string }> {
      const { env, argv } = splitEnv(cmd);
      const args = argv.slice(argv[0] === 'npx' ? 2 : 1);
      expect(args[0]).toBe('serve');
      const i = args.indexOf('--upstream');
      expect(i).toBeGreaterThan(0);
      const documented = new URL(args[i + 1]);
      args[i + 1] = upstream.toString();
      const { child, output } = spawnCli([...args, '--listen', '127.0.0.1:0', '--daemon-listen', 'off', '--log-format', 'json'], {
        ...env,
        ...extraEnv,
      });
      stops.push(() => child.kill('SIGKILL'));
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
        void exited.then((code) => reject(new Error(`pg-steadytext exited (${code}):\n${output()}`)));
        const look = () => {
          for (const l of output().split('\n')) {
            if (!l.includes(`"${READY}"`)) continue;
            child.stderr.off('data', look);
            resolve(JSON.parse(l) as Record<string, unknown>);
          }
        };
        child.stderr.on('data', look);
      });
      stops.push(() => child.kill('SIGTERM'));
      const { host, port } = ready.listen as { host: string; port: number };
      // A URL of the README pointing at the documented proxy: the same, at this proxy and on the test's database and password.
      const url = (sqlUrl: string) => {
        const u = new URL(sqlUrl);
        expect(u.pathname).toBe(documented.pathname);
        u.hostname = host;
        u.port = String(port);
        u.pathname = upstream.pathname;
        u.password = upstream.password;
        return u.toString();
      };
      return { ready, url };
    }

    test('fixture models, serve with them, psql answers steadytext_generate and SELECT 1; the banner lists the models as present', async () => {
      const quick = shellCommands(section('Quick start'));
      const serveCmd = quick.find((c) => /pg-steadytext serve /.test(c) && c.includes('--upstream') && c.includes('PGSTEADYTEXT_GENERATION_MODEL'));
      const fixturesCmd = quick.find((c) => c.startsWith('npm run fixtures:models'));
      const psqlCmd = quick.find((c) => c.startsWith('psql '));
      expect({ serveCmd, fixturesCmd, psqlCmd }).toEqual({
        serveCmd: expect.any(String),
        fixturesCmd: expect.any(String),
        psqlCmd: expect.any(String),
      });

      // npm run fixtures:models -- ./models, into a temp dir instead of ./models.
      const dir = mkdtempSync(join(tmpdir(), 'pgst-readme-'));
      const docDir = words(fixturesCmd!).at(-1)!;
      const f = spawnSync('npm', words(fixturesCmd!.replaceAll(docDir, dir)).slice(1), { cwd: root, encoding: 'utf8' });
      expect(f.status, f.stderr).toBe(0);
      expect(existsSync(join(dir, 'generation.gguf')) && existsSync(join(dir, 'embedding.gguf'))).toBe(true);

      const { ready, url } = await start(serveCmd!.replaceAll(docDir, dir));
      // The banner: where it listens, what it fronts (the password redacted), both models present.
      expect(ready.upstream).toBe(upstream.toString().replace(`:${upstream.password}@`, ':***@'));
      expect(ready.models).toEqual({
        'generation:small': `present: ${join(dir, 'generation.gguf')}`,
        'embedding:small': `present: ${join(dir, 'embedding.gguf')}`,
      });
      expect(ready.getModels).toBeUndefined();

      // The documented psql line (the real psql), at this proxy.
      const argv = words(psqlCmd!);
      const psql = (sql: string) => {
        const r = spawnSync(PSQL, ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', url(argv[1]), '-c', sql], { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
        return r.stdout.trim();
      };
      expect(argv.slice(2, 3)).toEqual(['-c']);
      expect(argv[3]).toMatch(/steadytext_generate/);
      expect(psql(argv[3]).length).toBeGreaterThan(0);
      expect(psql('SELECT 1')).toBe('1');
    }, 120_000);

    test('with no model files, the banner names each missing one and the one command that fetches them', async () => {
      const quick = shellCommands(section('Quick start'));
      const plain = quick.find((c) => /^npx pg-steadytext serve --upstream \S+$/.test(c));
      expect(plain).toBeDefined();
      const modelDir = mkdtempSync(join(tmpdir(), 'pgst-readme-models-'));
      // Nowhere to download from: nothing is fetched behind the test's back.
      const dead = 'http://127.0.0.1:9/';
      const { ready } = await start(`${plain!} --model-dir ${modelDir}`, {
        PGSTEADYTEXT_GENERATION_MODEL: '',
        PGSTEADYTEXT_EMBEDDING_MODEL: '',
        HF_ENDPOINT: dead,
        MODEL_ENDPOINT: dead,
      });
      const models = ready.models as Record<string, string>;
      expect(Object.keys(models)).toEqual(['generation:small', 'embedding:small']);
      for (const v of Object.values(models)) expect(v).toMatch(new RegExp(`^missing: ${modelDir}/\\S+\\.gguf$`));
      expect(ready.getModels).toBe(`pg-steadytext models pull --model-dir ${modelDir}`);
      // That command is the CLI's own, and names those very files.
      expect(problems(ready.getModels as string)).toEqual([]);
      const paths = spawn(
        process.execPath,
        ['--import', 'tsx', join(root, 'cli.ts'), 'models', 'path', 'generation:small', '--model-dir', modelDir],
        { env: { ...process.env, PGSTEADYTEXT_GENERATION_MODEL: '' } },
      );
      let out = '';
      paths.stdout.on('data', (d: Buffer) => (out += d.toString()));
      await new Promise((resolve) => paths.once('exit', resolve));
      expect(`missing: ${out.trim()}`).toBe(models['generation:small']);
    }, 60_000);
  });
});
