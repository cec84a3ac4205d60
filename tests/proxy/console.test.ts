// The admin console through real clients: a tiny server does the startup (as pgBouncer greets a console
// client) and feeds every later message to a ConsoleSession over a fake pooler. psql (simple protocol) and
// node-postgres (extended protocol) read it, binary results are compared with PostgreSQL's own bytes; the expected columns are pgBouncer
// 1.24.1's, as its admin.c declares them and its console printed them. The extended protocol's message flow is
// compared with a real PostgreSQL's for the same sequence of messages.
import { createServer, type Server } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import {
  ConsoleSession,
  consoleLoginRefusal,
  consoleStartupParams,
  type ClientRow,
  type CommandAnswer,
  type CommandOutcome,
  type ConsoleHost,
  type DebugSocketRow,
  type PauseMode,
  type SocketRow,
} from '../../proxy/console.js';
import {
  AUTH_OK,
  REFUSE_ENCRYPTION,
  SSL_REQUEST_CODE,
  SYNC,
  authentication,
  backendKeyData,
  bind,
  close,
  describe as describeMessage,
  execute,
  parameterStatus,
  parse,
  query,
  readCString,
  readDataRow,
  readErrorFields,
  readParameterStatus,
  readStartupPacket,
  readyForQuery,
} from '../../proxy/protocol.js';
import { RawClient, frontend, psql, rawSession, startupPacket, type Msg } from './helpers.js';

// ---- pgBouncer 1.24.1's columns (src/admin.c, src/stats.c), and their types as its RowDescriptions give them ----

const SOCKET =
  'type user database replication state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name prepared_statements id';
const DEBUG = `${SOCKET} recv_pos pkt_pos pkt_remain send_pos send_remain pkt_avail send_avail`;
const PGBOUNCER_COLUMNS: Record<string, string> = {
  POOLS:
    'database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode load_balance_hosts',
  SERVERS: SOCKET,
  SOCKETS: DEBUG,
  ACTIVE_SOCKETS: DEBUG,
  STATS:
    'database total_server_assignment_count total_xact_count total_query_count total_received total_sent total_xact_time total_query_time total_wait_time total_client_parse_count total_server_parse_count total_bind_count avg_server_assignment_count avg_xact_count avg_query_count avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time avg_client_parse_count avg_server_parse_count avg_bind_count',
  STATS_TOTALS:
    'database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time wait_time client_parse_count server_parse_count bind_count',
  STATS_AVERAGES:
    'database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time wait_time avg_client_parse_count avg_server_parse_count avg_bind_count',
  TOTALS: 'name value',
  DATABASES:
    'name host port database force_user pool_size min_pool_size reserve_pool_size server_lifetime pool_mode load_balance_hosts max_connections current_connections max_client_connections current_client_connections paused disabled',
  USERS: 'name pool_size reserve_pool_size pool_mode max_user_connections current_connections max_user_client_connections current_client_connections',
  CONFIG: 'key value default changeable',
  LISTS: 'list items',
  FDS: 'fd task user database addr port cancel link client_encoding std_strings datestyle timezone password scram_client_key scram_server_key',
  DNS_HOSTS: 'hostname ttl addrs',
  DNS_ZONES: 'zonename serial count',
  STATE: 'key value',
  VERSION: 'version',
  PEERS: 'peer_id host port pool_size',
  PEER_POOLS: 'peer_id cl_active_cancel_req cl_waiting_cancel_req sv_active_cancel sv_login',
  MEM: 'name size used free memtotal',
};
/** Type OID letters per column: t text (25), i int4 (23), q int8 (20), n numeric (1700), b bytea (17). */
const PGBOUNCER_TYPES: Record<string, string> = {
  POOLS: 'ttiiiiiiiiiiiiitt',
  SERVERS: 'ttttttitittiiittittii',
  SOCKETS: 'ttttttitittiiittittiiiiiiiii',
  STATS: 'tnnnnnnnnnnnnnnnnnnnnnn',
  STATS_TOTALS: 'tnnnnnnnnnnn',
  STATS_AVERAGES: 'tnnnnnnnnnnn',
  TOTALS: 'tn',
  DATABASES: 'ttittiiiittiiiiii',
  USERS: 'ttttiiii',
  CONFIG: 'tttt',
  LISTS: 'ti',
  FDS: 'ittttiqitttttbb',
  DNS_HOSTS: 'tqt',
  DNS_ZONES: 'tqi',
  STATE: 'tt',
  VERSION: 't',
  PEERS: 'itii',
  PEER_POOLS: 'iiiii',
  MEM: 'tiiii',
};
const OID: Record<string, number> = { t: 25, i: 23, q: 20, n: 1700, b: 17 };

// ---- the fake pooler: data to render, and a log of the commands it was asked to run ----

const CONNECTED = new Date('2024-06-15T12:00:05Z');
function socket(over: Partial<SocketRow>): SocketRow {
  return {
    user: 'alice',
    database: 'app',
    replication: 'none',
    state: 'active',
    addr: '127.0.0.1',
    port: 50000,
    localAddr: '127.0.0.1',
    localPort: 6432,
    connectTime: CONNECTED,
    requestTime: CONNECTED,
    waitUs: 0,
    closeNeeded: false,
    ptr: '0x10',
    link: '',
    remotePid: 0,
    tls: '',
    applicationName: '',
    preparedStatements: 0,
    id: 1,
    ...over,
  };
}
const debug = (s: SocketRow, type: 'C' | 'S', sendAvail: number): DebugSocketRow => ({
  ...s,
  type,
  recvPos: 10,
  pktPos: 5,
  pktRemain: 0,
  sendPos: 3,
  sendRemain: 0,
  pktAvail: 5,
  sendAvail,
});

