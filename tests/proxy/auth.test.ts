// Pooling-mode authentication, both ways. ClientAuth (the proxy as the server) behind a small TCP server
// that real clients (node-postgres, psql) log into; loginServer (the proxy as a client) against a
// PostgreSQL cluster of this suite's own, whose pg_hba.conf gives each role a method (trust, password,
// md5, scram-sha-256) and which also speaks TLS; and the SCRAM pass-through from one to the other.
import { execFileSync } from 'node:child_process';
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { Parser } from 'pg-protocol/dist/parser.js';
import { serialize } from 'pg-protocol';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Secret } from '../../config/pgbouncer.js';
import { ClientAuth, type AuthStep, type ClientAuthMethod } from '../../proxy/auth.js';
import { saslprep } from '../../proxy/saslprep.js';
import {
  AUTH_OK,
  GSSENC_REQUEST_CODE,
  REFUSE_ENCRYPTION,
  SSL_REQUEST_CODE,
  TERMINATE,
  authentication,
  authenticationMD5Password,
  authenticationSASL,
  authenticationSASLContinue,
  authenticationSASLFinal,
  commandComplete,
  dataRow,
  errorResponse,
  parameterStatus,
  passwordMessage,
  query,
  readAuthentication,
  readDataRow,
  readErrorFields,
  readPasswordMessage,
  readSASLInitialResponse,
  readSASLResponse,
  readStartupPacket,
  readyForQuery,
  rowDescription,
  saslInitialResponse,
  saslResponse,
  startupMessage,
} from '../../proxy/protocol.js';
import { loginServer, LoginError, type LoginCredentials, type LoggedIn } from '../../proxy/server-login.js';
import { openUpstream, parseUpstreamUrl, type OpenedUpstream } from '../../proxy/upstream.js';
import { hbaLines, startCluster, type Cluster } from '../setup/cluster.js';
import { run } from './helpers.js';

// ---- SCRAM and md5 as a client computes them (node:crypto directly, not the code under test) ----------

const hmac = (key: Buffer, data: string | Buffer) => createHmac('sha256', key).update(data).digest();
const sha = (data: Buffer) => createHash('sha256').update(data).digest();

