#!/usr/bin/env bash
# Runs pgBouncer's own pytest suite (test/ of pgbouncer 1.24's source) against a pgBouncer binary: the real
# one, to prove the harness, or pg-steadytext's `pgbouncer` subcommand, which is meant as a drop-in.
#
#   npm run test:pgbouncer-suite -- [--target pg-steadytext|pgbouncer] [--strict] [--jobs N] [--user NAME]
#                                   [--out DIR] [--keep] [--cli FILE] [TEST_FILE...] [-- PYTEST_ARGS...]
#   --cli: the built cli.js to run (default dist/cli.js; e.g. one built with tsc --outDir dist-mine)
#   TEST_FILE: test_admin.py or test_admin (default: every test_*.py); PYTEST_ARGS e.g. -k prepared, --timeout 60
#
# How the suite finds and starts the binary (test/utils.py): it chdirs into test/ at import and always runs
# test/../pgbouncer (BOUNCER_EXE; no environment variable overrides it) as
#   ../pgbouncer --quiet <tmp>/bouncer/test.ini           (--reboot --quiet <ini> for online restart;
#   ../pgbouncer --version, ../pgbouncer --help           test_admin checks their output)
# with the pytest process's environment, never -d/-u/-v. It also reads ../config.mak (tls_support) and
# ../include/bouncer.h (MAX_PASSWORD), and pytest's settings come from ../pyproject.toml (30 s per test).
# So each run gets a fresh tree holding those three files, test/, and at ./pgbouncer either the built binary
# or a wrapper that execs `node <repo>/dist/cli.js pgbouncer "$@"`.
#
# What the suite needs: initdb/pg_ctl/psql on PATH (PostgreSQL 15 here; each xdist worker starts its own
# cluster from 127.0.0.1:10201 up, unix sockets in /tmp, ports claimed with /tmp/port-N.lock), psycopg 3,
# pytest with pytest-asyncio, -xdist and -timeout, filelock (all from Debian), openssl for test/ssl's CA
# script, and a non-root user, since PostgreSQL refuses root: as root the suite runs as --user (default
# postgres) through runuser, with that user's HOME/USER (test_peer_auth_ident_map maps its name).
# Optional environment the suite honours: HAVE_IPV6_LOCALHOST (set here when ::1 can be bound),
# USE_SUDO (tc netem latency and firewall tests; not set: those tests skip), ENABLE_VALGRIND.
#
# Everything a run creates (pytest's --basetemp: clusters, bouncer configs and logs, sockets) is under one
# fresh directory in /tmp, removed afterwards unless --keep; it stays short for the 107-byte socket paths.
# Output: pytest's log and JUnit XML plus summary.json/summary.md (per-file counts, failing ids with a
# reason) in --out (default <cache>/results/<target>). Exit status 0 even when tests fail, unless --strict;
# non-zero when the harness itself cannot run the suite.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PYTHON=/usr/bin/python3 # Debian's, where apt installs the modules (not a pyenv or venv python on PATH)
log() { printf '[pgbouncer-suite] %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

target=pg-steadytext strict=0 jobs=2 user="" out="" keep=0 cli=$repo/dist/cli.js
files=() pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?--target needs a value}; shift 2 ;;
    --target=*) target=${1#*=}; shift ;;
    --strict) strict=1; shift ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift 2 ;;
    --user) user=${2:?--user needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --keep) keep=1; shift ;;
    --cli) cli=$(realpath "${2:?--cli needs a file}"); shift 2 ;;
    --) shift; pytest_args=("$@"); break ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) files+=("$1"); shift ;;
  esac
done
case "$target" in pg-steadytext|pgbouncer) ;; *) die "--target is pg-steadytext or pgbouncer, not '$target'" ;; esac
[[ "$jobs" =~ ^[0-9]+$ ]] || die "--jobs takes a number, not '$jobs'"

# The source tree (built here: the suite reads its config.mak) and, for --target pgbouncer, the binary.
bouncer_bin=$(bash "$repo/scripts/pgbouncer-source.sh" | tail -n1)
src=$(dirname "$bouncer_bin")
cache=$(dirname "$src")
out=${out:-$cache/results/$target}

[ -x "$PG_BIN/initdb" ] || die "no PostgreSQL server binaries in $PG_BIN: run 'npm run setup:machine' (or set PG_BIN)"
command -v openssl >/dev/null || die "openssl is needed for the suite's TLS certificates"
modules="pytest xdist pytest_asyncio pytest_timeout psycopg filelock"
if ! "$PYTHON" -c "import ${modules// /, }" 2>/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "missing Python modules ($modules): apt-get install python3-pytest python3-pytest-xdist python3-pytest-asyncio python3-pytest-timeout python3-psycopg python3-filelock"
  log "installing the suite's Python modules from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pytest python3-pytest-xdist \
    python3-pytest-asyncio python3-pytest-timeout python3-psycopg python3-filelock >/dev/null
fi

# Who runs the suite: PostgreSQL refuses root, so root hands it to an unprivileged user.
if [ "$(id -u)" -eq 0 ]; then
  user=${user:-postgres}
  id -u "$user" >/dev/null 2>&1 || die "user '$user' does not exist: run 'npm run setup:machine' (creates postgres) or pass --user"
  [ "$(id -u "$user")" -ne 0 ] || die "--user must not be root: PostgreSQL refuses to run as root"
  as_user() { runuser -u "$user" -- "$@"; }
