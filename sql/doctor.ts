// `pg-steadytext doctor`: every prerequisite of `serve` with the same settings, checked without serving: the
// upstream of each database (a pgbouncer.ini's [databases] entries each), pgvector, dblink, the service role and
// its schema, the installed SQL objects' version, the models (loaded with the engine's own code), the daemon
// endpoint and the callback transport each database will use. Each check is one line, ok / warning / broken, and
// says what to do; the wording is the product's own wherever it has one (the installer's refusals, the model
// registry's, the SQL functions'). Read-only: nothing is installed, created or written.
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { createServer } from 'node:net';
import pg from 'pg';
import { serviceUrlForDatabase, type PoolerConfig } from '../config/pgbouncer.js';
import { runtimeFromRows, type RuntimeConfig } from '../config/runtime.js';
import { parseHostPort, redactUrl, type Settings } from '../config/settings.js';
import { closeEmbedder, openEmbedder } from '../inference/embedder.js';
import type { EngineOptions } from '../inference/engine.js';
import { closeGenerator, openGenerator } from '../inference/generator.js';
import { planCpu } from '../inference/llama.js';
import { ModelRegistry, type ModelSpec } from '../inference/registry.js';
import { superuserAdvice } from './databases.js';
import { callbackTransport } from './evaluate.js';
import { checkCanCreate, checkForeignRoutines, checkOwners, checkSchemaIsOurs, quoteIdent } from './install.js';
import { serviceConnection } from './store.js';
import { SQL_VERSION } from './version.js';
import { servedBy } from '../embedded/index.js';

export type Status = 'ok' | 'warning' | 'broken';

export interface Check {
  /** What was checked: upstream, pgvector, dblink, service role, schema, SQL objects, callback transport, daemon endpoint, model. */
  check: string;
  /** The database (as clients name it) of a per-database check; the model (role:name) of a model check. */
  subject?: string;
  status: Status;
  message: string;
}

export interface DoctorReport {
  ok: boolean;
  broken: number;
  warnings: number;
  checks: Check[];
}

export interface DoctorOptions {
  settings: Settings;
  /** Under `--config pgbouncer.ini`: each [databases] entry is checked where it sends its clients. */
  ini?: PoolerConfig;
  /** The engine options serve would use (cli.ts engineOptions). */
  engine: EngineOptions;
}