class FakePooler implements ConsoleHost {
  readonly calls: string[] = [];
  mode: PauseMode = 'none';
  /** While set, PAUSE answers only when the test resolves it (pgBouncer answers once servers are released). */
  pauseGate: Promise<void> | null = null;

  private readonly clientRows: ClientRow[] = [
    {
      ...socket({ id: 7, port: 50001, link: '0x20', ptr: '0x11', waitUs: 1_000_001, applicationName: 'app one', preparedStatements: 2 }),
      pinned: 'transaction',
    },
    { ...socket({ id: 8, user: null, database: null, state: 'waiting', ptr: '0x12' }), pinned: '' },
  ];
  private readonly serverRows = [socket({ id: 9, user: 'alice', ptr: '0x20', link: '0x11', remotePid: 4242, tls: 'TLSv1.3' })];

  pools = () => [
    {
      database: 'app',
      user: 'alice',
      clActive: 2,
      clWaiting: 1,
      clActiveCancelReq: 0,
      clWaitingCancelReq: 0,
      svActive: 1,
      svActiveCancel: 0,
      svBeingCanceled: 0,
      svIdle: 3,
      svUsed: 0,
      svTested: 0,
      svLogin: 0,
      maxWaitUs: 2_500_000,
      poolMode: 'transaction',
      loadBalanceHosts: null,
    },
    {
      database: 'pgbouncer',
      user: 'pgbouncer',
      clActive: 1,
      clWaiting: 0,
      clActiveCancelReq: 0,
      clWaitingCancelReq: 0,
      svActive: 0,
      svActiveCancel: 0,
      svBeingCanceled: 0,
      svIdle: 0,
      svUsed: 0,
      svTested: 0,
      svLogin: 0,
      maxWaitUs: 0,
      poolMode: 'statement',
      loadBalanceHosts: 'round-robin',
    },
  ];
  clients = () => this.clientRows;
  servers = () => this.serverRows;
  sockets = (activeOnly: boolean) =>
    [debug(this.clientRows[0], 'C', 0), debug(this.serverRows[0], 'S', 12)].filter((s) => !activeOnly || s.sendAvail > 0);
  stats = () => {
    const zero = {
      serverAssignmentCount: 0,
      xactCount: 0,
      queryCount: 0,
      bytesReceived: 0,
      bytesSent: 0,
      xactTime: 0,
      queryTime: 0,
      waitTime: 0,
      clientParseCount: 0,
      serverParseCount: 0,
      bindCount: 0,
    };
    return {
      periodUs: 2_000_000,
      databases: [
        {
          database: 'app',
          current: {
            ...zero,
            serverAssignmentCount: 30,
            xactCount: 50,
            queryCount: 110,
            bytesReceived: 2n ** 60n,
            bytesSent: 9000,
            xactTime: 9000,
            queryTime: 5000n,
            waitTime: 600,
            bindCount: 7,
          },
          previous: {
            ...zero,
            serverAssignmentCount: 20,
            xactCount: 40,
            queryCount: 100,
            bytesReceived: 2n ** 60n - 4000n,
            bytesSent: 1000,
            xactTime: 8000,
            queryTime: 4000,
            waitTime: 100,
            bindCount: 3,
          },
        },
        { database: 'other', current: { ...zero, queryCount: 6, queryTime: 60, bytesSent: 40_000 }, previous: zero },
      ],
    };
  };
  databases = () => [
    {
      name: 'app',
      host: 'db.internal',
      port: 5432,
      database: 'appdb',
      forceUser: null,
      poolSize: 20,
      minPoolSize: 0,
      reservePoolSize: 0,
      serverLifetime: 3600,
      poolMode: null,
      loadBalanceHosts: null,
      maxConnections: 0,
      currentConnections: 3,
      maxClientConnections: 0,
      currentClientConnections: 4,
      paused: true,
      disabled: false,
    },
  ];
  users = () => [
    {
      name: 'alice',
      poolSize: 3,
      reservePoolSize: null,
      poolMode: 'transaction',
      maxUserConnections: 0,
      currentConnections: 1,
      maxUserClientConnections: 0,
      currentClientConnections: 2,
    },
  ];
  config = () => [
    { key: 'default_pool_size', value: '20', default: '20', changeable: true },
    { key: 'listen_port', value: '6432', default: '6432', changeable: false },
  ];
  lists = () => ({
    databases: 1,
    users: 2,
    peers: 3,
    pools: 4,
    peerPools: 5,
    freeClients: 6,
    usedClients: 7,
    loginClients: 8,
    freeServers: 9,
    usedServers: 10,
    dnsNames: 11,
    dnsZones: 12,
    dnsQueries: 13,
    dnsPending: 14,
  });
  fds = () => [
    {
      fd: 5,
      task: 'client' as const,
      user: 'alice',
      database: 'app',
      addr: '127.0.0.1',
      port: 50001,
      cancel: 1234567890123n,
      link: 0,
      clientEncoding: 'UTF8',
      stdStrings: 'on',
      datestyle: 'ISO',
      timezone: 'UTC',
      password: null,
      scramClientKey: Buffer.from([1, 2, 255]),
      scramServerKey: null,
    },
  ];
  dnsHosts = () => [{ hostname: 'db.internal', ttl: 30, addrs: ['10.0.0.1', '10.0.0.2'] }];
  dnsZones = () => [{ zonename: 'internal', serial: 42, count: 2 }];
  pauseMode = () => this.mode;
  peers = () => [{ peerId: 1, host: '10.0.0.9', port: 6432, poolSize: 5 }];
  peerPools = () => [{ peerId: 1, clActiveCancelReq: 0, clWaitingCancelReq: 1, svActiveCancel: 0, svLogin: 0 }];
  mem = () => [{ name: 'client_cache', size: 704, used: 1, free: 49 }];
  steadytext = () => [{ database: 'app', model: 'gemma-3-270m', calls: 10, cacheHits: 4, queueDepth: 1, avgLatencyUs: 1500, p99LatencyUs: 9000n }];

