// Issue 10, item 4: a statement means what the server reads, whatever the session's settings, including
// settings changed by statements still in flight when the statement reaches the proxy. Raw sockets
// pipeline `SET standard_conforming_strings` / `SET client_encoding` and a steadytext call in one write
// (drivers wait for ReadyForQuery in between); the call must return what the engine generates for the
// prompt as the server read it (the server reports that reading itself, in the same statement), with no
// syntax error, under scs off and back on, and in client encodings whose multibyte characters carry
// ASCII bytes (0x5C, the backslash, as second byte in SJIS, BIG5 and GBK).
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startStack, type Stack } from '../api/helpers.js';
import { fe, generate, installed, rawPipeline, type RawStatement } from './helpers.js';

let s: Stack;
beforeAll(async () => {
  s = await startStack('st_settings');
  await installed(s);
});
afterAll(() => s?.stop());

/** A SELECT returning (as UTF-8 hex, ASCII in any client encoding) the call's answer and the prompt as the server read it. */
const probe = (lit: Buffer | string, maxTokens = 6): Buffer => Buffer.concat([
  Buffer.from('SELECT encode(convert_to(steadytext_generate('), Buffer.from(lit), Buffer.from(`, ${maxTokens}), 'UTF8'), 'hex') AS h, encode(convert_to(`),
  Buffer.from(lit), Buffer.from(`, 'UTF8'), 'hex') AS p`),
]);

/** Asserts a probe's row: the prompt the server read is `prompt`, and the answer is the engine's for it. */
async function expectAnswer(st: RawStatement | undefined, prompt: string, maxTokens = 6): Promise<void> {
  expect(st?.error).toBeUndefined();
  expect(st?.rows).toHaveLength(1);
  const [h, p] = st!.rows[0].map((v) => Buffer.from(v!.toString('latin1'), 'hex').toString('utf8'));
  expect(p).toBe(prompt);
  expect(h).toBe(await generate(s, prompt, maxTokens));
}

/** A SET still running when the next message reaches the proxy: its ParameterStatus comes 0.3 s later. */
const inFlight = (set: string) => fe.query(`SELECT pg_sleep(0.3); ${set}`);

/** The pipeline's answers, without those of inFlight's pg_sleep. */
async function pipeline(bytes: Buffer, readyCount: number, startup?: Record<string, string>): Promise<RawStatement[]> {
  const sts = await rawPipeline(s, bytes, readyCount, startup);
  return sts.filter((x) => !(x.tag === 'SELECT 1' && x.rows.length === 1 && x.rows[0].length === 1 && x.rows[0][0]?.length === 0));
}

const noErrors = (sts: RawStatement[]) => expect(sts.map((x) => x.error?.M).filter(Boolean)).toEqual([]);

describe('standard_conforming_strings', () => {
  // Valid in both readings, with different meanings: on, `\\` is two backslashes; off, one.
  const lit = String.raw`'a\\b ''q'' c:\\path\\'`;
  const OFF = String.raw`a\b 'q' c:\path` + '\\';
  const ON = String.raw`a\\b 'q' c:\\path` + '\\\\';

  test('SET off pipelined with the call in one write (simple protocol)', async () => {
    const sts = await pipeline(Buffer.concat([inFlight('SET standard_conforming_strings = off'), fe.query(probe(lit))]), 2);
    noErrors(sts);
    expect(sts[0].tag).toBe('SET');
    await expectAnswer(sts[1], OFF);
  });

  test('SET off pipelined, with a literal only valid when backslash escapes', async () => {
    const sts = await pipeline(Buffer.concat([inFlight('SET standard_conforming_strings = off'), fe.query(probe(String.raw`'it\'s \\ ok'`))]), 2);
    noErrors(sts);
    await expectAnswer(sts[1], String.raw`it's \ ok`);
  });

  test('SET on pipelined after a session started with it off', async () => {
    const sts = await pipeline(Buffer.concat([inFlight('SET standard_conforming_strings = on'), fe.query(probe(lit, 8))]), 2,
      { options: '-c standard_conforming_strings=off' });
    noErrors(sts);
    await expectAnswer(sts[1], ON, 8);
  });

  test('SET off in an earlier round trip, then the call', async () => {
    const sts = await pipeline(fe.query(probe(lit, 9)), 1, { options: '-c standard_conforming_strings=off' });
    noErrors(sts);
    await expectAnswer(sts[0], OFF, 9);
  });

  test('SET off and the call in the same Query message', async () => {
    const sts = await pipeline(fe.query(Buffer.concat([Buffer.from('SET standard_conforming_strings = off; '), probe(lit, 10)])), 1);
    noErrors(sts);
    // PostgreSQL lexes a whole Query message before it runs any of it: the literal reads as under "on".
    await expectAnswer(sts[1], ON, 10);
  });

  test('SET off pipelined before an extended-protocol statement with the literal', async () => {
    const sts = await pipeline(Buffer.concat([
      inFlight('SET standard_conforming_strings = off'), fe.parse(probe(lit, 11)), fe.bind(), fe.execute(), fe.sync(),
    ]), 2);
    noErrors(sts);
    await expectAnswer(sts[1], OFF, 11);
  });

  test('several pipelined switches: each call is read under the setting in force when it runs', async () => {
    const sts = await pipeline(Buffer.concat([
      inFlight('SET standard_conforming_strings = off'), fe.query(probe(lit, 5)),
      inFlight('SET standard_conforming_strings = on'), fe.query(probe(lit, 5)),
      inFlight('SET standard_conforming_strings = off'), fe.query(probe(lit, 5)),
    ]), 6);
    noErrors(sts);
    await expectAnswer(sts[1], OFF, 5);
    await expectAnswer(sts[3], ON, 5);
    await expectAnswer(sts[5], OFF, 5);
  });
});

