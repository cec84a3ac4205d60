import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import pg from 'pg';
import { createHash, createHmac, pbkdf2Sync } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import {
  loadPgBouncerConfig,
  matchHba,
  parseHbaFile,
  parseSecret,
  PgBouncerConfigError,
  readAuthFile,
  type HbaRule,
  type Secret,
} from '../../config/pgbouncer.js';

const root = mkdtempSync(join(tmpdir(), 'pgst-pgbouncer-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
/** A fresh directory with these files (name → text); returns its path. */
function files(contents: Record<string, string>): string {
  const dir = join(root, String(++n));
  for (const [name, text] of Object.entries(contents)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}
/** Loads this ini (the text of pgbouncer.ini, beside other files); returns the config and the ini's path. */
function load(ini: string, others: Record<string, string> = {}) {
  const dir = files({ 'pgbouncer.ini': ini, ...others });
  const file = join(dir, 'pgbouncer.ini');
  return { config: loadPgBouncerConfig(file), file, dir };
}
/** The PgBouncerConfigError that f throws. */
function errorOf(f: () => unknown): PgBouncerConfigError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PgBouncerConfigError);
    expect((e as Error).name).toBe('PgBouncerConfigError');
    return e as PgBouncerConfigError;
  }
  throw new Error('expected a PgBouncerConfigError, nothing was thrown');
}
const row = (config: ReturnType<typeof loadPgBouncerConfig>, key: string) => config.settings.all.find((r) => r.key === key);

describe('a production-style pgbouncer.ini', () => {
  test('reads whole: sections, includes, auth_file, our own section, no warnings', () => {
    const dir = files({
      'userlist.txt': '"app" "md5d0a5b4c7e3f21908a6b5c4d3e2f1a0b9"\n"admin" "adminpass"\n"stats" "statspass"\n',
      'pgbouncer.d/tenants.ini': [
        '; one line per tenant, generated',
        'tenant_a = host=10.1.0.11 port=5432 dbname=tenant_a pool_size=10',
        'tenant_b = host=10.1.0.12 port=5432 dbname=tenant_b pool_size=10 pool_mode=session',
      ].join('\n'),
    });
    const ini = [
      ';; pgbouncer.ini for the app cluster',
      '[databases]',
      'app = host=10.1.0.10 port=5432 dbname=app',
      "app_ro = host=10.1.0.20,10.1.0.21 dbname=app load_balance_hosts=round-robin application_name='app (ro)'",
      'reporting = host=10.1.0.30 dbname=warehouse user=reporter password=s3cret pool_size=4 pool_mode=session',
      '%include pgbouncer.d/tenants.ini',
      '* = host=10.1.0.10 port=5432 auth_user=pgbouncer_auth',
      '',
      '[users]',
      'batch = pool_mode=session max_user_connections=5',
      '',
      '[pgbouncer]',
      'logfile = /var/log/pgbouncer/pgbouncer.log',
      'pidfile = /run/pgbouncer/pgbouncer.pid',
      'listen_addr = *',
      'listen_port = 6432',
      'unix_socket_dir = /run/postgresql',
      'auth_type = scram-sha-256',
      `auth_file = ${join(dir, 'userlist.txt')}`,
      'auth_user = pgbouncer_auth',
      'auth_query = SELECT usename, passwd FROM pgbouncer.user_lookup($1)',
      'admin_users = admin',
      'stats_users = stats, monitoring',
      'pool_mode = transaction',
      'max_client_conn = 2000',
      'default_pool_size = 25',
      'min_pool_size = 5',
      'reserve_pool_size = 5',
      'reserve_pool_timeout = 3',
      'max_db_connections = 100',
      'server_reset_query =',
      'server_check_delay = 10',
      'server_lifetime = 1800',
      'server_idle_timeout = 300',
      'query_wait_timeout = 60',
      'idle_transaction_timeout = 600',
      'max_prepared_statements = 100',
      'ignore_startup_parameters = extra_float_digits,search_path',
      'client_tls_sslmode = prefer',
      'client_tls_key_file = /etc/pgbouncer/server.key',
      'client_tls_cert_file = /etc/pgbouncer/server.crt',
      'server_tls_sslmode = require',
      'log_connections = 0',
      'log_disconnections = 0',
      'stats_period = 30',
      '',
      '[steadytext]',
      'upstream = postgres://10.1.0.10:5432/app',
      'model-dir = /var/lib/pg-steadytext/models',
    ].join('\n');
    writeFileSync(join(dir, 'pgbouncer.ini'), ini);
    const config = loadPgBouncerConfig(join(dir, 'pgbouncer.ini'));
    expect(config.warnings).toEqual([]);
    expect([...config.databases.keys()]).toEqual(['app', 'app_ro', 'reporting', 'tenant_a', 'tenant_b', '*']);
    expect(config.databases.get('app_ro')).toMatchObject({
      host: '10.1.0.20,10.1.0.21',
      loadBalanceHosts: 'round-robin',
      applicationName: 'app (ro)',
    });
    expect(config.databases.get('reporting')).toMatchObject({ user: 'reporter', password: 's3cret', poolSize: 4, poolMode: 'session' });
    expect(config.databases.get('tenant_b')).toMatchObject({ host: '10.1.0.12', poolMode: 'session' });
    expect(config.databases.get('*')).toMatchObject({ host: '10.1.0.10', port: 5432, authUser: 'pgbouncer_auth' });
    expect(config.users.get('batch')).toEqual({ name: 'batch', poolMode: 'session', maxUserConnections: 5 });
    const s = config.settings;
    expect(s).toMatchObject({
      listenAddr: '*',
      unixSocketDir: '/run/postgresql',
      authType: 'scram-sha-256',
      authUser: 'pgbouncer_auth',
      authQuery: 'SELECT usename, passwd FROM pgbouncer.user_lookup($1)',
      adminUsers: ['admin'],
      statsUsers: ['stats', 'monitoring'],
      poolMode: 'transaction',
      maxClientConn: 2000,
      defaultPoolSize: 25,
      minPoolSize: 5,
      reservePoolSize: 5,
      reservePoolTimeout: 3,
      maxDbConnections: 100,
      serverResetQuery: '',
      serverLifetime: 1800,
      queryWaitTimeout: 60,
      idleTransactionTimeout: 600,
      maxPreparedStatements: 100,
      ignoreStartupParameters: ['extra_float_digits', 'search_path'],
      clientTlsSslmode: 'prefer',
      serverTlsSslmode: 'require',
      logConnections: false,
      statsPeriod: 30,
    });
    expect([...config.authFile.keys()]).toEqual(['app', 'admin', 'stats']);
    expect(config.authFile.get('app')).toEqual({ kind: 'md5', hash: 'md5d0a5b4c7e3f21908a6b5c4d3e2f1a0b9' });
    expect(config.steadytext).toEqual({ upstream: 'postgres://10.1.0.10:5432/app', modelDir: '/var/lib/pg-steadytext/models' });
    expect(config.hba).toBeNull();
    expect([...config.peers]).toEqual([]);
  });
});

