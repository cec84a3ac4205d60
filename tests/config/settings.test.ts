import { describe, expect, test } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadSettings, SettingsError, settingsMarkdown, SPECS } from '../../config/settings.js';
import { parseFlags } from '../../config/flags.js';
import { SETTING_NAMES } from '../../inference/errors.js';
import { tinyModels } from '../fixtures/models.js';

const file = (obj: unknown) => {
  const p = join(mkdtempSync(join(tmpdir(), 'pgst-cfg-')), 'c.json');
  writeFileSync(p, JSON.stringify(obj));
  return p;
};

describe('settings', () => {
  test('defaults < file < env < flags', () => {
    const cfg = file({ queueSize: 10, logLevel: 'warn', listen: '0.0.0.0:7000' });
    const env = { PGSTEADYTEXT_QUEUE_SIZE: '20', PGSTEADYTEXT_LOG_LEVEL: 'debug' };
    const { flags, configFile } = parseFlags(['--config', cfg, '--queue-size=30']);
    const s = loadSettings({ flags, configFile, env });
    expect(s.queueSize).toBe(30);
    expect(s.logLevel).toBe('debug');
    expect(s.listen).toEqual({ host: '0.0.0.0', port: 7000 });
    expect(s.embeddingDimensions).toBe(1024);
    expect(loadSettings({ env: {} }).listen).toEqual({ host: '127.0.0.1', port: 6432 });
  });

  test('service url defaults to the upstream url', () => {
    const s = loadSettings({ env: { PGSTEADYTEXT_UPSTREAM: 'postgres://a:b@db:5433/x' } });
    expect(s.serviceUrl).toBe('postgres://a:b@db:5433/x');
  });

  test('boolean flags: bare, negated, explicit', () => {
    expect(loadSettings({ env: {}, flags: parseFlags(['--no-auto-install']).flags }).autoInstall).toBe(false);
    expect(loadSettings({ env: {}, flags: parseFlags(['--preload-models']).flags }).preloadModels).toBe(true);
    expect(loadSettings({ env: {}, flags: parseFlags(['--auto-install', 'off']).flags }).autoInstall).toBe(false);
  });

  test.each([
    [{ env: { PGSTEADYTEXT_QUEUE_SIZE: 'many' } }, /queue-size \(from environment PGSTEADYTEXT_QUEUE_SIZE\): "many" is not an integer/],
    [{ env: { PGSTEADYTEXT_LISTEN: 'localhost' } }, /listen .*not host:port/],
    [{ env: { PGSTEADYTEXT_UPSTREAM: 'mysql://x' } }, /upstream .*not supported; use postgres:\/\//],
    [{ env: { PGSTEADYTEXT_LOG_LEVEL: 'loud' } }, /log-level .*not one of/],
    [{ env: { PGSTEADYTEXT_MAX_MESSAGE_BYTES: '5' } }, /below the minimum 1024/],
    [{ env: { PGSTEADYTEXT_TLS_CERT: '/x.pem' } }, /tls-cert and tls-key must be given together/],
    [{ env: {}, configFile: file({ nope: 1 }) }, /unknown option "nope"/],
    [{ env: {}, configFile: '/nonexistent/pgst.json' }, /config file \/nonexistent\/pgst.json/],
  ])('refuses bad values with a message naming the option (%#)', (src, msg) => {
    expect(() => loadSettings(src)).toThrow(SettingsError);
    expect(() => loadSettings(src)).toThrow(msg);
  });

  test('unknown flags are refused', () => {
    expect(() => parseFlags(['--lisen', 'x'])).toThrow(/unknown option --lisen/);
    expect(() => parseFlags(['--listen'])).toThrow(/--listen needs a value/);
  });

  test('context sizes: the engine\'s defaults, from file, environment and flags, bounded', () => {
    expect(loadSettings({ env: {} })).toMatchObject({ generationContextSize: 4096, embeddingContextSize: 2048 });
    const configFile = file({ generationContextSize: 1024, embeddingContextSize: 512 });
    expect(loadSettings({ env: {}, configFile })).toMatchObject({ generationContextSize: 1024, embeddingContextSize: 512 });
    const env = { PGSTEADYTEXT_GENERATION_CONTEXT_SIZE: '8192', PGSTEADYTEXT_EMBEDDING_CONTEXT_SIZE: '4096' };
    expect(loadSettings({ env, configFile })).toMatchObject({ generationContextSize: 8192, embeddingContextSize: 4096 });
    const { flags } = parseFlags(['--generation-context-size', '16384', '--embedding-context-size=8192']);
    expect(loadSettings({ env, flags })).toMatchObject({ generationContextSize: 16384, embeddingContextSize: 8192 });
    expect(() => loadSettings({ env: { PGSTEADYTEXT_GENERATION_CONTEXT_SIZE: '8' } })).toThrow(/generation-context-size .*below the minimum 64/);
    expect(() => loadSettings({ env: {}, flags: parseFlags(['--embedding-context-size', 'big']).flags })).toThrow(/embedding-context-size \(from --embedding-context-size\): "big" is not an integer/);
  });

  test('the options the engine\'s error hints name are ones the CLI takes, by flag and environment variable', () => {
    for (const [field, named] of Object.entries(SETTING_NAMES)) {
      const [flag, env] = named.split(' / ');
      const spec = Object.values(SPECS).find((s) => `--${s.flag}` === flag);
      expect(spec, `${field}: ${flag}`).toBeDefined();
      expect(spec!.env).toBe(env);
    }
  });

  test('serve hands the context sizes to the engine', async () => {
    const models = await tinyModels();
    const cli = fileURLToPath(new URL('../../cli.ts', import.meta.url));
    // No database is reached: the models load at start (--preload-models) and the log says at what size.
    const proc = spawn(process.execPath, [
      '--import', 'tsx', cli, 'serve', '--listen', '127.0.0.1:0', '--daemon-listen', 'off', '--upstream', 'postgres://127.0.0.1:1/none',
      '--preload-models', '--generation-context-size', '256', '--embedding-context-size', '128', '--log-format', 'json',
    ], {
      env: { ...process.env, PGSTEADYTEXT_GENERATION_MODEL: models.generation, PGSTEADYTEXT_EMBEDDING_MODEL: models.embedding, PGSTEADYTEXT_MODEL_DIR: mkdtempSync(join(tmpdir(), 'pgst-cfg-models-')) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const sizes: Record<string, number> = {};
    const other: string[] = [];
    let rest = '';
    try {
      await new Promise<void>((resolve, reject) => {
        proc.once('exit', (code) => reject(new Error(`pg-steadytext exited (${code}) before loading both models:\n${other.join('\n')}`)));
        proc.stderr.setEncoding('utf8').on('data', (d: string) => {
          const lines = (rest + d).split('\n');
          rest = lines.pop()!;
          for (const l of lines) {
            let r: { msg?: string; role?: string; contextSize?: number };
            try { r = JSON.parse(l); } catch { other.push(l); continue; }
            if (r.msg === 'model loaded') sizes[r.role!] = r.contextSize!;
          }
          if (Object.keys(sizes).length === 2) resolve();
        });
      });
    } finally {
      proc.kill('SIGKILL');
    }
    expect(sizes).toEqual({ generation: 256, embedding: 128 });
  }, 60_000);

  test('the reference lists every option', () => {
    const md = settingsMarkdown();
    for (const s of Object.values(SPECS)) expect(md).toContain(`\`${s.env}\``);
  });

  test("README's configuration table is the generated reference (pg-steadytext config --markdown)", () => {
    expect(readFileSync(new URL('../../README.md', import.meta.url), 'utf8')).toContain(settingsMarkdown());
  });

  test('--no-download, PGSTEADYTEXT_DOWNLOAD and the download key turn downloads off', () => {
    expect(loadSettings({ env: {} }).download).toBe(true);
    expect(loadSettings({ env: {}, flags: parseFlags(['--no-download']).flags }).download).toBe(false);
    expect(loadSettings({ env: { PGSTEADYTEXT_DOWNLOAD: 'off' } }).download).toBe(false);
    expect(loadSettings({ env: {}, configFile: file({ download: false }) }).download).toBe(false);
  });
});
