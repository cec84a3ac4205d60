// pgBouncer's configuration, read unchanged: pgbouncer.ini ([databases], [users], [pgbouncer], [peers], %include,
// our own [steadytext] section), its auth_file (userlist.txt) and its auth_hba_file. The parser turns the files
// into one typed PoolerConfig; everything the pooler (proxy/) and the console need comes from it.
// The rules follow pgBouncer 1.24 (src/main.c's parameter table, lib/usual/cfparser.c, src/loader.c, src/hba.c);
// where this parser differs on purpose, the comment at that place says so.
import { readFileSync, realpathSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { dirname, resolve } from 'node:path';
import { SPECS } from './settings.js';

export type PoolMode = 'session' | 'transaction' | 'statement';
/** 'ldap' is not in pgBouncer 1.24 (the ini refuses it); it stays in the type for a later version. */
export type AuthType = 'trust' | 'any' | 'plain' | 'md5' | 'scram-sha-256' | 'cert' | 'hba' | 'pam' | 'ldap';

/** One [databases] entry. Unset fields fall back to [pgbouncer] / the client's own values, as in pgBouncer. */
export interface DatabaseEntry {
  /** The name clients connect to ("*" for the fallback entry). */
  name: string;
  host?: string;
  port?: number;
  /** Database name on the server; default: the entry's name (for "*": the client's database). */
  dbname?: string;
  /** Forced user for server connections (all clients share one pool per database then). */
  user?: string;
  password?: string;
  authUser?: string;
  authQuery?: string;
  authDbname?: string;
  poolSize?: number;
  minPoolSize?: number;
  /** reserve_pool_size (or its older spelling reserve_pool). */
  reservePool?: number;
  poolMode?: PoolMode;
  maxDbConnections?: number;
  maxDbClientConnections?: number;
  serverLifetime?: number;
  connectQuery?: string;
  clientEncoding?: string;
  datestyle?: string;
  timezone?: string;
  applicationName?: string;
  /** With several hosts in `host` (comma-separated): round-robin (pgBouncer's default) or in order. */
  loadBalanceHosts?: 'disable' | 'round-robin';
  /** The entry's line as written (SHOW DATABASES and logs). */
  raw: string;
}

/** One [users] entry. */
export interface UserEntry {
  name: string;
  poolMode?: PoolMode;
  poolSize?: number;
  /** reserve_pool_size (pgBouncer's [users] knows no other spelling). */
  reservePool?: number;
  maxUserConnections?: number;
  maxUserClientConnections?: number;
  queryTimeout?: number;
  idleTransactionTimeout?: number;
  clientIdleTimeout?: number;
}

/** One [peers] entry: where cancel requests for another pgBouncer process of the group go. */
export interface PeerEntry {
  id: number;
  host: string;
  port: number;
  poolSize?: number;
  raw: string;
}

/** A secret of auth_file / auth_query: a cleartext password, an md5 hash ("md5" + 32 hex) or a SCRAM verifier. */
export type Secret =
  | { kind: 'plain'; password: string }
  /** hash: the whole stored text, "md5" + 32 lowercase hex (as pg_authid holds it). */
  | { kind: 'md5'; hash: string }
  /** text: the whole verifier as written. */
  | { kind: 'scram'; iterations: number; salt: Buffer; storedKey: Buffer; serverKey: Buffer; text: string };

/**
 * Every [pgbouncer] setting of pgBouncer 1.24, typed, with its defaults: the field is the key in camelCase.
 * Times in seconds (float) as in the ini. Settings pgBouncer leaves unset (auth_file, auth_user, ...) are ''.
 */
export interface PoolerSettings {
  adminUsers: string[];
  applicationNameAddHost: boolean;
  authDbname: string;
  authFile: string; // ''
  authHbaFile: string;
  authIdentFile: string;
  authQuery: string; // pgBouncer's default query
  authType: AuthType; // md5
  authUser: string;
  autodbIdleTimeout: number; // 3600
  clientIdleTimeout: number; // 0
  clientLoginTimeout: number; // 60
  clientTlsCaFile: string;
  clientTlsCertFile: string;
  clientTlsCiphers: string; // default
  clientTlsDheparams: string; // auto
  clientTlsEcdhcurve: string; // auto
  clientTlsKeyFile: string;
  clientTlsProtocols: string; // secure
  clientTlsSslmode: string; // disable
  /** The ini this configuration came from (pgBouncer lets the ini override it). */
  conffile: string;
  defaultPoolSize: number; // 20
  disablePqexec: boolean;
  dnsMaxTtl: number; // 15
  dnsNxdomainTtl: number; // 15
  dnsZoneCheckPeriod: number; // 0
  idleTransactionTimeout: number; // 0
  ignoreStartupParameters: string[];
  jobName: string; // pgbouncer
  listenAddr: string; // '' = no TCP listener; '*' = all
  listenBacklog: number; // 128
  listenPort: number; // 6432
  logConnections: boolean;
  logDisconnections: boolean;
  logPoolerErrors: boolean;
  logStats: boolean;
  logfile: string;
  maxClientConn: number; // 100
  maxDbConnections: number; // 0 = unlimited
  maxDbClientConnections: number; // 0
  maxPacketSize: number; // 2147483647
  maxPreparedStatements: number; // 200
  maxUserConnections: number; // 0
  maxUserClientConnections: number; // 0
  minPoolSize: number; // 0
  peerId: number; // 0 = no peering
  pidfile: string;
  pktBuf: number; // 4096
  poolMode: PoolMode; // session
  queryTimeout: number; // 0
  queryWaitTimeout: number; // 120
  cancelWaitTimeout: number; // 10
  reservePoolSize: number; // 0
  reservePoolTimeout: number; // 5
  resolvConf: string;
  sbufLoopcnt: number; // 5
  serverCheckDelay: number; // 30
  serverCheckQuery: string; // 'select 1'
  serverConnectTimeout: number; // 15
  serverFastClose: boolean;
  serverIdleTimeout: number; // 600
  serverLifetime: number; // 3600
  serverLoginRetry: number; // 15
  serverResetQuery: string; // 'DISCARD ALL'
  serverResetQueryAlways: boolean; // false
  serverRoundRobin: boolean;
  serverTlsCaFile: string;
  serverTlsCertFile: string;
  serverTlsCiphers: string; // default
  serverTlsKeyFile: string;
  serverTlsProtocols: string; // secure
  serverTlsSslmode: string; // prefer
  soReuseport: boolean;
  statsPeriod: number; // 60
  statsUsers: string[];
  suspendTimeout: number; // 10
  syslog: boolean;
  syslogFacility: string; // daemon
  syslogIdent: string; // pgbouncer
  tcpDeferAccept: boolean; // true (Linux)
  tcpKeepalive: boolean; // true
  tcpKeepcnt: number;
  tcpKeepidle: number;
  tcpKeepintvl: number;
  tcpSocketBuffer: number;
  tcpUserTimeout: number; // milliseconds, as in pgBouncer
  trackExtraParameters: string[]; // IntervalStyle
  unixSocketDir: string; // '/tmp' ('' disables)
  unixSocketGroup: string;
  unixSocketMode: number; // 0777 (octal, as in the ini)
  user: string;
  verbose: number;
  /** Every [pgbouncer] key as text (given or default), for SHOW CONFIG and SET, in SHOW CONFIG's order. */
  all: ConfigRow[];
}

/** One row of SHOW CONFIG. */
export interface ConfigRow {
  key: string;
  value: string;
  default: string;
  changeable: boolean;
}

export interface PoolerConfig {
  /** Absolute path of the main ini (RELOAD reads it again). */
  file: string;
  settings: PoolerSettings;
  databases: Map<string, DatabaseEntry>;
  users: Map<string, UserEntry>;
  /** [peers]: peer id → where its cancel requests go. */
  peers: Map<number, PeerEntry>;
  /** auth_file, read: user name → secret (empty when unset, or when auth_type is any or pam, as in pgBouncer). */
  authFile: Map<string, Secret>;
  /** auth_hba_file's rules when auth_type is hba (pgBouncer reads it only then), else null. */
  hba: HbaRule[] | null;
  /** [steadytext] section: our own settings by their config-file key (config/settings.ts SPECS keys). */
  steadytext: Record<string, string>;
  /** Unknown keys and other problems that do not stop the start (logged as warnings). */
  warnings: string[];
}

/**
 * The proxy's own connection (installs, steadytext_cache writes) to the database a client names, where the ini
 * sends that client's sessions: the first host and the port of its [databases] entry (or of "*"), its dbname,
 * with `base`'s credentials, TLS and options. A host that is a directory is a Unix socket. With no entry the
 * base URL with the name as its database (the client gets "no such database" from the pooler anyway).
 */
export function serviceUrlForDatabase(base: string, cfg: PoolerConfig, database: string): string {
  const u = new URL(base);
  const entry = cfg.databases.get(database) ?? cfg.databases.get('*');
  const host = entry?.host?.split(',').map((h) => h.trim()).find(Boolean);
  if (host?.startsWith('/')) u.searchParams.set('host', host);
  else if (host) {
    u.searchParams.delete('host');
    u.hostname = host.includes(':') ? `[${host}]` : host;
  }
  if (entry?.port) u.port = String(entry.port);
  u.pathname = '/' + encodeURIComponent(entry?.dbname || database);
  return u.toString();
}

export class PgBouncerConfigError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'PgBouncerConfigError';
  }
}

