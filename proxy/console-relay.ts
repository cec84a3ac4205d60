// The admin console across worker processes. A console login lands on one worker; what it says must hold
// for the whole pooler: a command (PAUSE, RESUME, RELOAD, KILL, SET, SHUTDOWN, ...) is carried out by every
// worker and answered once all have (PAUSE when every worker's servers are released), KILL_CLIENT goes to the
// worker of the client's id, and SHOW POOLS, CLIENTS, SERVERS, SOCKETS, STATS, DATABASES, USERS and LISTS add
// up every worker's rows. The worker's side (ConsoleRelay) wraps its console host; the primary (ConsoleHub)
// passes requests on and answers back, and sends pgBouncer's signals (SIGHUP, SIGUSR1, ...) to every worker.
import type { Logger } from 'pino';
import type {
  ClientRow,
  CommandAnswer,
  CommandOutcome,
  ConsoleHost,
  Count,
  DatabaseRow,
  DatabaseStats,
  DebugSocketRow,
  ListCounts,
  PauseMode,
  PoolRow,
  SocketRow,
  StatCounters,
  StatsSnapshot,
  SteadytextRow,
  UserRow,
} from './console.js';
import type { PoolerSignal } from './console-host.js';
import type { IpcChannel } from './ipc.js';
import type { PoolerFigures } from './metrics.js';

const TAG = 'steadytext-console';
/** How long a SHOW waits for the other workers' rows (a worker that does not answer is left out). */
const GATHER_TIMEOUT_MS = 3_000;

type Command = 'pause' | 'resume' | 'suspend' | 'reconnect' | 'kill' | 'killClient' | 'disable' | 'enable' | 'reload' | 'shutdown' | 'waitClose' | 'set';
type RowSource = 'pools' | 'clients' | 'servers' | 'sockets' | 'stats' | 'databases' | 'users' | 'lists';
/** Read of a worker besides the SHOWs: what a restarted worker takes over (state), the metrics endpoint's (figures). */
type Collect = RowSource | 'state' | 'figures';

/** What each SHOW reads of its host, and so gathers from the other workers first (steadytext: from the primary). */
const SOURCES: Record<string, [RowSource | 'steadytext', unknown[]]> = {
  pools: ['pools', []],
  clients: ['clients', []],
  servers: ['servers', []],
  sockets: ['sockets', [false]],
  active_sockets: ['sockets', [true]],
  stats: ['stats', []],
  stats_totals: ['stats', []],
  stats_averages: ['stats', []],
  totals: ['stats', []],
  databases: ['databases', []],
  users: ['users', []],
  lists: ['lists', []],
  steadytext: ['steadytext', []],
};

/**
 * What the console's commands have made of a worker, beyond its ini: PAUSE/SUSPEND (and SIGUSR1), the databases
 * paused (PAUSE db, KILL) or disabled, and the settings as SET (or RELOAD) left them. A restarted worker takes
 * a running one's before it accepts a client, so that it is indistinguishable from the others.
 */
export interface GroupState {
  mode: PauseMode;
  databases: { name: string; paused: boolean; disabled: boolean }[];
  settings: { key: string; value: string }[];
}

/** One worker's part of PoolerFigures, before they are added up. */
interface WorkerFigures {
  stats: StatsSnapshot;
  pools: PoolRow[];
  databases: DatabaseRow[];
  lists: ListCounts;
  maxClientConn: number;
  maxUserConnections: number;
}

type FromWorker =
  | { tag: typeof TAG; kind: 'hello' }
  | { tag: typeof TAG; kind: 'command'; id: number; method: Command; args: unknown[]; to: number | null }
  | { tag: typeof TAG; kind: 'gather'; id: number; method: RowSource | 'steadytext'; args: unknown[] }
  | { tag: typeof TAG; kind: 'done'; id: number; outcome: CommandOutcome }
  | { tag: typeof TAG; kind: 'rows'; id: number; rows: unknown };
