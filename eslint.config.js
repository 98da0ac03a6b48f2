// neostandard (standard style, with TypeScript) as fastify/demo has it, plus two type-aware rules:
// a promise dropped in the consumer loop or passed where a callback's result is ignored is a lost write.
import globals from 'globals'
import neostandard, { plugins, resolveIgnoresFromGitignore } from 'neostandard'

export default [
  ...neostandard({ ts: true, ignores: resolveIgnoresFromGitignore() }),
  {
    files: ['**/*.ts'],
    plugins: { '@typescript-eslint': plugins['typescript-eslint'].plugin },
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      // tap tracks its subtests (t.test() returns a PromiseWithSubtest) and reports their failures itself.
      '@typescript-eslint/no-floating-promises': ['error', {
        allowForKnownSafePromises: [{ from: 'package', name: 'PromiseWithSubtest', package: '@tapjs/core' }]
      }],
      '@typescript-eslint/no-misused-promises': 'error',
      // `const IssueCode = {…}` with `type IssueCode` of its values is deliberate; tsc reports real redeclarations.
      '@typescript-eslint/no-redeclare': 'off'
    }
  },
  // The live campaign page's script runs in the browser, as it is (no build step).
  {
    files: ['src/dashboard/**/*.js'],
    languageOptions: { globals: globals.browser, sourceType: 'module' }
  }
]
