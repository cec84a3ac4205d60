// The admin console: the virtual database `pgbouncer`, rendered as pgBouncer 1.24 renders it (its src/admin.c
// and src/stats.c): the same commands, column names, column order and types, text forms, command tags and
// error texts, so that tools written for pgBouncer (exporters, scripts, psql habits) work unchanged. The
// pooler supplies the data and carries out the commands through ConsoleHost; this file owns the grammar, the
// columns and the rendering. Beyond pgBouncer: the extended query protocol (pgBouncer refuses it, so psycopg 3
// with parameters, JDBC and node-postgres' prepared queries could not use its console), SHOW STEADYTEXT, and
// SHOW CLIENTS' trailing `pinned` column (exporters read columns by name, so an extra last column is safe).

import {
  BIND_COMPLETE,
  Be,
  CLOSE_COMPLETE,
  EMPTY_QUERY_RESPONSE,
  Fe,
  NO_DATA,
  PARSE_COMPLETE,
  PORTAL_SUSPENDED,
  SqlState,
  commandComplete,
  dataRow,
  errorResponse,
  parameterDescription,
  readBind,
  readExecute,
  readParse,
  readQuery,
  readTarget,
  readyForQuery,
  rowDescription,
  typeName,
  type ErrorFields,
  type FieldDescription,
} from './protocol.js';

/** The pgBouncer release whose console this reproduces (SHOW VERSION and the server_version parameter say it). */
export const PGBOUNCER_VERSION = '1.24.1';
/** The console's own database: no command pauses, kills, disables or waits on it. */
export const CONSOLE_DATABASE = 'pgbouncer';

// ---- what the pooler provides ----------------------------------------------------------------------------

/** A counter: a number, or a bigint where it may pass 2^53. */
export type Count = number | bigint;
/** pgBouncer's global pause state (SHOW STATE): running, paused by PAUSE, or suspended by SUSPEND. */
export type PauseMode = 'none' | 'pause' | 'suspend';
export type ShutdownMode = 'immediate' | 'wait_for_servers' | 'wait_for_clients';

/** SHOW POOLS: one (database, user) pool, in the pooler's pool order (the console's pgbouncer/pgbouncer pool too). */
export interface PoolRow {
  database: string;
  user: string;
  clActive: number;
  clWaiting: number;
  clActiveCancelReq: number;
  clWaitingCancelReq: number;
  svActive: number;
  svActiveCancel: number;
  svBeingCanceled: number;
  svIdle: number;
  svUsed: number;
  svTested: number;
  svLogin: number;
  /** How long the oldest waiting client has waited, in microseconds (the console splits it into maxwait, maxwait_us). */
  maxWaitUs: number;
  /** The pool's effective mode: session, transaction or statement. */
  poolMode: string;
  /** The database's load_balance_hosts, only when its host lists several hosts; else null. */
  loadBalanceHosts: string | null;
}

/** One client or server connection (SHOW CLIENTS, SHOW SERVERS). */
export interface SocketRow {
  /** Login user; null shows as "(nouser)". */
  user: string | null;
  /** Database of its pool; null (no pool, or a peer's) shows as "(nodb)". */
  database: string | null;
  replication: 'none' | 'logical' | 'physical';
  /** As pgBouncer names them: clients active, waiting, active_cancel_req, waiting_cancel_req; servers active, idle, used, tested, new, active_cancel, being_canceled. */
  state: string;
  /** Remote address ("unix" for a Unix socket) and port. */
  addr: string;
  port: number;
  localAddr: string;
  localPort: number;
  connectTime: Date;
  requestTime: Date;
  /** Time the current request has waited, in microseconds (the console splits it into wait, wait_us). */
  waitUs: number;
  closeNeeded: boolean;
  /** pgBouncer shows its socket pointers; any identifier unique among the open sockets serves. */
  ptr: string;
  /** ptr of the linked client/server, '' when unlinked. */
  link: string;
  /** Peer's pid over a Unix socket; a server's backend pid; else 0. */
  remotePid: number;
  /** TLS description ('' for plaintext). */
  tls: string;
  applicationName: string;
  preparedStatements: number;
  /** The id KILL_CLIENT takes. */
  id: number;
}

/** SHOW CLIENTS adds one column of ours, last. */
export interface ClientRow extends SocketRow {
  /** Why the client holds its server connection (e.g. "transaction", "prepared statement", "advisory lock"), '' when it does not. */
  pinned: string;
}

/** SHOW SOCKETS / ACTIVE_SOCKETS: clients and servers together, with buffer positions. */
export interface DebugSocketRow extends SocketRow {
  type: 'C' | 'S';
  recvPos: number;
  pktPos: number;
  pktRemain: number;
  sendPos: number;
  sendRemain: number;
  pktAvail: number;
  sendAvail: number;
}

/** Counters of one database, added over its pools (pgBouncer's PgStats). Times in microseconds. */
export interface StatCounters {
  serverAssignmentCount: Count;
  xactCount: Count;
  queryCount: Count;
  /** Bytes received from clients. */
  bytesReceived: Count;
  /** Bytes sent to clients (received from servers). */
  bytesSent: Count;
  xactTime: Count;
  queryTime: Count;
  waitTime: Count;
  clientParseCount: Count;
  serverParseCount: Count;
  bindCount: Count;
}

/** One database's counters now, and as they were at the start of the averaging window. */
export interface DatabaseStats {
  database: string;
  current: StatCounters;
  previous: StatCounters;
}

/** SHOW STATS and its kin. The console derives the averages from the two snapshots exactly as pgBouncer does. */
export interface StatsSnapshot {
  /** In pool order, one entry per database. */
  databases: DatabaseStats[];
  /** Microseconds from the `previous` snapshot to now (pgBouncer: now minus the stamp of its older stats). */
  periodUs: Count;
}

/** SHOW DATABASES (the console's own `pgbouncer` database included, as pgBouncer lists it). */
export interface DatabaseRow {
  name: string;
  host: string | null;
  port: number;
  database: string;
  forceUser: string | null;
  poolSize: number;
  minPoolSize: number;
  reservePoolSize: number;
  /** In seconds. */
  serverLifetime: number;
  /** Null when the database inherits the global pool_mode. */
  poolMode: string | null;
  loadBalanceHosts: string | null;
  maxConnections: number;
  currentConnections: number;
  maxClientConnections: number;
  currentClientConnections: number;
  paused: boolean;
  disabled: boolean;
}

/** SHOW USERS. */
export interface UserRow {
  name: string;
  /** Null when the user has no pool_size of its own. */
  poolSize: number | null;
  reservePoolSize: number | null;
  poolMode: string | null;
  maxUserConnections: number;
  currentConnections: number;
  maxUserClientConnections: number;
  currentClientConnections: number;
}

/** SHOW CONFIG (the same shape as config/pgbouncer.ts's ConfigRow). */
export interface ConfigRow {
  key: string;
  value: string;
  default: string;
  changeable: boolean;
}

/** SHOW LISTS: the sizes of the pooler's lists and caches. */
export interface ListCounts {
  databases: number;
  users: number;
  peers: number;
  pools: number;
  peerPools: number;
  freeClients: number;
  usedClients: number;
  loginClients: number;
  freeServers: number;
  usedServers: number;
  dnsNames: number;
  dnsZones: number;
  dnsQueries: number;
  dnsPending: number;
}

