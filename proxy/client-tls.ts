// Encryption with the client, during startup: the answer to SSLRequest and GSSENCRequest, and the upgrade
// of the accepted socket to TLS. SSLRequest is answered 'S' when the proxy has a certificate (and the
// socket is neither TLS already nor a Unix socket), else 'N'; GSSENCRequest always 'N' (no GSSAPI here).
// Either way the client may go on with a StartupMessage, in the clear or over TLS. Nothing may follow the
// request before the answer: those bytes would have crossed the wire unencrypted (CVE-2021-23214).
// Also pgBouncer's client_tls_* settings (clientTlsFrom: the context, and how it treats client
// certificates), the libtls protocol and cipher syntax both sides use, and what cert authentication needs:
// the names of a client's verified certificate, and auth_ident_file's maps.
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { TLSSocket, createSecureContext, type SecureContext } from 'node:tls';
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
  // As PostgreSQL and pgBouncer: no TLS over a Unix socket (a socket without a remote address).
  const unix = sock instanceof Socket && sock.remoteAddress === undefined && sock.remotePort === undefined;
  if (code === SSL_REQUEST_CODE && tlsOffered && !unix) return 'tls';
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
  const policy = certPolicies.get(secureContext);
  const tls = new TLSSocket(raw, { isServer: true, secureContext, requestCert: policy?.request ?? false, rejectUnauthorized: policy?.required ?? false });
  if (policy?.request) {
    // OpenSSL only notes a chain that does not verify; Node's tls.Server acts on it, a TLSSocket of our own
    // does not: so here. A certificate sent must verify even when none was required (libtls's verify_client_optional).
    tls.once('secure', () => {
      const sent = Object.keys(tls.getPeerCertificate() ?? {}).length > 0;
      const error = sent ? chainError(tls) : policy.required ? 'no certificate' : null;
      if (error !== null) tls.destroy(new Error(`client certificate not accepted: ${error}`));
      else if (sent) verifiedClients.add(tls);
    });
  }
  // Replaced once the TLSSocket is made, so the listeners it puts on the raw socket go too.
  raw.removeAllListeners('error');
  raw.on('error', () => {});
  raw.removeAllListeners('close');
  raw.on('close', () => onClose());
  return tls;
}

// ---- pgBouncer's client_tls_* settings -----------------------------------------------------------------

export type ClientSslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';
const CLIENT_SSL_MODES: readonly ClientSslMode[] = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'];

/** The [pgbouncer] settings the client side's TLS is made from. */
export interface ClientTlsSettings {
  clientTlsSslmode: string;
  clientTlsKeyFile: string;
  clientTlsCertFile: string;
  clientTlsCaFile: string;
  clientTlsProtocols: string;
  clientTlsCiphers: string;
  clientTlsDheparams: string;
  clientTlsEcdhcurve: string;
  authType: string;
}

/** What clients get now: the sslmode, and the context their handshakes use (none under disable: 'N'). */
export interface ClientTls {
  sslmode: ClientSslMode;
  context: SecureContext | undefined;
}

/** How a context's handshakes treat the client's certificate (acceptTls reads it by the context). */
interface CertPolicy {
  /** Ask the client for a certificate. */
  request: boolean;
  /** verify-ca / verify-full: a client without a verified certificate fails the handshake. */
  required: boolean;
}
const certPolicies = new WeakMap<SecureContext, CertPolicy>();

/**
 * pgBouncer's sbuf_tls_setup for the client side: the context from the settings, or an Error with pgBouncer's
 * reason (the caller keeps the old context then). The files are read now, as pgBouncer reads them at setup.
 */
