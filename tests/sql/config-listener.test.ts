// The config listener (LISTEN steadytext_config on a service connection of its own) comes back after its
// connection is lost, as on a database restart: a change made by another session afterwards still
// reaches the proxy's copy of the runtime config without any call of its own marking it stale.
import { afterAll, beforeAll, expect, it } from 'vitest';
import pino from 'pino';
import type { Engine } from '../../inference/engine.js';
import { DatabaseRegistry } from '../../sql/databases.js';
import { freshDatabase, type TestDatabase } from './helpers.js';

let db: TestDatabase;
let reg: DatabaseRegistry;
const logs: Record<string, unknown>[] = [];

beforeAll(async () => {
  db = await freshDatabase('st_listener');
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  // No inference here: the registry only installs, listens and reads the config.
  reg = new DatabaseRegistry({ serviceUrl: db.url, autoInstall: true, engine: {} as Engine, logger });
  await reg.get(db.name).ready();
});

afterAll(async () => {
  await reg?.close();
  await db?.drop();
});

const listenerPids = async () => (await db.query<{ pid: number }>(
  `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pg-steadytext config listener'`)).map((r) => r.pid);

/** Polls pred until it holds; fails the test naming what never happened. */
const until = (pred: () => Promise<boolean>, what: string, timeout = 10_000) =>
  expect.poll(pred, { timeout, interval: 50, message: `timeout waiting for ${what}` }).toBe(true);

it('after pg_terminate_backend of the listener it listens again, and sees a change made by another session', async () => {
  const d = reg.get(db.name);
  const [first] = await listenerPids();
  expect(first).toBeGreaterThan(0);
  expect((await d.runtime.get()).defaultMaxTokens).toBe(512);

  await db.query('SELECT pg_terminate_backend($1)', [first]);
  await until(async () => {
    const now = await listenerPids();
    return now.length === 1 && now[0] !== first;
  }, 'a new listener connection');
  expect(logs.some((l) => l.msg === 'config listener lost; config is re-read on every call until it is back')).toBe(true);
  // Listening (LISTEN done) once the loss was logged and a reconnect succeeded.
  await until(async () => logs.some((l) => l.msg === 'config listener back'), 'the listener back');

  // Cached now; only the NOTIFY of the change below can make runtime.get() read the table again.
  expect((await d.runtime.get()).defaultMaxTokens).toBe(512);
  await db.query(`SELECT steadytext_config_set('default_max_tokens', '77')`);
  await until(async () => (await d.runtime.get()).defaultMaxTokens === 77, 'the change to reach the proxy');

  // And again: every loss is followed by a new listener.
  const [second] = await listenerPids();
  await db.query('SELECT pg_terminate_backend($1)', [second]);
  await until(async () => {
    const now = await listenerPids();
    return now.length === 1 && now[0] !== second;
  }, 'a third listener connection');
  await until(async () => logs.filter((l) => l.msg === 'config listener back').length === 2, 'the listener back again');
  await d.runtime.get();
  await db.query(`SELECT steadytext_config_set('default_max_tokens', '78')`);
  await until(async () => (await d.runtime.get()).defaultMaxTokens === 78, 'the second change to reach the proxy');
});
