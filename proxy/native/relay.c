// The steady-state relay of one session in C, on the Node event loop (uv_poll on both sockets). Node's
// per-event cost (stream layers, a JS callback and a WriteWrap per read) is most of what a JS relay spends
// per transaction; here a read walks message boundaries and is written on at once, with no JS at all.
//
// It only forwards. It hands the session back to JS (the exit callback, with everything it holds) at the
// first thing JS must see: a Query or Parse that passes the steadytext prefilter, Terminate, a message over
// the limit, a server ParameterStatus or ErrorResponse, a server NoticeResponse naming steadytext (the in-band
// callback's request), end of stream or an error. Messages too large for
// its buffer are streamed through unless JS must read them (Query, Parse, ParameterStatus, ErrorResponse).
// JS keeps the request tracker: the relay logs the type byte of every message it forwarded that moves the
// tracker (server ones with the high bit set) and JS replays the log on exit. The log is cleared whenever
// the session is provably idle (every Sync/Query answered by ReadyForQuery, nothing sent after the last
// one), so it stays short; a session that is never idle (COPY FROM STDIN swallowing Syncs) fills it and
// goes back to JS.
//
// Pooling lends a transaction-pooled client's idle server connection to the relay (pooled-session.ts): then it
// also gives the session back at what the pooler must see (start's pool flags): a Query or Parse that may change
// the session (a byte prefilter wider than statement-effects.ts's, transaction control aside), a named
// prepared statement while the pooler renames them, every ReadyForQuery in statement mode. It counts the
// requests and transactions it ran, and their times, as the pooler's SHOW STATS does.
// Renamed statements: JS gives a lend the client's statements that the server connection already has (client
// name -> server-side name, prepared.ts); a Bind or a Describe of one of those is forwarded here under its
// server-side name, every other message naming a statement still goes to JS. An exchange such a message begins
// is kept for JS (the watch), which runs it again if the server refuses the statement's plan (0A000).
#define _GNU_SOURCE // struct ucred (SO_PEERCRED) on glibc
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif
#include <node_api.h>
#include <uv.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 // macOS: Node ignores SIGPIPE anyway
#endif
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0 // macOS: FD_CLOEXEC is set after the receive
#endif

#define IN_CAP (64 * 1024)
#define LOG_MAX 8192

// Reads land here and are forwarded from here: one buffer for all the sessions of an event loop (a loop
// runs on one thread; worker threads get their own), so an idle relayed session holds no buffer at all.
// Only a partial message is kept aside.
static _Thread_local uint8_t *scratch;
// A read that renames statements is forwarded from here instead: scratch's bytes with the renamed messages in
// their place (used only within one read, like scratch).
static _Thread_local uint8_t *renamed_out;
static _Thread_local size_t renamed_cap;

enum {
  EXIT_CLIENT_MESSAGE = 1, // a client message JS must see (prefilter match, Terminate, over the limit, invalid)
  EXIT_SERVER_MESSAGE = 2, // a server message JS must see (ParameterStatus, ErrorResponse, ReadyForQuery too large)
  EXIT_CLIENT_EOF = 3,
  EXIT_SERVER_EOF = 4,
  EXIT_CLIENT_ERROR = 5,
  EXIT_SERVER_ERROR = 6,
  EXIT_LOG_FULL = 7,
  EXIT_STOPPED = 8, // stop() from JS
};

typedef struct side {
  int fd;
  uv_poll_t own;   // the poll of a socket the relay has for its whole life
  uv_poll_t *poll; // &own, or a hub server's (moves with the server); NULL: a hub relay holding no server
  bool polling;
  int events;
  uint8_t *in; // read, not yet forwarded (a partial message)
  size_t in_len, in_cap;
  size_t skip; // body bytes still to come of a message too large to hold, forwarded as it arrives
  uint8_t *out; // forwarded to this side, not yet taken by the kernel
  size_t out_off, out_len;
  uint64_t bytes_read;
} side_t;

// start's pool flags (relay_t.pool).
#define POOL_LEND 1      // exit at a Query or Parse the pooler must classify (pooling_hit)
#define POOL_NAMED 2     // exit at a Parse, Bind, Describe or Close naming a prepared statement (but see named_t)
#define POOL_STATEMENT 4 // exit at every ReadyForQuery (statement pooling)
#define POOL_NO_QUERY 8  // exit at every Query (disable_pqexec); kept apart from pool, which also means "lent"

// One of the lent client's statements that the server connection has prepared (start's names): a Bind or
// Describe naming `client` goes upstream naming `server` instead. Both point into relay_t.names_buf.
typedef struct named {
  const uint8_t *client, *server;
  uint32_t client_len, server_len;
  uint32_t uses; // Binds and Describes renamed: JS marks the statement recently used (the connection's LRU)
  // A hub member's: whether the hub server with id srv_id (0: none yet) has `server`, at its index srv_idx (-1: not).
  uint64_t srv_id;
  int32_t srv_idx;
} named_t;

// What may follow the message that began a watched exchange (pooled-session.ts REST_BYTES: JS runs no more again).
#define WATCH_REST 256

typedef struct hub hub_t;
typedef struct hserver hserver_t;

typedef struct relay {
  side_t c, s;
  // A hub member (see the hub below): the server it holds (NULL: it waits, s.fd -1), its places in the hub's
  // lists (the FIFO of clients whose next request came, the members, those with client bytes to forward).
  hub_t *hub;
  hserver_t *hs;
  struct relay *wnext, *mprev, *mnext, *rnext;
  bool queued, rqueued;
  uint64_t wait_start;
  int out_sfd; // at the exit: the server it held, -1: none
  napi_env env;
  napi_ref on_exit;
  napi_async_context async;
  uint32_t max_message;
  uint8_t *log;
  size_t log_len, log_cap;
  int64_t pending_sync; // Sync/Query/FunctionCall sent minus ReadyForQuery received
  int64_t since_sync;   // Parse/Bind/Describe/Execute/Close sent after the last Sync/Query
  uint8_t status;       // the last ReadyForQuery's transaction status, 0 if none
  // A copy of the Query that began the current exchange outside a transaction block, or of its Parse (the
  // unnamed statement) through Sync, while nothing of its answer went to the client (JS may run it again:
  // SessionContext.rerun, proxy/rerun-exchange.ts). Kept only when JS asks (start).
  bool keep;
  bool fence;     // JS fences statements inside transaction blocks: a ReadyForQuery 'T' gives the session back
  bool fence_ro;  // JS fences only blocks that may be read-only: a Query mentioning ONLY gives the session back
  bool kept_open; // a kept Parse whose Sync has not come yet
  uint8_t *kept;
  size_t kept_len, kept_cap;
  // Of a Query: the bytes of the RowDescription forwarded after it (the only message that may have been), 0:
  // none. Of an exchange: how many of the answers that precede its rows (1 2 t T n) were forwarded.
  size_t kept_t;
  // Pooling: the requests and transactions run here (a request: from its first message to the ReadyForQuery
  // that leaves nothing outstanding; a transaction: to one saying 'I'), their times in ns, the open ones' starts.
  uint32_t pool;
  bool no_query; // POOL_NO_QUERY
  bool q_open, x_open;
  uint64_t queries, xacts, q_ns, x_ns, q_start, x_start;
  // The renamed statements (named_t), found by hashing the client name: slots hold an index + 1 (0: empty).
  uint8_t *names_buf;
  named_t *named;
  uint32_t named_n, *slots, slots_mask;
  size_t named_grow; // the most a rename lengthens a message by
  uint64_t binds;    // Binds renamed (SHOW STATS' total_bind_count)
  // The watch: the exchange a renamed message began while nothing was outstanding, as forwarded (that message,
  // then what followed it up to WATCH_REST bytes), while it lasts; watch_entry: its statement, -1: none.
  uint8_t *watch;
  size_t watch_len, watch_cap, watch_first;
  int32_t watch_entry;
  bool running;
  int reason, err;
  int open_handles;
  bool finalized;
} relay_t;

static void maybe_free(relay_t *r) {
  if (r->open_handles > 0 || !r->finalized) return;
  free(r->c.in);
  free(r->s.in);
  free(r->c.out);
  free(r->s.out);
  free(r->log);
  free(r->kept);
  free(r->names_buf);
  free(r->named);
  free(r->slots);
  free(r->watch);
  free(r);
}

static void on_close(uv_handle_t *h) {
  relay_t *r = (relay_t *)h->data;
  r->open_handles--;
  maybe_free(r);
}

// A Query or Parse naming steadytext (any ASCII case), or U&" (which can spell any identifier): the
// same test as the JS prefilter (interceptor.ts).
static bool mentions_steadytext(const uint8_t *b, size_t start, size_t end) {
  static const char word[] = "steadytext";
  for (size_t i = start; i < end; i++) {
    uint8_t c = b[i];
    if ((c | 0x20) == 's' && i + 10 <= end) {
      int j = 1;
      while (j < 10 && (b[i + j] | 0x20) == (uint8_t)word[j]) j++;
      if (j == 10) return true;
    } else if (c == '&' && i > start && (b[i - 1] | 0x20) == 'u' && i + 1 < end && b[i + 1] == '"') {
      return true;
    }
  }
  return false;
}

// May begin a read-only block (statement-effects.ts mentionsOnly): the word ONLY anywhere, ASCII case-insensitive.
static bool mentions_only(const uint8_t *b, size_t start, size_t end) {
  for (size_t i = start; i + 4 <= end; i++) {
    if ((b[i] | 0x20) == 'o' && (b[i + 1] | 0x20) == 'n' && (b[i + 2] | 0x20) == 'l' && (b[i + 3] | 0x20) == 'y') return true;
  }
  return false;
}

// ---- the pooler's prefilter (pooling_hit) ------------------------------------------------------------------
// statement-effects.ts's prefilterHits, made wider: a statement that may start (at the text's start or after
// any ';', past blanks and comments) with one of the words below, or anywhere temp, advisory, set_config,
// execute, pg_settings or U&". Transaction control is left out: the pooler learns of it from ReadyForQuery.

