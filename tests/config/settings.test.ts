import { describe, expect, test } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadSettings, SettingsError, settingsMarkdown, SPECS } from '../../config/settings.js';
import { parseFlags } from '../../config/flags.js';

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

  test('the reference lists every option', () => {
    const md = settingsMarkdown();
    for (const s of Object.values(SPECS)) expect(md).toContain(`\`${s.env}\``);
  });
});