function scramSecretOf(password: string, iterations = 4096): Extract<Secret, { kind: 'scram' }> {
  const salt = randomBytes(16);
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const storedKey = sha(hmac(salted, 'Client Key'));
  const serverKey = hmac(salted, 'Server Key');
  const text = `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
  return { kind: 'scram', iterations, salt, storedKey, serverKey, text };
}

/** A verifier as pg_authid holds it. */
function parseVerifier(text: string): Extract<Secret, { kind: 'scram' }> {
  const [scheme, rest] = [text.slice(0, text.indexOf('$')), text.slice(text.indexOf('$') + 1)];
  expect(scheme).toBe('SCRAM-SHA-256');
  const [iterSalt, keys] = rest.split('$');
  const [iter, salt] = iterSalt.split(':');
  const [stored, server] = keys.split(':');
  return {
    kind: 'scram',
    iterations: Number(iter),
    salt: Buffer.from(salt, 'base64'),
    storedKey: Buffer.from(stored, 'base64'),
    serverKey: Buffer.from(server, 'base64'),
    text,
  };
}

const md5SecretOf = (password: string, user: string): Secret => ({
  kind: 'md5',
  hash:
    'md5' +
    createHash('md5')
      .update(password + user)
      .digest('hex'),
});

const authCode = (msg: Buffer) => msg.readInt32BE(5);

/** A SCRAM client run by hand against a ClientAuth: each step's result, and the salt the server gave. */
function scramByHand(auth: ClientAuth, password: string, first = 'n,,n=,r=clientnonce0123456789') {
  const begun = auth.begin();
  expect(begun.done).toBe(false);
  const cont = auth.respond(saslInitialResponse('SCRAM-SHA-256', Buffer.from(first)));
  if (cont.done) return { cont };
  const serverFirst = cont.send.subarray(9).toString();
  const attrs = new Map(serverFirst.split(',').map((a) => [a[0], a.slice(2)]));
  const salt = Buffer.from(attrs.get('s')!, 'base64');
  const salted = pbkdf2Sync(password, salt, Number(attrs.get('i')), 32, 'sha256');
  const clientKey = hmac(salted, 'Client Key');
  const withoutProof = `c=biws,r=${attrs.get('r')}`;
  const signed = `${first.slice(3)},${serverFirst},${withoutProof}`;
  const signature = hmac(sha(clientKey), signed);
  const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]));
  const final = auth.respond(saslResponse(Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)));
  return { cont, salt, final, clientKey, serverKey: hmac(salted, 'Server Key'), signed };
}

// ---- a tiny server speaking startup, ClientAuth's exchange, and one answer to any query -----------------

interface Attempt {
  user: string;
  /** Authentication request codes sent (3 cleartext, 5 md5, 10 SASL, 11 SASLContinue). */
  requests: number[];
  result?: AuthStep & { done: true };
}

interface AuthServer {
  port: number;
  attempts: Attempt[];
  close(): Promise<void>;
}

async function authServer(method: ClientAuthMethod, secrets: Record<string, Secret>): Promise<AuthServer> {
  const attempts: Attempt[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let auth: ClientAuth | null = null;
    let attempt: Attempt | null = null;
    let ready = false;
    const apply = (step: AuthStep) => {
      if (!step.done) {
        attempt!.requests.push(authCode(step.send));
        sock.write(step.send);
        return;
      }
      attempt!.result = step;
      if (!step.ok) {
        sock.end(errorResponse(step.error));
        return;
      }
      const params = [
        ['server_version', '15.0'],
        ['client_encoding', 'UTF8'],
        ['server_encoding', 'UTF8'],
        ['standard_conforming_strings', 'on'],
        ['integer_datetimes', 'on'],
        ['DateStyle', 'ISO, MDY'],
      ];
      sock.write(
        Buffer.concat([step.send ?? Buffer.alloc(0), authentication(AUTH_OK), ...params.map(([k, v]) => parameterStatus(k, v)), readyForQuery('I')]),
      );
      ready = true;
    };
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (auth === null) {
          if (buf.length < 8 || buf.length < buf.readInt32BE(0)) return;
          const packet = buf.subarray(0, buf.readInt32BE(0));
          buf = buf.subarray(packet.length);
          const code = packet.readInt32BE(4);
          if (code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE) {
            sock.write(REFUSE_ENCRYPTION);
            continue;
          }
          const user = readStartupPacket(packet)!.params.get('user')!;
          attempt = { user, requests: [] };
          attempts.push(attempt);
          auth = new ClientAuth({ method, user, secret: secrets[user] ?? null });
          apply(auth.begin());
          continue;
        }
        if (buf.length < 5 || buf.length < 1 + buf.readInt32BE(1)) return;
        const msg = buf.subarray(0, 1 + buf.readInt32BE(1));
        buf = buf.subarray(msg.length);
        if (!ready) apply(auth.respond(Buffer.from(msg)));
        else if (msg[0] === 0x51 /* Q */) {
          sock.write(
            Buffer.concat([
              rowDescription([{ name: 'who', typeOid: 25 }]),
              dataRow([Buffer.from(`authenticated as ${attempt!.user}`)]),
              commandComplete('SELECT 1'),
              readyForQuery('I'),
            ]),
          );
        } else if (msg[0] === 0x58 /* X */) sock.end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    attempts,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

async function pgLogin(port: number, user: string, password: string): Promise<string> {
  const c = new pg.Client({ host: '127.0.0.1', port, user, password, database: 'postgres' });
  c.on('error', () => {});
  await c.connect();
  try {
    return (await c.query<{ who: string }>('select who')).rows[0].who;
  } finally {
    await c.end();
  }
}

// ---- ClientAuth ---------------------------------------------------------------------------------------

describe('ClientAuth, unit', () => {
  test('trust and any', () => {
    expect(new ClientAuth({ method: 'trust', user: 'u', secret: { kind: 'plain', password: 'x' } }).begin()).toEqual({ done: true, ok: true });
    expect(new ClientAuth({ method: 'trust', user: 'u', secret: null }).begin()).toEqual({
      done: true,
      ok: false,
      error: { severity: 'FATAL', code: '08P01', message: '"trust" authentication failed' },
    });
    expect(new ClientAuth({ method: 'any', user: 'nobody', secret: null }).begin()).toEqual({ done: true, ok: true });
  });

  test('a user auth_query found with a NULL password: trust lets it in, no password ever does', () => {
    const found = (method: 'trust' | 'plain' | 'md5' | 'scram-sha-256') => new ClientAuth({ method, user: 'u', secret: null, known: true });
    expect(found('trust').begin()).toEqual({ done: true, ok: true });
    const refused = { done: true, ok: false, error: { severity: 'FATAL', code: '08P01', message: 'password authentication failed' } };
    for (const guess of ['', 'md5', 'u', 'guess']) {
      const plain = found('plain');
      plain.begin();
      if (guess !== '') expect(plain.respond(passwordMessage(guess))).toEqual(refused);
      const md5 = found('md5');
      md5.begin();
      expect(md5.respond(passwordMessage('md5' + 'a'.repeat(32)))).toEqual(refused);
    }
    expect(scramByHand(found('scram-sha-256'), '').final).toMatchObject({ done: true, ok: false, error: { message: 'SASL authentication failed' } });
    expect(scramByHand(found('scram-sha-256'), 'md5').final).toMatchObject({ done: true, ok: false, error: { message: 'SASL authentication failed' } });
  });

  test("SCRAM by hand: the server signature checks out, and the keys handed on are the client's", () => {
    const secret = scramSecretOf('right');
    const r = scramByHand(new ClientAuth({ method: 'scram-sha-256', user: 'u', secret }), 'right');
    expect(r.final).toMatchObject({ done: true, ok: true });
    const final = r.final as Extract<AuthStep, { ok: true }>;
    expect(final.send!.subarray(9).toString()).toBe(`v=${hmac(r.serverKey!, r.signed!).toString('base64')}`);
    expect(final.scramKeys).toEqual({ clientKey: r.clientKey, serverKey: secret.serverKey });
    // From a cleartext secret the verifier is made on the spot (fresh salt): its keys open nothing elsewhere.
    const adhoc = scramByHand(new ClientAuth({ method: 'scram-sha-256', user: 'u', secret: { kind: 'plain', password: 'right' } }), 'right');
    expect(adhoc.final).toMatchObject({ done: true, ok: true });
    expect((adhoc.final as { scramKeys?: unknown }).scramKeys).toBeUndefined();
  });

  test('unknown user: the SCRAM exchange runs to its end with a salt fixed per user name, then fails as a wrong password does', () => {
    const unknown = (user: string) => scramByHand(new ClientAuth({ method: 'scram-sha-256', user, secret: null }), 'whatever');
    const a1 = unknown('ghost');
    const a2 = unknown('ghost');
    const b = unknown('phantom');
    expect(a1.final).toEqual({ done: true, ok: false, error: { severity: 'FATAL', code: '08P01', message: 'SASL authentication failed' } });
    expect(a1.salt).toEqual(a2.salt);
    expect(a1.salt).not.toEqual(b.salt);
    expect(a1.salt!.length).toBe(16);
    const wrong = scramByHand(new ClientAuth({ method: 'scram-sha-256', user: 'u', secret: scramSecretOf('right') }), 'wrong');
    expect(wrong.final).toEqual(a1.final);
    // md5 and plain: the request goes out as for a known user, the answer fails the same way.
    for (const method of ['md5', 'plain'] as const) {
      const known = new ClientAuth({ method, user: 'u', secret: { kind: 'plain', password: 'right' } });
      const ghost = new ClientAuth({ method, user: 'ghost', secret: null });
      expect(authCode((ghost.begin() as { send: Buffer }).send)).toBe(authCode((known.begin() as { send: Buffer }).send));
      const answer = passwordMessage(method === 'md5' ? 'md5' + 'a'.repeat(32) : 'guess');
      expect(ghost.respond(answer)).toEqual(known.respond(answer));
      expect(known.respond(answer)).toMatchObject({ done: true, ok: false, error: { code: '08P01', message: expect.any(String) as string } });
    }
  });

  test('SCRAM with an md5 secret fails at the first message, as pgBouncer', () => {
    const r = scramByHand(new ClientAuth({ method: 'scram-sha-256', user: 'u', secret: md5SecretOf('p', 'u') }), 'p');
    expect(r.cont).toEqual({ done: true, ok: false, error: { severity: 'FATAL', code: '08P01', message: 'SASL authentication failed' } });
  });

  test('md5 with a SCRAM secret runs SCRAM', () => {
    const auth = new ClientAuth({ method: 'md5', user: 'u', secret: scramSecretOf('p') });
    const begun = auth.begin() as { send: Buffer };
    expect(readAuthentication(begun.send)).toEqual({ kind: 'sasl', mechanisms: ['SCRAM-SHA-256'] });
  });

  test('an empty password and an empty cleartext secret never pass', () => {
    const a = new ClientAuth({ method: 'plain', user: 'u', secret: { kind: 'plain', password: '' } });
    a.begin();
    expect(a.respond(passwordMessage(''))).toMatchObject({ ok: false, error: { message: 'empty password returned by client' } });
    const b = new ClientAuth({ method: 'plain', user: 'u', secret: { kind: 'plain', password: '' } });
    b.begin();
    expect(b.respond(passwordMessage('x'))).toMatchObject({ ok: false, error: { message: 'password authentication failed' } });
    expect(scramByHand(new ClientAuth({ method: 'scram-sha-256', user: 'u', secret: { kind: 'plain', password: '' } }), '').final).toMatchObject({
      ok: false,
    });
  });

  test('malformed client messages: 08P01 with a message that says what was wrong, never a throw', () => {
    const p = (body: Buffer | string) => {
      const b = Buffer.from(body);
      const out = Buffer.alloc(5 + b.length);
      out[0] = 0x70;
      out.writeInt32BE(4 + b.length, 1);
      b.copy(out, 5);
      return out;
    };
    const first = 'n,,n=,r=abcdef';
    const cases: [ClientAuthMethod, Buffer[], string][] = [
      ['plain', [Buffer.from('Q\0\0\0\x05x')], 'message type'],
      ['plain', [Buffer.alloc(0)], 'nothing'],
      ['plain', [p('no terminator')], 'NUL-terminated'],
      ['plain', [p('two\0strings\0')], 'NUL-terminated'],
      ['md5', [Buffer.from([0x70, 0, 0, 0, 99, 0])], 'NUL-terminated'],
      ['scram-sha-256', [p('SCRAM-SHA-256\0')], 'SASLInitialResponse'],
      ['scram-sha-256', [p('SCRAM-SHA-256\0\0\0\0\x09abc')], 'SASLInitialResponse'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', null)], 'without the client-first-message'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from('p=tls-server-end-point,,n=,r=abc'))], 'channel binding'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from('x,,n=,r=abc'))], 'channel-binding flag'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from('n,a=admin,n=,r=abc'))], 'authorization identity'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from('n,,m=ext,n=,r=abc'))], 'extension'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from('n,,n=,r=a\x01b'))], 'printable'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from('n,,n=,x'))], '"="'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from('n,,n=,r=ab\0c'))], 'NUL'],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from(first)), saslResponse(Buffer.from('c=biws,r=abcdef'))], 'proof is missing'],
      [
        'scram-sha-256',
        [saslInitialResponse('SCRAM-SHA-256', Buffer.from(first)), saslResponse(Buffer.from('c=eSws,r=x,p=' + 'A'.repeat(43) + '='))],
        'channel-binding',
      ],
      [
        'scram-sha-256',
        [saslInitialResponse('SCRAM-SHA-256', Buffer.from(first)), saslResponse(Buffer.from('c=biws,r=abcdef,p=' + 'A'.repeat(43) + '='))],
        'nonce',
      ],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from(first)), saslResponse(Buffer.from('c=biws,r=x,p=AAAA'))], '32 bytes'],
      [
        'scram-sha-256',
        [saslInitialResponse('SCRAM-SHA-256', Buffer.from(first)), saslResponse(Buffer.from('c=biws,r=x,p=' + 'A'.repeat(43) + '=,z=1'))],
        'garbage',
      ],
      ['scram-sha-256', [saslInitialResponse('SCRAM-SHA-256', Buffer.from(first)), saslResponse(Buffer.alloc(0))], 'empty'],
    ];
    for (const [method, messages, says] of cases) {
      const auth = new ClientAuth({ method, user: 'u', secret: { kind: 'plain', password: 'pw' } });
      auth.begin();
      let step: AuthStep | undefined;
      for (const m of messages) step = auth.respond(m);
      expect(step, `${method} ${messages.map((m) => JSON.stringify(m.toString('latin1'))).join(' ')}`).toMatchObject({
        done: true,
        ok: false,
        error: { code: '08P01' },
      });
      const error = (step as { error: { message: string; detail?: string } }).error;
      expect(`${error.message} ${error.detail ?? ''}`).toContain(says);
    }
    const wrongMech = new ClientAuth({ method: 'scram-sha-256', user: 'u', secret: null });
    wrongMech.begin();
    expect(wrongMech.respond(saslInitialResponse('SCRAM-SHA-256-PLUS', Buffer.from('p=tls-unique,,n=,r=abc')))).toMatchObject({
      error: { code: '08P01', message: 'client selected an invalid SASL authentication mechanism' },
    });
    const late = new ClientAuth({ method: 'trust', user: 'u', secret: null });
    expect(late.respond(passwordMessage('x'))).toMatchObject({ ok: false, error: { code: '08P01' } });
  });
});

describe('ClientAuth behind a server, real clients', () => {
  const user = 'app_user';
  const password = 'correct horse';
  const secrets: Record<string, () => Secret> = {
    plain: () => ({ kind: 'plain', password }),
    md5: () => md5SecretOf(password, user),
    scram: () => scramSecretOf(password),
  };
  // [auth_type, secret kind, requests sent for a wrong password, the failure]; null: no password passes.
  const matrix: [ClientAuthMethod, keyof typeof secrets, number[] | null, string][] = [
    ['plain', 'plain', [3], 'password authentication failed'],
    ['plain', 'md5', [3], 'password authentication failed'],
    ['plain', 'scram', [3], 'password authentication failed'],
    ['md5', 'plain', [5], 'password authentication failed'],
    ['md5', 'md5', [5], 'password authentication failed'],
    ['md5', 'scram', [10, 11], 'SASL authentication failed'],
    ['scram-sha-256', 'plain', [10, 11], 'SASL authentication failed'],
    ['scram-sha-256', 'scram', [10, 11], 'SASL authentication failed'],
    ['scram-sha-256', 'md5', null, 'SASL authentication failed'],
  ];
  // An unknown user gets the method's own exchange (as pgBouncer: md5 stays md5 without a SCRAM secret).
  const unknownUser: Record<string, [number[], string]> = {
    plain: [[3], 'password authentication failed'],
    md5: [[5], 'password authentication failed'],
    'scram-sha-256': [[10, 11], 'SASL authentication failed'],
  };
  for (const [method, kind, requests, failure] of matrix) {
    test(`node-postgres, auth_type ${method}, ${kind} secret`, async () => {
      const srv = await authServer(method, { [user]: secrets[kind]() });
      try {
        if (requests !== null) {
          expect(await pgLogin(srv.port, user, password)).toBe(`authenticated as ${user}`);
          expect(srv.attempts[0].requests[0]).toBe(requests[0]);
          expect(srv.attempts[0].result?.ok).toBe(true);
        }
        await expect(pgLogin(srv.port, user, 'wrong')).rejects.toMatchObject({ severity: 'FATAL', code: '08P01', message: failure });
        // With an md5 secret SCRAM fails at the client's first message, as in pgBouncer.
        expect(srv.attempts.at(-1)!.requests).toEqual(requests ?? [10]);
        const [unknownRequests, unknownFailure] = unknownUser[method];
        await expect(pgLogin(srv.port, 'nobody', 'wrong')).rejects.toMatchObject({ severity: 'FATAL', code: '08P01', message: unknownFailure });
        expect(srv.attempts.at(-1)).toMatchObject({ user: 'nobody', requests: unknownRequests });
      } finally {
        await srv.close();
      }
    });
  }

  test("psql (libpq) logs in by SCRAM with PGPASSWORD; a wrong one gets pgBouncer's message", async () => {
    const srv = await authServer('scram-sha-256', { [user]: scramSecretOf(password) });
    try {
      const args = ['-X', '-A', '-t', '-h', '127.0.0.1', '-p', String(srv.port), '-U', user, '-d', 'postgres', '-c', 'select who'];
      const ok = await run('psql', args, { PGPASSWORD: password, PGSSLMODE: 'prefer' });
      expect(ok.stderr).toBe('');
      expect(ok.stdout.trim()).toBe(`authenticated as ${user}`);
      expect(srv.attempts[0].requests).toEqual([10, 11]);
      const bad = await run('psql', args, { PGPASSWORD: 'wrong', PGSSLMODE: 'disable' });
      expect(bad.code).not.toBe(0);
      expect(bad.stderr).toContain('FATAL:  SASL authentication failed');
    } finally {
      await srv.close();
    }
  });
});

// ---- loginServer against real PostgreSQL ----------------------------------------------------------------

let cluster: Cluster;
let admin: pg.Client;
/** Roles of this suite's cluster beyond the standard ones: one for the cleartext method, some for SASLprep. */
const PASSWORD_ROLE = { user: 'password_user', password: 'cleartext pass' };
const SASLPREP_PASSWORDS = [
  '\u2168', // ROMAN NUMERAL NINE: NFKC makes it "IX"
  'a\u00adb\u00a0c', // soft hyphen mapped to nothing, no-break space to a space
  '\u2168\u0007', // a control character: prohibited, so the bytes are hashed as they are
  '\u05d0\u2168', // Hebrew then a left-to-right character: bad bidi, as it is
  '\u2168\u2c7c', // U+2C7C is unassigned in Unicode 3.2 (it NFKC-normalizes to "j" today): as it is
  'caf\xe9', // already normalized
];

async function waitForSsl(): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const c = new pg.Client({ connectionString: cluster.adminUrl });
    await c.connect();
    const on = (await c.query<{ ssl: string }>('show ssl')).rows[0].ssl;
    await c.end();
    if (on === 'on') return;
    if (Date.now() > deadline) throw new Error('the test cluster did not turn ssl on after reload (see its server.log)');
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  cluster = await startCluster();
  admin = new pg.Client({ connectionString: cluster.adminUrl });
  await admin.connect();
  await admin.query(`CREATE ROLE ${PASSWORD_ROLE.user} LOGIN PASSWORD '${PASSWORD_ROLE.password}'`);
  for (const [i, pw] of SASLPREP_PASSWORDS.entries()) await admin.query(`CREATE ROLE saslprep_${i} LOGIN PASSWORD ${pg.escapeLiteral(pw)}`);
  const { hba_file: hba, data_directory: data } = (
    await admin.query<{ hba_file: string; data_directory: string }>(
      `select current_setting('hba_file') as hba_file, current_setting('data_directory') as data_directory`,
    )
  ).rows[0];
  const lines = hbaLines('127.0.0.1/32');
  lines.splice(lines.length - 1, 0, `host all ${PASSWORD_ROLE.user} 127.0.0.1/32 password`);
  writeFileSync(hba, lines.join('\n') + '\n');
  // TLS too, so loginServer also reads through 'data' events (a TLS socket has no ReadBuffer).
  const key = join(data, 'server.key');
  const cert = join(data, 'server.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost'], {
    stdio: 'ignore',
  });
  chmodSync(key, 0o600);
  if (userInfo().uid === 0) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }));
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }));
    for (const f of [key, cert]) chownSync(f, uid, gid);
  }
  await admin.query(`ALTER SYSTEM SET ssl = on`);
  await admin.query('select pg_reload_conf()');
  await waitForSsl();
});

afterAll(async () => {
  await admin?.end();
  await cluster?.stop();
});

function upstream(sslmode: 'disable' | 'require' = 'disable', port = cluster.port): Promise<OpenedUpstream> {
  return openUpstream(parseUpstreamUrl(`postgres://127.0.0.1:${port}/postgres?sslmode=${sslmode}`), 5_000);
}