type ToWorker =
  | { tag: typeof TAG; kind: 'restore'; state: GroupState | null }
  | { tag: typeof TAG; kind: 'run'; id: number; method: Command; args: unknown[] }
  | { tag: typeof TAG; kind: 'collect'; id: number; method: Collect; args: unknown[] }
  | { tag: typeof TAG; kind: 'outcomes'; id: number; outcomes: CommandOutcome[] }
  | { tag: typeof TAG; kind: 'gathered'; id: number; parts: unknown[] }
  | { tag: typeof TAG; kind: 'signal'; sig: PoolerSignal };

// ---- the primary ---------------------------------------------------------------------------------------------

interface Pending {
  origin: number | null;
  originId: number;
  waiting: Set<number>;
  results: unknown[];
  kind: 'outcomes' | 'gathered';
  timer?: NodeJS.Timeout;
  /** The primary's own request (origin null): its answers go here. */
  resolve?: (results: unknown[]) => void;
}

/**
 * A worker's channel. 'starting': its relay is not listening yet (what is sent now would be lost: it is left out,
 * and the state it takes over covers it); 'restoring': it waits for a running worker's state, and what the others
 * get meanwhile is held for it, to follow the state; 'ready'.
 */
interface Member {
  channel: IpcChannel;
  phase: 'starting' | 'restoring' | 'ready';
  held: ToWorker[];
}

export interface ConsoleHubOptions {
  logger: Logger;
  /** A SHUTDOWN is being carried out by the workers: they exit, and are not to be restarted. */
  onShutdown(mode: string): void;
  /** SHOW STEADYTEXT's rows: the steadytext calls are served here, in the primary. */
  steadytext?: () => SteadytextRow[];
  /** A worker's console RELOAD: what the primary itself keeps of the configuration reloads too. */
  onReload?(): void;
}

/** The primary's side: passes a worker's console command or SHOW on to the others, and their answers back. */
export class ConsoleHub {
  private readonly members = new Map<number, Member>();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** The shutdown under way (SHUTDOWN, SIGINT, SIGTERM): a worker starting meanwhile is told too, or it would never exit. */
  private ending: { sig: PoolerSignal } | { method: Command; args: unknown[] } | null = null;

  constructor(private readonly o: ConsoleHubOptions) {}

  attach(channel: IpcChannel, worker: number): () => void {
    const member: Member = { channel, phase: 'starting', held: [] };
    this.members.set(worker, member);
    const off = channel.onMessage((m: FromWorker) => {
      if (m?.tag === TAG) this.receive(worker, m);
    });
    return () => {
      off();
      if (this.members.get(worker) === member) this.members.delete(worker);
      for (const [id, p] of this.pending) {
        if (p.origin === worker) this.finish(id, p, false);
        else if (p.waiting.delete(worker) && p.waiting.size === 0) this.finish(id, p, true);
      }
    };
  }

  /** pgBouncer's signals, as the primary receives them: every worker's console acts on them. */
  signal(sig: PoolerSignal): void {
    if (sig === 'SIGINT' || sig === 'SIGTERM') this.ending = { sig };
    for (const w of this.reachable()) this.send(w, { tag: TAG, kind: 'signal', sig });
  }

  /** A command every worker carries out (SIGHUP: RELOAD); resolves with their outcomes. */
  command(method: Command, args: unknown[] = []): Promise<CommandOutcome[]> {
    if (method === 'shutdown') this.ending = { method, args };
    return new Promise((resolve) => {
      const p: Pending = { origin: null, originId: 0, waiting: new Set(), results: [], kind: 'outcomes', resolve: (r) => resolve(r as CommandOutcome[]) };
      this.fanOut(this.nextId++, p, this.reachable(), (id) => ({ tag: TAG, kind: 'run', id, method, args }));
    });
  }