/** What a value should have been; the caller adds where it was. */
class Invalid extends Error {}

interface Loc {
  file: string;
  line: number;
}
const where = (l: Loc) => `${l.file} line ${l.line}`;
const ltrim = (s: string) => s.replace(/^[ \t\n\v\f\r]+/, '');
const rtrim = (s: string) => s.replace(/[ \t\n\v\f\r]+$/, '');
const errno = (e: unknown) => (e as NodeJS.ErrnoException).code ?? (e as Error).message;

// ---------------------------------------------------------------------------------------------------------------
// [pgbouncer]: the parameter table

const AUTH_TYPES = ['any', 'trust', 'plain', 'md5', 'cert', 'hba', 'pam', 'scram-sha-256'] as const;
const POOL_MODES = ['session', 'transaction', 'statement'] as const;
const SSLMODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
const LOAD_BALANCE_HOSTS = ['disable', 'round-robin'] as const;
const DEFAULT_AUTH_QUERY =
  'SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin';

/**
 * pgBouncer stores "booleans" as integers (any integer, nonzero = on); words are accepted here as well.
 * authdb: a string that may not name the admin console. list: names separated by commas and/or spaces.
 */
type Kind = 'str' | 'int' | 'uint' | 'bool' | 'time' | 'list' | 'authdb' | 'auth_type' | 'pool_mode' | 'sslmode';
const NO_RELOAD = false;