describe('[pgbouncer] settings', () => {
  test("defaults are pgBouncer 1.24's, and SHOW CONFIG has every setting in its order", () => {
    const { config, file } = load('[pgbouncer]\n');
    const s = config.settings;
    expect(s.maxClientConn).toBe(100);
    expect(s.defaultPoolSize).toBe(20);
    expect(s.maxPreparedStatements).toBe(200);
    expect(s.serverResetQuery).toBe('DISCARD ALL');
    expect(s.serverResetQueryAlways).toBe(false);
    expect(s.queryWaitTimeout).toBe(120);
    expect(s.authType).toBe('md5');
    expect(s.poolMode).toBe('session');
    expect(s.listenPort).toBe(6432);
    expect(s.listenAddr).toBe('');
    expect(s.unixSocketDir).toBe('/tmp');
    expect(s.unixSocketMode).toBe(0o777);
    expect(s.serverLifetime).toBe(3600);
    expect(s.serverIdleTimeout).toBe(600);
    expect(s.serverCheckQuery).toBe('select 1');
    expect(s.serverTlsSslmode).toBe('prefer');
    expect(s.clientTlsSslmode).toBe('disable');
    expect(s.trackExtraParameters).toEqual(['IntervalStyle']);
    expect(s.maxPacketSize).toBe(2147483647);
    expect(s.pktBuf).toBe(4096);
    expect(s.logConnections).toBe(true);
    expect(s.tcpKeepalive).toBe(true);
    expect(s.authFile).toBe('');
    expect(s.authQuery).toBe(
      'SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin',
    );
    expect(s.conffile).toBe(file);
    expect(config.file).toBe(file);

    expect(s.all).toHaveLength(92);
    const keys = s.all.map((r) => r.key);
    expect(keys.slice(0, 4)).toEqual(['admin_users', 'application_name_add_host', 'auth_dbname', 'auth_file']);
    // pgBouncer's table is alphabetical but for these: SHOW CONFIG keeps its order.
    expect(keys.indexOf('cancel_wait_timeout')).toBe(keys.indexOf('query_wait_timeout') + 1);
    expect(keys.indexOf('max_db_client_connections')).toBe(keys.indexOf('max_db_connections') + 1);
    expect(keys.at(-1)).toBe('verbose');
    expect(keys).not.toContain('service_name'); // Windows only
    expect(row(config, 'listen_port')).toEqual({ key: 'listen_port', value: '6432', default: '6432', changeable: false });
    expect(row(config, 'pool_mode')).toEqual({ key: 'pool_mode', value: 'session', default: 'session', changeable: true });
    expect(row(config, 'unix_socket_mode')).toEqual({ key: 'unix_socket_mode', value: '511', default: '0777', changeable: false });
    expect(row(config, 'auth_file')).toEqual({ key: 'auth_file', value: '', default: '', changeable: true });
    expect(row(config, 'verbose')).toEqual({ key: 'verbose', value: '0', default: '', changeable: true });
    expect(s.all.filter((r) => !r.changeable).map((r) => r.key)).toEqual([
      'disable_pqexec',
      'job_name',
      'listen_addr',
      'listen_backlog',
      'listen_port',
      'pidfile',
      'pkt_buf',
      'resolv_conf',
      'so_reuseport',
      'track_extra_parameters',
      'unix_socket_dir',
      'unix_socket_group',
      'unix_socket_mode',
      'user',
    ]);
    expect(config.warnings).toEqual([]);
  });

  test('values are typed, and printed as pgBouncer 1.24.1 printed them in SHOW CONFIG for this ini', () => {
    const { config } = load(
      [
        '[pgbouncer]',
        'query_wait_timeout = 0.5',
        'server_lifetime = 1e3',
        'server_idle_timeout = 1234567',
        'reserve_pool_timeout = 0.0000015',
        'default_pool_size = 0x10',
        'max_client_conn = 010',
        'log_stats = 2',
        'pool_mode = Transaction',
        'client_tls_sslmode = DISABLE',
        'max_packet_size = 4294967295',
        'ignore_startup_parameters = extra_float_digits, options',
      ].join('\n'),
    );
    const s = config.settings;
    const shown = (k: string) => row(config, k)?.value;
    expect([s.queryWaitTimeout, shown('query_wait_timeout')]).toEqual([0.5, '0.5']);
    expect([s.serverLifetime, shown('server_lifetime')]).toEqual([1000, '1000']);
    expect([s.serverIdleTimeout, shown('server_idle_timeout')]).toEqual([1234567, '1.23457e+06']);
    expect([s.reservePoolTimeout, shown('reserve_pool_timeout')]).toEqual([0.000001, '1e-06']);
    expect([s.defaultPoolSize, shown('default_pool_size')]).toEqual([16, '16']);
    expect([s.maxClientConn, shown('max_client_conn')]).toEqual([8, '8']);
    expect([s.logStats, shown('log_stats')]).toEqual([true, '2']);
    expect([s.poolMode, shown('pool_mode')]).toEqual(['transaction', 'transaction']);
    expect([s.clientTlsSslmode, shown('client_tls_sslmode')]).toEqual(['disable', 'disable']);
    expect([s.maxPacketSize, shown('max_packet_size')]).toEqual([4294967295, '4294967295']);
    expect([s.ignoreStartupParameters, shown('ignore_startup_parameters')]).toEqual([
      ['extra_float_digits', 'options'],
      'extra_float_digits, options',
    ]);
  });

  test('booleans take 0/1, on/off, true/false, yes/no; lists take commas and spaces; quoted values lose their quotes', () => {
    const { config } = load(
      [
        '[pgbouncer]',
        'log_connections = off',
        'log_disconnections = No',
        'server_round_robin = TRUE',
        'so_reuseport = yes',
        'server_fast_close = 1',
        'log_pooler_errors = 0',
        'admin_users = alice, bob  carol,dave',
        'stats_users =',
        'server_reset_query = "RESET ALL; SET a = ""b"""',
        "server_check_query = 'select 2'",
        'auth_user = "it" "s"', // not one quoted string: kept as written
      ].join('\n'),
    );
    const s = config.settings;
    expect([s.logConnections, s.logDisconnections, s.serverRoundRobin, s.soReuseport, s.serverFastClose, s.logPoolerErrors]).toEqual([
      false,
      false,
      true,
      true,
      true,
      false,
    ]);
    expect(row(config, 'log_connections')?.value).toBe('0');
    expect(row(config, 'so_reuseport')?.value).toBe('1');
    expect(s.adminUsers).toEqual(['alice', 'bob', 'carol', 'dave']);
    expect(s.statsUsers).toEqual([]);
    expect(s.serverResetQuery).toBe('RESET ALL; SET a = "b"');
    expect(s.serverCheckQuery).toBe('select 2');
    expect(s.authUser).toBe('"it" "s"');
  });

  test('a second [pgbouncer] header returns what came before to the defaults, as pgBouncer does, with a warning', () => {
    const { config, file } = load('[pgbouncer]\nmax_client_conn = 77\nlisten_port = 7000\n[databases]\n[pgbouncer]\ndefault_pool_size = 5\n');
    expect(config.settings.maxClientConn).toBe(100);
    expect(config.settings.listenPort).toBe(6432);
    expect(config.settings.defaultPoolSize).toBe(5);
    expect(config.warnings).toEqual([
      `${file} line 5: [pgbouncer] again: as in pgBouncer, the settings given before return to their defaults (max_client_conn, listen_port)`,
    ]);
  });

  test('unknown keys are warnings and ignored', () => {
    const { config, file } = load('[pgbouncer]\nlisten_port = 7001\nmax_client_connections = 5\nservice_name = x\n[steadytext]\nmodel-dri = /x\n');
    expect(config.settings.listenPort).toBe(7001);
    expect(config.settings.maxClientConn).toBe(100);
    expect(config.warnings).toEqual([
      `${file} line 3: unknown setting "max_client_connections" in [pgbouncer], ignored`,
      `${file} line 4: unknown setting "service_name" in [pgbouncer], ignored`,
      `${file} line 6: unknown setting "model-dri" in [steadytext], ignored`,
    ]);
    expect(config.steadytext).toEqual({});
  });
});

