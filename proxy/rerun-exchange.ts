// Which extended-protocol exchanges the session may run again (SessionContext.rerun): the shape a driver
// sends for a parameterized statement (node-postgres, psycopg 3, JDBC before it names its statements).
// Only the unnamed statement: a named one the first attempt created would exist already on the second.
import { Fe } from './protocol.js';

export interface RerunnableExchange {
  /** Answers the client has by the time the Execute runs: ParseComplete, BindComplete, Describe's. */
  answered: number;
  /** Offset of the Execute: what comes before it is sent again with its answers dropped. */
  execute: number;
}

/**
 * `bytes` is Parse (unnamed), then one Bind of the unnamed statement and Describes in any order, then one
 * Execute and Sync, and nothing else: where its Execute starts and how many answers precede it. Else null.
 */
export function rerunnableExchange(bytes: Buffer): RerunnableExchange | null {
  let pos = 0;
  let answered = 0;
  let binds = 0;
  let execute = -1;
  while (pos < bytes.length) {
    if (bytes.length - pos < 5) return null;
    const code = bytes[pos];
    const next = pos + 1 + bytes.readInt32BE(pos + 1);
    if (next > bytes.length || next < pos + 5) return null;
    if (pos === 0) {
      if (code !== Fe.Parse || bytes[5] !== 0) return null;
      answered++;
    } else if (execute >= 0) {
      if (code !== Fe.Sync || next !== bytes.length) return null;
    } else if (code === Fe.Bind) {
      const portalEnd = bytes.indexOf(0, pos + 5);
      // The unnamed statement (its name is the empty string right after the portal's).
      if (portalEnd < 0 || portalEnd + 1 >= next || bytes[portalEnd + 1] !== 0 || ++binds > 1) return null;
      answered++;
    } else if (code === Fe.Describe) {
      answered += bytes[pos + 5] === 0x53 /* S: ParameterDescription, then RowDescription or NoData */ ? 2 : 1;
    } else if (code === Fe.Execute) {
      if (binds !== 1) return null;
      execute = pos;
    } else {
      return null;
    }
    pos = next;
  }
  return execute >= 0 && bytes[bytes.length - 5] === Fe.Sync ? { answered, execute } : null;
}
