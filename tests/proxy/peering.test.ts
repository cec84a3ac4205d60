// pgBouncer's peering: processes sharing one port (so_reuseport = 1), each with its peer_id and the others in
// [peers]. A client's cancel key carries the peer_id of the process that serves it, and a CancelRequest that
// reaches another process is forwarded to that one, as pgBouncer does. The CLI runs as two real processes.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { inject } from 'vitest';
import { CancelRegistry, PEER_PID_SHIFT } from '../../proxy/cancel.js';
import { cancelRequest } from '../../proxy/protocol.js';
import { freePort } from '../setup/cluster.js';
import { spawnCli, writePgbouncerIni } from './helpers.js';

describe('cancel keys of a peer', () => {
  test('carry its peer_id; a key of another peer is forwarded there, an unknown peer’s is ignored', () => {
    const forwarded: [number, number][] = [];
    const r = new CancelRegistry(undefined, { peerId: 7, forward: (peer, pid) => (peer === 3 ? (forwarded.push([peer, pid]), true) : false) });
    let cancelled = 0;
    const key = r.issue(4, () => cancelled++);
    expect(key.pid >>> PEER_PID_SHIFT).toBe(7);
    expect(r.cancel(key.pid, key.secret)).toBe(true);
    expect(cancelled).toBe(1);
    const other = (3 << PEER_PID_SHIFT) | 42;
    expect(r.cancel(other, Buffer.alloc(4))).toBe(true);
    expect(forwarded).toEqual([[3, other]]);
    expect(r.cancel((9 << PEER_PID_SHIFT) | 1, Buffer.alloc(4))).toBe(false);
    expect(() => new CancelRegistry(undefined, { peerId: 0, forward: () => true })).toThrow(/peer_id/);
  });
});

describe('two processes on one port', () => {
  let dir: string;
  let port: number;
  const procs: ReturnType<typeof spawnCli>[] = [];
  let url: string;

  beforeAll(async () => {
    const admin = new URL(inject('db').adminUrl);
    const user = decodeURIComponent(admin.username);
    const password = decodeURIComponent(admin.password);
    dir = mkdtempSync(join(tmpdir(), 'peering-'));
    port = await freePort();
    for (const id of [1, 2]) {
      mkdirSync(join(dir, `s${id}`)); // each peer's own Unix socket, where the other forwards cancels
      mkdirSync(join(dir, `p${id}`));
      const ini = writePgbouncerIni(join(dir, `p${id}`), {
        port, user, password,
        databases: [`postgres = host=${admin.hostname} port=${admin.port} dbname=postgres`],
        unixSocketDir: join(dir, `s${id}`),
        pgbouncer: ['pool_mode = session', 'so_reuseport = 1', `peer_id = ${id}`],
        sections: { peers: [`${3 - id} = host=${join(dir, `s${3 - id}`)} port=${port}`] },
      });
      procs.push(spawnCli(['pgbouncer', ini], { PGSTEADYTEXT_DAEMON_LISTEN: 'off' }));
    }
    const deadline = Date.now() + 60_000;
    while (!procs.every((p) => p.output().includes('pg-steadytext ready'))) {
      for (const p of procs) if (p.child.exitCode !== null) throw new Error(`a peer exited before it was ready:\n${p.output()}`);
      if (Date.now() > deadline) throw new Error(`peers not ready after 60 s:\n${procs.map((p) => p.output()).join('\n---\n')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    url = `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  }, 90_000);

  afterAll(async () => {
    await Promise.all(procs.map(async (p) => {
      if (p.child.exitCode !== null) return;
      const exited = new Promise((r) => p.child.once('exit', r));
      p.child.kill('SIGKILL');
      await exited;
    }));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('both listen on the port, and a CancelRequest sent to the peer that does not serve the client cancels its query', async () => {
    const c = new pg.Client(url);
    await c.connect();
    try {
      const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
      const owner = processID >>> PEER_PID_SHIFT;
      expect([1, 2]).toContain(owner);
      const other = 3 - owner;
      const running = c.query('SELECT pg_sleep(30)');
      await new Promise((r) => setTimeout(r, 300));
      const secret = Buffer.alloc(4);
      secret.writeInt32BE(secretKey);
      await new Promise<void>((resolve, reject) => {
        const s = connect(join(dir, `s${other}`, `.s.PGSQL.${port}`), () => s.end(cancelRequest(processID, secret)));
        s.on('error', reject);
        s.on('close', () => resolve());
      });
      const err = await running.then(() => null, (e: { code?: string }) => e);
      expect(err?.code).toBe('57014');
      expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    } finally {
      await c.end();
    }
  });
});
