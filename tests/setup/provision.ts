// What `npm test` runs against, decided from what the machine has, before anything is started: the
// decision alone, so that each case is a unit test (tests/setup/provision.test.ts); global.ts acts on it.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

export interface Machine {
  /** PGSTEADYTEXT_TEST_DATABASE_URL: a superuser URL of a database server to use as it is. */
  externalUrl?: string;
  /** PGSTEADYTEXT_TEST_DOCKER=1: the container even where PostgreSQL is installed. */
  forceContainer: boolean;
  /** The server binaries (postgres, initdb) are in PG_BIN, and pgvector is installed for them. */
  postgres: boolean;
  pgvector: boolean;
  /** Debian (or a derivative) with apt-get, as root: the setup script can install what is missing. */
  debianRoot: boolean;
  /** A container engine answers (asked only when needed: it may be slow). */
  containerAnswers: () => Promise<boolean>;
}

export type Provision =
  | { kind: 'external'; url: string }
  | { kind: 'local' }
  | { kind: 'setup-script' }
  | { kind: 'container' }
  | { kind: 'none'; message: string };

export async function provisioning(m: Machine): Promise<Provision> {
  if (m.externalUrl) return { kind: 'external', url: m.externalUrl };
  if (m.forceContainer) return { kind: 'container' };
  if (m.postgres && m.pgvector) return { kind: 'local' };
  if (m.debianRoot) return { kind: 'setup-script' };
  if (await m.containerAnswers()) return { kind: 'container' };
  const missing = m.postgres ? 'pgvector for the PostgreSQL server binaries' : 'PostgreSQL server binaries';
  return {
    kind: 'none',
    message:
      `no PostgreSQL to test against: ${missing} not found (PG_BIN), this is not Debian as root (which the setup script ` +
      'could provision), and no container engine answers. Either run "npm run setup:machine" (Debian; it uses sudo), ' +
      'install PostgreSQL 15+ with pgvector and set PG_BIN to its bin directory, set PGSTEADYTEXT_TEST_DATABASE_URL ' +
      'to a superuser URL of a server that has pgvector and dblink, or start Docker.',
  };
}

/** This machine, as provisioning() sees it. */
export function thisMachine(pgBin: string, containerAnswers: () => Promise<boolean>): Machine {
  // Debian's layout (/usr/lib/postgresql/15/bin → /usr/share/postgresql/15), else what pg_config says.
  const controls = [join('/usr/share/postgresql', basename(dirname(pgBin)), 'extension', 'vector.control')];
  const share = spawnSync(join(pgBin, 'pg_config'), ['--sharedir'], { encoding: 'utf8' });
  if (share.status === 0) controls.push(join(share.stdout.trim(), 'extension', 'vector.control'));
  return {
    externalUrl: process.env.PGSTEADYTEXT_TEST_DATABASE_URL || undefined,
    forceContainer: process.env.PGSTEADYTEXT_TEST_DOCKER === '1',
    postgres: existsSync(join(pgBin, 'postgres')) && existsSync(join(pgBin, 'initdb')),
    pgvector: controls.some((f) => existsSync(f)),
    debianRoot: process.getuid?.() === 0 && existsSync('/usr/bin/apt-get') && isDebian(),
    containerAnswers,
  };
}

function isDebian(): boolean {
  try {
    const os = readFileSync('/etc/os-release', 'utf8');
    return /^ID(_LIKE)?=.*\bdebian\b/m.test(os);
  } catch {
    return false;
  }
}
