# Single-container deployment of the monolith (HTTP API + in-process consumer).
FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY tsconfig.json drizzle.config.ts ./
COPY src ./src
COPY migrations ./migrations
USER node
EXPOSE 3000
# tsx runs the TypeScript directly; SIGTERM reaches node for a graceful shutdown.
CMD ["node", "--import", "tsx", "src/server.ts"]