static bool ident_byte(uint8_t c) {
  uint8_t l = c | 0x20;
  return (l >= 'a' && l <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '$' || c >= 0x80;
}

// Compares as `byte | 0x20` ('_' folds to 0x7f on both sides).
static bool word_at(const uint8_t *b, size_t i, size_t end, const char *w) {
  size_t n = strlen(w);
  if (i + n > end) return false;
  for (size_t j = 0; j < n; j++)
    if ((b[i + j] | 0x20) != ((uint8_t)w[j] | 0x20)) return false;
  return true;
}

static size_t skip_blank(const uint8_t *b, size_t i, size_t end) {
  while (i < end) {
    uint8_t c = b[i];
    if (c == ' ' || (c >= 0x09 && c <= 0x0d)) i++;
    else if (c == '-' && i + 1 < end && b[i + 1] == '-') {
      i += 2;
      while (i < end && b[i] != '\n' && b[i] != '\r') i++;
    } else if (c == '/' && i + 1 < end && b[i + 1] == '*') {
      int depth = 1;
      i += 2;
      while (i < end && depth > 0) {
        if (b[i] == '*' && i + 1 < end && b[i + 1] == '/') {
          depth--;
          i += 2;
        } else if (b[i] == '/' && i + 1 < end && b[i + 1] == '*') {
          depth++;
          i += 2;
        } else i++;
      }
    } else break;
  }
  return i;
}

static bool leading_word(const uint8_t *b, size_t i, size_t end) {
  static const char *words[] = {"set", "reset", "discard", "prepare", "execute", "deallocate", "listen", "unlisten", "load", "close", "drop", "declare"};
  i = skip_blank(b, i, end);
  for (size_t k = 0; k < sizeof words / sizeof words[0]; k++) {
    size_t n = strlen(words[k]);
    if (word_at(b, i, end, words[k]) && (i + n == end || !ident_byte(b[i + n]))) return true;
  }
  return false;
}

static bool pooling_hit(const uint8_t *b, size_t start, size_t end) {
  if (leading_word(b, start, end)) return true;
  for (size_t i = start; i < end; i++) {
    switch (b[i] | 0x20) {
      case ';':
        if (leading_word(b, i + 1, end)) return true;
        break;
      case '&':
        if (i > start && (b[i - 1] | 0x20) == 'u' && i + 1 < end && b[i + 1] == '"') return true;
        break;
      case 't':
        if (word_at(b, i, end, "temp")) return true;
        break;
      case 'a':
        if (word_at(b, i, end, "advisory")) return true;
        break;
      case 's':
        if (word_at(b, i, end, "set_config")) return true;
        break;
      case 'e':
        if (word_at(b, i, end, "execute")) return true;
        break;
      case 'p':
        if (word_at(b, i, end, "pg_settings")) return true;
        break;
    }
  }
  return false;
}

// Where the statement's name begins in a Bind, or a Describe or Close of a statement; 0 when it is malformed.
static size_t statement_at(const uint8_t *m, size_t len) {
  if (m[0] == 'B') {
    const uint8_t *nul = memchr(m + 5, 0, len - 5); // past the portal's name
    return nul == NULL ? 0 : (size_t)(nul - m) + 1;
  }
  return len > 6 && m[5] == 'S' ? 6 : 0;
}

// A Parse, Bind, or Describe or Close of a statement, naming a prepared statement (not the unnamed one).
static bool names_statement(const uint8_t *m, size_t len) {
  if (m[0] == 'P') return len > 5 && m[5] != 0;
  size_t at = statement_at(m, len);
  // A malformed Bind counts as naming one: JS reads it.
  if (m[0] == 'B') return at == 0 || at >= len || m[at] != 0;
  return (m[0] == 'D' || m[0] == 'C') && at != 0 && m[at] != 0;
}

// FNV-1a, over one client's statement names (a handful, at most max_prepared_statements).
static uint32_t name_hash(const uint8_t *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
  return h;
}

// The renamed statement (named_t) a whole Bind or Describe of a statement names, or NULL: JS must see it.
static named_t *lookup_named(relay_t *r, const uint8_t *m, size_t len) {
  size_t at = statement_at(m, len);
  if (r->named_n == 0 || at == 0 || at >= len) return NULL;
  const uint8_t *end = memchr(m + at, 0, len - at);
  if (end == NULL) return NULL;
  size_t n = (size_t)(end - m) - at;
  // The table is at most half full: the probe ends at an empty slot.
  for (uint32_t i = name_hash(m + at, n) & r->slots_mask;; i = (i + 1) & r->slots_mask) {
    uint32_t k = r->slots[i];
    if (k == 0) return NULL;
    named_t *e = &r->named[k - 1];
    if (e->client_len == n && memcmp(e->client, m + at, n) == 0) return e;
  }
}

// Writes message m (a Bind, or a Describe of a statement, naming e->client) into o, naming e->server instead: the
// same bytes around the name, the length rewritten. Returns its size.
static size_t put_renamed(uint8_t *o, const uint8_t *m, size_t len, const named_t *e) {
  size_t at = statement_at(m, len);
  size_t rest = at + e->client_len; // the name's NUL and what follows
  memcpy(o, m, at);
  memcpy(o + at, e->server, e->server_len);
  memcpy(o + at + e->server_len, m + rest, len - rest);
  size_t n = len - e->client_len + e->server_len;
  uint32_t body = (uint32_t)(n - 1);
  o[1] = (uint8_t)(body >> 24);
  o[2] = (uint8_t)(body >> 16);
  o[3] = (uint8_t)(body >> 8);
  o[4] = (uint8_t)body;
  return n;
}

static bool hub_server_has(relay_t *r, named_t *e);

// The renamed statement (named_t) of a whole Bind or Describe, or NULL: JS must see it. A hub member's only where the
// server it holds now has the statement's server-side name (a waiting member's is judged again at its hand-off).
static named_t *renamable(relay_t *r, const uint8_t *m, size_t len) {
  named_t *e = lookup_named(r, m, len);
  if (e != NULL && r->hub != NULL && r->hs != NULL && !hub_server_has(r, e)) return NULL;
  return e;
}

// Whether the pooler must see this client message (start's pool flags); `whole`: all of it is at hand. A Bind or
// Describe the relay renames itself is not: *renamed says under which name it goes.
static bool pool_exit(relay_t *r, const uint8_t *m, size_t len, bool whole, named_t **renamed) {
  uint8_t code = m[0];
  if ((r->pool & POOL_NAMED) && (code == 'P' || code == 'B' || code == 'D' || code == 'C') && (!whole || names_statement(m, len))) {
    // Parse and Close stay JS's (it keeps what each client and connection has), as does a name not in the table.
    if (whole && (code == 'B' || code == 'D') && (*renamed = renamable(r, m, len)) != NULL) return false;
    return true;
  }
  if ((r->pool & POOL_LEND) && (code == 'Q' || code == 'P')) {
    if (!whole) return true;
    size_t start = 5, end = len;
    if (code == 'Q') end = len - 1;
    else {
      const uint8_t *nul = memchr(m + 5, 0, len - 5); // the statement's name
      if (nul == NULL) return true;
      start = (size_t)(nul - m) + 1;
      const uint8_t *text_end = memchr(m + start, 0, len - start);
      end = text_end == NULL ? len : (size_t)(text_end - m);
    }
    return pooling_hit(m, start, end);
  }
  return false;
}

static void poll_cb(uv_poll_t *h, int status, int events);
static void hub_server_cb(uv_poll_t *h, int status, int events);
static void hub_tx_end(relay_t *r);
static void waiting_readable(relay_t *r);
static void hub_server_unasked(relay_t *r);
static bool between(const relay_t *r);
static void hub_server_used(relay_t *r, const named_t *e);

// ---- Waiting for the next event inside the callback ------------------------------------------------------
// Every wakeup of Node's loop runs its whole iteration (timers, Node's check phase with a HandleScope and a
// microtask checkpoint, closing handles) even when the relay's callback did all there was to do: ~0.7 us each,
// two per transaction at one client (perf: Node's and libc's share of the pooler's time fell from 15.5% to 11.6%),
// where pgBouncer's libevent runs its callback and sleeps. A process whose loop is the relay's
// (ownLoop, the CLI) lets the relay's callback go on waiting on libuv's own epoll set: an event for one of the
// relay's polls is handed to its callback right there, as libuv would; anything else (a JS socket, a signal,
// a timer coming due, a thread's message, work queued for the loop) returns to libuv, which sees it again
// since libuv's epoll is level-triggered. Linux only (libuv's epoll set names each fd in its data).
typedef struct watched {
  uv_poll_t *h; // NULL: none of the relay's polls is started on this fd (its callback: h->poll_cb)
  int events;
} watched_t;
// One thread-local for all of it: each access to one from a shared object is a call (__tls_get_addr).
typedef struct waits {
  watched_t *fds; // by fd
  int n;
  bool on;      // ownLoop() was called on this thread's loop
  bool waiting; // in wait_here (the callbacks it runs do not wait themselves)
  bool js_ran;  // a callback called into JS
} waits_t;
static _Thread_local waits_t waits;

static void poll_watch(uv_poll_t *h, int events, uv_poll_cb cb) {
  uv_poll_start(h, events, cb);
  waits_t *w = &waits;
  uv_os_fd_t fd;
  if (!w->on || uv_fileno((uv_handle_t *)h, &fd) != 0 || fd < 0) return;
  if (fd >= w->n) {
    int n = fd < 64 ? 128 : fd * 2;
    watched_t *grown = realloc(w->fds, (size_t)n * sizeof *grown);
    if (grown == NULL) return; // its events just go back to libuv
    memset(grown + w->n, 0, (size_t)(n - w->n) * sizeof *grown);
    w->fds = grown;
    w->n = n;
  }
  w->fds[fd] = (watched_t){.h = h, .events = events};
}

static void poll_unwatch(uv_poll_t *h) {
  waits_t *w = &waits;
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)h, &fd) == 0 && fd >= 0 && fd < w->n && w->fds[fd].h == h) w->fds[fd].h = NULL;
  uv_poll_stop(h);
}

static void wait_here(uv_loop_t *loop) {
#ifdef __linux__
  waits_t *w = &waits;
  if (!w->on || w->waiting) return;
  if (w->js_ran) { // the event that called us went to JS: the loop must go round (microtasks, timers, immediates)
    w->js_ran = false;
    return;
  }
  w->waiting = true;
  struct epoll_event ev[64];
  for (bool back = false; !back;) {
    // 0: libuv has work of its own (idle or closing handles, pending callbacks, a poll to change, uv_stop).
    int timeout = uv_backend_timeout(loop);
    if (timeout == 0) break;
    if (timeout > 0) { // to the next timer, from the loop's time (taken when its epoll returned)
      uint64_t now = uv_hrtime() / 1000000, due = uv_now(loop) + (uint64_t)timeout;
      if (now >= due) break;
      timeout = (int)(due - now);
    }
    int n = epoll_wait(uv_backend_fd(loop), ev, 64, timeout);
    if (n <= 0) break; // a timer is due, or a signal came: libuv's turn
    for (int i = 0; i < n && !w->js_ran; i++) {
      int fd = ev[i].data.fd;
      uint32_t e = ev[i].events;
      if (fd < 0 || fd >= w->n || w->fds[fd].h == NULL || (e & (EPOLLERR | EPOLLHUP))) {
        back = true; // not the relay's, or an error or hang-up, which libuv reports in its own way
        continue;
      }
      int events = (((e & EPOLLIN) ? UV_READABLE : 0) | ((e & EPOLLOUT) ? UV_WRITABLE : 0)) & w->fds[fd].events;
      if (events != 0) w->fds[fd].h->poll_cb(w->fds[fd].h, 0, events);
    }
    back = back || w->js_ran; // the rest of these events are still ready for libuv
  }
  w->waiting = false;
  w->js_ran = false;
#else
  (void)loop;
#endif
}

static void set_events(relay_t *r, side_t *x, side_t *other) {
  if (!r->running || x->poll == NULL) return;
  // Read a side only while what it sent last is all written to the other: backpressure both ways.
  int ev = (other->out_len > other->out_off ? 0 : UV_READABLE) | (x->out_len > x->out_off ? UV_WRITABLE : 0);
  // A queued client is read on (its poll left as it is: see hub_detach) until c.in holds as much as a read takes.
  if (r->queued && x == &r->c && x->in_len >= IN_CAP / 2) ev &= ~UV_READABLE;
  if (ev == x->events && x->polling) return;
  x->events = ev;
  if (ev == 0) {
    if (x->polling) poll_unwatch(x->poll);
    x->polling = false;
  } else {
    poll_watch(x->poll, ev, x->poll == &x->own ? poll_cb : hub_server_cb);
    x->polling = true;
  }
}

// Room for one more log entry (the log grows on demand, up to LOG_MAX).
static bool log_room(relay_t *r) {
  if (r->log_len < r->log_cap) return true;
  if (r->log_cap >= LOG_MAX) return false;
  size_t cap = r->log_cap ? r->log_cap * 2 : 64;
  uint8_t *grown = realloc(r->log, cap);
  if (grown == NULL) return false;
  r->log = grown;
  r->log_cap = cap;
  return true;
}

// The messages that move the request tracker (tracker.ts); the rest (rows, copy data, notices,
// notifications, Flush) are not logged, so a large result adds three entries, not one per row.
static bool tracked(bool client, uint8_t code) {
  return code != 0 && strchr(client ? "PBDECQFScf" : "ZGW123nTCIs", code) != NULL;
}

// Most bytes of an exchange kept (a Parse, Binds, Describes, one Execute): a longer one is not run again.
#define KEPT_MAX (1 << 20)

// Appends a whole message to what is kept; false (and nothing kept) when it cannot.
static bool keep_bytes(relay_t *r, const uint8_t *m, size_t len) {
  size_t need = r->kept_len + len;
  if (need > KEPT_MAX) {
    r->kept_len = 0;
    return false;
  }
  if (need > r->kept_cap) {
    uint8_t *grown = realloc(r->kept, need);
    if (grown == NULL) {
      r->kept_len = 0;
      return false;
    }
    r->kept = grown;
    r->kept_cap = need;
  }
  memcpy(r->kept + r->kept_len, m, len);
  r->kept_len = need;
  return true;
}