  /** What SHOW STATS, POOLS, DATABASES and LISTS report, added up over the workers (undefined: none answered). */
  async figures(): Promise<PoolerFigures | undefined> {
    const parts = (await this.collect(this.reachable(), 'figures')) as WorkerFigures[];
    if (parts.length === 0) return undefined;
    return {
      stats: mergeStats(parts.map((f) => f.stats)).databases.map((d) => ({ database: d.database, totals: d.current })),
      pools: mergePools(parts.map((f) => f.pools)),
      databases: mergeByName(parts.map((f) => f.databases)),
      lists: mergeLists(parts.map((f) => f.lists)),
      maxClientConn: parts[0].maxClientConn,
      maxUserConnections: parts[0].maxUserConnections,
    };
  }

  /** The workers the others' commands and SHOWs reach (a restoring one gets them after its state). */
  private reachable(except?: number): number[] {
    return [...this.members].filter(([w, m]) => w !== except && m.phase !== 'starting').map(([w]) => w);
  }

  private send(w: number, msg: ToWorker): void {
    const m = this.members.get(w);
    if (m?.phase === 'restoring') m.held.push(msg);
    else m?.channel.send(msg);
  }

  /** A read of every target, answered by those that do within GATHER_TIMEOUT_MS. */
  private collect(targets: number[], method: Collect, args: unknown[] = []): Promise<unknown[]> {
    return new Promise((resolve) => {
      const p: Pending = { origin: null, originId: 0, waiting: new Set(), results: [], kind: 'gathered', resolve: (r) => resolve(r.filter((x) => x != null)) };
      const id = this.nextId++;
      this.fanOut(id, p, targets, (cid) => ({ tag: TAG, kind: 'collect', id: cid, method, args }));
      this.deadline(id, p);
    });
  }

  private deadline(id: number, p: Pending): void {
    if (!this.pending.has(id)) return;
    p.timer = setTimeout(() => {
      this.o.logger.warn({ workers: [...p.waiting] }, 'console: workers did not send their rows in time; shown without them');
      this.finish(id, p, true);
    }, GATHER_TIMEOUT_MS);
    p.timer.unref();
  }

  /**
   * A worker's relay listens: it takes the state of a worker that is ready (none at the first start: each has the
   * ini's). Commands given meanwhile reach that worker after the read, so they are in the state or held to follow it.
   */
  private welcome(w: number): void {
    const m = this.members.get(w);
    if (!m || m.phase !== 'starting') return;
    const from = [...this.members].find(([x, o]) => x !== w && o.phase === 'ready')?.[0];
    m.phase = 'restoring';
    // Given while it started (it was left out); one given from here on is held for it.
    const end = this.ending;
    const restore = (state: GroupState | null) => {
      if (this.members.get(w) !== m) return;
      m.channel.send({ tag: TAG, kind: 'restore', state } satisfies ToWorker);
      m.phase = 'ready';
      for (const msg of m.held.splice(0)) m.channel.send(msg);
      if (end && 'sig' in end) m.channel.send({ tag: TAG, kind: 'signal', sig: end.sig } satisfies ToWorker);
      else if (end) this.fanOut(this.nextId++, { origin: null, originId: 0, waiting: new Set(), results: [], kind: 'outcomes' }, [w], (id) => ({ tag: TAG, kind: 'run', id, method: end.method, args: end.args }));
    };
    if (from === undefined) return restore(null);
    void this.collect([from], 'state').then((parts) => {
      if (parts.length === 0) this.o.logger.warn({ worker: w, from }, 'console: no running worker gave its state; the restarted worker starts with the ini\'s');
      restore((parts[0] as GroupState | undefined) ?? null);
    });
  }

