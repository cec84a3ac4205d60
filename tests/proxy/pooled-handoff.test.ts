// The native hub (pool-hub.ts, relay.c): under contention, transaction pooling hands server connections from
// client to client in C. Real clients through the real proxy against the real cluster: results right with many
// clients on a small pool, hand-offs counted by the hub, nothing leaking between clients, clients the hub cannot
// carry still served, and the pool's timers, console commands and failures with clients waiting in C.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { loadNativeRelay } from '../../proxy/relay.js';
import { eventually } from './helpers.js';
import { connect, handoffs, pool, pooledProxy, type Pooled } from './hub-helpers.js';

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('handing server connections between clients in C', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 2, max_client_conn: 100 });
  });
  afterAll(async () => {
    await p.close();
  });

  test('twenty clients on a pool of two: every answer right, the servers handed over in C', async () => {
    const clients = await Promise.all(Array.from({ length: 20 }, () => connect(p.url())));
    const run = async (c: pg.Client, k: number) => {
      for (let i = 0; i < 40; i++) {
        const v = k * 1000 + i;
        const r = i % 2 === 0 ? await c.query(`select ${v} as v`) : await c.query('select $1::int as v', [v]);
        expect(r.rows[0].v).toBe(v);
      }
    };
    await Promise.all(clients.map((c, k) => run(c, k)));
    const h = handoffs(p);
    expect(h).toBeGreaterThan(0);
    expect(pool(p).size).toBeLessThanOrEqual(2);
    await Promise.all(clients.map((c) => c.end()));
  });

  test('a client that SETs, prepares named statements or holds an advisory lock stays right; nothing leaks to the others', async () => {
    const others = await Promise.all(Array.from({ length: 6 }, () => connect(p.url())));
    const setter = await connect(p.url());
    const named = await connect(p.url());
    const locker = await connect(p.url());
    await Promise.all(others.map((c) => c.query('select 1')));
    await setter.query(`set application_name = 'handoff-setter'`);
    await setter.query(`set search_path = handoff_nowhere, public`);
    expect((await locker.query('select pg_advisory_lock(4242) as l')).rows[0].l).toBe('');
    const before = handoffs(p);
    const work = async (c: pg.Client, i: number) => {
      const r = await c.query(`select current_setting('application_name') as app, current_setting('search_path') as sp, $1::int as v`, [i]);
      expect(r.rows[0].app).not.toBe('handoff-setter');
      expect(r.rows[0].sp).not.toContain('handoff_nowhere');
      expect(r.rows[0].v).toBe(i);
    };
    const setterWork = async () => {
      for (let i = 0; i < 20; i++) {
        const r = await setter.query(`select current_setting('application_name') as app, current_setting('search_path') as sp`);
        expect(r.rows[0].app).toBe('handoff-setter');
        expect(r.rows[0].sp).toBe('handoff_nowhere, public');
      }
    };
    const namedWork = async () => {
      for (let i = 0; i < 20; i++) {
        const r = await named.query({ name: 'handoff_named', text: 'select $1::int + 1 as v', values: [i] });
        expect(r.rows[0].v).toBe(i + 1);
      }
    };
    const lockerWork = async () => {
      for (let i = 0; i < 10; i++) {
        const r = await locker.query(`select count(*)::int as n from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()`);
        expect(r.rows[0].n).toBe(1); // pinned: always on the connection that holds the lock
      }
    };
    await Promise.all([...others.map(async (c) => { for (let i = 0; i < 30; i++) await work(c, i); }), setterWork(), namedWork(), lockerWork()]);
    expect(handoffs(p)).toBeGreaterThan(before);
    // Other clients never see the named statement (it was never theirs).
    await expect(others[0].query({ text: 'execute handoff_named(1)' })).rejects.toThrow(/does not exist/);
    await locker.query('select pg_advisory_unlock(4242)');
    await Promise.all([...others, setter, named, locker].map((c) => c.end()));
  });

  test('a client that disconnects or sends garbage while in the hub leaves it; the others go on', async () => {
    const clients = await Promise.all(Array.from({ length: 5 }, () => connect(p.url())));
    const quitter = await connect(p.url());
    const rude = await connect(p.url());
    await Promise.all([...clients, quitter, rude].map((c) => c.query('select 1')));
    await eventually(() => (pool(p).hub?.sync().members ?? 0) >= 7, 5_000, 'clients in the hub');
    const members = pool(p).hub!.sync().members;
    await quitter.end();
    await eventually(() => pool(p).hub!.sync().members === members - 1, 5_000, 'the quitter gone from the hub');
    // A Query whose length is impossible: JS refuses it, not C.
    const rudeGone = new Promise<void>((resolve) => rude.on('end', () => resolve()));
    (rude as unknown as { connection: { stream: { write(b: Buffer): void } } }).connection.stream.write(Buffer.from([0x51, 0, 0, 0, 2]));
    await rudeGone;
    await eventually(() => pool(p).hub!.sync().members === members - 2, 5_000, 'the rude client gone from the hub');
    await Promise.all(clients.map(async (c, k) => expect((await c.query('select $1::int as v', [k])).rows[0].v).toBe(k)));
    expect(pool(p).size).toBeLessThanOrEqual(2);
    await Promise.all(clients.map((c) => c.end()));
  });

  test('a server terminated while idle in the hub is replaced; its client stays connected', async () => {
    const clients = await Promise.all(Array.from({ length: 4 }, () => connect(p.url())));
    await Promise.all(clients.map((c) => c.query('select 1')));
    const killer = await connect(p.url());
    const pids = (await Promise.all(clients.map(async (c) => (await c.query('select pg_backend_pid() as pid')).rows[0].pid as number)));
    const mine = (await killer.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    const victims = [...new Set(pids)].filter((x) => x !== mine);
    for (const v of victims) await killer.query('select pg_terminate_backend($1)', [v]);
    // pg_terminate_backend only signals: idle means gone before the clients' next queries, not still exiting.
    await eventually(
      async () => (await killer.query('select count(*)::int as n from pg_stat_activity where pid = any($1)', [victims])).rows[0].n === 0,
      10_000,
      'the terminated backends gone',
    );
    await Promise.all(clients.map(async (c, k) => {
      for (let i = 0; i < 5; i++) expect((await c.query('select $1::int as v', [k * 10 + i])).rows[0].v).toBe(k * 10 + i);
    }));
    await Promise.all([...clients, killer].map((c) => c.end()));
  });
});

