// Which extended-protocol exchanges may run again (proxy/rerun-exchange.ts): the end-to-end behaviour is in
// tests/sql/inband.test.ts; here the shapes a driver may send, each accepted or refused.
import { describe, expect, test } from 'vitest';
import { bind, describe as describeMsg, execute, parse } from '../../proxy/protocol.js';
import { rerunnableExchange } from '../../proxy/rerun-exchange.js';

const SYNC = Buffer.from([0x53, 0, 0, 0, 4]);
const FLUSH = Buffer.from([0x48, 0, 0, 0, 4]);
const P = parse('', 'UPDATE t SET v = f(b) WHERE id <= $1', [23]);
const B = (statement = '') => bind({ portal: '', statement, paramFormats: [], params: [Buffer.from('24')], resultFormats: [] });
const E = execute();

describe('rerunnableExchange', () => {
  test('Parse, Bind, Describe portal, Execute, Sync (node-postgres): three answers before the rows, run again from the Execute', () => {
    const bytes = Buffer.concat([P, B(), describeMsg('P', ''), E, SYNC]);
    expect(rerunnableExchange(bytes)).toEqual({ answered: 3, execute: P.length + B().length + describeMsg('P', '').length });
  });

  test('a Describe of the statement counts its two answers; no Describe counts none', () => {
    expect(rerunnableExchange(Buffer.concat([P, describeMsg('S', ''), B(), E, SYNC]))?.answered).toBe(4);
    expect(rerunnableExchange(Buffer.concat([P, B(), E, SYNC]))?.answered).toBe(2);
  });

  test.each([
    ['a named statement (the first attempt created it)', () => Buffer.concat([parse('s1', 'SELECT 1'), B('s1'), E, SYNC])],
    ['a Bind of a named statement after the Parse', () => Buffer.concat([P, B('s1'), E, SYNC])],
    ['no Sync yet', () => Buffer.concat([P, B(), E])],
    ['two Executes', () => Buffer.concat([P, B(), E, E, SYNC])],
    ['two Binds', () => Buffer.concat([P, B(), B(), E, SYNC])],
    ['a Flush inside', () => Buffer.concat([P, B(), FLUSH, E, SYNC])],
    ['anything after the Sync', () => Buffer.concat([P, B(), E, SYNC, SYNC])],
    ['a Query', () => Buffer.concat([Buffer.from('Q'), Buffer.from([0, 0, 0, 13]), Buffer.from('SELECT 1\0')])],
    ['a truncated message', () => Buffer.concat([P, B(), E, SYNC]).subarray(0, P.length + 3)],
  ])('refused: %s', (_, bytes) => {
    expect(rerunnableExchange(bytes())).toBeNull();
  });
});