// A client message JS must read, whether it comes while the client is relayed or while it waits in a hub:
// Terminate, a Query under disable_pqexec, a Query or Parse that may call steadytext (or too large to tell).
static bool client_needs_js(const relay_t *r, const uint8_t *m, size_t len, bool whole) {
  uint8_t code = m[0];
  return code == 'X' || (code == 'Q' && r->no_query) || ((code == 'Q' || code == 'P') && (!whole || mentions_steadytext(m, 5, len)));
}

// Whether a message may be forwarded without JS (0), or why not; counts and logs it if so. `whole`: the
// message is all in the buffer (else it is too large to hold, and may only be streamed if JS need not read it).
// *renamed: a Bind or Describe to forward under the statement's server-side name (the caller rewrites it).
static int accept_message(relay_t *r, bool client, const uint8_t *m, size_t len, bool whole, named_t **renamed) {
  uint8_t code = m[0];
  *renamed = NULL;
  if (client) {
    if (client_needs_js(r, m, len, whole)) return EXIT_CLIENT_MESSAGE;
    if (code == 'Q' && r->fence_ro && mentions_only(m, 5, len)) return EXIT_CLIENT_MESSAGE;
    if (r->pool && pool_exit(r, m, len, whole, renamed)) return EXIT_CLIENT_MESSAGE;
  } else if (code == 'S' || code == 'E' || (code == 'Z' && (!whole || len < 6 || (r->fence && m[5] == 'T') || (r->pool & POOL_STATEMENT)))) {
    return EXIT_SERVER_MESSAGE;
  } else if (code == 'N' && (!whole || mentions_steadytext(m, 5, len))) {
    return EXIT_SERVER_MESSAGE; // perhaps an in-band callback request (interceptor.ts notice)
  }
  if (client && r->keep) {
    if (code == 'Q' || (code == 'P' && !r->kept_open)) {
      r->kept_len = 0;
      r->kept_t = 0;
      r->kept_open = false;
      if (whole && r->pending_sync == 0 && r->since_sync == 0 && r->status == 'I' && (code == 'Q' || m[5] == 0) && keep_bytes(r, m, len))
        r->kept_open = code == 'P';
    } else if (r->kept_open) {
      // A renamed message is not kept: JS runs a kept exchange again through its own renaming, under client names.
      if (whole && *renamed == NULL && (code == 'B' || code == 'D' || code == 'E' || code == 'S') && keep_bytes(r, m, len)) {
        if (code == 'S') r->kept_open = false;
      } else {
        r->kept_len = 0;
        r->kept_open = false;
      }
    }
  } else if (!client && r->kept_len > 0) {
    // Part of the answer goes to the client: beyond a Query's RowDescription, or an exchange's answers before
    // its rows (which a rerun's would repeat, and JS drops), the exchange cannot run again unseen.
    if (r->kept[0] == 'P' && code != 0 && strchr("12tTn", code) != NULL) r->kept_t++;
    else if (r->kept[0] == 'Q' && code == 'T' && whole && r->kept_t == 0) r->kept_t = len;
    else {
      r->kept_len = 0;
      r->kept_open = false;
    }
  }
  if (tracked(client, code)) {
    // A full log stops here, before the message: JS must be able to replay everything forwarded.
    if (!log_room(r)) return EXIT_LOG_FULL;
    r->log[r->log_len++] = client ? code : (uint8_t)(code | 0x80);
  }
  if (*renamed != NULL) {
    (*renamed)->uses++;
    if (r->hub != NULL) hub_server_used(r, *renamed);
    if (code == 'B') r->binds++;
  }
  if (client && r->pool && !r->q_open) {
    r->q_open = true;
    r->q_start = uv_hrtime();
    r->queries++;
    if (!r->x_open) {
      r->x_open = true;
      r->x_start = r->q_start;
      r->xacts++;
    }
  }
  if (client) {
    switch (code) {
      case 'Q':
      case 'F':
      case 'S':
        r->pending_sync++;
        r->since_sync = 0;
        break;
      case 'P':
      case 'B':
      case 'D':
      case 'E':
      case 'C':
        r->since_sync++;
        break;
    }
  } else if (code == 'Z') {
    if (r->pending_sync > 0) r->pending_sync--;
    r->status = m[5];
    if (r->q_open && r->pending_sync == 0 && r->since_sync == 0) {
      uint64_t now = uv_hrtime();
      r->q_ns += now - r->q_start;
      r->q_open = false;
      if (r->x_open && r->status == 'I') {
        r->x_ns += now - r->x_start;
        r->x_open = false;
      }
    }
  }
  return 0;
}

static void finish(relay_t *r, int reason, int err);

// tcp_socket_buffer (0: unset): the largest send(2), for the reason relay.ts's sendPiece gives.
static int send_piece = 0;
static size_t piece(size_t n) { return send_piece > 0 && n > (size_t)send_piece ? (size_t)send_piece : n; }

