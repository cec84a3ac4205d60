// Issue 10, items 11 and 3. The seed's signatures, written out as the seed documents them, work in
// GRANT, REVOKE, COMMENT and ALTER FUNCTION through the proxy (no hidden trailing argument). A
// configuration change made inside the client's open transaction decides that transaction's calls, and
// nothing after a ROLLBACK. Managing the models is not for every role: a plain role gets 42501 from
// steadytext_config_set and steadytext_daemon_start/stop/restart, through both protocols, and the
// models stay loaded; a role that was granted daemon_stop and then had it revoked cannot unload them.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type pg from 'pg';
import { startStack, type Stack } from '../api/helpers.js';
import { createRole, direct, dropRoles, generate, installed, outcome, sqlstate } from './helpers.js';

let s: Stack;
let su: pg.Client; // superuser through the proxy
let role: { user: string; password: string };
const roles: string[] = [];

beforeAll(async () => {
  s = await startStack('st_grants');
  await installed(s);
  su = await s.connect();
  role = await createRole('st_grantee');
  roles.push(role.user);
  await su.query(`SELECT steadytext_config_set('default_max_tokens', '9')`);
});
afterAll(async () => {
  await s?.stop();
  await dropRoles(...roles);
});

// The signatures as the seed document writes them (pg_steadytext.md, "SQL API"), and as PostgreSQL names them.
const SEED_SIGNATURES: [string, string][] = [
  ['steadytext_generate(TEXT, INT, INT, FLOAT, TEXT)', 'steadytext_generate(text,integer,integer,double precision,text)'],
  ['steadytext_generate(prompt TEXT, max_tokens INT, seed INT, temperature FLOAT, model_size TEXT)', 'steadytext_generate(text,integer,integer,double precision,text)'],
  ['steadytext_embed(TEXT, INT, TEXT)', 'steadytext_embed(text,integer,text)'],
  ['steadytext_embed(text TEXT, seed INT, model_size TEXT)', 'steadytext_embed(text,integer,text)'],
  ['steadytext_generate_stream(TEXT, INT, INT)', 'steadytext_generate_stream(text,integer,integer)'],
  ['steadytext_daemon_status()', 'steadytext_daemon_status()'],
  ['steadytext_daemon_start()', 'steadytext_daemon_start()'],
  ['steadytext_daemon_stop()', 'steadytext_daemon_stop()'],
  ['steadytext_daemon_restart()', 'steadytext_daemon_restart()'],
  ['steadytext_config_get(TEXT)', 'steadytext_config_get(text)'],
  ['steadytext_config_set(TEXT, TEXT)', 'steadytext_config_set(text,text)'],
  ['steadytext_config_set(key TEXT, value TEXT)', 'steadytext_config_set(text,text)'],
  ['steadytext_version()', 'steadytext_version()'],
  ['steadytext_model_info()', 'steadytext_model_info()'],
];

const may = async (user: string, sig: string): Promise<boolean> =>
  (await direct<{ ok: boolean }>(s, `SELECT has_function_privilege($1, $2, 'EXECUTE') AS ok`, [user, sig]))[0].ok;

describe('the seed\'s signatures in GRANT, REVOKE, COMMENT and ALTER FUNCTION', () => {
  test.each(SEED_SIGNATURES)('%s', async (sig, canonical) => {
    await su.query(`GRANT EXECUTE ON FUNCTION ${sig} TO ${role.user}`);
    expect(await may(role.user, canonical)).toBe(true);
    await su.query(`REVOKE EXECUTE ON FUNCTION ${sig} FROM ${role.user}`);
    await su.query(`REVOKE EXECUTE ON FUNCTION ${sig} FROM PUBLIC`);
    expect(await may(role.user, canonical)).toBe(false);
    await su.query(`GRANT EXECUTE ON FUNCTION ${sig} TO PUBLIC`);
    expect(await may(role.user, canonical)).toBe(true);
    await su.query(`COMMENT ON FUNCTION ${sig} IS 'commented through the proxy'`);
    expect((await direct(s, `SELECT obj_description($1::regprocedure, 'pg_proc') AS d`, [canonical]))[0].d).toBe('commented through the proxy');
    const cost = (await direct(s, `SELECT procost FROM pg_proc WHERE oid = $1::regprocedure`, [canonical]))[0].procost as number;
    await su.query(`ALTER FUNCTION ${sig} COST 4242`);
    expect((await direct(s, `SELECT procost FROM pg_proc WHERE oid = $1::regprocedure`, [canonical]))[0].procost).toBe(4242);
    await su.query(`ALTER FUNCTION ${sig} COST ${cost}`);
    await su.query(`COMMENT ON FUNCTION ${sig} IS NULL`);
    // Back to what the install set: management and configuration are not PUBLIC.
    if (/daemon_(start|stop|restart)|config_set/.test(canonical)) await su.query(`REVOKE EXECUTE ON FUNCTION ${sig} FROM PUBLIC`);
  });

  test('the seed\'s own examples, by name alone', async () => {
    for (const sql of [
      `GRANT EXECUTE ON FUNCTION steadytext_generate TO ${role.user}`,
      `GRANT EXECUTE ON FUNCTION steadytext_embed TO ${role.user}`,
      `REVOKE EXECUTE ON FUNCTION steadytext_daemon_stop FROM ${role.user}`,
      `REVOKE EXECUTE ON FUNCTION steadytext_config_set FROM ${role.user}`,
    ]) await su.query(sql);
    expect(await may(role.user, 'steadytext_generate(text,integer,integer,double precision,text)')).toBe(true);
    expect(await may(role.user, 'steadytext_daemon_stop()')).toBe(false);
  });
});

