// The seed document (tests/api/seed-suite.ts) through the proxy: with the dblink transport and the daemon
// endpoint, then with no dblink and no daemon endpoint, where every call the proxy cannot see (the PL/pgSQL
// functions, the trigger, the views) asks in-band, in READ COMMITTED, REPEATABLE READ and SERIALIZABLE (the
// session's default_transaction_isolation, as an application would set it). One file: the document creates
// the cluster-wide role ai_user, so the variants run one after the other. Last, a stack stopped during its
// first-use install.
import { describe, expect, test } from 'vitest';
import { inbandStack, startStack, type Stack } from './helpers.js';
import { seedSuite } from './seed-suite.js';

describe('dblink and the daemon endpoint', () => {
  // The document itself sets daemon_host/daemon_port to the defaults, so the daemon listens there.
  seedSuite({ start: () => startStack('st_seed', { daemonPort: 5557 }) });
});

async function seedInbandStack(): Promise<Stack> {
  const { s, direct } = await inbandStack('st_seed_ib');
  await direct.end();
  return s;
}

// Autocommit through the simple protocol (psql) in each level; then each statement inside its own transaction
// block, through the simple and the extended protocol, across the levels.
const variants = [
  { level: 'read committed' }, { level: 'repeatable read' }, { level: 'serializable' },
  { level: 'read committed', extended: true },
  { level: 'repeatable read', inBlock: true },
  { level: 'serializable', inBlock: true, extended: true },
];
for (const { level, extended = false, inBlock = false } of variants) {
  const how = [inBlock ? 'in transaction blocks' : '', extended ? 'extended protocol' : ''].filter(Boolean).join(', ');
  describe(`in-band, ${level}${how ? `, ${how}` : ''}`, () => {
    seedSuite({
      start: seedInbandStack,
      url: (s) => {
        const u = new URL(s.url());
        u.searchParams.set('options', `-c default_transaction_isolation=${level.replace(' ', '\\ ')}`);
        return u.toString();
      },
      extended,
      inBlock,
    });
  });
}

// When a block fails early, the stack stops while the first-use install its session began is still
// running; dropping the database under that install used to surface as unhandled 57P01 errors.
test('a stack stopped while its first-use install runs stops without unhandled errors', async () => {
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  const sockets = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
  const open = sockets();
  process.on('uncaughtException', onUncaught);
  try {
    for (let i = 0; i < 2; i++) {
      const early = await startStack('st_seed_early');
      await early.connect();
      await early.stop();
    }
    // A late 'error' comes from a connection of the stopped stacks: once every one of them has closed (and
    // the events of their closing have run), none can come any more.
    await expect.poll(sockets, { timeout: 10_000, message: 'the stopped stacks\' connections closed' }).toBeLessThanOrEqual(open);
    await new Promise((r) => setImmediate(r));
  } finally {
    process.off('uncaughtException', onUncaught);
  }
  expect(uncaught).toEqual([]);
}, 60_000);
