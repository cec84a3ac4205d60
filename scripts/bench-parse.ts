// npm run bench:parse [-- --ms 400]
// What finding calls costs on the proxy's event loop: findCalls on statements from a short call to a ~1 MB
// prompt, libpg-query's parse and scan alone for comparison, the cap's early rejection, and derivePrefetch.
// Each case runs in ~20 ms batches for --ms milliseconds after a JIT warm-up; the best and the median batch
// are printed per operation (other processes share the cores: the best is the cost, the median the noise).
// No database and no models. A case that does not parse as it should stops the run (exit code 1).
import { parseArgs } from 'node:util';
import { parseSync, scanSync } from 'libpg-query';
import { findCalls, isParseFailure, loadParser, MAX_PARSE_BYTES } from '../sql/calls.js';
import { derivePrefetch } from '../sql/prefetch-plan.js';

const { values } = parseArgs({ options: { ms: { type: 'string', default: '400' } } });
const MS = Number(values.ms);
if (!Number.isFinite(MS) || MS <= 0) throw new Error(`--ms must be a positive number, not ${values.ms}`);

/** Runs fn in ~20 ms batches for MS ms (at least 3 batches) and prints the best and median batch. */
function time(label: string, bytes: number, fn: () => unknown): void {
  for (const stop = performance.now() + 60; performance.now() < stop;) fn(); // JIT warm-up
  const perOp: number[] = [];
  let runs = 0;
  const end = performance.now() + MS;
  while (performance.now() < end || perOp.length < 3) {
    let n = 0;
    const t0 = performance.now();
    do { fn(); n++; } while (performance.now() - t0 < 20);
    perOp.push(((performance.now() - t0) * 1000) / n);
    runs += n;
  }
  perOp.sort((x, y) => x - y);
  const f = (x: number) => x.toFixed(1).padStart(9);
  console.log(`${label.padEnd(60)} ${String(bytes).padStart(8)} B  best ${f(perOp[0])} us  median ${f(perOp[perOp.length >> 1])} us  (${runs} runs)`);
}

const ORM = `SELECT "posts"."id" AS "posts_id", "posts"."title" AS "posts_title", "posts"."body" AS "posts_body",
  "posts"."created_at" AS "posts_created_at", "authors"."id" AS "authors_id", "authors"."name" AS "authors_name",
  "authors"."email" AS "authors_email", steadytext_generate('Summarize: ' || "posts"."body", max_tokens := $1) AS "summary",
  (SELECT count(*) FROM "comments" WHERE "comments"."post_id" = "posts"."id" AND "comments"."deleted_at" IS NULL) AS "n_comments"
FROM "posts" INNER JOIN "authors" ON "authors"."id" = "posts"."author_id"
LEFT JOIN "categories" ON "categories"."id" = "posts"."category_id"
WHERE "posts"."published" = $2 AND "posts"."created_at" > $3 AND ("categories"."slug" IN ($4, $5, $6) OR "categories"."slug" IS NULL)
  AND "authors"."active" = true AND "posts"."title" ILIKE $7
ORDER BY "posts"."created_at" DESC, "posts"."id" DESC LIMIT $8 OFFSET $9 /* sqlcommenter: controller='posts',action='index' */`;

const BATCH = `WITH batch AS (SELECT id, description FROM products WHERE embedding IS NULL LIMIT 1000)
UPDATE products p SET embedding = steadytext_embed(b.description) FROM batch b WHERE p.id = b.id`;

await loadParser();
const cases: [string, string][] = [
  ['short call', "SELECT steadytext_generate('The capital of France is', max_tokens := 10)"],
  ['short statement without a call (prefilter false positive)', "SELECT 'steadytext' FROM t WHERE id = 1"],
  ['seed batch UPDATE with CTE', BATCH],
  [`ORM-style query (${Buffer.byteLength(ORM)} B)`, ORM],
  ['50 statements, 50 calls', Array.from({ length: 50 }, (_, i) => `SELECT steadytext_generate('p${i}')`).join('; ')],
  ['100 kB prompt literal', `SELECT steadytext_generate('${'lorem ipsum é '.repeat(7000)}')`],
  ['~1 MB prompt literal (just under the cap)', `SELECT steadytext_generate('${'x'.repeat(MAX_PARSE_BYTES - 64)}')`],
];
const first = Buffer.from(cases[0][1]); // the process is slow for its first few hundred ms
for (const stop = performance.now() + 500; performance.now() < stop;) findCalls(first);
for (const [label, sql] of cases) {
  const buf = Buffer.from(sql);
  const r = findCalls(buf);
  if (isParseFailure(r)) throw new Error(`findCalls: ${label} did not parse: ${r.message}`);
  time(`findCalls: ${label}`, buf.length, () => findCalls(buf));
}
time('libpg-query parseSync alone: ORM-style query', Buffer.byteLength(ORM), () => parseSync(ORM));
time('libpg-query scanSync alone: ORM-style query', Buffer.byteLength(ORM), () => scanSync(ORM));
const over = Buffer.alloc(MAX_PARSE_BYTES + 1, 0x20);
if (!isParseFailure(findCalls(over))) throw new Error('findCalls: a statement over the cap was parsed');
time('findCalls: over the cap (rejected before parsing)', over.length, () => findCalls(over));

const batch = Buffer.from(BATCH);
const st = findCalls(batch);
if (isParseFailure(st)) throw new Error(st.message);
if (derivePrefetch(batch, st[0]) === null) throw new Error('derivePrefetch: no plan for the seed batch UPDATE');
time('derivePrefetch: seed batch UPDATE', batch.length, () => derivePrefetch(batch, st[0]));
