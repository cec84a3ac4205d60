// The Prometheus endpoint (--metrics-listen, [steadytext] metrics_listen): GET /metrics in the text exposition
// format 0.0.4. Pooling figures carry pgbouncer_exporter's names and labels, so its dashboards and alerts work
// unchanged against the proxy itself (no exporter in between); the steadytext calls and the proxy's own
// sessions are pg_steadytext_*. Every figure is read from plain data at each scrape: the providers are given
// by cli.ts (the pooler's console host, the steadytext layer), so nothing here knows the SQL layer or the engine.
// With --workers the primary serves the endpoint for the process group: its sources gather every worker's
// figures over IPC (workers.ts, console-relay.ts) and add them up, as the console's SHOWs do.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { PGBOUNCER_VERSION, type Count, type DatabaseRow, type ListCounts, type PoolRow, type StatCounters } from './console.js';
import type { ProxyStats } from './server.js';

/** What SHOW STATS (totals), SHOW POOLS, SHOW DATABASES and SHOW LISTS report now, as the console reads them. */
export interface PoolerFigures {
  stats: { database: string; totals: StatCounters }[];
  pools: PoolRow[];
  databases: DatabaseRow[];
  lists: ListCounts;
  maxClientConn: number;
  maxUserConnections: number;
}

/** The steadytext calls of one (database, model). Latencies in microseconds. */
export interface CallFigures {
  database: string;
  model: string;
  calls: number;
  /** Answered from the engine's result cache. */
  cacheHits: number;
  errors: number;
  /** Calls a model computed (not cache hits), and their latencies summed. */
  computed: number;
  latencySumUs: number;
  /** Over the recent window of computed calls (0 when there was none). */
  p50LatencyUs: number;
  p99LatencyUs: number;
}

/** One model's scheduler now. */
export interface ModelQueue {
  model: string;
  /** Requests waiting for a context. */
  queued: number;
  /** Requests running. */
  active: number;
}

export interface SteadytextFigures {
  calls: CallFigures[];
  models: ModelQueue[];
}

/** What a source gives: now, or once gathered from other processes (--workers); undefined: nothing to report. */
type Read<T> = T | undefined | Promise<T | undefined>;

/** Each is read at every scrape; absent ones are left out (no pooling: no pgbouncer_*). */
export interface MetricsSources {
  proxy?(): Read<ProxyStats>;
  pooler?(): Read<PoolerFigures>;
  steadytext?(): Read<SteadytextFigures>;
}

/** The figures of one scrape, as the sources gave them. */
export interface MetricsFigures {
  proxy?: ProxyStats;
  pooler?: PoolerFigures;
  steadytext?: SteadytextFigures;
}

/** Reads every source (those of the workers' processes in parallel). */
export async function readSources(sources: MetricsSources): Promise<MetricsFigures> {
  const [proxy, pooler, steadytext] = await Promise.all([sources.proxy?.(), sources.pooler?.(), sources.steadytext?.()]);
  return { proxy, pooler, steadytext };
}

export interface MetricsServer {
  address: { host: string; port: number };
  close(): Promise<void>;
}

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

type Labels = Record<string, string | number | null>;
type Sample = [Labels, Count | boolean, string?];

/** Text exposition: one family, its samples together under its HELP and TYPE (none when it has no sample). */
class Exposition {
  private out: string[] = [];

  family(name: string, type: 'counter' | 'gauge' | 'summary', help: string, samples: Sample[]): void {
    if (samples.length === 0) return;
    this.out.push(`# HELP ${name} ${help.replaceAll('\\', '\\\\').replaceAll('\n', '\\n')}`, `# TYPE ${name} ${type}`);
    for (const [labels, value, suffix] of samples) this.out.push(`${name}${suffix ?? ''}${labelText(labels)} ${valueText(value)}`);
  }

  text(): string {
    return this.out.length ? this.out.join('\n') + '\n' : '';
  }
}

function labelText(labels: Labels): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(labels)) {
    const s = v === null ? '' : String(v);
    parts.push(`${k}="${s.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n')}"`);
  }
  return parts.length ? `{${parts.join(',')}}` : '';
}

function valueText(v: Count | boolean): string {
  if (typeof v === 'boolean') return v ? '1' : '0';
  if (typeof v === 'bigint') return v.toString();
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? '+Inf' : '-Inf';
  return String(v);
}