const startupFor = (user: string, database = 'postgres') =>
  new Map([
    ['user', user],
    ['database', database],
    ['application_name', 'auth-test'],
  ]);

/** Logs in, checks the socket is left paused with no listener of loginServer's, then runs `sql` over it. */
async function loginAndQuery(
  cred: LoginCredentials,
  sql = 'select current_user',
  sslmode: 'disable' | 'require' = 'disable',
): Promise<{ logged: LoggedIn; rows: string[] }> {
  const up = await upstream(sslmode);
  expect(up.input === undefined).toBe(sslmode === 'require');
  const listeners = () => ['data', 'error', 'close', 'end', 'readable'].map((e) => up.sock.listenerCount(e));
  const before = listeners();
  const logged = await loginServer(up, startupFor(cred.user), cred, 5_000);
  expect(up.sock.isPaused()).toBe(true);
  expect(listeners()).toEqual(before);
  const rows = await queryOver(up, sql);
  return { logged, rows };
}

/** What a ServerConnection would do next: read the socket itself and run a query. */
function queryOver(up: OpenedUpstream, sql: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const rows: string[] = [];
    let buf = Buffer.alloc(0);
    const onChunk = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
        const msg = buf.subarray(0, 1 + buf.readInt32BE(1));
        buf = buf.subarray(msg.length);
        if (msg[0] === 0x44) rows.push(String(readDataRow(msg)[0]));
        if (msg[0] === 0x45) reject(new Error(readErrorFields(msg).M));
        if (msg[0] === 0x5a) {
          up.sock.end(TERMINATE);
          resolve(rows);
        }
      }
    };
    if (up.input) up.input.onChunk = onChunk;
    else up.sock.on('data', onChunk);
    up.sock.on('error', reject);
    up.sock.resume();
    up.sock.write(query(sql));
  });
}