  private receive(w: number, m: FromWorker): void {
    if (m.kind === 'hello') return this.welcome(w);
    if (m.kind === 'command') {
      if (m.method === 'shutdown') this.o.onShutdown(typeof m.args[0] === 'string' ? m.args[0] : 'immediate');
      if (m.method === 'reload') this.o.onReload?.();
      const targets = m.to === null ? this.reachable(w) : this.reachable().filter((x) => x === m.to);
      if (m.method === 'shutdown') this.ending = { method: 'shutdown', args: m.args };
      this.fanOut(this.nextId++, { origin: w, originId: m.id, waiting: new Set(), results: [], kind: 'outcomes' }, targets, (id) => ({ tag: TAG, kind: 'run', id, method: m.method, args: m.args }));
    } else if (m.kind === 'gather') {
      const method = m.method;
      if (method === 'steadytext') return this.send(w, { tag: TAG, kind: 'gathered', id: m.id, parts: [this.o.steadytext?.() ?? []] });
      const id = this.nextId++;
      const p: Pending = { origin: w, originId: m.id, waiting: new Set(), results: [], kind: 'gathered' };
      this.fanOut(id, p, this.reachable(w), (cid) => ({ tag: TAG, kind: 'collect', id: cid, method, args: m.args }));
      this.deadline(id, p);
    } else {
      const p = this.pending.get(m.id);
      if (!p || !p.waiting.delete(w)) return;
      p.results.push(m.kind === 'done' ? m.outcome : m.rows);
      if (p.waiting.size === 0) this.finish(m.id, p, true);
    }
  }

  private fanOut(id: number, p: Pending, targets: number[], msg: (id: number) => ToWorker): void {
    if (targets.length === 0) return this.finish(id, p, true);
    this.pending.set(id, p);
    for (const t of targets) {
      p.waiting.add(t);
      this.send(t, msg(id));
    }
  }

  private finish(id: number, p: Pending, answer: boolean): void {
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    if (!answer) return;
    if (p.origin === null) return p.resolve?.(p.results);
    const out: ToWorker = p.kind === 'outcomes'
      ? { tag: TAG, kind: 'outcomes', id: p.originId, outcomes: p.results as CommandOutcome[] }
      : { tag: TAG, kind: 'gathered', id: p.originId, parts: p.results };
    this.send(p.origin, out);
  }
}

// ---- a worker -----------------------------------------------------------------------------------------------

/** A worker's side: its console host, wrapped so that commands reach every worker and SHOWs count them all. */
export class ConsoleRelay {
  private local: ConsoleHost | null = null;
  private readonly waiting = new Map<number, (r: unknown[]) => void>();
  /** The other workers' rows (the primary's for SHOW STEADYTEXT) gathered for the SHOW about to read them. */
  private readonly gathered = new Map<RowSource | 'steadytext', unknown[]>();
  private nextId = 1;
  private markRestored!: () => void;
  /**
   * Resolves once this worker has the group's state (a restarted worker: PAUSE, DISABLE, SET as the running
   * workers have them): the worker accepts clients only then.
   */
  readonly restored = new Promise<void>((resolve) => (this.markRestored = resolve));
  /** pgBouncer's signals sent by the primary (the console factory's signal). */
  onSignal: (sig: PoolerSignal) => void = () => {};

  constructor(
    private readonly channel: IpcChannel,
    /** This worker's index and the number of workers: the worker of a client id is id % workers (socket-id.ts). */
    private readonly worker: number,
    private readonly workers: number,
    private readonly log: Logger,
  ) {
    channel.onMessage((m: ToWorker) => {
      if (m?.tag === TAG) this.receive(m);
    });
    channel.send({ tag: TAG, kind: 'hello' } satisfies FromWorker);
  }