/** Microseconds (a Count) as seconds. */
const seconds = (us: Count) => Number(us) / 1e6;

/** pgbouncer_exporter's SHOW STATS counters, by the console's field. */
const STATS: [keyof StatCounters, string, string, boolean][] = [
  ['queryCount', 'pgbouncer_stats_queries_pooled_total', 'Total number of SQL queries pooled (total_query_count)', false],
  ['xactCount', 'pgbouncer_stats_sql_transactions_pooled_total', 'Total number of SQL transactions pooled (total_xact_count)', false],
  ['serverAssignmentCount', 'pgbouncer_stats_server_assignments_total', 'Times a server connection was assigned to a client (total_server_assignment_count)', false],
  ['bytesReceived', 'pgbouncer_stats_received_bytes_total', 'Bytes received from clients (total_received)', false],
  ['bytesSent', 'pgbouncer_stats_sent_bytes_total', 'Bytes received from servers and sent on to clients (total_sent)', false],
  ['queryTime', 'pgbouncer_stats_queries_duration_seconds_total', 'Seconds spent by clients on a server connection running queries (total_query_time)', true],
  ['xactTime', 'pgbouncer_stats_server_in_transaction_seconds_total', 'Seconds spent by clients on a server connection in a transaction (total_xact_time)', true],
  ['waitTime', 'pgbouncer_stats_client_wait_seconds_total', 'Seconds clients waited for a server connection (total_wait_time)', true],
  ['clientParseCount', 'pgbouncer_stats_client_parses_total', 'Prepared statements created by clients (total_client_parse_count)', false],
  ['serverParseCount', 'pgbouncer_stats_server_parses_total', 'Prepared statements created on server connections (total_server_parse_count)', false],
  ['bindCount', 'pgbouncer_stats_binds_total', 'Prepared statements bound (total_bind_count)', false],
];

/** pgbouncer_exporter's SHOW POOLS gauges. */
const POOLS: [keyof PoolRow, string, string][] = [
  ['clActive', 'client_active_connections', 'Client connections linked to a server connection and able to process queries (cl_active)'],
  ['clWaiting', 'client_waiting_connections', 'Client connections waiting for a server connection (cl_waiting)'],
  ['clActiveCancelReq', 'client_active_cancel_connections', 'Client connections that have forwarded a cancel request (cl_active_cancel_req)'],
  ['clWaitingCancelReq', 'client_waiting_cancel_connections', 'Cancel requests waiting to be forwarded (cl_waiting_cancel_req)'],
  ['svActive', 'server_active_connections', 'Server connections linked to a client (sv_active)'],
  ['svActiveCancel', 'server_active_cancel_connections', 'Server connections forwarding a cancel request (sv_active_cancel)'],
  ['svBeingCanceled', 'server_being_canceled_connections', 'Server connections whose cancel request is on its way (sv_being_canceled)'],
  ['svIdle', 'server_idle_connections', 'Server connections idle and ready for a client (sv_idle)'],
  ['svUsed', 'server_used_connections', 'Server connections idle longer than server_check_delay (sv_used)'],
  ['svTested', 'server_testing_connections', 'Server connections running server_reset_query or server_check_query (sv_tested)'],
  ['svLogin', 'server_login_connections', 'Server connections logging in (sv_login)'],
];

/** pgbouncer_exporter's SHOW DATABASES gauges (and the client counts pgBouncer 1.24 adds). */
const DATABASES: [keyof DatabaseRow, string, string][] = [
  ['poolSize', 'pool_size', 'Maximum number of server connections per pool (pool_size)'],
  ['minPoolSize', 'min_pool_size', 'Server connections kept open per pool (min_pool_size)'],
  ['reservePoolSize', 'reserve_pool', 'Additional server connections allowed per pool (reserve_pool_size)'],
  ['maxConnections', 'max_connections', 'Maximum number of server connections to this database (max_db_connections; 0: no limit)'],
  ['currentConnections', 'current_connections', 'Server connections to this database now'],
  ['maxClientConnections', 'max_client_connections', 'Maximum number of client connections to this database (max_db_client_connections; 0: no limit)'],
  ['currentClientConnections', 'current_client_connections', 'Client connections to this database now'],
  ['paused', 'paused', '1 if this database is paused'],
  ['disabled', 'disabled', '1 if this database is disabled'],
];