/** SHOW FDS: the sockets an online restart would take over. */
export interface FdRow {
  fd: number;
  task: 'pooler' | 'client' | 'server';
  user: string | null;
  database: string | null;
  addr: string;
  port: number;
  cancel: Count;
  link: number;
  clientEncoding: string | null;
  stdStrings: string | null;
  datestyle: string | null;
  timezone: string | null;
  password: string | null;
  scramClientKey: Buffer | null;
  scramServerKey: Buffer | null;
}

export interface DnsHostRow {
  hostname: string;
  /** Seconds left. */
  ttl: Count;
  addrs: string[];
}

export interface DnsZoneRow {
  zonename: string;
  serial: Count;
  count: number;
}

export interface PeerRow {
  peerId: number;
  host: string | null;
  port: number;
  poolSize: number;
}

export interface PeerPoolRow {
  peerId: number;
  clActiveCancelReq: number;
  clWaitingCancelReq: number;
  svActiveCancel: number;
  svLogin: number;
}

/** SHOW MEM: one cache of fixed-size objects. */
export interface MemRow {
  name: string;
  size: number;
  used: number;
  free: number;
}

/** SHOW STEADYTEXT: one (database, model) of the steadytext layer. */
export interface SteadytextRow {
  database: string;
  model: string;
  calls: Count;
  cacheHits: Count;
  queueDepth: number;
  avgLatencyUs: Count;
  p99LatencyUs: Count;
}

/** Why the pooler refused a command; the console words each as pgBouncer does. */
export type Refusal =
  | 'no_such_database' // "no such database: <db>"
  | 'not_paused' // RESUME: "pooler is not paused/suspended", "database <db> is not paused"
  | 'shutting_down' // RESUME: "pooler is shutting down"
  | 'paused_databases' // SUSPEND: "cannot suspend with paused databases"
  | 'client_not_found' // KILL_CLIENT: "client not found"
  | 'set_failed'; // SET: "SET failed" (unknown key, bad value, not changeable)

/** What a command did: nothing to add (void), a refusal (detail: an optional DETAIL line), or a notice sent before the tag. */
export type CommandOutcome = void | { refused: Refusal; detail?: string } | { notice: string };
/** A command answers when done: PAUSE when the servers are released, SUSPEND when buffers are flushed, WAIT_CLOSE when servers closed. */
export type CommandAnswer = CommandOutcome | Promise<CommandOutcome>;

/** Everything the console shows and does, provided by the pooler. Rows are plain data; the console owns columns, order, types and text. */
export interface ConsoleHost {
  pools(): PoolRow[];
  /** SHOW CLIENTS order: per pool, its active, waiting, active_cancel_req, waiting_cancel_req lists. */
  clients(): ClientRow[];
  /** SHOW SERVERS order: per pool, active, idle, used, tested, new, active_cancel, being_canceled. */
  servers(): SocketRow[];
  /** SHOW SOCKETS (states cl_active, cl_waiting, sv_active, sv_idle, sv_used, sv_tested, sv_login, then cl_login); `activeOnly`: only sockets with buffered data (SHOW ACTIVE_SOCKETS). */
  sockets(activeOnly: boolean): DebugSocketRow[];
  stats(): StatsSnapshot;
  /**
   * A console session's first request (SHOW STATS counts it on the console's database). pgBouncer starts an
   * admin client's query and transaction at its first message and never ends them: one of each per login.
   */
  requested?(): void;
  databases(): DatabaseRow[];
  users(): UserRow[];
  config(): ConfigRow[];
  lists(): ListCounts;
  fds(): FdRow[];
  dnsHosts(): DnsHostRow[];
  dnsZones(): DnsZoneRow[];
  pauseMode(): PauseMode;
  peers(): PeerRow[];
  peerPools(): PeerPoolRow[];
  mem(): MemRow[];
  steadytext(): SteadytextRow[];
  /** Before a SHOW reads its rows: a host whose rows live in several processes (console-relay.ts) gathers them. */
  gather?(show: string): void | Promise<void>;

  /** The console has checked: admin access, not already paused/suspended, `database` is not the console's. */
  pause(database?: string): CommandAnswer;
  /** Checked: admin access; `database` is not the console's. The pooler refuses with shutting_down, not_paused, no_such_database. */
  resume(database?: string): CommandAnswer;
  /** Checked: admin access, not already paused/suspended. */
  suspend(): CommandAnswer;
  reconnect(database?: string): CommandAnswer;
  /** Checked: admin access, not paused/suspended, a database given, not the console's. */
  kill(database: string): CommandAnswer;
  /** Checked: admin access, a valid id. */
  killClient(id: number): CommandAnswer;
  disable(database: string): CommandAnswer;
  enable(database: string): CommandAnswer;
  reload(): CommandAnswer;
  /** 'immediate' gets no answer on the console (pgBouncer's connection stays silent until the process exits). */
  shutdown(mode: ShutdownMode): CommandAnswer;
  waitClose(database?: string): CommandAnswer;
  /** SET key = value of an admin user (parameters pgBouncer fakes, like client_encoding, never reach the pooler). */
  set(key: string, value: string): CommandAnswer;
}

/** The ParameterStatus messages pgBouncer sends a console client after AuthenticationOk, in its order. */
export function consoleStartupParams(): [string, string][] {
  return [
    ['server_version', `${PGBOUNCER_VERSION}/bouncer`],
    ['client_encoding', 'UTF8'],
    ['server_encoding', 'UTF8'],
    ['DateStyle', 'ISO'],
    ['TimeZone', 'GMT'],
    ['standard_conforming_strings', 'on'],
    ['is_superuser', 'on'],
  ];
}

/** The user the console serves: in admin_users (everything) and/or stats_users (SHOW only). */
export interface ConsoleUser {
  user: string;
  admin: boolean;
  stats: boolean;
}

/** pgBouncer's answer to a console login by a user in neither admin_users nor stats_users (null: allowed). Send it, then close. */
export function consoleLoginRefusal(who: ConsoleUser): Buffer | null {
  return who.admin || who.stats ? null : errorResponse({ severity: 'FATAL', code: SqlState.ProtocolViolation, message: 'not allowed' });
}

// ---- columns and their text --------------------------------------------------------------------------------

/** pgBouncer's pktbuf column letters: s text, i int4, q int8, N numeric, T a time shown as text, b bytea. */
type ColType = 's' | 'i' | 'q' | 'N' | 'T' | 'b';
type Column = readonly [name: string, type: ColType];
type Cell = string | Count | boolean | Date | Buffer | null;

const TYPE_OID: Record<ColType, number> = { s: 25, T: 25, i: 23, q: 20, N: 1700, b: 17 };
const TYPE_SIZE: Record<ColType, number> = { s: -1, T: -1, i: 4, q: 8, N: -1, b: -1 };

/** Columns written as admin.c writes them: its format letters, then the names (so each list reads against the source). */
function cols(letters: string, ...names: string[]): Column[] {
  if (letters.length !== names.length) throw new Error(`column letters ${letters} do not match ${names.length} names`);
  return names.map((n, i) => [n, letters[i] as ColType]);
}

