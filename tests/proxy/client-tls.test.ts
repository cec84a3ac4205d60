// Encryption with the client alone (proxy/client-tls.ts): the answer to SSLRequest and GSSENCRequest, and
// the upgrade of an accepted socket to TLS over a real loopback connection.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { acceptTls, answerEncryptionRequest, isEncryptionRequest } from '../../proxy/client-tls.js';
import { CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE } from '../../proxy/protocol.js';

/** A socket that records what is written to it. */
function recordingSocket() {
  const written: Buffer[] = [];
  return { written, sock: { write: (b: Buffer) => written.push(Buffer.from(b)) } as unknown as Socket };
}

describe('answerEncryptionRequest', () => {
  test('SSLRequest and GSSENCRequest are encryption requests; CancelRequest is not', () => {
    expect(isEncryptionRequest(SSL_REQUEST_CODE)).toBe(true);
    expect(isEncryptionRequest(GSSENC_REQUEST_CODE)).toBe(true);
    expect(isEncryptionRequest(CANCEL_REQUEST_CODE)).toBe(false);
  });

  test('SSLRequest with a certificate: TLS, nothing written yet', () => {
    const r = recordingSocket();
    expect(answerEncryptionRequest(r.sock, SSL_REQUEST_CODE, 8, 0, true)).toBe('tls');
    expect(r.written).toEqual([]);
  });

  test("SSLRequest without one, and every GSSENCRequest: 'N'", () => {
    for (const [code, offered] of [[SSL_REQUEST_CODE, false], [GSSENC_REQUEST_CODE, true], [GSSENC_REQUEST_CODE, false]] as const) {
      const r = recordingSocket();
      expect(answerEncryptionRequest(r.sock, code, 8, 0, offered)).toBe('refused');
      expect(r.written.map((b) => b.toString())).toEqual(['N']);
    }
  });

  test('a wrong length, or bytes sent behind the request before the answer: a protocol violation, no answer', () => {
    const r = recordingSocket();
    expect(answerEncryptionRequest(r.sock, SSL_REQUEST_CODE, 12, 0, true)).toEqual({ violation: 'invalid length of SSL or GSS encryption request' });
    expect(answerEncryptionRequest(r.sock, GSSENC_REQUEST_CODE, 8, 1, true)).toEqual({
      violation: 'received unencrypted data after SSL or GSS encryption request',
    });
    expect(r.written).toEqual([]);
  });
});

describe('acceptTls', () => {
  let dir: string;
  let secureContext: SecureContext;
  let server: Server;
  /** Each accepted connection, upgraded as a session would upgrade it. */
  const upgraded: { raw: Socket; tls: TLSSocket; closes: number; plainData: Buffer[] }[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'client-tls-'));
    const keyPath = join(dir, 'k.pem');
    const certPath = join(dir, 'c.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=localhost'], { stdio: 'ignore' });
    secureContext = createSecureContext({ cert: readFileSync(certPath), key: readFileSync(keyPath) });
    server = createServer((raw) => {
      const entry = { raw, tls: undefined as unknown as TLSSocket, closes: 0, plainData: [] as Buffer[] };
      // The session's listeners on the raw socket before the upgrade.
      raw.on('data', (d: Buffer) => entry.plainData.push(d));
      raw.once('data', () => {
        entry.tls = acceptTls(raw, undefined, secureContext, () => entry.closes++);
        entry.tls.on('data', (d: Buffer) => entry.tls.write(`echo:${d.toString()}`));
        upgraded.push(entry);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  test("answers 'S', then the session talks TLS; the raw socket's closing still reaches the session", async () => {
    const port = (server.address() as { port: number }).port;
    const plain = connect({ host: '127.0.0.1', port });
    await new Promise((r) => plain.once('connect', r));
    plain.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])); // SSLRequest
    const answer = await new Promise<Buffer>((r) => plain.once('data', r));
    expect(answer.toString()).toBe('S');
    const tls = tlsConnect({ socket: plain, rejectUnauthorized: false });
    await new Promise((r) => tls.once('secureConnect', r));
    tls.write('hello');
    const echoed = await new Promise<Buffer>((r) => tls.once('data', r));
    expect(echoed.toString()).toBe('echo:hello');
    const [entry] = upgraded;
    // The session's own reading of the raw socket stopped at the request: the handshake never reached it.
    expect(entry.plainData).toHaveLength(1);
    expect(entry.raw.listenerCount('data')).toBe(0);
    expect(entry.raw.listenerCount('end')).toBe(0);
    tls.destroy();
    await expect.poll(() => entry.closes).toBe(1);
  });
});