async function loginFails(cred: LoginCredentials, database = 'postgres', sslmode: 'disable' | 'require' = 'disable'): Promise<LoginError> {
  const up = await upstream(sslmode);
  const err = await loginServer(up, startupFor(cred.user, database), cred, 5_000).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LoginError);
  expect(up.sock.destroyed).toBe(true);
  return err as LoginError;
}

describe('loginServer against PostgreSQL', () => {
  test('each server-side method: trust, password (cleartext), md5, scram-sha-256', async () => {
    const roles = cluster.roles;
    for (const cred of [
      { user: roles.trust.user },
      { user: PASSWORD_ROLE.user, password: PASSWORD_ROLE.password },
      { user: roles.md5.user, password: roles.md5.password },
      { user: roles.scram.user, password: roles.scram.password },
    ]) {
      const { logged, rows } = await loginAndQuery(cred);
      expect(rows).toEqual([cred.user]);
      expect(logged.params.get('server_version')).toMatch(/^15\./);
      expect(logged.params.get('application_name')).toBe('auth-test');
      expect(logged.key?.pid).toBeGreaterThan(0);
      expect(logged.key?.secret.length).toBe(4);
    }
  });

  test('over TLS (a socket read through data events): SCRAM without channel binding', async () => {
    const { rows } = await loginAndQuery(
      { user: cluster.roles.scram.user, password: cluster.roles.scram.password },
      'select ssl::text from pg_stat_ssl where pid = pg_backend_pid()',
      'require',
    );
    expect(rows).toEqual(['true']);
    const err = await loginFails({ user: cluster.roles.scram.user, password: 'wrong' }, 'postgres', 'require');
    expect(err.sqlstate).toBe('28P01');
  });

  test("a wrong password: LoginError with the server's 28P01 and its fields", async () => {
    for (const user of [PASSWORD_ROLE.user, cluster.roles.md5.user, cluster.roles.scram.user]) {
      const err = await loginFails({ user, password: 'wrong' });
      expect(err.sqlstate).toBe('28P01');
      expect(err.message).toBe(`password authentication failed for user "${user}"`);
      expect(err.fields).toMatchObject({ S: 'FATAL', C: '28P01' });
    }
    const missing = await loginFails({ user: cluster.roles.trust.user }, 'no_such_database');
    expect(missing.sqlstate).toBe('3D000');
  });

  test('SCRAM with the keys alone (no password): ClientKey and ServerKey derived from the password and the verifier', async () => {
    const { user, password } = cluster.roles.scram;
    const verifier = parseVerifier((await admin.query<{ v: string }>('select rolpassword as v from pg_authid where rolname = $1', [user])).rows[0].v);
    const salted = pbkdf2Sync(password, verifier.salt, verifier.iterations, 32, 'sha256');
    const scramKeys = { clientKey: hmac(salted, 'Client Key'), serverKey: hmac(salted, 'Server Key') };
    expect(scramKeys.serverKey).toEqual(verifier.serverKey);
    expect((await loginAndQuery({ user, scramKeys })).rows).toEqual([user]);
    // Wrong keys: the server refuses the proof.
    expect((await loginFails({ user, scramKeys: { clientKey: randomBytes(32), serverKey: scramKeys.serverKey } })).sqlstate).toBe('28P01');
    // Keys cannot answer md5 or cleartext requests: pgBouncer's "wrong password type", the why in the detail.
    for (const other of [cluster.roles.md5.user, PASSWORD_ROLE.user]) {
      const err = await loginFails({ user: other, scramKeys });
      expect(err.sqlstate).toBe('08P01');
      expect(err.message).toBe('server login failed: wrong password type');
      expect(err.fields?.D).toContain('only SCRAM keys');
    }
  });

  test('an md5 secret answers md5 authentication', async () => {
    const { user, password } = cluster.roles.md5;
    const hash = (md5SecretOf(password, user) as { hash: string }).hash;
    expect((await loginAndQuery({ user, md5Hash: hash })).rows).toEqual([user]);
  });

  test('SASLprep as PostgreSQL applies it: non-ASCII passwords log in, prohibited ones as they are', async () => {
    for (const [i, password] of SASLPREP_PASSWORDS.entries()) {
      expect((await loginAndQuery({ user: `saslprep_${i}`, password })).rows, JSON.stringify(password)).toEqual([`saslprep_${i}`]);
    }
    // The forms SASLprep makes of them pass too, where it makes one.
    expect((await loginAndQuery({ user: 'saslprep_0', password: 'IX' })).rows).toEqual(['saslprep_0']);
    expect((await loginAndQuery({ user: 'saslprep_1', password: 'ab c' })).rows).toEqual(['saslprep_1']);
    expect((await loginFails({ user: 'saslprep_2', password: 'IX\u0007' })).sqlstate).toBe('28P01');
  });
});