/** A pool of one: `holder` opens a transaction (it holds the only server, in C), the others then queue in C. */
async function queueBehind(p: Pooled, n: number): Promise<{ holder: pg.Client; queued: pg.Client[]; pending: Promise<unknown>[] }> {
  const holder = await connect(p.url());
  const queued = await Promise.all(Array.from({ length: n }, () => connect(p.url())));
  for (const c of [holder, ...queued]) await c.query('select 1');
  await holder.query('begin');
  await holder.query('select 1');
  const pending = queued.map((c, k) => c.query('select $1::int as v', [k]));
  for (const q of pending) q.catch(() => {});
  await eventually(() => (pool(p).hub?.sync().queued ?? 0) === n, 5_000, 'clients queued in C');
  return { holder, queued, pending };
}

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('clients waiting in C: the console', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, max_client_conn: 100 });
  });
  afterAll(async () => {
    await p.close();
  });

  test('SHOW POOLS and SHOW CLIENTS count clients queued in C as waiting; the holder as active', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const { holder, queued, pending } = await queueBehind(p, 3);
    const row = (await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres');
    expect(row.cl_waiting).toBe(3);
    expect(row.sv_active).toBe(1);
    expect(row.sv_idle).toBe(0);
    const states = (await admin.query('SHOW CLIENTS')).rows.filter((r) => r.database === 'postgres').map((r) => r.state);
    expect(states.filter((s) => s === 'waiting')).toHaveLength(3);
    const servers = (await admin.query('SHOW SERVERS')).rows.filter((r) => r.database === 'postgres');
    expect(servers.map((r) => r.state)).toEqual(['active']);
    expect(servers[0].link).not.toBe('');
    await holder.query('commit');
    expect((await Promise.all(pending)).map((r) => (r as pg.QueryResult).rows[0].v)).toEqual([0, 1, 2]);
    await Promise.all([holder, ...queued, admin].map((c) => c.end()));
  });

  test('PAUSE waits for the transaction in C, keeps queued clients waiting; RESUME serves them', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const { holder, queued, pending } = await queueBehind(p, 2);
    const paused = admin.query('PAUSE postgres');
    await holder.query('commit');
    await paused;
    expect(pool(p).hub!.sync().servers).toBe(0);
    await admin.query('RESUME postgres');
    expect((await Promise.all(pending)).map((r) => (r as pg.QueryResult).rows[0].v)).toEqual([0, 1]);
    await Promise.all([holder, ...queued, admin].map((c) => c.end()));
  }, 20_000);

  test('RECONNECT closes the hub\'s server once its transaction ends; clients get a new one', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const { holder, queued, pending } = await queueBehind(p, 2);
    const pid = (await holder.query('select pg_backend_pid() as pid')).rows[0].pid;
    await admin.query('RECONNECT postgres');
    await holder.query('commit');
    await Promise.all(pending);
    await eventually(async () => (await queued[0].query('select pg_backend_pid() as pid')).rows[0].pid !== pid, 5_000, 'a new server');
    await Promise.all([holder, ...queued, admin].map((c) => c.end()));
  });

  test('a client that leaves while queued in C goes; SHOW STATS counts the transactions the hub ran', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const xacts = async () => Number((await admin.query('SHOW STATS')).rows.find((r) => r.database === 'postgres').total_xact_count);
    const before = await xacts();
    const { holder, queued, pending } = await queueBehind(p, 3);
    const members = pool(p).hub!.sync().members;
    // Its socket ends under the queued request: C sees the end and gives it to JS, no server taken.
    (queued[0] as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    await eventually(() => pool(p).hub!.sync().members === members - 1, 5_000, 'the leaver gone from the hub');
    await holder.query('commit');
    expect((await Promise.all(pending.slice(1))).map((r) => (r as pg.QueryResult).rows[0].v)).toEqual([1, 2]);
    for (let i = 0; i < 10; i++) await queued[1 + (i % 2)].query('select 1');
    // 4 warm-ups, the holder's block, 3 queued (the leaver's read before it left, as JS would have), 10: one
    // transaction each, wherever it ran.
    expect((await xacts()) - before).toBe(4 + 1 + 3 + 10);
    await Promise.all([holder, queued[1], queued[2], admin].map((c) => c.end()));
  });

  test('KILL ends the clients queued in C and the one holding the server', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const { holder, pending } = await queueBehind(p, 2);
    const holderGone = new Promise<void>((resolve) => holder.on('end', () => resolve()));
    await admin.query('KILL postgres');
    for (const q of pending) await expect(q).rejects.toThrow();
    await holderGone;
    expect(pool(p).hub!.sync().members).toBe(0);
    await admin.query('RESUME postgres');
    const after = await connect(p.url());
    expect((await after.query('select 6 as v')).rows[0].v).toBe(6);
    await Promise.all([after, admin].map((c) => c.end()));
  });
});

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('clients waiting in C: query_wait_timeout', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, max_client_conn: 100, query_wait_timeout: 1 });
  });
  afterAll(async () => {
    await p.close();
  });

  test('query_wait_timeout ends clients queued in C too', async () => {
    const { holder, queued, pending } = await queueBehind(p, 2);
    for (const q of pending) await expect(q).rejects.toThrow(/query_wait_timeout/);
    await holder.query('commit');
    expect(pool(p).hub!.sync().queued).toBe(0);
    const after = await connect(p.url());
    expect((await after.query('select 5 as v')).rows[0].v).toBe(5);
    await Promise.all([holder, after, ...queued].map((c) => c.end()));
  });
});

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('clients waiting in C: reserve_pool', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 1, reserve_pool_size: 1, reserve_pool_timeout: 0.5, max_client_conn: 100 });
  });
  afterAll(async () => {
    await p.close();
  });

  test('once the oldest client queued in C has waited reserve_pool_timeout, a reserve connection serves the queue', async () => {
    const admin = await connect(p.url('pgbouncer'));
    const serverRows = async () => (await admin.query('SHOW SERVERS')).rows.filter((r) => r.database === 'postgres');
    const { holder, queued, pending } = await queueBehind(p, 2);
    expect(await serverRows()).toHaveLength(1);
    // The holder keeps its transaction open: only the reserve can answer them.
    expect((await Promise.all(pending)).map((r) => (r as pg.QueryResult).rows[0].v)).toEqual([0, 1]);
    expect(await serverRows()).toHaveLength(2);
    expect((await admin.query('SHOW POOLS')).rows.find((r) => r.database === 'postgres').cl_waiting).toBe(0);
    expect((await holder.query('select 7 as v')).rows[0].v).toBe(7);
    await holder.query('commit');
    await Promise.all([holder, ...queued, admin].map((c) => c.end()));
  });
});
