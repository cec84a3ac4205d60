# pg-steadytext proxy image (compose.yaml runs it in front of pgvector/pgvector:pg17). Models are downloaded on
# first use into /models (mount a volume to keep them). With no PGSTEADYTEXT_UPSTREAM it runs the embedded
# database, whose data is kept in /data (mount a volume). Not built on the development machine (no Docker engine
# answers there): .ci/run builds and runs it wherever one does.
FROM node:20-bookworm-slim AS build
WORKDIR /app
# A C compiler for the native relay (proxy/native/relay.c); the image's Node ships its own headers.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json* tsconfig.json ./
RUN npm install --no-audit --no-fund --ignore-scripts
COPY cli.ts index.ts ./
COPY config ./config
COPY embedded ./embedded
COPY proxy ./proxy
COPY inference ./inference
COPY sql ./sql
COPY scripts/build-native.mjs scripts/pglite-template.mjs ./scripts/
# The slim install (README "Install size"): no GPU builds of llama.cpp, only this architecture's CPU one. The
# embedded database's templates (a first start restores them instead of running initdb) come from the build.
RUN npx tsc -p tsconfig.json && node scripts/build-native.mjs && node scripts/pglite-template.mjs \
 && npm prune --omit=dev --omit=optional --no-audit --no-fund \
 && arch="$(node -p process.arch)" \
 && npm install --no-save --omit=dev --omit=optional --no-audit --no-fund --ignore-scripts \
      "@node-llama-cpp/linux-${arch}@$(node -p "require('node-llama-cpp/package.json').version")"

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production \
    PGSTEADYTEXT_LISTEN=0.0.0.0:6432 \
    PGSTEADYTEXT_DAEMON_LISTEN=0.0.0.0:5557 \
    PGSTEADYTEXT_MODEL_DIR=/models \
    PGSTEADYTEXT_DATA_DIR=/data \
    PGSTEADYTEXT_LOG_FORMAT=json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/build ./build
COPY --from=build /app/package.json /app/pglite-template-*.tar.gz ./
COPY sql ./sql
COPY scripts/healthcheck.mjs ./scripts/
# Owned by the image's user, so that fresh volumes mounted there are writable by it.
RUN mkdir -p /models /data && chown node:node /models /data
VOLUME /models /data
EXPOSE 6432 5557
USER node
# One SELECT 1 through the proxy to the upstream (scripts/healthcheck.mjs).
HEALTHCHECK --interval=10s --timeout=12s --start-period=30s CMD ["node", "scripts/healthcheck.mjs"]
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