describe('ini syntax', () => {
  test('comments, blank and indented lines, spaces around =, CRLF, a comment after a section header', () => {
    const { config } = load(
      [
        '; a comment',
        '# another',
        '',
        '   [pgbouncer]   ; the main section',
        '\tlisten_port=7002   ',
        '  listen_addr   =   127.0.0.1  ',
        'logfile = /var/log/x.log ; not a comment here',
        '[databases]',
        'db.1-x = host=h1',
      ].join('\r\n'),
    );
    expect(config.settings.listenPort).toBe(7002);
    expect(config.settings.listenAddr).toBe('127.0.0.1');
    // pgBouncer takes ; and # as comments only at the start of a line.
    expect(config.settings.logfile).toBe('/var/log/x.log ; not a comment here');
    expect(config.databases.get('db.1-x')?.host).toBe('h1');
  });

  test('%include: relative to the including file, nested, sections carry across files', () => {
    const { config } = load('[pgbouncer]\nlisten_port = 7003\n%include conf.d/dbs.ini\nfoo = host=after\n[pgbouncer]\n', {
      'conf.d/dbs.ini': '[databases]\nbar = host=h2\n%include ../more/users.ini\n',
      'more/users.ini': '%include  \tdeeper.ini  \n[users]\nu1 = pool_size=3\n[databases]\n',
      'more/deeper.ini': '[databases]\nbaz = host=h3\n',
    });
    expect(config.settings.listenPort).toBe(6432); // reset by the second [pgbouncer], as in pgBouncer
    expect([...config.databases.keys()]).toEqual(['bar', 'baz', 'foo']);
    expect(config.databases.get('foo')?.host).toBe('after'); // [databases] from more/users.ini still open
    expect(config.users.get('u1')?.poolSize).toBe(3);
  });

  test('%include cycles, missing files and too deep nesting are errors naming the line', () => {
    const a = files({ 'pgbouncer.ini': '[pgbouncer]\n%include a.ini\n', 'a.ini': '\n%include sub/b.ini\n', 'sub/b.ini': '%include ../a.ini\n' });
    expect(errorOf(() => loadPgBouncerConfig(join(a, 'pgbouncer.ini'))).message).toBe(
      `${join(a, 'sub/b.ini')} line 1: %include cycle: ${join(a, 'pgbouncer.ini')} -> ${join(a, 'a.ini')} -> ${join(a, 'sub/b.ini')} -> ${join(a, 'a.ini')}`,
    );
    const self = files({ 'pgbouncer.ini': '[pgbouncer]\n%include pgbouncer.ini\n' });
    expect(errorOf(() => loadPgBouncerConfig(join(self, 'pgbouncer.ini'))).message).toMatch(/pgbouncer\.ini line 2: %include cycle: /);
    const missing = files({ 'pgbouncer.ini': '[pgbouncer]\n\n%include nope.ini\n' });
    expect(errorOf(() => loadPgBouncerConfig(join(missing, 'pgbouncer.ini'))).message).toBe(
      `${join(missing, 'pgbouncer.ini')} line 3: %include ${join(missing, 'nope.ini')}: cannot read it (ENOENT)`,
    );
    const chain: Record<string, string> = { 'pgbouncer.ini': '[pgbouncer]\n%include 1.ini\n' };
    for (let i = 1; i <= 11; i++) chain[`${i}.ini`] = `%include ${i + 1}.ini\n`;
    chain['12.ini'] = '';
    const deep = files(chain);
    expect(errorOf(() => loadPgBouncerConfig(join(deep, 'pgbouncer.ini'))).message).toBe(
      `${join(deep, '10.ini')} line 1: %include nested deeper than 10 files`,
    );
    expect(errorOf(() => loadPgBouncerConfig(join(root, 'none.ini'))).message).toBe(`${join(root, 'none.ini')}: cannot read it (ENOENT)`);
  });

  test.each([
    ['[pgbouncer]\npool_mode = sesion', 2, 'pool_mode: "sesion" is not one of session, transaction, statement'],
    ['[pgbouncer]\n\nmax_client_conn = lots', 3, 'max_client_conn: "lots" is not an integer'],
    ['[pgbouncer]\ndefault_pool_size = 08', 2, 'default_pool_size: "08" is not an integer'],
    ['[pgbouncer]\nlisten_port = 99999999999', 2, 'listen_port: "99999999999" is not an integer from -2147483648 to 2147483647'],
    ['[pgbouncer]\nmax_packet_size = -1', 2, 'max_packet_size: "-1" is not an integer from 0 to 4294967295'],
    [
      '[pgbouncer]\nquery_wait_timeout = 10s',
      2,
      'query_wait_timeout: "10s" is not a number of seconds (pgBouncer takes no units: write 10, 0.5 or 600)',
    ],
    ['[pgbouncer]\nserver_lifetime = -5', 2, 'server_lifetime: "-5" is not a number of seconds (pgBouncer takes no units: write 10, 0.5 or 600)'],
    ['[pgbouncer]\nlog_connections = maybe', 2, 'log_connections: "maybe" is not a boolean (0/1, on/off, true/false, yes/no)'],
    ['[pgbouncer]\nauth_type = ldap', 2, 'auth_type: "ldap" is not one of any, trust, plain, md5, cert, hba, pam, scram-sha-256'],
    ['[pgbouncer]\nserver_tls_sslmode = on', 2, 'server_tls_sslmode: "on" is not one of disable, allow, prefer, require, verify-ca, verify-full'],
    ['[pgbouncer]\nauth_dbname = pgbouncer', 2, 'auth_dbname: cannot use the reserved "pgbouncer" database as an auth_dbname'],
    [
      '[pgbouncer]\n[pgbouncr]',
      2,
      "unknown section [pgbouncr] (pgBouncer knows [pgbouncer], [databases], [users], [peers]; [steadytext] is pg-steadytext's)",
    ],
    ['listen_port = 1\n[pgbouncer]', 1, '"listen_port" comes before any [section]'],
    ['[pgbouncer]\nlisten port = 1', 2, 'syntax error: expected "key = value", "[section]" or "%include file"'],
    ['[pgbouncer]\n%include', 2, 'syntax error: expected "key = value", "[section]" or "%include file"'],
    ['[pgbouncer]\n%include  \t ', 2, '%include needs a file name'],
    ['[pgbouncer\n', 1, 'syntax error: "[pgbouncer" has no closing ]'],
    ['[databases]\n"my db = host=x', 2, 'syntax error: the quoted name has no closing "'],
  ])('bad ini %#: the error names file, line and key', (ini, line, message) => {
    const dir = files({ 'pgbouncer.ini': ini });
    const file = join(dir, 'pgbouncer.ini');
    expect(errorOf(() => loadPgBouncerConfig(file)).message).toBe(`${file} line ${line}: ${message}`);
  });

  test('a config without [pgbouncer] is refused, as pgBouncer refuses it', () => {
    const dir = files({ 'pgbouncer.ini': '[databases]\nx = host=y\n' });
    const file = join(dir, 'pgbouncer.ini');
    expect(errorOf(() => loadPgBouncerConfig(file)).message).toBe(`${file}: no [pgbouncer] section (pgBouncer refuses a config without one)`);
  });
});