/** Runs every check and prints the report (JSON with `json`); resolves with the exit status: 1 when something is broken. */
export async function doctorCommand(o: DoctorOptions & { json?: boolean }): Promise<number> {
  const report = await runDoctor(o);
  process.stdout.write(o.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
  return report.ok ? 0 : 1;
}

export async function runDoctor(o: DoctorOptions): Promise<DoctorReport> {
  const checks: Check[] = [];
  const add = (check: string, subject: string | undefined, status: Status, message: string) => void checks.push({ check, subject, status, message });
  const s = o.settings;
  const daemonOn = s.daemonListen !== 'off';
  if (!o.ini && !s.upstream) {
    // No upstream: serve runs the embedded database. Nothing is started here (it may be serving now).
    await checkEmbedded(s, add);
  } else {
    for (const t of targets(s, o.ini)) await checkDatabase(t, s, daemonOn, (check, status, message) => add(check, t.database, status, message));
    if (!o.ini) await checkClientUpstream(s, add);
    await checkDaemonEndpoint(s, add);
  }
  await checkModels(o.engine, add);
  const broken = checks.filter((c) => c.status === 'broken').length;
  return { ok: broken === 0, broken, warnings: checks.filter((c) => c.status === 'warning').length, checks };
}

export function formatReport(r: DoctorReport): string {
  const lines = r.checks.map((c) => `${c.status.padEnd(8)}${c.check}${c.subject ? ` [${c.subject}]` : ''}: ${c.message}`);
  const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`;
  lines.push(r.ok
    ? `nothing broken${r.warnings ? ` (${plural(r.warnings, 'warning')})` : ''}`
    : `${r.broken} broken${r.warnings ? `, ${plural(r.warnings, 'warning')}` : ''}: fix the lines marked broken, then run pg-steadytext doctor again`);
  return lines.join('\n') + '\n';
}

type Add = (check: string, subject: string | undefined, status: Status, message: string) => void;
type AddFor = (check: string, status: Status, message: string) => void;

interface Target { database: string; url: string }

const databaseOf = (url: string) => decodeURIComponent(new URL(url).pathname.slice(1));

/** The databases serve would prepare: the service URL's own, or under an ini where each [databases] entry sends its clients. */
function targets(s: Settings, ini: PoolerConfig | undefined): Target[] {
  const own = databaseOf(s.serviceUrl) || decodeURIComponent(new URL(s.serviceUrl).username) || 'postgres';
  if (!ini) return [{ database: own, url: s.serviceUrl }];
  const names = [...ini.databases.keys()].filter((n) => n !== '*');
  const out = new Map<string, Target>();
  for (const database of names.length ? names : [own]) {
    const url = serviceUrlForDatabase(s.serviceUrl, ini, database);
    if (!out.has(url)) out.set(url, { database, url });
  }
  return [...out.values()];
}

/** A connection error's text: node's AggregateError (several addresses tried) has an empty message. */
function errorText(err: unknown): string {
  const e = err as Error & { errors?: Error[]; code?: string };
  if (e.errors?.length) return [...new Set(e.errors.map((x) => x.message))].join('; ');
  return e.message || e.code || String(err);
}

const AUTH_OR_DATABASE = new Set(['28P01', '28000', '3D000']);

async function connect(url: string, timeoutMs: number): Promise<pg.Client> {
  const c = new pg.Client({ ...serviceConnection(url, 'pg-steadytext doctor'), connectionTimeoutMillis: timeoutMs });
  c.on('error', () => {});
  try {
    await c.connect();
  } catch (err) {
    await c.end().catch(() => {});
    throw err;
  }
  return c;
}

function unreachable(url: string, err: unknown, what: string): string {
  const code = (err as { code?: string }).code;
  const fix = code === '28P01' || code === '28000'
    ? 'the server refused the credentials: check the user and password in --service-url (PGSTEADYTEXT_SERVICE_URL), or in --upstream when no service URL is set'
    : code === '3D000'
      ? 'that database does not exist: create it, or correct the database name'
      : `Is PostgreSQL running there and reachable from here? Check ${what}`;
  return `cannot connect to ${redactUrl(url)}: ${errorText(err)}. ${fix}`;
}

/** Everything serve needs of one database, through the service connection it would open. */
async function checkDatabase(t: Target, s: Settings, daemonOn: boolean, add: AddFor): Promise<void> {
  let c: pg.Client;
  try {
    c = await connect(t.url, s.connectTimeoutMs);
  } catch (err) {
    add('upstream', 'broken', unreachable(t.url, err, `--upstream / --service-url (PGSTEADYTEXT_UPSTREAM / PGSTEADYTEXT_SERVICE_URL)${t.database !== databaseOf(t.url) ? ', and this database\'s entry in the ini' : ''}`));
    return;
  }
  try {
    const who = (await c.query(`SELECT CURRENT_USER::pg_catalog.text AS role, pg_catalog.current_database()::pg_catalog.text AS db,
        pg_catalog.current_setting('server_version') AS version,
        pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on' AS superuser,
        pg_catalog.has_database_privilege(CURRENT_USER, pg_catalog.current_database(), 'CREATE') AS can_create`)).rows[0] as
      { role: string; db: string; version: string; superuser: boolean; can_create: boolean };
    add('upstream', 'ok', `${redactUrl(t.url)} reachable: PostgreSQL ${who.version}, database "${who.db}" as role "${who.role}"`);
    const vector = await extension(c, 'vector');
    const dblink = await extension(c, 'dblink');
    const schema = s.schema;
    const objects = await installedVersion(c, schema);
    const pending = objects === undefined || compareVersions(objects, SQL_VERSION) < 0;

    checkVector(vector, who, schema, add);
    // installSql creates dblink where it can (a superuser, the extension available), on every first use.
    const dblinkComing = !dblink.installed && s.autoInstall && who.superuser && dblink.available !== undefined;
    checkDblink(dblink, dblinkComing, who.db, schema, add);

    add('service role', who.superuser ? 'warning' : 'ok',
      who.superuser ? superuserAdvice(who.role, who.db) : `"${who.role}" is not a superuser`);
    await checkSchema(c, schema, who, pending, s.autoInstall, add);
    checkObjects(objects, schema, who.db, t.url, s.autoInstall, add);

    const cfg = objects === undefined ? runtimeFromRows([]) : runtimeFromRows((await c.query(`SELECT key, value FROM ${quoteIdent(schema)}.steadytext_config`)).rows);
    checkTransport(cfg, Boolean(dblink.installed) || dblinkComing, daemonOn, objects !== undefined, s, who.db, add);
  } catch (err) {
    add('upstream', 'broken', `checking database "${t.database}" failed: ${errorText(err)}`);
  } finally {
    await c.end().catch(() => {});
  }
}

interface Extension {
  installed?: { version: string; schema: string };
  available?: { version: string; trusted: boolean };
}

async function extension(c: pg.Client, name: string): Promise<Extension> {
  const installed = (await c.query(`SELECT e.extversion AS version, n.nspname::pg_catalog.text AS schema FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace WHERE e.extname OPERATOR(pg_catalog.=) $1::pg_catalog.text`, [name])).rows[0];
  const available = (await c.query(`SELECT a.default_version AS version, coalesce(v.trusted, false) AS trusted FROM pg_catalog.pg_available_extensions a
      LEFT JOIN pg_catalog.pg_available_extension_versions v ON v.name OPERATOR(pg_catalog.=) a.name AND v.version OPERATOR(pg_catalog.=) a.default_version
      WHERE a.name OPERATOR(pg_catalog.=) $1::pg_catalog.text`, [name])).rows[0];
  return { installed, available };
}

interface Who { role: string; db: string; superuser: boolean; can_create: boolean }

function checkVector(v: Extension, who: Who, schema: string, add: AddFor): void {
  if (v.installed) {
    add('pgvector', 'ok', `vector ${v.installed.version} installed in schema "${v.installed.schema}"`);
    return;
  }
  const create = `CREATE EXTENSION vector SCHEMA ${quoteIdent(schema)}`;
  const can = v.available && (who.superuser || (v.available.trusted && who.can_create));
  if (can) {
    add('pgvector', 'ok', `vector ${v.available!.version} is available and role "${who.role}" can create it: created in schema "${schema}" with the SQL objects`);
    return;
  }
  // The installer's refusal (sql/install.ts ensureVector), with the reason it would meet.
  const why = !v.available
    ? 'it is not available on the server'
    : v.available.trusted ? `the role has no CREATE privilege on database "${who.db}"` : 'the role is not a superuser and the extension is not trusted';
  add('pgvector', 'broken',
    `pg-steadytext needs pgvector: the "vector" extension is not installed in database "${who.db}" and role "${who.role}" cannot create it (${why}). ` +
    (!v.available
      ? `Install the pgvector package on the PostgreSQL server, then run ${create} in this database.`
      : v.available.trusted
        ? `Ask a superuser (or the database owner, pgvector being a trusted extension) to run ${create} in this database.`
        : `Ask a superuser to run ${create} in this database.`));
}

function checkDblink(d: Extension, coming: boolean, db: string, schema: string, add: AddFor): void {
  if (d.installed) {
    add('dblink', 'ok', `dblink ${d.installed.version} installed in schema "${d.installed.schema}": calls the proxy cannot see (PL/pgSQL functions, triggers, views) can reach the daemon endpoint through it`);
  } else if (coming) {
    add('dblink', 'ok', `dblink is not installed in database "${db}" yet: the service role, a superuser, creates it in schema "${schema}" on first use`);
  } else {
    add('dblink', 'warning',
      `dblink is not installed in database "${db}": calls the proxy cannot see (PL/pgSQL functions, triggers, views) use the in-band transport, ` +
      `through the client's own connection to the proxy, instead of the daemon endpoint. Nothing is broken; for the dblink transport ` +
      (d.available ? `a superuser runs CREATE EXTENSION dblink SCHEMA ${quoteIdent(schema)} in this database` : 'install PostgreSQL\'s contrib package (dblink) on the server, then CREATE EXTENSION dblink'));
  }
}