/** pgbouncer_exporter's SHOW LISTS gauges. */
const LISTS: [keyof ListCounts, string, string][] = [
  ['databases', 'pgbouncer_databases', 'Count of databases'],
  ['users', 'pgbouncer_users', 'Count of users'],
  ['pools', 'pgbouncer_pools', 'Count of pools'],
  ['freeClients', 'pgbouncer_free_clients', 'Count of free clients'],
  ['usedClients', 'pgbouncer_used_clients', 'Count of used clients'],
  ['loginClients', 'pgbouncer_login_clients', 'Count of clients in login state'],
  ['freeServers', 'pgbouncer_free_servers', 'Count of free servers'],
  ['usedServers', 'pgbouncer_used_servers', 'Count of used servers'],
  ['dnsNames', 'pgbouncer_cached_dns_names', 'Count of DNS names in the cache'],
  ['dnsZones', 'pgbouncer_cached_dns_zones', 'Count of DNS zones in the cache'],
  ['dnsQueries', 'pgbouncer_in_flight_dns_queries', 'Count of in-flight DNS queries'],
];

/** The proxy's own totals (server.ts ProxyStats). */
const PROXY_TOTALS: [keyof ProxyStats['totals'], string, string][] = [
  ['accepted', 'accepted_connections_total', 'Client connections accepted'],
  ['closed', 'closed_connections_total', 'Client connections closed'],
  ['bytesFromClients', 'client_received_bytes_total', 'Bytes received from clients'],
  ['bytesFromUpstream', 'server_received_bytes_total', 'Bytes received from PostgreSQL on client sessions'],
  ['protocolErrors', 'protocol_errors_total', 'Client sessions ended for a protocol violation'],
  ['upstreamFailures', 'upstream_failures_total', 'Client sessions whose upstream connection could not be opened'],
  ['intercepted', 'intercepted_messages_total', 'Messages naming steadytext handed to the steadytext layer'],
  ['rewritten', 'rewritten_messages_total', 'Messages the steadytext layer replaced'],
  ['relayStarts', 'native_relay_handoffs_total', 'Times an idle session was handed to the native relay'],
  ['hubHandoffs', 'native_hub_handoffs_total', 'Server connections handed from client to client in the native hub (transaction pooling under contention)'],
  ['cancelsForwarded', 'cancels_forwarded_total', 'Cancel requests forwarded to PostgreSQL'],
  ['cancelsIgnored', 'cancels_ignored_total', 'Cancel requests matching no session'],
];

