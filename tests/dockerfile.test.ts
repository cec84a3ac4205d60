// The image is built only where a Docker engine answers (scripts/container-smoke.sh; not on the development
// machine), so what its build needs is checked here from the files themselves: a source directory tsc compiles
// but the Dockerfile does not copy fails the image's build, and the embedded database's data needs a volume.
import { readFileSync } from 'node:fs';
import { expect, test } from 'vitest';

const dockerfile = readFileSync(new URL('../Dockerfile', import.meta.url), 'utf8');
const tsconfig = JSON.parse(readFileSync(new URL('../tsconfig.json', import.meta.url), 'utf8')) as { include: string[] };

test('the build stage copies every file and directory tsconfig.json compiles', () => {
  const copied = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1].split(/\s+/));
  const roots = tsconfig.include.map((p) => p.split('/')[0]);
  expect(roots.filter((r) => !copied.includes(r))).toEqual([]);
});

test('models and the embedded database keep their files in volumes the image user owns', () => {
  expect(dockerfile).toMatch(/PGSTEADYTEXT_DATA_DIR=\/data/);
  expect(dockerfile).toMatch(/^VOLUME .*\/models.*\/data/m);
  expect(dockerfile).toMatch(/chown node:node \/models \/data/);
  expect(dockerfile).toMatch(/^USER node$/m);
});
