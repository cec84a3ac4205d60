// What `npm test` provisions on a machine (tests/setup/provision.ts), case by case: the decision, not apt or
// Docker themselves. The last test checks that this machine is seen as it is.
import { existsSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { provisioning, thisMachine, type Machine } from './provision.js';

const bare: Machine = { forceContainer: false, postgres: false, pgvector: false, debianRoot: false, containerAnswers: async () => false };
let asked = 0;
const answers = (yes: boolean) => async () => {
  asked++;
  return yes;
};

describe('provisioning', () => {
  test('a database URL given is used as it is, whatever else the machine has', async () => {
    expect(await provisioning({ ...bare, postgres: true, pgvector: true, externalUrl: 'postgres://u@db:5432/x' })).toEqual({ kind: 'external', url: 'postgres://u@db:5432/x' });
  });

  test('PostgreSQL with pgvector installed: a local cluster, without asking for a container engine', async () => {
    asked = 0;
    expect(await provisioning({ ...bare, postgres: true, pgvector: true, containerAnswers: answers(true) })).toEqual({ kind: 'local' });
    expect(asked).toBe(0);
  });

  test('PGSTEADYTEXT_TEST_DOCKER=1: the container even where PostgreSQL is installed', async () => {
    expect(await provisioning({ ...bare, postgres: true, pgvector: true, forceContainer: true })).toEqual({ kind: 'container' });
  });

  test.each([
    ['no PostgreSQL', { postgres: false, pgvector: false }],
    ['PostgreSQL without pgvector', { postgres: true, pgvector: false }],
  ])('%s on Debian as root: the setup script, before any container', async (_, has) => {
    asked = 0;
    expect(await provisioning({ ...bare, ...has, debianRoot: true, containerAnswers: answers(true) })).toEqual({ kind: 'setup-script' });
    expect(asked).toBe(0);
  });

  test('elsewhere, a container where an engine answers', async () => {
    expect(await provisioning({ ...bare, containerAnswers: answers(true) })).toEqual({ kind: 'container' });
  });

  test('nothing to use: a message that names what is missing and every way out', async () => {
    const none = await provisioning({ ...bare, postgres: true });
    expect(none.kind).toBe('none');
    const message = (none as { message: string }).message;
    expect(message).toMatch(/pgvector for the PostgreSQL server binaries not found/);
    for (const way of ['npm run setup:machine', 'PG_BIN', 'PGSTEADYTEXT_TEST_DATABASE_URL', 'Docker']) expect(message).toContain(way);
    expect(((await provisioning(bare)) as { message: string }).message).toMatch(/PostgreSQL server binaries not found/);
  });

  test('this machine as it is: the server binaries and pgvector the run uses are seen', () => {
    const pgBin = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';
    const m = thisMachine(pgBin, async () => false);
    expect(m.postgres).toBe(existsSync(`${pgBin}/postgres`));
    // This run has a database (the global setup started or found one); where it is local, pgvector is seen.
    if (m.postgres && !m.externalUrl && !m.forceContainer) expect(m.pgvector).toBe(true);
  });
});