// Writes bytes to side y; what the kernel does not take waits in y->out.
static bool send_to(relay_t *r, side_t *y, const uint8_t *p, size_t n) {
  size_t done = 0;
  if (y->out_len == y->out_off) {
    while (done < n) {
      ssize_t w = send(y->fd, p + done, piece(n - done), MSG_NOSIGNAL);
      if (w > 0) {
        done += (size_t)w;
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      finish(r, y == &r->c ? EXIT_CLIENT_ERROR : EXIT_SERVER_ERROR, errno);
      return false;
    }
  }
  if (done == n) return true;
  size_t rest = n - done;
  if (y->out_off > 0) {
    memmove(y->out, y->out + y->out_off, y->out_len - y->out_off);
    y->out_len -= y->out_off;
    y->out_off = 0;
  }
  uint8_t *grown = realloc(y->out, y->out_len + rest);
  if (grown == NULL) {
    finish(r, y == &r->c ? EXIT_CLIENT_ERROR : EXIT_SERVER_ERROR, ENOMEM);
    return false;
  }
  y->out = grown;
  memcpy(y->out + y->out_len, p + done, rest);
  y->out_len += rest;
  return true;
}

// Keeps bytes that could not be forwarded yet (a partial message, or the one the relay stopped at).
static bool keep(relay_t *r, side_t *x, const uint8_t *p, size_t n) {
  if (n == 0) {
    if (x->in_cap > 4096) { // a large partial message went through: do not hold its room while idle
      free(x->in);
      x->in = NULL;
      x->in_cap = 0;
    }
    x->in_len = 0;
    return true;
  }
  if (n > x->in_cap) {
    uint8_t *grown = realloc(x->in, n);
    if (grown == NULL) return false;
    x->in = grown;
    x->in_cap = n;
  }
  memmove(x->in, p, n);
  x->in_len = n;
  return true;
}

// Room for `need` bytes in renamed_out.
static bool renamed_room(size_t need) {
  if (need <= renamed_cap) return true;
  size_t cap = need > 2 * renamed_cap ? need : 2 * renamed_cap;
  uint8_t *grown = realloc(renamed_out, cap);
  if (grown == NULL) return false;
  renamed_out = grown;
  renamed_cap = cap;
  return true;
}

// The watch (relay_t.watch) after a client message was forwarded as `m`: begun by a renamed message sent while
// nothing was outstanding (`clean`), then each message that follows is added, until the session is idle again
// (readable) or more follows than JS would run again.
static void watch_note(relay_t *r, const uint8_t *m, size_t len, const named_t *renamed, bool clean) {
  if (renamed != NULL && clean) {
    r->watch_len = 0;
    r->watch_first = len;
    r->watch_entry = (int32_t)(renamed - r->named);
  } else if (r->watch_entry < 0) {
    return;
  } else if (r->watch_len + len > r->watch_first + WATCH_REST) {
    r->watch_entry = -1;
    return;
  }
  size_t need = r->watch_len + len;
  if (need > r->watch_cap) {
    uint8_t *grown = realloc(r->watch, need);
    if (grown == NULL) {
      r->watch_entry = -1; // JS cannot run it again: the client gets the error
      return;
    }
    r->watch = grown;
    r->watch_cap = need;
  }
  memcpy(r->watch + r->watch_len, m, len);
  r->watch_len = need;
}

static void forward(relay_t *r, side_t *x, side_t *y, size_t total);

// Reads what side x has and forwards every whole message that needs no JS to the other side.
static void readable(relay_t *r, side_t *x, side_t *y) {
  bool client = x == &r->c;
  int error_exit = client ? EXIT_CLIENT_ERROR : EXIT_SERVER_ERROR;
  // Cannot happen (what is kept is part of a message that fits; larger ones are streamed or go to JS), but
  // a read of 0 bytes would look like the end of the stream.
  if (x->in_len >= IN_CAP) return finish(r, client ? EXIT_CLIENT_MESSAGE : EXIT_SERVER_MESSAGE, 0);
  if (scratch == NULL && (scratch = malloc(IN_CAP)) == NULL) return finish(r, error_exit, ENOMEM);
  size_t have = x->in_len;
  if (have > 0) memcpy(scratch, x->in, have);
  ssize_t n;
  do n = recv(x->fd, scratch + have, IN_CAP - have, 0);
  while (n < 0 && errno == EINTR);
  if (n == 0) return finish(r, client ? EXIT_CLIENT_EOF : EXIT_SERVER_EOF, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    return finish(r, error_exit, errno);
  }
  x->bytes_read += (uint64_t)n;
  forward(r, x, y, have + (size_t)n);
}

// Forwards every whole message of the `total` bytes in scratch that needs no JS to the other side.
static void forward(relay_t *r, side_t *x, side_t *y, size_t total) {
  bool client = x == &r->c;
  int error_exit = client ? EXIT_CLIENT_ERROR : EXIT_SERVER_ERROR;
  size_t pos = 0;
  int stop = 0;
  if (x->skip > 0) { // the rest of a large message (nothing was kept aside meanwhile)
    pos = x->skip < total ? x->skip : total;
    x->skip -= pos;
  }
  bool naming = client && r->named_n > 0;
  // Once a message is renamed, what is forwarded is built in renamed_out: up to out_from, scratch is in it.
  bool renaming = false;
  size_t out_len = 0, out_from = 0;
  named_t *renamed;
  while (total - pos >= 5) {
    const uint8_t *m = scratch + pos;
    uint32_t len = ((uint32_t)m[1] << 24) | ((uint32_t)m[2] << 16) | ((uint32_t)m[3] << 8) | m[4];
    // Impossible lengths are JS's to refuse.
    if (len < 4 || (client && len > r->max_message)) {
      stop = client ? EXIT_CLIENT_MESSAGE : EXIT_SERVER_MESSAGE;
      break;
    }
    if ((size_t)len + 1 > IN_CAP) {
      // Too large to hold: forwarded as it arrives if JS need not read it, else JS takes it whole.
      if (renaming && !renamed_room(out_len + (total - out_from))) {
        stop = EXIT_CLIENT_MESSAGE;
        break;
      }
      if ((stop = accept_message(r, client, m, 0, false, &renamed)) != 0) break;
      if (naming) r->watch_entry = -1; // not kept whole: the exchange cannot be run again
      x->skip = (size_t)len + 1 - (total - pos);
      pos = total;
      break;
    }
    size_t mlen = (size_t)len + 1;
    if (total - pos < mlen) break;
    // Room for a rename before the message is accepted: once it is, it must be forwarded.
    if (naming && !renamed_room(out_len + (pos - out_from) + mlen + r->named_grow)) {
      stop = EXIT_CLIENT_MESSAGE;
      break;
    }
    bool clean = r->pending_sync == 0 && r->since_sync == 0;
    if ((stop = accept_message(r, client, m, mlen, true, &renamed)) != 0) break;
    const uint8_t *sent = m;
    size_t sent_len = mlen;
    if (renamed != NULL) {
      memcpy(renamed_out + out_len, scratch + out_from, pos - out_from);
      out_len += pos - out_from;
      sent = renamed_out + out_len;
      sent_len = put_renamed(renamed_out + out_len, m, mlen, renamed);
      out_len += sent_len;
      out_from = pos + mlen;
      renaming = true;
    }
    if (naming) watch_note(r, sent, sent_len, renamed, clean);
    pos += mlen;
  }
  // What is not forwarded is kept first: an exit while writing must still hand it to JS.
  if (!keep(r, x, scratch + pos, total - pos)) return finish(r, error_exit, ENOMEM);
  if (renaming) {
    memcpy(renamed_out + out_len, scratch + out_from, pos - out_from);
    if (!send_to(r, y, renamed_out, out_len + (pos - out_from))) return;
  } else if (pos > 0 && !send_to(r, y, scratch, pos)) {
    return;
  }
  if (r->pending_sync == 0 && r->since_sync == 0) {
    r->log_len = 0;
    r->watch_entry = -1; // its exchange was answered
  }
  if (stop) return finish(r, stop, 0);
  set_events(r, x, y);
  set_events(r, y, x);
  if (!client && r->hub != NULL) hub_tx_end(r);
}

static void writable(relay_t *r, side_t *y, side_t *x) {
  while (y->out_off < y->out_len) {
    ssize_t w = send(y->fd, y->out + y->out_off, piece(y->out_len - y->out_off), MSG_NOSIGNAL);
    if (w > 0) {
      y->out_off += (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return finish(r, y == &r->c ? EXIT_CLIENT_ERROR : EXIT_SERVER_ERROR, errno);
  }
  if (y->out_off == y->out_len) {
    // Backpressure is over: give the memory back.
    free(y->out);
    y->out = NULL;
    y->out_off = y->out_len = 0;
  }
  set_events(r, y, x);
  set_events(r, x, y);
}

static void side_event(relay_t *r, bool client, int status, int events) {
  if (!r->running) return;
  side_t *x = client ? &r->c : &r->s;
  side_t *y = client ? &r->s : &r->c;
  if (status < 0) return finish(r, client ? EXIT_CLIENT_ERROR : EXIT_SERVER_ERROR, -status);
  if (events & UV_WRITABLE) {
    writable(r, x, y);
    if (!r->running) return;
  }
  if (!(events & UV_READABLE)) return;
  if (client && r->hub != NULL && r->hs == NULL) waiting_readable(r);
  else if (!client && r->hub != NULL && between(r)) hub_server_unasked(r);
  else readable(r, x, y);
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  relay_t *r = (relay_t *)h->data;
  uv_loop_t *loop = h->loop; // read first: the event may close h
  side_event(r, h == r->c.poll, status, events);
  wait_here(loop);
}

// ---- JS interface -----------------------------------------------------------------------------------

static napi_value buffer_copy(napi_env env, const uint8_t *p, size_t n) {
  napi_value v;
  void *data;
  napi_create_buffer_copy(env, n, n ? p : (const uint8_t *)"", &data, &v);
  return v;
}

static napi_value number(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

// Pooling's counts: [requests, transactions, their microseconds, the open request's and transaction's
// microseconds so far (-1: none open), Binds renamed].
static napi_value pool_counts(napi_env env, relay_t *r) {
  uint64_t now = (r->q_open || r->x_open) ? uv_hrtime() : 0;
  napi_value a;
  napi_create_array_with_length(env, 7, &a);
  napi_set_element(env, a, 0, number(env, (double)r->queries));
  napi_set_element(env, a, 1, number(env, (double)r->xacts));
  napi_set_element(env, a, 2, number(env, (double)(r->q_ns / 1000)));
  napi_set_element(env, a, 3, number(env, (double)(r->x_ns / 1000)));
  napi_set_element(env, a, 4, number(env, r->q_open ? (double)((now - r->q_start) / 1000) : -1));
  napi_set_element(env, a, 5, number(env, r->x_open ? (double)((now - r->x_start) / 1000) : -1));
  napi_set_element(env, a, 6, number(env, (double)r->binds));
  return a;
}

// [reason, errno, toClient, toServer, fromClient, fromServer, log, status, bytesFromClient, bytesFromServer,
//  skipClient, skipServer, kept Query or exchange or null, what of its answer was forwarded (relay_t.kept_t),
//  pool_counts, uses of each renamed statement (start's names) or null, the watched exchange or null, its entry,
//  the server fd the session holds (a hub member's may differ from the one it entered with; -1: none)]
static napi_value outcome(napi_env env, relay_t *r) {
  napi_value a, kept, uses, watch;
  napi_create_array_with_length(env, 19, &a);
  if (r->kept_len > 0) kept = buffer_copy(env, r->kept, r->kept_len);
  else napi_get_null(env, &kept);
  if (r->named_n > 0) {
    napi_create_array_with_length(env, r->named_n, &uses);
    for (uint32_t i = 0; i < r->named_n; i++) napi_set_element(env, uses, i, number(env, r->named[i].uses));
  } else {
    napi_get_null(env, &uses);
  }
  bool watching = r->watch_entry >= 0;
  if (watching) watch = buffer_copy(env, r->watch, r->watch_len);
  else napi_get_null(env, &watch);
  napi_value v[19] = {
    number(env, r->reason),
    number(env, r->err),
    buffer_copy(env, r->c.out + r->c.out_off, r->c.out_len - r->c.out_off),
    buffer_copy(env, r->s.out + r->s.out_off, r->s.out_len - r->s.out_off),
    buffer_copy(env, r->c.in, r->c.in_len),
    buffer_copy(env, r->s.in, r->s.in_len),
    buffer_copy(env, r->log, r->log_len),
    number(env, r->status),
    number(env, (double)r->c.bytes_read),
    number(env, (double)r->s.bytes_read),
    number(env, (double)r->c.skip),
    number(env, (double)r->s.skip),
    kept,
    number(env, r->kept_len > 0 ? (double)r->kept_t : 0),
    pool_counts(env, r),
    uses,
    watch,
    number(env, watching ? r->watch_entry : -1),
    number(env, r->hub != NULL ? r->out_sfd : r->s.fd),
  };
  for (uint32_t i = 0; i < 19; i++) napi_set_element(env, a, i, v[i]);
  return a;
}

// Stops polling and releases the sockets; they stay open (JS owns them).
static void hub_leave(relay_t *r);

static void release(relay_t *r, int reason, int err) {
  r->running = false;
  r->reason = reason;
  r->err = err;
  if (r->hub != NULL) hub_leave(r); // its server (if any) leaves the hub with it
  if (r->c.polling) poll_unwatch(r->c.poll);
  if (r->s.polling && r->s.poll != NULL) poll_unwatch(r->s.poll);
  r->c.polling = r->s.polling = false;
  uv_close((uv_handle_t *)&r->c.own, on_close);
  if (r->hub == NULL) uv_close((uv_handle_t *)&r->s.own, on_close);
}

// The exit callback is called at most once; after an exit (or stop) it is let go.
static void drop_callback(napi_env env, relay_t *r) {
  if (r->on_exit == NULL) return;
  napi_delete_reference(env, r->on_exit);
  napi_async_destroy(env, r->async);
  r->on_exit = NULL;
}

// Exit from inside a poll callback: tell JS.
static void finish(relay_t *r, int reason, int err) {
  if (!r->running) return;
  release(r, reason, err);
  napi_env env = r->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, arg, result;
  napi_get_reference_value(env, r->on_exit, &fn);
  napi_get_global(env, &recv); // napi_make_callback wants an object
  arg = outcome(env, r);
  // The callback catches its own errors; one escaping would be reported by Node as uncaught.
  waits.js_ran = true;
  napi_make_callback(env, r->async, recv, fn, 1, &arg, &result);
  drop_callback(env, r);
  napi_close_handle_scope(env, scope);
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  relay_t *r = (relay_t *)data;
  if (r->running) {
    // Dropped while running (cannot happen through relay.ts); never leave polls on freed memory.
    release(r, EXIT_STOPPED, 0);
  }
  drop_callback(env, r);
  r->finalized = true;
  maybe_free(r);
}

static relay_t *unwrap(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return (relay_t *)p;
}

static napi_value throw_error(napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return NULL;
}

// The relay a call's first argument names, or NULL with a JS error thrown.
static relay_t *handle_arg(napi_env env, napi_callback_info info, const char *usage) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  relay_t *r = argc ? unwrap(env, argv[0]) : NULL;
  if (r == NULL) throw_error(env, usage);
  return r;
}

// The renamed statements from start's names (client\0server\0 for each, client names distinct); false when malformed.
static bool set_names(relay_t *r, const uint8_t *p, size_t len) {
  if (len == 0) return true;
  if (p[len - 1] != 0) return false;
  uint32_t strings = 0;
  for (size_t i = 0; i < len; i++) strings += p[i] == 0;
  if (strings % 2 != 0) return false;
  uint32_t n = strings / 2, size = 8;
  while (size < 2 * n) size *= 2;
  r->names_buf = malloc(len);
  r->named = calloc(n, sizeof(named_t));
  r->slots = calloc(size, sizeof(uint32_t));
  if (r->names_buf == NULL || r->named == NULL || r->slots == NULL) return false;
  memcpy(r->names_buf, p, len);
  r->slots_mask = size - 1;
  const uint8_t *at = r->names_buf;
  for (uint32_t k = 0; k < n; k++) {
    named_t *e = &r->named[k];
    e->client = at;
    e->client_len = (uint32_t)strlen((const char *)at);
    at += e->client_len + 1;
    e->server = at;
    e->server_len = (uint32_t)strlen((const char *)at);
    at += e->server_len + 1;
    if (e->client_len == 0 || e->server_len == 0) return false;
    if (e->server_len > e->client_len && e->server_len - e->client_len > r->named_grow) r->named_grow = e->server_len - e->client_len;
    uint32_t i = name_hash(e->client, e->client_len) & r->slots_mask;
    for (; r->slots[i] != 0; i = (i + 1) & r->slots_mask) {
      const named_t *o = &r->named[r->slots[i] - 1];
      if (o->client_len == e->client_len && memcmp(o->client, e->client, e->client_len) == 0) return false;
    }
    r->slots[i] = k + 1;
  }
  r->named_n = n;
  return true;
}

// poolFlags (start's, hubEnter's): POOL_* bits; no_query apart, since a non-zero pool also means "lent".
static void set_pool(relay_t *r, uint32_t flags) {
  r->pool = flags & (POOL_LEND | POOL_NAMED | POOL_STATEMENT);
  r->no_query = (flags & POOL_NO_QUERY) != 0;
}

// keepStatus (start's, hubEnter's): the transaction status to keep Queries from, and how JS fences blocks; 0 (or
// anything malformed): nothing kept.
static void set_keep(relay_t *r, uint32_t keep) {
  if ((keep & 0xff) == 0 || keep >= 1024) return;
  r->keep = true;
  r->fence = (keep & 0x100) != 0;
  r->fence_ro = (keep & 0x200) != 0;
  r->status = (uint8_t)(keep & 0xff);
}

// start(clientFd, serverFd, maxMessage, onExit[, keepStatus[, poolFlags[, names]]]) -> handle. keepStatus: the
// session's transaction status as a character code when JS wants Queries kept (see relay_t.kept), else 0; plus
// 0x100 when JS fences statements inside transaction blocks (relay_t.fence), or 0x200 only those of blocks that may
// be read-only (relay_t.fence_ro). poolFlags: POOL_* (a lent pooled
// connection). names: with POOL_NAMED, a Buffer of the statements the relay renames itself (named_t).
static napi_value js_start(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) return throw_error(env, "start(clientFd, serverFd, maxMessage, onExit)");
  int32_t cfd, sfd;
  uint32_t max;
  if (napi_get_value_int32(env, argv[0], &cfd) != napi_ok || napi_get_value_int32(env, argv[1], &sfd) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &max) != napi_ok || cfd < 0 || sfd < 0)
    return throw_error(env, "start: bad arguments");
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_error(env, "start: no event loop");

  relay_t *r = calloc(1, sizeof(relay_t));
  if (r == NULL) return throw_error(env, "start: out of memory");
  r->c.fd = cfd;
  r->s.fd = sfd;
  r->env = env;
  r->max_message = max;
  uint32_t keep = 0;
  if (argc >= 5 && napi_get_value_uint32(env, argv[4], &keep) == napi_ok) set_keep(r, keep);
  uint32_t pool = 0;
  if (argc >= 6 && napi_get_value_uint32(env, argv[5], &pool) == napi_ok) set_pool(r, pool);
  r->watch_entry = -1;
  void *names;
  size_t names_len;
  bool is_buffer = false;
  if ((r->pool & POOL_NAMED) && argc >= 7 && napi_is_buffer(env, argv[6], &is_buffer) == napi_ok && is_buffer &&
      napi_get_buffer_info(env, argv[6], &names, &names_len) == napi_ok && !set_names(r, names, names_len)) {
    r->finalized = true;
    maybe_free(r);
    return throw_error(env, "start: names must be client\\0server\\0 pairs of non-empty, distinct names");
  }
  r->c.poll = &r->c.own;
  r->s.poll = &r->s.own;
  int e1 = uv_poll_init(loop, &r->c.own, cfd);
  if (e1 != 0) {
    r->finalized = true;
    maybe_free(r);
    return throw_error(env, uv_strerror(e1));
  }
  r->c.own.data = r;
  r->open_handles++;
  int e2 = uv_poll_init(loop, &r->s.own, sfd);
  if (e2 != 0) {
    uv_close((uv_handle_t *)&r->c.own, on_close);
    r->finalized = true;
    return throw_error(env, uv_strerror(e2));
  }
  r->s.own.data = r;
  r->open_handles++;

  napi_value name, handle;
  napi_create_string_utf8(env, "pg-steadytext relay", NAPI_AUTO_LENGTH, &name);
  napi_create_reference(env, argv[3], 1, &r->on_exit);
  if (napi_create_external(env, r, finalize, NULL, &handle) != napi_ok) {
    release(r, EXIT_STOPPED, 0);
    napi_delete_reference(env, r->on_exit);
    r->on_exit = NULL;
    r->finalized = true;
    return throw_error(env, "start: cannot create handle");
  }
  napi_async_init(env, handle, name, &r->async);
  r->running = true;
  set_events(r, &r->c, &r->s);
  set_events(r, &r->s, &r->c);
  return handle;
}

// stop(handle) -> the outcome array, or null when the relay has already ended.
static napi_value js_stop(napi_env env, napi_callback_info info) {
  relay_t *r = handle_arg(env, info, "stop(handle)");
  if (r == NULL) return NULL;
  napi_value nul;
  napi_get_null(env, &nul);
  if (!r->running) return nul;
  release(r, EXIT_STOPPED, 0);
  napi_value out = outcome(env, r);
  drop_callback(env, r);
  return out;
}

// state(handle) -> [requests awaiting an answer (0 when idle), bytes held, bytesFromClient, bytesFromServer, status,
//                   bytes still to come of messages being streamed, pool_counts, the server fd held (-1: none)]
static napi_value js_state(napi_env env, napi_callback_info info) {
  relay_t *r = handle_arg(env, info, "state(handle)");
  if (r == NULL) return NULL;
  size_t held = r->c.in_len + r->s.in_len + (r->c.out_len - r->c.out_off) + (r->s.out_len - r->s.out_off);
  napi_value a;
  napi_create_array_with_length(env, 8, &a);
  napi_set_element(env, a, 0, number(env, (double)(r->pending_sync + r->since_sync)));
  napi_set_element(env, a, 1, number(env, (double)held));
  napi_set_element(env, a, 2, number(env, (double)r->c.bytes_read));
  napi_set_element(env, a, 3, number(env, (double)r->s.bytes_read));
  napi_set_element(env, a, 4, number(env, r->status));
  napi_set_element(env, a, 5, number(env, (double)(r->c.skip + r->s.skip)));
  napi_set_element(env, a, 6, pool_counts(env, r));
  napi_set_element(env, a, 7, number(env, r->s.fd)); // a hub member's: -1 while it holds none
  return a;
}

// ownLoop() -> [idle-time metrics off, the relay waits in its callbacks]: this thread's loop is the relay's
// (the CLI's processes; an application embedding the proxy keeps its loop as Node made it).
// Idle-time metrics: Node turns them on for every loop (performance.eventLoopUtilization); with them each poll
// first runs epoll with timeout 0 and, when nothing is ready, runs it again to sleep: an extra epoll_pwait on
// most wakeups, measured at 7% of the pooler's CPU per transaction with one client (pgBouncer polls once). libuv
// has no call to turn them off: the flag is the first field of the loop's private internal_fields (1.39 on),
// cleared only when it reads as exactly that flag, so another layout is left as it is.
// Waiting in the callbacks: wait_here.
static napi_value js_own_loop(napi_env env, napi_callback_info info) {
  (void)info;
  bool idle_off = false;
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) loop = NULL;
#if UV_VERSION_MAJOR == 1 && UV_VERSION_MINOR >= 39
  unsigned int version = uv_version(); // the running libuv's, which may be newer than these headers
  if (version >> 16 == 1 && (version >> 8 & 0xff) >= 39 && loop != NULL && loop->internal_fields != NULL) {
    unsigned int *flags = (unsigned int *)loop->internal_fields;
    if (*flags == (unsigned int)UV_METRICS_IDLE_TIME) *flags = 0;
    idle_off = *flags == 0;
  }
#endif
#ifdef __linux__
  waits.on = loop != NULL;
#endif
  napi_value a, v;
  napi_create_array_with_length(env, 2, &a);
  napi_get_boolean(env, idle_off, &v);
  napi_set_element(env, a, 0, v);
  napi_get_boolean(env, waits.on, &v);
  napi_set_element(env, a, 1, v);
  return a;
}

