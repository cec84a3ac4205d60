// The cache key and answer formats are computed in TypeScript (proxy, daemon) and in SQL (the
// functions): both sides must produce the same bytes for every input.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { callKey, cacheKey, embedParams, float8FromHex, float8Hex, generateParams } from '../../inference/cache-key.js';
import { parseVectorText, streamAnswer, streamChunks, vectorText } from '../../sql/answers.js';
import { installSql } from '../../sql/install.js';
import { freshDatabase, type TestDatabase } from './helpers.js';

let db: TestDatabase;
let c: pg.Client;
beforeAll(async () => {
  db = await freshDatabase('st_key');
  c = await db.connect();
  await installSql(c);
});
afterAll(() => db?.drop());

// A seeded generator keeps the "random" inputs the same on every run.
function rng(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

const INPUTS = [
  '', ' ', 'a', 'The capital of France is', 'Hello, world!\n', 'tab\there', 'multi\nline\r\ntext',
  "quotes ' \" `", 'back\\slash \\x00 $1 $$ $fn$', 'chr31\u001finside\u001f', '\u0001\u0002\u007f',
  'héllo wörld', 'naïve café', 'e\u0301 (combining accent)', 'Ångström', 'Straße', 'ﬁ ligature',
  '日本語のテキスト', '中文文本', '한국어', 'עברית', 'العربية', 'हिन्दी', 'ไทย',
  '😀 emoji 👩‍👩‍👧‍👦 🇫🇷', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛', 'zero\u200bwidth\u200d', '\ufeffBOM', 'lone \uFFFD replacement',
  'x'.repeat(100_000), '🙂'.repeat(5000),
];

describe('steadytext_cache_key (SQL) = cacheKey (TypeScript)', () => {
  it('agrees on many ops, identities, params and inputs, unicode included', async () => {
    const r = rng(1);
    const cases: Array<[string, string, string, string]> = [];
    const ops = ['generate', 'embed', 'generate_stream'];
    const identities = ['', 'abc123', '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08', 'modèle/ünï'];
    for (const [i, input] of INPUTS.entries()) {
      const op = ops[i % 3];
      const id = identities[i % identities.length];
      const params = op === 'embed'
        ? embedParams(Math.floor(r() * 2 ** 31))
        : generateParams(1 + Math.floor(r() * 8192), Math.floor(r() * 2 ** 31), [0, 0.7, r() * 2, 1e-300, 1 / 3][i % 5]);
      cases.push([op, id, params, input]);
    }
    for (let i = 0; i < 200; i++) {
      const cps = Array.from({ length: 1 + Math.floor(r() * 40) }, () => {
        const kind = r();
        if (kind < 0.5) return 0x20 + Math.floor(r() * 0x5f);
        if (kind < 0.8) return 0xa0 + Math.floor(r() * 0xd700);
        return 0x10000 + Math.floor(r() * 0xfffff);
      });
      cases.push([ops[i % 3], identities[i % 4], generateParams(i + 1, i * 7919, r()), String.fromCodePoint(...cps)]);
    }
    const sql = await c.query(
      `SELECT steadytext_cache_key(op, id, params, input) AS k
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS t(op, id, params, input, n)
        ORDER BY n`,
      [cases.map((x) => x[0]), cases.map((x) => x[1]), cases.map((x) => x[2]), cases.map((x) => x[3])]);
    const ts = cases.map(([op, id, params, input]) => cacheKey(op, id, params, input));
    expect(sql.rows.map((x) => x.k)).toEqual(ts);
    expect(new Set(ts).size).toBe(ts.length);
    for (const k of ts) expect(k).toMatch(/^[0-9a-f]{64}$/);
  });

  it('is the documented formula', async () => {
    const k = (await c.query(`SELECT encode(sha256(convert_to('generate' || chr(31) || 'id' || chr(31) || 'p' || chr(31) || 'x', 'UTF8')), 'hex') AS k`)).rows[0].k;
    expect(cacheKey('generate', 'id', 'p', 'x')).toBe(k);
    expect((await c.query(`SELECT steadytext_cache_key('generate', 'id', 'p', 'x') AS k`)).rows[0].k).toBe(k);
    expect((await c.query(`SELECT steadytext_cache_key('generate', NULL, 'p', 'x') AS k`)).rows[0].k).toBeNull();
  });

  it("callKey (the engine's result cache and steadytext_cache) is the key the SQL functions compute from their arguments", async () => {
    const calls = [
      { op: 'generate' as const, identity: 'gen-id', prompt: 'The capital of France is', maxTokens: 512, seed: 42, temperature: 0 },
      { op: 'generate_stream' as const, identity: 'gen-id', prompt: 'héllo 😀', maxTokens: 7, seed: 0, temperature: 0 },
      { op: 'generate' as const, identity: 'gen-id', prompt: 'x', maxTokens: 1, seed: 2147483647, temperature: 0.30000000000000004 },
    ];
    for (const k of calls) {
      const sql = (await c.query(`SELECT steadytext_cache_key($1, $2, _steadytext_generate_params($3, $4, $5::float8), $6) AS k`,
        [k.op, k.identity, k.maxTokens, k.seed, k.temperature, k.prompt])).rows[0].k;
      expect(callKey(k)).toBe(sql);
    }
    const e = { op: 'embed' as const, identity: 'emb-id', text: 'naïve café', seed: 9 };
    expect(callKey(e)).toBe((await c.query(`SELECT steadytext_cache_key('embed', $1, _steadytext_embed_params($2), $3) AS k`, [e.identity, e.seed, e.text])).rows[0].k);
  });
});

describe('params', () => {
  it('generate params match the SQL helper, with the exact temperature bits', async () => {
    const r = rng(2);
    const temps = [0, -0, 0.1, 0.2, 0.7, 1, 1.5, 2, 1 / 3, 0.30000000000000004, 1e-300, 5e-324, 1e300, ...Array.from({ length: 50 }, () => r() * 3)];
    const rows = temps.map((t, i) => [1 + i * 37, i * 1_000_003 % 2147483647, t] as const);
    const sql = await c.query(
      `SELECT _steadytext_generate_params(m, s, t) AS p FROM unnest($1::int[], $2::int[], $3::float8[]) WITH ORDINALITY AS u(m, s, t, n) ORDER BY n`,
      [rows.map((x) => x[0]), rows.map((x) => x[1]), rows.map((x) => x[2])]);
    expect(sql.rows.map((x) => x.p)).toEqual(rows.map(([m, s, t]) => generateParams(m, s, t)));
    expect(generateParams(512, 42, 0)).toBe('max_tokens=512;seed=42;temperature=0000000000000000');
    expect(generateParams(512, 42, 0.7)).toBe('max_tokens=512;seed=42;temperature=3fe6666666666666');
    expect(generateParams(1, 1, -0)).toBe(generateParams(1, 1, 0));
  });

  it('the same temperature gives the same key whatever extra_float_digits says', async () => {
    await c.query('SET extra_float_digits = -3');
    const p = (await c.query(`SELECT _steadytext_generate_params(5, 6, 0.30000000000000004::float8) AS p`)).rows[0].p;
    await c.query('RESET extra_float_digits');
    expect(p).toBe(generateParams(5, 6, 0.30000000000000004));
    expect(p).not.toBe(generateParams(5, 6, 0.3));
  });

  it('embed params match the SQL helper', async () => {
    for (const s of [0, 1, 42, 2147483647]) {
      expect((await c.query('SELECT _steadytext_embed_params($1) AS p', [s])).rows[0].p).toBe(embedParams(s));
    }
    expect(embedParams(42)).toBe('seed=42');
  });

  it('float8Hex equals encode(float8send(x), \'hex\') and round-trips', async () => {
    const r = rng(3);
    const xs = [0, -0, 1, -1, 0.1, Math.PI, 1e308, -1e-308, 5e-324, 2 ** 53, ...Array.from({ length: 100 }, () => (r() - 0.5) * 10 ** Math.floor(r() * 20 - 10))];
    const sql = await c.query(`SELECT encode(float8send(x), 'hex') AS h FROM unnest($1::float8[]) WITH ORDINALITY AS u(x, n) ORDER BY n`, [xs.map((x) => (Object.is(x, -0) ? '-0' : String(x)))]);
    expect(sql.rows.map((x) => x.h)).toEqual(xs.map(float8Hex));
    for (const x of xs) expect(Object.is(float8FromHex(float8Hex(x)), x)).toBe(true);
    expect(() => float8FromHex('zz')).toThrow(RangeError);
  });
});

describe('answer formats', () => {
  it('vectorText gives pgvector the exact float32 values, in 8 digits or as many as pgvector prints when it needs 9', async () => {
    const r = rng(4);
    const v = new Float32Array(1024);
    for (let i = 0; i < v.length; i++) v[i] = (r() - 0.5) * 10 ** Math.floor(r() * 6 - 5);
    v[0] = 0; v[1] = 1; v[2] = -0.5; v[3] = 1e-7; v[4] = 3.4028234663852886e38; v[5] = 1.401298464324817e-45;
    const text = vectorText(v);
    const row = (await c.query(`SELECT $1::vector::text AS t, vector_to_float4($1::vector, 1024, false)::text AS a`, [text])).rows[0];
    expect(parseVectorText(row.t)).toEqual(v);
    expect(parseVectorText(text)).toEqual(v);
    const sig = (x: string) => x.replace(/^-/, '').replace(/e.*$/, '').replace('.', '').replace(/^0+/, '').replace(/0+$/, '').length;
    const longer = (ours: string, theirs: string) => {
      const t = theirs.slice(1, -1).split(',');
      return ours.slice(1, -1).split(',').filter((x, i) => sig(x) > Math.max(8, sig(t[i])));
    };
    expect(longer(text, row.t)).toEqual([]);
    // Every exponent float32 has: random bit patterns, finite ones only.
    const bits = new Uint32Array(4096);
    for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(r() * 2 ** 32);
    const w = new Float32Array(bits.buffer).map((x) => (Number.isFinite(x) ? x : 1));
    const wt = (await c.query(`SELECT $1::vector::text AS t`, [vectorText(w)])).rows[0].t;
    expect(parseVectorText(wt)).toEqual(w);
    expect(longer(vectorText(w), wt)).toEqual([]);
    expect(() => vectorText([NaN])).toThrow(RangeError);
  });

  it('stream chunks join back to the text exactly', () => {
    for (const t of ['', ' ', 'one', 'one two', '  lead and trail  ', 'a\n\nb\tc', '日本 語 😀x', 'end.\n']) {
      expect(streamChunks(t).join('')).toBe(t);
      expect(JSON.parse(streamAnswer(t))).toEqual(streamChunks(t));
    }
    expect(streamChunks('Hello big world')).toEqual(['Hello', ' big', ' world']);
  });
});
