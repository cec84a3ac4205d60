// The container's health check: one SELECT 1 through the proxy's own listener (so the proxy, its upstream and
// the path between them all answer), as the configured upstream's user. Exit 0 healthy, 1 not, within 10 s.
import pg from 'pg';

const listen = process.env.PGSTEADYTEXT_LISTEN ?? '127.0.0.1:6432';
const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
const upstream = new URL(process.env.PGSTEADYTEXT_UPSTREAM ?? 'postgres://postgres@127.0.0.1:5432/postgres');
const client = new pg.Client({
  host: '127.0.0.1',
  port,
  user: decodeURIComponent(upstream.username) || 'postgres',
  password: decodeURIComponent(upstream.password) || undefined,
  database: decodeURIComponent(upstream.pathname.slice(1)) || 'postgres',
  connectionTimeoutMillis: 10_000,
  application_name: 'pg-steadytext healthcheck',
});
const timer = setTimeout(() => {
  process.stderr.write(`unhealthy: no answer within 10 s\n`);
  process.exit(1);
}, 10_000);
try {
  await client.connect();
  await client.query('SELECT 1');
  await client.end();
  clearTimeout(timer);
  process.exit(0);
} catch (err) {
  process.stderr.write(`unhealthy: ${err.message}\n`);
  process.exit(1);
}
