// What the proxy decides to do for a message, from its statements alone.
import { beforeAll, describe, expect, test } from 'vitest';
import { findCalls, isParseFailure, loadParser, type StatementCalls } from '../../sql/calls.js';
import { planParse, planQuery, splice } from '../../sql/query-plan.js';

beforeAll(() => loadParser());

function parsed(sql: string): StatementCalls[] {
  const r = findCalls(Buffer.from(sql));
  if (isParseFailure(r)) throw new Error(r.message);
  return r;
}
const plan = (sql: string) => planQuery(Buffer.from(sql), parsed(sql));
const jobFns = (sql: string) => plan(sql).jobs.map((j) => `${j.call.fn}:${JSON.stringify(j.values)}`);

describe('planQuery', () => {
  test('a call with literal arguments is served ahead, with its values by parameter name', () => {
    expect(jobFns(`SELECT steadytext_generate('hi', 5, seed => 7)`)).toEqual(['steadytext_generate:{"prompt":"hi","max_tokens":5,"seed":7}']);
  });

  test('only transaction control may precede a served statement in the same message', () => {
    expect(jobFns(`BEGIN; SELECT steadytext_embed('x')`)).toHaveLength(1);
    expect(jobFns(`SET ROLE nobody; SELECT steadytext_embed('x')`)).toEqual([]);
    expect(jobFns(`SELECT set_config('search_path', 'evil', false); SELECT steadytext_embed('x')`)).toEqual([]);
  });

  test('definitions and PREPARE are not served: their calls run later', () => {
    expect(jobFns(`PREPARE p AS SELECT steadytext_generate('a')`)).toEqual([]);
    expect(jobFns(`CREATE VIEW v AS SELECT steadytext_generate('a')`)).toEqual([]);
    expect(jobFns(`EXPLAIN SELECT steadytext_generate('a')`)).toEqual([]);
  });

  test('row arguments are prefetched, not served as constants', () => {
    const p = plan(`UPDATE docs SET emb = steadytext_embed(body) WHERE emb IS NULL`);
    expect(p.jobs).toEqual([]);
    expect(p.prefetches).toHaveLength(1);
  });

  test('CREATE EXTENSION pg_steadytext keeps its tag through a harmless statement; config and stats are noticed', () => {
    const sql = `CREATE EXTENSION pg_steadytext; SELECT steadytext_config_set('debug_mode', 'true'); SELECT * FROM steadytext_stats`;
    const p = plan(sql);
    expect(splice(Buffer.from(sql), p.replaced).toString()).toBe(
      `CREATE EXTENSION IF NOT EXISTS plpgsql; SELECT steadytext_config_set('debug_mode', 'true'); SELECT * FROM steadytext_stats`);
    expect(p.touchesConfig).toBe(true);
    expect(p.readsStats).toBe(true);
  });
});

describe('planParse', () => {
  test('calls with parameters the proxy can read are kept for each Bind', () => {
    expect(planParse(parsed(`SELECT steadytext_generate($1, $2)`), []).map((c) => c.fn)).toEqual(['steadytext_generate']);
    // An int4 parameter as the prompt is converted by PostgreSQL: left to the database.
    expect(planParse(parsed(`SELECT steadytext_generate($1)`), [23])).toEqual([]);
    expect(planParse(parsed(`SELECT 1; SELECT steadytext_generate($1)`), [])).toEqual([]);
  });
});
