// One queue for a pool: clients the native hub carries (no session state to replay) and clients JS serves (a
// SET in each transaction) wait for server connections in one FIFO order, as pgBouncer's clients do, so that
// neither kind starves the other under contention.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadNativeRelay } from '../../proxy/relay.js';
import { connect, handoffs, pooledProxy, type Pooled } from './hub-helpers.js';

describe.runIf(loadNativeRelay().relay?.hubCreate != null)('clients in the hub and clients in JS share one queue', () => {
  let p: Pooled;
  beforeAll(async () => {
    p = await pooledProxy({ pool_mode: 'transaction', default_pool_size: 2, max_client_conn: 100 });
  });
  afterAll(async () => {
    await p.close();
  });

  test('while clients that SET in every transaction keep the pool busy, the hub\'s clients are served in turn', async () => {
    const plain = await Promise.all(Array.from({ length: 6 }, () => connect(p.url())));
    const setters = await Promise.all(Array.from({ length: 6 }, () => connect(p.url())));
    for (const c of [...plain, ...setters]) await c.query('select 1');
    const done = { plain: 0, setters: 0 };
    let stop = false;
    const loops = [
      ...plain.map(async (c, i) => {
        // A transaction long enough that the pool is always contended.
        while (!stop) {
          const r = await c.query('select $1::int as v, pg_sleep(0.002)', [i]);
          expect(r.rows[0].v).toBe(i);
          done.plain++;
        }
      }),
      ...setters.map(async (c, i) => {
        for (let k = 0; !stop; k++) {
          await c.query(`set application_name = 'setter-${i}-${k}'`);
          const r = await c.query("select current_setting('application_name') as a, pg_sleep(0.002)");
          expect(r.rows[0].a).toBe(`setter-${i}-${k}`);
          done.setters++;
        }
      }),
    ];
    const before = handoffs(p);
    // Until the setters ran 600 transactions (two each per loop turn).
    while (done.setters < 300) await new Promise((r) => setTimeout(r, 50));
    stop = true;
    await Promise.all(loops);
    expect(handoffs(p)).toBeGreaterThan(before);
    // FIFO: as many turns each, give or take; starved, the hub's clients would have next to none.
    expect(done.plain).toBeGreaterThan(done.setters / 4);
    await Promise.all([...plain, ...setters].map((c) => c.end()));
  }, 120_000);
});