/** The installer's own checks of the schema (sql/install.ts), run without installing anything. */
async function checkSchema(c: pg.Client, schema: string, who: Who, pending: boolean, autoInstall: boolean, add: AddFor): Promise<void> {
  const exists = (await c.query('SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) $1::pg_catalog.text', [schema])).rowCount !== 0;
  if (!exists) {
    if (who.superuser || who.can_create) add('schema', 'ok', `schema "${schema}" does not exist yet: role "${who.role}" creates it with the SQL objects`);
    else {
      add('schema', 'broken', `schema "${schema}" does not exist in database "${who.db}" and role "${who.role}" may not create it: ` +
        `as a superuser, CREATE SCHEMA ${quoteIdent(schema)} AUTHORIZATION ${quoteIdent(who.role)} in this database`);
    }
    return;
  }
  try {
    await checkSchemaIsOurs(c, schema);
    await checkOwners(c, schema);
    await checkForeignRoutines(c, schema);
    if (pending) await checkCanCreate(c, schema);
  } catch (err) {
    // Every first use installs (or checks) through these: with auto-install off only `pg-steadytext install` refuses.
    add('schema', autoInstall ? 'broken' : 'warning', (err as Error).message);
    return;
  }
  add('schema', 'ok', `only role "${who.role}" (and superusers) can create objects in schema "${schema}"${pending ? `, and "${who.role}" may create the SQL objects there` : ''}`);
}