describe('client_encoding', () => {
  // PostgreSQL encoding, the prompt, and its bytes in that encoding (iconv); 0x5C is a trail byte in SJIS, BIG5, GBK.
  const cases: [string, string, string][] = [
    ['SJIS', 'ソ許あ', '835c8b9682a0'],
    ['BIG5', '許功', 'b35ca55c'],
    ['GBK', '乗丂', '815c8140'],
    ['EUC_JP', 'ソあ', 'a5bda4a2'],
    ['EUC_KR', '표가', 'c7a5b0a1'],
    ['LATIN1', 'é', 'e9'],
    ['WIN1252', '€é', '80e9'],
    ['UTF8', 'ソ許', Buffer.from('ソ許').toString('hex')],
  ];

  test('SJIS pipelined with an ASCII prompt holding backslashes and quotes', async () => {
    const sts = await pipeline(Buffer.concat([inFlight(`SET client_encoding = 'SJIS'`), fe.query(probe(String.raw`'x\\y ''z'' \'`))]), 2);
    noErrors(sts);
    await expectAnswer(sts[1], String.raw`x\\y 'z' ` + '\\');
  });

  test.each(cases)('%s pipelined with a prompt in that encoding (%s), backslashes and quotes around it', async (enc, text, hex) => {
    const lit = Buffer.concat([Buffer.from(`'`), Buffer.from(hex, 'hex'), Buffer.from(String.raw` \\ ''q''`), Buffer.from(hex, 'hex'), Buffer.from(`'`)]);
    const sts = await pipeline(Buffer.concat([inFlight(`SET client_encoding = '${enc}'`), fe.query(probe(lit))]), 2);
    noErrors(sts);
    await expectAnswer(sts[1], `${text} \\\\ 'q'${text}`);
  });

  test.each(cases.filter(([enc]) => enc !== 'UTF8').map(([enc]) => enc))('%s pipelined with bytes that are UTF-8 for other text', async (enc) => {
    // C3 A9 is "é" in UTF-8 and other characters in these encodings: the server's reading is the prompt.
    const lit = Buffer.concat([Buffer.from(`'`), Buffer.from('c3a9', 'hex'), Buffer.from(String.raw` \\ ''q''`), Buffer.from(`'`)]);
    const sts = await pipeline(Buffer.concat([inFlight(`SET client_encoding = '${enc}'`), fe.query(probe(lit))]), 2);
    noErrors(sts);
    const read = Buffer.from(sts[1].rows[0][1]!.toString('latin1'), 'hex').toString('utf8');
    expect(read).not.toContain('é');
    await expectAnswer(sts[1], read);
  });

  test.each(cases.filter(([enc]) => ['SJIS', 'BIG5', 'GBK'].includes(enc)))('%s: a 0x5C trail byte right before the closing quote of an E string', async (enc, text, hex) => {
    const lit = Buffer.concat([Buffer.from(`E'`), Buffer.from(hex, 'hex'), Buffer.from(`'`)]);
    const sts = await pipeline(Buffer.concat([inFlight(`SET client_encoding = '${enc}'`), fe.query(probe(lit))]), 2);
    noErrors(sts);
    await expectAnswer(sts[1], text);
  });

  test('client_encoding from the startup packet, and scs off with it', async () => {
    const lit = Buffer.concat([Buffer.from(`'`), Buffer.from('835c', 'hex'), Buffer.from(String.raw`\\'`)]);
    const sts = await pipeline(Buffer.concat([inFlight('SET standard_conforming_strings = off'), fe.query(probe(lit))]), 2,
      { client_encoding: 'SJIS' });
    noErrors(sts);
    await expectAnswer(sts[1], 'ソ\\');
  });
});