// prettier-ignore
const SOCKET_COLUMNS = cols(
  'ssssssisiTTiiississii',
  'type', 'user', 'database', 'replication', 'state', 'addr', 'port', 'local_addr', 'local_port', 'connect_time', 'request_time',
  'wait', 'wait_us', 'close_needed', 'ptr', 'link', 'remote_pid', 'tls', 'application_name', 'prepared_statements', 'id',
);
const DEBUG_SOCKET_COLUMNS = [
  ...SOCKET_COLUMNS,
  ...cols('iiiiiii', 'recv_pos', 'pkt_pos', 'pkt_remain', 'send_pos', 'send_remain', 'pkt_avail', 'send_avail'),
];

// prettier-ignore
const STAT_KEYS = [
  'serverAssignmentCount', 'xactCount', 'queryCount', 'bytesReceived', 'bytesSent', 'xactTime', 'queryTime', 'waitTime',
  'clientParseCount', 'serverParseCount', 'bindCount',
] as const;
type Stats = Record<(typeof STAT_KEYS)[number], bigint>;
/** pgBouncer's C field names, which SHOW TOTALS prints after total_ / avg_. */
// prettier-ignore
const STAT_FIELD_NAMES = [
  'server_assignment_count', 'xact_count', 'query_count', 'client_bytes', 'server_bytes', 'xact_time', 'query_time', 'wait_time',
  'ps_client_parse_count', 'ps_server_parse_count', 'ps_bind_count',
];

function big(v: Count | boolean): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'boolean') return v ? 1n : 0n;
  return Number.isFinite(v) ? BigInt(Math.trunc(v)) : 0n;
}

function toStats(c: StatCounters): Stats {
  return Object.fromEntries(STAT_KEYS.map((k) => [k, big(c[k])])) as Stats;
}

function addStats(a: Stats, b: Stats): Stats {
  return Object.fromEntries(STAT_KEYS.map((k) => [k, a[k] + b[k]])) as Stats;
}

const ZERO_STATS = toStats(Object.fromEntries(STAT_KEYS.map((k) => [k, 0])) as unknown as StatCounters);

/**
 * pgBouncer's averages over the window: counts and bytes per second, times per transaction, query and server
 * assignment, in integer arithmetic. A counter that went backwards counts as no change (pgBouncer's unsigned
 * subtraction would print a wrapped number).
 */
function averages(cur: Stats, old: Stats, periodUs: bigint): Stats {
  const avg = { ...ZERO_STATS };
  if (periodUs <= 0n) return avg;
  const d = (k: keyof Stats) => (cur[k] > old[k] ? cur[k] - old[k] : 0n);
  for (const k of STAT_KEYS) if (!k.endsWith('Time')) avg[k] = (1_000_000n * d(k)) / periodUs;
  const per = (time: keyof Stats, count: keyof Stats) => (d(count) > 0n ? d(time) / d(count) : 0n);
  avg.queryTime = per('queryTime', 'queryCount');
  avg.xactTime = per('xactTime', 'xactCount');
  avg.waitTime = per('waitTime', 'serverAssignmentCount');
  return avg;
}

/**
 * pgBouncer's periodic line (log_stats, each stats_period): the averages over the window of every database's
 * counters added together, in its words.
 */
export function statsLogLine(snap: StatsSnapshot): string {
  const cur = snap.databases.reduce((sum, d) => addStats(sum, toStats(d.current)), ZERO_STATS);
  const old = snap.databases.reduce((sum, d) => addStats(sum, toStats(d.previous)), ZERO_STATS);
  const a = averages(cur, old, big(snap.periodUs));
  return (
    `stats: ${a.xactCount} xacts/s, ${a.queryCount} queries/s, ${a.clientParseCount} client parses/s, ` +
    `${a.serverParseCount} server parses/s, ${a.bindCount} binds/s, in ${a.bytesReceived} B/s, out ${a.bytesSent} B/s, ` +
    `xact ${a.xactTime} us, query ${a.queryTime} us, wait ${a.waitTime} us`
  );
}

function statCells(s: Stats): Cell[] {
  return STAT_KEYS.map((k) => s[k]);
}

function perDatabaseStats(snap: StatsSnapshot): { database: string; total: Stats; avg: Stats }[] {
  const period = big(snap.periodUs);
  return snap.databases.map((d) => {
    const total = toStats(d.current);
    return { database: d.database, total, avg: averages(total, toStats(d.previous), period) };
  });
}

function socketCells(type: 'C' | 'S', r: SocketRow): Cell[] {
  // prettier-ignore
  return [
    type, r.user ?? '(nouser)', r.database ?? '(nodb)', r.replication, r.state, r.addr, r.port, r.localAddr, r.localPort,
    r.connectTime, r.requestTime, Math.floor(r.waitUs / 1e6), r.waitUs % 1e6, r.closeNeeded, r.ptr, r.link, r.remotePid,
    r.tls, r.applicationName, r.preparedStatements, r.id,
  ];
}

/** USERS shows its sizes as text, right-aligned in 9 characters (C's "%9d"), '' when the user has none. */
const width9 = (n: number | null) => (n == null ? '' : String(n).padStart(9, ' '));

interface ShowSpec {
  columns: Column[];
  rows(host: ConsoleHost): Cell[][];
  adminOnly?: boolean;
}

