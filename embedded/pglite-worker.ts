// The embedded database's worker thread: PGlite (PostgreSQL compiled to WebAssembly, with pgvector) behind a
// wire-protocol listener on a Unix socket in a private directory, which the proxy pools its clients onto.
//
// PGlite is one backend session. Every connection here shares it, so they take turns by exchange, not by
// message: a connection that has begun an exchange (sent a message not yet answered by ReadyForQuery) or is
// inside a transaction block owns the session until ReadyForQuery says idle. Messages of other connections
// wait meanwhile. A connection that leaves while it owns the session has its batch ended and its block
// rolled back, so the next one starts clean. Startup parameters and the user name are PGlite's to ignore:
// every connection is its one superuser, which is why only this process's user may reach the socket.
import { createServer, type Server, type Socket } from 'node:net';
import { chmodSync, mkdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { parentPort, workerData } from 'node:worker_threads';
import { PGlite } from '@electric-sql/pglite';
import { vector } from '@electric-sql/pglite-pgvector';

export interface WorkerInput {
  /** null: in memory, gone when the worker stops. */
  dataDir: string | null;
  /** The socket's file (its directory is made private). */
  socketPath: string;
  /** A new database starts as this dump of a fresh one (embedded/index.ts template()) rather than by initdb. */
  template: string | null;
}

export type WorkerReport =
  | { kind: 'ready'; ms: number; version: string }
  | { kind: 'error'; message: string }
  | { kind: 'stopped' };

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
const SYNC = Buffer.from([0x53, 0, 0, 0, 4]);
const ROLLBACK = query('ROLLBACK');

function query(sql: string): Buffer {
  const body = Buffer.from(sql + '\0', 'utf8');
  const m = Buffer.alloc(5 + body.length);
  m[0] = 0x51;
  m.writeInt32BE(4 + body.length, 1);
  body.copy(m, 5);
  return m;
}

/**
 * PGlite reads a COPY's data within the call that runs its statement, which has none: the backend then ends
 * the session, for everyone. Such a statement is refused instead (the real parser says what it is), with an
 * error raised by PGlite itself, so that simple and extended protocol, blocks included, go on as after any error.
 */
const NO_COPY_IN = `DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = 'COPY FROM STDIN is not supported by the embedded database (PGlite)', HINT = 'Load the rows with INSERT (several rows per statement), or run pg-steadytext with --upstream in front of a PostgreSQL server.'; END$$`;

// The parser (WebAssembly, ~0.2 s to load) is loaded by the first statement that names STDIN, not at start, where the
// database's own start is what the first client waits for.
let parser: Promise<typeof import('libpg-query')> | undefined;
const loadParser = () => (parser ??= import('libpg-query').then(async (m) => {
  await m.loadModule();
  return m;
}));

async function copiesIn(sql: string): Promise<boolean> {
  if (!sql.toLowerCase().includes('stdin')) return false;
  const { parseSync } = await loadParser();
  try {
    const tree = parseSync(sql) as { stmts?: { stmt?: { CopyStmt?: { is_from?: boolean; filename?: string } } }[] };
    return (tree.stmts ?? []).some((x) => x.stmt?.CopyStmt?.is_from === true && x.stmt.CopyStmt.filename === undefined);
  } catch {
    return false; // PGlite reports the syntax error itself
  }
}

/** The message to run instead of a Query or Parse (name kept) that copies from the client, else the message. */
async function guarded(m: Buffer): Promise<Buffer> {
  if (m[0] === 0x51) return (await copiesIn(m.toString('utf8', 5, m.length - 1))) ? query(NO_COPY_IN) : m;
  if (m[0] !== 0x50) return m;
  const nameEnd = m.indexOf(0, 5);
  const sqlEnd = m.indexOf(0, nameEnd + 1);
  if (!(await copiesIn(m.toString('utf8', nameEnd + 1, sqlEnd)))) return m;
  const name = m.subarray(5, nameEnd + 1);
  const body = Buffer.concat([name, Buffer.from(NO_COPY_IN + '\0', 'utf8'), Buffer.from([0, 0])]);
  const out = Buffer.alloc(5 + body.length);
  out[0] = 0x50;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** Follows message boundaries across the chunks PGlite streams out, for the last ReadyForQuery's status. */
class Answers {
  private header = Buffer.alloc(5);
  private have = 0;
  private left = 0;
  private type = 0;
  /** The transaction status of the last ReadyForQuery seen, 0 if none yet. */
  status = 0;

  feed(b: Uint8Array): void {
    let i = 0;
    while (i < b.length) {
      if (this.left > 0) {
        const n = Math.min(this.left, b.length - i);
        if (this.type === 0x5a && n === this.left) this.status = b[i + n - 1];
        this.left -= n;
        i += n;
        continue;
      }
      this.header[this.have++] = b[i++];
      if (this.have === 5) {
        this.type = this.header[0];
        this.left = this.header.readInt32BE(1) - 4;
        this.have = 0;
      }
    }
  }
}

interface Conn {
  sock: Socket;
  /** Bytes read, not yet a whole message. */
  buf: Buffer;
  /** Whole messages waiting their turn. */
  queue: Buffer[];
  started: boolean;
  gone: boolean;
}

/**
 * Restores a template (the gzipped tar PGlite's dumpDataDir writes) into a new data directory with Node's own zlib
 * and file calls: PGlite's loadDataDir does the same through its emulated file system, for 0.5 s more CPU on the
 * first start's path. Regular files and directories, with their modification times, as loadDataDir restores them;
 * PG_VERSION last, so that a restore cut short leaves a directory that the next start takes for new and restores again.
 */
async function restore(template: string, dataDir: string): Promise<void> {
  const tar = await promisify(gunzip)(await readFile(template));
  const root = resolve(dataDir);
  const made = new Set<string>();
  let last: (() => void) | undefined;
  for (let at = 0; at + 512 <= tar.length;) {
    const header = tar.subarray(at, at + 512);
    if (header.every((b) => b === 0)) break; // the end-of-archive blocks
    const field = (from: number, length: number) => {
      const f = header.subarray(from, from + length);
      const nul = f.indexOf(0);
      return f.toString('utf8', 0, nul < 0 ? length : nul);
    };
    const prefix = field(345, 155);
    const name = (prefix ? `${prefix}/` : '') + field(0, 100);
    const size = parseInt(field(124, 12).trim() || '0', 8);
    const mtime = parseInt(field(136, 12).trim() || '0', 8);
    const type = header[156];
    at += 512;
    const data = tar.subarray(at, at + size);
    at += Math.ceil(size / 512) * 512;
    const path = resolve(root, `.${sep}${name}`);
    if (path !== root && !path.startsWith(root + sep)) throw new Error(`template ${template}: ${name} is outside the data directory`);
    if (type === 0x35 /* '5': a directory */) {
      if (!made.has(path)) mkdirSync(path, { recursive: true });
      made.add(path);
    } else if (type === 0x30 || type === 0 /* '0' or NUL: a regular file */) {
      const write = () => {
        if (!made.has(dirname(path))) mkdirSync(dirname(path), { recursive: true });
        made.add(dirname(path));
        writeFileSync(path, data);
        utimesSync(path, mtime, mtime);
      };
      if (path === join(root, 'PG_VERSION')) last = write;
      else write();
    }
  }
  if (!last) throw new Error(`template ${template} holds no PG_VERSION: not a PGlite data directory`);
  last();
}

export async function runEmbedded(input: WorkerInput, report: (r: WorkerReport) => void): Promise<{ stop(): Promise<void> }> {
  const t0 = Date.now();
  // A data directory gets the template's files before PGlite opens it; in memory, PGlite restores it itself.
  if (input.template && input.dataDir) await restore(input.template, input.dataDir);
  const db = await PGlite.create({
    ...(input.dataDir ? { dataDir: input.dataDir } : {}),
    ...(input.template && !input.dataDir ? { loadDataDir: new Blob([readFileSync(input.template)]) } : {}),
    extensions: { vector },
  });
  const version = (await db.query<{ v: string }>('SELECT pg_catalog.version() AS v')).rows[0].v;
  const conns: Conn[] = [];
  let owner: Conn | null = null;
  let busy = false;

  const next = (): [Conn, Buffer] | null => {
    if (owner) return owner.queue.length ? [owner, owner.queue.shift()!] : null;
    // First come, first served: the connection whose message has waited longest.
    for (const c of conns) if (c.queue.length) return [c, c.queue.shift()!];
    return null;
  };

  const run = async (msg: Uint8Array, to: Conn | null): Promise<number> => {
    const answers = new Answers();
    await db.runExclusive(() => db.execProtocolRawStream(msg, {
      onRawData: (d) => {
        answers.feed(d);
        if (to && !to.gone) to.sock.write(Buffer.from(d));
      },
    }));
    return answers.status;
  };

  const pump = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    try {
      for (let job = next(); job; job = next()) {
        const [c, msg] = job;
        let status = 0;
        try {
          // Guarded as it is run, not as it arrives: the parser may have to load first (loadParser).
          status = await run(await guarded(msg), c);
        } catch (err) {
          c.sock.destroy(err as Error);
          status = 0;
        }
        // Idle: the session is free for whoever waits. Otherwise (a batch before its Sync, a block) it stays with c.
        owner = status === 0x49 ? null : c;
        if (c.gone && owner === c) await release(c);
      }
    } finally {
      busy = false;
    }
  };

  /** A connection that left while it owned the session: its batch ended, its block rolled back. */
  const release = async (c: Conn): Promise<void> => {
    try {
      if ((await run(SYNC, null)) !== 0x49) await run(ROLLBACK, null);
    } catch {
      // PGlite refused even that: the next connection finds the session as it is.
    }
    if (owner === c) owner = null;
  };

  const leave = (c: Conn): void => {
    if (c.gone) return;
    c.gone = true;
    c.queue.length = 0;
    conns.splice(conns.indexOf(c), 1);
    if (owner === c && !busy) {
      busy = true;
      void release(c).finally(() => {
        busy = false;
        void pump();
      });
    }
  };

  const onData = (c: Conn, chunk: Buffer): void => {
    c.buf = c.buf.length ? Buffer.concat([c.buf, chunk]) : chunk;
    for (;;) {
      if (!c.started) {
        if (c.buf.length < 8) return;
        const len = c.buf.readInt32BE(0);
        if (len < 8 || len > 10_000) return void c.sock.destroy();
        if (c.buf.length < len) return;
        const code = c.buf.readInt32BE(4);
        const m = c.buf.subarray(0, len);
        c.buf = c.buf.subarray(len);
        if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
          c.sock.write('N');
          continue;
        }
        if (code === CANCEL_REQUEST) return void c.sock.destroy(); // PGlite cannot cancel
        c.started = true;
        c.queue.push(Buffer.from(m));
        continue;
      }
      if (c.buf.length < 5) break;
      const len = c.buf.readInt32BE(1);
      if (len < 4) return void c.sock.destroy();
      if (c.buf.length < len + 1) break;
      const m = Buffer.from(c.buf.subarray(0, len + 1));
      c.buf = c.buf.subarray(len + 1);
      // Terminate ends this connection, never the one session everyone shares.
      if (m[0] === 0x58) return void c.sock.end();
      c.queue.push(m);
    }
    void pump();
  };

  const server: Server = createServer((sock) => {
    const c: Conn = { sock, buf: Buffer.alloc(0), queue: [], started: false, gone: false };
    conns.push(c);
    sock.setNoDelay(true);
    sock.on('data', (d) => onData(c, d));
    sock.on('error', () => leave(c));
    sock.on('close', () => leave(c));
  });
  const dir = input.socketPath.slice(0, input.socketPath.lastIndexOf('/'));
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  rmSync(input.socketPath, { force: true }); // a stale one of a process that was killed
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(input.socketPath, () => resolve());
  });
  report({ kind: 'ready', ms: Date.now() - t0, version });

  return {
    async stop() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const c of [...conns]) c.sock.destroy();
      });
      while (busy) await new Promise((r) => setTimeout(r, 10));
      await db.close(); // writes everything to the data directory
    },
  };
}

if (parentPort && workerData) {
  const port = parentPort;
  const report = (r: WorkerReport) => port.postMessage(r);
  runEmbedded(workerData as WorkerInput, report).then(
    (handle) => {
      port.on('message', (m) => {
        if (m !== 'stop') return;
        handle.stop().then(
          () => report({ kind: 'stopped' }),
          (err: unknown) => report({ kind: 'error', message: `could not close the embedded database: ${(err as Error).message}` }),
        );
      });
    },
    (err: unknown) => report({ kind: 'error', message: (err as Error)?.message ?? String(err) }),
  );
}
