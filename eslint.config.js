// `npm run lint`: ESLint's and typescript-eslint's recommended rules, type-aware (tsconfig.lint.json covers
// every TypeScript file: sources, tests, scripts). Formatting is Prettier's (`npm run format`), not ESLint's.
// eslint-suppressions.json holds the violations that predate the linter in files then being rewritten
// (ESLint's bulk suppressions): each file may keep that many of that rule and no more; fix them, then
// `npx eslint . --prune-suppressions` drops the entries (unused ones do not fail the lint meanwhile).
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['dist/', 'dist-*/', 'build/', 'prebuilds/', 'node_modules/', 'coverage/'] },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { project: './tsconfig.lint.json', tsconfigRootDir: import.meta.dirname },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // Beyond the recommended sets, three the code already follows: type-only imports say so (`import { x, type Y }`),
      // == only against null, and a switch over a union handles every member (or has a default).
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports', disallowTypeAnnotations: false }],
      eqeqeq: ['error', 'smart'],
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      // `any` is deliberate at the edges only: pg's result rows, libpg-query's JSON tree (sql/calls.ts `J`),
      // IPC messages. The code reads them directly and strict mode checks everything typed; these rules
      // would demand a cast at each of those hundreds of reads.
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      // An async method without await is how the code implements a Promise-returning interface (fakes, close()).
      '@typescript-eslint/require-await': 'off',
      // Passing a caught value on (`reject(e)` with e unknown) is allowed, as only-throw-error allows `throw e`.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingAny: true, allowThrowingUnknown: true }],
      // A leading underscore names what is unused on purpose (`for await (const _ of it)`, `{ signal: _signal, ...rest }`).
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: globals.node },
  },
);