describe('[databases], [users], [peers], [steadytext]', () => {
  test('every [databases] key, quoting, the fallback entry, the raw line', () => {
    const every =
      "host=db1.example.com,db2.example.com port=5433 dbname=real_db user=svc password='p w''d' auth_user=authu " +
      "auth_query='SELECT usename, passwd FROM pgbouncer.get_auth($1)' auth_dbname=authdb pool_size=30 min_pool_size=2 " +
      'reserve_pool_size=4 pool_mode=Statement max_db_connections=50 max_db_client_connections=500 server_lifetime=1200 ' +
      "connect_query='SET search_path = app, public' client_encoding=UTF8 datestyle='ISO, MDY' timezone=UTC " +
      'application_name=myapp load_balance_hosts=disable';
    const { config } = load(
      [
        '[databases]',
        `full = ${every}`,
        'old = reserve_pool=3',
        'plain =',
        '"odd name" = host=x   dbname=y',
        '* = host=fallback port=6000',
        '[pgbouncer]',
      ].join('\n'),
    );
    expect(config.databases.get('full')).toEqual({
      name: 'full',
      raw: every,
      host: 'db1.example.com,db2.example.com',
      port: 5433,
      dbname: 'real_db',
      user: 'svc',
      password: "p w'd",
      authUser: 'authu',
      authQuery: 'SELECT usename, passwd FROM pgbouncer.get_auth($1)',
      authDbname: 'authdb',
      poolSize: 30,
      minPoolSize: 2,
      reservePool: 4,
      poolMode: 'statement',
      maxDbConnections: 50,
      maxDbClientConnections: 500,
      serverLifetime: 1200,
      connectQuery: 'SET search_path = app, public',
      clientEncoding: 'UTF8',
      datestyle: 'ISO, MDY',
      timezone: 'UTC',
      applicationName: 'myapp',
      loadBalanceHosts: 'disable',
    });
    expect(config.databases.get('old')).toEqual({ name: 'old', raw: 'reserve_pool=3', reservePool: 3 });
    expect(config.databases.get('plain')).toEqual({ name: 'plain', raw: '' });
    expect(config.databases.get('odd name')).toMatchObject({ host: 'x', dbname: 'y' });
    expect(config.databases.get('*')).toEqual({ name: '*', raw: 'host=fallback port=6000', host: 'fallback', port: 6000 });
  });

  test('[users], [peers] and [steadytext]', () => {
    const { config } = load(
      [
        '[users]',
        'alice = pool_mode=transaction max_user_connections=10 pool_size=5 reserve_pool_size=2 max_user_client_connections=20 ' +
          'query_timeout=30 idle_transaction_timeout=60 client_idle_timeout=90',
        'bob = pool_size=1',
        '[peers]',
        '1 = host=/tmp/pgb-1',
        '2 = host=10.0.0.2 port=6433 pool_size=7',
        '[steadytext]',
        'modelDir = /models',
        'queue-size = 12',
        'log_level = "debug"',
        '[pgbouncer]',
      ].join('\n'),
    );
    expect(config.users.get('alice')).toEqual({
      name: 'alice',
      poolMode: 'transaction',
      maxUserConnections: 10,
      poolSize: 5,
      reservePool: 2,
      maxUserClientConnections: 20,
      queryTimeout: 30,
      idleTransactionTimeout: 60,
      clientIdleTimeout: 90,
    });
    expect(config.users.get('bob')).toEqual({ name: 'bob', poolSize: 1 });
    expect([...config.peers.values()]).toEqual([
      { id: 1, host: '/tmp/pgb-1', port: 6432, raw: 'host=/tmp/pgb-1' },
      { id: 2, host: '10.0.0.2', port: 6433, poolSize: 7, raw: 'host=10.0.0.2 port=6433 pool_size=7' },
    ]);
    expect(config.steadytext).toEqual({ modelDir: '/models', queueSize: '12', logLevel: 'debug' });
  });

  test.each([
    [
      'db = host=x sslmode=require',
      'database "db": unknown key "sslmode" (pgBouncer 1.24 knows dbname, host, port, user, password, auth_user, auth_dbname, auth_query, client_encoding, datestyle, timezone, pool_size, min_pool_size, reserve_pool, reserve_pool_size, max_db_connections, max_db_client_connections, server_lifetime, load_balance_hosts, pool_mode, connect_query, application_name)',
    ],
    ["db = connect_query='SELECT 1", 'database "db": connect_query: the quoted value has no closing \''],
    ["db = password='it\\'s'", "database \"db\": password: expected a space after the closing quote (inside quotes, write '' for a ')"],
    ['db = host=', 'database "db": host: empty value'],
    ['db = host x', 'database "db": expected key=value at "host x"'],
    ['db = port=0', 'database "db": port: "0" is not a whole number from 1 to 65535'],
    ['db = pool_size=ten', 'database "db": pool_size: "ten" is not a whole number'],
    ['db = pool_mode=sesion', 'database "db": pool_mode: "sesion" is not one of session, transaction, statement'],
    ['db = load_balance_hosts=random', 'database "db": load_balance_hosts: "random" is not one of disable, round-robin'],
    ['pgbouncer = host=x', 'database "pgbouncer": the name is reserved for the admin console'],
    [
      '* = host=x foo=1',
      'database "*": unknown key "foo" (pgBouncer 1.24 knows dbname, host, port, user, password, auth_user, auth_dbname, auth_query, client_encoding, datestyle, timezone, pool_size, min_pool_size, reserve_pool, reserve_pool_size, max_db_connections, max_db_client_connections, server_lifetime, load_balance_hosts, pool_mode, connect_query, application_name)',
    ],
  ])('bad [databases] entry %#', (entry, message) => {
    const dir = files({ 'pgbouncer.ini': `[pgbouncer]\n[databases]\n${entry}\n` });
    const file = join(dir, 'pgbouncer.ini');
    expect(errorOf(() => loadPgBouncerConfig(file)).message).toBe(`${file} line 3: ${message}`);
  });

  test.each([
    [
      '[users]\nu = reserve_pool=1',
      'user "u": unknown key "reserve_pool" (pgBouncer 1.24 knows pool_mode, pool_size, reserve_pool_size, max_user_connections, idle_transaction_timeout, query_timeout, client_idle_timeout, max_user_client_connections)',
    ],
    ['[users]\nu = query_timeout=1.5', 'user "u": query_timeout: "1.5" is not a whole number'],
    ['[peers]\n0 = host=x', 'peer 0: "0" is not a whole number from 1 to 65535'],
    ['[peers]\n3 = port=6432', 'peer 3: host is missing'],
    ['[peers]\n3 = host=x dbname=y', 'peer 3: unknown key "dbname" (pgBouncer 1.24 knows host, port, pool_size)'],
  ])('bad [users] or [peers] entry %#', (entry, message) => {
    const dir = files({ 'pgbouncer.ini': `[pgbouncer]\n${entry}\n` });
    const file = join(dir, 'pgbouncer.ini');
    expect(errorOf(() => loadPgBouncerConfig(file)).message).toBe(`${file} line 3: ${message}`);
  });
});

