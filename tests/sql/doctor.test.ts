// `pg-steadytext doctor`: the real CLI as a child process against fresh databases of the test cluster, on the
// tiny fixture models. A healthy setup exits 0; each test after that removes exactly one prerequisite and finds
// the line that names it (exit status 1 when it is broken, 0 when it is only reported).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { prepareDatabase } from '../../sql/databases.js';
import { installSql } from '../../sql/install.js';
import { SQL_VERSION } from '../../sql/version.js';
import { tinyModels } from '../fixtures/models.js';
import { spawnCli } from '../proxy/helpers.js';
import { createRole, dropRole, freshDatabase, type TestDatabase } from './helpers.js';

let dir: string;
let models: { generation: string; embedding: string };
const dbs: TestDatabase[] = [];
const roles: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'doctor-'));
  models = await tinyModels();
});

afterAll(async () => {
  for (const r of roles) await dropRole(r, dbs);
  for (const db of dbs) await db.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function fresh(): Promise<TestDatabase> {
  const db = await freshDatabase('st_doctor');
  dbs.push(db);
  return db;
}

/** Runs `pg-steadytext doctor` with the fixture models (an empty model dir: nothing else is found) and a daemon port that is always free. */
async function doctor(args: string[], o: { embeddingModel?: boolean } = {}): Promise<{ code: number | null; output: string; lines: string[] }> {
  const cli = spawnCli(['doctor', '--daemon-listen', '127.0.0.1:0', '--model-dir', join(dir, 'models'),
    '--generation-model', models.generation, ...(o.embeddingModel === false ? [] : ['--embedding-model', models.embedding]), ...args]);
  const code = await new Promise<number | null>((resolve) => cli.child.once('exit', resolve));
  const output = cli.output();
  return { code, output, lines: output.split('\n') };
}

/** The one line of a check (and its subject), e.g. line(r, 'pgvector'). */
function line(r: { lines: string[]; output: string }, check: string, subject?: string): string {
  const found = r.lines.filter((l) => new RegExp(`^\\w+\\s+${check}${subject ? ` \\[${subject}\\]` : '( \\[[^\\]]*\\])?'}:`).test(l));
  expect(found, r.output).toHaveLength(1);
  return found[0];
}

const broken = (r: { lines: string[] }) => r.lines.filter((l) => l.startsWith('broken'));

describe('pg-steadytext doctor', () => {
  it('a healthy setup exits 0: reachable, pgvector and dblink installed, the superuser warned about, SQL objects installed on first use, models loaded', async () => {
    const db = await fresh();
    const r = await doctor(['--upstream', db.url]);
    expect(r.code, r.output).toBe(0);
    expect(broken(r)).toEqual([]);
    expect(line(r, 'upstream', db.name)).toMatch(/^ok\s+upstream .*reachable: PostgreSQL \d+/);
    expect(line(r, 'pgvector')).toMatch(/^ok\s+.*vector [\d.]+ installed/);
    expect(line(r, 'dblink')).toMatch(/^ok\s+.*dblink [\d.]+ installed/);
    // The test cluster's admin role: the same advice as the proxy logs (sql/databases.ts superuserAdvice).
    expect(line(r, 'service role')).toMatch(/^warning\s+.*is a superuser: .*Running with a non-superuser service role/);
    expect(line(r, 'SQL objects')).toMatch(/^ok\s+.*will be installed on first use/);
    expect(line(r, 'callback transport')).toMatch(/^ok\s+.*dblink \(callback_transport auto\)/);
    expect(line(r, 'daemon endpoint')).toMatch(/^ok\s+/);
    expect(line(r, 'model', 'generation:small')).toMatch(/^ok\s+.*generation\.gguf \([\d.]+ MB\) loads: context \d+ tokens/);
    expect(line(r, 'model', 'embedding:small')).toMatch(/^ok\s+.*embedding\.gguf \([\d.]+ MB\) loads: .*1024-dimensional vectors/);
    expect(r.lines).toContain('nothing broken (1 warning)');

    // Installed: this pg-steadytext's version, and the same report as JSON.
    await prepareDatabase(db.url, { advertise: 'never' });
    const j = await doctor(['--upstream', db.url, '--json']);
    expect(j.code, j.output).toBe(0);
    const report = JSON.parse(j.output) as { ok: boolean; broken: number; checks: Array<{ check: string; subject?: string; status: string; message: string }> };
    expect(report.ok).toBe(true);
    expect(report.broken).toBe(0);
    const objects = report.checks.find((c) => c.check === 'SQL objects');
    expect(objects).toMatchObject({ subject: db.name, status: 'ok' });
    expect(objects!.message).toContain(`${SQL_VERSION} installed`);
  });

  it('the upstream unreachable: broken, with the connection error and the settings to check', async () => {
    const u = new URL((await fresh()).url);
    u.port = '1';
    const r = await doctor(['--upstream', u.toString()]);
    expect(r.code, r.output).toBe(1);
    expect(line(r, 'upstream')).toMatch(/^broken\s+upstream .*cannot connect to .*:1\/.*ECONNREFUSED.*--upstream/);
    expect(r.output).toContain(`${u.username}:***@127.0.0.1:1/`); // the password redacted
    expect(broken(r)).toHaveLength(1);
  });

  it('a model file missing: broken, naming the file, where it was looked for and what to set (a default one not downloaded: a warning with the command)', async () => {
    const db = await fresh();
    const missing = join(dir, 'no-such-dir', 'generation.gguf');
    const r = await doctor(['--upstream', db.url, '--generation-model', missing]);
    expect(r.code, r.output).toBe(1);
    expect(line(r, 'model', 'generation:small')).toBe(
      `broken  model [generation:small]: generation model 'small': no file at ${missing}: check the path, or set PGSTEADYTEXT_GENERATION_MODEL (or the generation model option) to an existing .gguf file or an hf: URI`);
    expect(broken(r)).toHaveLength(1);

    // The default embedding model not downloaded: fetched on first use, so a warning with the command that fetches it now.
    const remote = await doctor(['--upstream', db.url], { embeddingModel: false });
    expect(remote.code, remote.output).toBe(0);
    expect(line(remote, 'model', 'embedding:small')).toMatch(new RegExp(
      `^warning\\s+model \\[embedding:small\\]: embedding model 'small' is not downloaded: put hf_Qwen_Qwen3-Embedding-0\\.6B-Q8_0\\.gguf \\(about 639 MB\\) from https://huggingface\\.co/\\S+ into ${join(dir, 'models')}, or run \`pg-steadytext models pull\` where the network allows\\. Without that, it is downloaded on first use`));
    // With --no-download nothing fetches it: steadytext calls fail until it is there.
    const off = await doctor(['--upstream', db.url, '--no-download'], { embeddingModel: false });
    expect(off.code, off.output).toBe(1);
    expect(line(off, 'model', 'embedding:small')).toMatch(/^broken\s+model \[embedding:small\]: embedding model 'small' is not downloaded and downloads are off \(--no-download\): put hf_Qwen_Qwen3-Embedding-0\.6B-Q8_0\.gguf \(about 639 MB\)/);
  });

  it('SQL objects older than this version with auto-install off: broken, with the install command', async () => {
    const db = await fresh();
    const c = await db.connect();
    try {
      await installSql(c, { target: '005_inband' });
    } finally {
      await c.end();
    }
    const r = await doctor(['--upstream', db.url, '--no-auto-install']);
    expect(r.code, r.output).toBe(1);
    expect(line(r, 'SQL objects')).toMatch(new RegExp(`^broken\\s+SQL objects \\[${db.name}\\]: 1\\.4\\.0 installed .*older than this pg-steadytext's ${SQL_VERSION.replaceAll('.', '\\.')}, and auto-install is off: .*pg-steadytext install --database`));
    expect(broken(r)).toHaveLength(1);
    // With auto-install on the same database is only upgraded on first use.
    const on = await doctor(['--upstream', db.url]);
    expect(on.code, on.output).toBe(0);
    expect(line(on, 'SQL objects')).toMatch(new RegExp(`^ok\\s+.*1\\.4\\.0 installed .*upgraded to ${SQL_VERSION.replaceAll('.', '\\.')} on first use`));
  });

  it('pgvector not installed and a service role that cannot create it: broken, with the installer\'s advice', async () => {
    const db = await fresh();
    await db.query('DROP EXTENSION vector');
    const role = await createRole('st_doctor');
    roles.push(role.user);
    // A schema of its own: everything else this role needs is there.
    await db.query(`CREATE SCHEMA st AUTHORIZATION ${role.user}`);
    const r = await doctor(['--upstream', db.urlAs(role.user, role.password), '--schema', 'st']);
    expect(r.code, r.output).toBe(1);
    expect(line(r, 'pgvector')).toMatch(new RegExp(
      `^broken\\s+pgvector \\[${db.name}\\]: pg-steadytext needs pgvector: the "vector" extension is not installed in database "${db.name}" and role "${role.user}" cannot create it .*CREATE EXTENSION vector SCHEMA "st"`));
    expect(line(r, 'service role')).toMatch(/^ok\s+.*is not a superuser/);
    expect(line(r, 'schema')).toMatch(/^ok\s+/);
    expect(broken(r)).toHaveLength(1);
  });

  it('dblink dropped: reported with the in-band transport, not broken (broken once callback_transport names dblink)', async () => {
    const db = await fresh();
    await prepareDatabase(db.url, { advertise: 'never' });
    await db.query('DROP EXTENSION dblink');
    // Auto-install off: a superuser service role would create dblink again on first use.
    const r = await doctor(['--upstream', db.url, '--no-auto-install']);
    expect(r.code, r.output).toBe(0);
    expect(line(r, 'dblink')).toMatch(/^warning\s+dblink .*not installed .*use the in-band transport/);
    expect(line(r, 'callback transport')).toMatch(/^ok\s+.*in-band \(callback_transport auto, no dblink\)/);
    expect(broken(r)).toEqual([]);

    // callback_transport set to dblink without dblink: what the SQL function would raise, and broken.
    await db.query(`SELECT steadytext_config_set('callback_transport', 'dblink')`);
    const pinned = await doctor(['--upstream', db.url, '--no-auto-install']);
    expect(pinned.code, pinned.output).toBe(1);
    expect(line(pinned, 'callback transport')).toMatch(/^broken\s+.*cannot call the pg-steadytext daemon: the dblink extension is not installed in database/);
    expect(broken(pinned)).toHaveLength(1);
  });

  it('--config pgbouncer.ini: each [databases] entry is checked where it sends its clients', async () => {
    const db = await fresh();
    const admin = new URL(db.url);
    const ini = join(dir, 'pgbouncer.ini');
    writeFileSync(ini, [
      '[databases]',
      `app = host=${admin.hostname} port=${admin.port} dbname=${db.name}`,
      `gone = host=127.0.0.1 port=1 dbname=${db.name}`,
      '[pgbouncer]',
      'auth_type = trust',
      '[steadytext]',
      `serviceUrl = ${db.url}`,
    ].join('\n') + '\n');
    const r = await doctor(['--config', ini]);
    expect(r.code, r.output).toBe(1);
    expect(line(r, 'upstream', 'app')).toMatch(new RegExp(`^ok\\s+upstream \\[app\\]: .*/${db.name} reachable`));
    expect(line(r, 'pgvector', 'app')).toMatch(/^ok\s+/);
    expect(line(r, 'upstream', 'gone')).toMatch(/^broken\s+upstream \[gone\]: cannot connect to .*:1\/.*ECONNREFUSED/);
    expect(broken(r)).toHaveLength(1);
  });

  it('with no upstream, it checks the embedded database serve would run, without starting it: its data directory, who serves it', async () => {
    const data = join(dir, 'embedded', 'pgdata');
    const r = await doctor(['--data-dir', data], {});
    expect(r.code, r.output).toBe(0);
    expect(r.lines).toContain('ok      embedded: no --upstream: serve runs the embedded database (PGlite with pgvector)');
    expect(line(r, 'embedded', 'data')).toBe(`ok      embedded [data]: ${data}: created on first start`);
    // A live process's lock: named.
    const held = join(dir, 'held');
    mkdirSync(held);
    writeFileSync(join(held, 'PG_VERSION'), '18\n');
    writeFileSync(join(held, 'pg-steadytext.pid'), `${process.pid}\n`);
    expect(line(await doctor(['--data-dir', held]), 'embedded', 'data')).toBe(`ok      embedded [data]: ${held}: a database, served now by process ${process.pid}`);
    // A file where a directory must be: broken, exit status 1.
    writeFileSync(join(dir, 'plain-file'), '');
    const bad = await doctor(['--data-dir', join(dir, 'plain-file', 'pgdata')]);
    expect(bad.code).toBe(1);
    expect(line(bad, 'embedded', 'data')).toMatch(/^broken\s+.*plain-file is a file, not a directory; give --data-dir a directory/);
  });
});
