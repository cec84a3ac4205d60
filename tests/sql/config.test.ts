// steadytext_config_get / steadytext_config_set: validation, normalisation, NOTIFY, privileges.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { installSql } from '../../sql/install.js';
import { createRole, dropRole, freshDatabase, pgError, type TestDatabase } from './helpers.js';

let db: TestDatabase;
let c: pg.Client;
beforeAll(async () => {
  db = await freshDatabase('st_config');
  c = await db.connect();
  await installSql(c);
});
afterAll(() => db?.drop());

const get = async (key: string) => (await c.query('SELECT steadytext_config_get($1) AS v', [key])).rows[0].v as string | null;
const set = (key: string, value: string | null) => c.query('SELECT steadytext_config_set($1, $2)', [key, value]);

describe('steadytext_config_get', () => {
  it('reads values, NULL for unknown keys', async () => {
    expect(await get('daemon_port')).toBe('5557');
    expect(await get('default_model_size')).toBe('small');
    expect(await get('no_such_key')).toBeNull();
  });
});

describe('steadytext_config_set', () => {
  it('accepts valid values, normalised', async () => {
    const cases: Array<[string, string, string]> = [
      ['daemon_port', '6543', '6543'],
      ['daemon_port', '65535', '65535'],
      ['daemon_host', '10.0.0.7', '10.0.0.7'],
      ['daemon_host', 'proxy.internal', 'proxy.internal'],
      ['daemon_host', '::1', '::1'],
      ['daemon_host', ' localhost ', 'localhost'],
      ['daemon_timeout_ms', '5000', '5000'],
      ['default_max_tokens', '+1024', '1024'],
      ['default_seed', '0', '0'],
      ['default_seed', '2147483647', '2147483647'],
      ['default_model_size', 'large', 'large'],
      ['default_model_size', 'qwen3-4b:q8', 'qwen3-4b:q8'],
      ['cache_enabled', 'ON', 'true'],
      ['cache_enabled', 'no', 'false'],
      ['debug_mode', 'TRUE', 'true'],
      ['daemon_auto_start', '0', 'false'],
      ['cache_ttl_seconds', '60', '60'],
      ['connection_pool_size', '10', '10'],
    ];
    for (const [key, value, stored] of cases) {
      await set(key, value);
      expect(await get(key), `${key}=${value}`).toBe(stored);
    }
  });

  it('rejects nonsense with 22023 and says what is allowed', async () => {
    const cases: Array<[string, string | null, RegExp]> = [
      ['daemon_port', '-1', /daemon_port must be an integer from 1 to 65535, got '-1'/],
      ['daemon_port', '0', /from 1 to 65535/],
      ['daemon_port', '70000', /from 1 to 65535/],
      ['daemon_port', 'http', /from 1 to 65535/],
      ['daemon_port', null, /daemon_port cannot be NULL/],
      ['daemon_host', 'two words', /daemon_host must be a host name, an IP address or an absolute Unix-socket directory/],
      ['daemon_host', "x' password='y", /daemon_host must be/],
      ['daemon_host', '', /daemon_host must be/],
      ['daemon_timeout_ms', '0', /daemon_timeout_ms must be a positive integer/],
      ['default_max_tokens', '-5', /default_max_tokens must be a positive integer/],
      ['default_max_tokens', '1.5', /positive integer/],
      ['default_max_tokens', '99999999999', /positive integer \(1 to 2147483647\)/],
      ['cache_ttl_seconds', 'forever', /positive integer/],
      ['connection_pool_size', '0', /positive integer/],
      ['default_seed', '-1', /default_seed must be an integer from 0 to 2147483647/],
      ['default_seed', '2147483648', /from 0 to 2147483647/],
      ['default_model_size', 'very large', /default_model_size must be small, large or a model name/],
      ['cache_enabled', 'maybe', /cache_enabled must be true or false, got 'maybe'/],
      ['debug_mode', '', /debug_mode must be true or false/],
    ];
    for (const [key, value, message] of cases) {
      const e = await pgError(set(key, value));
      expect(e.code, `${key}=${value}`).toBe('22023');
      expect(e.message, `${key}=${value}`).toMatch(message);
    }
    expect((await pgError(set('', 'x'))).code).toBe('22023');
    expect((await pgError(set(null as unknown as string, 'x'))).code).toBe('22023');
    expect(await get('daemon_port')).toBe('65535'); // unchanged by the failures
  });

  it('allows unknown keys, as the seed\'s monitoring view reads cache_hit_rate', async () => {
    await set('cache_hit_rate', '0.93');
    expect(await get('cache_hit_rate')).toBe('0.93');
    expect((await c.query(`SELECT value FROM steadytext_config WHERE key = 'cache_hit_rate'`)).rows[0].value).toBe('0.93');
  });

  it('stamps updated_at and notifies steadytext_config listeners with the key at commit', async () => {
    const listener = await db.connect();
    const got: Array<{ channel: string; payload?: string }> = [];
    listener.on('notification', (n) => got.push({ channel: n.channel, payload: n.payload }));
    await listener.query('LISTEN steadytext_config');
    const before = (await c.query(`SELECT updated_at FROM steadytext_config WHERE key = 'default_seed'`)).rows[0].updated_at as Date;
    await c.query('BEGIN');
    await set('default_seed', '123');
    // A round trip on the listener: a notification sent already would have reached it before this answer.
    await listener.query('SELECT 1');
    expect(got).toEqual([]); // not before commit
    got.push({ channel: '(COMMIT sent)' });
    await c.query('COMMIT');
    await expect.poll(() => got, { timeout: 5_000 }).toHaveLength(2);
    expect(got).toEqual([{ channel: '(COMMIT sent)' }, { channel: 'steadytext_config', payload: 'default_seed' }]);
    const after = (await c.query(`SELECT updated_at FROM steadytext_config WHERE key = 'default_seed'`)).rows[0].updated_at as Date;
    expect(after.getTime()).toBeGreaterThan(before.getTime());
    await listener.end();
  });

  it('any role reads the config; setting it and starting or stopping the models takes EXECUTE the owner grants (42501 otherwise); none writes the table', async () => {
    const role = await createRole('st_cfg');
    const u = await db.connect(db.urlAs(role.user, role.password));
    try {
      // Reading stays open.
      expect((await u.query(`SELECT steadytext_config_get('daemon_host') AS v`)).rows[0].v).toBe('localhost');
      expect((await u.query(`SELECT count(*)::int AS n FROM steadytext_config`)).rows[0].n).toBeGreaterThanOrEqual(11);
      expect((await u.query(`SELECT steadytext_version() AS v`)).rows[0].v).toMatch(/^\d+\.\d+\.\d+$/);
      expect((await u.query(`SELECT running FROM steadytext_daemon_status()`)).rows[0].running).toBe(false);
      expect((await u.query(`SELECT * FROM steadytext_model_info()`)).rows).toEqual([]);

      // Administration does not (issue 10 item 3): the check comes before any work, the daemon is never asked.
      const before = await get('default_max_tokens');
      for (const sql of [
        `SELECT steadytext_config_set('default_max_tokens', '256')`,
        `SELECT steadytext_config_set('no_such_key', 'x')`,
        'SELECT steadytext_daemon_start()',
        'SELECT steadytext_daemon_stop()',
        'SELECT steadytext_daemon_restart()',
      ]) {
        const e = await pgError(u.query(sql));
        expect(e.code, sql).toBe('42501');
        expect(e.message, sql).toMatch(/^permission denied for function steadytext_(config_set|daemon_(start|stop|restart))$/);
      }
      expect(await get('default_max_tokens')).toBe(before);
      expect(await get('no_such_key')).toBeNull();

      // The owner grants it.
      await db.query(`GRANT EXECUTE ON FUNCTION steadytext_config_set(text, text) TO ${role.user}`);
      await u.query(`SELECT steadytext_config_set('default_max_tokens', '256')`);
      expect(await get('default_max_tokens')).toBe('256');
      // Only the function: the table itself stays the owner's.
      for (const sql of [`UPDATE steadytext_config SET value = '1'`, `INSERT INTO steadytext_config (key, value) VALUES ('x', 'y')`, 'DELETE FROM steadytext_config']) {
        expect((await pgError(u.query(sql))).code, sql).toBe('42501');
      }
      // The daemon address receives the secret: EXECUTE is not enough, only the owner's members may move it.
      for (const key of ['daemon_host', 'daemon_port']) {
        const e = await pgError(u.query(`SELECT steadytext_config_set($1, '9999')`, [key]));
        expect(e.code, key).toBe('42501');
        expect(e.message).toMatch(new RegExp(`only members of role postgres may change ${key}`));
      }
      expect(await get('daemon_port')).not.toBe('9999');
      await db.query(`GRANT postgres TO ${role.user}`);
      await u.query(`SELECT steadytext_config_set('daemon_port', '9999')`);
      await db.query(`REVOKE postgres FROM ${role.user}`);
      expect(await get('daemon_port')).toBe('9999');

      // And takes it back.
      await db.query(`REVOKE EXECUTE ON FUNCTION steadytext_config_set(text, text) FROM ${role.user}`);
      expect((await pgError(u.query(`SELECT steadytext_config_set('default_max_tokens', '1')`))).code).toBe('42501');
      expect(await get('default_max_tokens')).toBe('256');

      // The same for the models: a granted role gets past the privilege check (to the daemon, absent here).
      await db.query(`GRANT EXECUTE ON FUNCTION steadytext_daemon_stop() TO ${role.user}`);
      await db.query(`SELECT steadytext_config_set('daemon_port', '1')`);
      const e = await pgError(u.query('SELECT steadytext_daemon_stop()'));
      expect(e.code).not.toBe('42501');
      expect(e.message).toMatch(/^steadytext_daemon_stop (could not reach|cannot call) the pg-steadytext daemon/);
      expect((await pgError(u.query('SELECT steadytext_daemon_start()'))).code).toBe('42501');
    } finally {
      await u.end();
      await dropRole(role.user, [db]);
    }
  });
});