// peer(fd) -> [uid, gid, pid] of the process at the other end of a Unix socket (pid 0 where the system does not
// tell), or null. Node has no call for it, and pgBouncer's console login of the user running it (and hba's peer
// method) rest on it, as does the pid application_name_add_host shows.
static napi_value js_peer(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], nul;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_null(env, &nul);
  int32_t fd;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return nul;
  double uid, gid, pid = 0;
#if defined(SO_PEERCRED)
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return nul;
  uid = cred.uid;
  gid = cred.gid;
  pid = cred.pid;
#else
  uid_t u;
  gid_t g;
  if (getpeereid(fd, &u, &g) != 0) return nul;
  uid = u;
  gid = g;
#endif
  napi_value a;
  napi_create_array_with_length(env, 3, &a);
  napi_set_element(env, a, 0, number(env, uid));
  napi_set_element(env, a, 1, number(env, gid));
  napi_set_element(env, a, 2, number(env, pid));
  return a;
}

// tune(fd, keepalive, keepidle, keepintvl, keepcnt, userTimeoutMs, sendBuffer, receiveBuffer) -> 0, or -errno of
// the first option the kernel refused: pgBouncer's tcp_* settings on a socket (keepalive < 0 leaves keepalive
// alone; 0 leaves any other option at the system's default, as there). Node sets keepalive and its idle time only.
// A receive buffer is for a listening socket, whose connections inherit it before their handshake: shrunk on an
// established connection, it is below the window already advertised, and the kernel drops what then arrives.
static napi_value js_tune(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t v[8] = {-1, -1, 0, 0, 0, 0, 0, 0};
  for (size_t i = 0; i < argc && i < 8; i++) napi_get_value_int32(env, argv[i], &v[i]);
  int fd = v[0], rc = 0;
  if (fd < 0) return number(env, -EBADF);
#define TUNE(level, opt, val)                                                   \
  do {                                                                          \
    int x = (val);                                                              \
    if (rc == 0 && setsockopt(fd, level, opt, &x, sizeof(x)) != 0) rc = -errno; \
  } while (0)
  if (v[1] >= 0) TUNE(SOL_SOCKET, SO_KEEPALIVE, v[1] != 0);
#if defined(TCP_KEEPIDLE)
  if (v[1] > 0 && v[2] > 0) TUNE(IPPROTO_TCP, TCP_KEEPIDLE, v[2]);
#endif
#if defined(TCP_KEEPINTVL)
  if (v[1] > 0 && v[3] > 0) TUNE(IPPROTO_TCP, TCP_KEEPINTVL, v[3]);
#endif
#if defined(TCP_KEEPCNT)
  if (v[1] > 0 && v[4] > 0) TUNE(IPPROTO_TCP, TCP_KEEPCNT, v[4]);
#endif
#if defined(TCP_USER_TIMEOUT)
  if (v[5] > 0) TUNE(IPPROTO_TCP, TCP_USER_TIMEOUT, v[5]);
#endif
  if (v[6] > 0) TUNE(SOL_SOCKET, SO_SNDBUF, v[6]);
  if (v[6] >= 0) send_piece = v[6];
  if (v[7] > 0) TUNE(SOL_SOCKET, SO_RCVBUF, v[7]);
#undef TUNE
  return number(env, rc);
}

// send(fd, buffer) -> bytes the kernel took (0: it would block), or -errno. The pooler's writes of a few
// hundred bytes each: one syscall from here costs far less than Node's stream layers per write.
static napi_value js_send(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  void *data;
  size_t len;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok)
    return throw_error(env, "send(fd, buffer)");
  ssize_t w;
  do w = send(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (w < 0 && errno == EINTR);
  if (w < 0) return number(env, errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -(double)errno);
  return number(env, (double)w);
}

// ---- the hub: a pool's server connections handed from client to client in C --------------------------------
// Under contention (more clients than connections) every transaction's end would otherwise go through JS: the
// connection released, the next waiting client woken, its message read by Node. A hub does pgBouncer's loop
// for the clients and connections JS put in it (pooled-session.ts decides who may: no settings to replay, no
// statements SQL names, clean connections): a member relay holds a server or waits; at a transaction's end
// (ReadyForQuery 'I', nothing outstanding or half-read) its server goes straight to the oldest member whose next
// request has come (read whole into c.in first, so that one JS must see exits without taking a server), which
// forwards it at once. JS stays the authority: a member exits to JS as any relay does, with the server it holds
// then (outcome's server fd); JS takes servers back (want, take: at once when free or idle, else at their
// holder's transaction end, through the event callback), and reads members and counts when it needs them.
// Named statements: a member carries its client's table (named_t, as a lend's: client name -> server-side name)
// and each server the server-side names prepared on it when it came (prepared.ts); a Bind or Describe is renamed
// as a lend's is when the server the member holds then has the name, else the member exits to JS (which prepares
// it). What was renamed on each server is counted there and read by JS when the server leaves (hubUses: the
// connection's LRU).

#define EVENT_SERVER 1  // a server JS asked for left the hub
#define EVENT_STARVED 2 // clients queue and the hub has no server, or fewer than queued clients (at most every 10 ms)
#define EVENT_SPOKE 3   // a free or idle server spoke unasked or closed: it left the hub for JS to read

struct hserver {
  uv_poll_t poll; // data: the hserver; while held, its events are the holder's server side
  int fd;
  hub_t *hub;
  relay_t *holder; // NULL: free (polled for what a server says unasked, or its end)
  int events;      // what its poll watches while it is free or between holders (hub_detach)
  bool to_js;      // JS asked for it back: it goes at its holder's next transaction end
  // The server-side names of the statements prepared on it (hubEnter's, hubAdd's), found by hashing a name: slots
  // hold an index + 1. uses: the Binds and Describes renamed to each, for JS when the server leaves (hub_gone_t).
  uint64_t id; // unique in its hub (named_t.srv_id)
  uint8_t *names_buf;
  struct sname {
    const uint8_t *p;
    uint32_t len;
  } *names;
  uint32_t names_n, *slots, slots_mask;
  uint32_t *uses;
  bool used;
};

// A server that left the hub with statements renamed on it: their uses, until JS reads them (hubUses).
typedef struct {
  int fd;
  uint32_t n;
  uint32_t *uses;
} hub_gone_t;

struct hub {
  uv_idle_t kick; // forwards what queued clients sent, once they have a server (from the loop, never from a JS call)
  napi_env env;
  napi_ref on_event;
  napi_async_context async;
  hserver_t **srv;
  uint32_t n_srv, cap_srv;
  relay_t *whead, *wtail, *members, *rhead;
  uint32_t queued_n, members_n, js_want;
  // When JS's oldest waiter began waiting (uv_hrtime; 0: JS's needs come first): the two queues are served as one,
  // oldest first, so that neither the hub's clients nor JS's starve the other.
  uint64_t js_since;
  uint64_t handoffs, wait_ns, last_starved, next_id;
  hub_gone_t *gone;
  uint32_t gone_n, gone_cap;
  bool dispatching, again, finalized;
};

