// One numbering for client and server connections, as pgBouncer's (objects.c, last_pgsocket_id): a new
// client or server connection takes the next number, console logins included, so the `id` of SHOW
// CLIENTS, SHOW SERVERS and SHOW SOCKETS and the C-0x…/S-0x… of the logfile never repeat between the two.
let last = 0;

export function nextSocketId(): number {
  return ++last;
}