// Key, kind, default as pgBouncer writes it (null: unset), whether it can change online (SHOW CONFIG's changeable).
// pgBouncer's order (SHOW CONFIG lists them so); Windows' service_name is absent on other systems.
const PARAMS = [
  ['admin_users', 'list', ''],
  ['application_name_add_host', 'bool', '0'],
  ['auth_dbname', 'authdb', null],
  ['auth_file', 'str', null],
  ['auth_hba_file', 'str', ''],
  ['auth_ident_file', 'str', null],
  ['auth_query', 'str', DEFAULT_AUTH_QUERY],
  ['auth_type', 'auth_type', 'md5'],
  ['auth_user', 'str', null],
  ['autodb_idle_timeout', 'time', '3600'],
  ['client_idle_timeout', 'time', '0'],
  ['client_login_timeout', 'time', '60'],
  ['client_tls_ca_file', 'str', ''],
  ['client_tls_cert_file', 'str', ''],
  ['client_tls_ciphers', 'str', 'default'],
  ['client_tls_dheparams', 'str', 'auto'],
  ['client_tls_ecdhcurve', 'str', 'auto'],
  ['client_tls_key_file', 'str', ''],
  ['client_tls_protocols', 'str', 'secure'],
  ['client_tls_sslmode', 'sslmode', 'disable'],
  ['conffile', 'str', null],
  ['default_pool_size', 'int', '20'],
  ['disable_pqexec', 'bool', '0', NO_RELOAD],
  ['dns_max_ttl', 'time', '15'],
  ['dns_nxdomain_ttl', 'time', '15'],
  ['dns_zone_check_period', 'time', '0'],
  ['idle_transaction_timeout', 'time', '0'],
  ['ignore_startup_parameters', 'list', ''],
  ['job_name', 'str', 'pgbouncer', NO_RELOAD],
  ['listen_addr', 'str', '', NO_RELOAD],
  ['listen_backlog', 'int', '128', NO_RELOAD],
  ['listen_port', 'int', '6432', NO_RELOAD],
  ['log_connections', 'bool', '1'],
  ['log_disconnections', 'bool', '1'],
  ['log_pooler_errors', 'bool', '1'],
  ['log_stats', 'bool', '1'],
  ['logfile', 'str', ''],
  ['max_client_conn', 'int', '100'],
  ['max_db_connections', 'int', '0'],
  ['max_db_client_connections', 'int', '0'],
  ['max_packet_size', 'uint', '2147483647'],
  ['max_prepared_statements', 'int', '200'],
  ['max_user_connections', 'int', '0'],
  ['max_user_client_connections', 'int', '0'],
  ['min_pool_size', 'int', '0'],
  ['peer_id', 'int', '0'],
  ['pidfile', 'str', '', NO_RELOAD],
  ['pkt_buf', 'int', '4096', NO_RELOAD],
  ['pool_mode', 'pool_mode', 'session'],
  ['query_timeout', 'time', '0'],
  ['query_wait_timeout', 'time', '120'],
  ['cancel_wait_timeout', 'time', '10'],
  ['reserve_pool_size', 'int', '0'],
  ['reserve_pool_timeout', 'time', '5'],
  ['resolv_conf', 'str', '', NO_RELOAD],
  ['sbuf_loopcnt', 'int', '5'],
  ['server_check_delay', 'time', '30'],
  ['server_check_query', 'str', 'select 1'],
  ['server_connect_timeout', 'time', '15'],
  ['server_fast_close', 'bool', '0'],
  ['server_idle_timeout', 'time', '600'],
  ['server_lifetime', 'time', '3600'],
  ['server_login_retry', 'time', '15'],
  ['server_reset_query', 'str', 'DISCARD ALL'],
  ['server_reset_query_always', 'bool', '0'],
  ['server_round_robin', 'bool', '0'],
  ['server_tls_ca_file', 'str', ''],
  ['server_tls_cert_file', 'str', ''],
  ['server_tls_ciphers', 'str', 'default'],
  ['server_tls_key_file', 'str', ''],
  ['server_tls_protocols', 'str', 'secure'],
  ['server_tls_sslmode', 'sslmode', 'prefer'],
  ['so_reuseport', 'bool', '0', NO_RELOAD],
  ['stats_period', 'int', '60'],
  ['stats_users', 'list', ''],
  ['suspend_timeout', 'time', '10'],
  ['syslog', 'bool', '0'],
  ['syslog_facility', 'str', 'daemon'],
  ['syslog_ident', 'str', 'pgbouncer'],
  ['tcp_defer_accept', 'bool', '1'], // pgBouncer's default where TCP_DEFER_ACCEPT exists (Linux)
  ['tcp_keepalive', 'bool', '1'],
  ['tcp_keepcnt', 'int', '0'],
  ['tcp_keepidle', 'int', '0'],
  ['tcp_keepintvl', 'int', '0'],
  ['tcp_socket_buffer', 'int', '0'],
  ['tcp_user_timeout', 'int', '0'],
  ['track_extra_parameters', 'list', 'IntervalStyle', NO_RELOAD],
  ['unix_socket_dir', 'str', '/tmp', NO_RELOAD],
  ['unix_socket_group', 'str', '', NO_RELOAD],
  ['unix_socket_mode', 'int', '0777', NO_RELOAD],
  ['user', 'str', null, NO_RELOAD],
  ['verbose', 'int', null],
] as const satisfies readonly (readonly [string, Kind, string | null, boolean?])[];

// The interface and the table must name the same settings: a key added to one and not the other fails to compile.
type Camel<S extends string> = S extends `${infer H}_${infer T}` ? `${H}${Capitalize<Camel<T>>}` : S;
type TableField = Camel<(typeof PARAMS)[number][0]>;
type _SameSettings = [Exclude<TableField, keyof PoolerSettings>, Exclude<keyof PoolerSettings, TableField | 'all'>] extends [never, never]
  ? true
  : never;
const _sameSettings: _SameSettings = true;

const camel = (key: string) => key.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());

interface Param {
  key: string;
  kind: Kind;
  def: string | null;
  changeable: boolean;
}
const PARAM_BY_KEY = new Map<string, Param>(PARAMS.map((p) => [p[0], { key: p[0], kind: p[1], def: p[2], changeable: p[3] ?? true }]));

/** Settings read (SHOW CONFIG and SET know them) that change nothing here, and why: a warning names each one an ini sets. */
const RESOLVER = "host names are resolved by the system's resolver at each connection, not cached";
const STDOUT_LOGS = 'logs go to stdout (pino) and to logfile; under systemd, journald collects stdout';
const NO_EFFECT = new Map<string, string>([
  ['cancel_wait_timeout', 'a cancel request goes to its server on a connection of its own at once, never queued'],
  ['dns_max_ttl', RESOLVER],
  ['dns_nxdomain_ttl', RESOLVER],
  ['dns_zone_check_period', RESOLVER],
  ['resolv_conf', "host names are resolved by the system's resolver (/etc/resolv.conf)"],
  ['job_name', 'a Windows service name'],
  ['pkt_buf', 'buffers grow with each message (up to max_packet_size); there is no fixed packet buffer'],
  ['sbuf_loopcnt', 'each socket is read until it would block'],
  ['syslog', STDOUT_LOGS],
  ['syslog_facility', STDOUT_LOGS],
  ['syslog_ident', STDOUT_LOGS],
  ['tcp_defer_accept', 'Node accepts a connection when the kernel has it'],
]);

/** A setting's value: typed, and as SHOW CONFIG prints it (pgBouncer prints what it stored: 0777 as 511, on as 1). */
interface Parsed {
  typed: unknown;
  shown: string;
}

/** strtol(…, 0) as pgBouncer reads integers: decimal, 0x hex or 0 octal; within a C int. */
function cInt(text: string, min = -(2 ** 31), max = 2 ** 31 - 1): number {
  const m = /^([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))$/.exec(text);
  if (!m) throw new Invalid(`"${text}" is not an integer`);
  const n = (m[1] === '-' ? -1 : 1) * (m[2] !== undefined ? parseInt(m[2], 16) : m[3] !== undefined ? parseInt(m[3], 8) : Number(m[4]));
  if (n < min || n > max) throw new Invalid(`"${text}" is not an integer from ${min} to ${max}`);
  return n;
}

