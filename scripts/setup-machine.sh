#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a Debian machine: PostgreSQL 15 server and headers,
# dblink (ships with postgresql-15), pgvector built from Debian's source package, pgbouncer for the
# benchmark, and two drivers the console tests use (PgJDBC with a JDK to run it, psycopg 3 for Debian's
# python3). Idempotent: prints one line and exits when everything is already there.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_LIB="/usr/lib/postgresql/${PG_MAJOR}/lib"
PG_SHARE="/usr/share/postgresql/${PG_MAJOR}/extension"
log() { printf '[setup-machine] %s\n' "$*" >&2; }

have_pg() { [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] && [ -f "$PG_LIB/dblink.so" ]; }
have_vector() { [ -f "$PG_LIB/vector.so" ] && [ -f "$PG_SHARE/vector.control" ]; }
# ss and strace: tests that read the kernel's view of the proxy's sockets and what it writes to them.
have_tools() { command -v psql >/dev/null && command -v pgbench >/dev/null && command -v pgbouncer >/dev/null && command -v ss >/dev/null && command -v strace >/dev/null; }
# tests/proxy/console-drivers.test.ts: `java File.java` compiles in memory, so it needs a JDK, not a JRE.
have_drivers() { [ -f /usr/share/java/postgresql.jar ] && command -v javac >/dev/null && /usr/bin/python3 -c 'import psycopg' 2>/dev/null; }

if have_pg && have_vector && have_tools && have_drivers; then
  log "PostgreSQL ${PG_MAJOR}, dblink, pgvector, pgbouncer, PgJDBC and psycopg already installed"
  exit 0
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then $SUDO apt-get update -qq >/dev/null; apt_updated=1; fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! have_pg || ! have_tools; then
  log "installing postgresql-${PG_MAJOR}, client, pgbouncer, iproute2 and strace"
  apt_install "postgresql-${PG_MAJOR}" "postgresql-client-${PG_MAJOR}" postgresql-contrib pgbouncer iproute2 strace
  # Debian's pgbouncer package starts a system service; the benchmark runs its own instance.
  $SUDO systemctl disable --now pgbouncer >/dev/null 2>&1 || $SUDO service pgbouncer stop >/dev/null 2>&1 || true
fi

# The native relay (npm install compiles proxy/native/relay.c) needs a C compiler.
if ! command -v cc >/dev/null 2>&1; then
  log "installing a C compiler for the native relay"
  apt_install build-essential
fi

if ! have_vector; then
  log "building pgvector from Debian's source package"
  apt_install "postgresql-server-dev-${PG_MAJOR}" build-essential dpkg-dev
  # pgvector is packaged from trixie on; its source builds against bookworm's PostgreSQL.
  list=/etc/apt/sources.list.d/pg-steadytext-trixie-src.list
  if [ ! -f "$list" ]; then
    echo "deb-src http://deb.debian.org/debian trixie main" | $SUDO tee "$list" >/dev/null
    $SUDO apt-get update -qq >/dev/null
  fi
  work=$(mktemp -d)
  (cd "$work" && apt-get source -qq --download-only pgvector >/dev/null 2>&1 && dpkg-source -x --no-check ./*.dsc src >/dev/null)
  make -s -C "$work/src" USE_PGXS=1 PG_CONFIG="$PG_BIN/pg_config" >/dev/null 2>&1
  $SUDO make -s -C "$work/src" USE_PGXS=1 PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
  rm -rf "$work"
fi

if ! have_drivers; then
  log "installing PgJDBC and psycopg 3 for the console tests"
  command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
  apt_install libpostgresql-jdbc-java python3-psycopg
fi

have_pg && have_vector && have_tools && have_drivers || { log "setup incomplete"; exit 1; }
log "ready: PostgreSQL ${PG_MAJOR} with dblink and pgvector, pgbouncer, PgJDBC and psycopg"
