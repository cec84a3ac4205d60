import { inject, test, expect } from 'vitest';
import pg from 'pg';

test('the test cluster answers with pgvector and dblink', async () => {
  const c = new pg.Client(inject('db').adminUrl);
  await c.connect();
  const r = await c.query("select extname from pg_extension where extname in ('vector','dblink') order by 1");
  expect(r.rows.map((x) => x.extname)).toEqual(['dblink', 'vector']);
  await c.end();
});