/** C's %g, which pgBouncer uses to print times. */
function formatG(x: number): string {
  if (x === 0) return '0';
  const [mantissa, e] = x.toExponential(5).split('e');
  const exp = Number(e);
  const strip = (s: string) => (s.includes('.') ? s.replace(/\.?0+$/, '') : s);
  if (exp < -4 || exp >= 6) return `${strip(mantissa)}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  return strip(x.toFixed(5 - exp));
}

function lookup<T extends string>(names: readonly T[], text: string): T {
  // pgBouncer compares these case-insensitively and stores the canonical name.
  const hit = names.find((n) => n.toLowerCase() === text.toLowerCase());
  if (!hit) throw new Invalid(`"${text}" is not one of ${names.join(', ')}`);
  return hit;
}

const TRUE_WORDS = ['on', 'true', 'yes'];
const FALSE_WORDS = ['off', 'false', 'no'];

function parseValue(kind: Kind, text: string): Parsed {
  switch (kind) {
    case 'str':
      return { typed: text, shown: text };
    case 'authdb':
      // pgBouncer's words (cf_set_authdb): "pgbouncer" is the admin console, not a database to run auth_query in.
      if (text === 'pgbouncer') throw new Invalid('cannot use the reserved "pgbouncer" database as an auth_dbname');
      return { typed: text, shown: text };
    case 'list':
      return { typed: text.split(/[\s,]+/).filter(Boolean), shown: text };
    case 'int': {
      const n = cInt(text);
      return { typed: n, shown: String(n) };
    }
    case 'uint': {
      const n = cInt(text, 0, 2 ** 32 - 1);
      return { typed: n, shown: String(n) };
    }
    case 'bool': {
      const w = text.toLowerCase();
      if (TRUE_WORDS.includes(w)) return { typed: true, shown: '1' };
      if (FALSE_WORDS.includes(w)) return { typed: false, shown: '0' };
      let n: number;
      try {
        n = cInt(text);
      } catch {
        throw new Invalid(`"${text}" is not a boolean (0/1, on/off, true/false, yes/no)`);
      }
      return { typed: n !== 0, shown: String(n) };
    }
    case 'time': {
      // pgBouncer 1.24 reads times with strtod: plain seconds, no units.
      if (!/^\+?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/.test(text)) {
        throw new Invalid(`"${text}" is not a number of seconds (pgBouncer takes no units: write 10, 0.5 or 600)`);
      }
      const seconds = Math.trunc(Number(text) * 1e6) / 1e6; // stored in microseconds
      if (!Number.isFinite(seconds)) throw new Invalid(`"${text}" is too large`);
      return { typed: seconds, shown: formatG(seconds) };
    }
    case 'auth_type': {
      const v = lookup(AUTH_TYPES, text);
      return { typed: v, shown: v };
    }
    case 'pool_mode': {
      const v = lookup(POOL_MODES, text);
      return { typed: v, shown: v };
    }
    case 'sslmode': {
      const v = lookup(SSLMODES, text);
      return { typed: v, shown: v };
    }
  }
}

/** What a setting holds before anything sets it; pgBouncer leaves a null default unset ('' for strings, 0 for ints). */
function defaultOf(p: Param): Parsed {
  if (p.def !== null) return parseValue(p.kind, p.def);
  return p.kind === 'int' ? { typed: 0, shown: '0' } : { typed: '', shown: '' };
}

/**
 * A value wrapped whole in double or single quotes loses them (a doubled quote inside stands for one).
 * pgBouncer keeps quotes as part of the value; a quoted value could not have meant that in any setting it has.
 */
function unquoteValue(v: string): string {
  for (const q of ['"', "'"]) {
    if (v.length >= 2 && v.startsWith(q) && v.endsWith(q)) {
      const inner = v.slice(1, -1);
      if (!inner.replaceAll(q + q, '').includes(q)) return inner.replaceAll(q + q, q);
    }
  }
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// [databases], [users], [peers]: connection-string values

/**
 * key=value pairs as pgBouncer reads them (src/loader.c): a value is a run of non-spaces, or single-quoted with ''
 * for a quote; empty values are refused. Tabs separate pairs as spaces do (pgBouncer would keep them in the value).
 */
function connPairs(s: string): [string, string][] {
  const out: [string, string][] = [];
  const space = (c: string | undefined) => c === ' ' || c === '\t';
  let i = 0;
  for (;;) {
    while (space(s[i])) i++;
    if (i >= s.length) return out;
    const k0 = i;
    while (i < s.length && s[i] !== '=' && !space(s[i])) i++;
    const key = s.slice(k0, i);
    while (space(s[i])) i++;
    if (s[i] !== '=' || key === '') throw new Invalid(`expected key=value at "${s.slice(k0)}"`);
    i++;
    while (space(s[i])) i++;
    let value = '';
    if (s[i] === "'") {
      for (i++; ;) {
        if (i >= s.length) throw new Invalid(`${key}: the quoted value has no closing '`);
        if (s[i] === "'") {
          if (s[i + 1] !== "'") break;
          i++;
        }
        value += s[i++];
      }
      i++;
      if (i < s.length && !space(s[i])) {
        throw new Invalid(`${key}: expected a space after the closing quote (inside quotes, write '' for a ')`);
      }
    } else {
      const v0 = i;
      while (i < s.length && !space(s[i])) i++;
      value = s.slice(v0, i);
    }
    if (value === '') throw new Invalid(`${key}: empty value`);
    out.push([key, value]);
  }
}

/** A count in a connection string (pgBouncer uses atoi and takes "abc" as 0; here it is an error). */
function count(text: string, min = 0, max = 2 ** 31 - 1): number {
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new Invalid(`"${text}" is not a whole number${min > 0 || max < 2 ** 31 - 1 ? ` from ${min} to ${max}` : ''}`);
  }
  return Number(text);
}

/** Per key: the field it sets and how its text becomes the value; the parser's result type is the field's own. */
type Fields<T> = Record<string, { [K in keyof T]-?: [K, (v: string) => T[K]] }[keyof T]>;
const asIs = (v: string) => v;

// pgBouncer 1.24's keys, in src/loader.c's order (the "known" list of the error message).
const DATABASE_FIELDS: Fields<DatabaseEntry> = {
  dbname: ['dbname', asIs],
  host: ['host', asIs],
  port: ['port', (v) => count(v, 1, 65535)],
  user: ['user', asIs],
  password: ['password', asIs],
  auth_user: ['authUser', asIs],
  auth_dbname: ['authDbname', asIs],
  auth_query: ['authQuery', asIs],
  client_encoding: ['clientEncoding', asIs],
  datestyle: ['datestyle', asIs],
  timezone: ['timezone', asIs],
  pool_size: ['poolSize', count],
  min_pool_size: ['minPoolSize', count],
  reserve_pool: ['reservePool', count], // the older spelling, still accepted
  reserve_pool_size: ['reservePool', count],
  max_db_connections: ['maxDbConnections', count],
  max_db_client_connections: ['maxDbClientConnections', count],
  server_lifetime: ['serverLifetime', count], // whole seconds here, as pgBouncer reads it
  load_balance_hosts: ['loadBalanceHosts', (v) => lookup(LOAD_BALANCE_HOSTS, v)],
  pool_mode: ['poolMode', (v) => lookup(POOL_MODES, v)],
  connect_query: ['connectQuery', asIs],
  application_name: ['applicationName', asIs],
};

