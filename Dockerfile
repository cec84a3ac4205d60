# pg-steadytext proxy image. Models are downloaded on first use into /models (mount a volume to keep them).
FROM node:20-bookworm-slim AS build
WORKDIR /app
# A C compiler for the native relay (proxy/native/relay.c); the image's Node ships its own headers.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json* tsconfig.json ./
RUN npm install --no-audit --no-fund --ignore-scripts
COPY cli.ts index.ts ./
COPY config ./config
COPY proxy ./proxy
COPY inference ./inference
COPY sql ./sql
COPY scripts/build-native.mjs ./scripts/
RUN npx tsc -p tsconfig.json && node scripts/build-native.mjs && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production \
    PGSTEADYTEXT_LISTEN=0.0.0.0:6432 \
    PGSTEADYTEXT_DAEMON_LISTEN=0.0.0.0:5557 \
    PGSTEADYTEXT_MODEL_DIR=/models \
    PGSTEADYTEXT_LOG_FORMAT=json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/build ./build
COPY --from=build /app/package.json ./
COPY sql ./sql
VOLUME /models
EXPOSE 6432 5557
USER node
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
