// The real psql binary through the proxy and directly: the same script gives the same output. Each run
// gets a fresh database (from template1, so pgvector is there) so other suites cannot change what \d shows.
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { ProxyServer } from '../../proxy/server.js';
import { adminQuery, psql, startTestProxy, testDb, type RunResult } from './helpers.js';

const ROWS = 100_000;
let proxy: ProxyServer;
const dbs: string[] = [];

beforeAll(async () => {
  proxy = await startTestProxy();
});
afterAll(async () => {
  await proxy.close(0);
  for (const db of dbs) await adminQuery(`drop database if exists ${db} with (force)`);
});

async function freshDb(): Promise<string> {
  const name = `psql_${process.pid}_${dbs.length}`;
  dbs.push(name);
  // CREATE DATABASE fails while anyone else is connected to template1 (another suite, briefly): retry.
  for (let attempt = 0; ; attempt++) {
    try {
      await adminQuery(`create database ${name} owner scram_user`);
      return name;
    } catch (e) {
      if ((e as { code?: string }).code !== '55006' || attempt >= 20) throw e;
      await new Promise((r) => setTimeout(r, 250)); // backoff of a bounded retry (20 attempts), not synchronisation
    }
  }
}

async function both(args: string[], stdin?: string, prepare?: (db: string) => Promise<void>): Promise<[RunResult, RunResult]> {
  const db = testDb();
  const role = db.roles.scram;
  const out: RunResult[] = [];
  for (const port of [db.port, proxy.address.port]) {
    const name = await freshDb();
    await prepare?.(name);
    const r = await psql({ host: '127.0.0.1', port, user: role.user, password: role.password, db: name }, args, stdin);
    // Only where psql names the port (\conninfo, messages): data may contain the same digits.
    const norm = (s: string) => s.replaceAll(`port "${port}"`, 'port "<port>"').replaceAll(name, '<db>');
    out.push({ code: r.code, stdout: norm(r.stdout), stderr: norm(r.stderr) });
  }
  return [out[0], out[1]];
}

test('a script with DDL, \\d, \\df, multi-statement queries, transactions and errors: identical output', async () => {
  const script = String.raw`
\conninfo
create table items (id int primary key, name text not null, emb vector(3), created timestamptz default '2024-01-01');
create index on items (name);
create view item_names as select name from items;
create function add_one(i int) returns int language sql immutable as 'select i + 1';
insert into items values (1, 'one', '[1,2,3]'), (2, 'two', null);
\d
\d items
\df
\dx
select 1 as a \; select 2 as b \; select 'three' as c;
select * from items order by id;
begin;
insert into items values (3, 'three', '[0,0,1]');
select count(*) from items;
rollback;
select count(*) from items;
select 1/0;
select * from no_such_table;
begin;
select 1/0;
select 1;
rollback;
select add_one(41), current_user, current_database() = :'DBNAME';
\echo done
`;
  const [direct, viaProxy] = await both(['-v', 'ON_ERROR_STOP=0', '-f', '-'], script);
  expect(direct.stderr).toContain('division by zero');
  expect(direct.stdout).toContain('You are connected to database "<db>" as user "scram_user" on host "127.0.0.1" at port "<port>"');
  expect(direct.stdout).toContain('add_one');
  expect(viaProxy).toEqual(direct);
}, 60_000);

test(`\\copy ${ROWS} rows from stdin and back to stdout: identical`, async () => {
  const lines: string[] = [];
  for (let i = 1; i <= ROWS; i++) lines.push(`${i}\tname ${i} ✓\t[${i % 7},${i % 11},${i % 13}]`);
  const script = [
    'create table bulk (id int primary key, name text, emb vector(3));',
    '\\copy bulk from stdin',
    ...lines,
    '\\.',
    'select count(*), sum(id), md5(string_agg(name || emb::text, \',\' order by id)) from bulk;',
    '\\copy (select * from bulk order by id) to stdout',
    '\\copy bulk from stdin',
    '1\tduplicate\t[1,1,1]',
    '\\.',
    'select count(*) from bulk;',
  ].join('\n');
  const [direct, viaProxy] = await both(['-v', 'ON_ERROR_STOP=0', '-f', '-'], `${script}\n`);
  expect(direct.stdout).toContain(` ${ROWS} |`);
  const copied = direct.stdout.split('\n').filter((l) => /^\d+\tname /.test(l));
  expect(copied).toHaveLength(ROWS);
  expect(direct.stderr).toContain('duplicate key');
  expect(viaProxy).toEqual(direct);
}, 120_000);

test('psql -c with several statements: identical', async () => {
  const [direct, viaProxy] = await both(['-c', 'select 1 as one; select 2 as two', '-c', 'show server_version_num']);
  expect(direct.code).toBe(0);
  expect(viaProxy).toEqual(direct);
});