/** Every SHOW of pgBouncer 1.24 (but HELP, a notice) and ours, by lower-case name. Laid out as admin.c lists them. */
// prettier-ignore
const SHOWS: Record<string, ShowSpec> = {
  pools: {
    columns: cols(
      'ssiiiiiiiiiiiiiss',
      'database', 'user', 'cl_active', 'cl_waiting', 'cl_active_cancel_req', 'cl_waiting_cancel_req', 'sv_active', 'sv_active_cancel',
      'sv_being_canceled', 'sv_idle', 'sv_used', 'sv_tested', 'sv_login', 'maxwait', 'maxwait_us', 'pool_mode', 'load_balance_hosts',
    ),
    rows: (h) =>
      h.pools().map((p) => [
        p.database, p.user, p.clActive, p.clWaiting, p.clActiveCancelReq, p.clWaitingCancelReq, p.svActive, p.svActiveCancel,
        p.svBeingCanceled, p.svIdle, p.svUsed, p.svTested, p.svLogin, Math.floor(p.maxWaitUs / 1e6), p.maxWaitUs % 1e6, p.poolMode,
        p.loadBalanceHosts,
      ]),
  },
  clients: {
    columns: [...SOCKET_COLUMNS, ['pinned', 's']],
    rows: (h) => h.clients().map((c) => [...socketCells('C', c), c.pinned]),
  },
  servers: { columns: SOCKET_COLUMNS, rows: (h) => h.servers().map((s) => socketCells('S', s)) },
  sockets: { columns: DEBUG_SOCKET_COLUMNS, rows: (h) => h.sockets(false).map(debugSocketCells) },
  active_sockets: { columns: DEBUG_SOCKET_COLUMNS, rows: (h) => h.sockets(true).map(debugSocketCells) },
  stats: {
    columns: cols(
      'sNNNNNNNNNNNNNNNNNNNNNN',
      'database', 'total_server_assignment_count', 'total_xact_count', 'total_query_count', 'total_received', 'total_sent',
      'total_xact_time', 'total_query_time', 'total_wait_time', 'total_client_parse_count', 'total_server_parse_count',
      'total_bind_count', 'avg_server_assignment_count', 'avg_xact_count', 'avg_query_count', 'avg_recv', 'avg_sent',
      'avg_xact_time', 'avg_query_time', 'avg_wait_time', 'avg_client_parse_count', 'avg_server_parse_count', 'avg_bind_count',
    ),
    rows: (h) => perDatabaseStats(h.stats()).map((d) => [d.database, ...statCells(d.total), ...statCells(d.avg)]),
  },
  stats_totals: {
    columns: cols(
      'sNNNNNNNNNNN',
      'database', 'server_assignment_count', 'xact_count', 'query_count', 'bytes_received', 'bytes_sent', 'xact_time', 'query_time',
      'wait_time', 'client_parse_count', 'server_parse_count', 'bind_count',
    ),
    rows: (h) => perDatabaseStats(h.stats()).map((d) => [d.database, ...statCells(d.total)]),
  },
  stats_averages: {
    columns: cols(
      'sNNNNNNNNNNN',
      'database', 'server_assignment_count', 'xact_count', 'query_count', 'bytes_received', 'bytes_sent', 'xact_time', 'query_time',
      'wait_time', 'avg_client_parse_count', 'avg_server_parse_count', 'avg_bind_count',
    ),
    rows: (h) => perDatabaseStats(h.stats()).map((d) => [d.database, ...statCells(d.avg)]),
  },
  totals: {
    columns: cols('sN', 'name', 'value'),
    rows: (h) => {
      const snap = h.stats();
      const total = snap.databases.reduce((s, d) => addStats(s, toStats(d.current)), ZERO_STATS);
      const old = snap.databases.reduce((s, d) => addStats(s, toStats(d.previous)), ZERO_STATS);
      const avg = averages(total, old, big(snap.periodUs));
      return [
        ...STAT_KEYS.map((k, i) => [`total_${STAT_FIELD_NAMES[i]}`, total[k]]),
        ...STAT_KEYS.map((k, i) => [`avg_${STAT_FIELD_NAMES[i]}`, avg[k]]),
      ];
    },
  },
  databases: {
    columns: cols(
      'ssissiiiissiiiiii',
      'name', 'host', 'port', 'database', 'force_user', 'pool_size', 'min_pool_size', 'reserve_pool_size', 'server_lifetime', 'pool_mode',
      'load_balance_hosts', 'max_connections', 'current_connections', 'max_client_connections', 'current_client_connections', 'paused',
      'disabled',
    ),
    rows: (h) =>
      h.databases().map((d) => [
        d.name, d.host, d.port, d.database, d.forceUser, d.poolSize, d.minPoolSize, d.reservePoolSize, d.serverLifetime, d.poolMode,
        d.loadBalanceHosts, d.maxConnections, d.currentConnections, d.maxClientConnections, d.currentClientConnections, d.paused,
        d.disabled,
      ]),
  },
  users: {
    columns: cols(
      'ssssiiii',
      'name', 'pool_size', 'reserve_pool_size', 'pool_mode', 'max_user_connections', 'current_connections', 'max_user_client_connections',
      'current_client_connections',
    ),
    rows: (h) =>
      h.users().map((u) => [
        u.name, width9(u.poolSize), width9(u.reservePoolSize), u.poolMode, u.maxUserConnections, u.currentConnections,
        u.maxUserClientConnections, u.currentClientConnections,
      ]),
  },
  config: {
    columns: cols('ssss', 'key', 'value', 'default', 'changeable'),
    rows: (h) => h.config().map((c) => [c.key, c.value, c.default, c.changeable ? 'yes' : 'no']),
  },
  lists: {
    columns: cols('si', 'list', 'items'),
    rows: (h) => {
      const l = h.lists();
      return [
        ['databases', l.databases], ['users', l.users], ['peers', l.peers], ['pools', l.pools], ['peer_pools', l.peerPools],
        ['free_clients', l.freeClients], ['used_clients', l.usedClients], ['login_clients', l.loginClients],
        ['free_servers', l.freeServers], ['used_servers', l.usedServers], ['dns_names', l.dnsNames], ['dns_zones', l.dnsZones],
        ['dns_queries', l.dnsQueries], ['dns_pending', l.dnsPending],
      ];
    },
  },
  fds: {
    // Cancel keys and passwords: admin users only, as in pgBouncer.
    adminOnly: true,
    columns: cols(
      'issssiqisssssbb',
      'fd', 'task', 'user', 'database', 'addr', 'port', 'cancel', 'link', 'client_encoding', 'std_strings', 'datestyle', 'timezone',
      'password', 'scram_client_key', 'scram_server_key',
    ),
    rows: (h) =>
      h.fds().map((f) => [
        f.fd, f.task, f.user, f.database, f.addr, f.port, f.cancel, f.link, f.clientEncoding, f.stdStrings, f.datestyle, f.timezone,
        f.password, f.scramClientKey, f.scramServerKey,
      ]),
  },
  dns_hosts: {
    columns: cols('sqs', 'hostname', 'ttl', 'addrs'),
    rows: (h) => h.dnsHosts().map((d) => [d.hostname, d.ttl, d.addrs.join(',')]),
  },
  dns_zones: {
    columns: cols('sqi', 'zonename', 'serial', 'count'),
    rows: (h) => h.dnsZones().map((z) => [z.zonename, z.serial, z.count]),
  },
  state: {
    columns: cols('ss', 'key', 'value'),
    rows: (h) => {
      const mode = h.pauseMode();
      const yes = (b: boolean) => (b ? 'yes' : 'no');
      return [['active', yes(mode === 'none')], ['paused', yes(mode === 'pause')], ['suspended', yes(mode === 'suspend')]];
    },
  },
  version: { columns: cols('s', 'version'), rows: () => [[`PgBouncer ${PGBOUNCER_VERSION}`]] },
  peers: {
    columns: cols('isii', 'peer_id', 'host', 'port', 'pool_size'),
    rows: (h) => h.peers().map((p) => [p.peerId, p.host, p.port, p.poolSize]),
  },
  peer_pools: {
    columns: cols('iiiii', 'peer_id', 'cl_active_cancel_req', 'cl_waiting_cancel_req', 'sv_active_cancel', 'sv_login'),
    rows: (h) => h.peerPools().map((p) => [p.peerId, p.clActiveCancelReq, p.clWaitingCancelReq, p.svActiveCancel, p.svLogin]),
  },
  mem: {
    columns: cols('siiii', 'name', 'size', 'used', 'free', 'memtotal'),
    rows: (h) => h.mem().map((m) => [m.name, m.size, m.used, m.free, (m.used + m.free) * m.size]),
  },
  // Ours: calls and cache_hits since start; queue_depth now (requests waiting for the model); latencies of
  // computed calls over the stats window, in microseconds. int8/int4 rather than pgBouncer's numeric: they are
  // plain integers, and drivers read them as such.
  steadytext: {
    columns: cols('ssqqiqq', 'database', 'model', 'calls', 'cache_hits', 'queue_depth', 'avg_latency_us', 'p99_latency_us'),
    rows: (h) => h.steadytext().map((s) => [s.database, s.model, s.calls, s.cacheHits, s.queueDepth, s.avgLatencyUs, s.p99LatencyUs]),
  },
};