export function clientTlsFrom(st: ClientTlsSettings): ClientTls {
  const sslmode = st.clientTlsSslmode as ClientSslMode;
  if (!CLIENT_SSL_MODES.includes(sslmode)) throw new Error(`invalid client_tls_sslmode: ${st.clientTlsSslmode}`);
  if (sslmode !== 'disable' && (!st.clientTlsKeyFile || !st.clientTlsCertFile)) {
    throw new Error('To allow TLS connections from clients, client_tls_key_file and client_tls_cert_file must be set.');
  }
  if (st.authType === 'cert') {
    if (sslmode !== 'verify-full') throw new Error('auth_type=cert requires client_tls_sslmode=SSLMODE_VERIFY_FULL');
    if (!st.clientTlsCaFile) throw new Error('auth_type=cert requires client_tls_ca_file');
  } else if (sslmode === 'verify-full' && !st.clientTlsCaFile) {
    throw new Error('client_tls_sslmode requires client_tls_ca_file');
  }
  if (sslmode === 'disable') return { sslmode, context: undefined };
  const read = (key: string, file: string) => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new Error(`invalid ${key}: ${file} (${(err as Error).message})`, { cause: err });
    }
  };
  const context = createSecureContext({
    key: read('client_tls_key_file', st.clientTlsKeyFile),
    cert: read('client_tls_cert_file', st.clientTlsCertFile),
    ca: st.clientTlsCaFile ? read('client_tls_ca_file', st.clientTlsCaFile) : undefined,
    ...tlsVersions('client_tls_protocols', st.clientTlsProtocols),
    ciphers: tlsCiphers('client_tls_ciphers', st.clientTlsCiphers),
    ...keyExchange(st.clientTlsDheparams, st.clientTlsEcdhcurve),
  });
  const required = sslmode === 'verify-ca' || sslmode === 'verify-full';
  // Below verify-ca pgBouncer asks for a certificate without requiring one; one that is sent must verify. There
  // is nothing to verify it against without a CA file, so none is asked for then.
  certPolicies.set(context, { request: required || !!st.clientTlsCaFile, required });
  return { sslmode, context };
}

/**
 * client_tls_dheparams and client_tls_ecdhcurve as Node takes them: DHE with OpenSSL's well-known groups unless
 * `none` (`legacy`'s 1024-bit group is below what OpenSSL 3 accepts: the well-known ones serve it too); the curves
 * OpenSSL picks for `auto` (and for `none`: TLS 1.3 has no key exchange without one), else the curve named.
 */
function keyExchange(dheparams: string, ecdhcurve: string): { dhparam?: string; ecdhCurve: string } {
  const curve = ecdhcurve.trim().toLowerCase();
  return {
    ...(dheparams.trim().toLowerCase() === 'none' ? {} : { dhparam: 'auto' }),
    ecdhCurve: curve === '' || curve === 'auto' || curve === 'none' ? 'auto' : ecdhcurve.trim(),
  };
}

const PROTOCOLS = ['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3'] as const;
type Protocol = (typeof PROTOCOLS)[number];

/**
 * libtls's protocol list (tls_config_parse_protocols: names separated by , or :, "!" takes one away; all, secure
 * or default, tlsv1 (1.0 and 1.1), tlsv1.0 ... tlsv1.3) as Node's version range. Node takes a range only: a list
 * with a hole in it (tlsv1.0,tlsv1.2) is approximated by the range from its lowest to its highest version.
 * Throws on a name libtls does not know. Empty: Node's defaults.
 */
export function tlsVersions(key: string, text: string): { minVersion?: Protocol; maxVersion?: Protocol } {
  if (!text.trim()) return {};
  let set = 0;
  const ALL = 0b1111;
  for (let word of text.split(/[,:]/)) {
    word = word.replace(/^[ \t]+/, '');
    const negate = word.startsWith('!');
    if (negate) word = word.slice(1);
    if (negate && set === 0) set = ALL;
    const bits = ({ all: ALL, default: 0b1100, secure: 0b1100, tlsv1: 0b0011, 'tlsv1.0': 0b0001, 'tlsv1.1': 0b0010, 'tlsv1.2': 0b0100, 'tlsv1.3': 0b1000 } as Record<string, number>)[word.toLowerCase()];
    if (!bits) throw new Error(`invalid ${key}: ${text}`);
    set = negate ? set & ~bits : set | bits;
  }
  const on = PROTOCOLS.filter((_, i) => set & (1 << i));
  if (on.length === 0) throw new Error(`invalid ${key}: ${text}`);
  return { minVersion: on[0], maxVersion: on[on.length - 1] };
}

