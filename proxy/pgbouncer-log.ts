// The logfile of a pgbouncer.ini (`logfile`), in pgBouncer's own line format, for the events pgBouncer
// logs (logins, new server connections, close reasons, periodic stats): pgbadger and the log alerts of an
// existing deployment keep working. The structured pino log goes on as well; this is an extra sink.
import { closeSync, openSync, writeSync } from 'node:fs';

export type PgbLevel = 'LOG' | 'WARNING' | 'ERROR' | 'FATAL' | 'DEBUG' | 'NOISE';

/** The object a line is about, as pgBouncer prefixes it: C-0x… / S-0x… db/user@address:port. */
export interface PgbSubject {
  kind: 'C' | 'S';
  id: number;
  database: string;
  user: string;
  address: string;
}

export class PgBouncerLog {
  private fd: number | null = null;

  constructor(
    private readonly path: string,
    /** pgBouncer's `verbose`, read at each line (the console's SET changes it): DEBUG lines from 1, NOISE from 2. */
    private readonly verbose: () => number = () => 0,
    /** pgBouncer's `log_disconnections`, read at each closing line. */
    private readonly disconnections: () => boolean = () => true,
  ) {
    if (path) this.fd = openSync(path, 'a');
  }

  line(level: PgbLevel, text: string, subject?: PgbSubject): void {
    if (this.fd === null) return;
    if ((level === 'DEBUG' || level === 'NOISE') && this.verbose() < (level === 'DEBUG' ? 1 : 2)) return;
    const prefix = subject ? `${subject.kind}-0x${subject.id.toString(16).padStart(12, '0')}: ${subject.database}/${subject.user}@${subject.address} ` : '';
    try {
      writeSync(this.fd, `${timestamp()} [${process.pid}] ${level} ${prefix}${text}\n`);
    } catch {
      // a full disk must not take the pooler down; pino still logs
    }
  }

  /** pgBouncer's "closing because" line of a client or server connection open since `since` (ms), under log_disconnections. */
  closing(reason: string, since: number, subject: PgbSubject): void {
    if (this.disconnections()) this.line('LOG', `closing because: ${reason} (age=${Math.floor((Date.now() - since) / 1000)}s)`, subject);
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

/** "2024-05-01 12:34:56.789 UTC", as pgBouncer writes it. */
function timestamp(): string {
  const d = new Date();
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}.${p(d.getUTCMilliseconds(), 3)} UTC`;
}