function debugSocketCells(r: DebugSocketRow): Cell[] {
  return [...socketCells(r.type, r), r.recvPos, r.pktPos, r.pktRemain, r.sendPos, r.sendRemain, r.pktAvail, r.sendAvail];
}

/** Parameters pgBouncer pretends to have: SHOW answers these values, SET is ignored with a notice. */
const FAKE_PARAMS: Record<string, string> = {
  client_encoding: 'UTF-8',
  default_transaction_isolation: 'read committed',
  standard_conforming_strings: 'on',
  datestyle: 'ISO',
  timezone: 'GMT',
};

const HELP_DETAIL = [
  'SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION',
  'SHOW PEERS|PEER_POOLS',
  'SHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE',
  'SHOW DNS_HOSTS|DNS_ZONES',
  'SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS',
  'SHOW STEADYTEXT',
  'SET key = arg',
  'RELOAD',
  'PAUSE [<db>]',
  'RESUME [<db>]',
  'DISABLE <db>',
  'ENABLE <db>',
  'RECONNECT [<db>]',
  'KILL <db>',
  'KILL_CLIENT <client_id>',
  'SUSPEND',
  'SHUTDOWN',
  'SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS',
  'WAIT_CLOSE [<db>]',
]
  .map((line) => `\n\t${line}`)
  .join('');

// pgBouncer's 'T' columns: local time and the zone's abbreviation, as C's localtime and tzname print them (UTC
// prints the same; for a zone Intl has no abbreviation for, it prints the offset, e.g. GMT+1 where C says CET).
const zoneName = new Intl.DateTimeFormat('en-US', { timeZoneName: 'short' });
function formatTime(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  const zone = zoneName.formatToParts(d).find((x) => x.type === 'timeZoneName')?.value ?? '';
  return `${String(d.getFullYear()).padStart(4, '0')}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())} ${zone}`;
}

function textCell(type: ColType, v: Cell): Buffer | null {
  if (v == null) return null;
  if (Buffer.isBuffer(v)) return type === 'b' ? Buffer.from(`\\x${v.toString('hex')}`) : v;
  if (v instanceof Date) return Buffer.from(formatTime(v));
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (type === 'i' || type === 'q' || type === 'N') return Buffer.from(big(v).toString());
  return Buffer.from(String(v), 'utf8');
}

/** numeric's binary form (base-10000 digits) of an integer. */
function numericBinary(v: bigint): Buffer {
  const neg = v < 0n;
  let n = neg ? -v : v;
  const digits: number[] = [];
  for (; n > 0n; n /= 10000n) digits.unshift(Number(n % 10000n));
  const weight = digits.length - 1;
  while (digits.length > 0 && digits[digits.length - 1] === 0) digits.pop();
  const out = Buffer.alloc(8 + 2 * digits.length);
  out.writeInt16BE(digits.length, 0);
  out.writeInt16BE(digits.length > 0 ? weight : 0, 2);
  out.writeUInt16BE(neg ? 0x4000 : 0, 4);
  out.writeInt16BE(0, 6);
  digits.forEach((d, i) => out.writeInt16BE(d, 8 + 2 * i));
  return out;
}

function binaryCell(type: ColType, v: Cell): Buffer | null {
  if (v == null) return null;
  switch (type) {
    case 'i': {
      const b = Buffer.alloc(4);
      b.writeInt32BE(Number(BigInt.asIntN(32, big(v as Count | boolean))));
      return b;
    }
    case 'q': {
      const b = Buffer.alloc(8);
      b.writeBigInt64BE(BigInt.asIntN(64, big(v as Count | boolean)));
      return b;
    }
    case 'N':
      return numericBinary(big(v as Count | boolean));
    case 'b':
      return Buffer.isBuffer(v) ? v : Buffer.from(String(v));
    case 's':
    case 'T':
      return textCell(type, v);
  }
}

function encodeRow(columns: readonly Column[], cells: readonly Cell[], formats: readonly (0 | 1)[]): Buffer {
  return dataRow(columns.map(([, type], i) => (formats[i] === 1 ? binaryCell(type, cells[i]) : textCell(type, cells[i]))));
}

function describeColumns(columns: readonly Column[], formats: readonly (0 | 1)[]): Buffer {
  return rowDescription(
    columns.map(([name, type], i): FieldDescription => ({ name, typeOid: TYPE_OID[type], typeSize: TYPE_SIZE[type], format: formats[i] ?? 0 })),
  );
}

// ---- the grammar ---------------------------------------------------------------------------------------------
// pgBouncer matches a whole Query against three patterns (admin.c), case-insensitively:
//   WORD [WORD] [;]                      a command and its argument
//   SET WORD (= | TO) 'string' [;]       quoted value ('' inside is one quote)
//   SET WORD (= | TO) WORD [;]
// where WORD is [0-9a-z_]+ or "..." ("" inside is one quote), whitespace is space, tab, CR, LF, and only one
// statement fits in a Query. The scanner below accepts exactly what those patterns accept.

type CommandName =
  'disable' | 'enable' | 'kill' | 'kill_client' | 'pause' | 'reconnect' | 'reload' | 'resume' | 'shutdown' | 'suspend' | 'wait_close';
const COMMANDS = new Set<string>([
  'disable',
  'enable',
  'kill',
  'kill_client',
  'pause',
  'reconnect',
  'reload',
  'resume',
  'shutdown',
  'suspend',
  'wait_close',
]);

type Statement =
  | { kind: 'empty' }
  | { kind: 'show'; name: string }
  | { kind: 'help' }
  | { kind: 'fake'; name: string; value: string }
  | { kind: 'set'; key: string; value: string }
  | { kind: 'command'; name: CommandName; arg: string };