  private record(call: string, database?: string): CommandAnswer {
    this.calls.push(call);
    if (database === 'nodb') return { refused: 'no_such_database' };
  }
  pause = (db?: string): CommandAnswer => {
    const r = this.record(`pause(${db ?? ''})`, db);
    return this.pauseGate ? this.pauseGate.then(() => r) : r;
  };
  resume = (db?: string) => this.record(`resume(${db ?? ''})`, db) ?? (this.mode === 'none' && !db ? { refused: 'not_paused' as const } : undefined);
  suspend = () => this.record('suspend()');
  reconnect = (db?: string) => this.record(`reconnect(${db ?? ''})`, db);
  kill = (db: string) => this.record(`kill(${db})`, db);
  killClient = (id: number) => this.record(`killClient(${id})`) ?? (id === 7 ? undefined : { refused: 'client_not_found' as const });
  disable = (db: string) => this.record(`disable(${db})`, db);
  enable = (db: string) => this.record(`enable(${db})`, db);
  reload = () => this.record('reload()');
  shutdown = (mode: string) => this.record(`shutdown(${mode})`);
  waitClose = (db?: string) => this.record(`waitClose(${db ?? ''})`, db);
  set = async (key: string, value: string): Promise<CommandOutcome> => {
    this.calls.push(`set(${key},${value})`);
    if (key === 'nope') return { refused: 'set_failed', detail: 'unknown parameter nope' };
    if (key.includes('_tls_')) return { notice: 'TLS settings could not be applied, still using old configuration' };
  };
}

// ---- a console server: pgBouncer's greeting, then every message to the session ----

function serveConsole(host: ConsoleHost): Promise<Server> {
  const server = createServer((sock) => {
    let buf = Buffer.alloc(0);
    let session: ConsoleSession | null = null;
    let writes = Promise.resolve();
    sock.on('error', () => {});
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (!session) {
          if (buf.length < 8 || buf.length < buf.readInt32BE(0)) return;
          const packet = buf.subarray(0, buf.readInt32BE(0));
          buf = buf.subarray(packet.length);
          if (packet.readInt32BE(4) === SSL_REQUEST_CODE) {
            sock.write(REFUSE_ENCRYPTION);
            continue;
          }
          const user = readStartupPacket(packet)?.params.get('user') ?? '';
          const who = { user, admin: user === 'admin', stats: user === 'admin' || user === 'stats' };
          const refusal = consoleLoginRefusal(who);
          if (refusal) return void sock.end(refusal);
          session = new ConsoleSession(host, who);
          const params = consoleStartupParams().map(([k, v]) => parameterStatus(k, v));
          sock.write(Buffer.concat([authentication(AUTH_OK), ...params, backendKeyData(1, Buffer.alloc(4)), readyForQuery('I')]));
          continue;
        }
        if (buf.length < 5 || buf.length < 1 + buf.readInt32BE(1)) return;
        const msg = Buffer.from(buf.subarray(0, 1 + buf.readInt32BE(1)));
        buf = buf.subarray(msg.length);
        const s = session;
        const answer = s.handle(msg);
        writes = writes
          .then(async () => {
            const out = await answer;
            if (out.length > 0) sock.write(Buffer.concat(out));
            if (s.done) sock.end();
          })
          .catch((e: unknown) => void sock.destroy(e as Error));
      }
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

let server: Server;
let pooler: FakePooler;
let port: number;

beforeAll(async () => {
  pooler = new FakePooler();
  server = await serveConsole(pooler);
  port = (server.address() as { port: number }).port;
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
});

const console_ = (user = 'admin') => ({ host: '127.0.0.1', port, user, password: '', db: 'pgbouncer' });

/** psql -A output: per -c, the header line (columns joined by '|') and the rows. */
async function psqlShow(user: string, ...commands: string[]) {
  const r = await psql(console_(user), ['-A', '-F', '|', '-P', 'footer=off', ...commands.flatMap((c) => ['-c', c])]);
  return { ...r, lines: r.stdout.split('\n').filter((l) => l !== '') };
}

/** node-postgres' extended protocol for a query without parameters (its queryMode option, which @types/pg does not declare). */
const extended = (text: string) => ({ text, queryMode: 'extended' }) as pg.QueryConfig;

async function pgClient(user = 'admin'): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port, user, database: 'pgbouncer' });
  await c.connect();
  return c;
}