async function installedVersion(c: pg.Client, schema: string): Promise<string | undefined> {
  const s = quoteIdent(schema);
  if ((await c.query('SELECT pg_catalog.to_regclass($1::pg_catalog.text) AS r', [`${s}.steadytext_meta`])).rows[0].r === null) return undefined;
  return (await c.query(`SELECT version FROM ${s}.steadytext_meta ORDER BY migration DESC LIMIT 1`)).rows[0]?.version as string | undefined;
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number), pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) - (pb[i] ?? 0);
  return 0;
}

function checkObjects(version: string | undefined, schema: string, db: string, url: string, autoInstall: boolean, add: AddFor): void {
  const install = `run pg-steadytext install --database ${redactUrl(url)}${schema !== 'public' ? ` --schema ${schema}` : ''} (as the service role), or turn auto-install on (--auto-install, PGSTEADYTEXT_AUTO_INSTALL)`;
  if (version === undefined) {
    if (autoInstall) add('SQL objects', 'ok', `not installed in schema "${schema}" of database "${db}": they will be installed on first use (SQL objects ${SQL_VERSION})`);
    else add('SQL objects', 'broken', `not installed in schema "${schema}" of database "${db}", and auto-install is off: steadytext_* calls fail there. To install them, ${install}`);
    return;
  }
  const cmp = compareVersions(version, SQL_VERSION);
  if (cmp === 0) add('SQL objects', 'ok', `${version} installed in schema "${schema}", this pg-steadytext's version`);
  else if (cmp > 0) add('SQL objects', 'warning', `${version} installed in schema "${schema}", newer than this pg-steadytext's ${SQL_VERSION}: upgrade pg-steadytext to the release that installed them`);
  else if (autoInstall) add('SQL objects', 'ok', `${version} installed in schema "${schema}": upgraded to ${SQL_VERSION} on first use`);
  else add('SQL objects', 'broken', `${version} installed in schema "${schema}" of database "${db}", older than this pg-steadytext's ${SQL_VERSION}, and auto-install is off: to upgrade them, ${install}`);
}

