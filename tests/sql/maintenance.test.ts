// The proxy keeps the tables it and the SQL functions write in bounds (sql/maintenance.ts): expired cache rows
// (past cache_ttl_seconds), log entries past their retention and mailbox rows nobody took go, on a schedule,
// without waiting on rows an open transaction holds; everything younger stays.
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Engine } from '../../inference/engine.js';
import { DatabaseRegistry } from '../../sql/databases.js';
import { silent } from '../api/helpers.js';
import { freshDatabase, type TestDatabase } from './helpers.js';

let db: TestDatabase;
let reg: DatabaseRegistry;

beforeAll(async () => {
  db = await freshDatabase('st_maintain');
  // No inference: the registry installs the objects and maintains them. A short period, so the test sees it run.
  reg = new DatabaseRegistry({ serviceUrl: db.url, autoInstall: true, engine: {} as Engine, logger: silent, maintenanceEveryMs: 200 });
  await reg.get(db.name).ready();
});

afterAll(async () => {
  await reg?.close();
  await db?.drop();
});

const count = async (sql: string) => Number((await db.query<{ n: number }>(sql))[0].n);

it('expired cache rows, old log entries and untaken mailbox rows go by themselves; younger ones stay', async () => {
  await db.query(`SELECT steadytext_config_set('cache_ttl_seconds', '3600')`);
  await db.query(`
    INSERT INTO steadytext_cache (cache_key, operation, model_identity, prompt, response, created_at)
    VALUES ('expired', 'generate', 'm', 'p', 'r', now() - interval '2 hours'),
           ('fresh', 'generate', 'm', 'p', 'r', now() - interval '10 minutes');
    INSERT INTO steadytext_logs ("timestamp", level, event) VALUES (now() - interval '8 days', 'error', 'old'), (now(), 'error', 'new');
    INSERT INTO steadytext_debug_logs ("timestamp", level, event) VALUES (now() - interval '2 days', 'debug', 'old'), (now(), 'debug', 'new');
    INSERT INTO steadytext_mailbox (backend_pid, topic, answer, created_at) VALUES (1, 'old', 'a', now() - interval '20 minutes'), (1, 'new', 'a', now());`);
  await expect.poll(() => count(`SELECT count(*) AS n FROM steadytext_cache WHERE cache_key = 'expired'`), { timeout: 15_000, interval: 100 }).toBe(0);
  await expect.poll(() => count(`SELECT count(*) AS n FROM steadytext_mailbox WHERE topic = 'old'`), { timeout: 15_000, interval: 100 }).toBe(0);
  expect(await count(`SELECT count(*) AS n FROM steadytext_cache WHERE cache_key = 'fresh'`)).toBe(1);
  expect((await db.query<{ event: string }>('SELECT event FROM steadytext_logs ORDER BY id')).map((r) => r.event)).toEqual(['new']);
  expect((await db.query<{ event: string }>('SELECT event FROM steadytext_debug_logs ORDER BY id')).map((r) => r.event)).toEqual(['new']);
  expect(await count(`SELECT count(*) AS n FROM steadytext_mailbox WHERE topic = 'new'`)).toBe(1);
});

it('never waits on a row an open transaction holds: it is left for a later round', async () => {
  // A database of its own, whose schedule does not run during the test: maintain() is called here.
  const other = await freshDatabase('st_maintain_held');
  const quiet = new DatabaseRegistry({ serviceUrl: other.url, autoInstall: true, engine: {} as Engine, logger: silent, maintenanceEveryMs: 3_600_000 });
  try {
    await quiet.get(other.name).ready();
    await held(other, quiet);
  } finally {
    await quiet.close();
    await other.drop();
  }
});

async function held(db: TestDatabase, reg: DatabaseRegistry): Promise<void> {
  const count = async (sql: string) => Number((await db.query<{ n: number }>(sql))[0].n);
  await db.query(`INSERT INTO steadytext_logs ("timestamp", level, event) VALUES (now() - interval '9 days', 'error', 'held'), (now() - interval '9 days', 'error', 'free')`);
  const holder = await db.connect();
  try {
    await holder.query('BEGIN');
    await holder.query(`SELECT 1 FROM steadytext_logs WHERE event = 'held' FOR UPDATE`);
    await reg.get(db.name).maintain(); // would wait for the holder's COMMIT, forever, without SKIP LOCKED
    expect((await db.query<{ event: string }>(`SELECT event FROM steadytext_logs WHERE event IN ('held', 'free')`)).map((r) => r.event)).toEqual(['held']);
    await holder.query('COMMIT');
  } finally {
    await holder.end();
  }
  await reg.get(db.name).maintain();
  expect(await count(`SELECT count(*) AS n FROM steadytext_logs WHERE event = 'held'`)).toBe(0);
}
