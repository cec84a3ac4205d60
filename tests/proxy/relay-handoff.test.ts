// The relay hand-off alone (proxy/relay-handoff.ts): a fake native relay, fake sockets, real frame readers
// and a real request tracker. When a session is handed over, when not, and how it is taken back.
import type { Socket } from 'node:net';
import pino from 'pino';
import { describe, expect, test } from 'vitest';
import { FrameReader, KEEP, type FrameHandler } from '../../proxy/framing.js';
import type { TxStatus } from '../../proxy/protocol.js';
import { RelayHandoff, type RelayCounts, type RelayHost } from '../../proxy/relay-handoff.js';
import type { NativeRelay, RelayHandle, RelayOutcome, RelayState } from '../../proxy/relay.js';
import { RequestTracker } from '../../proxy/tracker.js';

const msg = (type: string, body = '') => {
  const b = Buffer.alloc(5 + body.length);
  b[0] = type.charCodeAt(0);
  b.writeInt32BE(4 + body.length, 1);
  b.write(body, 5, 'latin1');
  return b;
};
const code = (ch: string) => ch.charCodeAt(0);

class FakeRelay implements NativeRelay {
  starts: { clientFd: number; serverFd: number; maxMessage: number }[] = [];
  failStart = false;
  onExit: ((o: RelayOutcome) => void) | null = null;
  readonly send = null;
  peer(): null {
    return null;
  }
  /** What stop() returns: the outcome, or null when the relay already gave the session back. */
  onStop: RelayOutcome | null = null;
  stops = 0;
  st: RelayState = { requests: 0, held: 0, bytesFromClient: 0, bytesFromServer: 0, status: 'I', streaming: 0, pool: NO_COUNTS, serverFd: -1 };

  start(clientFd: number, serverFd: number, maxMessage: number, onExit: (o: RelayOutcome) => void): RelayHandle {
    if (this.failStart) throw new Error('no relay for you');
    this.starts.push({ clientFd, serverFd, maxMessage });
    this.onExit = onExit;
    return {} as RelayHandle;
  }

  stop(): RelayOutcome | null {
    this.stops++;
    return this.onStop;
  }

  state(): RelayState {
    return this.st;
  }

  /** The relay gives the session back of its own accord. */
  exit(o: Partial<RelayOutcome>): void {
    this.onExit!(outcome(o));
  }
}

function outcome(o: Partial<RelayOutcome>): RelayOutcome {
  const none = Buffer.alloc(0);
  return { reason: 'client-message', errno: 0, toClient: none, toServer: none, fromClient: none, fromServer: none, log: none, status: '', bytesFromClient: 0, bytesFromServer: 0, skipClient: 0, skipServer: 0, query: null, queryRowDescription: 0, pool: NO_COUNTS, uses: [], watch: null, watchEntry: -1, serverFd: -1, ...o };
}

const NO_COUNTS = { queries: 0, xacts: 0, queryUs: 0, xactUs: 0, queryOpenUs: -1, xactOpenUs: -1, binds: 0 };

/** A socket as the hand-off sees it: a file descriptor, a Readable already reading, nothing unsent. */
function fakeSocket(fd: number) {
  return { _handle: { fd }, _readableState: { reading: true }, writableLength: 0 } as unknown as Socket & { _handle: { fd: number } | null; _readableState: { reading: boolean }; writableLength: number };
}

/** A reader whose messages are recorded as "side:type"; a server ReadyForQuery tells the hand-off, as the session does. */
function reader(side: string, seen: string[], onReady?: () => void): FrameReader {
  const h: FrameHandler = {
    header: () => true,
    onMessage(m) {
      seen.push(`${side}:${String.fromCharCode(m[0])}`);
      if (m[0] === 0x5a /* Z */) onReady?.();
      return KEEP;
    },
    onBytes: () => {},
    onInvalid: () => {},
  };
  return new FrameReader(h, 1 << 20);
}