  private receive(m: ToWorker): void {
    if (m.kind === 'signal') return this.onSignal(m.sig);
    if (m.kind === 'restore') {
      if (m.state && this.local) this.restore(this.local, m.state);
      return this.markRestored();
    }
    if (m.kind === 'outcomes' || m.kind === 'gathered') {
      const done = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      return done?.(m.kind === 'outcomes' ? m.outcomes : m.parts);
    }
    const local = this.local;
    if (local === null) {
      const none: FromWorker = m.kind === 'run' ? { tag: TAG, kind: 'done', id: m.id, outcome: undefined } : { tag: TAG, kind: 'rows', id: m.id, rows: null };
      return this.channel.send(none);
    }
    if (m.kind === 'collect') {
      let rows: unknown;
      try {
        rows = m.method === 'state' ? stateOf(local) : m.method === 'figures' ? figuresOf(local) : (local[m.method] as (...a: unknown[]) => unknown).apply(local, m.args);
      } catch (err) {
        this.log.error({ err }, 'console rows for another worker failed');
        rows = null;
      }
      return this.channel.send({ tag: TAG, kind: 'rows', id: m.id, rows } satisfies FromWorker);
    }
    this.log.info({ command: m.method, args: m.args }, 'console command from another worker');
    let answer: CommandAnswer;
    try {
      answer = (local[m.method] as (...a: unknown[]) => CommandAnswer).apply(local, m.args);
    } catch (err) {
      this.log.error({ err }, 'console command from another worker failed');
      answer = undefined;
    }
    void Promise.resolve(answer).then(
      (outcome) => this.channel.send({ tag: TAG, kind: 'done', id: m.id, outcome } satisfies FromWorker),
      () => this.channel.send({ tag: TAG, kind: 'done', id: m.id, outcome: undefined } satisfies FromWorker),
    );
  }

  /** Takes a running worker's state over, as the console's commands made it (their answers are not waited for). */
  private restore(local: ConsoleHost, state: GroupState): void {
    const own = new Map(local.config().map((r) => [r.key, r.value]));
    const settings = state.settings.filter((s) => own.has(s.key) && own.get(s.key) !== s.value);
    const databases = state.databases.filter((d) => d.paused || d.disabled);
    if (settings.length === 0 && databases.length === 0 && state.mode === 'none') return;
    this.log.info({ mode: state.mode, databases, settings }, 'console: taking over the running workers\' state');
    const quietly = (a: CommandAnswer) => void Promise.resolve(a).catch(() => {});
    try {
      for (const { key, value } of settings) quietly(local.set(key, value));
      if (state.mode === 'pause') quietly(local.pause());
      else if (state.mode === 'suspend') quietly(local.suspend());
      for (const d of databases) {
        if (d.paused) quietly(local.pause(d.name));
        if (d.disabled) quietly(local.disable(d.name));
      }
    } catch (err) {
      this.log.error({ err }, 'console: the running workers\' state could not be taken over');
    }
  }

