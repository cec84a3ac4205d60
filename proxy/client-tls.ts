// Encryption with the client, during startup: the answer to SSLRequest and GSSENCRequest, and the upgrade
// of the accepted socket to TLS. SSLRequest is answered 'S' when the proxy has a certificate (and the
// socket is not TLS already), else 'N'; GSSENCRequest always 'N' (no GSSAPI here). Either way the client
// may go on with a StartupMessage, in the clear or over TLS. Nothing may follow the request before the
// answer: those bytes would have crossed the wire unencrypted (CVE-2021-23214).
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import { ACCEPT_ENCRYPTION, GSSENC_REQUEST_CODE, REFUSE_ENCRYPTION, SSL_REQUEST_CODE } from './protocol.js';
import type { ReadBuffer } from './read-buffer.js';

/** The request code (second int32) of an SSLRequest or GSSENCRequest packet. */
export function isEncryptionRequest(code: number): boolean {
  return code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE;
}

/**
 * What to do with an encryption request: 'tls' (accept it: acceptTls), 'refused' ('N' was written to
 * `sock`, the startup goes on as it was), or the protocol violation that ends the session.
 */
export type EncryptionAnswer = 'tls' | 'refused' | { violation: string };

/**
 * Answers an SSLRequest or GSSENCRequest packet of `length` bytes that `bytesAfter` more bytes followed in
 * the same read. `tlsOffered`: the proxy has a certificate and the client socket is not TLS yet.
 */
export function answerEncryptionRequest(sock: Socket, code: number, length: number, bytesAfter: number, tlsOffered: boolean): EncryptionAnswer {
  if (length !== 8) return { violation: 'invalid length of SSL or GSS encryption request' };
  if (bytesAfter > 0) return { violation: 'received unencrypted data after SSL or GSS encryption request' };
  if (code === SSL_REQUEST_CODE && tlsOffered) return 'tls';
  sock.write(REFUSE_ENCRYPTION);
  return 'refused';
}

/**
 * Accepts TLS on the accepted socket: answers 'S' and returns the TLS socket the session reads and writes
 * from now on. The raw socket's bytes are the handshake and TLS records from here, so the session's
 * reading and ending listeners leave it (a 'data' listener, or `input`, the read buffer it reads through).
 * Errors of the raw socket surface on the TLS socket (a failed handshake closes the session); its closing
 * still calls `onClose`.
 */
export function acceptTls(raw: Socket, input: ReadBuffer | undefined, secureContext: SecureContext, onClose: () => void): TLSSocket {
  raw.write(ACCEPT_ENCRYPTION);
  raw.removeAllListeners('data');
  if (input) input.onChunk = () => {};
  raw.removeAllListeners('end');
  const tls = new TLSSocket(raw, { isServer: true, secureContext });
  // Replaced once the TLSSocket is made, so the listeners it puts on the raw socket go too.
  raw.removeAllListeners('error');
  raw.on('error', () => {});
  raw.removeAllListeners('close');
  raw.on('close', onClose);
  return tls;
}