/** An error the console reports and carries on after: ERROR with pgBouncer's SQLSTATE 08P01 unless said otherwise. */
class ConsoleError extends Error {
  constructor(
    message: string,
    readonly code: string = SqlState.ProtocolViolation,
    readonly detail?: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** A frontend message the console cannot make sense of: FATAL, and the connection closes. */
class ProtocolViolation extends Error {}

const isSpace = (c: string | undefined) => c === ' ' || c === '\t' || c === '\n' || c === '\r';
const isWordChar = (c: string | undefined) =>
  c !== undefined && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c === '_');

function skipSpace(s: string, i: number): number {
  while (isSpace(s[i])) i++;
  return i;
}

/** End of a `q`-quoted token starting at i (a doubled q inside is part of it), or -1. */
function quotedEnd(s: string, i: number, q: string): number {
  for (let j = i + 1; j < s.length; j++) {
    if (s[j] !== q) continue;
    if (s[j + 1] !== q) return j + 1;
    j++;
  }
  return -1;
}

/** End of the WORD starting at i, or -1. */
function wordEnd(s: string, i: number): number {
  if (s[i] === '"') return quotedEnd(s, i, '"');
  let j = i;
  while (isWordChar(s[j])) j++;
  return j > i ? j : -1;
}

/** Index after an optional `;` and trailing space, if that is the end of the text; else -1. */
function tailEnd(s: string, i: number): number {
  if (s[i] === ';') i = skipSpace(s, i + 1);
  return i === s.length ? i : -1;
}

function unquote(raw: string, q: string): string {
  return raw[0] === q ? raw.slice(1, -1).replaceAll(q + q, q) : raw;
}

type Span = [number, number];

function matchCommand(s: string): { cmd: Span; arg: Span | null } | null {
  const start = skipSpace(s, 0);
  const cmdEnd = wordEnd(s, start);
  if (cmdEnd < 0) return null;
  let i = skipSpace(s, cmdEnd);
  let arg: Span | null = null;
  if (i > cmdEnd && i < s.length && s[i] !== ';') {
    const argEnd = wordEnd(s, i);
    if (argEnd < 0) return null;
    arg = [i, argEnd];
    i = skipSpace(s, argEnd);
  }
  return tailEnd(s, i) < 0 ? null : { cmd: [start, cmdEnd], arg };
}

/** SET key (= | TO) value, the value a 'string' or a WORD. An unquoted key may end early ("set xto 1" is x = 1, as the pattern reads it). */
function matchSet(s: string, value: 'string' | 'word'): { key: Span; value: Span } | null {
  let i = skipSpace(s, 0);
  if (s.slice(i, i + 3).toLowerCase() !== 'set') return null;
  i += 3;
  const keyStart = skipSpace(s, i);
  if (keyStart === i) return null;
  const longest = wordEnd(s, keyStart);
  if (longest < 0) return null;
  const ends = s[keyStart] === '"' ? [longest] : Array.from({ length: longest - keyStart }, (_, k) => longest - k);
  for (const keyEnd of ends) {
    let j = skipSpace(s, keyEnd);
    if (s[j] === '=') j++;
    else if (s.slice(j, j + 2).toLowerCase() === 'to') j += 2;
    else continue;
    j = skipSpace(s, j);
    const valueEnd = value === 'string' ? (s[j] === "'" ? quotedEnd(s, j, "'") : -1) : wordEnd(s, j);
    if (valueEnd >= 0 && tailEnd(s, skipSpace(s, valueEnd)) >= 0) return { key: [keyStart, keyEnd], value: [j, valueEnd] };
  }
  return null;
}

/** pgBouncer's message for text it cannot read (its error buffer holds 1023 bytes). */
function invalidCommand(text: string): ConsoleError {
  let message = `invalid command '${text}', use SHOW HELP;`;
  if (Buffer.byteLength(message) > 1023) {
    message = new TextDecoder().decode(Buffer.from(message).subarray(0, 1023));
    if (message.endsWith('\uFFFD')) message = message.slice(0, -1); // a character cut in two
  }
  return new ConsoleError(message);
}

/** pgBouncer's copy buffers: a command word under 16 bytes, an argument or SET key under 64, a SET value under 256. */
function fits(s: string, span: Span, limit: number): boolean {
  return Buffer.byteLength(s.slice(span[0], span[1])) < limit;
}

const BAD_ARGUMENTS = 'bad arguments';

/** One console statement; throws pgBouncer's errors for text it does not accept. */
function parseStatement(text: string): Statement {
  if (skipSpace(text.replaceAll(';', ' '), 0) === text.length) return { kind: 'empty' };
  const c = matchCommand(text);
  if (c) {
    if (!fits(text, c.cmd, 16) || (c.arg && !fits(text, c.arg, 64))) throw new ConsoleError(BAD_ARGUMENTS);
    const cmd = unquote(text.slice(...c.cmd), '"').toLowerCase();
    const arg = c.arg ? unquote(text.slice(...c.arg), '"') : '';
    return resolveCommand(text, cmd, arg);
  }
  const set = matchSet(text, 'string') ?? matchSet(text, 'word');
  if (set) {
    const key = unquote(text.slice(...set.key), '"');
    if (!fits(text, set.key, 64) || key === '' || !fits(text, set.value, 256)) throw new ConsoleError(BAD_ARGUMENTS);
    const rawValue = text.slice(...set.value);
    return { kind: 'set', key, value: unquote(rawValue, rawValue[0] === "'" ? "'" : '"') };
  }
  throw invalidCommand(text);
}

function resolveCommand(text: string, cmd: string, arg: string): Statement {
  if (cmd === 'show' || cmd === 'select') {
    const name = arg.toLowerCase();
    if (Object.hasOwn(FAKE_PARAMS, name)) return { kind: 'fake', name, value: FAKE_PARAMS[name] };
    if (name === 'help') return { kind: 'help' };
    if (Object.hasOwn(SHOWS, name)) return { kind: 'show', name };
    throw invalidCommand(text);
  }
  if (!COMMANDS.has(cmd)) throw invalidCommand(text);
  // The checks pgBouncer makes before anything else.
  if ((cmd === 'reload' || cmd === 'suspend') && arg !== '') throw invalidCommand(text);
  if (cmd === 'shutdown' && arg !== '' && !['wait_for_clients', 'wait_for_servers'].includes(arg.toLowerCase())) throw invalidCommand(text);
  return { kind: 'command', name: cmd as CommandName, arg };
}

function columnsOf(st: Statement): readonly Column[] | null {
  if (st.kind === 'show') return SHOWS[st.name].columns;
  if (st.kind === 'fake') return [[st.name, 's']];
  return null;
}

// ---- running statements ----------------------------------------------------------------------------------------

/** What a statement produced: rows (for its columns), notices sent before them, and the tag (null: no answer at all). */
interface Result {
  rows: Cell[][];
  notices: Buffer[];
  tag: string | null;
}

function notice(message: string, detail?: string): Buffer {
  return errorResponse({ severity: 'NOTICE', code: '00000', message, detail }, Be.NoticeResponse);
}

function then<T, U>(v: T | Promise<T>, f: (t: T) => U | Promise<U>): U | Promise<U> {
  return v instanceof Promise ? v.then(f) : f(v);
}

/** C's sscanf("%llu"): leading space, a sign, digits; null when there are no digits. Negative wraps, so it names no client. */
function readClientId(arg: string): number | null {
  let i = 0;
  while (i < arg.length && ' \t\n\v\f\r'.includes(arg[i])) i++;
  const negative = arg[i] === '-';
  if (arg[i] === '-' || arg[i] === '+') i++;
  let end = i;
  while (end < arg.length && arg[end] >= '0' && arg[end] <= '9') end++;
  if (end === i) return null;
  const n = BigInt(arg.slice(i, end));
  return negative && n !== 0n ? -1 : n > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(n);
}

const ADMIN_NEEDED = 'admin access needed';
const ALREADY_PAUSED = 'already suspended/paused';
const DATABASE_REQUIRED = 'a database is required';

interface Portal {
  statement: Statement;
  formats: (0 | 1)[];
  /** Rows not yet sent and the tag, once the first Execute ran the statement. */
  result?: { rows: Buffer[]; next: number; tag: string | null };
}

/**
 * One console connection after startup. Feed it each whole frontend message; send what it returns, in order.
 * Commands that wait (PAUSE, SUSPEND, WAIT_CLOSE, the host's slower answers) return a Promise; messages that
 * arrive meanwhile are queued behind it, so the answers keep their order.
 */
export class ConsoleSession {
  private readonly statements = new Map<string, Statement>();
  private readonly portals = new Map<string, Portal>();
  /** After an error in the extended protocol, messages are ignored until Sync (as PostgreSQL does). */
  private skipping = false;
  private closed = false;
  private tail: Promise<unknown> | null = null;
  private counted = false;