describe('SASLprep', () => {
  const prep = (s: string) => saslprep(Buffer.from(s, 'utf8'))?.toString('utf8') ?? null;
  test("RFC 4013 examples and PostgreSQL's exceptions", () => {
    expect(prep('I\u00adX')).toBe('IX');
    expect(prep('user')).toBe('user');
    expect(prep('\u00aa')).toBe('a');
    expect(prep('\u2168')).toBe('IX');
    // PostgreSQL passes ASCII through untouched, control characters included.
    expect(prep('\u0007')).toBe('\u0007');
    expect(prep('\u00e9\u0007')).toBeNull();
    expect(prep('\u0627\u0031')).toBeNull(); // right-to-left first, but not last
    expect(prep('\u0627\u0031\u0628')).toBe('\u0627\u0031\u0628');
    expect(prep('\u00ad')).toBeNull(); // nothing left after mapping
    expect(saslprep(Buffer.from([0xc3, 0x28]))).toBeNull(); // not UTF-8
  });
});

describe('ClientAuth and the SCRAM pass-through into PostgreSQL', () => {
  test("a client authenticates against the role's own verifier; its keys then log the pooler into PostgreSQL", async () => {
    const { user, password } = cluster.roles.scram;
    const verifier = parseVerifier((await admin.query<{ v: string }>('select rolpassword as v from pg_authid where rolname = $1', [user])).rows[0].v);
    const srv = await authServer('scram-sha-256', { [user]: verifier });
    try {
      expect(await pgLogin(srv.port, user, password)).toBe(`authenticated as ${user}`);
    } finally {
      await srv.close();
    }
    const result = srv.attempts[0].result as { ok: true; scramKeys?: { clientKey: Buffer; serverKey: Buffer } };
    expect(result.scramKeys).toBeDefined();
    expect((await loginAndQuery({ user, scramKeys: result.scramKeys })).rows).toEqual([user]);
  });

  test("the plain method checks a password against PostgreSQL's own verifiers, SASLprep included", async () => {
    const cases: [string, string, boolean][] = [
      [cluster.roles.scram.user, cluster.roles.scram.password, true],
      [cluster.roles.scram.user, 'wrong', false],
      ['saslprep_0', '\u2168', true],
      ['saslprep_0', 'IX', true],
      ['saslprep_3', '\u05d0\u2168', true],
    ];
    for (const [user, password, ok] of cases) {
      const v = (await admin.query<{ v: string }>('select rolpassword as v from pg_authid where rolname = $1', [user])).rows[0].v;
      const auth = new ClientAuth({ method: 'plain', user, secret: parseVerifier(v) });
      auth.begin();
      expect(auth.respond(passwordMessage(password)), `${user} ${JSON.stringify(password)}`).toMatchObject({ done: true, ok });
    }
  });
});

