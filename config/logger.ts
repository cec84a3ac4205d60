// pino, JSON by default (log shippers), readable when a human is watching a terminal.
import pino from 'pino';
import type { Settings } from './settings.js';

export function createLogger(s: Pick<Settings, 'logLevel' | 'logFormat'>, dest: NodeJS.WritableStream & { isTTY?: boolean } = process.stderr): pino.Logger {
  const pretty = s.logFormat === 'pretty' || (s.logFormat === 'auto' && Boolean(dest.isTTY));
  if (pretty) {
    return pino({ level: s.logLevel, transport: { target: 'pino-pretty', options: { destination: 2, colorize: true, translateTime: 'SYS:HH:MM:ss.l' } } });
  }
  return pino({ level: s.logLevel }, pino.destination({ fd: 2, sync: false }));
}