const USER_FIELDS: Fields<UserEntry> = {
  pool_mode: ['poolMode', (v) => lookup(POOL_MODES, v)],
  pool_size: ['poolSize', count],
  reserve_pool_size: ['reservePool', count],
  max_user_connections: ['maxUserConnections', count],
  idle_transaction_timeout: ['idleTransactionTimeout', count], // whole seconds here, as pgBouncer reads them
  query_timeout: ['queryTimeout', count],
  client_idle_timeout: ['clientIdleTimeout', count],
  max_user_client_connections: ['maxUserClientConnections', count],
};

/** Sets the connection-string pairs on target; an unknown key or a bad value is an error naming the entry and key. */
function setFields<T extends object>(target: T, fields: Fields<T>, pairs: [string, string][], context: string): void {
  for (const [k, v] of pairs) {
    const field = Object.hasOwn(fields, k) ? fields[k] : undefined;
    if (!field) throw new PgBouncerConfigError(`${context}: unknown key "${k}" (pgBouncer 1.24 knows ${Object.keys(fields).join(', ')})`);
    Object.assign(target, { [field[0]]: at(`${context}: ${k}`, () => field[1](v)) });
  }
}

/** Runs a value's parser and names the place of a bad value. */
function at<T>(context: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof Invalid) throw new PgBouncerConfigError(`${context}: ${e.message}`);
    throw e;
  }
}

/** Like at(), for a part of a value: the message stays Invalid, for the caller to place. */
function within<T>(part: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof Invalid) throw new Invalid(`${part}: ${e.message}`);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The ini reader

const SECTIONS = ['pgbouncer', 'databases', 'users', 'peers', 'steadytext'] as const;
type Section = (typeof SECTIONS)[number];
/** pgBouncer stops at this depth of %include (it has no cycle check; this reader has both). */
const MAX_INCLUDE = 10;

/** [steadytext] keys: the SPECS key, its flag spelling (model-dir) or that with underscores (model_dir). */
const STEADYTEXT_KEYS = new Map<string, string>(
  Object.entries(SPECS).flatMap(([key, spec]) => [
    [key, key],
    [spec.flag, key],
    [spec.flag.replaceAll('-', '_'), key],
  ]),
);

class IniReader {
  private section: Section | null = null;
  private sawMain = false;
  /** real paths of the files being read, outermost first */
  private readonly open: string[] = [];
  readonly given = new Map<string, { value: Parsed; loc: Loc }>();
  readonly databases = new Map<string, DatabaseEntry>();
  readonly users = new Map<string, UserEntry>();
  readonly peers = new Map<number, PeerEntry>();
  readonly steadytext: Record<string, string> = {};
  readonly warnings: string[] = [];

  read(path: string, from?: Loc): void {
    let text: string;
    let real: string;
    try {
      text = readFileSync(path, 'utf8');
      real = realpathSync(path);
    } catch (e) {
      const what = from ? `${where(from)}: %include ${path}` : path;
      throw new PgBouncerConfigError(`${what}: cannot read it (${errno(e)})`, { cause: e });
    }
    if (from && this.open.includes(real)) {
      throw new PgBouncerConfigError(`${where(from)}: %include cycle: ${[...this.open, real].join(' -> ')}`);
    }
    if (from && this.open.length > MAX_INCLUDE) {
      throw new PgBouncerConfigError(`${where(from)}: %include nested deeper than ${MAX_INCLUDE} files`);
    }
    this.open.push(real);
    text
      .replace(/^\uFEFF/, '')
      .split('\n')
      .forEach((line, i) => this.line(line, { file: path, line: i + 1 }));
    this.open.pop();
  }

  finish(file: string): void {
    if (!this.sawMain) throw new PgBouncerConfigError(`${file}: no [pgbouncer] section (pgBouncer refuses a config without one)`);
  }

  private line(raw: string, loc: Loc): void {
    const s = ltrim(raw);
    if (s === '' || s.startsWith('#') || s.startsWith(';')) return;
    if (s.startsWith('%include') && (s[8] === ' ' || s[8] === '\t')) {
      const target = rtrim(ltrim(s.slice(9)));
      if (!target) throw new PgBouncerConfigError(`${where(loc)}: %include needs a file name`);
      // Relative to the including file (pgBouncer takes it relative to its working directory).
      this.read(resolve(dirname(loc.file), target), loc);
      return;
    }
    if (s.startsWith('[')) {
      const end = s.indexOf(']');
      if (end < 0) throw new PgBouncerConfigError(`${where(loc)}: syntax error: "${rtrim(s)}" has no closing ]`);
      this.startSection(s.slice(1, end), loc);
      // pgBouncer reads on after the ] as if a new line began (a comment there is fine).
      if (s.slice(end + 1).trim()) this.line(s.slice(end + 1), loc);
      return;
    }
    const { key, rest } = this.key(s, loc);
    const eq = /^[ \t]*=[ \t]*/.exec(rest);
    if (!eq) throw new PgBouncerConfigError(`${where(loc)}: syntax error: expected "key = value", "[section]" or "%include file"`);
    this.entry(key, rtrim(rest.slice(eq[0].length)), loc);
  }

  /** A key is [A-Za-z0-9_.*-]+ as in pgBouncer, or double-quoted ("" for a quote), which pgBouncer's docs promise but its parser lacks. */
  private key(s: string, loc: Loc): { key: string; rest: string } {
    if (s.startsWith('"')) {
      let key = '';
      for (let i = 1; i < s.length; i++) {
        if (s[i] === '"') {
          if (s[i + 1] !== '"') return { key, rest: s.slice(i + 1) };
          i++;
        }
        key += s[i];
      }
      throw new PgBouncerConfigError(`${where(loc)}: syntax error: the quoted name has no closing "`);
    }
    const key = /^[A-Za-z0-9_.*-]+/.exec(s)?.[0];
    if (!key) throw new PgBouncerConfigError(`${where(loc)}: syntax error: expected "key = value", "[section]" or "%include file"`);
    return { key, rest: s.slice(key.length) };
  }