const scram = (iterations: number, salt: Buffer, password: string) => {
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const storedKey = createHash('sha256').update(createHmac('sha256', salted).update('Client Key').digest()).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return {
    storedKey,
    serverKey,
    text: `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`,
  };
};

describe('auth_file and secrets', () => {
  test('userlist.txt: the three kinds of secret, "" escapes, comments, text after the fields', () => {
    const v = scram(4096, Buffer.from('0123456789abcdef'), 'pw');
    const dir = files({
      'userlist.txt': [
        '; a comment',
        '',
        '"plainuser" "secret with spaces"',
        '  "md5user"   "md5a8c0b47f6e3b8a7d0d0e0ff0e8c5f7e1" whatever follows',
        `"scramuser" "${v.text}"`,
        '"we""ird" "pa""ss"',
        '"empty" ""',
        '"x" junk between "y"',
        '"MD5USER" "MD5A8C0B47F6E3B8A7D0D0E0FF0E8C5F7E1"',
        '"plainuser" "later wins"',
      ].join('\n'),
    });
    const users = readAuthFile(join(dir, 'userlist.txt'));
    expect([...users.keys()]).toEqual(['plainuser', 'md5user', 'scramuser', 'we"ird', 'empty', 'x', 'MD5USER']);
    expect(users.get('plainuser')).toEqual({ kind: 'plain', password: 'later wins' });
    expect(users.get('md5user')).toEqual({ kind: 'md5', hash: 'md5a8c0b47f6e3b8a7d0d0e0ff0e8c5f7e1' });
    expect(users.get('scramuser')).toEqual({
      kind: 'scram',
      iterations: 4096,
      salt: Buffer.from('0123456789abcdef'),
      storedKey: v.storedKey,
      serverKey: v.serverKey,
      text: v.text,
    });
    expect(users.get('we"ird')).toEqual({ kind: 'plain', password: 'pa"ss' });
    expect(users.get('empty')).toEqual({ kind: 'plain', password: '' });
    expect(users.get('x')).toEqual({ kind: 'plain', password: 'y' });
    // pgBouncer's md5 check wants lowercase hex: anything else is a cleartext password.
    expect(users.get('MD5USER')).toEqual({ kind: 'plain', password: 'MD5A8C0B47F6E3B8A7D0D0E0FF0E8C5F7E1' });
  });

  test('parseSecret: malformed verifiers are cleartext passwords, as pgBouncer takes them', () => {
    const v = scram(10, Buffer.from('salt'), 'pw');
    expect(parseSecret(v.text).kind).toBe('scram');
    for (const text of [
      'md5abc',
      `md5${'g'.repeat(32)}`,
      v.text.replace('SCRAM-SHA-256', 'SCRAM-SHA-1'),
      v.text.replace('$10:', '$ten:'),
      v.text.replace(/:[^:]*$/, ':AAAA'), // a ServerKey of 3 bytes
      v.text.replace('c2FsdA==', 'not base64!'),
      'SCRAM-SHA-256$4096:c2FsdA==',
    ]) {
      expect(parseSecret(text)).toEqual({ kind: 'plain', password: text } satisfies Secret);
    }
  });

  test('broken userlist lines are errors naming the line', () => {
    const dir = files({
      'a.txt': '"ok" "x"\nuser "pw"\n',
      'b.txt': '\n"nosecret"\n',
      'c.txt': '"ok" "x"\n"u" "unterminated\n',
      'd.txt': `"${'u'.repeat(128)}" "x"\n`,
    });
    expect(errorOf(() => readAuthFile(join(dir, 'a.txt'))).message).toBe(
      `${join(dir, 'a.txt')} line 2: expected "user" "secret" (lines starting with ; are comments)`,
    );
    expect(errorOf(() => readAuthFile(join(dir, 'b.txt'))).message).toBe(
      `${join(dir, 'b.txt')} line 2: user "nosecret" has no quoted secret after the name`,
    );
    expect(errorOf(() => readAuthFile(join(dir, 'c.txt'))).message).toBe(
      `${join(dir, 'c.txt')} line 2: user "u" has no quoted secret after the name`,
    );
    expect(errorOf(() => readAuthFile(join(dir, 'd.txt'))).message).toBe(`${join(dir, 'd.txt')} line 1: user name longer than 127 bytes`);
    expect(errorOf(() => readAuthFile(join(dir, 'none.txt'))).message).toBe(`auth_file ${join(dir, 'none.txt')}: cannot read it (ENOENT)`);
  });

  test('auth_file is read relative to the working directory, and not at all for auth_type any', () => {
    const dir = files({ 'users/list.txt': '"u" "p"\n' });
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      const { config } = load('[pgbouncer]\nauth_file = users/list.txt\n');
      expect(config.authFile.get('u')).toEqual({ kind: 'plain', password: 'p' });
      expect(load('[pgbouncer]\nauth_type = any\nauth_file = missing.txt\n').config.authFile.size).toBe(0);
      expect(errorOf(() => load('[pgbouncer]\nauth_file = missing.txt\n')).message).toBe(
        `auth_file ${join(dir, 'missing.txt')}: cannot read it (ENOENT)`,
      );
    } finally {
      process.chdir(cwd);
    }
  });

  describe('secrets as PostgreSQL stores them (auth_query reads them from pg_authid)', () => {
    const db = inject('db');
    const admin = new pg.Client(db.adminUrl);
    const tag = `pgst_pgb_${process.pid}`;
    const roles = { scram: { name: `${tag}_scram`, password: 'scr "am\' pass' }, md5: { name: `${tag}_md5`, password: 'md5 pass' } };
    beforeAll(async () => {
      await admin.connect();
      const lit = (s: string) => `'${s.replaceAll("'", "''")}'`;
      await admin.query(`SET password_encryption = 'scram-sha-256'; CREATE ROLE ${roles.scram.name} LOGIN PASSWORD ${lit(roles.scram.password)}`);
      await admin.query(`SET password_encryption = 'md5'; CREATE ROLE ${roles.md5.name} LOGIN PASSWORD ${lit(roles.md5.password)}`);
    });
    afterAll(async () => {
      await admin.query(`DROP ROLE IF EXISTS ${roles.scram.name}; DROP ROLE IF EXISTS ${roles.md5.name}`);
      await admin.end();
    });

    test('a SCRAM verifier and an md5 hash from pg_authid parse, also written to a userlist, and match the passwords', async () => {
      const { rows } = await admin.query<{ rolname: string; rolpassword: string }>(
        'SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1) ORDER BY rolname',
        [[roles.md5.name, roles.scram.name]],
      );
      const stored = new Map(rows.map((r) => [r.rolname, r.rolpassword]));
      const s = parseSecret(stored.get(roles.scram.name)!);
      if (s.kind !== 'scram') throw new Error(`expected a SCRAM verifier, got ${s.kind}`);
      const expected = scram(s.iterations, s.salt, roles.scram.password);
      expect(s.storedKey).toEqual(expected.storedKey);
      expect(s.serverKey).toEqual(expected.serverKey);
      expect(s.text).toBe(expected.text);
      const m = parseSecret(stored.get(roles.md5.name)!);
      expect(m).toEqual({
        kind: 'md5',
        hash: `md5${createHash('md5')
          .update(roles.md5.password + roles.md5.name)
          .digest('hex')}`,
      });

      const dir = files({ 'userlist.txt': rows.map((r) => `"${r.rolname}" "${r.rolpassword.replaceAll('"', '""')}"`).join('\n') });
      const users = readAuthFile(join(dir, 'userlist.txt'));
      expect(users.get(roles.scram.name)).toEqual(s);
      expect(users.get(roles.md5.name)).toEqual(m);
    });
  });
});

