import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    globalSetup: ['tests/setup/global.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Suites start their own proxies on free ports against one shared cluster; 2 cores favour few workers.
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
  },
});