static uint64_t now_ns(void) { return uv_hrtime(); }

static void hub_emit(hub_t *hub, int kind, int fd) {
  napi_env env = hub->env;
  napi_handle_scope scope;
  if (hub->on_event == NULL || napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, args[2], result;
  napi_get_reference_value(env, hub->on_event, &fn);
  napi_get_global(env, &recv);
  args[0] = number(env, kind);
  args[1] = number(env, fd);
  waits.js_ran = true;
  napi_make_callback(env, hub->async, recv, fn, 2, args, &result);
  napi_close_handle_scope(env, scope);
}

static void free_hserver_names(hserver_t *hs) {
  free(hs->names_buf);
  free(hs->names);
  free(hs->slots);
  free(hs->uses);
}

static void free_hserver(uv_handle_t *h) {
  free_hserver_names(h->data);
  free(h->data);
}

// A server leaves the hub (JS owns it again); its holder, if any, was detached first. The uses of its statements
// wait for JS (hubUses); without room for them they are lost (the LRU is a little off, nothing more).
static void hub_drop_server(hub_t *hub, hserver_t *hs) {
  for (uint32_t i = 0; i < hub->n_srv; i++) {
    if (hub->srv[i] != hs) continue;
    hub->srv[i] = hub->srv[--hub->n_srv];
    break;
  }
  if (hs->used) {
    if (hub->gone_n == hub->gone_cap) {
      uint32_t cap = hub->gone_cap ? hub->gone_cap * 2 : 8;
      hub_gone_t *grown = realloc(hub->gone, cap * sizeof *grown);
      if (grown != NULL) {
        hub->gone = grown;
        hub->gone_cap = cap;
      }
    }
    if (hub->gone_n < hub->gone_cap) {
      hub->gone[hub->gone_n++] = (hub_gone_t){.fd = hs->fd, .n = hs->names_n, .uses = hs->uses};
      hs->uses = NULL;
    }
  }
  poll_unwatch(&hs->poll);
  uv_close((uv_handle_t *)&hs->poll, free_hserver);
}

// The server's statements from `name\0name\0...` (server-side names); false when malformed or out of memory.
static bool hserver_names(hserver_t *hs, const uint8_t *p, size_t len) {
  if (len == 0) return true;
  if (p[len - 1] != 0) return false;
  uint32_t n = 0;
  for (size_t i = 0; i < len; i++) n += p[i] == 0;
  uint32_t size = 8;
  while (size < 2 * n) size *= 2;
  hs->names_buf = malloc(len);
  hs->names = calloc(n, sizeof *hs->names);
  hs->slots = calloc(size, sizeof(uint32_t));
  hs->uses = calloc(n, sizeof(uint32_t));
  if (hs->names_buf == NULL || hs->names == NULL || hs->slots == NULL || hs->uses == NULL) return false;
  memcpy(hs->names_buf, p, len);
  hs->slots_mask = size - 1;
  const uint8_t *at = hs->names_buf;
  for (uint32_t k = 0; k < n; k++) {
    uint32_t l = (uint32_t)strlen((const char *)at);
    if (l == 0) return false;
    hs->names[k].p = at;
    hs->names[k].len = l;
    at += l + 1;
    uint32_t i = name_hash(hs->names[k].p, l) & hs->slots_mask;
    while (hs->slots[i] != 0) i = (i + 1) & hs->slots_mask; // a name twice: the first is found, the second unused
    hs->slots[i] = k + 1;
  }
  hs->names_n = n;
  return true;
}

// Whether the server member r holds has e's server-side name (remembered in e for this server).
static bool hub_server_has(relay_t *r, named_t *e) {
  hserver_t *hs = r->hs;
  if (e->srv_id == hs->id) return e->srv_idx >= 0;
  e->srv_id = hs->id;
  e->srv_idx = -1;
  if (hs->names_n == 0) return false;
  for (uint32_t i = name_hash(e->server, e->server_len) & hs->slots_mask;; i = (i + 1) & hs->slots_mask) {
    uint32_t k = hs->slots[i];
    if (k == 0) return false;
    const struct sname *x = &hs->names[k - 1];
    if (x->len == e->server_len && memcmp(x->p, e->server, x->len) == 0) {
      e->srv_idx = (int32_t)(k - 1);
      return true;
    }
  }
}

// A Bind or Describe of e went to the server r holds (accept_message; renamable checked it has e's name).
static void hub_server_used(relay_t *r, const named_t *e) {
  hserver_t *hs = r->hs;
  if (hs == NULL || e->srv_id != hs->id || e->srv_idx < 0) return;
  hs->uses[e->srv_idx]++;
  hs->used = true;
}

static hserver_t *hub_add_server(hub_t *hub, int fd, const uint8_t *names, size_t names_len) {
  if (hub->n_srv == hub->cap_srv) {
    uint32_t cap = hub->cap_srv ? hub->cap_srv * 2 : 16;
    hserver_t **grown = realloc(hub->srv, cap * sizeof *grown);
    if (grown == NULL) return NULL;
    hub->srv = grown;
    hub->cap_srv = cap;
  }
  hserver_t *hs = calloc(1, sizeof *hs);
  uv_loop_t *loop;
  if (hs == NULL) return NULL;
  if (!hserver_names(hs, names, names_len) || napi_get_uv_event_loop(hub->env, &loop) != napi_ok || uv_poll_init(loop, &hs->poll, fd) != 0) {
    free_hserver_names(hs);
    free(hs);
    return NULL;
  }
  hs->poll.data = hs;
  hs->fd = fd;
  hs->hub = hub;
  hs->id = ++hub->next_id;
  hub->srv[hub->n_srv++] = hs;
  return hs;
}

// Between transactions with nothing outstanding, half-read or unwritten toward the server, and the client's
// next request not begun: the server may change hands.
static bool between(const relay_t *r) {
  return r->hs != NULL && r->pending_sync == 0 && r->since_sync == 0 && r->status == 'I' && r->s.in_len == 0 && r->s.skip == 0 &&
         r->s.out_len == r->s.out_off && r->c.in_len == 0 && r->c.skip == 0;
}

// The member gives up its server (left free, unpolled: the caller places it) and waits for its next request.
// A server's poll is left as it is from holder to holder (libuv's uv_poll_start and uv_poll_stop each cost an
// epoll_ctl DEL, and a start an ADD: several per hand-off otherwise); hs->events says what it watches meanwhile.
static hserver_t *hub_detach(relay_t *r) {
  hserver_t *hs = r->hs;
  hs->events = r->s.polling ? r->s.events : 0;
  hs->holder = NULL;
  r->hs = NULL;
  r->s.fd = -1;
  r->s.poll = NULL;
  r->s.polling = false;
  r->s.events = 0;
  set_events(r, &r->c, &r->s);
  return hs;
}

static void hub_set_free(hserver_t *hs) {
  hs->holder = NULL;
  if (hs->events == UV_READABLE) return;
  poll_watch(&hs->poll, UV_READABLE, hub_server_cb);
  hs->events = UV_READABLE;
}

static void hub_kick_cb(uv_idle_t *h);

// `now`: called from the loop (a poll callback), where the member's request is forwarded at once; from a JS call
// it is forwarded from the kick instead (an exit would call JS back from inside JS).
static void hub_attach(relay_t *r, hserver_t *hs, bool now) {
  hub_t *hub = r->hub;
  hs->holder = r;
  hs->to_js = false;
  r->hs = hs;
  r->s.fd = hs->fd;
  r->s.poll = &hs->poll;
  r->s.polling = hs->events != 0;
  r->s.events = hs->events;
  set_events(r, &r->s, &r->c);
  set_events(r, &r->c, &r->s);
  if (now && r->c.in_len > 0 && r->c.skip == 0 && (scratch != NULL || (scratch = malloc(IN_CAP)) != NULL)) {
    size_t have = r->c.in_len;
    memcpy(scratch, r->c.in, have);
    forward(r, &r->c, &r->s, have);
    return;
  }
  if (r->c.in_len > 0 && !r->rqueued) {
    r->rqueued = true;
    r->rnext = hub->rhead;
    hub->rhead = r;
    uv_idle_start(&hub->kick, hub_kick_cb);
  }
}

static void hub_unqueue(relay_t *r) {
  hub_t *hub = r->hub;
  relay_t **p = &hub->whead, *prev = NULL;
  while (*p != NULL && *p != r) {
    prev = *p;
    p = &(*p)->wnext;
  }
  if (*p == r) {
    *p = r->wnext;
    if (hub->wtail == r) hub->wtail = prev;
    hub->queued_n--;
  }
  r->queued = false;
  r->wnext = NULL;
}

// A free server, or one an idle member holds (that member waits from now on); NULL: none.
static hserver_t *hub_idle_server(hub_t *hub) {
  for (uint32_t i = 0; i < hub->n_srv; i++)
    if (hub->srv[i]->holder == NULL) return hub->srv[i];
  for (uint32_t i = 0; i < hub->n_srv; i++) {
    relay_t *h = hub->srv[i]->holder;
    if (h->running && !h->rqueued && between(h)) return hub_detach(h);
  }
  return NULL;
}

// Does JS get the next server rather than the hub's oldest queued client (it asks, and waited longer)?
static bool js_first(const hub_t *hub) {
  return hub->js_want > 0 && (hub->whead == NULL || hub->js_since <= hub->whead->wait_start);
}

// Queued clients get the free and idle servers, oldest first. `may_emit`: called from the loop (not a JS call).
static void hub_dispatch(hub_t *hub, bool may_emit) {
  if (hub->dispatching) {
    hub->again = true;
    return;
  }
  hub->dispatching = true;
  do {
    hub->again = false;
    while (hub->whead != NULL && !js_first(hub)) {
      hserver_t *hs = hub_idle_server(hub);
      if (hs == NULL) break;
      relay_t *w = hub->whead;
      hub_unqueue(w);
      hub->handoffs++;
      hub->wait_ns += now_ns() - w->wait_start;
      hub_attach(w, hs, may_emit);
    }
    // Servers left free (an idle holder's, taken with nobody to take it) are watched for their end.
    for (uint32_t i = 0; i < hub->n_srv; i++)
      if (hub->srv[i]->holder == NULL) hub_set_free(hub->srv[i]);
  } while (hub->again);
  hub->dispatching = false;
  // With no server at all nothing here will serve the queue: JS is told at once. With fewer servers than queued
  // clients the pool may have room for more: JS is told, at most every 10 ms.
  if (hub->whead != NULL && may_emit) {
    uint64_t now = now_ns();
    if (hub->n_srv == 0 || (hub->queued_n > hub->n_srv && now - hub->last_starved > 10 * 1000 * 1000)) {
      hub->last_starved = now;
      hub_emit(hub, EVENT_STARVED, -1);
    }
  }
}

// At the end of forward() for the server side: the transaction is over; the server goes where it is wanted.
static void hub_tx_end(relay_t *r) {
  hub_t *hub = r->hub;
  if (!r->running || !between(r)) return;
  hserver_t *hs = r->hs;
  if (hs->to_js || js_first(hub)) {
    if (!hs->to_js) hub->js_want--;
    int fd = hs->fd;
    hub_detach(r);
    hub_drop_server(hub, hs);
    hub_emit(hub, EVENT_SERVER, fd);
    return;
  }
  if (hub->whead == NULL) return; // nobody waits: the member keeps it (lending)
  hub_detach(r); // free now: the oldest queued client takes it
  hub_dispatch(hub, true);
}

static void hub_enqueue(relay_t *r) {
  hub_t *hub = r->hub;
  r->queued = true;
  r->wait_start = now_ns();
  r->wnext = NULL;
  if (hub->wtail != NULL) hub->wtail->wnext = r;
  else hub->whead = r;
  hub->wtail = r;
  hub->queued_n++;
  set_events(r, &r->c, &r->s); // not read while queued: its request waits in c.in
  hub_dispatch(hub, true);
}

// A waiting member's client sent something: its request is read whole (up to IN_CAP) before it queues, so that
// one JS must see (a prefilter match, Terminate, an impossible length) exits to JS without taking a server.
static void waiting_readable(relay_t *r) {
  side_t *x = &r->c;
  if (scratch == NULL && (scratch = malloc(IN_CAP)) == NULL) return finish(r, EXIT_CLIENT_ERROR, ENOMEM);
  size_t have = x->in_len;
  if (have >= IN_CAP) return r->queued ? set_events(r, x, &r->s) : hub_enqueue(r); // cannot happen (see set_events)
  if (have > 0) memcpy(scratch, x->in, have);
  ssize_t n;
  do n = recv(x->fd, scratch + have, IN_CAP - have, 0);
  while (n < 0 && errno == EINTR);
  if (n == 0) return finish(r, EXIT_CLIENT_EOF, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    return finish(r, EXIT_CLIENT_ERROR, errno);
  }
  x->bytes_read += (uint64_t)n;
  size_t total = have + (size_t)n;
  if (!keep(r, x, scratch, total)) return finish(r, EXIT_CLIENT_ERROR, ENOMEM);
  if (r->queued) return set_events(r, x, &r->s); // more of a pipeline: forwarded once it has a server
  if (total < 5) return;
  const uint8_t *m = x->in;
  uint32_t len = ((uint32_t)m[1] << 24) | ((uint32_t)m[2] << 16) | ((uint32_t)m[3] << 8) | m[4];
  if (len < 4 || len > r->max_message) return finish(r, EXIT_CLIENT_MESSAGE, 0);
  size_t mlen = (size_t)len + 1;
  if (mlen <= total) {
    named_t *renamed = NULL;
    if (client_needs_js(r, m, mlen, true) || (r->pool && pool_exit(r, m, mlen, true, &renamed)))
      return finish(r, EXIT_CLIENT_MESSAGE, 0);
  } else if (mlen <= IN_CAP) {
    return; // the rest of it first
  }
  hub_enqueue(r);
}

static void hub_server_cb(uv_poll_t *h, int status, int events) {
  hserver_t *hs = (hserver_t *)h->data;
  uv_loop_t *loop = h->loop;
  if (hs->holder != NULL) {
    side_event(hs->holder, false, status, events);
    return wait_here(loop);
  }
  // A free server spoke unasked (a FATAL, a notice) or closed: JS takes it back and reads it.
  hub_t *hub = hs->hub;
  int fd = hs->fd;
  hub_drop_server(hub, hs);
  hub_emit(hub, EVENT_SPOKE, fd);
}

// The server a member holds between transactions spoke unasked (a FATAL: terminated, shut down) or closed: as a
// free one's, it goes to JS, which reads it; the client waits for its next request, unaffected (as pgBouncer's).
static void hub_server_unasked(relay_t *r) {
  hub_t *hub = r->hub;
  hserver_t *hs = r->hs;
  int fd = hs->fd;
  hub_detach(r);
  hub_drop_server(hub, hs);
  hub_emit(hub, EVENT_SPOKE, fd);
}

static void hub_kick_cb(uv_idle_t *h) {
  hub_t *hub = (hub_t *)h->data;
  uv_idle_stop(h);
  while (hub->rhead != NULL) {
    relay_t *r = hub->rhead;
    hub->rhead = r->rnext;
    r->rqueued = false;
    r->rnext = NULL;
    if (!r->running || r->hs == NULL || r->c.in_len == 0) continue;
    if (scratch == NULL && (scratch = malloc(IN_CAP)) == NULL) {
      finish(r, EXIT_CLIENT_ERROR, ENOMEM);
      continue;
    }
    size_t have = r->c.in_len;
    memcpy(scratch, r->c.in, have);
    forward(r, &r->c, &r->s, have);
  }
}

// From release(): the member leaves every list; the server it holds leaves the hub with it.
static void hub_leave(relay_t *r) {
  hub_t *hub = r->hub;
  r->out_sfd = r->hs != NULL ? r->hs->fd : -1;
  if (r->hs != NULL) {
    hserver_t *hs = r->hs;
    hub_detach(r);
    hub_drop_server(hub, hs);
  }
  if (r->queued) hub_unqueue(r);
  if (r->rqueued) {
    for (relay_t **p = &hub->rhead; *p != NULL; p = &(*p)->rnext) {
      if (*p != r) continue;
      *p = r->rnext;
      break;
    }
    r->rqueued = false;
  }
  if (r->mprev != NULL) r->mprev->mnext = r->mnext;
  else if (hub->members == r) hub->members = r->mnext;
  if (r->mnext != NULL) r->mnext->mprev = r->mprev;
  r->mprev = r->mnext = NULL;
  hub->members_n--;
}

static hub_t *hub_arg(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return (hub_t *)p;
}

static void hub_closed(uv_handle_t *h) {
  hub_t *hub = (hub_t *)h->data;
  for (uint32_t i = 0; i < hub->gone_n; i++) free(hub->gone[i].uses);
  free(hub->gone);
  free(hub->srv);
  free(hub);
}

static void hub_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  hub_t *hub = (hub_t *)data;
  // Members hold no reference to the JS object but JS keeps the hub while any runs (pool-hub.ts): none left.
  if (hub->on_event != NULL) napi_delete_reference(env, hub->on_event);
  napi_async_destroy(env, hub->async);
  hub->on_event = NULL;
  hub->finalized = true;
  uv_close((uv_handle_t *)&hub->kick, hub_closed);
}