/** The exposition of one scrape's figures. */
export function renderMetrics(figures: MetricsFigures): string {
  const x = new Exposition();
  const proxy = figures.proxy;
  if (proxy) {
    x.family('pg_steadytext_proxy_client_connections', 'gauge', 'Client sessions open now (authenticating ones included)', [[{}, proxy.clients]]);
    x.family('pg_steadytext_proxy_buffered_bytes', 'gauge', 'Bytes held in memory for the sessions now (unsent writes, partial messages)', [[{}, proxy.buffered]]);
    for (const [k, name, help] of PROXY_TOTALS) x.family(`pg_steadytext_proxy_${name}`, 'counter', help, [[{}, proxy.totals[k]]]);
  }
  const pooler = figures.pooler;
  if (pooler) {
    x.family('pgbouncer_up', 'gauge', 'The pooler answers (always 1: the proxy serves these figures itself)', [[{}, 1]]);
    x.family('pgbouncer_version_info', 'gauge', 'The pgBouncer version whose console and figures the proxy reproduces', [[{ version: PGBOUNCER_VERSION }, 1]]);
    for (const [k, name, help, time] of STATS) {
      x.family(name, 'counter', help, pooler.stats.map((s) => [{ database: s.database }, time ? seconds(s.totals[k]) : s.totals[k]]));
    }
    for (const [k, name, help] of POOLS) {
      x.family(`pgbouncer_pools_${name}`, 'gauge', help, pooler.pools.map((p) => [{ database: p.database, user: p.user }, p[k] as number]));
    }
    x.family('pgbouncer_pools_client_maxwait_seconds', 'gauge', 'Age of the oldest waiting client (maxwait, maxwait_us)', pooler.pools.map((p) => [{ database: p.database, user: p.user }, seconds(p.maxWaitUs)]));
    for (const [k, name, help] of DATABASES) {
      x.family(
        `pgbouncer_databases_${name}`,
        'gauge',
        help,
        pooler.databases.map((d) => [
          { name: d.name, host: d.host, port: d.port, database: d.database, force_user: d.forceUser, pool_mode: d.poolMode },
          d[k] as number | boolean,
        ]),
      );
    }
    for (const [k, name, help] of LISTS) x.family(name, 'gauge', help, [[{}, pooler.lists[k]]]);
    x.family('pgbouncer_config_max_client_connections', 'gauge', 'Configured maximum number of client connections (max_client_conn)', [[{}, pooler.maxClientConn]]);
    x.family('pgbouncer_config_max_user_connections', 'gauge', 'Configured maximum number of server connections per user (max_user_connections)', [[{}, pooler.maxUserConnections]]);
  }
  const st = figures.steadytext;
  if (st) {
    const by = (c: CallFigures) => ({ database: c.database, model: c.model });
    x.family('pg_steadytext_calls_total', 'counter', 'steadytext calls answered by the engine, per database and model', st.calls.map((c) => [by(c), c.calls]));
    x.family('pg_steadytext_cache_hits_total', 'counter', 'steadytext calls answered from the result cache', st.calls.map((c) => [by(c), c.cacheHits]));
    x.family('pg_steadytext_call_errors_total', 'counter', 'steadytext calls that failed', st.calls.map((c) => [by(c), c.errors]));
    x.family('pg_steadytext_call_duration_seconds', 'summary', 'Latency of the calls a model computed (quantiles over the last minute)', st.calls.flatMap((c): Sample[] => [
      [{ ...by(c), quantile: '0.5' }, seconds(c.p50LatencyUs)],
      [{ ...by(c), quantile: '0.99' }, seconds(c.p99LatencyUs)],
      [by(c), seconds(c.latencySumUs), '_sum'],
      [by(c), c.computed, '_count'],
    ]));
    x.family('pg_steadytext_queue_depth', 'gauge', 'Requests waiting for a model context now', st.models.map((m) => [{ model: m.model }, m.queued]));
    x.family('pg_steadytext_active_requests', 'gauge', 'Requests a model is running now', st.models.map((m) => [{ model: m.model }, m.active]));
  }
  return x.text();
}

/**
 * Serves GET (and HEAD) /metrics at `listen`; any other path is 404, another method on /metrics 405. A source
 * that throws costs that scrape a 500 and a log line, never the process. Rejects when the address cannot be bound.
 */
export async function startMetricsServer(opts: { listen: { host: string; port: number }; sources: MetricsSources; logger: Logger }): Promise<MetricsServer> {
  const log = opts.logger.child({ component: 'metrics' });
  const sockets = new Set<Socket>();
  const server: Server = createServer((req, res) => void answer(req, res, opts.sources, log));
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  // A malformed request gets Node's 400 and the socket is closed; nothing of it reaches the proxy.
  server.on('clientError', (err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy(err);
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen.port, opts.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.warn({ err }, 'metrics endpoint error'));
  const bound = server.address();
  const address = typeof bound === 'object' && bound ? { host: bound.address, port: bound.port } : opts.listen;
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

async function answer(req: IncomingMessage, res: ServerResponse, sources: MetricsSources, log: Logger): Promise<void> {
  const path = (req.url ?? '').split('?', 1)[0];
  if (path !== '/metrics') return plain(res, 404, 'not found: the metrics are at /metrics\n');
  if (req.method !== 'GET' && req.method !== 'HEAD') return plain(res, 405, 'method not allowed: GET /metrics\n', { Allow: 'GET, HEAD' });
  let body: string;
  try {
    body = renderMetrics(await readSources(sources));
  } catch (err) {
    log.warn({ err }, 'metrics could not be read');
    return plain(res, 500, 'metrics could not be read; see the proxy log\n');
  }
  // The scraper may have gone while the workers' figures were gathered.
  if (res.destroyed) return;
  res.writeHead(200, { 'Content-Type': METRICS_CONTENT_TYPE, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(req.method === 'HEAD' ? undefined : body);
}

function plain(res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
