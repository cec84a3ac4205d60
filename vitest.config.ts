import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    globalSetup: ['tests/setup/global.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Suites start their own proxies on free ports against one shared cluster; 2 cores favour few workers.
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
    projects: [
      { extends: true, test: { name: 'all', include: ['tests/**/*.test.ts'] } },
      {
        // The proxy suites again with the native relay off: the JS relay is the fallback (no compiler, TLS).
        extends: true,
        test: {
          name: 'js-relay',
          include: ['tests/proxy/{backpressure,cancel,interceptor,pg,psql,robustness,shutdown,pooling}.test.ts'],
          env: { PGSTEADYTEXT_TEST_RELAY: 'off' },
        },
      },
    ],
  },
});
