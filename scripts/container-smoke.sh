#!/usr/bin/env bash
# Builds the image and runs compose.yaml (pgvector/pgvector:pg17 and the proxy), waits for both health checks,
# runs one query through the proxy, and tears it all down. Where no Docker engine answers (the development
# machine), it says so and does nothing: the container is then not checked, and nothing pretends it was.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "[container-smoke] no Docker engine answers here: the image is not built or run" >&2
  exit 0
fi
project="pgsteadytext-smoke-$$"
trap 'docker compose -p "$project" down -v >/dev/null 2>&1 || true' EXIT
docker compose -p "$project" up -d --build --wait
node -e "
  const pg = require('pg');
  const c = new pg.Client({ host: '127.0.0.1', port: 6432, user: 'postgres', password: 'postgres', database: 'postgres' });
  c.connect().then(() => c.query('SELECT steadytext_version() AS v')).then((r) => { console.log('[container-smoke] steadytext', r.rows[0].v); return c.end(); })
    .catch((e) => { console.error('[container-smoke] failed:', e.message); process.exit(1); });
"