  constructor(
    private readonly host: ConsoleHost,
    private readonly who: ConsoleUser,
  ) {
    if (!who.admin && !who.stats) throw new Error(`console user ${who.user} is in neither admin_users nor stats_users (see consoleLoginRefusal)`);
  }

  /** True once the connection should close (after Terminate, or a protocol violation whose FATAL the last answer carries). */
  get done(): boolean {
    return this.closed;
  }

  handle(msg: Buffer): Buffer[] | Promise<Buffer[]> {
    if (this.tail) return this.track(this.tail.then(() => this.dispatch(msg)));
    const out = this.dispatch(msg);
    return out instanceof Promise ? this.track(out) : out;
  }

  private track(p: Promise<Buffer[]>): Promise<Buffer[]> {
    const t: Promise<unknown> = p
      .catch(() => undefined)
      .then(() => {
        if (this.tail === t) this.tail = null;
      });
    this.tail = t;
    return p;
  }

  private dispatch(msg: Buffer): Buffer[] | Promise<Buffer[]> {
    if (this.closed) return [];
    try {
      if (msg.length < 5 || msg.readInt32BE(1) !== msg.length - 1) throw new ProtocolViolation('invalid message length');
      const type = msg[0];
      if (type === Fe.Sync) {
        // Sync ends PostgreSQL's implicit transaction, and every portal with it.
        this.skipping = false;
        this.portals.clear();
        return [readyForQuery('I')];
      }
      if (type === Fe.Terminate) {
        this.closed = true;
        return [];
      }
      if (!this.counted) {
        this.counted = true;
        this.host.requested?.();
      }
      if (this.skipping) return [];
      switch (type) {
        case Fe.Query:
          return this.query(readQuery(msg));
        case Fe.Parse:
          return this.guard(() => this.parse(msg), true);
        case Fe.Bind:
          return this.guard(() => this.bind(msg), true);
        case Fe.Describe:
          return this.guard(() => this.describe(msg), true);
        case Fe.Execute:
          return this.guard(() => this.execute(msg), true);
        case Fe.Close:
          return this.guard(() => this.close(msg), true);
        case Fe.Flush:
          return [];
        // Left over from a COPY that failed: PostgreSQL ignores them outside COPY too.
        case Fe.CopyData:
        case Fe.CopyDone:
        case Fe.CopyFail:
          return [];
        default:
          throw new ProtocolViolation(`unsupported packet type for admin console: ${typeName(type)}`);
      }
    } catch (e) {
      if (!(e instanceof ProtocolViolation)) throw e;
      this.closed = true;
      return [errorResponse({ severity: 'FATAL', code: SqlState.ProtocolViolation, message: e.message })];
    }
  }

