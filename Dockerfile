# syntax=docker/dockerfile:1
# The service as one container: HTTP API plus the in-process consumer, running the compiled JavaScript.
# test/faults/image.test.ts replays this file without Docker (every stage in a temporary directory, then
# the final CMD against Redis and Postgres): keep to the instructions it understands.
#
# Node 24 LTS: supported until Apr 2028 (Node 20 ended Apr 2026, 22 ends Apr 2027). .ci/run and the
# image replay run the tests on this same major: scripts/image-node.sh reads it from the FROM lines.

# ---- build: all dependencies, compile src/ to dist/ (with the Lua scripts)
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/copy-assets.mjs ./scripts/
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies, dist/ and migrations/ (applied at startup), nothing else
FROM node:24-bookworm-slim AS runtime
ENV NODE_ENV=production HOST=0.0.0.0 PORT=3000
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --no-audit --no-fund
COPY --from=build /app/dist ./dist
COPY migrations ./migrations
# The image's unprivileged user; it only reads /app (set DATA_DIR to a writable volume for PGlite).
USER node
EXPOSE 3000
# No curl in the slim image: node's fetch. /health is liveness; /ready also checks Redis and Postgres.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# node is PID 1 (exec form, no shell in between): SIGTERM from `docker stop` reaches the server, whose
# close-with-grace handler finishes in-flight requests and the consumer's batch, then exits 0.
# Other commands in this image: node dist/cli/drain.js, node dist/cli/consume.js, node dist/cli/migrate.js.
CMD ["node", "dist/server.js"]
