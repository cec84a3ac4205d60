// Installs and upgrades the steadytext_* SQL objects: idempotent, safe to run from several proxies at
// once (advisory lock), each pending migration in its own transaction.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { MIGRATIONS, SQL_VERSION, type Migration } from './version.js';

export interface InstallOptions {
  /**
   * Schema that receives the objects (created with USAGE for PUBLIC if missing), and pgvector and dblink
   * when they must be created. Only the installing role (and superusers) may be able to create objects in it.
   * Default "public".
   */
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
  constructor(
    message: string,
    readonly code: 'PGVECTOR_MISSING' | 'MIGRATION_FAILED' | 'BAD_OPTIONS'
      /** Roles other than the service role can create objects in the install schema. */
      | 'UNSAFE_SCHEMA'
      /** The steadytext objects that exist belong to a role the service role cannot act as, or that others can act as. */
      | 'WRONG_OWNER'
      /** The service role may not create objects in the install schema. */
      | 'NO_PRIVILEGE',
    options?: { cause?: unknown },
  ) {
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

/**
 * The search_path of every connection the proxy makes as its own role: nothing another role can create
 * (in public, in a schema named after the service role, anywhere) is ever found by name. Every steadytext
 * object is named with its schema; built-ins resolve in pg_catalog.
 */
export const SERVICE_SEARCH_PATH = 'pg_catalog, pg_temp';

/**
 * Installs or upgrades the objects in opts.schema through `client`, whose role becomes (or must already
 * be) their owner. Refuses, with an error that says how to fix it, a schema where other roles can
 * create objects: anything they put there would run with this role's privileges.
 * The client's search_path is pinned to SERVICE_SEARCH_PATH while this runs, then restored.
 */
export async function installSql(client: pg.ClientBase, opts: InstallOptions = {}): Promise<InstallResult> {
  const schema = opts.schema ?? 'public';
  if (!schema || schema.includes('\0')) throw new SqlInstallError(`invalid schema name ${JSON.stringify(schema)}`, 'BAD_OPTIONS');
  const wanted = migrationsUpTo(opts.target);
  const sources = await Promise.all(wanted.map(loadMigration));

  const saved = (await client.query('SHOW search_path')).rows[0].search_path as string;
  await client.query(`SET search_path TO ${SERVICE_SEARCH_PATH}`);
  try {
    await client.query('SELECT pg_catalog.pg_advisory_lock($1::pg_catalog.int4, $2::pg_catalog.int4)', [LOCK_CLASS, LOCK_OBJECT]);
    try {
      return await installLocked(client, schema, wanted, sources, opts);
    } finally {
      await client.query('SELECT pg_catalog.pg_advisory_unlock($1::pg_catalog.int4, $2::pg_catalog.int4)', [LOCK_CLASS, LOCK_OBJECT]).catch(() => undefined);
    }
  } finally {
    await client.query('SELECT pg_catalog.set_config($1::pg_catalog.text, $2::pg_catalog.text, false)', ['search_path', saved]).catch(() => undefined);
  }
}

async function installLocked(client: pg.ClientBase, schema: string, wanted: readonly Migration[], sources: string[], opts: InstallOptions): Promise<InstallResult> {
  const s = quoteIdent(schema);
  await ensureSchema(client, schema);
  await checkSchemaIsOurs(client, schema);
  await checkOwners(client, schema);
  await checkForeignRoutines(client, schema);
  // Both extensions go to the install schema when we create them (only roles we trust can create there);
  // ones already installed are used wherever they are (the migrations name pgvector's type with its schema).
  const vectorSchema = await ensureVector(client, schema);
  const dblink = await ensureDblink(client, schema, opts.dblink !== false);

  const done = await appliedMigrations(client, schema);
  if (wanted.some((m) => !done.has(m.id))) await checkCanCreate(client, schema);
  const migrated: string[] = [];
  for (const [i, m] of wanted.entries()) {
    if (done.has(m.id)) continue;
    await applyMigration(client, schema, vectorSchema, m, sources[i]);
    migrated.push(m.id);
  }
  const v = await client.query(`SELECT version FROM ${s}.steadytext_meta ORDER BY migration DESC LIMIT 1`);
  return { version: (v.rows[0]?.version as string | undefined) ?? SQL_VERSION, installed: migrated.length > 0, migrated, dblink, schema };
}

/** Creates the schema, usable by every role, when it does not exist. */
async function ensureSchema(client: pg.ClientBase, schema: string): Promise<void> {
  const exists = await client.query('SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) $1::pg_catalog.text', [schema]);
  if (exists.rowCount !== 0) return;
  const s = quoteIdent(schema);
  await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
  await client.query(`GRANT USAGE ON SCHEMA ${s} TO PUBLIC`);
}

/** Ids of the migrations steadytext_meta records; creates the (empty) table on a first install. */
async function appliedMigrations(client: pg.ClientBase, schema: string): Promise<Set<string>> {
  const s = quoteIdent(schema);
  const done = new Set<string>();
  if ((await client.query('SELECT pg_catalog.to_regclass($1::pg_catalog.text) AS r', [`${s}.steadytext_meta`])).rows[0].r === null) {
    await checkCanCreate(client, schema);
    await client.query(`
      CREATE TABLE IF NOT EXISTS ${s}.steadytext_meta (
        migration  text PRIMARY KEY,
        version    text NOT NULL,
        checksum   text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
    await client.query(`REVOKE ALL ON ${s}.steadytext_meta FROM PUBLIC; GRANT SELECT ON ${s}.steadytext_meta TO PUBLIC`);
  } else {
    for (const r of (await client.query(`SELECT migration FROM ${s}.steadytext_meta`)).rows) done.add(r.migration as string);
  }
  return done;
}

/** Runs one migration and records it in steadytext_meta, in one transaction. */
async function applyMigration(client: pg.ClientBase, schema: string, vectorSchema: string, m: Migration, source: string): Promise<void> {
  const s = quoteIdent(schema);
  const sql = source.replaceAll('@schema@', s).replaceAll('@vector_schema@', quoteIdent(vectorSchema));
  await client.query('BEGIN');
  try {
    // Unqualified names in the migration land in (and resolve in) the install schema, after pg_catalog
    // (searched first when not listed). pgvector's schema is not on the path: the migrations name its
    // type as @vector_schema@.vector, and that schema may be one where other roles can create objects.
    await client.query(`SET LOCAL search_path TO ${s}`);
    await client.query(sql);
    await client.query(`INSERT INTO ${s}.steadytext_meta (migration, version, checksum) VALUES ($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text)`,
      [m.id, m.version, sha256(source)]);
    await client.query('COMMIT');
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw new SqlInstallError(`pg-steadytext: migration ${m.id} failed in schema ${schema}: ${(e as Error).message}`, 'MIGRATION_FAILED', { cause: e });
  }
}

// Login roles that can act as role `holder` ($1, an oid) and are neither superusers nor able to act as
// the service role (current_user) anyway: those whose objects could run with the service role's rights.
const OUTSIDERS = `ARRAY(
  SELECT m.rolname::pg_catalog.text FROM pg_catalog.pg_roles m
   WHERE m.rolcanlogin AND NOT m.rolsuper
     AND pg_catalog.pg_has_role(m.oid, $1::pg_catalog.oid, 'MEMBER')
     AND NOT pg_catalog.pg_has_role(m.oid, CURRENT_USER, 'MEMBER')
   ORDER BY 1)`;

async function outsiders(client: pg.ClientBase, role: number): Promise<string[]> {
  return (await client.query(`SELECT ${OUTSIDERS} AS roles`, [role])).rows[0].roles as string[];
}

const list = (names: string[]) => names.map((n) => quoteIdent(n)).join(', ');

/**
 * Refuses a schema where a role other than the service role (and superusers, and roles that can act as
 * the service role anyway) can CREATE: an overload of a steadytext function, or of a built-in the
 * objects call, that such a role created there would run with the service role's privileges.
 */
export async function checkSchemaIsOurs(client: pg.ClientBase, schema: string): Promise<void> {
  const ns = (await client.query(`
    SELECT n.nspowner::pg_catalog.int8 AS owner, r.rolname::pg_catalog.text AS owner_name, r.rolsuper AS owner_super,
           pg_catalog.current_database()::pg_catalog.text AS db, CURRENT_USER::pg_catalog.text AS me,
           ARRAY(SELECT a.grantee::pg_catalog.int8 FROM pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
                  WHERE a.privilege_type OPERATOR(pg_catalog.=) 'CREATE') AS creators
      FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
     WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.text`, [schema])).rows[0] as
    { owner: string; owner_name: string; owner_super: boolean; db: string; me: string; creators: string[] } | undefined;
  if (!ns) throw new SqlInstallError(`pg-steadytext: schema ${quoteIdent(schema)} does not exist and could not be created`, 'BAD_OPTIONS');
  const s = quoteIdent(schema);
  const problems: string[] = [];
  const fixes: string[] = [];
  if (ns.creators.map(Number).includes(0)) {
    problems.push('PUBLIC (every role) holds CREATE on it');
    fixes.push(`REVOKE CREATE ON SCHEMA ${s} FROM PUBLIC`);
  }
  const holders = [Number(ns.owner), ...ns.creators.map(Number).filter((r) => r !== 0 && r !== Number(ns.owner))];
  for (const holder of [...new Set(holders)]) {
    const info = (await client.query(`SELECT rolname::pg_catalog.text AS name, rolsuper AS super, ${OUTSIDERS} AS outsiders FROM pg_catalog.pg_roles WHERE oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid`, [holder])).rows[0] as
      { name: string; super: boolean; outsiders: string[] } | undefined;
    if (!info || info.super || info.outsiders.length === 0) continue;
    const owner = holder === Number(ns.owner);
    const via = info.outsiders.length === 1 && info.outsiders[0] === info.name ? '' : ` (which ${list(info.outsiders)} can act as)`;
    const what = info.name === 'pg_database_owner' ? `the owner of database ${quoteIdent(ns.db)}, through pg_database_owner,` : `role ${quoteIdent(info.name)}${via}`;
    if (owner) {
      problems.push(`${what} owns it`);
      fixes.push(`ALTER SCHEMA ${s} OWNER TO ${quoteIdent(ns.me)}`);
    } else {
      problems.push(`${what} holds CREATE on it`);
      fixes.push(`REVOKE CREATE ON SCHEMA ${s} FROM ${quoteIdent(info.name)}`);
    }
  }
  if (problems.length === 0) return;
  throw new SqlInstallError(
    `pg-steadytext will not install into schema ${s} of database ${quoteIdent(ns.db)}: roles other than the service role ${quoteIdent(ns.me)} can create objects there ` +
    `(${problems.join('; ')}), and a function or operator they create there (an overload of a steadytext function, say) would run with the service role's privileges. ` +
    `Fix: ${fixes.join('; ')} (run by the schema's owner or a superuser), ` +
    `or install into a schema of the service role's own: CREATE SCHEMA steadytext AUTHORIZATION ${quoteIdent(ns.me)}, then start the proxy with --schema steadytext (PGSTEADYTEXT_SCHEMA).`,
    'UNSAFE_SCHEMA');
}

/** The steadytext objects already in the schema must belong to a role the service role acts as, and nobody else does. */
export async function checkOwners(client: pg.ClientBase, schema: string): Promise<void> {
  const rows = (await client.query(`
    WITH o AS (
      SELECT c.relowner AS owner, c.relname::pg_catalog.text AS name FROM pg_catalog.pg_class c
       WHERE c.relnamespace OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) $1::pg_catalog.text)
         AND c.relname OPERATOR(pg_catalog.~) '^_?steadytext_'
      UNION ALL
      SELECT p.proowner, p.proname::pg_catalog.text FROM pg_catalog.pg_proc p
       WHERE p.pronamespace OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) $1::pg_catalog.text)
         AND p.proname OPERATOR(pg_catalog.~) '^_?steadytext_'
    )
    SELECT o.owner::pg_catalog.int8 AS owner, r.rolname::pg_catalog.text AS name, r.rolsuper AS super,
           pg_catalog.pg_has_role(CURRENT_USER, o.owner, 'USAGE') AS usable, CURRENT_USER::pg_catalog.text AS me,
           (pg_catalog.array_agg(DISTINCT o.name))[1:3] AS objects
      FROM o JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) o.owner
     GROUP BY o.owner, r.rolname, r.rolsuper`, [schema])).rows as
    Array<{ owner: string; name: string; super: boolean; usable: boolean; me: string; objects: string[] }>;
  const s = quoteIdent(schema);
  for (const r of rows) {
    const what = `the steadytext objects in schema ${s} (${r.objects.join(', ')}, ...) belong to role ${quoteIdent(r.name)}`;
    if (!r.usable) {
      throw new SqlInstallError(
        `pg-steadytext: ${what}, and the service role ${quoteIdent(r.me)} can neither act as it nor own them. ` +
        `Connect the proxy's service URL (--service-url) as ${quoteIdent(r.name)}, or have a superuser give the objects to ${quoteIdent(r.me)} ` +
        `(REASSIGN OWNED BY ${quoteIdent(r.name)} TO ${quoteIdent(r.me)}, if that role owns nothing else in this database).`,
        'WRONG_OWNER');
    }
    if (r.super) continue;
    const others = await outsiders(client, Number(r.owner));
    if (others.length === 0) continue;
    throw new SqlInstallError(
      `pg-steadytext: ${what}, which ${list(others)} can act as besides the service role ${quoteIdent(r.me)}: ` +
      `they could change what runs when the service role uses the objects (a trigger on steadytext_cache, say). ` +
      `Give the objects to a role only the proxy uses (as a superuser: REASSIGN OWNED BY ${quoteIdent(r.name)} TO ${quoteIdent(r.me)}, if that role owns nothing else in this database), ` +
      `or revoke the membership in ${quoteIdent(r.name)} from those roles.`,
      'WRONG_OWNER');
  }
}

/**
 * Refuses a schema that holds functions or operators of other roles (made before CREATE was revoked,
 * say): the steadytext functions run as their owner with the install schema on their search_path, and
 * an overload there that matches their arguments better than the built-in they mean (format(text, text)
 * against format(text, VARIADIC "any")) would be called instead, with the service role's privileges.
 */
export async function checkForeignRoutines(client: pg.ClientBase, schema: string): Promise<void> {
  const rows = (await client.query(`
    WITH n AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) $1::pg_catalog.text),
    o AS (
      SELECT p.proowner AS owner, p.oid::pg_catalog.regprocedure::pg_catalog.text AS name FROM pg_catalog.pg_proc p, n
       WHERE p.pronamespace OPERATOR(pg_catalog.=) n.oid AND p.proname OPERATOR(pg_catalog.!~) '^_?steadytext_'
      UNION ALL
      SELECT op.oprowner, 'operator ' OPERATOR(pg_catalog.||) op.oid::pg_catalog.regoperator::pg_catalog.text FROM pg_catalog.pg_operator op, n
       WHERE op.oprnamespace OPERATOR(pg_catalog.=) n.oid
    )
    SELECT o.owner::pg_catalog.int8 AS owner, r.rolname::pg_catalog.text AS role, (pg_catalog.array_agg(o.name ORDER BY o.name))[1:5] AS objects,
           pg_catalog.count(*)::pg_catalog.int4 AS n, CURRENT_USER::pg_catalog.text AS me
      FROM o JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) o.owner
     WHERE NOT r.rolsuper
     GROUP BY o.owner, r.rolname`, [schema])).rows as Array<{ owner: string; role: string; objects: string[]; n: number; me: string }>;
  const s = quoteIdent(schema);
  const problems: string[] = [];
  for (const r of rows) {
    const others = await outsiders(client, Number(r.owner));
    if (others.length === 0) continue;
    const via = others.length === 1 && others[0] === r.role ? '' : ` (which ${list(others)} can act as)`;
    problems.push(`role ${quoteIdent(r.role)}${via} owns ${r.objects.join(', ')}${r.n > r.objects.length ? ` and ${r.n - r.objects.length} more` : ''}`);
  }
  if (problems.length === 0) return;
  throw new SqlInstallError(
    `pg-steadytext will not install into schema ${s}: it holds functions or operators of roles other than the service role ${quoteIdent(rows[0].me)} ` +
    `(${problems.join('; ')}). The steadytext functions run with the service role's privileges and look names up in this schema, ` +
    `so one of these could be called in place of the built-in they mean. Move them to another schema (ALTER FUNCTION ... SET SCHEMA ...) or drop them, ` +
    `or install into a schema of the service role's own: CREATE SCHEMA steadytext AUTHORIZATION ${quoteIdent(rows[0].me)}, then start the proxy with --schema steadytext (PGSTEADYTEXT_SCHEMA).`,
    'UNSAFE_SCHEMA');
}

export async function checkCanCreate(client: pg.ClientBase, schema: string): Promise<void> {
  const r = (await client.query(`SELECT pg_catalog.has_schema_privilege(CURRENT_USER, n.oid, 'CREATE') AS ok, CURRENT_USER::pg_catalog.text AS me
      FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.text`, [schema])).rows[0] as { ok: boolean; me: string };
  if (r.ok) return;
  throw new SqlInstallError(
    `pg-steadytext: the service role ${quoteIdent(r.me)} may not create the steadytext objects in schema ${quoteIdent(schema)}. ` +
    `Give it a schema of its own (as a superuser: CREATE SCHEMA steadytext AUTHORIZATION ${quoteIdent(r.me)}, then --schema steadytext), ` +
    `or install once as a role that may, and connect the service URL as that role.`,
    'NO_PRIVILEGE');
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
    `SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
      WHERE e.extname OPERATOR(pg_catalog.=) $1::pg_catalog.text`, [name]);
  return r.rows[0]?.nspname as string | undefined;
}

async function ensureVector(client: pg.ClientBase, schema: string): Promise<string> {
  const found = await extensionSchema(client, 'vector');
  if (found) return found;
  try {
    await client.query(`CREATE EXTENSION IF NOT EXISTS vector SCHEMA ${quoteIdent(schema)}`);
  } catch (e) {
    const who = await client.query('SELECT pg_catalog.current_database() AS db, CURRENT_USER AS role').catch(() => undefined);
    const db = who?.rows[0]?.db ?? '?';
    const role = who?.rows[0]?.role ?? '?';
    const err = e as { code?: string; message: string };
    const notOnServer = err.code === '0A000' || err.code === '58P01' || /not available|could not open extension control file/i.test(err.message);
    const create = `CREATE EXTENSION vector SCHEMA ${quoteIdent(schema)}`;
    throw new SqlInstallError(
      `pg-steadytext needs pgvector: the "vector" extension is not installed in database "${db}" and role "${role}" cannot create it (${err.message}). ` +
      (notOnServer
        ? `Install the pgvector package on the PostgreSQL server, then run ${create} in this database.`
        : `Ask a superuser (or the database owner, pgvector being a trusted extension) to run ${create} in this database.`),
      'PGVECTOR_MISSING', { cause: e });
  }
  const created = await extensionSchema(client, 'vector');
  if (!created) throw new SqlInstallError('pg-steadytext needs pgvector: CREATE EXTENSION vector reported success but the extension is absent', 'PGVECTOR_MISSING');
  return created;
}

// dblink only serves the callback path; a database without it still works through the proxy.
async function ensureDblink(client: pg.ClientBase, schema: string, tryCreate: boolean): Promise<boolean> {
  if (await extensionSchema(client, 'dblink')) return true;
  if (!tryCreate) return false;
  const can = await client.query('SELECT rolsuper AS su FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER');
  const available = await client.query("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name OPERATOR(pg_catalog.=) 'dblink'");
  if (!can.rows[0]?.su || available.rowCount === 0) return false;
  try {
    await client.query(`CREATE EXTENSION IF NOT EXISTS dblink SCHEMA ${quoteIdent(schema)}`);
  } catch {
    return false;
  }
  return Boolean(await extensionSchema(client, 'dblink'));
}

/**
 * What a template of the embedded database made with these objects installed is named for: their version and a
 * digest of the migrations' text (the checksums steadytext_meta records), so that a template made with other
 * migrations, even of the same version, is never taken for this one (cli.ts, scripts/pglite-template.mjs).
 */
export async function objectsTag(): Promise<string> {
  const sums = await Promise.all(MIGRATIONS.map(async (m) => `${m.id} ${m.version} ${sha256(await loadMigration(m))}\n`));
  return `sql-${SQL_VERSION}-${sha256(sums.join('')).slice(0, 12)}`;
}

function sha256(s: string): string {
  return createHash('sha256').update(s, 'utf8').digest('hex');
}
