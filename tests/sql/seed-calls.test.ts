// Every ```sql block of the seed document (the SQL surface users expect) through findCalls.
import { seedSqlBlocks } from '../fixtures/seed.js';
import { beforeAll, expect, test } from 'vitest';
import { findCalls, isParseFailure, loadParser } from '../../sql/calls.js';

beforeAll(loadParser);


// kind, '!' when it has calls that must not be rewritten, then fn:kind:clause per call. API signatures and
// error messages in the document are not SQL: they fail to parse and would be forwarded unchanged.
const EXPECTED = [
  /* 0 */ 'other[] other[] other[]',
  /* 1 */ 'select[generate:const:target] select[generate:const:target]',
  /* 2 */ 'other[] insert[embed:const:values] select[]',
  /* 3 */ 'select[daemon_status:const:from_function] select[daemon_start:const:target] select[daemon_stop:const:target]',
  /* 4 */ 'select[] select[config_set:const:target] select[config_set:const:target] select[config_set:const:target] select[config_set:const:target]',
  /* 5 */ 'create_function[] select[] create_function[]',
  /* 6 */ 'create_function[] select[] select[] select[] other[] insert[embed:const:values]',
  /* 7 */ 'other[] other[] create_function[] create_function[] select[] select[]',
  /* 8 */ 'create_function[] select[] other[] create_function[] create_function[]',
  /* 9 */ 'FAIL syntax',
  /* 10 */ 'select[generate:const:target]',
  /* 11 */ 'FAIL syntax',
  /* 12 */ 'select[embed:const:target]',
  /* 13 */ 'FAIL syntax',
  /* 14 */ 'select[generate_stream:const:from_function]',
  /* 15 */ 'FAIL syntax',
  /* 16 */ 'FAIL syntax',
  /* 17 */ 'FAIL syntax',
  /* 18 */ 'FAIL syntax',
  /* 19 */ 'FAIL syntax',
  /* 20 */ 'FAIL syntax',
  /* 21 */ 'FAIL syntax',
  /* 22 */ 'FAIL syntax',
  /* 23 */ 'FAIL syntax',
  /* 24 */ 'FAIL syntax',
  /* 25 */ 'select[daemon_status:const:from_function] select[daemon_restart:const:target] select[]',
  /* 26 */ 'FAIL syntax',
  /* 27 */ 'explain[generate:const:target] select[daemon_status:const:from_function] select[]',
  /* 28 */ 'select[config_set:const:target] select[] select[config_set:const:target]',
  /* 29 */ 'create_function[] create_function[]',
  /* 30 */ 'other[] create_function[] select[]',
  /* 31 */ 'prepare[generate:const:target] prepare[embed:const:target] execute[] execute[]',
  /* 32 */ 'other[] other[] other[]',
  /* 33 */ '',
  /* 34 */ 'create_view![daemon_status:const:from_function,daemon_status:const:from_function,daemon_status:const:from_function] select[]',
  /* 35 */ 'other[] other[] other[] other[] other[] other[] other[] other[]',
  /* 36 */ 'explain[] select[config_set:const:target] select[config_set:const:target] update[embed:row:set]',
  /* 37 */ 'other[] select[]',
];

const blocks = seedSqlBlocks();

test('the seed document has the SQL blocks this test knows', () => {
  expect(blocks.length).toBe(EXPECTED.length);
});

test.each(blocks.map((b, i) => [i, b] as const))('seed block %i', (i, block) => {
  const buf = Buffer.from(block);
  const r = findCalls(buf);
  if (isParseFailure(r)) {
    expect(`FAIL ${r.failure}`).toBe(EXPECTED[i]);
    return;
  }
  const summary = r.map((s) => `${s.kind}${s.calls.length && !s.rewritable ? '!' : ''}[${
    s.calls.map((c) => `${c.fn.replace('steadytext_', '')}:${c.kind}:${c.clause}`).join(',')}]`).join(' ');
  expect(summary).toBe(EXPECTED[i]);
  for (const s of r) {
    for (const c of s.calls) {
      // Offsets are consistent with the text: name at start, parentheses where claimed, args inside them.
      expect(buf.toString('utf8', c.start, c.open).trim().endsWith(c.fn)).toBe(true);
      expect([buf[c.open], buf[c.close]]).toEqual([0x28, 0x29]);
      for (const a of c.args) expect(a.start > c.open && a.end <= c.close).toBe(true);
      expect(c.start >= s.start && c.end <= s.end).toBe(true);
    }
  }
});

test('seed: named arguments, INSERT VALUES, PREPARE, CTE batch UPDATE in detail', () => {
  const args = (src: string) => {
    const r = findCalls(Buffer.from(src));
    if (isParseFailure(r)) throw new Error(r.message);
    return r.flatMap((s) => s.calls.map((c) => c.args.map((a) => [a.name, a.kind, Buffer.from(src).toString('utf8', a.valueStart, a.end)])));
  };
  expect(args(blocks[1])).toEqual([
    [[null, 'const', "'The capital of France is'"]],
    [[null, 'const', "'Write a short poem about a robot:'"], ['max_tokens', 'const', '100'], ['seed', 'const', '123']],
  ]);
  expect(args(blocks[6]).at(-1)).toEqual([[null, 'const', "'Introduction to machine learning'"], ['seed', 'const', '100']]);
  expect(args(blocks[31])).toEqual([[[null, 'const', '$1'], ['max_tokens', 'const', '$2']], [[null, 'const', '$1']]]);
  expect(args(blocks[36]).at(-1)).toEqual([[null, 'row', 'b.description']]);
  // The view's calls are in subqueries of its target list.
  const view = findCalls(Buffer.from(blocks[34]));
  if (isParseFailure(view)) throw new Error(view.message);
  expect(view[0].calls.every((c) => c.inSubquery)).toBe(true);
});
