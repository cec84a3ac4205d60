// Two drivers that only speak the extended protocol where it matters, PgJDBC and psycopg 3, against the admin
// console of the real pooling proxy (pgBouncer's own console answers the simple protocol alone, so both fail
// there). Each SHOW's columns and types are the ones the simple protocol gives; the rows of the SHOWs that do
// not change between connections are the same text, also when PgJDBC reuses a named statement with binary
// results and when psycopg prepares or asks for binary; an error leaves the connection usable.
// The drivers are Debian's (libpostgresql-jdbc-java, python3-psycopg: scripts/setup-machine.sh installs them).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { PoolingEnv } from '../../proxy/pooling.js';
import type { ProxyServer } from '../../proxy/server.js';
import { run, startPoolingProxy, testDb } from './helpers.js';

const JDBC_JAR = '/usr/share/java/postgresql.jar';
const JDBC_MAIN = fileURLToPath(new URL('../fixtures/drivers/ConsoleJdbc.java', import.meta.url));
/** Debian's, where apt installs python3-psycopg (not a pyenv python first on PATH). */
const PYTHON = '/usr/bin/python3';
const PSYCOPG_MAIN = fileURLToPath(new URL('../fixtures/drivers/console_psycopg.py', import.meta.url));

/** Stable between connections: their rows must match to the byte. */
const STABLE = ['SHOW CONFIG', 'SHOW VERSION', 'SHOW STATE'];
/** Rows that move with the connections themselves: columns and types only. */
const MOVING = ['SHOW POOLS', 'SHOW STATS', 'SHOW DATABASES', 'SHOW USERS', 'SHOW LISTS', 'SHOW CLIENTS', 'SHOW STEADYTEXT'];
const TYPE_NAMES: Record<number, string> = { 25: 'text', 23: 'int4', 20: 'int8', 1700: 'numeric', 17: 'bytea' };

interface Simple {
  columns: { name: string; oid: number }[];
  rows: (string | null)[][];
}

let proxy: ProxyServer;
let pooling: PoolingEnv;
let closeConsole: () => void;
let user: string;
let password: string;
/** The simple protocol's answer to each statement, through node-postgres, as text. */
const simple = new Map<string, Simple>();

beforeAll(async () => {
  const r = testDb().roles.scram;
  ({ user, password } = r);
  ({ proxy, pooling, closeConsole } = await startPoolingProxy({
    authType: 'scram-sha-256', user, password, pgbouncer: { admin_users: user, pool_mode: 'transaction' },
  }));
  const c = new pg.Client({ host: '127.0.0.1', port: proxy.address.port, user, password, database: 'pgbouncer' });
  await c.connect();
  try {
    for (const sql of [...STABLE, ...MOVING]) {
      const res = await c.query({ text: sql, rowMode: 'array', types: { getTypeParser: () => (v: string) => v } });
      simple.set(sql, { columns: res.fields.map((f) => ({ name: f.name, oid: f.dataTypeID })), rows: res.rows as (string | null)[][] });
    }
  } finally {
    await c.end();
  }
});
afterAll(async () => {
  await proxy.close(0);
  pooling.pooler.close();
  closeConsole();
});

describe('PgJDBC against the admin console', () => {
  interface Line {
    sql: string;
    round?: number;
    columns?: { name: string; type: string }[];
    rows?: (string | null)[][];
    updateCount?: number;
    error?: { state: string; message: string };
  }

  test('every SHOW, once unnamed and once as a named statement with binary results; commands; an error in between', async () => {
    expect(existsSync(JDBC_JAR), `${JDBC_JAR} is missing: run scripts/setup-machine.sh (Debian's libpostgresql-jdbc-java)`).toBe(true);
    const statements = [...STABLE, 'SHOW nothing', ...MOVING, 'RELOAD'];
    const url = `jdbc:postgresql://127.0.0.1:${proxy.address.port}/pgbouncer`;
    const r = await run('java', ['-cp', JDBC_JAR, JDBC_MAIN, url, user, password, ...statements]);
    expect(r.code, `${r.stderr}\n(scripts/setup-machine.sh installs a JDK and PgJDBC)`).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Line);
    for (const sql of [...STABLE, ...MOVING]) {
      const want = simple.get(sql)!;
      const got = lines.filter((l) => l.sql === sql);
      expect(got.map((l) => l.round)).toEqual([1, 2]);
      for (const l of got) {
        expect({ sql, columns: l.columns }).toEqual({ sql, columns: want.columns.map((c) => ({ name: c.name, type: TYPE_NAMES[c.oid] })) });
        if (STABLE.includes(sql)) expect({ sql, round: l.round, rows: l.rows }).toEqual({ sql, round: l.round, rows: want.rows });
        else expect(l.rows!.every((row) => row.length === want.columns.length)).toBe(true);
      }
    }
    expect(lines.find((l) => l.sql === 'SHOW nothing')?.error).toEqual({ state: '08P01', message: "invalid command 'SHOW nothing', use SHOW HELP;" });
    expect(lines.filter((l) => l.sql === 'RELOAD').map((l) => l.updateCount)).toEqual([0, 0]);
    // PgJDBC's own connection is a console client of the pgbouncer database, as SHOW CLIENTS lists it.
    const clients = lines.find((l) => l.sql === 'SHOW CLIENTS' && l.round === 2)!;
    const column = (name: string) => clients.columns!.findIndex((c) => c.name === name);
    expect(clients.rows!.map((row) => [row[column('user')], row[column('database')]])).toContainEqual([user, 'pgbouncer']);
  });
});

describe('psycopg 3 against the admin console', () => {
  interface Entry {
    sql: string;
    how: 'default' | 'prepared' | 'binary';
    columns?: [string, number][];
    rows?: (string | null)[][];
    status?: string;
    error?: { state: string; message: string };
  }

  test('every SHOW as psycopg sends it, prepared, and with binary results; an error in between', async () => {
    const statements = [...STABLE, 'SHOW nothing', ...MOVING, 'RELOAD'];
    const conninfo = `postgresql://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${proxy.address.port}/pgbouncer?sslmode=disable`;
    const r = await run(PYTHON, [PSYCOPG_MAIN, conninfo, ...statements]);
    expect(r.code, `${r.stderr}\n(scripts/setup-machine.sh installs python3-psycopg)`).toBe(0);
    const entries = JSON.parse(r.stdout) as Entry[];
    for (const sql of [...STABLE, ...MOVING]) {
      const want = simple.get(sql)!;
      const got = entries.filter((e) => e.sql === sql);
      expect(got.map((e) => e.how)).toEqual(['default', 'prepared', 'binary']);
      for (const e of got) {
        expect({ sql, how: e.how, error: e.error, columns: e.columns }).toEqual({ sql, how: e.how, error: undefined, columns: want.columns.map((c) => [c.name, c.oid]) });
        if (STABLE.includes(sql)) expect({ sql, how: e.how, rows: e.rows }).toEqual({ sql, how: e.how, rows: want.rows });
      }
    }
    for (const e of entries.filter((x) => x.sql === 'SHOW nothing')) {
      expect({ how: e.how, error: e.error }).toEqual({ how: e.how, error: { state: '08P01', message: "invalid command 'SHOW nothing', use SHOW HELP;" } });
    }
    expect(entries.filter((e) => e.sql === 'RELOAD').map((e) => e.status)).toEqual(['RELOAD', 'RELOAD', 'RELOAD']);
  });
});
