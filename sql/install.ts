// Installs and upgrades the steadytext_* SQL objects: idempotent, safe to run from several proxies at
// once (advisory lock), each pending migration in its own transaction.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { MIGRATIONS, SQL_VERSION, type Migration } from './version.js';

export interface InstallOptions {
  /** Schema that receives the objects (created with USAGE for PUBLIC if missing). Default "public". */
  schema?: string;
  /** Try CREATE EXTENSION dblink when it is missing (needs a superuser; failure is not an error). Default true. */
  dblink?: boolean;
  /** Apply migrations only up to and including this id (upgrade tests, staged roll-outs). */
  target?: string;
}

export interface InstallResult {
  /** Version of the objects now in the database (steadytext_version()). */
  version: string;
  /** True when this call applied at least one migration. */
  installed: boolean;
  /** Ids of the migrations this call applied, in order. */
  migrated: string[];
  /** Whether dblink (needed by the callback path) is available in the database. */
  dblink: boolean;
  schema: string;
}

/** Errors the caller should show as they are: they say what is missing and how to fix it. */
export class SqlInstallError extends Error {
  constructor(message: string, readonly code: 'PGVECTOR_MISSING' | 'MIGRATION_FAILED' | 'BAD_OPTIONS', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SqlInstallError';
  }
}

// One lock per database whatever the schema: CREATE EXTENSION is database-wide.
const LOCK_CLASS = 0x53_54_58_54; // "STXT"
const LOCK_OBJECT = 1;

