// Shared helpers of the proxy suites: a proxy on port 0 in front of the test cluster, URLs through it,
// psql runs, and a raw wire-protocol client for what drivers never send.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import pino from 'pino';
import pg from 'pg';
import { loadPgBouncerConfig } from '../../config/pgbouncer.js';
import { createConsole, type ConsoleFactory } from '../../proxy/console-host.js';
import { createPooling, type PoolingEnv } from '../../proxy/pooling.js';
import type { ShutdownMode } from '../../proxy/console.js';
import { query, readErrorFields } from '../../proxy/protocol.js';
import { startProxy, type ProxyOptions, type ProxyServer } from '../../proxy/server.js';
import { parseUpstreamUrl } from '../../proxy/upstream.js';

export type RoleName = 'scram' | 'md5' | 'trust';

const CLI = fileURLToPath(new URL('../../cli.ts', import.meta.url));

/** The CLI (cli.ts through tsx) as a child process with `env` over this one's, its stdout and stderr gathered. */
export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcessByStdio<null, Readable, Readable>; output: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
  return { child, output: () => output };
}

/**
 * A pgbouncer.ini in `dir` (and its userlist.txt): one user with a SCRAM login, the given [databases] lines,
 * listening on 127.0.0.1:port, server TLS off; `pgbouncer` lines join that section, `sections` ([steadytext],
 * [peers], ...) follow.
 * Returns the ini's path.
 */