/** A raw console session after its startup (whose messages are dropped unless `keepStartup`). */
async function consoleSession(user = 'admin', keepStartup = false): Promise<RawClient> {
  const c = await RawClient.open(port);
  c.write(startupPacket({ user, database: 'pgbouncer' }));
  await c.waitFor('Z');
  if (!keepStartup) c.messages.splice(0);
  return c;
}

const types = (msgs: Msg[]) => msgs.map((m) => m.type).join('');
const text = (m: Msg) => readDataRow(m.bytes).map((v) => (v == null ? null : v.toString()));

describe('SHOW through psql (simple protocol)', () => {
  test("every SHOW of pgBouncer 1.24 has pgBouncer's columns, in its order", async () => {
    const names = Object.keys(PGBOUNCER_COLUMNS);
    for (const name of names) {
      const { code, stderr, lines } = await psqlShow('admin', `SHOW ${name}`);
      expect({ name, code, stderr }).toEqual({ name, code: 0, stderr: '' });
      expect({ name, header: lines[0] }).toEqual({ name, header: PGBOUNCER_COLUMNS[name].replaceAll(' ', '|') });
    }
  });

  test('SHOW CLIENTS: pgBouncer\'s columns, then ours, "pinned", last', async () => {
    const { lines } = await psqlShow('stats', 'SHOW CLIENTS');
    expect(lines[0]).toBe(`${SOCKET.replaceAll(' ', '|')}|pinned`);
    const row = lines[1].split('|');
    const at = (col: string) => row[lines[0].split('|').indexOf(col)];
    expect([at('type'), at('user'), at('wait'), at('wait_us'), at('close_needed'), at('link'), at('id'), at('pinned')]).toEqual([
      'C',
      'alice',
      '1',
      '1',
      '0',
      '0x20',
      '7',
      'transaction',
    ]);
    // pgBouncer's placeholders for a client without a user or pool, and its time format (local time, zone abbreviation).
    expect(lines[2].split('|').slice(0, 5)).toEqual(['C', '(nouser)', '(nodb)', 'none', 'waiting']);
    const p = (n: number) => String(n).padStart(2, '0');
    const local = `2024-06-15 ${p(CONNECTED.getHours())}:${p(CONNECTED.getMinutes())}:05 `;
    expect(at('connect_time').startsWith(local)).toBe(true);
    expect(at('connect_time').length).toBeGreaterThan(local.length);
  });

  test('values are rendered as pgBouncer renders them', async () => {
    const { lines } = await psqlShow(
      'admin',
      'SHOW POOLS',
      'SHOW USERS',
      'SHOW DATABASES',
      'SHOW CONFIG',
      'SHOW DNS_HOSTS',
      'SHOW MEM',
      'SHOW FDS',
      'SHOW STATE',
      'SHOW VERSION',
      'SHOW ACTIVE_SOCKETS',
      'SHOW LISTS',
    );
    const expected = [
      // maxwait in seconds and microseconds; NULL load_balance_hosts is empty
      PGBOUNCER_COLUMNS.POOLS.replaceAll(' ', '|'),
      'app|alice|2|1|0|0|1|0|0|3|0|0|0|2|500000|transaction|',
      'pgbouncer|pgbouncer|1|0|0|0|0|0|0|0|0|0|0|0|0|statement|round-robin',
      // sizes as text, right-aligned in 9 characters ("%9d"), empty when unset
      PGBOUNCER_COLUMNS.USERS.replaceAll(' ', '|'),
      'alice|        3||transaction|0|1|0|2',
      PGBOUNCER_COLUMNS.DATABASES.replaceAll(' ', '|'),
      'app|db.internal|5432|appdb||20|0|0|3600|||0|3|0|4|1|0',
      PGBOUNCER_COLUMNS.CONFIG.replaceAll(' ', '|'),
      'default_pool_size|20|20|yes',
      'listen_port|6432|6432|no',
      PGBOUNCER_COLUMNS.DNS_HOSTS.replaceAll(' ', '|'),
      'db.internal|30|10.0.0.1,10.0.0.2',
      PGBOUNCER_COLUMNS.MEM.replaceAll(' ', '|'),
      'client_cache|704|1|49|35200',
      PGBOUNCER_COLUMNS.FDS.replaceAll(' ', '|'),
      '5|client|alice|app|127.0.0.1|50001|1234567890123|0|UTF8|on|ISO|UTC||\\x0102ff|',
      'key|value',
      'active|yes',
      'paused|no',
      'suspended|no',
      'version',
      'PgBouncer 1.24.1',
    ];
    expect(lines.slice(0, expected.length)).toEqual(expected);
    // ACTIVE_SOCKETS: only the socket with data pending, with its buffer columns.
    const sockets = lines.slice(expected.length, expected.length + 2);
    expect(sockets[0]).toBe(PGBOUNCER_COLUMNS.ACTIVE_SOCKETS.replaceAll(' ', '|'));
    expect(sockets[1].split('|').slice(0, 5).concat(sockets[1].split('|').slice(-7))).toEqual([
      'S',
      'alice',
      'app',
      'none',
      'active',
      '10',
      '5',
      '0',
      '3',
      '0',
      '5',
      '12',
    ]);
    expect(lines.slice(expected.length + 2)).toEqual([
      'list|items',
      'databases|1',
      'users|2',
      'peers|3',
      'pools|4',
      'peer_pools|5',
      'free_clients|6',
      'used_clients|7',
      'login_clients|8',
      'free_servers|9',
      'used_servers|10',
      'dns_names|11',
      'dns_zones|12',
      'dns_queries|13',
      'dns_pending|14',
    ]);
  });

  test("SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS: pgBouncer's averages over the stats period", async () => {
    const { lines } = await psqlShow('stats', 'SHOW STATS', 'SHOW STATS_AVERAGES', 'SHOW TOTALS');
    // Over 2 s: 10 assignments, 10 transactions, 10 queries, 4000 bytes in, 8000 out, 4 binds, per second;
    // 1000 us of transactions over 10, 1000 us of queries over 10, 500 us of waiting over 10 assignments.
    const big = (2n ** 60n).toString();
    expect(lines.slice(0, 3)).toEqual([
      PGBOUNCER_COLUMNS.STATS.replaceAll(' ', '|'),
      `app|30|50|110|${big}|9000|9000|5000|600|0|0|7|5|5|5|2000|4000|100|100|50|0|0|2`,
      'other|0|0|6|0|40000|0|60|0|0|0|0|0|0|3|0|20000|0|10|0|0|0|0',
    ]);
    expect(lines.slice(3, 6)).toEqual([
      PGBOUNCER_COLUMNS.STATS_AVERAGES.replaceAll(' ', '|'),
      'app|5|5|5|2000|4000|100|100|50|0|0|2',
      'other|0|0|3|0|20000|0|10|0|0|0|0',
    ]);
    // TOTALS adds the databases first (116 queries, 1060 us over 16: 66 us), names as pgBouncer's C fields.
    const totals = Object.fromEntries(lines.slice(7).map((l) => l.split('|')));
    expect(lines[6]).toBe('name|value');
    const fields =
      'server_assignment_count xact_count query_count client_bytes server_bytes xact_time query_time wait_time ps_client_parse_count ps_server_parse_count ps_bind_count'.split(
        ' ',
      );
    expect(Object.keys(totals)).toEqual([...fields.map((f) => `total_${f}`), ...fields.map((f) => `avg_${f}`)]);
    expect([totals.total_query_count, totals.total_query_time, totals.avg_query_count, totals.avg_query_time]).toEqual(['116', '5060', '8', '66']);
  });

  test('SHOW HELP is a notice; fake parameters answer as pgBouncer fakes them; SELECT works as SHOW', async () => {
    const r = await psqlShow('stats', 'SHOW HELP', 'show client_encoding;', 'SHOW TimeZone', 'select "version"');
    expect(r.stderr).toContain('NOTICE:  Console usage');
    expect(r.stderr).toContain('SHOW STEADYTEXT');
    expect(r.stderr).toContain('KILL_CLIENT <client_id>');
    expect(r.lines.slice(-6)).toEqual(['client_encoding', 'UTF-8', 'timezone', 'GMT', 'version', 'PgBouncer 1.24.1']);
  });

  test("errors are pgBouncer's, and the session goes on after them", async () => {
    const r = await psqlShow(
      'stats',
      'SHOW nothing',
      'SHOW POOLS; SHOW STATS',
      'KILL app',
      'SHOW FDS',
      'SET default_pool_size = 5',
      "SET client_encoding TO 'latin1'",
      'SHOW STATE',
    );
    expect(r.stderr.split('\n').filter((l) => l.startsWith('ERROR') || l.startsWith('NOTICE'))).toEqual([
      "ERROR:  invalid command 'SHOW nothing', use SHOW HELP;",
      // one statement per Query, as pgBouncer's console reads it
      "ERROR:  invalid command 'SHOW POOLS; SHOW STATS', use SHOW HELP;",
      'ERROR:  admin access needed',
      'ERROR:  admin access needed',
      'ERROR:  admin access needed',
      // faked parameters: ignored even for a stats user
      'NOTICE:  SET ignored',
    ]);
    expect(r.lines.slice(-4)).toEqual(['key|value', 'active|yes', 'paused|no', 'suspended|no']);
    expect(pooler.calls.filter((c) => c.startsWith('kill') || c.startsWith('set'))).toEqual([]);
  });

  test('a user in neither admin_users nor stats_users is refused', async () => {
    const r = await psql(console_('mallory'), ['-c', 'SHOW POOLS']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('not allowed');
  });
});

describe('commands', () => {
  test("each command reaches the pooler and answers with pgBouncer's tag", async () => {
    const commands = [
      'PAUSE app',
      'RESUME app',
      'RECONNECT',
      'RECONNECT app',
      'DISABLE app',
      'ENABLE "app"',
      'KILL app',
      'KILL_CLIENT 7',
      'RELOAD',
      'WAIT_CLOSE',
      'wait_close app;',
      'SUSPEND',
      'SHUTDOWN WAIT_FOR_CLIENTS',
      'set default_pool_size to 40',
    ];
    const c = await consoleSession();
    try {
      c.write(Buffer.concat(commands.map((q) => query(q))));
      await c.waitForCount('Z', commands.length);
      expect(c.messages.filter((m) => m.type !== 'Z').map((m) => `${m.type}${readCString(m.bytes, 5)[0]}`)).toEqual([
        'CPAUSE',
        'CRESUME',
        'CRECONNECT',
        'CRECONNECT',
        'CDISABLE',
        'CENABLE',
        'CKILL',
        'CKILL_CLIENT',
        'CRELOAD',
        'CWAIT_CLOSE',
        'CWAIT_CLOSE',
        'CSUSPEND',
        'CSHUTDOWN',
        'CSET default_pool_size=40',
      ]);
      expect(pooler.calls.splice(0)).toEqual([
        'pause(app)',
        'resume(app)',
        'reconnect()',
        'reconnect(app)',
        'disable(app)',
        'enable(app)',
        'kill(app)',
        'killClient(7)',
        'reload()',
        'waitClose()',
        'waitClose(app)',
        'suspend()',
        'shutdown(wait_for_clients)',
        'set(default_pool_size,40)',
      ]);
    } finally {
      c.destroy();
    }
  });

  test('SET answers "SET key=value", passes on a notice, and words a refusal as pgBouncer', async () => {
    const c = await consoleSession();
    try {
      c.write(query("SET server_tls_sslmode = 'verify-full'"));
      c.write(query('SET nope = 1'));
      await c.waitForCount('Z', 2);
      const notice = c.messages.find((m) => m.type === 'N')!;
      expect(readErrorFields(notice.bytes).M).toBe('TLS settings could not be applied, still using old configuration');
      const tag = c.messages.find((m) => m.type === 'C')!;
      expect(readCString(tag.bytes, 5)[0]).toBe('SET server_tls_sslmode=verify-full');
      const e = readErrorFields(c.messages.find((m) => m.type === 'E')!.bytes);
      expect([e.S, e.C, e.M, e.D]).toEqual(['ERROR', '08P01', 'SET failed', 'unknown parameter nope']);
      expect(types(c.messages)).toBe('NCZEZ');
    } finally {
      c.destroy();
      pooler.calls.length = 0;
    }
  });

  test("refusals and checks in pgBouncer's words, with SQLSTATE 08P01", async () => {
    const c = await pgClient();
    const errorOf = (sql: string) =>
      c.query(sql).then(
        () => 'no error',
        (e: pg.DatabaseError) => `${e.code} ${e.message}`,
      );
    try {
      pooler.mode = 'pause';
      expect(await errorOf('PAUSE')).toBe('08P01 already suspended/paused');
      expect(await errorOf('KILL')).toBe('08P01 already suspended/paused');
      pooler.mode = 'none';
      expect(await errorOf('RESUME')).toBe('08P01 pooler is not paused/suspended');
      expect(await errorOf('KILL')).toBe('08P01 a database is required');
      expect(await errorOf('PAUSE nodb')).toBe('08P01 no such database: nodb');
      expect(await errorOf('PAUSE pgbouncer')).toBe('08P01 cannot pause admin db: pgbouncer');
      expect(await errorOf('KILL pgbouncer')).toBe('08P01 cannot kill admin db: pgbouncer');
      expect(await errorOf('ENABLE pgbouncer')).toBe('08P01 cannot disable admin db: pgbouncer');
      expect(await errorOf('RESUME pgbouncer')).toBe('08P01 database pgbouncer is not paused');
      expect(await errorOf('KILL_CLIENT abc')).toBe('08P01 invalid client pointer supplied');
      expect(await errorOf('KILL_CLIENT 99')).toBe('08P01 client not found');
      expect(await errorOf('RELOAD now')).toBe("08P01 invalid command 'RELOAD now', use SHOW HELP;");
      expect(await errorOf('SHUTDOWN later')).toBe("08P01 invalid command 'SHUTDOWN later', use SHOW HELP;");
      expect(await errorOf(`SHOW ${'x'.repeat(64)}`)).toBe('08P01 bad arguments');
      expect(await errorOf('SET "" = 1')).toBe('08P01 bad arguments');
      expect(pooler.calls.splice(0)).toEqual(['resume()', 'pause(nodb)', 'killClient(99)']);
    } finally {
      await c.end();
    }
  });

  test('PAUSE answers when the pooler is done; the next command waits behind it; other sessions are served meanwhile', async () => {
    let release!: () => void;
    pooler.pauseGate = new Promise((r) => (release = r));
    const c = await consoleSession();
    try {
      // One write, so the console has both messages as soon as it has the first.
      c.write(Buffer.concat([query('PAUSE'), query('RESUME app')]));
      await expect.poll(() => pooler.calls.includes('pause()')).toBe(true);
      const other = await pgClient();
      expect((await other.query('SHOW STATE')).rows).toHaveLength(3);
      await other.end();
      expect(pooler.calls).toEqual(['pause()']);
      expect(c.messages).toEqual([]);
      release();
      await c.waitForCount('Z', 2);
      expect(types(c.messages)).toBe('CZCZ');
      expect([readCString(c.messages[0].bytes, 5)[0], readCString(c.messages[2].bytes, 5)[0]]).toEqual(['PAUSE', 'RESUME']);
      expect(pooler.calls).toEqual(['pause()', 'resume(app)']);
    } finally {
      pooler.pauseGate = null;
      pooler.calls.length = 0;
      c.destroy();
    }
  });

  test('SHUTDOWN gets no answer, as pgBouncer lets the process exit', async () => {
    const c = await consoleSession();
    try {
      c.write(query('SHUTDOWN'));
      c.write(query('SHOW VERSION'));
      await c.waitForCount('Z', 1);
      expect(types(c.messages)).toBe('TDCZ');
      expect(pooler.calls.splice(0)).toEqual(['shutdown(immediate)']);
    } finally {
      c.destroy();
    }
  });
});

describe('the extended protocol (node-postgres)', () => {
  test('column names and types as pgBouncer declares them', async () => {
    const c = await pgClient('stats');
    try {
      for (const [name, letters] of Object.entries(PGBOUNCER_TYPES)) {
        if (name === 'FDS') continue; // admin only
        const r = await c.query(extended(`SHOW ${name}`));
        expect({ name, columns: r.fields.map((f) => f.name).join(' ') }).toEqual({ name, columns: PGBOUNCER_COLUMNS[name] });
        expect({ name, types: r.fields.map((f) => f.dataTypeID) }).toEqual({ name, types: [...letters].map((l) => OID[l]) });
      }
      const st = await c.query(extended('SHOW STEADYTEXT'));
      expect(st.fields.map((f) => `${f.name}:${f.dataTypeID}`)).toEqual([
        'database:25',
        'model:25',
        'calls:20',
        'cache_hits:20',
        'queue_depth:23',
        'avg_latency_us:20',
        'p99_latency_us:20',
      ]);
      expect(st.rows).toEqual([
        { database: 'app', model: 'gemma-3-270m', calls: '10', cache_hits: '4', queue_depth: 1, avg_latency_us: '1500', p99_latency_us: '9000' },
      ]);
    } finally {
      await c.end();
    }
  });

  test('the same rows as the simple protocol, through unnamed and named statements', async () => {
    const c = await pgClient();
    try {
      for (const show of ['SHOW STATS', 'SHOW POOLS', 'SHOW FDS', 'SHOW DNS_ZONES']) {
        const simple = await c.query(show);
        const unnamed = await c.query(extended(show));
        const named = await c.query({ text: show, name: `st_${show.slice(5)}` });
        const again = await c.query({ text: show, name: `st_${show.slice(5)}` });
        expect(unnamed.rows).toEqual(simple.rows);
        expect(named.rows).toEqual(simple.rows);
        expect(again.rows).toEqual(simple.rows);
      }
    } finally {
      await c.end();
    }
  });

  test('commands and errors over the extended protocol; the connection stays usable', async () => {
    const c = await pgClient('stats');
    try {
      await expect(c.query(extended('SHOW nothing'))).rejects.toThrow("invalid command 'SHOW nothing', use SHOW HELP;");
      await expect(c.query(extended('KILL app'))).rejects.toThrow('admin access needed');
      await expect(c.query('SHOW POOLS WHERE $1', ['x'])).rejects.toMatchObject({ code: '08P01', hint: expect.stringContaining('no parameters') });
      await expect(c.query({ text: 'SHOW POOLS', values: [1] })).rejects.toThrow(
        'bind message supplies 1 parameters, but prepared statement "" requires 0',
      );
      expect((await c.query(extended('SHOW VERSION'))).rows).toEqual([{ version: 'PgBouncer 1.24.1' }]);
      const set = await c.query(extended("SET DateStyle = 'German'"));
      expect(set.command).toBe('SET');
    } finally {
      await c.end();
    }
  });
});

describe('the extended protocol, message by message', () => {
  test('Describe of a statement and of a portal; NoData for commands; CloseComplete', async () => {
    const c = await consoleSession();
    try {
      c.write(
        Buffer.concat([
          parse('s1', 'SHOW STATE'),
          describeMessage('S', 's1'),
          bind({ portal: 'p1', statement: 's1', paramFormats: [], params: [], resultFormats: [] }),
          describeMessage('P', 'p1'),
          execute('p1'),
          parse('', 'RELOAD'),
          describeMessage('S', ''),
          close('S', 's1'),
          close('P', 'p1'),
          SYNC,
        ]),
      );
      await c.waitFor('Z');
      expect(types(c.messages)).toBe('1tT2TDDDC1tn33Z');
      expect(readCString(c.messages[2].bytes, 7)[0]).toBe('key');
      expect(c.messages.slice(5, 8).map(text)).toEqual([
        ['active', 'yes'],
        ['paused', 'no'],
        ['suspended', 'no'],
      ]);
      expect(pooler.calls).toEqual([]); // RELOAD was only parsed
    } finally {
      c.destroy();
    }
  });

  test('Execute with a row limit suspends the portal, and the next Execute goes on', async () => {
    const c = await consoleSession();
    try {
      c.write(
        Buffer.concat([
          parse('', 'SHOW LISTS'),
          bind({ portal: '', statement: '', paramFormats: [], params: [], resultFormats: [] }),
          execute('', 10),
          execute('', 3),
          execute('', 0),
          execute('', 0),
          SYNC,
        ]),
      );
      await c.waitFor('Z');
      expect(types(c.messages)).toBe(`12${'D'.repeat(10)}s${'D'.repeat(3)}sDCCZ`);
      expect(text(c.messages[c.messages.length - 4])).toEqual(['dns_pending', '14']);
    } finally {
      c.destroy();
    }
  });

  test('a protocol violation ends the session with FATAL; Terminate ends it quietly', async () => {
    const c = await consoleSession();
    c.write(frontend('F', Buffer.alloc(10)));
    await c.waitClosed();
    const e = c.error()!;
    expect([e.S, e.C]).toEqual(['FATAL', '08P01']);
    expect(e.M).toContain('unsupported packet type');

    const t = await consoleSession();
    t.write(frontend('X'));
    await t.waitClosed();
    expect(t.messages).toEqual([]);
  });

  test('the startup: AuthenticationOk and the parameters pgBouncer sends a console client', async () => {
    const c = await consoleSession('stats', true);
    c.destroy();
    expect(types(c.messages)).toBe('RSSSSSSSKZ');
    expect(c.messages.filter((m) => m.type === 'S').map((m) => readParameterStatus(m.bytes))).toEqual([
      ['server_version', '1.24.1/bouncer'],
      ['client_encoding', 'UTF8'],
      ['server_encoding', 'UTF8'],
      ['DateStyle', 'ISO'],
      ['TimeZone', 'GMT'],
      ['standard_conforming_strings', 'on'],
      ['is_superuser', 'on'],
    ]);
  });

  // Binary results are what PostgreSQL itself sends for the same values and types (numeric's base-10000 digits,
  // int8, int4, bytea, text, NULL): the console's DataRows against a SELECT of the same literals.
  test('binary results: the bytes PostgreSQL sends for the same values', async () => {
    const TYPE_NAME: Record<number, string> = { 25: 'text', 23: 'int4', 20: 'int8', 1700: 'numeric', 17: 'bytea' };
    const rowsOf = async (c: RawClient, sql: string) => {
      c.messages.splice(0);
      c.write(
        Buffer.concat([
          parse('', sql),
          bind({ portal: '', statement: '', paramFormats: [], params: [], resultFormats: [1] }),
          describeMessage('P', ''),
          execute(''),
          SYNC,
        ]),
      );
      await c.waitFor('Z');
      expect(c.error()).toBeUndefined();
      return c.messages.filter((m) => m.type === 'D').map((m) => m.bytes);
    };
    const pgSide = await rawSession(inject('db').port);
    const consoleSide = await consoleSession();
    const text = await pgClient();
    try {
      for (const show of ['SHOW STATS', 'SHOW TOTALS', 'SHOW FDS', 'SHOW DNS_ZONES', 'SHOW POOLS']) {
        const simple = await text.query({ text: show, rowMode: 'array', types: { getTypeParser: () => (v: string) => v } });
        const literal = (v: string | null, oid: number) =>
          v == null ? `NULL::${TYPE_NAME[oid]}` : `'${v.replaceAll("'", "''")}'::${TYPE_NAME[oid]}`;
        const select = simple.rows
          .map((row: (string | null)[]) => `SELECT ${row.map((v, i) => literal(v, simple.fields[i].dataTypeID)).join(', ')}`)
          .join(' UNION ALL ');
        const expected = await rowsOf(pgSide, select);
        expect(expected.length).toBe(simple.rows.length);
        expect({ show, rows: await rowsOf(consoleSide, show) }).toEqual({ show, rows: expected });
      }
    } finally {
      pgSide.destroy();
      consoleSide.destroy();
      await text.end();
    }
  });

  // The same messages to PostgreSQL (a one-row, three-column SELECT) and to the console (SHOW DNS_ZONES: one row,
  // three columns): errors skip to Sync, unknown statements and portals, duplicate names, a finished portal executed
  // again, portals gone after Sync, Close of what does not exist, a Query and an empty statement.
  test('message flow and SQLSTATEs match PostgreSQL for the same sequence', async () => {
    const noParams = { paramFormats: [], params: [] };
    const sequence = (ok: string) => [
      parse('a', ok),
      parse('a', ok),
      SYNC,
      bind({ portal: '', statement: 'nope', ...noParams, resultFormats: [] }),
      execute(''),
      SYNC,
      parse('', 'SELEC 1'),
      bind({ portal: '', statement: '', ...noParams, resultFormats: [] }),
      execute(''),
      SYNC,
      bind({ portal: 'p', statement: 'a', ...noParams, resultFormats: [] }),
      execute('p'),
      execute('p'),
      bind({ portal: 'p', statement: 'a', ...noParams, resultFormats: [] }),
      SYNC,
      execute('p'),
      describeMessage('P', 'gone'),
      SYNC,
      bind({ portal: '', statement: 'a', ...noParams, resultFormats: [0, 0] }),
      SYNC,
      bind({ portal: '', statement: 'a', ...noParams, resultFormats: [1] }),
      describeMessage('P', ''),
      SYNC,
      close('S', 'never'),
      close('P', 'never'),
      describeMessage('S', 'a'),
      SYNC,
      query(''),
      parse('', ''),
      bind({ portal: '', statement: '', ...noParams, resultFormats: [] }),
      execute(''),
      SYNC,
    ];
    const flow = async (c: RawClient, msgs: Buffer[]) => {
      const answers = msgs.filter((m) => m[0] === SYNC[0] || m[0] === 0x51).length;
      c.messages.splice(0);
      c.write(Buffer.concat(msgs));
      await c.waitForCount('Z', answers);
      return c.messages.map((m) => (m.type === 'E' ? `E${readErrorFields(m.bytes).C}` : m.type)).join(' ');
    };
    const pgSide = await rawSession(inject('db').port);
    const consoleSide = await consoleSession();
    try {
      const expected = await flow(pgSide, sequence("SELECT 'x' AS zonename, 42::int8 AS serial, 2 AS count"));
      // Text neither understands: PostgreSQL's syntax error, pgBouncer's 08P01.
      expect(expected).toContain('E42601');
      expect(await flow(consoleSide, sequence('SHOW DNS_ZONES'))).toBe(expected.replace('E42601', 'E08P01'));
      expect(expected).toContain('E42P05'); // the sequence exercised the errors
    } finally {
      pgSide.destroy();
      consoleSide.destroy();
    }
  });
});