export function quoteIdent(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

export async function installSql(client: pg.ClientBase, opts: InstallOptions = {}): Promise<InstallResult> {
  const schema = opts.schema ?? 'public';
  if (!schema || schema.includes('\0')) throw new SqlInstallError(`invalid schema name ${JSON.stringify(schema)}`, 'BAD_OPTIONS');
  const wanted = migrationsUpTo(opts.target);
  const sources = await Promise.all(wanted.map(loadMigration));

  await client.query('SELECT pg_advisory_lock($1, $2)', [LOCK_CLASS, LOCK_OBJECT]);
  try {
    const vectorSchema = await ensureVector(client);
    const dblink = await ensureDblink(client, opts.dblink !== false);
    const s = quoteIdent(schema);
    const exists = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
    if (exists.rowCount === 0) {
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
      await client.query(`GRANT USAGE ON SCHEMA ${s} TO PUBLIC`);
    }
    await client.query(`
      CREATE TABLE IF NOT EXISTS ${s}.steadytext_meta (
        migration  text PRIMARY KEY,
        version    text NOT NULL,
        checksum   text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
    await client.query(`REVOKE ALL ON ${s}.steadytext_meta FROM PUBLIC; GRANT SELECT ON ${s}.steadytext_meta TO PUBLIC`);
    const done = new Set((await client.query(`SELECT migration FROM ${s}.steadytext_meta`)).rows.map((r) => r.migration as string));

    const migrated: string[] = [];
    for (const [i, m] of wanted.entries()) {
      if (done.has(m.id)) continue;
      const sql = sources[i].replaceAll('@schema@', s).replaceAll('@vector_schema@', quoteIdent(vectorSchema));
      await client.query('BEGIN');
      try {
        // Unqualified names in the migration land in the install schema; pgvector's type resolves.
        await client.query(`SET LOCAL search_path TO ${s}, ${quoteIdent(vectorSchema)}`);
        await client.query(sql);
        await client.query(`INSERT INTO ${s}.steadytext_meta (migration, version, checksum) VALUES ($1, $2, $3)`,
          [m.id, m.version, sha256(sources[i])]);
        await client.query('COMMIT');
      } catch (e) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw new SqlInstallError(`pg-steadytext: migration ${m.id} failed in schema ${schema}: ${(e as Error).message}`, 'MIGRATION_FAILED', { cause: e });
      }
      migrated.push(m.id);
    }
    const v = await client.query(`SELECT version FROM ${s}.steadytext_meta ORDER BY migration DESC LIMIT 1`);
    return { version: (v.rows[0]?.version as string | undefined) ?? SQL_VERSION, installed: migrated.length > 0, migrated, dblink, schema };
  } finally {
    await client.query('SELECT pg_advisory_unlock($1, $2)', [LOCK_CLASS, LOCK_OBJECT]).catch(() => undefined);
  }
}

function migrationsUpTo(target: string | undefined): readonly Migration[] {
  if (target === undefined) return MIGRATIONS;
  const i = MIGRATIONS.findIndex((m) => m.id === target);
  if (i < 0) throw new SqlInstallError(`unknown migration ${target}; known: ${MIGRATIONS.map((m) => m.id).join(', ')}`, 'BAD_OPTIONS');
  return MIGRATIONS.slice(0, i + 1);
}

const sourceCache = new Map<string, Promise<string>>();

// From sources (sql/install.ts) the files sit next to us; from the build (dist/sql/install.js) they are
// in the package's sql/ directory two levels up.
const MIGRATION_DIRS = [new URL('./migrations/', import.meta.url), new URL('../../sql/migrations/', import.meta.url)];

export function loadMigration(m: Migration): Promise<string> {
  let p = sourceCache.get(m.id);
  if (!p) {
    p = (async () => {
      const errors: string[] = [];
      for (const dir of MIGRATION_DIRS) {
        const file = new URL(`${m.id}.sql`, dir);
        try {
          return await readFile(file, 'utf8');
        } catch (e) {
          errors.push(`${fileURLToPath(file)}: ${(e as Error).message}`);
        }
      }
      throw new SqlInstallError(`pg-steadytext: migration file ${m.id}.sql not found (${errors.join('; ')})`, 'MIGRATION_FAILED');
    })();
    p.catch(() => sourceCache.delete(m.id));
    sourceCache.set(m.id, p);
  }
  return p;
}

async function extensionSchema(client: pg.ClientBase, name: string): Promise<string | undefined> {
  const r = await client.query(
    'SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = $1', [name]);
  return r.rows[0]?.nspname as string | undefined;
}

async function ensureVector(client: pg.ClientBase): Promise<string> {
  const found = await extensionSchema(client, 'vector');
  if (found) return found;
  try {
    await client.query('CREATE EXTENSION IF NOT EXISTS vector');
  } catch (e) {
    const who = await client.query('SELECT current_database() AS db, current_user AS role').catch(() => undefined);
    const db = who?.rows[0]?.db ?? '?';
    const role = who?.rows[0]?.role ?? '?';
    const err = e as { code?: string; message: string };
    const notOnServer = err.code === '0A000' || err.code === '58P01' || /not available|could not open extension control file/i.test(err.message);
    throw new SqlInstallError(
      `pg-steadytext needs pgvector: the "vector" extension is not installed in database "${db}" and role "${role}" cannot create it (${err.message}). ` +
      (notOnServer
        ? 'Install the pgvector package on the PostgreSQL server, then run CREATE EXTENSION vector in this database.'
        : 'Ask a superuser (or the database owner, pgvector being a trusted extension) to run CREATE EXTENSION vector in this database.'),
      'PGVECTOR_MISSING', { cause: e });
  }
  const created = await extensionSchema(client, 'vector');
  if (!created) throw new SqlInstallError('pg-steadytext needs pgvector: CREATE EXTENSION vector reported success but the extension is absent', 'PGVECTOR_MISSING');
  return created;
}

// dblink only serves the callback path; a database without it still works through the proxy.
async function ensureDblink(client: pg.ClientBase, tryCreate: boolean): Promise<boolean> {
  if (await extensionSchema(client, 'dblink')) return true;
  if (!tryCreate) return false;
  const can = await client.query(
    "SELECT rolsuper AS su FROM pg_roles WHERE rolname = current_user");
  const available = await client.query("SELECT 1 FROM pg_available_extensions WHERE name = 'dblink'");
  if (!can.rows[0]?.su || available.rowCount === 0) return false;
  try {
    await client.query('CREATE EXTENSION IF NOT EXISTS dblink');
  } catch {
    return false;
  }
  return Boolean(await extensionSchema(client, 'dblink'));
}

function sha256(s: string): string {
  return createHash('sha256').update(s, 'utf8').digest('hex');
}