describe('a configuration change inside the client\'s transaction', () => {
  test('decides the calls of that transaction, and nothing after ROLLBACK', async () => {
    const x9 = await generate(s, 'in a transaction', 9);
    const x5 = await generate(s, 'in a transaction', 5);
    expect(x5).not.toBe(x9);
    expect((await su.query(`SELECT steadytext_generate('in a transaction') AS t`)).rows[0].t).toBe(x9);
    await su.query('BEGIN');
    try {
      await su.query(`SELECT steadytext_config_set('default_max_tokens', '5')`);
      expect((await su.query(`SELECT steadytext_generate('in a transaction') AS t`)).rows[0].t).toBe(x5);
      expect((await su.query(`SELECT steadytext_generate($1) AS t`, ['in a transaction'])).rows[0].t).toBe(x5);
      expect((await su.query(`SELECT string_agg(c, '') AS t FROM steadytext_generate_stream('in a transaction') AS c`)).rows[0].t).toBe(x5);
      expect((await su.query(`SELECT * FROM steadytext_generate_stream('in a transaction') AS c`)).rows.map((r) => r.c).join('')).toBe(x5);
    } finally {
      await su.query('ROLLBACK');
    }
    expect((await su.query(`SELECT steadytext_generate('in a transaction') AS t`)).rows[0].t).toBe(x9);
    expect((await su.query(`SELECT steadytext_config_get('default_max_tokens') AS v`)).rows[0].v).toBe('9');
    // Another session's committed change, on the other hand, applies to the next call.
    const other = await s.connect();
    await other.query(`SELECT steadytext_config_set('default_max_tokens', '5')`);
    try {
      expect((await su.query(`SELECT steadytext_generate('in a transaction') AS t`)).rows[0].t).toBe(x5);
    } finally {
      await other.query(`SELECT steadytext_config_set('default_max_tokens', '9')`);
    }
  });
});

describe('managing the models is not for every role', () => {
  const generation = () => s.engine.status().models.filter((m) => m.role === 'generation').map((m) => m.state);

  test('a plain role gets 42501 from config_set and daemon start/stop/restart; the models stay loaded', async () => {
    await generate(s, 'load the model', 2);
    const loaded = generation();
    expect(s.engine.status().running).toBe(true);
    const plain = await s.connect(s.url(role.user, role.password));
    for (const sql of [
      `SELECT steadytext_daemon_stop()`, `SELECT steadytext_daemon_restart()`, `SELECT steadytext_daemon_start()`,
      `SELECT steadytext_config_set('default_max_tokens', '1')`, `SELECT steadytext_config_set('daemon_auto_start', 'false')`,
      `SELECT * FROM steadytext_daemon_stop()`, `SELECT 1 WHERE steadytext_daemon_stop()`,
    ]) {
      expect(await sqlstate(plain.query(sql)), sql).toBe('42501');
      expect(await sqlstate(plain.query({ name: `n${Math.random().toString(36).slice(2)}`, text: sql })), `${sql} (extended)`).toBe('42501');
      expect(s.engine.status().running, sql).toBe(true);
      expect(generation(), sql).toEqual(loaded);
    }
    // A call the planner removes is not a way around it either.
    await plain.query(`SELECT 1 WHERE true OR steadytext_daemon_stop()`);
    expect(s.engine.status().running).toBe(true);
    expect(generation()).toEqual(loaded);
    expect((await direct(s, `SELECT value FROM steadytext_config WHERE key = 'default_max_tokens'`))[0].value).toMatch(/^"?9"?$/);
    // Reading stays open.
    expect((await plain.query('SELECT running FROM steadytext_daemon_status()')).rows).toEqual([{ running: true }]);
    expect((await plain.query('SELECT count(*)::int AS n FROM steadytext_model_info()')).rows[0].n).toBeGreaterThan(0);
  });

  test('GRANTed daemon_stop stops the models; REVOKEd again, it does not', async () => {
    const u = await createRole('st_operator');
    roles.push(u.user);
    await su.query(`GRANT EXECUTE ON FUNCTION steadytext_daemon_stop() TO ${u.user}`);
    const op = await s.connect(s.url(u.user, u.password));
    try {
      expect((await op.query('SELECT steadytext_daemon_stop() AS ok')).rows).toEqual([{ ok: true }]);
      expect(s.engine.status().running).toBe(false);
    } finally {
      expect((await su.query('SELECT steadytext_daemon_start() AS ok')).rows).toEqual([{ ok: true }]);
    }
    expect(s.engine.status().running).toBe(true);
    await generate(s, 'load the model again', 2);
    const loaded = generation();
    await su.query(`REVOKE EXECUTE ON FUNCTION steadytext_daemon_stop() FROM ${u.user}`);
    expect(await sqlstate(op.query('SELECT steadytext_daemon_stop()'))).toBe('42501');
    expect(await sqlstate(op.query({ name: 'stop_again', text: 'SELECT steadytext_daemon_stop()' }))).toBe('42501');
    expect(s.engine.status().running).toBe(true);
    expect(generation()).toEqual(loaded);
    const r = await outcome(op.query(`SELECT steadytext_generate('still served', 3) AS t`));
    expect(r).toEqual({ ok: expect.objectContaining({ rows: [{ t: await generate(s, 'still served', 3) }] }) });
  });
});
