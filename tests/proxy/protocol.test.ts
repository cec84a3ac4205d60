// The codec's writers of backend messages, read back by node-postgres' own parser (pg-protocol) where it
// knows the message and by the codec's readers: one writer per message type, used by the proxy's session,
// the daemon endpoint, the stream path and the tests.
import { describe, expect, test } from 'vitest';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import {
  AUTH_CLEARTEXT_PASSWORD, AUTH_OK, AUTH_SASL, Be, EMPTY_QUERY_RESPONSE, PROTOCOL_3_0, authentication, backendKeyData, cancelRequest,
  commandComplete, dataRow, errorResponse, forEachMessage, negotiateProtocolVersion, parameterStatus, readBackendKeyData,
  readCancelRequest, readCString, readDataRow, readErrorFields, readParameterStatus, readTxStatus, readyForQuery, rowDescription,
} from '../../proxy/protocol.js';

/** What pg-protocol makes of a stream of backend messages. */
function parsed(...messages: Buffer[]): (BackendMessage & Record<string, unknown>)[] {
  const out: (BackendMessage & Record<string, unknown>)[] = [];
  new Parser().parse(Buffer.concat(messages), (m) => out.push(m as BackendMessage & Record<string, unknown>));
  return out;
}

describe('backend message writers', () => {
  test('authentication requests', () => {
    expect(authentication(AUTH_OK)).toEqual(Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0]));
    expect(parsed(authentication(AUTH_CLEARTEXT_PASSWORD), authentication(AUTH_OK)).map((m) => m.name))
      .toEqual(['authenticationCleartextPassword', 'authenticationOk']);
    const [sasl] = parsed(authentication(AUTH_SASL, Buffer.from('SCRAM-SHA-256\0\0')));
    expect(sasl).toMatchObject({ name: 'authenticationSASL', mechanisms: ['SCRAM-SHA-256'] });
  });

  test('ParameterStatus, BackendKeyData, ReadyForQuery', () => {
    const ps = parameterStatus('server_version', '15.0 (pg-steadytext daemon)');
    expect(readParameterStatus(ps)).toEqual(['server_version', '15.0 (pg-steadytext daemon)']);
    expect(readParameterStatus(parameterStatus('application_name', ''))).toEqual(['application_name', '']);
    const key = backendKeyData(1234, Buffer.from([0, 0, 0, 42]));
    expect(readBackendKeyData(key)).toEqual({ pid: 1234, secret: Buffer.from([0, 0, 0, 42]) });
    const [p, k, z, t] = parsed(ps, key, readyForQuery('I'), readyForQuery('E'));
    expect(p).toMatchObject({ name: 'parameterStatus', parameterName: 'server_version', parameterValue: '15.0 (pg-steadytext daemon)' });
    expect(k).toMatchObject({ name: 'backendKeyData', processID: 1234, secretKey: 42 });
    expect([z.status, t.status]).toEqual(['I', 'E']);
    expect(readTxStatus(readyForQuery('T'))).toBe('T');
  });

  test('a result: RowDescription, DataRow, CommandComplete; and EmptyQueryResponse', () => {
    const msgs = [
      rowDescription([{ name: 'answer', typeOid: 25 }, { name: Buffer.from('né', 'latin1'), typeOid: 23, typeSize: 4, tableOid: 16384, columnNumber: 2, format: 1 }]),
      dataRow([Buffer.from('héllo 😀'), null]),
      commandComplete('SELECT 1'),
      EMPTY_QUERY_RESPONSE,
    ];
    const [t, d, c, i] = parsed(...msgs);
    expect(t.fields).toEqual([
      expect.objectContaining({ name: 'answer', tableID: 0, columnID: 0, dataTypeID: 25, dataTypeSize: -1, dataTypeModifier: -1, format: 'text' }),
      expect.objectContaining({ tableID: 16384, columnID: 2, dataTypeID: 23, dataTypeSize: 4, dataTypeModifier: -1, format: 'binary' }),
    ]);
    expect(msgs[0].subarray(7, 14).toString('latin1')).toBe('answer\0');
    expect(d.fields).toEqual(['héllo 😀', null]);
    expect(c).toMatchObject({ name: 'commandComplete', text: 'SELECT 1' });
    expect(i.name).toBe('emptyQuery');
    expect(forEachMessage(Buffer.concat(msgs), () => {})).toBe(true);
  });

  test('ErrorResponse: fields in order, empty ones left out, text in the client encoding', () => {
    const e = errorResponse({ severity: 'FATAL', code: '28P01', message: 'password authentication failed for user "é"', hint: '' });
    expect(readErrorFields(e)).toEqual({ S: 'FATAL', V: 'FATAL', C: '28P01', M: 'password authentication failed for user "é"' });
    expect(parsed(e)[0]).toMatchObject({ name: 'error', severity: 'FATAL', code: '28P01' });
    const latin1 = errorResponse({ severity: 'ERROR', code: '22023', message: 'é', detail: 'd', hint: 'h' }, Be.ErrorResponse, 'latin1');
    expect(latin1.includes(Buffer.from([0x4d, 0xe9, 0]))).toBe(true); // M, é in LATIN1, NUL
    expect(readErrorFields(latin1)).toMatchObject({ D: 'd', H: 'h' });
    expect(errorResponse({ severity: 'NOTICE', code: '00000', message: 'n' }, Be.NoticeResponse)[0]).toBe(Be.NoticeResponse);
  });

  test('NegotiateProtocolVersion: newest version, then the options not recognised', () => {
    const v = negotiateProtocolVersion(PROTOCOL_3_0, ['_pq_.a', '_pq_.b']);
    expect(v[0]).toBe(Be.NegotiateProtocolVersion);
    expect(v.readInt32BE(1)).toBe(v.length - 1);
    expect([v.readInt32BE(5), v.readInt32BE(9)]).toEqual([PROTOCOL_3_0, 2]);
    const [a, next] = readCString(v, 13);
    expect([a, readCString(v, next)]).toEqual(['_pq_.a', ['_pq_.b', v.length]]);
    expect(negotiateProtocolVersion(PROTOCOL_3_0, []).length).toBe(13);
  });
});

describe('CancelRequest', () => {
  test('reads back what cancelRequest writes; refuses what is too short or too long', () => {
    expect(readCancelRequest(cancelRequest(77, Buffer.from([1, 2, 3, 4])))).toEqual({ pid: 77, secret: Buffer.from([1, 2, 3, 4]) });
    expect(readCancelRequest(cancelRequest(77, Buffer.alloc(0)))).toBeNull();
    expect(readCancelRequest(cancelRequest(77, Buffer.alloc(257)))).toBeNull();
  });
});

describe('DataRow reader', () => {
  test('reads back what dataRow writes: bytes as sent, NULL as null, empty as empty', () => {
    const cols = [Buffer.from('é ok'), null, Buffer.alloc(0), Buffer.from([0, 255])];
    expect(readDataRow(dataRow(cols))).toEqual(cols);
    expect(readDataRow(dataRow([]))).toEqual([]);
  });
});