  private startSection(name: string, loc: Loc): void {
    const known = SECTIONS.find((s) => s === name);
    if (!known) {
      throw new PgBouncerConfigError(
        `${where(loc)}: unknown section [${name}] (pgBouncer knows [pgbouncer], [databases], [users], [peers]; [steadytext] is pg-steadytext's)`,
      );
    }
    this.section = known;
    if (known !== 'pgbouncer') return;
    this.sawMain = true;
    // pgBouncer sets every default again at each [pgbouncer] header, so what came before it is lost.
    if (this.given.size) {
      this.warnings.push(
        `${where(loc)}: [pgbouncer] again: as in pgBouncer, the settings given before return to their defaults (${[...this.given.keys()].join(', ')})`,
      );
      this.given.clear();
    }
  }

  private entry(key: string, value: string, loc: Loc): void {
    switch (this.section) {
      case null:
        throw new PgBouncerConfigError(`${where(loc)}: "${key}" comes before any [section]`);
      case 'pgbouncer': {
        const p = PARAM_BY_KEY.get(key);
        if (!p) {
          this.warnings.push(`${where(loc)}: unknown setting "${key}" in [pgbouncer], ignored`);
          return;
        }
        this.given.set(key, { value: at(`${where(loc)}: ${key}`, () => parseValue(p.kind, unquoteValue(value))), loc });
        const why = NO_EFFECT.get(key);
        if (why) this.warnings.push(`${where(loc)}: "${key}" is accepted and has no effect here: ${why}`);
        return;
      }
      case 'databases':
        return this.database(key, value, loc);
      case 'users':
        return this.user(key, value, loc);
      case 'peers':
        return this.peer(key, value, loc);
      case 'steadytext': {
        const ours = STEADYTEXT_KEYS.get(key);
        if (ours) this.steadytext[ours] = unquoteValue(value);
        else this.warnings.push(`${where(loc)}: unknown setting "${key}" in [steadytext], ignored`);
        return;
      }
    }
  }

  private database(name: string, connstr: string, loc: Loc): void {
    const context = `${where(loc)}: database "${name}"`;
    if (name === 'pgbouncer') throw new PgBouncerConfigError(`${context}: the name is reserved for the admin console`);
    const e: DatabaseEntry = { name, raw: connstr };
    // "*" too: pgBouncer reads it only when a client first needs it, and refuses a bad key then.
    const pairs = at(context, () => connPairs(connstr));
    setFields(e, DATABASE_FIELDS, pairs, context);
    this.databases.set(name, e);
  }

  private user(name: string, settings: string, loc: Loc): void {
    const context = `${where(loc)}: user "${name}"`;
    const u: UserEntry = { name };
    const pairs = at(context, () => connPairs(settings));
    setFields(u, USER_FIELDS, pairs, context);
    this.users.set(name, u);
  }

  private peer(name: string, connstr: string, loc: Loc): void {
    const context = `${where(loc)}: peer ${name}`;
    const id = at(context, () => count(name, 1, 65535));
    let host: string | undefined;
    let port = 6432;
    let poolSize: number | undefined;
    for (const [k, v] of at(context, () => connPairs(connstr))) {
      if (k === 'host') host = v;
      else if (k === 'port') port = at(`${context}: port`, () => count(v, 1, 65535));
      else if (k === 'pool_size') poolSize = at(`${context}: pool_size`, () => count(v));
      else throw new PgBouncerConfigError(`${context}: unknown key "${k}" (pgBouncer 1.24 knows host, port, pool_size)`);
    }
    if (!host) throw new PgBouncerConfigError(`${context}: host is missing`);
    this.peers.set(id, { id, host, port, ...(poolSize === undefined ? {} : { poolSize }), raw: connstr });
  }
}

/**
 * Reads pgbouncer.ini (with its %include files), and the auth_file and auth_hba_file it names, as pgBouncer 1.24
 * does. Relative auth_file and auth_hba_file paths are taken from the working directory, as pgBouncer takes them.
 */
