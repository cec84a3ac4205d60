// FrameReader against random streams cut at random places: bytes come out exactly as they went in
// (or as replaced), every message header is seen once in order, wanted messages arrive whole, and
// pausing in the middle of a chunk loses nothing.
import { describe, expect, test } from 'vitest';
import { DROP, FrameReader, KEEP, PAUSE, type FrameHandler, type Verdict } from '../../proxy/framing.js';

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function message(type: number, body: Buffer): Buffer {
  const b = Buffer.alloc(5 + body.length);
  b[0] = type;
  b.writeInt32BE(4 + body.length, 1);
  body.copy(b, 5);
  return b;
}

function randomStream(rand: () => number, count: number): Buffer[] {
  const types = [0x51, 0x50, 0x42, 0x44, 0x45, 0x53, 0x64, 0x5a];
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const len = rand() < 0.1 ? Math.floor(rand() * 200_000) : Math.floor(rand() * 40);
    const body = Buffer.alloc(len);
    for (let j = 0; j < len; j += 997) body[j] = Math.floor(rand() * 256);
    out.push(message(types[Math.floor(rand() * types.length)], body));
  }
  return out;
}

function cut(rand: () => number, all: Buffer): Buffer[] {
  const chunks: Buffer[] = [];
  let pos = 0;
  while (pos < all.length) {
    const r = rand();
    const n = r < 0.3 ? 1 + Math.floor(rand() * 6) : r < 0.8 ? 1 + Math.floor(rand() * 300) : 1 + Math.floor(rand() * 70_000);
    chunks.push(all.subarray(pos, pos + n));
    pos += n;
  }
  return chunks;
}

class Collector implements FrameHandler {
  out: Buffer[] = [];
  headers: number[] = [];
  whole: Buffer[] = [];
  constructor(
    readonly want: (code: number) => boolean,
    readonly verdict: (msg: Buffer) => Verdict = () => KEEP,
  ) {}
  header(code: number): boolean {
    this.headers.push(code);
    return this.want(code);
  }
  onMessage(msg: Buffer): Verdict {
    this.whole.push(Buffer.from(msg));
    return this.verdict(msg);
  }
  onBytes(b: Buffer): void {
    this.out.push(Buffer.from(b));
  }
  onInvalid(): void {
    throw new Error('unexpected invalid');
  }
}

describe('FrameReader', () => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    test(`random stream, random cuts (seed ${seed}): output equals input`, () => {
      const rand = rng(seed);
      const msgs = randomStream(rand, 300);
      const all = Buffer.concat(msgs);
      const wanted = new Set([0x51, 0x5a]);
      const c = new Collector((code) => wanted.has(code));
      const r = new FrameReader(c, 1 << 30);
      for (const chunk of cut(rand, all)) r.push(chunk);
      expect(r.atBoundary).toBe(true);
      expect(Buffer.concat(c.out).equals(all)).toBe(true);
      expect(c.headers).toEqual(msgs.map((m) => m[0]));
      expect(c.whole.map((m) => m.toString('hex'))).toEqual(msgs.filter((m) => wanted.has(m[0])).map((m) => m.toString('hex')));
    });
  }

  test('replacement, drop and pause/resume keep the order', async () => {
    const rand = rng(42);
    const msgs = randomStream(rand, 400);
    const all = Buffer.concat(msgs);
    let n = 0;
    let reader!: FrameReader;
    const expected: Buffer[] = [];
    for (const m of msgs) {
      if (m[0] !== 0x51) expected.push(m);
      else {
        const k = n++ % 4;
        if (k === 0) expected.push(m); // kept
        else if (k === 1) expected.push(Buffer.from('REPLACED')); // replaced
        else if (k === 3) expected.push(m); // paused then forwarded
        // k === 2 dropped
      }
    }
    let q = 0;
    const c = new Collector(
      (code) => code === 0x51,
      (msg) => {
        const k = q++ % 4;
        if (k === 0) return KEEP;
        if (k === 1) return [Buffer.from('REPL'), Buffer.from('ACED')];
        if (k === 2) return DROP;
        // A handler that resumes later, from another turn of the event loop: the behaviour under test.
        setTimeout(() => {
          c.onBytes(msg);
          reader.resume();
        }, 0);
        return PAUSE;
      },
    );
    reader = new FrameReader(c, 1 << 30);
    for (const chunk of cut(rand, all)) reader.push(chunk);
    // Each pause resumes on a later timer and the next one follows it: wait until the last has resumed and drained.
    await expect.poll(() => reader.isPaused || reader.buffered > 0, { timeout: 10_000 }).toBe(false);
    expect(Buffer.concat(c.out).equals(Buffer.concat(expected))).toBe(true);
  });

  test('a paused reader that owns its queue no longer points into the chunk: the read buffer may be reused', () => {
    const rand = rng(7);
    const msgs = randomStream(rand, 60).filter((m) => m.length < 100);
    const all = Buffer.concat(msgs);
    // The paused message waits as a copy, as the pooler's waiting client keeps it (client.ts pooledAcquire).
    let waiting: Buffer | null = null;
    const c = new Collector(
      (code) => code === 0x51,
      (msg) => {
        if (waiting !== null) return KEEP;
        waiting = Buffer.from(msg);
        return PAUSE;
      },
    );
    const r = new FrameReader(c, 1 << 30);
    // One reused read buffer, as ReadBuffer hands to the socket.
    const readBuffer = Buffer.from(all);
    r.push(readBuffer);
    expect(r.isPaused).toBe(true);
    const held = r.buffered;
    expect(r.ownQueue(held - 1)).toBe(false); // over the limit: still a view, the caller keeps the buffer
    expect(r.ownQueue(held)).toBe(true);
    readBuffer.fill(0xee); // the next read overwrites it
    r.requeue(waiting!);
    r.resume();
    expect(Buffer.concat(c.out).equals(all)).toBe(true);
  });

  test('impossible and oversized lengths are reported, nothing after them is forwarded', () => {
    for (const [len, tooLarge] of [[3, false], [-1, false], [2 ** 31 - 1, true], [1001, true]] as const) {
      const got: unknown[] = [];
      const out: Buffer[] = [];
      const r = new FrameReader(
        {
          header: () => false,
          onMessage: () => KEEP,
          onBytes: (b) => out.push(Buffer.from(b)),
          onInvalid: (code, length, large) => got.push([code, length, large]),
        },
        1000,
      );
      const good = message(0x51, Buffer.from('select 1\0'));
      const bad = Buffer.alloc(5);
      bad[0] = 0x51;
      bad.writeInt32BE(len, 1);
      r.push(Buffer.concat([good, bad.subarray(0, 3)]));
      r.push(Buffer.concat([bad.subarray(3), Buffer.from('trailing')]));
      expect(got).toEqual([[0x51, len, tooLarge]]);
      expect(Buffer.concat(out).equals(good)).toBe(true);
    }
  });
});