else
  [ -z "$user" ] || [ "$user" = "$(id -un)" ] || die "--user needs root (runuser)"
  user=$(id -un)
  as_user() { "$@"; }
fi
home=$(getent passwd "$user" | cut -d: -f6)

# A fresh tree per run: test/ as shipped, plus what test/utils.py reads from its parent directory.
run=$(mktemp -d /tmp/pgbouncer-suite.XXXXXX) # short: socket paths under it must stay within 107 bytes
cleanup() { [ "$keep" -eq 1 ] && log "kept the run tree $run" || rm -rf "$run"; }
trap cleanup EXIT
mkdir -p "$run/include"
cp -r "$src/test" "$run/test"
cp "$src/pyproject.toml" "$src/config.mak" "$run/"
cp "$src/include/bouncer.h" "$run/include/"
if [ "$target" = pgbouncer ]; then
  cp "$bouncer_bin" "$run/pgbouncer"
  binary=$bouncer_bin
else
  [ -f "$cli" ] || die "$cli is missing: run 'npm run build' first"
  node_bin=$(command -v node) || die "node is not on PATH"
  # pgBouncer's command line is passed through untouched: the suite uses --quiet, --reboot, --version, --help.
  # Each xdist worker runs its own bouncers at once: the daemon endpoint (our own, default port 5557) takes
  # any free port so that they do not collide.
  printf '#!/bin/sh\nPGSTEADYTEXT_DAEMON_LISTEN=127.0.0.1:0 exec %q %q pgbouncer "$@"\n' "$node_bin" "$cli" >"$run/pgbouncer"
  chmod 755 "$run/pgbouncer"
  binary="$node_bin $cli pgbouncer"
fi
[ "$(id -u)" -eq 0 ] && chown -R "$user:" "$run"
[ "$target" = pgbouncer ] || as_user test -r "$cli" || die "$user cannot read $cli (the wrapper runs as $user)"

selected=()
for f in "${files[@]}"; do
  f=${f##*/}; f=${f%.py}.py
  [ -f "$run/test/$f" ] || die "no test file $f in pgBouncer's test/ ($(cd "$run/test" && ls test_*.py | tr '\n' ' '))"
  selected+=("$run/test/$f") # absolute: the suite chdirs into test/ on import, also in xdist workers
done
[ ${#selected[@]} -gt 0 ] || selected=("$run/test")

xdist=(-n 0)
[ "$jobs" -gt 1 ] && xdist=(-n "$jobs")
ipv6=""
"$PYTHON" -c 'import socket; socket.socket(socket.AF_INET6).bind(("::1", 0))' 2>/dev/null && ipv6=1

mkdir -p "$out"
log "target $target ($binary), ${#selected[@]} path(s), $jobs job(s), as $user; log: $out/pytest.log"
set +e
as_user env -i HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 PYTHONIOENCODING=utf8 \
  PATH="$PG_BIN:/usr/local/bin:/usr/bin:/bin" ${ipv6:+HAVE_IPV6_LOCALHOST=1} TMPDIR=/tmp \
  "$PYTHON" -m pytest -p no:cacheprovider -q "${xdist[@]}" --basetemp="$run/tmp" --junitxml="$run/junit.xml" \
  "${pytest_args[@]}" "${selected[@]}" 2>&1 | tee "$out/pytest.log" | grep --line-buffered -E '^[.FEsxX]+ *\[ *[0-9]+%\]$'
# The full log (tracebacks, pgBouncer's and PostgreSQL's logs of each failing test) is in the file; the
# terminal gets pytest's progress lines.
status=${PIPESTATUS[0]}
set -e
# A binary that ignored the suite's SIGQUIT, or a test that timed out, can leave a bouncer or a cluster
# behind; everything the suite started has a path under the run tree (--basetemp) on its command line.
leftovers=$(pgrep -u "$user" -f -- "$run/" || true)
if [ -n "$leftovers" ]; then
  log "ending processes the suite left running: $(echo $leftovers)"
  kill -TERM $leftovers 2>/dev/null || true
  for _ in 1 2 3 4 5; do
    leftovers=$(for pid in $leftovers; do kill -0 "$pid" 2>/dev/null && echo "$pid"; done || true)
    [ -n "$leftovers" ] || break
    sleep 1
  done
  [ -z "$leftovers" ] || kill -KILL $leftovers 2>/dev/null || true
fi
[ -f "$run/junit.xml" ] && cp "$run/junit.xml" "$out/junit.xml"

# pytest: 0 all passed, 1 some failed; anything else means the suite did not run as a whole.
case "$status" in
  0|1) ;;
  *) log "pytest exited with $status (2 interrupted, 3 internal error, 4 usage, 5 no tests): see $out/pytest.log"
     [ -f "$run/junit.xml" ] && node "$repo/scripts/pgbouncer-suite.mjs" --junit "$run/junit.xml" --out "$out" --target "$target" --binary "$binary" || true
     exit "$status" ;;
esac
node "$repo/scripts/pgbouncer-suite.mjs" --junit "$run/junit.xml" --out "$out" --target "$target" --binary "$binary" \
  $([ "$strict" -eq 1 ] && echo --strict)