  /** Reads a message body; a malformed one is a protocol violation. */
  private read<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      throw new ProtocolViolation('invalid message format', { cause: e });
    }
  }

  private errorMessage(e: unknown): Buffer {
    const f: ErrorFields =
      e instanceof ConsoleError
        ? { severity: 'ERROR', code: e.code, message: e.message, detail: e.detail, hint: e.hint }
        : { severity: 'ERROR', code: SqlState.InternalError, message: e instanceof Error ? e.message : String(e) };
    return errorResponse(f);
  }

  /** Runs `work`, turning its errors (thrown or rejected) into an ErrorResponse; `extended` then skips to Sync. */
  private guard(work: () => Buffer[] | Promise<Buffer[]>, extended: boolean): Buffer[] | Promise<Buffer[]> {
    const fail = (e: unknown): Buffer[] => {
      // Found while reading a message, synchronously: dispatch ends the session.
      if (e instanceof ProtocolViolation) throw e;
      if (extended) this.skipping = true;
      return [this.errorMessage(e)];
    };
    try {
      const out = work();
      return out instanceof Promise ? out.catch(fail) : out;
    } catch (e) {
      return fail(e);
    }
  }

  // ---- simple protocol ----

  private query(text: string): Buffer[] | Promise<Buffer[]> {
    // A Query runs in a transaction of its own too, and replaces the unnamed statement.
    this.statements.delete('');
    this.portals.clear();
    const out = this.guard(() => {
      const st = parseStatement(text);
      if (st.kind === 'empty') return [EMPTY_QUERY_RESPONSE];
      const columns = columnsOf(st);
      return then(this.run(st), (r) => [
        ...r.notices,
        ...(columns ? [describeColumns(columns, []), ...r.rows.map((row) => encodeRow(columns, row, []))] : []),
        ...(r.tag == null ? [] : [commandComplete(r.tag)]),
      ]);
    }, false);
    // SHUTDOWN without WAIT_* answers nothing at all, as pgBouncer's console stays silent until it exits.
    const finish = (b: Buffer[]) => (b.length === 0 ? b : [...b, readyForQuery('I')]);
    return then(out, finish);
  }

  // ---- extended protocol ----

  private parse(msg: Buffer): Buffer[] {
    const p = this.read(() => readParse(msg));
    if (p.name === '') this.statements.delete('');
    else if (this.statements.has(p.name))
      throw new ConsoleError(`prepared statement "${p.name}" already exists`, SqlState.DuplicatePreparedStatement);
    if (p.paramTypes.length > 0) throw new ConsoleError('the admin console takes no parameters', SqlState.FeatureNotSupported);
    let st: Statement;
    try {
      st = parseStatement(p.sql);
    } catch (e) {
      // A driver that sent placeholders gets told why the text is not a command.
      if (e instanceof ConsoleError && p.sql.includes('$'))
        throw new ConsoleError(e.message, e.code, undefined, 'The admin console takes no parameters: write the values into the command.');
      throw e;
    }
    this.statements.set(p.name, st);
    return [PARSE_COMPLETE];
  }

  private statement(name: string): Statement {
    const st = this.statements.get(name);
    if (!st)
      throw new ConsoleError(
        name === '' ? 'unnamed prepared statement does not exist' : `prepared statement "${name}" does not exist`,
        SqlState.InvalidStatementName,
      );
    return st;
  }

  private portal(name: string): Portal {
    const portal = this.portals.get(name);
    if (!portal) throw new ConsoleError(`portal "${name}" does not exist`, SqlState.InvalidCursorName);
    return portal;
  }

  private bind(msg: Buffer): Buffer[] {
    const b = this.read(() => readBind(msg));
    const st = this.statement(b.statement);
    if (b.params.length > 0) {
      throw new ConsoleError(
        `bind message supplies ${b.params.length} parameters, but prepared statement "${b.statement}" requires 0`,
        SqlState.ProtocolViolation,
      );
    }
    const n = columnsOf(st)?.length ?? 0;
    for (const f of b.resultFormats) if (f !== 0 && f !== 1) throw new ConsoleError(`unsupported format code: ${f}`, SqlState.InvalidParameterValue);
    const given = b.resultFormats as (0 | 1)[];
    let formats: (0 | 1)[];
    if (given.length <= 1) formats = new Array<0 | 1>(n).fill(given[0] ?? 0);
    else if (given.length === n) formats = given;
    else throw new ConsoleError(`bind message has ${given.length} result formats but query has ${n} columns`, SqlState.ProtocolViolation);
    if (b.portal !== '' && this.portals.has(b.portal)) throw new ConsoleError(`portal "${b.portal}" already exists`, SqlState.DuplicateCursor);
    this.portals.set(b.portal, { statement: st, formats });
    return [BIND_COMPLETE];
  }

  private describe(msg: Buffer): Buffer[] {
    const { kind, name } = this.read(() => readTarget(msg));
    if (kind === 'S') {
      const columns = columnsOf(this.statement(name));
      return [parameterDescription([]), columns ? describeColumns(columns, []) : NO_DATA];
    }
    if (kind !== 'P') throw new ConsoleError(`invalid DESCRIBE message subtype ${msg[5]}`);
    const portal = this.portal(name);
    const columns = columnsOf(portal.statement);
    return [columns ? describeColumns(columns, portal.formats) : NO_DATA];
  }

  private execute(msg: Buffer): Buffer[] | Promise<Buffer[]> {
    const { portal: name, maxRows } = this.read(() => readExecute(msg));
    const portal = this.portal(name);
    const st = portal.statement;
    if (st.kind === 'empty') return [EMPTY_QUERY_RESPONSE];
    if (portal.result) return this.fetch(portal.result, maxRows);
    const columns = columnsOf(st);
    return then(this.run(st), (r) => {
      const rows = columns ? r.rows.map((row) => encodeRow(columns, row, portal.formats)) : [];
      portal.result = { rows, next: 0, tag: r.tag };
      return [...r.notices, ...this.fetch(portal.result, maxRows)];
    });
  }

  /** The next rows of a portal: up to maxRows (0: all) then PortalSuspended, or the rest and the tag. */
  private fetch(result: NonNullable<Portal['result']>, maxRows: number): Buffer[] {
    const left = result.rows.length - result.next;
    const take = maxRows > 0 && maxRows < left ? maxRows : left;
    const out = result.rows.slice(result.next, result.next + take);
    result.next += take;
    if (result.next < result.rows.length) out.push(PORTAL_SUSPENDED);
    else if (result.tag != null) out.push(commandComplete(result.tag));
    return out;
  }

  private close(msg: Buffer): Buffer[] {
    const { kind, name } = this.read(() => readTarget(msg));
    if (kind === 'S') this.statements.delete(name);
    else if (kind === 'P') this.portals.delete(name);
    else throw new ConsoleError(`invalid CLOSE message subtype ${msg[5]}`);
    return [CLOSE_COMPLETE];
  }

  // ---- statements ----

  private run(st: Statement): Result | Promise<Result> {
    switch (st.kind) {
      case 'empty':
        return { rows: [], notices: [], tag: null };
      case 'help':
        return { rows: [], notices: [notice('Console usage', HELP_DETAIL)], tag: 'SHOW' };
      case 'fake':
        return { rows: [[st.value]], notices: [], tag: 'SHOW' };
      case 'show': {
        const spec = SHOWS[st.name];
        if (spec.adminOnly && !this.who.admin) throw new ConsoleError(ADMIN_NEEDED);
        return then(this.host.gather?.(st.name), () => ({ rows: spec.rows(this.host), notices: [], tag: 'SHOW' }));
      }
      case 'set':
        if (Object.hasOwn(FAKE_PARAMS, st.key.toLowerCase())) return { rows: [], notices: [notice('SET ignored')], tag: 'SET' };
        if (!this.who.admin) throw new ConsoleError(ADMIN_NEEDED);
        return this.answer(this.host.set(st.key, st.value), `SET ${st.key}=${st.value}`, '');
      case 'command':
        if (!this.who.admin) throw new ConsoleError(ADMIN_NEEDED);
        return this.command(st.name, st.arg);
    }
  }

  /** A command after the admin check, with pgBouncer's checks in pgBouncer's order. */
  private command(name: CommandName, arg: string): Result | Promise<Result> {
    const h = this.host;
    const db = arg === '' ? undefined : arg;
    const notPaused = () => {
      if (h.pauseMode() !== 'none') throw new ConsoleError(ALREADY_PAUSED);
    };
    const notConsole = (what: string) => {
      if (arg === CONSOLE_DATABASE) throw new ConsoleError(`${what}: ${arg}`);
    };
    const required = () => {
      if (arg === '') throw new ConsoleError(DATABASE_REQUIRED);
    };
    const tag = name.toUpperCase();
    switch (name) {
      case 'pause':
        notPaused();
        notConsole('cannot pause admin db');
        return this.answer(h.pause(db), tag, arg);
      case 'resume':
        // The console's database is never paused.
        if (arg === CONSOLE_DATABASE) throw new ConsoleError(`database ${arg} is not paused`);
        return this.answer(h.resume(db), tag, arg);
      case 'suspend':
        notPaused();
        return this.answer(h.suspend(), tag, arg);
      case 'reconnect':
        notConsole('cannot reconnect admin db');
        return this.answer(h.reconnect(db), tag, arg);
      case 'kill':
        notPaused();
        required();
        notConsole('cannot kill admin db');
        return this.answer(h.kill(arg), tag, arg);
      case 'kill_client': {
        const id = readClientId(arg);
        if (id == null) throw new ConsoleError('invalid client pointer supplied');
        if (id < 0) throw new ConsoleError('client not found');
        return this.answer(h.killClient(id), tag, arg);
      }
      case 'disable':
        required();
        notConsole('cannot disable admin db');
        return this.answer(h.disable(arg), tag, arg);
      case 'enable':
        required();
        // (sic: pgBouncer's ENABLE says "disable" here too)
        notConsole('cannot disable admin db');
        return this.answer(h.enable(arg), tag, arg);
      case 'reload':
        return this.answer(h.reload(), tag, arg);
      case 'shutdown': {
        const mode: ShutdownMode = arg === '' ? 'immediate' : (arg.toLowerCase() as ShutdownMode);
        return this.answer(h.shutdown(mode), mode === 'immediate' ? null : tag, arg);
      }
      case 'wait_close':
        notConsole('cannot wait in admin db');
        return this.answer(h.waitClose(db), tag, arg);
    }
  }

  /** The host's outcome as a result: its refusal in pgBouncer's words, or its notice and the tag. */
  private answer(answer: CommandAnswer, tag: string | null, arg: string): Result | Promise<Result> {
    return then(answer, (outcome) => {
      if (outcome && 'refused' in outcome) throw new ConsoleError(refusalMessage(outcome.refused, arg), SqlState.ProtocolViolation, outcome.detail);
      const notices = outcome && 'notice' in outcome ? [notice(outcome.notice)] : [];
      return { rows: [], notices, tag };
    });
  }
}

function refusalMessage(r: Refusal, arg: string): string {
  switch (r) {
    case 'no_such_database':
      return `no such database: ${arg}`;
    case 'not_paused':
      return arg === '' ? 'pooler is not paused/suspended' : `database ${arg} is not paused`;
    case 'shutting_down':
      return 'pooler is shutting down';
    case 'paused_databases':
      return 'cannot suspend with paused databases';
    case 'client_not_found':
      return 'client not found';
    case 'set_failed':
      return 'SET failed';
  }
}