describe('auth_hba_file', () => {
  const hbaText = [
    '# TYPE  DATABASE        USER            ADDRESS                 METHOD',
    'local   all             postgres                                peer map=local_map',
    'local   sameuser        all                                     md5',
    'hostssl app,"My DB"     @admins         10.0.0.0/8              scram-sha-256',
    'hostnossl app           all             10.0.0.0  255.0.0.0     reject',
    'host    "all"           "all"           192.168.1.0/24          trust # a database named all',
    'host    replication     repl            ::1/128                 trust',
    'host    @dbs            all             fd00::/8                cert',
    'host    all             all             all                     md5',
  ].join('\n');
  const hbaFiles = () =>
    files({
      'hba.conf': hbaText,
      admins: 'alice, bob\n# comment\ncarol @more/ops\n',
      'more/ops': '"dave x"\n',
      dbs: 'd1,d2\n',
    });

  test('rules as written: keywords, quoted names, @files expanded (nested, relative to their file), CIDR and masks', () => {
    const dir = hbaFiles();
    const warnings: string[] = [];
    const rules = parseHbaFile(join(dir, 'hba.conf'), warnings);
    expect(warnings).toEqual([]);
    expect(rules).toEqual([
      { type: 'local', databases: ['all'], users: ['postgres'], method: 'peer', map: 'local_map', line: 2 },
      { type: 'local', databases: ['sameuser'], users: ['all'], method: 'md5', line: 3 },
      {
        type: 'hostssl',
        databases: ['app', '"My DB"'],
        users: ['alice', 'bob', 'carol', '"dave x"'],
        address: { net: '10.0.0.0', bits: 8 },
        method: 'scram-sha-256',
        line: 4,
      },
      { type: 'hostnossl', databases: ['app'], users: ['all'], address: { net: '10.0.0.0', bits: 8 }, method: 'reject', line: 5 },
      { type: 'host', databases: ['"all"'], users: ['"all"'], address: { net: '192.168.1.0', bits: 24 }, method: 'trust', line: 6 },
      { type: 'host', databases: ['replication'], users: ['repl'], address: { net: '::1', bits: 128 }, method: 'trust', line: 7 },
      { type: 'host', databases: ['d1', 'd2'], users: ['all'], address: { net: 'fd00::', bits: 8 }, method: 'cert', line: 8 },
      { type: 'host', databases: ['all'], users: ['all'], address: 'all', method: 'md5', line: 9 },
    ] satisfies HbaRule[]);
  });

  test('matchHba: first matching rule, as pgBouncer evaluates them', () => {
    const rules = parseHbaFile(join(hbaFiles(), 'hba.conf'));
    const m = (c: Partial<Parameters<typeof matchHba>[1]>) =>
      matchHba(rules, { local: false, ssl: false, database: 'app', user: 'alice', address: '10.1.2.3', ...c })?.line ?? null;
    expect(m({ local: true, user: 'postgres', database: 'x' })).toBe(2);
    expect(m({ local: true, user: 'x', database: 'x' })).toBe(3); // sameuser
    expect(m({ local: true, user: 'x', database: 'y' })).toBeNull();
    expect(m({ ssl: true })).toBe(4);
    expect(m({ ssl: true, database: 'My DB', user: 'dave x' })).toBe(4);
    expect(m({ ssl: true, user: 'mallory' })).toBe(9); // not in @admins: hostnossl does not take TLS, so the last line
    expect(m({ ssl: false })).toBe(5);
    expect(m({ address: '::ffff:10.9.9.9' })).toBe(5); // an IPv4 client on a dual-stack socket
    expect(m({ address: '11.0.0.1' })).toBe(9);
    expect(m({ address: '192.168.1.7', database: 'all', user: 'all' })).toBe(6);
    expect(m({ address: '192.168.1.7', database: 'other', user: 'x' })).toBe(9); // "all" quoted is a name
    expect(m({ address: '::1', user: 'repl', database: 'x', replication: true })).toBe(7);
    expect(m({ address: '::1', user: 'other', database: 'x', replication: true })).toBeNull(); // all does not cover replication
    expect(m({ address: '::1', user: 'repl', database: 'replication' })).toBe(9); // the keyword is not a database name
    expect(m({ address: 'fd12::5', database: 'd2' })).toBe(8);
    expect(m({ address: 'fe80::1', database: 'd2' })).toBe(9);
    expect(matchHba([], { local: true, ssl: false, database: 'a', user: 'b', address: '' })).toBeNull();
  });

  test('a net with bits outside its mask matches nothing, as in pgBouncer, and says so', () => {
    const dir = files({ 'hba.conf': 'host all all 10.1.2.3/8 trust\n' });
    const warnings: string[] = [];
    const rules = parseHbaFile(join(dir, 'hba.conf'), warnings);
    expect(warnings).toEqual([`${join(dir, 'hba.conf')} line 1: 10.1.2.3/8 has bits set outside the mask: as in pgBouncer, it matches no client`]);
    expect(matchHba(rules, { local: false, ssl: false, database: 'a', user: 'b', address: '10.1.2.3' })).toBeNull();
  });

  test.each([
    ['hosts all all all md5', 'unknown connection type "hosts" (pgBouncer knows local, host, hostssl, hostnossl)'],
    ['host all all all ident', 'unsupported method "ident" (pgBouncer supports trust, reject, md5, password, peer, cert, scram-sha-256)'],
    ['local all all', 'unsupported method "" (pgBouncer supports trust, reject, md5, password, peer, cert, scram-sha-256)'],
    ['host samerole all all md5', 'samerole is not supported by pgBouncer'],
    ['host all +admins all md5', 'group names (+admins) are not supported by pgBouncer'],
    [
      'host all all samenet md5',
      '"samenet" is not an IP address (pgBouncer supports all, IPv4 and IPv6 addresses; no host names, samehost or samenet)',
    ],
    ['host all all 10.0.0.0/33 md5', 'mask of 10.0.0.0/33: "33" is not a whole number from 0 to 32'],
    ['host all all 10.0.0.0 255.0.255.0 md5', 'netmask 255.0.255.0 is not contiguous'],
    ['host all all 10.0.0.0 md5', 'expected a netmask after 10.0.0.0'],
    ['host all all all md5 clientcert=verify-full', 'unsupported option "clientcert=verify-full" (pgBouncer knows map=name only)'],
    ['host all all', 'expected an address (all, an IP address with /bits, or an address and a mask)'],
    ['host all,', 'expected a database name'],
    ['host all all,', 'expected a user name'],
    ['host "all all all md5', 'a quoted name has no closing "'],
    ['host @nofile all all md5', '@nofile: cannot read NOFILE (ENOENT)'],
  ])('bad hba line %#: an error naming it', (line, message) => {
    const dir = files({ 'hba.conf': `# first\n${line}\n` });
    const file = join(dir, 'hba.conf');
    expect(errorOf(() => parseHbaFile(file)).message).toBe(`${file} line 2: ${message.replace('NOFILE', join(dir, 'nofile'))}`);
  });

  test('@file cycles and errors inside @files name their place', () => {
    const dir = files({ 'hba.conf': 'host @a all all md5\n', a: 'x\n@b\n', b: '@a\n', c: 'samegroup\n', 'hba2.conf': 'host @c all all md5\n' });
    expect(errorOf(() => parseHbaFile(join(dir, 'hba.conf'))).message).toBe(
      `${join(dir, 'b')} line 1: @ file cycle: ${join(dir, 'hba.conf')} -> ${join(dir, 'a')} -> ${join(dir, 'b')} -> ${join(dir, 'a')}`,
    );
    expect(errorOf(() => parseHbaFile(join(dir, 'hba2.conf'))).message).toBe(`${join(dir, 'c')} line 1: samegroup is not supported by pgBouncer`);
    expect(errorOf(() => parseHbaFile(join(dir, 'none.conf'))).message).toBe(`auth_hba_file: cannot read ${join(dir, 'none.conf')} (ENOENT)`);
  });

  test('auth_type = hba reads auth_hba_file into the config (relative to the working directory)', () => {
    const dir = hbaFiles();
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      const { config } = load('[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n');
      expect(config.hba?.map((r) => r.line)).toEqual([2, 3, 4, 5, 6, 7, 8, 9]);
      expect(load('[pgbouncer]\nauth_hba_file = hba.conf\n').config.hba).toBeNull();
      const e = errorOf(() => load('[pgbouncer]\n\nauth_type = hba\n'));
      expect(e.message).toMatch(/pgbouncer\.ini line 3: auth_type = hba needs auth_hba_file$/);
    } finally {
      process.chdir(cwd);
    }
  });
});
