#!/usr/bin/env node
// Summarises one run of pgBouncer's pytest suite (scripts/pgbouncer-suite.sh) from pytest's JUnit XML:
// counts per test file, the failing test ids with a one-line reason each, and the skip reasons.
//
//   node scripts/pgbouncer-suite.mjs --junit FILE --out DIR [--target NAME] [--binary PATH] [--strict]
//
// Writes DIR/summary.json and DIR/summary.md and prints the same table. Exit status: 0, or 1 with
// --strict when a test failed or errored, 2 when the XML is missing or is not pytest's.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const USAGE = 'usage: node scripts/pgbouncer-suite.mjs --junit FILE --out DIR [--target NAME] [--binary PATH] [--strict]';

function die(message) {
  process.stderr.write(`[pgbouncer-suite] ${message}\n`);
  process.exit(2);
}

const ENTITIES = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };
function unescapeXml(text) {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (whole, ref) => {
    if (ref.startsWith('#x')) return String.fromCodePoint(parseInt(ref.slice(2), 16));
    if (ref.startsWith('#')) return String.fromCodePoint(parseInt(ref.slice(1), 10));
    return ENTITIES[ref] ?? whole;
  });
}

/**
 * The <testcase> elements of a JUnit document, each with the first <failure>, <error> or <skipped> child's
 * kind and message. Only tags and attributes are read: pytest escapes every '<' in text and attributes.
 */
function readTestcases(xml) {
  const tag =
    /<!\[CDATA\[[\s\S]*?\]\]>|<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<(\/?)([A-Za-z_][\w.:-]*)((?:\s+[\w.:-]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>/g;
  const attr = /([\w.:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g;
  const cases = [];
  let current = null;
  let sawSuite = false;
  for (const m of xml.matchAll(tag)) {
    const [, closing, name, attrText, selfClosing] = m;
    if (!name) continue;
    if (name === 'testsuite' || name === 'testsuites') sawSuite = true;
    if (closing) {
      if (name === 'testcase') current = null;
      continue;
    }
    const attrs = {};
    for (const a of (attrText ?? '').matchAll(attr)) attrs[a[1]] = unescapeXml(a[2] ?? a[3]);
    if (name === 'testcase') {
      current = {
        classname: attrs.classname ?? '',
        name: attrs.name ?? '',
        file: attrs.file,
        outcome: 'passed',
        message: '',
      };
      cases.push(current);
      if (selfClosing) current = null;
    } else if (current && (name === 'failure' || name === 'error' || name === 'skipped') && current.outcome === 'passed') {
      current.outcome = name === 'failure' ? 'failed' : name;
      current.message = attrs.message ?? attrs.type ?? '';
    }
  }
  if (!sawSuite) throw new Error('no <testsuite> element: not a JUnit report');
  return cases;
}

/** "test.test_admin" (pytest's classname for a module-level test) → "test/test_admin.py". */
function fileOf(testcase) {
  if (testcase.file) return testcase.file;
  const parts = testcase.classname.split('.');
  const module = parts.findLastIndex((p) => p.startsWith('test_'));
  return module < 0 ? testcase.classname || '(unknown)' : parts.slice(0, module + 1).join('/') + '.py';
}

function oneLine(text, max = 240) {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > max ? line.slice(0, max - 1) + '…' : line;
}

function summarise(cases) {
  const files = {};
  const totals = { tests: 0, passed: 0, failed: 0, error: 0, skipped: 0 };
  const failures = [];
  const skipped = {};
  for (const c of cases) {
    const file = fileOf(c);
    const counts = (files[file] ??= { tests: 0, passed: 0, failed: 0, error: 0, skipped: 0 });
    counts.tests++;
    counts[c.outcome]++;
    totals.tests++;
    totals[c.outcome]++;
    const id = `${file}::${c.name}`;
    if (c.outcome === 'failed' || c.outcome === 'error') failures.push({ id, outcome: c.outcome, reason: oneLine(c.message) || '(no message)' });
    if (c.outcome === 'skipped') (skipped[oneLine(c.message) || '(no reason)'] ??= []).push(id);
  }
  return { totals, files: Object.fromEntries(Object.entries(files).sort(([a], [b]) => a.localeCompare(b))), failures, skipped };
}

function markdown(summary) {
  const { target, binary, totals, files, failures, skipped } = summary;
  const row = (name, c) => `| ${name} | ${c.passed} | ${c.failed} | ${c.error} | ${c.skipped} | ${c.tests} |`;
  const lines = [
    `# pgBouncer test suite against ${target}`,
    '',
    `Binary: \`${binary}\` · ${summary.finishedAt}`,
    '',
    '| file | passed | failed | error | skipped | total |',
    '|---|---:|---:|---:|---:|---:|',
    ...Object.entries(files).map(([name, c]) => row(name, c)),
    row('**all**', totals),
    '',
  ];
  if (failures.length) {
    lines.push(`## Failing (${failures.length})`, '', ...failures.map((f) => `- \`${f.id}\` (${f.outcome}): ${f.reason}`), '');
  }
  const reasons = Object.entries(skipped);
  if (reasons.length) {
    lines.push(
      '## Skipped, by reason',
      '',
      ...reasons.map(([reason, ids]) => `- ${reason} (${ids.length}): ${ids.map((id) => `\`${id}\``).join(', ')}`),
      '',
    );
  }
  return lines.join('\n');
}

function main() {
  let args;
  try {
    args = parseArgs({
      options: {
        junit: { type: 'string' },
        out: { type: 'string' },
        target: { type: 'string', default: '?' },
        binary: { type: 'string', default: '?' },
        strict: { type: 'boolean', default: false },
      },
    }).values;
  } catch (err) {
    die(`${err.message}\n${USAGE}`);
  }
  if (!args.junit || !args.out) die(USAGE);
  if (!existsSync(args.junit)) die(`no JUnit report at ${args.junit}: pytest did not get as far as running tests`);
  let cases;
  try {
    cases = readTestcases(readFileSync(args.junit, 'utf8'));
  } catch (err) {
    die(`${args.junit}: ${err.message}`);
  }
  const summary = { target: args.target, binary: args.binary, finishedAt: new Date().toISOString(), ...summarise(cases) };
  mkdirSync(args.out, { recursive: true });
  writeFileSync(join(args.out, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
  const md = markdown(summary);
  writeFileSync(join(args.out, 'summary.md'), md);
  process.stdout.write(`\n${md}\nSummary: ${join(args.out, 'summary.md')} and summary.json\n`);
  const { passed, failed, error, skipped } = summary.totals;
  // The plain closing line CI reads as a test count.
  process.stdout.write(`pgbouncer-suite: ${passed} passed, ${failed + error} failed, ${skipped} skipped\n`);
  if (args.strict && failed + error > 0) process.exit(1);
}

main();
