// RequestTracker: which backend message answers which frontend message, through errors, COPY and
// asynchronous messages. Codes are written as characters for readability.
import { describe, expect, test } from 'vitest';
import type { ResponseHandler } from '../../proxy/interceptor.js';
import { RequestTracker } from '../../proxy/tracker.js';

const c = (s: string) => s.charCodeAt(0);

function recorder(name: string, log: string[]): ResponseHandler {
  return {
    onMessage(m) {
      log.push(`${name}<${String.fromCharCode(m[0])}`);
      return m;
    },
    onEnd(req, how) {
      log.push(`${name}:${String.fromCharCode(req)}:${how}`);
    },
  };
}

/** Feeds backend messages; a handler that claims one is shown it (as a 1-byte message). */
function receive(t: RequestTracker, codes: string): void {
  for (const ch of codes) {
    const h = t.received(c(ch));
    if (h) {
      h.onMessage(Buffer.from([c(ch)]), t.request);
      t.finish();
    }
  }
}

describe('RequestTracker', () => {
  test('extended batch: each handler sees exactly its answers', () => {
    const log: string[] = [];
    const t = new RequestTracker();
    t.sent(c('P'), recorder('p', log));
    t.sent(c('B'));
    t.sent(c('D'), recorder('d', log));
    t.sent(c('E'), recorder('e', log));
    t.sent(c('S'));
    expect(t.size).toBe(5);
    receive(t, '12tTDDCZ');
    expect(log).toEqual(['p<1', 'p:P:done', 'd<t', 'd<T', 'd:D:done', 'e<D', 'e<D', 'e<C', 'e:E:done']);
    expect(t.size).toBe(0);
  });

  test('an error skips to Sync: later requests of the batch are "skipped"', () => {
    const log: string[] = [];
    const t = new RequestTracker();
    t.sent(c('P'), recorder('p', log));
    t.sent(c('B'), recorder('b', log));
    t.sent(c('E'), recorder('e', log));
    t.sent(c('S'), recorder('s', log));
    t.sent(c('B'), recorder('b2', log));
    t.sent(c('E'));
    t.sent(c('S'));
    receive(t, 'EZ2CZ');
    expect(log).toEqual(['p<E', 'p:P:done', 'b:B:skipped', 'e:E:skipped', 's<Z', 's:S:done', 'b2<2', 'b2:B:done']);
    expect(t.size).toBe(0);
  });

  test('asynchronous messages belong to nobody; notices go to the running request', () => {
    const log: string[] = [];
    const t = new RequestTracker();
    t.sent(c('Q'), recorder('q', log));
    receive(t, 'SATNDCZ');
    expect(log).toEqual(['q<T', 'q<N', 'q<D', 'q<C', 'q<Z', 'q:Q:done']);
    receive(t, 'ASN'); // idle: nothing owns them
    expect(t.size).toBe(0);
  });

  test('COPY FROM STDIN in extended mode: the Sync sent before the data is ignored by the server', () => {
    const t = new RequestTracker();
    for (const ch of 'PBES') t.sent(c(ch));
    receive(t, '12G'); // server now in copy-in; client has not sent data yet
    for (const ch of 'ddcS') t.sent(c(ch));
    receive(t, 'CZ');
    expect(t.size).toBe(0);
  });

  test('same, with the whole copy already sent when CopyInResponse arrives', () => {
    const t = new RequestTracker();
    for (const ch of 'PBESddcS') t.sent(c(ch));
    receive(t, '12GCZ');
    expect(t.size).toBe(0);
  });

  test('a failed copy-in (error, then Sync)', () => {
    const t = new RequestTracker();
    for (const ch of 'BES') t.sent(c(ch));
    receive(t, '2G');
    for (const ch of 'dfS') t.sent(c(ch));
    receive(t, 'EZ');
    expect(t.size).toBe(0);
  });

  test('simple-query COPY in and out, pipelined with the data', () => {
    const t = new RequestTracker();
    for (const ch of 'QddcQ') t.sent(c(ch));
    receive(t, 'GCZ');
    expect(t.size).toBe(1);
    receive(t, 'HddcCZ');
    expect(t.size).toBe(0);
  });

  test('Flush and CopyData alone expect nothing; a stray CopyDone is dropped', () => {
    const t = new RequestTracker();
    for (const ch of 'HdcX') t.sent(c(ch));
    expect(t.size).toBe(0);
  });

  test('ReadyForQuery resynchronises and close() tells pending handlers', () => {
    const log: string[] = [];
    const t = new RequestTracker();
    t.sent(c('B'), recorder('b', log));
    t.sent(c('S'));
    t.sent(c('Q'), recorder('q', log));
    receive(t, 'Z'); // the server never answered the Bind: impossible, but it must not wedge the FIFO
    expect(t.size).toBe(1);
    t.close();
    expect(log).toEqual(['b:B:skipped', 'q:Q:closed']);
  });

  test('grows past its initial capacity', () => {
    const t = new RequestTracker();
    for (let i = 0; i < 1000; i++) t.sent(c(i % 2 ? 'S' : 'P'));
    receive(t, '1Z'.repeat(500));
    expect(t.size).toBe(0);
  });
});