export function writePgbouncerIni(
  dir: string,
  o: { port: number; user: string; password: string; databases: string[]; unixSocketDir?: string; pgbouncer?: string[]; sections?: Record<string, string[]> },
): string {
  const q = (v: string) => `"${v.replaceAll('"', '""')}"`;
  const userlist = join(dir, 'userlist.txt');
  writeFileSync(userlist, `${q(o.user)} ${q(o.password)}\n`);
  const ini = join(dir, 'pgbouncer.ini');
  writeFileSync(ini, [
    '[databases]',
    ...o.databases,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${o.port}`,
    `unix_socket_dir = ${o.unixSocketDir ?? ''}`.trimEnd(),
    'auth_type = scram-sha-256',
    `auth_file = ${userlist}`,
    ...(o.pgbouncer ?? []),
    'server_tls_sslmode = disable',
    ...Object.entries(o.sections ?? {}).flatMap(([name, lines]) => [`[${name}]`, ...lines]),
  ].join('\n') + '\n');
  return ini;
}

/**
 * A pooling proxy in this process, from an ini written for the test cluster (database postgres, one user in
 * the auth_file, `pgbouncer` settings added), with its admin console reading the proxy's sessions (SHOW ...).
 */
export async function startPoolingProxy(o: {
  authType: 'trust' | 'scram-sha-256';
  user: string;
  password: string;
  pgbouncer: Record<string, string | number>;
  /** The [users] section: user name -> its settings (`pool_mode=session client_idle_timeout=1`). */
  users?: Record<string, string>;
  proxy?: Partial<ProxyOptions>;
}): Promise<{ proxy: ProxyServer; pooling: PoolingEnv; closeConsole: () => void }> {
  const db = testDb();
  const dir = mkdtempSync(join(tmpdir(), 'pooling-proxy-'));
  const q = (s: string) => `"${s.replaceAll('"', '""')}"`;
  writeFileSync(join(dir, 'userlist.txt'), `${q(o.user)} ${q(o.password)}\n`);
  writeFileSync(join(dir, 'pgbouncer.ini'), [
    '[databases]',
    `postgres = host=${db.host} port=${db.port} dbname=postgres`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    'listen_port = 6432',
    'unix_socket_dir =',
    `auth_type = ${o.authType}`,
    `auth_file = ${join(dir, 'userlist.txt')}`,
    ...Object.entries(o.pgbouncer).map(([k, v]) => `${k} = ${v}`),
    ...(o.users ? ['[users]', ...Object.entries(o.users).map(([k, v]) => `${q(k)} = ${v}`)] : []),
  ].join('\n') + '\n');
  const { proxy, pooling, console } = await poolingFromIni(join(dir, 'pgbouncer.ini'), { proxy: o.proxy });
  return { proxy, pooling, closeConsole: () => console.close() };
}

/**
 * A pooling proxy in this process from a pgbouncer.ini, with its admin console. The console reads the sessions
 * lazily: the proxy starts after createPooling, which takes the console. `shutdown` receives SHUTDOWN's mode.
 */
export async function poolingFromIni(ini: string, o: { shutdown?: (mode: ShutdownMode) => void; proxy?: Partial<ProxyOptions> } = {}):
  Promise<{ proxy: ProxyServer; pooling: PoolingEnv; console: ConsoleFactory }> {
  const db = testDb();
  const config = loadPgBouncerConfig(ini);
  const started: { proxy?: ProxyServer } = {};
  const console = createConsole({
    pooler: () => pooling.pooler,
    sessions: () => started.proxy?.sessions() ?? [],
    configFile: config.file,
    reload: () => pooling.pooler.reload(loadPgBouncerConfig(config.file)),
    shutdown: o.shutdown ?? (() => {}),
    logger: silentLogger,
  });
  const pooling = createPooling({ config, defaultTarget: parseUpstreamUrl(`postgres://${db.host}:${db.port}/?sslmode=disable`), logger: silentLogger, console });
  console.start();
  const proxy = (started.proxy = await startTestProxy({ pooling, ...o.proxy }));
  return { proxy, pooling, console };
}

export function testDb() {
  const db = inject('db');
  if (!db.roles) throw new Error('the proxy suites need the cluster started by tests/setup/global.ts (roles per auth method)');
  return db as Required<typeof db>;
}

export const silentLogger = pino({ level: 'silent' });

/** A pino logger whose records (parsed) land in `records`. */
export function captureLogger(level = 'debug'): { logger: pino.Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const logger = pino({ level }, { write: (line: string) => void records.push(JSON.parse(line)) });
  return { logger, records };
}

export async function startTestProxy(over: Partial<ProxyOptions> = {}): Promise<ProxyServer> {
  const db = testDb();
  return startProxy({
    listen: { host: '127.0.0.1', port: 0 },
    upstream: `postgres://${db.host}:${db.port}/postgres?sslmode=disable`,
    maxMessageBytes: 64 * 1024 * 1024,
    shutdownGraceMs: 2_000,
    connectTimeoutMs: 3_000,
    logger: silentLogger,
    // The js-relay test project runs the proxy suites again without the native relay (vitest.config.ts).
    nativeRelay: process.env.PGSTEADYTEXT_TEST_RELAY === 'off' ? 'off' : 'auto',
    ...over,
  });
}

/** A role's connection URL, pointed at the proxy (or left direct when proxy is null). */
export function urlFor(role: RoleName | 'admin', proxy: ProxyServer | null, database = 'postgres'): string {
  const db = testDb();
  const u = new URL(role === 'admin' ? db.adminUrl : db.roles[role].url);
  if (proxy) {
    u.hostname = proxy.address.host;
    u.port = String(proxy.address.port);
  }
  u.pathname = `/${database}`;
  return u.toString();
}

export async function client(role: RoleName | 'admin', proxy: ProxyServer | null, extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: urlFor(role, proxy), ...extra });
  c.on('error', () => {}); // tests assert on query results; a dropped connection shows there
  await c.connect();
  return c;
}

export async function adminQuery<T extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<T[]> {
  const c = await client('admin', null);
  try {
    return (await c.query<T>(sql, params)).rows;
  } finally {
    await c.end();
  }
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs psql (-X: no ~/.psqlrc) with the given connection and arguments, optional stdin. */
export function psql(conn: { host: string; port: number; user: string; password: string; db?: string }, args: string[], stdin?: string): Promise<RunResult> {
  return run(
    'psql',
    ['-X', '-h', conn.host, '-p', String(conn.port), '-U', conn.user, '-d', conn.db ?? 'postgres', ...args],
    { PGPASSWORD: conn.password, PGSSLMODE: 'disable', PGAPPNAME: 'proxy-test' },
    stdin,
  );
}

export function run(cmd: string, args: string[], env: Record<string, string> = {}, stdin?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
    p.stdin.on('error', () => {});
    p.stdin.end(stdin ?? '');
  });
}