// hubCreate(onEvent(kind, fd)) -> hub.
static napi_value js_hub_create(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return throw_error(env, "hubCreate(onEvent)");
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_error(env, "hubCreate: no event loop");
  hub_t *hub = calloc(1, sizeof *hub);
  if (hub == NULL) return throw_error(env, "hubCreate: out of memory");
  hub->env = env;
  uv_idle_init(loop, &hub->kick);
  hub->kick.data = hub;
  napi_value handle, name;
  napi_create_reference(env, argv[0], 1, &hub->on_event);
  napi_create_string_utf8(env, "pg-steadytext hub", NAPI_AUTO_LENGTH, &name);
  if (napi_create_external(env, hub, hub_finalize, NULL, &handle) != napi_ok) return throw_error(env, "hubCreate: cannot create handle");
  napi_async_init(env, handle, name, &hub->async);
  return handle;
}

// A Buffer argument's bytes (len 0: absent, null or not a Buffer).
static void buffer_arg(napi_env env, napi_value v, const uint8_t **p, size_t *len) {
  bool is_buffer = false;
  void *data;
  *p = NULL;
  *len = 0;
  if (napi_is_buffer(env, v, &is_buffer) == napi_ok && is_buffer && napi_get_buffer_info(env, v, &data, len) == napi_ok) *p = data;
  else *len = 0;
}

// hubEnter(hub, clientFd, serverFd (-1: none), maxMessage, onExit, keepStatus, poolFlags[, names[, serverNames]]) ->
// relay handle: the client (and the server it holds) join the hub; onExit, stop and state as start's. names: with
// POOL_NAMED, the client's statements the member renames (start's names); serverNames: `name\0...`, the server-side
// names of the statements prepared on that server.
static napi_value js_hub_enter(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  hub_t *hub = argc >= 7 ? hub_arg(env, argv[0]) : NULL;
  int32_t cfd, sfd;
  uint32_t max;
  if (hub == NULL || hub->finalized || napi_get_value_int32(env, argv[1], &cfd) != napi_ok || napi_get_value_int32(env, argv[2], &sfd) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &max) != napi_ok || cfd < 0)
    return throw_error(env, "hubEnter(hub, clientFd, serverFd, maxMessage, onExit, keepStatus, poolFlags)");
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_error(env, "hubEnter: no event loop");
  relay_t *r = calloc(1, sizeof(relay_t));
  if (r == NULL) return throw_error(env, "hubEnter: out of memory");
  r->hub = hub;
  r->c.fd = cfd;
  r->s.fd = -1;
  r->out_sfd = -1;
  r->env = env;
  r->max_message = max;
  r->watch_entry = -1;
  uint32_t keep = 0, pool = 0;
  if (napi_get_value_uint32(env, argv[5], &keep) == napi_ok) set_keep(r, keep);
  if (!r->keep) r->status = 'I';
  if (napi_get_value_uint32(env, argv[6], &pool) == napi_ok) set_pool(r, pool);
  const uint8_t *names = NULL, *snames = NULL;
  size_t names_len = 0, snames_len = 0;
  if (argc >= 8) buffer_arg(env, argv[7], &names, &names_len);
  if (argc >= 9) buffer_arg(env, argv[8], &snames, &snames_len);
  if ((r->pool & POOL_NAMED) && !set_names(r, names, names_len)) {
    r->finalized = true;
    maybe_free(r);
    return throw_error(env, "hubEnter: names must be client\\0server\\0 pairs of non-empty, distinct names");
  }
  hserver_t *hs = NULL;
  if (sfd >= 0 && (hs = hub_add_server(hub, sfd, snames, snames_len)) == NULL) {
    r->finalized = true;
    maybe_free(r);
    return throw_error(env, "hubEnter: cannot watch the server socket");
  }
  r->c.poll = &r->c.own;
  int e = uv_poll_init(loop, &r->c.own, cfd);
  if (e != 0) {
    if (hs != NULL) hub_drop_server(hub, hs);
    r->finalized = true;
    maybe_free(r);
    return throw_error(env, uv_strerror(e));
  }
  r->c.own.data = r;
  r->open_handles = 1;
  napi_value name, handle;
  napi_create_string_utf8(env, "pg-steadytext relay", NAPI_AUTO_LENGTH, &name);
  napi_create_reference(env, argv[4], 1, &r->on_exit);
  if (napi_create_external(env, r, finalize, NULL, &handle) != napi_ok) {
    if (hs != NULL) hub_drop_server(hub, hs);
    napi_delete_reference(env, r->on_exit);
    r->on_exit = NULL;
    uv_close((uv_handle_t *)&r->c.own, on_close);
    r->finalized = true;
    return throw_error(env, "hubEnter: cannot create handle");
  }
  napi_async_init(env, handle, name, &r->async);
  r->mnext = hub->members;
  if (hub->members != NULL) hub->members->mprev = r;
  hub->members = r;
  hub->members_n++;
  r->running = true;
  if (hs != NULL) hub_attach(r, hs, false);
  else set_events(r, &r->c, &r->s);
  hub_dispatch(hub, false);
  return handle;
}

// hubAdd(hub, serverFd[, serverNames]): a server JS hands the hub (free; queued clients take it), with the
// server-side names of its statements (hubEnter's serverNames).
static napi_value js_hub_add(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  hub_t *hub = argc >= 2 ? hub_arg(env, argv[0]) : NULL;
  int32_t sfd;
  if (hub == NULL || hub->finalized || napi_get_value_int32(env, argv[1], &sfd) != napi_ok || sfd < 0) return throw_error(env, "hubAdd(hub, serverFd)");
  const uint8_t *snames = NULL;
  size_t snames_len = 0;
  if (argc >= 3) buffer_arg(env, argv[2], &snames, &snames_len);
  hserver_t *hs = hub_add_server(hub, sfd, snames, snames_len);
  if (hs == NULL) return throw_error(env, "hubAdd: cannot watch the server socket");
  hub->js_want = 0; // JS gives: it wants none back
  hub_set_free(hs);
  hub_dispatch(hub, false);
  return NULL;
}

// hubWant(hub, n[, waitedUs]) -> the fds of servers given back now (free or idle ones); the rest of n go to JS at
// their holders' transaction ends (EVENT_SERVER). waitedUs: how long JS's oldest waiter has waited; queued clients
// that waited longer are served first. Without it JS comes first (RECONNECT, PAUSE, a worker's yield).
static napi_value js_hub_want(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  hub_t *hub = argc >= 2 ? hub_arg(env, argv[0]) : NULL;
  double n, waited = -1;
  if (hub == NULL || napi_get_value_double(env, argv[1], &n) != napi_ok || n < 0) return throw_error(env, "hubWant(hub, n)");
  if (argc >= 3 && napi_get_value_double(env, argv[2], &waited) != napi_ok) waited = -1;
  hub->js_want = n > 1e9 ? 1000000000u : (uint32_t)n;
  uint64_t now = now_ns();
  double waited_ns = waited * 1000.0;
  hub->js_since = waited < 0 ? 0 : waited_ns >= (double)now ? 1 : now - (uint64_t)waited_ns;
  napi_value out;
  napi_create_array(env, &out);
  uint32_t k = 0;
  while (js_first(hub)) {
    hserver_t *hs = hub_idle_server(hub);
    if (hs == NULL) break;
    hub->js_want--;
    napi_set_element(env, out, k++, number(env, hs->fd));
    hub_drop_server(hub, hs);
  }
  hub_dispatch(hub, false);
  return out;
}

