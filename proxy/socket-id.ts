// One numbering for client and server connections, as pgBouncer's (objects.c, last_pgsocket_id): a new
// client or server connection takes the next number, console logins included, so the `id` of SHOW
// CLIENTS, SHOW SERVERS and SHOW SOCKETS and the C-0x…/S-0x… of the logfile never repeat between the two.
// Worker processes number in a stride of their count, each from its own index: ids stay unique across the
// workers (a console's aggregated SHOW CLIENTS, KILL_CLIENT of another worker's client), and the worker of
// an id is id % workers.
let last = 0;
let stride = 1;
let offset = 0;

export function nextSocketId(): number {
  return ++last * stride + offset;
}

/** This process is worker `index` of `workers` (set before the first id is taken). */
export function socketIdsForWorker(index: number, workers: number): void {
  stride = workers;
  offset = index;
}
