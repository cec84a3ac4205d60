// The hook pauser alone (proxy/hook-pause.ts): a real FrameReader over the client's stream, a fake socket
// that counts pauses, and hooks whose Promises the test settles by hand.
import { describe, expect, test } from 'vitest';
import { FrameReader, PAUSE, type FrameHandler, type Verdict } from '../../proxy/framing.js';
import { HookPauser, type HookHost } from '../../proxy/hook-pause.js';

const msg = (type: string, body: string) => {
  const b = Buffer.alloc(5 + body.length);
  b[0] = type.charCodeAt(0);
  b.writeInt32BE(4 + body.length, 1);
  b.write(body, 5, 'latin1');
  return b;
};
const text = (b: Buffer) => `${String.fromCharCode(b[0])}:${b.subarray(5).toString('latin1')}`;

/** A promise and its resolve, settled by the test. */
function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A session in miniature: each 'H' message gets a hook from `hooks`; everything forwarded lands in `upstream`. */
function session(limit = 1024) {
  const events: string[] = [];
  const upstream: string[] = [];
  const hooks: ReturnType<typeof deferred<string | undefined>>[] = [];
  const socket = { paused: false, pauses: 0, resumes: 0 };
  let closed = false;
  const errors: unknown[] = [];
  const handler: FrameHandler = {
    header: (code) => code === 0x48 /* H */,
    onMessage(m: Buffer): Verdict {
      const hook = deferred<string | undefined>();
      hooks.push(hook);
      pauser.hold(hook.promise, (outcome) => {
        events.push('send');
        upstream.push(outcome ?? text(m));
      });
      return PAUSE;
    },
    onBytes(bytes) {
      let pos = 0;
      while (pos < bytes.length) {
        const len = bytes.readInt32BE(pos + 1);
        upstream.push(text(bytes.subarray(pos, pos + 1 + len)));
        pos += 1 + len;
      }
    },
    onInvalid: () => {
      throw new Error('invalid');
    },
  };
  const reader = new FrameReader(handler, 1 << 20);
  const host: HookHost = {
    heldBytes: () => reader.buffered,
    pauseSocket() {
      events.push('pause');
      socket.paused = true;
      socket.pauses++;
    },
    resumeSocket() {
      events.push('resume');
      socket.paused = false;
      socket.resumes++;
    },
    resumeReader() {
      events.push('reader');
      reader.resume();
    },
    closed: () => closed,
    afterHook: () => events.push('after'),
    internalError: (err) => errors.push(err),
  };
  const pauser = new HookPauser(host, limit);
  /** What the session does with each chunk read from the client. */
  const read = (chunk: Buffer) => {
    reader.push(chunk);
    pauser.limitBacklog();
  };
  return { pauser, reader, read, hooks, upstream, events, socket, errors, close: () => (closed = true) };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('HookPauser', () => {
  test('messages behind a pending hook wait, then follow its outcome in the order sent', async () => {
    const s = session();
    s.read(Buffer.concat([msg('Q', 'one'), msg('H', 'hooked'), msg('Q', 'two')]));
    s.read(msg('Q', 'three'));
    expect(s.pauser.pending).toBe(true);
    expect(s.upstream).toEqual(['Q:one']);
    s.hooks[0].resolve('R:replacement');
    await tick();
    expect(s.pauser.pending).toBe(false);
    expect(s.upstream).toEqual(['Q:one', 'R:replacement', 'Q:two', 'Q:three']);
    // The outcome first, then the socket, then the reader's queue, then whoever waited for the hook.
    expect(s.events).toEqual(['send', 'resume', 'reader', 'after']);
  });

  test('an outcome of undefined forwards the original message; a second hook in the queue pauses again', async () => {
    const s = session();
    s.read(Buffer.concat([msg('H', 'first'), msg('H', 'second'), msg('Q', 'after')]));
    s.hooks[0].resolve(undefined);
    await tick();
    expect(s.upstream).toEqual(['H:first']);
    expect(s.pauser.pending).toBe(true);
    expect(s.hooks).toHaveLength(2);
    s.hooks[1].resolve(undefined);
    await tick();
    expect(s.upstream).toEqual(['H:first', 'H:second', 'Q:after']);
    expect(s.pauser.pending).toBe(false);
  });

  test('the socket is read on up to the limit, then paused until the hook settles', async () => {
    const s = session(100);
    s.read(msg('H', 'hook'));
    s.read(msg('Q', 'x'.repeat(60)));
    expect(s.socket.pauses).toBe(0); // 65 bytes held: under the limit
    s.read(msg('Q', 'y'.repeat(60)));
    expect(s.socket.paused).toBe(true); // 130 bytes held
    expect(s.reader.buffered).toBe(130);
    s.hooks[0].resolve(undefined);
    await tick();
    expect(s.socket.paused).toBe(false);
    expect(s.upstream).toEqual(['H:hook', `Q:${'x'.repeat(60)}`, `Q:${'y'.repeat(60)}`]);
  });

  test('without a pending hook nothing is limited', () => {
    const s = session(10);
    s.read(Buffer.concat([msg('Q', 'x'.repeat(100)), msg('Q', 'y'.repeat(100))]));
    expect(s.socket.pauses).toBe(0);
    expect(s.upstream).toHaveLength(2);
  });

  test('cancel aborts the pending hook\'s signal; the next hook gets a fresh one', async () => {
    const s = session();
    const first = s.pauser.signal;
    s.pauser.cancel(); // no hook pending: nothing to stop
    expect(first.aborted).toBe(false);
    s.read(msg('H', 'hook'));
    s.pauser.cancel();
    expect(first.aborted).toBe(true);
    expect((first.reason as Error).message).toBe('canceling statement due to user request');
    // Until the next hook starts, the pending one still sees its aborted signal.
    s.hooks[0].resolve(undefined);
    await tick();
    const next = s.pauser.signal;
    expect(next).not.toBe(first);
    expect(next.aborted).toBe(false);
    expect(s.pauser.signal).toBe(next);
  });

  test('a session that ended drops the late outcome and resumes nothing; close aborts the signal', async () => {
    const s = session();
    const signal = s.pauser.signal;
    s.read(Buffer.concat([msg('H', 'hook'), msg('Q', 'behind')]));
    s.close();
    s.pauser.close();
    expect((signal.reason as Error).message).toBe('client session ended');
    s.hooks[0].resolve('R:late');
    await tick();
    expect(s.upstream).toEqual([]);
    expect(s.events).toEqual([]);
    expect(s.pauser.pending).toBe(false);
  });

  test('an outcome that cannot be sent is an internal error of the session', async () => {
    const s = session();
    const boom = new Error('boom');
    s.pauser.hold(Promise.resolve('x'), () => {
      throw boom;
    });
    await tick();
    expect(s.errors).toEqual([boom]);
  });

  test('many requests of one hook may listen on its signal without a listener-leak warning', async () => {
    const s = session();
    const signal = s.pauser.signal;
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      for (let i = 0; i < 50; i++) signal.addEventListener('abort', () => {});
      await tick();
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).not.toContain('MaxListenersExceededWarning');
  });
});