  private ask(msg: (id: number) => FromWorker): Promise<unknown[]> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.channel.send(msg(id));
    });
  }

  /** Runs a command here and in the other workers (`to`: in that worker only); answers with this worker's outcome once all are done. */
  private everywhere(method: Command, args: unknown[], here: () => CommandAnswer): Promise<CommandOutcome> {
    const others = this.ask((id) => ({ tag: TAG, kind: 'command', id, method, args, to: null }));
    // SHUTDOWN here only once the others have it: this process may be gone right after.
    if (method === 'shutdown') return others.then(() => here());
    return Promise.all([here(), others]).then(([outcome]) => outcome);
  }

  private take<T>(source: RowSource | 'steadytext'): T[] {
    const parts = this.gathered.get(source) ?? [];
    this.gathered.delete(source);
    return parts.filter((p) => p != null) as T[];
  }

  /** The console host the worker's console sessions use (console-host.ts's `relay`). */
  wrap = (local: ConsoleHost): ConsoleHost => {
    this.local = local;
    return {
      gather: (show) => {
        const src = SOURCES[show];
        if (!src) return;
        const [method, args] = src;
        return this.ask((id) => ({ tag: TAG, kind: 'gather', id, method, args })).then((parts) => void this.gathered.set(method, parts));
      },
      pools: () => mergePools([local.pools(), ...this.take<PoolRow[]>('pools')]),
      clients: () => mergeSockets([local.clients(), ...this.take<ClientRow[]>('clients')]),
      servers: () => mergeSockets([local.servers(), ...this.take<SocketRow[]>('servers')]),
      sockets: (activeOnly) => mergeSockets([local.sockets(activeOnly), ...this.take<DebugSocketRow[]>('sockets')]),
      stats: () => mergeStats([local.stats(), ...this.take<StatsSnapshot>('stats')]),
      databases: () => mergeByName([local.databases(), ...this.take<DatabaseRow[]>('databases')]),
      users: () => mergeByName([local.users(), ...this.take<UserRow[]>('users')]),
      lists: () => mergeLists([local.lists(), ...this.take<ListCounts>('lists')]),
      requested: () => local.requested?.(),
      config: () => local.config(),
      fds: () => local.fds(),
      dnsHosts: () => local.dnsHosts(),
      dnsZones: () => local.dnsZones(),
      pauseMode: () => local.pauseMode(),
      peers: () => local.peers(),
      peerPools: () => local.peerPools(),
      mem: () => local.mem(),
      // The calls are the primary's: its rows when it sent them, else this worker's own (none, unless served here).
      steadytext: () => this.take<SteadytextRow[]>('steadytext')[0] ?? local.steadytext(),
      pause: (db) => this.everywhere('pause', [db], () => local.pause(db)),
      resume: (db) => this.everywhere('resume', [db], () => local.resume(db)),
      suspend: () => this.everywhere('suspend', [], () => local.suspend()),
      reconnect: (db) => this.everywhere('reconnect', [db], () => local.reconnect(db)),
      kill: (db) => this.everywhere('kill', [db], () => local.kill(db)),
      disable: (db) => this.everywhere('disable', [db], () => local.disable(db)),
      enable: (db) => this.everywhere('enable', [db], () => local.enable(db)),
      reload: () => this.everywhere('reload', [], () => local.reload()),
      shutdown: (mode) => this.everywhere('shutdown', [mode], () => local.shutdown(mode)),
      waitClose: (db) => this.everywhere('waitClose', [db], () => local.waitClose(db)),
      set: (key, value) => this.everywhere('set', [key, value], () => local.set(key, value)),
      killClient: (id) => {
        const owner = id % this.workers;
        if (owner === this.worker) return local.killClient(id);
        return this.ask((cid) => ({ tag: TAG, kind: 'command', id: cid, method: 'killClient', args: [id], to: owner })).then(
          (outcomes) => (outcomes.length > 0 ? (outcomes[0] as CommandOutcome) : { refused: 'client_not_found' }),
        );
      },
    };
  };
}

/** A worker's state as a restarted worker takes it over (GroupState). */
function stateOf(local: ConsoleHost): GroupState {
  return {
    mode: local.pauseMode(),
    databases: local.databases().filter((d) => d.paused || d.disabled).map((d) => ({ name: d.name, paused: d.paused, disabled: d.disabled })),
    settings: local.config().filter((r) => r.changeable).map((r) => ({ key: r.key, value: r.value })),
  };
}

/** A worker's own figures for the metrics endpoint (console-host.ts's figures, before adding up). */
function figuresOf(local: ConsoleHost): WorkerFigures {
  const setting = (key: string) => Number(local.config().find((r) => r.key === key)?.value ?? 0);
  return {
    stats: local.stats(),
    pools: local.pools(),
    databases: local.databases(),
    lists: local.lists(),
    maxClientConn: setting('max_client_conn'),
    maxUserConnections: setting('max_user_connections'),
  };
}

// ---- adding up the workers' rows ----------------------------------------------------------------------------

/** strcmp order, as pgBouncer sorts its lists. */
const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

