// The SQL a daemon session accepts besides requests: libpq and dblink send a few session commands of
// their own (SET client_encoding, RESET ALL, a SELECT 1 from poolers, transaction verbs), answered as a
// server would. Anything else is refused: the endpoint is no database.
import { WireError } from '../errors.js';

/** A client encoding the daemon speaks: its canonical name and how Node encodes it. */
export interface ClientEncoding { name: 'UTF8' | 'SQL_ASCII' | 'LATIN1'; encoding: BufferEncoding }

const ENCODINGS: Record<string, BufferEncoding> = { UTF8: 'utf8', SQL_ASCII: 'utf8', LATIN1: 'latin1' };

/** UTF8, SQL_ASCII or LATIN1 however PostgreSQL lets them be spelled ('utf-8', 'Unicode', 'sql_ascii', 'ISO-8859-1'); undefined otherwise. */
export function clientEncoding(spelled: string): ClientEncoding | undefined {
  const n = spelled.toUpperCase().replace(/[-_]/g, '');
  const name = n === 'UNICODE' ? 'UTF8' : n === 'SQLASCII' ? 'SQL_ASCII' : n === 'ISO88591' ? 'LATIN1' : n;
  return Object.hasOwn(ENCODINGS, name) ? { name: name as ClientEncoding['name'], encoding: ENCODINGS[name] } : undefined;
}

export type SessionCommand =
  /** SET client_encoding: CommandComplete SET, then ParameterStatus client_encoding. */
  | { kind: 'encoding'; to: ClientEncoding }
  /** Anything else accepted: a CommandComplete with this tag. */
  | { kind: 'complete'; tag: string }
  /** SELECT 1: one row. */
  | { kind: 'select1' };

/** What a session command asks for; a WireError (0A000) for anything the daemon does not answer. */
export function sessionCommand(text: string): SessionCommand {
  const sql = text.replace(/;\s*$/, '').trim();
  const enc = /^set\s+(?:session\s+)?client_encoding\s*(?:to|=)\s*'?([\w-]+)'?$/i.exec(sql);
  if (enc) {
    const to = clientEncoding(enc[1]);
    if (!to) throw new WireError('0A000', `the pg-steadytext daemon supports client encodings UTF8, SQL_ASCII and LATIN1, not ${enc[1]}`);
    return { kind: 'encoding', to };
  }
  if (/^(set|reset)\b/i.test(sql)) return { kind: 'complete', tag: /^set/i.test(sql) ? 'SET' : 'RESET' };
  if (/^select\s+1$/i.test(sql)) return { kind: 'select1' };
  if (/^(begin|start\s+transaction|commit|end|rollback|abort)\b/i.test(sql)) {
    // dblink never opens transactions here; answer harmlessly for generic clients and poolers.
    const verb = sql.split(/\s+/)[0].toUpperCase();
    return { kind: 'complete', tag: verb === 'START' ? 'START TRANSACTION' : verb === 'END' ? 'COMMIT' : verb === 'ABORT' ? 'ROLLBACK' : verb };
  }
  throw new WireError('0A000', 'the pg-steadytext daemon endpoint answers steadytext requests only, not SQL',
    'It is reached by the steadytext_* functions through dblink; connect to the proxy or the database for SQL.');
}
