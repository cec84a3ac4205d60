// The native steady-state relay (proxy/native/relay.c, built into build/relay.node by `npm install`):
// loading it, and what it hands back as plain values. A session hands both its sockets to it while idle
// and plaintext; it forwards in C until something JS must see, then returns the session (client.ts).
// The addon's arrays are unpacked here once: the session code sees named fields.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export type NativeRelayMode = 'auto' | 'on' | 'off';

/** Why the relay gave a session back. */
export const RelayExit = {
  1: 'client-message',
  2: 'server-message',
  3: 'client-eof',
  4: 'server-eof',
  5: 'client-error',
  6: 'server-error',
  7: 'log-full',
  8: 'stopped',
} as const;
export type RelayExitReason = (typeof RelayExit)[keyof typeof RelayExit];

export interface RelayOutcome {
  reason: RelayExitReason;
  /** errno of a socket error. */
  errno: number;
  /** Forwarded but not yet taken by the kernel: JS writes these first. */
  toClient: Buffer;
  toServer: Buffer;
  /** Read but not forwarded, from the message the relay stopped at (or a partial one). */
  fromClient: Buffer;
  fromServer: Buffer;
  /** Type bytes of the forwarded messages that move the request tracker, since the session was last idle; server ones have the high bit set. */
  log: Buffer;
  /** The last ReadyForQuery's transaction status ('I', 'T', 'E'), or '' if none came. */
  status: string;
  bytesFromClient: number;
  bytesFromServer: number;
  /** Body bytes still to come of a large message the relay was streaming: they pass through unread. */
  skipClient: number;
  skipServer: number;
}

export interface RelayState {
  /** Requests sent that still await (part of) their answer. */
  requests: number;
  /** Bytes the relay holds (partial messages, writes the kernel has not taken). */
  held: number;
  bytesFromClient: number;
  bytesFromServer: number;
  status: string;
  /** Bytes still to come of messages being streamed through (the session is mid-message). */
  streaming: number;
}

type Handle = object & { readonly __relay: unique symbol };
type Raw = [number, number, Buffer, Buffer, Buffer, Buffer, Buffer, number, number, number, number, number];
interface Addon {
  start(clientFd: number, serverFd: number, maxMessage: number, onExit: (raw: Raw) => void): Handle;
  stop(h: Handle): Raw | null;
  state(h: Handle): [number, number, number, number, number, number];
}

export interface NativeRelay {
  /** Takes over both (paused, plaintext) sockets; onExit runs once, when the relay gives them back. */
  start(clientFd: number, serverFd: number, maxMessage: number, onExit: (o: RelayOutcome) => void): Handle;
  /** Gives the sockets back now; null if the relay already did (onExit ran). */
  stop(h: Handle): RelayOutcome | null;
  state(h: Handle): RelayState;
}
export type RelayHandle = Handle;

function outcome(r: Raw): RelayOutcome {
  return {
    reason: RelayExit[r[0] as keyof typeof RelayExit] ?? 'stopped',
    errno: r[1],
    toClient: r[2],
    toServer: r[3],
    fromClient: r[4],
    fromServer: r[5],
    log: r[6],
    status: r[7] ? String.fromCharCode(r[7]) : '',
    bytesFromClient: r[8],
    bytesFromServer: r[9],
    skipClient: r[10],
    skipServer: r[11],
  };
}

/** Where build-native put it: build/ at the package root (this file runs from proxy/ or dist/proxy/). */
function addonPath(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 3; i++) {
    const p = join(dir, 'build', 'relay.node');
    if (existsSync(p)) return p;
    dir = dirname(dir);
  }
  return null;
}

let loaded: { relay: NativeRelay | null; why: string } | undefined;

/** The relay, or null with the reason it is not available. Loaded once per process. */
export function loadNativeRelay(): { relay: NativeRelay | null; why: string } {
  if (loaded) return loaded;
  const path = addonPath();
  if (path === null) {
    loaded = { relay: null, why: 'build/relay.node is missing: run `node scripts/build-native.mjs` (needs a C compiler and the headers of this Node)' };
    return loaded;
  }
  try {
    const addon = createRequire(import.meta.url)(path) as Addon;
    const relay: NativeRelay = {
      start: (c, s, max, onExit) => addon.start(c, s, max, (raw) => onExit(outcome(raw))),
      stop: (h) => {
        const r = addon.stop(h);
        return r === null ? null : outcome(r);
      },
      state: (h) => {
        const s = addon.state(h);
        return { requests: s[0], held: s[1], bytesFromClient: s[2], bytesFromServer: s[3], status: s[4] ? String.fromCharCode(s[4]) : '', streaming: s[5] };
      },
    };
    loaded = { relay, why: `loaded from ${path}` };
  } catch (err) {
    loaded = { relay: null, why: `${path} does not load (${(err as Error).message}): rebuild it with \`node scripts/build-native.mjs\`` };
  }
  return loaded;
}

/** The file descriptor of a plain TCP or Unix socket, or -1. */
export function socketFd(sock: unknown): number {
  const fd = (sock as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}