const add = (a: Count, b: Count): Count => (typeof a === 'bigint' || typeof b === 'bigint' ? BigInt(a) + BigInt(b) : a + b);

const POOL_SUMS = ['clActive', 'clWaiting', 'clActiveCancelReq', 'clWaitingCancelReq', 'svActive', 'svActiveCancel', 'svBeingCanceled', 'svIdle', 'svUsed', 'svTested', 'svLogin'] as const;

function mergePools(parts: PoolRow[][]): PoolRow[] {
  const out = new Map<string, PoolRow>();
  for (const rows of parts) {
    for (const r of rows) {
      const k = `${r.database}\u0000${r.user}`;
      const m = out.get(k);
      if (!m) {
        out.set(k, { ...r });
        continue;
      }
      for (const f of POOL_SUMS) m[f] += r[f];
      m.maxWaitUs = Math.max(m.maxWaitUs, r.maxWaitUs);
    }
  }
  return [...out.values()].sort((a, b) => byName(a.database, b.database) || byName(a.user, b.user));
}

/** Each pool's sockets together in pgBouncer's order of states; clients still logging in last. */
const STATE_ORDER = ['active', 'waiting', 'idle', 'used', 'tested', 'new', 'cl_active', 'cl_waiting', 'sv_active', 'sv_idle', 'sv_used', 'sv_tested', 'sv_login'];

function mergeSockets<T extends SocketRow>(parts: T[][]): T[] {
  if (parts.length === 1) return parts[0];
  const rank = (r: T) => {
    const i = STATE_ORDER.indexOf(r.state);
    return i < 0 ? STATE_ORDER.length : i;
  };
  const last = (r: T) => (r.state === 'cl_login' ? 1 : 0);
  return parts.flat().sort((a, b) => last(a) - last(b) || byName(a.database ?? '', b.database ?? '') || byName(a.user ?? '', b.user ?? '') || rank(a) - rank(b) || a.id - b.id);
}

function mergeStats(parts: StatsSnapshot[]): StatsSnapshot {
  const out = new Map<string, DatabaseStats>();
  const sum = (a: StatCounters, b: StatCounters): StatCounters => {
    const c: StatCounters = { ...a };
    for (const k of Object.keys(b) as (keyof StatCounters)[]) c[k] = add(c[k] ?? 0, b[k]);
    return c;
  };
  for (const snap of parts) {
    for (const d of snap.databases) {
      const m = out.get(d.database);
      out.set(d.database, m ? { database: d.database, current: sum(m.current, d.current), previous: sum(m.previous, d.previous) } : d);
    }
  }
  return { databases: [...out.values()].sort((a, b) => byName(a.database, b.database)), periodUs: parts.map((p) => p.periodUs).reduce((a, b) => (a > b ? a : b)) };
}

/** SHOW DATABASES and SHOW USERS: one row per name (the same configuration in each worker), connection counts added up. */
function mergeByName<T extends DatabaseRow | UserRow>(parts: T[][]): T[] {
  const out = new Map<string, T>();
  for (const rows of parts) {
    for (const r of rows) {
      const m = out.get(r.name);
      if (!m) out.set(r.name, { ...r });
      else {
        m.currentConnections += r.currentConnections;
        m.currentClientConnections += r.currentClientConnections;
      }
    }
  }
  return [...out.values()].sort((a, b) => byName(a.name, b.name));
}

/** Sockets add up; databases, users and pools are the same configuration in each worker (the most any has). */
function mergeLists(parts: ListCounts[]): ListCounts {
  const out = { ...parts[0] };
  for (const l of parts.slice(1)) {
    for (const k of Object.keys(l) as (keyof ListCounts)[]) {
      out[k] = k === 'usedClients' || k === 'loginClients' || k === 'usedServers' || k === 'freeClients' || k === 'freeServers' ? out[k] + l[k] : Math.max(out[k], l[k]);
    }
  }
  return out;
}