/**
 * libtls's cipher setting: default, secure, normal and fast keep OpenSSL's defaults (Node's here); anything else is
 * an OpenSSL cipher list, which Node checks when it makes the context (an unknown one fails the setup there).
 */
export function tlsCiphers(_key: string, text: string): string | undefined {
  return ['', 'default', 'secure', 'normal', 'fast'].includes(text.toLowerCase()) ? undefined : text;
}

/** Client sockets whose certificate verified against client_tls_ca_file. */
const verifiedClients = new WeakSet<TLSSocket>();

/**
 * Why the peer's chain did not verify, or null. What tls.Server reads (the handle's verifyError); where that
 * is not there, no certificate is taken as verified.
 */
function chainError(tls: TLSSocket): string | null {
  const handle = (tls as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null | undefined } })._handle;
  if (typeof handle?.verifyError !== 'function') return 'cannot check the certificate chain';
  const err = handle.verifyError();
  return err ? (err.code ?? err.message) : null;
}

/**
 * The names in the verified certificate of a TLS client (its subject's CN and its DNS subjectAltNames, as
 * libtls's tls_peer_cert_contains_name looks at them); null when it sent none, or it did not verify.
 */
export function peerCertNames(sock: TLSSocket): string[] | null {
  if (!verifiedClients.has(sock)) return null;
  const cert = sock.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return null;
  const cn = cert.subject?.CN;
  const names = cn === undefined ? [] : Array.isArray(cn) ? [...cn] : [cn];
  for (const alt of (cert.subjectaltname ?? '').split(', ')) if (alt.startsWith('DNS:')) names.push(alt.slice(4));
  return names;
}

/** One line of auth_ident_file: a certificate name, and the user it may log in as (null: "all", any user). */
export interface IdentMapping {
  systemName: string;
  user: string | null;
}

/**
 * auth_ident_file (pg_ident.conf) as pgBouncer reads it: MAPNAME SYSTEM-USERNAME PG-USERNAME per line, # starts
 * a comment, "..." quotes a name, an unquoted all is any user. A bad line throws.
 */
export function parseIdentFile(text: string): Map<string, IdentMapping[]> {
  const maps = new Map<string, IdentMapping[]>();
  text.split('\n').forEach((line, i) => {
    const toks: { quoted: boolean; text: string }[] = [];
    for (const m of line.matchAll(/"((?:[^"]|"")*)"|(#.*)|([^\s"#]+)/g)) {
      if (m[2] !== undefined) break;
      toks.push(m[1] !== undefined ? { quoted: true, text: m[1].replaceAll('""', '"') } : { quoted: false, text: m[3] });
    }
    if (toks.length === 0) return;
    if (toks.length !== 3 || toks[0].quoted) throw new Error(`ident line ${i + 1}: expected MAPNAME SYSTEM-USERNAME PG-USERNAME`);
    const [map, system, user] = toks;
    const list = maps.get(map.text) ?? [];
    list.push({ systemName: system.text, user: !user.quoted && user.text === 'all' ? null : user.text });
    maps.set(map.text, list);
  });
  return maps;
}

/**
 * pgBouncer's login_via_cert: may the client whose verified certificate bears `names` (null: no TLS certificate)
 * log in as `user`? Without a map the certificate must name the user; with one, a line of the map must take one
 * of its names to the user. Names compare as libtls compares host names, case aside. `why` hears the refusal.
 */
export function certAllows(names: string[] | null, user: string, map: string | undefined, identMaps: Map<string, IdentMapping[]>, why: (reason: string) => void): boolean {
  if (names === null) {
    why('TLS client certificate required');
    return false;
  }
  const named = (n: string) => names.some((x) => x.toLowerCase() === n.toLowerCase());
  if (map === undefined) {
    if (named(user)) return true;
    why('TLS certificate name mismatch');
    return false;
  }
  if ((identMaps.get(map) ?? []).some((m) => named(m.systemName) && (m.user === null || m.user === user))) return true;
  why(`ident map: ${map} does not have a match`);
  return false;
}
