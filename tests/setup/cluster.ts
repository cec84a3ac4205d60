// A throwaway PostgreSQL cluster for tests and benchmarks: initdb into a temp dir, a free port,
// pgvector and dblink available, and one role per authentication method the proxy must relay.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync, appendFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

export interface Cluster {
  host: string;
  port: number;
  /** Superuser URL (SCRAM password auth over TCP). */
  adminUrl: string;
  /** Roles, one per auth method, each with its own password. */
  roles: { scram: Role; md5: Role; trust: Role };
  stop(): Promise<void>;
  /** pg_ctl restart -m fast: every backend ends, the server comes back on the same port. */
  restart?(): Promise<void>;
}
export interface Role { user: string; password: string; url: string }

/** The roles every test cluster has, one per authentication method (and the superuser postgres/postgres). */
export const ROLES = {
  scram: { user: 'scram_user', password: 'scram pass' },
  md5: { user: 'md5_user', password: 'md5-pass' },
  trust: { user: 'trust_user', password: '' },
};

/** Creates ROLES (md5_user's password stored as md5, for its md5 pg_hba line). */
export const ROLE_SQL = [
  `CREATE ROLE scram_user LOGIN PASSWORD 'scram pass'`,
  `SET password_encryption = 'md5'`,
  `CREATE ROLE md5_user LOGIN PASSWORD 'md5-pass'`,
  `RESET password_encryption`,
  `CREATE ROLE trust_user LOGIN`,
];
/**
 * Run in template1 and postgres, so every database the suites create has them. The public schema keeps
 * PostgreSQL 15's defaults (only the database owner creates there): the proxy refuses to install into a
 * schema where other roles can create objects.
 */
export const PER_DATABASE_SQL = 'CREATE EXTENSION IF NOT EXISTS vector; CREATE EXTENSION IF NOT EXISTS dblink';
/** Server settings: room for the 200-client tests, no durability (throwaway data). */
export const SETTINGS: [string, string][] = [
  ['max_connections', '400'], ['fsync', 'off'], ['synchronous_commit', 'off'], ['full_page_writes', 'off'],
  ['shared_buffers', '128MB'], ['log_min_messages', 'warning'],
];
export const hbaLines = (address: string) => [
  'local all all trust',
  `host all trust_user ${address} trust`,
  `host all md5_user ${address} md5`,
  `host all all ${address} scram-sha-256`,
];

/** Host, port and the URLs of the superuser and of each role. */
export function clusterAt(host: string, port: number): Omit<Cluster, 'stop'> {
  const url = (u: string, p: string) => `postgres://${encodeURIComponent(u)}${p ? ':' + encodeURIComponent(p) : ''}@${host}:${port}/postgres`;
  const role = (r: { user: string; password: string }): Role => ({ ...r, url: url(r.user, r.password) });
  return { host, port, adminUrl: url('postgres', 'postgres'), roles: { scram: role(ROLES.scram), md5: role(ROLES.md5), trust: role(ROLES.trust) } };
}

const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** PostgreSQL refuses to run as root: run its binaries as the `postgres` OS user then. */
function asPgUser(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const root = userInfo().uid === 0;
  const [file, argv] = root ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args];
  const res = spawnSync(file, argv, { encoding: 'utf8', cwd: opts.cwd ?? '/' });
  if (res.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${res.status}): ${res.stderr || res.stdout}`);
  }
  return res.stdout;
}

function psql(port: number, sockDir: string, sql: string, db = 'postgres'): void {
  asPgUser(join(PG_BIN, 'psql'), [
    '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', sockDir, '-p', String(port), '-U', 'postgres', '-d', db, '-c', sql,
  ]);
}

export async function startCluster(): Promise<Cluster> {
  if (!existsSync(join(PG_BIN, 'postgres'))) {
    throw new Error(`PostgreSQL server binaries not found in ${PG_BIN}: run "npm run setup:machine" (or set PG_BIN)`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'pgst-cluster-'));
  chmodSync(dir, 0o700);
  if (userInfo().uid === 0) chownSync(dir, pgUid(), pgGid());
  const data = join(dir, 'data');
  const port = await freePort();
  const host = '127.0.0.1';
  const pwFile = join(dir, 'pw');
  writeFileSync(pwFile, 'postgres\n');
  if (userInfo().uid === 0) chownSync(pwFile, pgUid(), pgGid());
  asPgUser(join(PG_BIN, 'initdb'), ['-D', data, '-U', 'postgres', '-A', 'scram-sha-256', '--pwfile', pwFile, '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync']);
  writeFileSync(join(data, 'pg_hba.conf'), hbaLines('127.0.0.1/32').join('\n') + '\n');
  appendFileSync(join(data, 'postgresql.conf'), [
    `port = ${port}`,
    `listen_addresses = '${host}'`,
    `unix_socket_directories = '${dir}'`,
    ...SETTINGS.map(([k, v]) => `${k} = '${v}'`),
    '',
  ].join('\n'));
  asPgUser(join(PG_BIN, 'pg_ctl'), ['-D', data, '-l', join(dir, 'server.log'), '-w', '-t', '60', 'start']);

  psql(port, dir, ROLE_SQL.join('; '));
  for (const db of ['template1', 'postgres']) psql(port, dir, PER_DATABASE_SQL, db);
  let stopped = false;
  return {
    ...clusterAt(host, port),
    async restart() {
      asPgUser(join(PG_BIN, 'pg_ctl'), ['-D', data, '-l', join(dir, 'server.log'), '-m', 'fast', '-w', '-t', '60', 'restart']);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      try { asPgUser(join(PG_BIN, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']); } catch { /* already gone */ }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function pgUid(): number { return Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim()); }
function pgGid(): number { return Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim()); }