function setup() {
  const relay = new FakeRelay();
  const events: string[] = [];
  const seen: string[] = [];
  const counts: RelayCounts = { relayStarts: 0, relayExits: 0, bytesFromClients: 0, bytesFromUpstream: 0 };
  const warnings: string[] = [];
  const log = pino({ level: 'trace' }, { write: (line: string) => void warnings.push(JSON.parse(line).msg) });
  const state = { idle: true, closed: false };
  const tracker = new RequestTracker();
  const host: RelayHost = {
    log,
    tracker,
    counts,
    closed: () => state.closed,
    idle: () => state.idle,
    pauseReading: () => events.push('pause'),
    resumeReading: () => events.push('resume'),
    toClient: (b: Buffer) => events.push(`toClient ${b.toString()}`),
    toServer: (b: Buffer) => events.push(`toServer ${b.toString()}`),
    txStatus: (s: TxStatus) => events.push(`status ${s}`),
    relayReturned: () => events.push('returned'),
    keepStatus: () => 0,
    keptQuery: (q: Buffer | null) => { if (q !== null) events.push(`kept ${q.toString()}`); },
    internalError: (err: unknown) => events.push(`error ${(err as Error).message}`),
  };
  const client = { sock: fakeSocket(3), reader: reader('client', seen) };
  const server = { sock: fakeSocket(4), reader: reader('server', seen, () => handoff.readyForQuery()) };
  const handoff = new RelayHandoff(relay, host, client, server, 1234);
  /** A chunk carrying a ReadyForQuery went through JS. */
  const ready = () => {
    handoff.readyForQuery();
    handoff.chunkDone();
  };
  return { relay, handoff, events, seen, counts, warnings, state, tracker, client, server, ready };
}

