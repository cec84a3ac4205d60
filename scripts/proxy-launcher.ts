// Runs the proxy alone in its own process (for the benchmark): `tsx scripts/proxy-launcher.ts <upstream-url> [port] [--workers N]`.
// Prints {"port": N, "workers": N} on stdout once listening; SIGTERM/SIGINT close it gracefully. With
// --workers N > 1 this process is the primary of N worker processes (proxy/workers.ts), as `serve --workers`.
// With NOOP_INTERCEPTOR=1 an interceptor that never rewrites is attached, to measure what the seam itself costs;
// PGSTEADYTEXT_NATIVE_RELAY (auto, on, off) chooses the relay as the serve command's setting does.
import pino from 'pino';
import { startProxy } from '../proxy/server.js';
import { runPoolWorker, startWorkerPool, workerSetup } from '../proxy/workers.js';
import type { CancelRegistry } from '../proxy/cancel.js';
import type { NativeRelayMode } from '../proxy/relay.js';

const argv = process.argv.slice(2);
const w = argv.indexOf('--workers');
const workers = w >= 0 ? Number(argv.splice(w, 2)[1]) : 1;
const [upstream, portArg] = argv;
if (!upstream || !Number.isInteger(workers) || workers < 1) {
  console.error('usage: proxy-launcher <upstream postgres:// URL> [port] [--workers N]');
  process.exit(2);
}
const setup = workerSetup();
const logger = pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination(2)).child(setup ? { worker: setup.index } : {});
const start = (cancels?: CancelRegistry) => startProxy({
  listen: { host: '127.0.0.1', port: Number(portArg ?? 0) },
  upstream,
  maxMessageBytes: 1 << 30,
  shutdownGraceMs: 2_000,
  connectTimeoutMs: 5_000,
  logger,
  interceptor: process.env.NOOP_INTERCEPTOR === '1' ? { intercept: () => undefined } : undefined,
  nativeRelay: (process.env.PGSTEADYTEXT_NATIVE_RELAY ?? 'auto') as NativeRelayMode,
  cancels,
});

if (setup) {
  await runPoolWorker(setup, { logger, start });
} else {
  const proxy = workers > 1 ? await startWorkerPool({ workers, logger, stopTimeoutMs: 5_000 }) : await start();
  process.stdout.write(`${JSON.stringify({ port: proxy.address.port, workers })}\n`);
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      void proxy.close().then(() => process.exit(0));
    });
  }
}