// ---- raw wire protocol ----------------------------------------------------------------------------

export interface Msg {
  type: string;
  body: Buffer;
  /** The whole message (type byte and length too), as proxy/protocol.ts readers take it. */
  bytes: Buffer;
}

/** A bare socket that collects what the proxy answers: single bytes ('S'/'N') and typed messages. */
export class RawClient {
  readonly sock: Socket;
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  /** Expect a bare byte next (answer to SSLRequest / GSSENCRequest). */
  private rawBytes = 0;
  readonly bytes: number[] = [];
  readonly messages: Msg[] = [];

  private constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.parse();
      this.wake();
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static open(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ host, port }, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  expectByte(): void {
    this.rawBytes++;
  }

  write(b: Buffer): void {
    this.sock.write(b);
  }

  private parse(): void {
    for (;;) {
      if (this.rawBytes > 0 && this.buf.length >= 1) {
        this.bytes.push(this.buf[0]);
        this.buf = this.buf.subarray(1);
        this.rawBytes--;
        continue;
      }
      if (this.buf.length < 5) return;
      const len = this.buf.readInt32BE(1);
      if (this.buf.length < 1 + len) return;
      const bytes = Buffer.from(this.buf.subarray(0, 1 + len));
      this.messages.push({ type: String.fromCharCode(bytes[0]), body: bytes.subarray(5), bytes });
      this.buf = this.buf.subarray(1 + len);
    }
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves when pred is true (checked on every arrival) or rejects after timeoutMs. */
  async until(pred: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}; got ${this.messages.map((m) => m.type).join('')} closed=${this.closed}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  waitFor(type: string, timeoutMs?: number): Promise<void> {
    return this.until(() => this.messages.some((m) => m.type === type), timeoutMs, `message ${type}`);
  }

  /** Waits until `n` messages of this type have arrived in total. */
  waitForCount(type: string, n: number, timeoutMs?: number): Promise<void> {
    return this.until(() => this.count(type) >= n, timeoutMs, `${n} x ${type}`);
  }

  count(type: string): number {
    return this.messages.filter((m) => m.type === type).length;
  }

  waitClosed(timeoutMs?: number): Promise<void> {
    return this.until(() => this.closed, timeoutMs, 'close');
  }

  /** Fields of the first ErrorResponse. */
  error(): Record<string, string> | undefined {
    const m = this.messages.find((x) => x.type === 'E');
    return m && readErrorFields(m.bytes);
  }

  destroy(): void {
    this.sock.destroy();
  }
}

export function startupPacket(params: Record<string, string>, version = 0x30000): Buffer {
  const body = Buffer.concat([...Object.entries(params).map(([k, v]) => Buffer.from(`${k}\0${v}\0`)), Buffer.from([0])]);
  const b = Buffer.alloc(8 + body.length);
  b.writeInt32BE(8 + body.length, 0);
  b.writeInt32BE(version, 4);
  body.copy(b, 8);
  return b;
}

export function frontend(type: string, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body) : body;
  const out = Buffer.alloc(5 + b.length);
  out[0] = type.charCodeAt(0);
  out.writeInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}

export const queryMsg = query;

/**
 * An application name unique to this run of this file: vitest runs the proxy suites in two projects at
 * once (vitest.config.ts), and each must find only its own backends in pg_stat_activity.
 */
export function appName(name: string): string {
  return `${name}-${process.pid}`;
}

/**
 * A raw client through authentication as trust_user (no password needed), until the first ReadyForQuery,
 * under the application name `app` (by default one of this run's).
 */
export async function rawSession(port: number, app = appName('raw-test')): Promise<RawClient> {
  const c = await RawClient.open(port);
  c.write(startupPacket({ user: 'trust_user', database: 'postgres', application_name: app }));
  await c.waitFor('Z');
  return c;
}

/** Polls fn until it returns true (or throws after timeoutMs). */
export async function eventually(fn: () => Promise<boolean> | boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function backendsOf(appName: string): Promise<{ pid: number; state: string; query: string }[]> {
  return adminQuery('select pid, state, query from pg_stat_activity where application_name = $1', [appName]);
}