describe('RelayHandoff', () => {
  test('an idle session goes to the relay once the chunk with its ReadyForQuery is through', () => {
    const t = setup();
    t.handoff.chunkDone(); // no ReadyForQuery in that chunk
    expect(t.relay.starts).toHaveLength(0);
    t.handoff.readyForQuery();
    expect(t.relay.starts).toHaveLength(0); // not in the middle of the chunk
    t.handoff.chunkDone();
    expect(t.relay.starts).toEqual([{ clientFd: 3, serverFd: 4, maxMessage: 1234 }]);
    expect(t.events).toEqual(['pause']);
    expect(t.counts.relayStarts).toBe(1);
    expect(t.handoff.state()).toBe(t.relay.st);
    t.ready(); // already relayed
    expect(t.relay.starts).toHaveLength(1);
  });

  test('not while the session is busy, a reader is mid-message or holds bytes, a write is unsent or a socket is not reading yet', () => {
    const t = setup();
    t.state.idle = false;
    t.ready();
    t.state.idle = true;
    t.handoff.chunkDone(); // the check was spent: it waits for the next ReadyForQuery
    expect(t.relay.starts).toHaveLength(0);

    t.client.reader.push(msg('Q', 'select 1').subarray(0, 7)); // half a message
    t.ready();
    t.client.reader.push(msg('Q', 'select 1').subarray(7));
    expect(t.relay.starts).toHaveLength(0);

    t.server.sock.writableLength = 10;
    t.ready();
    t.server.sock.writableLength = 0;
    t.client.sock._readableState.reading = false;
    t.ready();
    expect(t.relay.starts).toHaveLength(0);
    t.client.sock._readableState.reading = true;
    t.ready();
    expect(t.relay.starts).toHaveLength(1);
  });

  test('a socket without a file descriptor: the session stays in JS for good', () => {
    const t = setup();
    t.server.sock._handle = null;
    t.ready();
    t.server.sock._handle = { fd: 4 };
    t.ready();
    expect(t.relay.starts).toHaveLength(0);
    expect(t.events).toEqual([]);
  });

  test('a relay that does not start: a warning, reading resumes, the session stays in JS', () => {
    const t = setup();
    t.relay.failStart = true;
    t.ready();
    expect(t.events).toEqual(['pause', 'resume']);
    expect(t.warnings).toContain('native relay did not start; this session relays in JS');
    t.relay.failStart = false;
    t.ready();
    expect(t.relay.starts).toHaveLength(0);
    expect(t.counts.relayStarts).toBe(0);
  });

  test('given back: unwritten bytes first, the tracker replays the log, the readers take what it stopped at, then reading resumes', () => {
    const t = setup();
    t.ready();
    t.events.length = 0;
    // Under the relay: Query sent, CommandComplete and ReadyForQuery received, another Query sent.
    const log = Buffer.from([code('Q'), code('C') | 0x80, code('Z') | 0x80, code('Q')]);
    t.relay.exit({
      reason: 'server-message',
      toServer: Buffer.from('tail-to-server'),
      toClient: Buffer.from('tail-to-client'),
      log,
      status: 'T',
      fromServer: msg('S', 'application_name\0x\0'),
      fromClient: msg('P', 'stmt'),
      bytesFromClient: 100,
      bytesFromServer: 200,
    });
    expect(t.events).toEqual(['toServer tail-to-server', 'toClient tail-to-client', 'status T', 'resume', 'returned']);
    expect(t.tracker.size).toBe(1); // the second Query awaits its answer
    expect(t.seen).toEqual(['server:S', 'client:P']);
    expect(t.counts).toEqual({ relayStarts: 1, relayExits: 1, bytesFromClients: 100, bytesFromUpstream: 200 });
    expect(t.handoff.state()).toBeNull();
  });

  test('a ReadyForQuery among the bytes it stopped at: the relay takes the session again', () => {
    const t = setup();
    t.ready();
    t.relay.exit({ reason: 'server-message', fromServer: Buffer.concat([msg('S', 'a\0b\0'), msg('Z', 'I')]) });
    expect(t.relay.starts).toHaveLength(2);
    expect(t.counts.relayStarts).toBe(2);
  });

  test('a message it was streaming: the readers pass the rest of it through', () => {
    const t = setup();
    t.ready();
    t.relay.exit({ reason: 'stopped', skipClient: 3, skipServer: 2 });
    expect(t.client.reader.atBoundary).toBe(false);
    expect(t.server.reader.atBoundary).toBe(false);
    t.client.reader.push(Buffer.concat([Buffer.from('abc'), msg('Q', 'x')]));
    t.server.reader.push(Buffer.from('de'));
    expect(t.client.reader.atBoundary).toBe(true);
    expect(t.server.reader.atBoundary).toBe(true);
    expect(t.seen).toEqual(['client:Q']);
  });

  test('a socket that ended under the relay: it does not take the session again', () => {
    for (const reason of ['client-eof', 'server-error'] as const) {
      const t = setup();
      t.ready();
      t.relay.exit({ reason });
      t.ready();
      expect(t.relay.starts).toHaveLength(1);
    }
  });

  test('stop takes the sockets back now; final keeps them for good', () => {
    const t = setup();
    t.ready();
    t.relay.onStop = outcome({ reason: 'stopped', status: 'I' });
    t.handoff.stop(false);
    expect(t.relay.stops).toBe(1);
    expect(t.counts.relayExits).toBe(1);
    t.ready();
    expect(t.relay.starts).toHaveLength(2); // not final: it may take the session again
    t.handoff.stop(true);
    expect(t.counts.relayExits).toBe(2);
    t.ready();
    expect(t.relay.starts).toHaveLength(2);
    t.handoff.stop(true); // not relayed: nothing to stop
    expect(t.relay.stops).toBe(2);
  });

  test('the relay had already given the session back: stop has nothing to take', () => {
    const t = setup();
    t.ready();
    t.relay.onStop = null;
    t.handoff.stop(true);
    expect(t.counts.relayExits).toBe(0);
  });

  test('given back to a closed session: only the counts and where the readers stand', () => {
    const t = setup();
    t.ready();
    t.events.length = 0;
    t.state.closed = true;
    t.relay.exit({ toClient: Buffer.from('x'), fromClient: msg('Q', 'x'), log: Buffer.from([code('Q')]), bytesFromClient: 5, skipServer: 4 });
    expect(t.events).toEqual([]);
    expect(t.seen).toEqual([]);
    expect(t.tracker.size).toBe(0);
    expect(t.counts.bytesFromClients).toBe(5);
    expect(t.server.reader.atBoundary).toBe(false);
  });

  test('an error while taking the session back is the session\'s internal error', () => {
    const t = setup();
    t.ready();
    t.client.reader.push(msg('Q', 'half').subarray(0, 3)); // mid-message: passThrough must refuse
    t.relay.exit({ skipClient: 1 });
    expect(t.events.at(-1)).toBe('error passThrough only between messages');
  });
});