function checkTransport(cfg: RuntimeConfig, dblink: boolean, daemonOn: boolean, installed: boolean, s: Settings, db: string, add: AddFor): void {
  const configured = cfg.callbackTransport;
  const via = callbackTransport(cfg, dblink, daemonOn);
  if (via === 'dblink' && !dblink) {
    // What the SQL function raises then (sql/migrations/001_init.sql, _steadytext_dblink_call).
    add('callback transport', 'broken',
      `callback_transport is dblink, and a call the proxy cannot see has no cached answer and cannot call the pg-steadytext daemon: the dblink extension is not installed in database ${db}. ` +
      "Run CREATE EXTENSION dblink (as a superuser) in this database, or SELECT steadytext_config_set('callback_transport', 'auto') for the in-band transport.");
    return;
  }
  if (via === 'dblink' && !daemonOn) {
    add('callback transport', 'broken',
      'callback_transport is dblink but the daemon endpoint is off (daemon-listen off): calls the proxy cannot see find no daemon. ' +
      "Set --daemon-listen (PGSTEADYTEXT_DAEMON_LISTEN) to host:port, or SELECT steadytext_config_set('callback_transport', 'auto') for the in-band transport.");
    return;
  }
  if (via === 'dblink') {
    // As serve's install writes it (sql/databases.ts advertiseDaemon): the listen address over the built-in defaults only.
    const at = parseHostPort(s.daemonListen, 'daemon-listen');
    const wildcard = ['0.0.0.0', '::', '*'].includes(at.host);
    const host = installed && (cfg.daemonHost !== 'localhost' || wildcard) ? cfg.daemonHost : wildcard ? 'localhost' : at.host;
    const port = installed && cfg.daemonPort !== 5557 ? String(cfg.daemonPort) : at.port === 0 ? '(the port serve binds)' : String(at.port);
    const dials = `${host}:${port} (steadytext_config daemon_host and daemon_port${installed ? '' : ', written at install'})`;
    add('callback transport', 'ok', `dblink${configured === 'auto' ? ' (callback_transport auto)' : ''}: the database dials ${dials}` +
      `${configured === 'auto' ? '; when nothing answers there, in-band' : ''}`);
    return;
  }
  const why = configured === 'inband' ? 'callback_transport inband' : !dblink ? 'callback_transport auto, no dblink' : 'callback_transport auto, the daemon endpoint is off';
  add('callback transport', 'ok', `in-band (${why}): through the client's connection to the proxy`);
}

/** When the proxy and the service connection go to different servers, the clients' upstream must answer too. */
async function checkClientUpstream(s: Settings, add: Add): Promise<void> {
  const a = new URL(s.upstream), b = new URL(s.serviceUrl);
  if (a.hostname === b.hostname && (a.port || '5432') === (b.port || '5432') && a.searchParams.get('host') === b.searchParams.get('host')) return;
  try {
    const c = await connect(s.upstream, s.connectTimeoutMs);
    await c.end().catch(() => {});
  } catch (err) {
    // A refused login or an unknown database is an answer: clients log in with their own credentials.
    if (!AUTH_OR_DATABASE.has((err as { code?: string }).code ?? '')) {
      add('upstream', 'clients', 'broken', unreachable(s.upstream, err, '--upstream (PGSTEADYTEXT_UPSTREAM)'));
      return;
    }
  }
  add('upstream', 'clients', 'ok', `${redactUrl(s.upstream)} answers (clients log in there with their own credentials)`);
}

/** The embedded database serve would run: PGlite installed, its data directory usable, and whether a process serves it. */
async function checkEmbedded(s: Settings, add: Add): Promise<void> {
  try {
    import.meta.resolve('@electric-sql/pglite');
    import.meta.resolve('@electric-sql/pglite-pgvector');
    add('embedded', undefined, 'ok', 'no --upstream: serve runs the embedded database (PGlite with pgvector)');
  } catch {
    add('embedded', undefined, 'broken', 'no --upstream, and PGlite is not installed: run npm install (or give --upstream a PostgreSQL server)');
    return;
  }
  if (s.memory) return add('embedded', 'data', 'ok', 'in memory (--memory): nothing is kept');
  let dir = s.dataDir;
  const existed = await stat(join(dir, 'PG_VERSION')).then(() => true, () => false);
  // The nearest directory that exists must take the data (created on first start).
  while (!(await stat(dir).then(() => true, () => false))) dir = dirname(dir);
  if (!(await stat(dir)).isDirectory()) return add('embedded', 'data', 'broken', `${s.dataDir}: ${dir} is a file, not a directory; give --data-dir a directory`);
  try {
    await access(dir, constants.W_OK);
  } catch {
    return add('embedded', 'data', 'broken', `${s.dataDir}: ${dir} is not writable by this user; fix its permissions or give --data-dir another directory`);
  }
  const pid = servedBy(s.dataDir);
  add('embedded', 'data', 'ok', `${s.dataDir}: ${existed ? 'a database' : 'created on first start'}${pid !== null ? `, served now by process ${pid}` : ''}`);
}

