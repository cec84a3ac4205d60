// The container's health check (scripts/healthcheck.mjs), run as the image runs it: healthy through a real proxy
// to the test cluster, unhealthy (exit 1, within its own 10 s) where nothing listens.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startStack, type Stack } from '../api/helpers.js';
import { freePort } from '../setup/cluster.js';

const SCRIPT = fileURLToPath(new URL('../../scripts/healthcheck.mjs', import.meta.url));
let s: Stack;

beforeAll(async () => {
  s = await startStack('st_health');
}, 120_000);

afterAll(async () => {
  await s?.stop();
});

/** Runs the script as the image does; the proxy lives in this process, so the wait must not block it. */
function check(listenPort: number, upstream: string): Promise<{ status: number | null; stderr: string }> {
  const child = spawn(process.execPath, [SCRIPT], {
    env: { ...process.env, PGSTEADYTEXT_LISTEN: `0.0.0.0:${listenPort}`, PGSTEADYTEXT_UPSTREAM: upstream },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve) => child.once('close', (status) => resolve({ status, stderr })));
}

test('healthy: SELECT 1 through the proxy, as the upstream URL’s user', async () => {
  const upstream = new URL(s.directUrl); // the superuser and database the stack's clients use
  const r = await check(s.proxy.address.port, upstream.toString());
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
});

test('unhealthy where nothing listens, and says why', async () => {
  const r = await check(await freePort(), new URL(s.directUrl).toString());
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(/^unhealthy: .*ECONNREFUSED/);
});
