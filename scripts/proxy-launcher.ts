// Runs the proxy alone in its own process (for the benchmark): `tsx scripts/proxy-launcher.ts <upstream-url> [port]`.
// Prints {"port": N} on stdout once listening; SIGTERM/SIGINT close it gracefully. With NOOP_INTERCEPTOR=1
// an interceptor that never rewrites is attached, to measure what the seam itself costs.
import pino from 'pino';
import { startProxy } from '../proxy/server.js';

const upstream = process.argv[2];
if (!upstream) {
  console.error('usage: proxy-launcher <upstream postgres:// URL> [port]');
  process.exit(2);
}
const logger = pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination(2));
const proxy = await startProxy({
  listen: { host: '127.0.0.1', port: Number(process.argv[3] ?? 0) },
  upstream,
  maxMessageBytes: 1 << 30,
  shutdownGraceMs: 2_000,
  connectTimeoutMs: 5_000,
  logger,
  interceptor: process.env.NOOP_INTERCEPTOR === '1' ? { intercept: () => undefined } : undefined,
});
process.stdout.write(`${JSON.stringify({ port: proxy.address.port })}\n`);
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.once(sig, () => {
    void proxy.close().then(() => process.exit(0));
  });
}
