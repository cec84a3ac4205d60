// The native hub (pool-hub.ts, relay.c) with named prepared statements: clients that prepared statements join the
// hub, which binds and describes them under their server-side names on whichever server a client holds, when that
// server has them; a statement the server lacks sends the client to JS, which prepares it there. Real node-postgres
// clients (named queries) through the real proxy against the real cluster.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { loadNativeRelay } from '../../proxy/relay.js';
import { adminQuery, eventually, testDb } from './helpers.js';
import { connect, handoffs, pool, pooledProxy, type Pooled } from './hub-helpers.js';

const exits = (p: Pooled) => p.proxy.stats().totals.relayExits;

/** The most server connections the pool had while `work` ran (sampled every few milliseconds). */
async function maxServers<T>(p: Pooled, work: Promise<T>): Promise<{ result: T; most: number }> {
  let most = pool(p).size;
  const timer = setInterval(() => (most = Math.max(most, pool(p).size)), 5);
  try {
    const result = await work;
    return { result, most: Math.max(most, pool(p).size) };
  } finally {
    clearInterval(timer);
  }
}

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('named prepared statements in the hub', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 2, max_client_conn: 100, max_prepared_statements: 100 });
    await adminQuery('drop table if exists handoff_named_t');
    await adminQuery('create table handoff_named_t (a int)');
    await adminQuery('insert into handoff_named_t select generate_series(1, 20)');
    await adminQuery(`grant all on handoff_named_t to ${testDb().roles.scram.user}`);
  });
  afterAll(async () => {
    await p.close();
    await adminQuery('drop table if exists handoff_named_t');
  });

  test('twenty clients with named statements on a pool of two: answers right, statements apart, servers handed over in C', async () => {
    const clients = await Promise.all(Array.from({ length: 20 }, () => connect(p.url())));
    const beforeHandoffs = handoffs(p);
    const beforeExits = exits(p);
    const run = async (c: pg.Client, k: number) => {
      for (let i = 0; i < 40; i++) {
        const v = k * 1000 + i;
        // The same client name, another text on each third of the clients: never one client's statement for another's.
        const own = await c.query({ name: 'mine', text: `select $1::int + ${k % 3} as v, ${k % 3} as variant`, values: [v] });
        expect(own.rows[0]).toEqual({ v: v + (k % 3), variant: k % 3 });
        if (i % 4 === 0) {
          await c.query({ name: 'open', text: 'begin' });
          const a = await c.query({ name: 'shared', text: 'select $1::text as t', values: [`c${k}-${i}`] });
          const b = await c.query({ name: 'mine', text: `select $1::int + ${k % 3} as v, ${k % 3} as variant`, values: [v] });
          await c.query({ name: 'close', text: 'commit' });
          expect(a.rows[0].t).toBe(`c${k}-${i}`);
          expect(b.rows[0].v).toBe(v + (k % 3));
        } else {
          const a = await c.query({ name: 'shared', text: 'select $1::text as t', values: [`c${k}-${i}`] });
          expect(a.rows[0].t).toBe(`c${k}-${i}`);
        }
      }
    };
    const { most } = await maxServers(p, Promise.all(clients.map((c, k) => run(c, k))));
    expect(most).toBeLessThanOrEqual(2);
    // 20 clients × 40 rounds × 2 or 4 transactions (2000): many handed over in C, few through JS (the first Parses of
    // each client, a server lacking a statement until JS prepared it there).
    const h = handoffs(p) - beforeHandoffs;
    const e = exits(p) - beforeExits;
    expect(h).toBeGreaterThan(400);
    expect(e).toBeLessThan(h / 4);
    await Promise.all(clients.map((c) => c.end()));
  });

  test('a statement the server held lacks: the client goes to JS, which prepares it there; the answer is right', async () => {
    const clients = await Promise.all(Array.from({ length: 6 }, () => connect(p.url())));
    const late = await connect(p.url());
    await Promise.all(clients.map((c) => c.query({ name: 'warm', text: 'select 1 as one' })));
    const pids = new Set<number>();
    const before = handoffs(p);
    const busy = async (c: pg.Client) => {
      for (let i = 0; i < 60; i++) expect((await c.query({ name: 'warm', text: 'select 1 as one' })).rows[0].one).toBe(1);
    };
    // A text no server has yet: prepared on whichever server `late` holds at each use, until both have it.
    const lateWork = async () => {
      for (let i = 0; i < 60; i++) {
        const r = await late.query({ name: 'late', text: 'select $1::int * 2 as v, pg_backend_pid() as pid', values: [i] });
        expect(r.rows[0].v).toBe(i * 2);
        pids.add(r.rows[0].pid);
      }
    };
    const { most } = await maxServers(p, Promise.all([...clients.map(busy), lateWork()]));
    expect(most).toBeLessThanOrEqual(2);
    expect(pids.size).toBe(2);
    expect(handoffs(p)).toBeGreaterThan(before);
    await Promise.all([...clients, late].map((c) => c.end()));
  });

  test('DEALLOCATE ALL and DISCARD ALL by one client in the hub: its statements go, the others\' are prepared again', async () => {
    const others = await Promise.all(Array.from({ length: 6 }, () => connect(p.url())));
    const dropper = await connect(p.url());
    const work = async (c: pg.Client, k: number, n: number) => {
      for (let i = 0; i < n; i++) {
        const r = await c.query({ name: 'kept', text: `select $1::int + ${k} as v`, values: [i] });
        expect(r.rows[0].v).toBe(i + k);
      }
    };
    await Promise.all(others.map((c, k) => work(c, k, 10)));
    await work(dropper, 100, 5);
    // One more transaction each until all are in (one a relay handed back at once skips a join: pooled-session.ts lendSkip).
    await eventually(async () => {
      await Promise.all([...others.map((c, k) => work(c, k, 1)), work(dropper, 100, 1)]);
      return (pool(p).hub?.sync().members ?? 0) >= 7;
    }, 5_000, 'the clients in the hub');
    const before = handoffs(p);
    // While the others run: each drop empties the server it runs on of every statement (the others' too).
    const drops = async () => {
      for (let i = 0; i < 6; i++) {
        await dropper.query(i % 2 === 0 ? 'deallocate all' : 'discard all');
        // Its old name is gone with them: a new one, prepared again.
        const r = await dropper.query({ name: `again${i}`, text: `select $1::int + 100 as v`, values: [i] });
        expect(r.rows[0].v).toBe(i + 100);
      }
    };
    const { most } = await maxServers(p, Promise.all([...others.map((c, k) => work(c, k, 60)), drops()]));
    expect(most).toBeLessThanOrEqual(2);
    expect(handoffs(p)).toBeGreaterThan(before);
    await Promise.all([...others, dropper].map((c) => c.end()));
  });

  test('a table altered under statements in the hub: each is prepared again and its exchange run again (0A000)', async () => {
    const clients = await Promise.all(Array.from({ length: 8 }, () => connect(p.url())));
    const sel = { name: 'sel', text: 'select * from handoff_named_t where a = $1' };
    const round = async (check: (row: Record<string, unknown>, k: number) => void) =>
      Promise.all(
        clients.map(async (c, k) => {
          for (let i = 0; i < 10; i++) check((await c.query({ ...sel, values: [k + 1] })).rows[0], k);
        }),
      );
    await round((row, k) => expect(row).toEqual({ a: k + 1 }));
    await eventually(async () => {
      await Promise.all(clients.map(async (c, k) => expect((await c.query({ ...sel, values: [k + 1] })).rows[0]).toEqual({ a: k + 1 })));
      return (pool(p).hub?.sync().members ?? 0) >= 8;
    }, 5_000, 'the clients in the hub');
    await adminQuery('alter table handoff_named_t add column b int default 7');
    try {
      await round((row, k) => expect(row).toEqual({ a: k + 1, b: 7 }));
    } finally {
      await adminQuery('alter table handoff_named_t drop column b');
    }
    await Promise.all(clients.map((c) => c.end()));
  });
});

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('named prepared statements in the hub: max_prepared_statements', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 2, max_client_conn: 100, max_prepared_statements: 3 });
  });
  afterAll(async () => {
    await p.close();
  });

  test('more statements than a server keeps: the least recently used are evicted, none is renamed to one its server lost', async () => {
    const clients = await Promise.all(Array.from({ length: 10 }, () => connect(p.url())));
    const before = handoffs(p);
    const run = async (c: pg.Client, k: number) => {
      for (let i = 0; i < 50; i++) {
        // Five texts shared by every client, a server keeping three: each server evicts as clients take turns on it.
        const j = (i * 7 + k) % 5;
        const r = await c.query({ name: `s${j}`, text: `select $1::int * ${j + 1} as v`, values: [i] });
        expect(r.rows[0].v).toBe(i * (j + 1));
      }
    };
    const { most } = await maxServers(p, Promise.all(clients.map((c, k) => run(c, k))));
    expect(most).toBeLessThanOrEqual(2);
    expect(handoffs(p)).toBeGreaterThan(before);
    // No server holds more than max_prepared_statements of the proxy's statements.
    for (const c of clients) {
      const n = await c.query(`select count(*)::int as n from pg_prepared_statements where name like 'PGST\\_%'`);
      expect(n.rows[0].n).toBeLessThanOrEqual(3);
    }
    await Promise.all(clients.map((c) => c.end()));
  });
});

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('named prepared statements in the hub: the server\'s LRU', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, max_client_conn: 100, max_prepared_statements: 2 });
  });
  afterAll(async () => {
    await p.close();
  });

  test('statements bound in C count as recently used when their server leaves the hub: the one evicted is the least used', async () => {
    const a = await connect(p.url());
    const b = await connect(p.url());
    const hot = { name: 'hot', text: 'select $1::int as hot_lru' };
    const texts = async () => (await b.query('select statement from pg_prepared_statements')).rows.map((r) => r.statement as string);
    await a.query({ ...hot, values: [0] }); // the one server: {hot}
    expect((await b.query({ name: 'cold1', text: 'select 1 as cold1_lru' })).rows[0].cold1_lru).toBe(1); // {hot, cold1}
    await eventually(() => (pool(p).hub?.sync().members ?? 0) === 2, 5_000, 'both clients in the hub');
    const before = handoffs(p);
    // Bound in C on the server that has it: hot is now its most recently used, though JS did not see it.
    for (let i = 1; i <= 20; i++) expect((await a.query({ ...hot, values: [i] })).rows[0].hot_lru).toBe(i);
    expect(handoffs(p)).toBeGreaterThan(before);
    // A third statement: the server (back from the hub, its uses read) evicts cold1, not hot.
    expect((await b.query({ name: 'cold2', text: 'select 2 as cold2_lru' })).rows[0].cold2_lru).toBe(2);
    const now = await texts();
    expect(now).toContain('select $1::int as hot_lru');
    expect(now).toContain('select 2 as cold2_lru');
    expect(now).not.toContain('select 1 as cold1_lru');
    await Promise.all([a, b].map((c) => c.end()));
  });
});