export function loadPgBouncerConfig(file: string): PoolerConfig {
  const path = resolve(file);
  const ini = new IniReader();
  ini.read(path);
  ini.finish(path);

  const fields: Record<string, unknown> = {};
  const all: ConfigRow[] = [];
  for (const p of PARAM_BY_KEY.values()) {
    const value = ini.given.get(p.key)?.value ?? (p.key === 'conffile' ? parseValue('str', path) : defaultOf(p));
    fields[camel(p.key)] = value.typed;
    all.push({ key: p.key, value: value.shown, default: p.def ?? '', changeable: p.changeable });
  }
  const settings = { ...fields, all } as PoolerSettings;

  let authFile = new Map<string, Secret>();
  // pgBouncer reads no auth_file for auth_type any (no passwords) or pam (the system checks them).
  if (settings.authFile && settings.authType !== 'any' && settings.authType !== 'pam') {
    authFile = readAuthFile(resolve(settings.authFile));
  }
  let hba: HbaRule[] | null = null;
  if (settings.authType === 'hba') {
    if (!settings.authHbaFile) {
      const loc = ini.given.get('auth_type')?.loc;
      throw new PgBouncerConfigError(`${loc ? where(loc) : path}: auth_type = hba needs auth_hba_file`);
    }
    hba = parseHbaFile(resolve(settings.authHbaFile), ini.warnings);
  }
  return {
    file: path,
    settings,
    databases: ini.databases,
    users: ini.users,
    peers: ini.peers,
    authFile,
    hba,
    steadytext: ini.steadytext,
    warnings: ini.warnings,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// auth_file and secrets

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** As pgBouncer tells them apart: md5 + 32 lowercase hex, a well-formed SCRAM-SHA-256 verifier, or else a cleartext password. */
export function parseSecret(text: string): Secret {
  if (/^md5[0-9a-f]{32}$/.test(text)) return { kind: 'md5', hash: text };
  const m = /^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$/.exec(text);
  if (m && Number(m[1]) <= 2 ** 31 - 1 && BASE64.test(m[2]) && BASE64.test(m[3]) && BASE64.test(m[4])) {
    const storedKey = Buffer.from(m[3], 'base64');
    const serverKey = Buffer.from(m[4], 'base64');
    if (storedKey.length === 32 && serverKey.length === 32) {
      return { kind: 'scram', iterations: Number(m[1]), salt: Buffer.from(m[2], 'base64'), storedKey, serverKey, text };
    }
  }
  return { kind: 'plain', password: text };
}

/** pgBouncer's limits (MAX_USERNAME, MAX_PASSWORD), in bytes of the text between the quotes. */
const MAX_USERNAME = 128;
const MAX_PASSWORD = 2048;

/** The double-quoted field that starts at s[start] ("" for a quote), or null when it does not close on the line. */
function quotedField(s: string, start: number): { value: string; raw: string; end: number } | null {
  let value = '';
  for (let i = start + 1; i < s.length; i++) {
    if (s[i] === '"') {
      if (s[i + 1] !== '"') return { value, raw: s.slice(start + 1, i), end: i + 1 };
      i++;
    }
    value += s[i];
  }
  return null;
}

/**
 * userlist.txt: `"user" "secret"` a line, anything after the second field ignored, lines starting with ; are comments.
 * A malformed line is an error naming it (pgBouncer logs it and keeps only the users above it).
 */
export function readAuthFile(path: string): Map<string, Secret> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new PgBouncerConfigError(`auth_file ${path}: cannot read it (${errno(e)})`, { cause: e });
  }
  const out = new Map<string, Secret>();
  text.split('\n').forEach((raw, i) => {
    const loc = `${path} line ${i + 1}`;
    const s = ltrim(raw);
    if (s === '' || s.startsWith(';')) return;
    const user = s.startsWith('"') ? quotedField(s, 0) : null;
    if (!user) throw new PgBouncerConfigError(`${loc}: expected "user" "secret" (lines starting with ; are comments)`);
    const q = s.indexOf('"', user.end);
    const secret = q < 0 ? null : quotedField(s, q);
    if (!secret) throw new PgBouncerConfigError(`${loc}: user "${user.value}" has no quoted secret after the name`);
    if (Buffer.byteLength(user.raw) >= MAX_USERNAME) throw new PgBouncerConfigError(`${loc}: user name longer than ${MAX_USERNAME - 1} bytes`);
    if (Buffer.byteLength(secret.raw) >= MAX_PASSWORD) throw new PgBouncerConfigError(`${loc}: secret longer than ${MAX_PASSWORD - 1} bytes`);
    out.set(user.value, parseSecret(secret.value));
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// auth_hba_file

export interface HbaRule {
  type: 'local' | 'host' | 'hostssl' | 'hostnossl';
  /**
   * Keywords bare (all, sameuser, replication); a quoted name keeps its quotes ("all" is the database named all);
   * other names as written. @file lists are expanded in place. pgBouncer reads the user column with the same keywords.
   */
  databases: string[];
  users: string[];
  /** Absent for local. */
  address?: { net: string; bits: number } | 'all';
  /** trust, reject, md5, password, peer, cert or scram-sha-256. */
  method: string;
  /** map= (a user name map of auth_ident_file), when given. */
  map?: string;
  line: number;
}

type HbaType = HbaRule['type'];
const HBA_TYPES: readonly HbaType[] = ['local', 'host', 'hostssl', 'hostnossl'];
const HBA_METHODS = ['trust', 'reject', 'md5', 'password', 'peer', 'cert', 'scram-sha-256'];
const NAME_KEYWORDS = ['all', 'sameuser', 'replication'];

interface Tok {
  kind: 'ident' | 'string' | 'comma';
  text: string;
}

/** pg_hba.conf tokens as pgBouncer splits them: # starts a comment, "..." is a name ("" for a quote). */
function hbaTokens(line: string): Tok[] {
  const out: Tok[] = [];
  const space = (c: string) => ' \t\n\v\f\r'.includes(c);
  for (let i = 0; i < line.length;) {
    const c = line[i];
    if (space(c)) {
      i++;
    } else if (c === '#') {
      break;
    } else if (c === ',') {
      out.push({ kind: 'comma', text: c });
      i++;
    } else if (c === '"') {
      const f = quotedField(line, i);
      if (!f) throw new Invalid('a quoted name has no closing "');
      out.push({ kind: 'string', text: f.value });
      i = f.end;
    } else {
      let j = i + 1;
      while (j < line.length && !',#"'.includes(line[j]) && !space(line[j])) j++;
      out.push({ kind: 'ident', text: line.slice(i, j) });
      i = j;
    }
  }
  return out;
}

const quoteName = (n: string) => `"${n.replaceAll('"', '""')}"`;

/** The 4 or 16 bytes of an IP address (a zone id ignored), or null. */
function ipBytes(text: string): number[] | null {
  const s = text.replace(/%.*$/, '');
  if (isIPv4(s)) return s.split('.').map(Number);
  if (!isIPv6(s)) return null;
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  const body = v4 ? `${s.slice(0, v4.index)}0:0` : s;
  const [head, tail] = body.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const bytes = groups.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 255]);
  if (v4) bytes.splice(12, 4, ...v4.slice(1).map(Number));
  return bytes;
}

/** Byte i of a netmask of `bits` bits. */
const maskByte = (bits: number, i: number) => (bits >= (i + 1) * 8 ? 255 : bits <= i * 8 ? 0 : (0xff << (8 - (bits - i * 8))) & 255);

class HbaReader {
  constructor(private readonly warnings: string[]) {}

  rules(path: string): HbaRule[] {
    const rules: HbaRule[] = [];
    at('auth_hba_file', () => this.lines(path)).forEach((raw, i) => {
      const loc = `${path} line ${i + 1}`;
      const rule = at(loc, () => this.rule(hbaTokens(raw), path, loc, i + 1));
      if (rule) rules.push(rule);
    });
    return rules;
  }

  private lines(path: string): string[] {
    try {
      return readFileSync(path, 'utf8').split('\n');
    } catch (e) {
      throw new Invalid(`cannot read ${path} (${errno(e)})`);
    }
  }

  // A line pgBouncer cannot read is skipped there with a warning; here it is an error, as a skipped reject line would let clients in.
  private rule(toks: Tok[], path: string, loc: string, line: number): HbaRule | null {
    if (toks.length === 0) return null;
    let pos = 0;
    const next = () => toks[pos++] as Tok | undefined;
    const first = next()!;
    const type = HBA_TYPES.find((t) => first.kind === 'ident' && t === first.text);
    if (!type) throw new Invalid(`unknown connection type "${first.text}" (pgBouncer knows ${HBA_TYPES.join(', ')})`);

    const names = (what: string): string[] => {
      const out: string[] = [];
      for (;;) {
        const t = next();
        if (!t || t.kind === 'comma') throw new Invalid(`expected a ${what} name`);
        out.push(...this.name(t, path, [path]));
        if (toks[pos]?.kind !== 'comma') return out;
        pos++;
      }
    };
    const databases = names('database');
    const users = names('user');

    let address: HbaRule['address'];
    if (type !== 'local') {
      const t = next();
      if (!t || t.kind !== 'ident') throw new Invalid('expected an address (all, an IP address with /bits, or an address and a mask)');
      if (t.text === 'all') {
        address = 'all';
      } else {
        const slash = t.text.indexOf('/');
        const net = slash < 0 ? t.text : t.text.slice(0, slash);
        const bytes = ipBytes(net);
        if (!bytes || net.includes('%')) {
          throw new Invalid(`"${net}" is not an IP address (pgBouncer supports all, IPv4 and IPv6 addresses; no host names, samehost or samenet)`);
        }
        let bits: number;
        if (slash >= 0) {
          bits = within(`mask of ${t.text}`, () => count(t.text.slice(slash + 1), 0, bytes.length * 8));
        } else {
          const m = next();
          const mask = m?.kind === 'ident' ? ipBytes(m.text) : null;
          if (!mask || mask.length !== bytes.length) throw new Invalid(`expected a netmask after ${net}`);
          bits = mask.reduce((n, b) => n + (b.toString(2).match(/1/g)?.length ?? 0), 0);
          if (mask.some((b, i) => b !== maskByte(bits, i))) throw new Invalid(`netmask ${m!.text} is not contiguous`);
        }
        if (bytes.some((b, i) => (b & ~maskByte(bits, i) & 255) !== 0)) {
          this.warnings.push(`${loc}: ${net}/${bits} has bits set outside the mask: as in pgBouncer, it matches no client`);
        }
        address = { net, bits };
      }
    }

    const m = next();
    if (!m || m.kind !== 'ident' || !HBA_METHODS.includes(m.text)) {
      throw new Invalid(`unsupported method "${m?.text ?? ''}" (pgBouncer supports ${HBA_METHODS.join(', ')})`);
    }
    const rule: HbaRule = { type, databases, users, ...(address ? { address } : {}), method: m.text, line };
    const opt = next();
    if (opt) {
      if (opt.kind !== 'ident' || !opt.text.startsWith('map=') || opt.text === 'map=') {
        throw new Invalid(`unsupported option "${opt.text}" (pgBouncer knows map=name only)`);
      }
      rule.map = opt.text.slice(4);
      if (pos < toks.length) throw new Invalid(`unexpected "${toks[pos].text}" after ${opt.text}`);
    }
    return rule;
  }

  /** One name token; @file reads names from a file beside the file that names it. */
  private name(t: Tok, path: string, open: string[]): string[] {
    if (t.kind === 'string') return [quoteName(t.text)];
    if (NAME_KEYWORDS.includes(t.text)) return [t.text];
    if (t.text === 'samerole' || t.text === 'samegroup') throw new Invalid(`${t.text} is not supported by pgBouncer`);
    if (t.text.startsWith('+')) throw new Invalid(`group names (${t.text}) are not supported by pgBouncer`);
    if (!t.text.startsWith('@')) return [t.text];
    const file = resolve(dirname(path), t.text.slice(1));
    if (open.includes(file)) throw new Invalid(`@ file cycle: ${[...open, file].join(' -> ')}`);
    // Names in the file may be separated by commas or by spaces (pgBouncer stops at the first space of a line).
    return within(t.text, () => this.lines(file)).flatMap((raw, i) =>
      at(`${file} line ${i + 1}`, () =>
        hbaTokens(raw)
          .filter((x) => x.kind !== 'comma')
          .flatMap((x) => this.name(x, file, [...open, file])),
      ),
    );
  }
}

/** pgBouncer's subset of pg_hba.conf (see HbaRule); bad lines are errors. Problems that do not stop it go to warnings. */
export function parseHbaFile(path: string, warnings: string[] = []): HbaRule[] {
  return new HbaReader(warnings).rules(path);
}

function namesMatch(names: string[], name: string, pair: string): boolean {
  return names.some((n) => {
    if (n === 'all') return true;
    if (n === 'sameuser') return name === pair;
    if (n === 'replication') return false; // matches replication connections only, checked apart
    return (n.startsWith('"') ? n.slice(1, -1).replaceAll('""', '"') : n) === name;
  });
}

function addressMatches(rule: HbaRule['address'], client: number[] | null): boolean {
  if (rule === 'all') return true;
  if (!rule || !client) return false;
  const net = ipBytes(rule.net);
  // As pgBouncer: the client's masked address against the net as written (a net with host bits set matches nothing).
  return !!net && net.length === client.length && client.every((b, i) => (b & maskByte(rule.bits, i)) === net[i]);
}

/**
 * The first rule for this connection, as pgBouncer evaluates them (null: no rule, the client is refused).
 * replication: a physical replication connection, which only rules naming the replication keyword match.
 */
export function matchHba(
  rules: HbaRule[],
  c: { local: boolean; ssl: boolean; database: string; user: string; address: string; replication?: boolean },
): HbaRule | null {
  let client = c.local ? null : ipBytes(c.address);
  // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; pgBouncer's own listeners see them as IPv4.
  if (client?.length === 16 && client.slice(0, 10).every((b) => b === 0) && client[10] === 255 && client[11] === 255) {
    client = client.slice(12);
  }
  for (const r of rules) {
    if (c.local !== (r.type === 'local')) continue;
    if (r.type === 'hostssl' && !c.ssl) continue;
    if (r.type === 'hostnossl' && c.ssl) continue;
    if (!c.local && !addressMatches(r.address, client)) continue;
    if (c.replication ? !r.databases.includes('replication') : !namesMatch(r.databases, c.database, c.user)) continue;
    if (!namesMatch(r.users, c.user, c.database)) continue;
    return r;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// SET on the admin console

/** What `SET key = value` on the console does to one [pgbouncer] setting. */
export interface SettingChange {
  /** The PoolerSettings field: the key in camelCase. */
  field: Exclude<keyof PoolerSettings, 'all'>;
  typed: unknown;
  /** As SHOW CONFIG prints it. */
  shown: string;
  /** False for a setting pgBouncer reads only at start: it accepts the SET and changes nothing. */
  changeable: boolean;
}

/**
 * A console SET read as pgBouncer's cf_set reads it: the key exactly as written (case matters), the value by
 * the setting's kind as in the ini. Null for a key pgBouncer does not know; a bad value throws PgBouncerConfigError.
 */
export function parseSetting(key: string, text: string): SettingChange | null {
  const p = PARAM_BY_KEY.get(key);
  if (!p) return null;
  const v = at(`SET ${key}`, () => parseValue(p.kind, text));
  return { field: camel(key) as SettingChange['field'], typed: v.typed, shown: v.shown, changeable: p.changeable };
}
