import { defineConfig } from 'drizzle-kit'

// `npx drizzle-kit generate` writes SQL into migrations/ from the schema; the app applies it at startup.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema.ts',
  out: './migrations'
})