// ---- loginServer against servers PostgreSQL would never be ------------------------------------------------

async function fakeServer(onStartup: (sock: Socket) => void): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
    sock.once('data', () => onStartup(sock));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

describe('loginServer against odd servers', () => {
  const cases: [string, (sock: Socket) => void, LoginCredentials, number, string, RegExp][] = [
    [
      'SCRAM-SHA-256-PLUS only',
      (s) => s.write(authenticationSASL(['SCRAM-SHA-256-PLUS'])),
      { user: 'u', password: 'p' },
      5_000,
      '0A000',
      /only SCRAM-SHA-256-PLUS/,
    ],
    ['no answer', () => {}, { user: 'u', password: 'p' }, 300, '08006', /timed out after 300 ms/],
    ['closes the connection', (s) => s.destroy(), { user: 'u', password: 'p' }, 5_000, '08006', /closed the connection/],
    [
      'AuthenticationOk in the middle of SCRAM',
      (s) => s.write(Buffer.concat([authenticationSASL(['SCRAM-SHA-256']), authentication(AUTH_OK), readyForQuery('I')])),
      { user: 'u', password: 'p' },
      5_000,
      '08P01',
      /before the SCRAM exchange completed/,
    ],
    ['ReadyForQuery without authentication', (s) => s.write(readyForQuery('I')), { user: 'u' }, 5_000, '08P01', /before authentication/],
    [
      'data after ReadyForQuery',
      (s) => s.write(Buffer.concat([authentication(AUTH_OK), readyForQuery('I'), parameterStatus('x', 'y')])),
      { user: 'u' },
      5_000,
      '08P01',
      /after ReadyForQuery/,
    ],
    ['a message length out of bounds', (s) => s.write(Buffer.from([0x52, 0x7f, 0, 0, 0])), { user: 'u' }, 5_000, '08P01', /invalid message/],
    ['a cleartext request with no password', (s) => s.write(authentication(3)), { user: 'u' }, 5_000, '08P01', /wrong password type/],
    ['GSSAPI', (s) => s.write(authentication(7)), { user: 'u', password: 'p' }, 5_000, '0A000', /code 7/],
  ];
  for (const [name, behave, cred, timeoutMs, sqlstate, message] of cases) {
    test(name, async () => {
      const srv = await fakeServer(behave);
      try {
        const up = await upstream('disable', srv.port);
        const err = await loginServer(up, startupFor(cred.user), cred, timeoutMs).then(
          () => null,
          (e: unknown) => e as LoginError,
        );
        expect(err).toBeInstanceOf(LoginError);
        expect(err!.sqlstate).toBe(sqlstate);
        expect(err!.message).toMatch(message);
        expect(up.sock.destroyed).toBe(true);
      } finally {
        await srv.close();
      }
    });
  }

  test('a server whose SCRAM signature is wrong is refused', async () => {
    // A server that knows nothing: it accepts any proof and signs with a key of its own.
    const srv = await fakeServer((sock) => {
      sock.write(authenticationSASL(['SCRAM-SHA-256']));
      sock.once('data', (init: Buffer) => {
        const first = readSASLInitialResponse(init)!;
        const nonce = first.data!.toString().split('r=')[1];
        sock.write(authenticationSASLContinue(Buffer.from(`r=${nonce}server,s=${randomBytes(16).toString('base64')},i=4096`)));
        sock.once('data', () => sock.write(authenticationSASLFinal(Buffer.from(`v=${randomBytes(32).toString('base64')}`))));
      });
    });
    try {
      const up = await upstream('disable', srv.port);
      await expect(loginServer(up, startupFor('u'), { user: 'u', password: 'p' }, 5_000)).rejects.toMatchObject({
        sqlstate: '08P01',
        message: 'server login failed: invalid server signature',
      });
    } finally {
      await srv.close();
    }
  });
});