async function checkDaemonEndpoint(s: Settings, add: Add): Promise<void> {
  if (s.daemonListen === 'off') {
    add('daemon endpoint', undefined, 'ok', 'off (daemon-listen off): calls the proxy cannot see use the in-band transport');
    return;
  }
  const at = parseHostPort(s.daemonListen, 'daemon-listen');
  const err = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const srv = createServer();
    srv.once('error', resolve);
    srv.listen(at.port, at.host, () => srv.close(() => resolve(undefined)));
  });
  if (!err) add('daemon endpoint', undefined, 'ok', `${s.daemonListen} is free: serve listens there for the SQL functions' dblink calls`);
  else if (err.code === 'EADDRINUSE') {
    add('daemon endpoint', undefined, 'warning', `${s.daemonListen} is in use: a running pg-steadytext holds it, or serve would fail to start (${err.message}); ` +
      'choose another with --daemon-listen (PGSTEADYTEXT_DAEMON_LISTEN), or off');
  } else {
    add('daemon endpoint', undefined, 'broken', `serve cannot listen on ${s.daemonListen} (${err.message}): set --daemon-listen (PGSTEADYTEXT_DAEMON_LISTEN) to an address of this machine, or off`);
  }
}

const megabytes = (n: number) => `${(n / 2 ** 20).toFixed(1)} MB`;

/** Each configured model: its file, and a load with the engine's own code (one context: loadable, not memory for all). */
async function checkModels(o: EngineOptions, add: Add): Promise<void> {
  let reg: ModelRegistry;
  try {
    reg = new ModelRegistry(o);
  } catch (err) {
    add('model', undefined, 'broken', (err as Error).message);
    return;
  }
  const threads = planCpu(o).threads;
  for (const spec of reg.list()) {
    const subject = `${spec.role}:${spec.name}`;
    const isDefault = spec.name === reg.defaultSize;
    let path: string;
    try {
      path = reg.localPath(spec);
    } catch (err) {
      add('model', subject, 'broken', (err as Error).message);
      continue;
    }
    const size = await stat(path).then((st) => (st.isFile() ? st.size : undefined), () => undefined);
    if (size === undefined) {
      // The registry's own message: which file, where, and the command or the setting that fixes it.
      const missing = await reg.resolve(spec, { download: false }).then(() => `no file at ${path}`, (err: Error) => err.message);
      if (!reg.remoteUrl(spec)) add('model', subject, 'broken', missing);
      else if (isDefault && reg.downloadsAllowed) add('model', subject, 'warning', `${missing}. Without that, it is downloaded on first use (needs network access to ${reg.remoteUrl(spec)})`);
      else if (isDefault) add('model', subject, 'broken', missing); // --no-download: calls fail until it is there
      else add('model', subject, 'ok', `not downloaded, needed only for model_size '${spec.name}': pg-steadytext models pull ${spec.name} fetches it to ${path}`);
      continue;
    }
    add('model', subject, ...await loadModel(spec, path, size, o, threads));
  }
}

async function loadModel(spec: ModelSpec, path: string, size: number, o: EngineOptions, threads: number): Promise<[Status, string]> {
  try {
    if (spec.role === 'generation') {
      const lane = await openGenerator(path, { contexts: 1, threads, contextSize: o.generationContextSize ?? 4096, batchSize: o.generationBatchSize });
      const own = lane.model.trainContextSize;
      await closeGenerator(lane);
      return ['ok', `${path} (${megabytes(size)}) loads: context ${lane.contextSize} tokens (the model's own: ${own})`];
    }
    const dimension = o.embeddingDimension ?? 1024;
    const lane = await openEmbedder(path, { name: spec.name, contexts: 1, threads, contextSize: o.embeddingContextSize ?? 2048, dimension });
    const own = lane.model.trainContextSize;
    await closeEmbedder(lane);
    return ['ok', `${path} (${megabytes(size)}) loads: context ${lane.contextSize} tokens (the model's own: ${own}), ${lane.nativeDimension}-dimensional vectors (steadytext_embed returns ${dimension})`];
  } catch (err) {
    return ['broken', (err as Error).message];
  }
}
