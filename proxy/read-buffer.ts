// Where a plaintext socket reads into (net's onread option): one reused buffer instead of a new
// allocation and a trip through the stream machinery per read, the largest per-event cost of relaying.
import { Socket } from 'node:net';

const READ_BUFFER_BYTES = 64 * 1024;

/**
 * Whoever consumes a chunk sets `retained` when its bytes are still referenced afterwards (queued for a
 * slow peer, held by a paused reader, kept by an interceptor); the next read then goes to a fresh buffer.
 */
export class ReadBuffer {
  private buf = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  retained = false;
  /** Reads that brought bytes: a view into a chunk is intact while this has not moved on (the buffer is reused). */
  reads = 0;
  onChunk: (chunk: Buffer) => void = () => {};

  /** For onread.buffer: called by Node for the next read. */
  readonly next = (): Buffer => {
    if (this.retained) {
      this.retained = false;
      this.buf = Buffer.allocUnsafe(READ_BUFFER_BYTES);
    }
    return this.buf;
  };

  readonly callback = (n: number, buf: Buffer): boolean => {
    this.reads++;
    this.onChunk(buf.subarray(0, n));
    return true; // flow control goes through socket.pause()/resume()
  };
}

/**
 * An accepted connection re-wrapped to read through a ReadBuffer (net.Server has no onread option).
 * The server must accept with pauseOnConnect, so no byte is read before the new socket owns the handle.
 * Falls back to the socket as it is (and no ReadBuffer) if its handle is not a plain one.
 */
export function adoptAccepted(socket: Socket, allowHalfOpen: boolean): { sock: Socket; input?: ReadBuffer } {
  const s = socket as Socket & { _handle?: { readStart?: unknown } | null };
  const handle = s._handle;
  if (!handle || typeof handle.readStart !== 'function') return { sock: socket };
  const input = new ReadBuffer();
  s._handle = null;
  // The husk closes without its handle (and so leaves net.Server's connection count); the session tracks the socket.
  socket.destroy();
  const sock = new Socket({ handle, allowHalfOpen, readable: true, writable: true, onread: { buffer: input.next, callback: input.callback } } as ConstructorParameters<typeof Socket>[0]);
  return { sock, input };
}