// hubTake(hub, serverFd) -> 1: given back now; 0: at its holder's transaction end (EVENT_SERVER); -1: not in the hub.
static napi_value js_hub_take(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  hub_t *hub = argc >= 2 ? hub_arg(env, argv[0]) : NULL;
  int32_t fd;
  if (hub == NULL || napi_get_value_int32(env, argv[1], &fd) != napi_ok) return throw_error(env, "hubTake(hub, serverFd)");
  for (uint32_t i = 0; i < hub->n_srv; i++) {
    hserver_t *hs = hub->srv[i];
    if (hs->fd != fd) continue;
    relay_t *h = hs->holder;
    if (h != NULL && !(h->running && !h->rqueued && between(h))) {
      hs->to_js = true;
      return number(env, 0);
    }
    if (h != NULL) hub_detach(h);
    hub_drop_server(hub, hs);
    return number(env, 1);
  }
  return number(env, -1);
}

// hubMembers(hub) -> [[clientFd, serverFd or -1, state, microseconds queued], ...]; state 0: waiting for its next
// request, 1: queued (its request came), 2: holding a server between transactions, 3: holding one in a transaction.
static napi_value js_hub_members(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  hub_t *hub = argc >= 1 ? hub_arg(env, argv[0]) : NULL;
  if (hub == NULL) return throw_error(env, "hubMembers(hub)");
  napi_value out;
  napi_create_array_with_length(env, hub->members_n, &out);
  uint64_t now = now_ns();
  uint32_t k = 0;
  for (relay_t *r = hub->members; r != NULL; r = r->mnext) {
    int state = r->hs == NULL ? (r->queued ? 1 : 0) : (between(r) ? 2 : 3);
    napi_value row;
    napi_create_array_with_length(env, 4, &row);
    napi_set_element(env, row, 0, number(env, r->c.fd));
    napi_set_element(env, row, 1, number(env, r->hs != NULL ? r->hs->fd : -1));
    napi_set_element(env, row, 2, number(env, state));
    napi_set_element(env, row, 3, number(env, r->queued ? (double)((now - r->wait_start) / 1000) : 0));
    napi_set_element(env, out, k++, row);
  }
  return out;
}

// hubUses(hub) -> [[serverFd, [uses of each of its serverNames]], ...]: the servers that left the hub with
// statements renamed on them since the last call (JS makes those recently used: the connection's LRU).
static napi_value js_hub_uses(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  hub_t *hub = argc >= 1 ? hub_arg(env, argv[0]) : NULL;
  if (hub == NULL) return throw_error(env, "hubUses(hub)");
  napi_value out;
  napi_create_array_with_length(env, hub->gone_n, &out);
  for (uint32_t i = 0; i < hub->gone_n; i++) {
    hub_gone_t *g = &hub->gone[i];
    napi_value row, uses;
    napi_create_array_with_length(env, 2, &row);
    napi_create_array_with_length(env, g->n, &uses);
    for (uint32_t k = 0; k < g->n; k++) napi_set_element(env, uses, k, number(env, g->uses[k]));
    napi_set_element(env, row, 0, number(env, g->fd));
    napi_set_element(env, row, 1, uses);
    napi_set_element(env, out, i, row);
    free(g->uses);
  }
  hub->gone_n = 0;
  return out;
}

// hubStats(hub) -> [hand-offs in C, their wait in microseconds, servers in the hub, clients queued, members].
static napi_value js_hub_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  hub_t *hub = argc >= 1 ? hub_arg(env, argv[0]) : NULL;
  if (hub == NULL) return throw_error(env, "hubStats(hub)");
  napi_value a;
  napi_create_array_with_length(env, 6, &a);
  napi_set_element(env, a, 0, number(env, (double)hub->handoffs));
  napi_set_element(env, a, 1, number(env, (double)(hub->wait_ns / 1000)));
  napi_set_element(env, a, 2, number(env, hub->n_srv));
  napi_set_element(env, a, 3, number(env, hub->queued_n));
  napi_set_element(env, a, 4, number(env, hub->members_n));
  napi_set_element(env, a, 5, number(env, hub->whead == NULL ? 0 : (double)((now_ns() - hub->whead->wait_start) / 1000)));
  return a;
}

// ---- online restart (proxy/takeover.ts) ---------------------------------------------------------------------
// pgBouncer's takeover: the running process hands its sockets to the new one as SCM_RIGHTS over the console's
// Unix socket, one descriptor with each SHOW FDS row. Both calls wait (poll, up to the timeout) where the
// socket would block, as pgBouncer turns its console socket blocking for SHOW FDS: each row goes out whole,
// its descriptor with its first byte, and the rows in order.

#define MAX_FDS 64

// 1 ready, 0 timed out, -errno.
static int wait_fd(int fd, short events, int32_t timeout_ms) {
  struct pollfd p = {.fd = fd, .events = events};
  int n;
  do n = poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);
  while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : n;
}

// sendFds(fd, buffer, [fds], timeoutMs) -> bytes sent (the whole buffer), or -errno (-ETIMEDOUT when the peer
// took nothing for timeoutMs). The descriptors go with the buffer's first byte.
static napi_value js_send_fds(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd, timeout_ms;
  void *data;
  size_t len;
  uint32_t nfds = 0;
  bool is_array = false;
  if (argc < 4 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok || napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[2], &nfds) != napi_ok || nfds > MAX_FDS ||
      napi_get_value_int32(env, argv[3], &timeout_ms) != napi_ok)
    return throw_error(env, "sendFds(fd, buffer, fds (at most 64), timeoutMs)");
  int fds[MAX_FDS];
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value v;
    if (napi_get_element(env, argv[2], i, &v) != napi_ok || napi_get_value_int32(env, v, &fds[i]) != napi_ok || fds[i] < 0)
      return throw_error(env, "sendFds: fds must be descriptors");
  }
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  } control;
  size_t off = 0;
  bool first = true;
  while (off < len || first) {
    struct iovec io = {.iov_base = (uint8_t *)data + off, .iov_len = len - off};
    struct msghdr msg = {.msg_iov = &io, .msg_iovlen = 1};
    if (first && nfds > 0) {
      memset(&control, 0, sizeof(control));
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
      memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return number(env, -(double)errno);
      int ready = wait_fd(fd, POLLOUT, timeout_ms);
      if (ready <= 0) return number(env, ready == 0 ? -(double)ETIMEDOUT : (double)ready);
      continue;
    }
    off += (size_t)w;
    first = false;
  }
  return number(env, (double)off);
}

// recvFds(fd, maxBytes, timeoutMs) -> [bytes, [fds]] (bytes empty at the end of the stream), or null when nothing
// came within timeoutMs. Throws on an error. Received descriptors are close-on-exec.
static napi_value js_recv_fds(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], nul;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_get_null(env, &nul);
  int32_t fd, max_bytes, timeout_ms;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_get_value_int32(env, argv[1], &max_bytes) != napi_ok || max_bytes <= 0 ||
      napi_get_value_int32(env, argv[2], &timeout_ms) != napi_ok)
    return throw_error(env, "recvFds(fd, maxBytes, timeoutMs)");
  uint8_t *data = malloc((size_t)max_bytes);
  if (data == NULL) return throw_error(env, "recvFds: out of memory");
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  } control;
  ssize_t n;
  struct msghdr msg;
  for (;;) {
    struct iovec io = {.iov_base = data, .iov_len = (size_t)max_bytes};
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &io;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) break;
    int ready = wait_fd(fd, POLLIN, timeout_ms);
    if (ready == 0) {
      free(data);
      return nul;
    }
    if (ready < 0) {
      errno = -ready;
      n = -1;
      break;
    }
  }
  if (n < 0) {
    int e = errno;
    free(data);
    napi_throw_error(env, NULL, strerror(e));
    return NULL;
  }
  napi_value fd_list, out, bytes;
  napi_create_array(env, &fd_list);
  uint32_t count = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int got;
      memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fcntl(got, F_SETFD, FD_CLOEXEC);
      napi_set_element(env, fd_list, count++, number(env, got));
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    // Descriptors beyond the control buffer were closed by the kernel: the sender's rows no longer match.
    free(data);
    return throw_error(env, "recvFds: descriptors were dropped (control data truncated)");
  }
  void *copy;
  napi_create_buffer_copy(env, (size_t)n, data, &copy, &bytes);
  free(data);
  napi_create_array_with_length(env, 2, &out);
  napi_set_element(env, out, 0, bytes);
  napi_set_element(env, out, 1, fd_list);
  return out;
}

// ---- pgBouncer's so_reuseport (peering) ---------------------------------------------------------------------------
// Node 20 cannot set SO_REUSEPORT, so several processes cannot share a port through net.Server alone: the
// listening socket is made here and handed to net.Server.listen({ fd }).

// listenReusePort(host, port, backlog) -> fd of a listening, non-blocking TCP socket with SO_REUSEPORT (a
// numeric IPv4 or IPv6 address), or throws with the system's reason.
static napi_value js_listen_reuse_port(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char host[64];
  size_t host_len = 0;
  int32_t port, backlog;
  if (argc < 3 || napi_get_value_string_utf8(env, argv[0], host, sizeof host, &host_len) != napi_ok ||
      napi_get_value_int32(env, argv[1], &port) != napi_ok || napi_get_value_int32(env, argv[2], &backlog) != napi_ok ||
      port < 0 || port > 65535)
    return throw_error(env, "listenReusePort(host, port, backlog)");
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t ss_len;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    ss_len = sizeof *v4;
  } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    ss_len = sizeof *v6;
  } else {
    return throw_error(env, "listenReusePort: host must be a numeric IPv4 or IPv6 address");
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_error(env, strerror(errno));
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
#ifdef SO_REUSEPORT
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
#endif
      bind(fd, (struct sockaddr *)&ss, ss_len) != 0 || listen(fd, backlog > 0 ? backlog : 511) != 0) {
    int e = errno;
    close(fd);
    return throw_error(env, strerror(e));
  }
  return number(env, fd);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"start", NULL, js_start, NULL, NULL, NULL, napi_enumerable, NULL},
    {"stop", NULL, js_stop, NULL, NULL, NULL, napi_enumerable, NULL},
    {"state", NULL, js_state, NULL, NULL, NULL, napi_enumerable, NULL},
    {"peer", NULL, js_peer, NULL, NULL, NULL, napi_enumerable, NULL},
    {"ownLoop", NULL, js_own_loop, NULL, NULL, NULL, napi_enumerable, NULL},
    {"tune", NULL, js_tune, NULL, NULL, NULL, napi_enumerable, NULL},
    {"send", NULL, js_send, NULL, NULL, NULL, napi_enumerable, NULL},
    {"sendFds", NULL, js_send_fds, NULL, NULL, NULL, napi_enumerable, NULL},
    {"recvFds", NULL, js_recv_fds, NULL, NULL, NULL, napi_enumerable, NULL},
    {"listenReusePort", NULL, js_listen_reuse_port, NULL, NULL, NULL, napi_enumerable, NULL},
    {"hubCreate", NULL, js_hub_create, NULL, NULL, NULL, napi_enumerable, NULL},
    {"hubEnter", NULL, js_hub_enter, NULL, NULL, NULL, napi_enumerable, NULL},
    {"hubAdd", NULL, js_hub_add, NULL, NULL, NULL, napi_enumerable, NULL},
    {"hubWant", NULL, js_hub_want, NULL, NULL, NULL, napi_enumerable, NULL},
    {"hubTake", NULL, js_hub_take, NULL, NULL, NULL, napi_enumerable, NULL},
    {"hubMembers", NULL, js_hub_members, NULL, NULL, NULL, napi_enumerable, NULL},
    {"hubStats", NULL, js_hub_stats, NULL, NULL, NULL, napi_enumerable, NULL},
    {"hubUses", NULL, js_hub_uses, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
