#!/usr/bin/env bash
# Builds pgBouncer 1.24 from Debian trixie's source package (Debian's security patches applied), for
# running pgBouncer's own test suite (scripts/pgbouncer-suite.sh): the suite lives in the source tree and
# reads the build's config.mak and include/bouncer.h, so a packaged binary is not enough.
#
#   bash scripts/pgbouncer-source.sh        prints the path of the built binary (last line of stdout)
#
# Where: $PGBOUNCER_CACHE, else $XDG_CACHE_HOME/pg-steadytext/pgbouncer, else <repo>/.cache/pgbouncer
# (gitignored); the tree is <cache>/src. Idempotent: a built 1.24 binary there is reused as it is.
# Needs root (or sudo) for apt: adds a trixie deb-src line if none is configured, installs the build
# dependencies from bookworm.
set -euo pipefail

WANT_VERSION=1.24
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${PGBOUNCER_CACHE:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/pg-steadytext/pgbouncer}}
cache=${cache:-$repo/.cache/pgbouncer}
src=$cache/src
log() { printf '[pgbouncer-source] %s\n' "$*" >&2; }

built() { [ -x "$src/pgbouncer" ] && "$src/pgbouncer" --version 2>/dev/null | grep -q "^PgBouncer $WANT_VERSION\."; }
if built; then
  echo "$src/pgbouncer"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { log "run as root (apt-get is needed for the source and build dependencies)"; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# Bookworm ships 1.18; 1.24 is trixie's. Any existing trixie deb-src entry will do (one-line or deb822).
have_trixie_src() {
  grep -qsE '^[[:space:]]*deb-src[[:space:]].*[[:space:]]trixie[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list && return 0
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -qiE '^Types:.*deb-src' "$f" && grep -qiE '^Suites:.*\btrixie\b' "$f" && return 0
  done
  return 1
}
if ! have_trixie_src; then
  log "adding a trixie deb-src line"
  echo "deb-src http://deb.debian.org/debian trixie main" | $SUDO tee /etc/apt/sources.list.d/pg-steadytext-trixie-src.list >/dev/null
  $SUDO apt-get update -qq >/dev/null
fi
if ! apt-cache showsrc pgbouncer 2>/dev/null | grep -q "^Version: $WANT_VERSION\."; then
  log "apt-get update (no pgbouncer $WANT_VERSION source known yet)"
  $SUDO apt-get update -qq >/dev/null
fi

log "installing build dependencies"
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential dpkg-dev pkg-config libevent-dev libssl-dev libc-ares-dev python3 >/dev/null

if [ ! -f "$src/configure" ]; then
  log "fetching the pgbouncer $WANT_VERSION source package into $cache"
  mkdir -p "$cache"
  dl=$(mktemp -d "$cache/download.XXXXXX")
  # _apt cannot write into a root-only directory: apt falls back to downloading as root and says so.
  (cd "$dl" && apt-get source -qq --download-only pgbouncer/trixie 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
  dsc=$(ls "$dl"/pgbouncer_"$WANT_VERSION".*.dsc 2>/dev/null | head -n1)
  [ -n "$dsc" ] || { log "no pgbouncer_$WANT_VERSION.*.dsc downloaded (is trixie's deb-src reachable?)"; exit 1; }
  rm -rf "$src"
  dpkg-source -x --no-check "$dsc" "$src" >/dev/null
  rm -rf "$dl" "$cache"/pgbouncer_*.orig.tar.*
fi

log "building in $src"
(
  cd "$src"
  [ -f config.mak ] || ./configure --with-openssl --with-cares >/dev/null
  make -s -j"$(nproc)" >/dev/null
)
built || { log "build finished but $src/pgbouncer is not pgbouncer $WANT_VERSION"; exit 1; }
log "built: $("$src/pgbouncer" --version | head -n1)"
echo "$src/pgbouncer"