// ---- the codec's authentication messages, as node-postgres reads and writes them ---------------------------

describe('authentication messages in the codec', () => {
  const parsed = (...messages: Buffer[]) => {
    const out: (BackendMessage & Record<string, unknown>)[] = [];
    new Parser().parse(Buffer.concat(messages), (m) => out.push(m as BackendMessage & Record<string, unknown>));
    return out;
  };

  test('backend writers read by pg-protocol and by the codec', () => {
    const salt = Buffer.from([1, 2, 3, 4]);
    const [md5, sasl, cont, fin] = parsed(
      authenticationMD5Password(salt),
      authenticationSASL(['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS']),
      authenticationSASLContinue(Buffer.from('r=abc,s=c2FsdA==,i=4096')),
      authenticationSASLFinal(Buffer.from('v=c2ln')),
    );
    expect(md5).toMatchObject({ name: 'authenticationMD5Password', salt });
    expect(sasl).toMatchObject({ name: 'authenticationSASL', mechanisms: ['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS'] });
    expect(cont).toMatchObject({ name: 'authenticationSASLContinue', data: 'r=abc,s=c2FsdA==,i=4096' });
    expect(fin).toMatchObject({ name: 'authenticationSASLFinal', data: 'v=c2ln' });
    expect(readAuthentication(authenticationMD5Password(salt))).toEqual({ kind: 'md5', salt });
    expect(readAuthentication(authenticationSASLFinal(Buffer.from('v=x')))).toEqual({ kind: 'sasl-final', data: Buffer.from('v=x') });
    expect(readAuthentication(authentication(AUTH_OK))).toEqual({ kind: 'ok' });
    expect(readAuthentication(authentication(9))).toEqual({ kind: 'other', code: 9 });
    // Malformed: a truncated mechanism list, a short salt, a length that does not match.
    expect(readAuthentication(authentication(10, Buffer.from('SCRAM-SHA-256\0')))).toBeNull();
    expect(readAuthentication(authentication(5, Buffer.from([1, 2, 3])))).toBeNull();
    expect(readAuthentication(Buffer.concat([authentication(AUTH_OK), Buffer.from([0])]))).toBeNull();
  });

  test("frontend writers match pg-protocol's, and the codec reads them back", () => {
    expect(passwordMessage('secret')).toEqual(serialize.password('secret'));
    expect(saslInitialResponse('SCRAM-SHA-256', Buffer.from('n,,n=*,r=abc'))).toEqual(
      serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', 'n,,n=*,r=abc'),
    );
    expect(saslResponse(Buffer.from('c=biws,r=abc,p=xyz'))).toEqual(serialize.sendSCRAMClientFinalMessage('c=biws,r=abc,p=xyz'));
    const params = { user: 'u', database: 'd', application_name: 'a' };
    // pg-protocol adds client_encoding itself.
    expect(startupMessage(new Map(Object.entries({ ...params, client_encoding: 'UTF8' })))).toEqual(serialize.startup(params));
    expect(readStartupPacket(startupMessage(new Map(Object.entries(params))))!.params).toEqual(new Map(Object.entries(params)));
    expect(readPasswordMessage(passwordMessage('secret'))).toEqual(Buffer.from('secret'));
    expect(readSASLInitialResponse(saslInitialResponse('SCRAM-SHA-256', Buffer.from('abc')))).toEqual({
      mechanism: 'SCRAM-SHA-256',
      data: Buffer.from('abc'),
    });
    expect(readSASLInitialResponse(saslInitialResponse('X', null))).toEqual({ mechanism: 'X', data: null });
    expect(readSASLResponse(saslResponse(Buffer.from('abc')))).toEqual(Buffer.from('abc'));
  });
});
