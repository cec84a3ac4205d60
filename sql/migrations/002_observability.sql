-- pg-steadytext SQL objects, level 2: statistics, logs, debug logs and cache eviction.

-- ---------------------------------------------------------------------------------------------------
-- Statistics
--
-- The proxy and its daemon endpoint add their counts here (steadytext_stats_bump). Cache lookups made
-- inside the database are counted with sequences instead: nextval() never blocks another session and
-- needs no row lock, whereas a shared counter row would serialise every caller until commit.

CREATE TABLE IF NOT EXISTS steadytext_counters (
    name       text PRIMARY KEY,
    value      bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON steadytext_counters FROM PUBLIC;
GRANT SELECT ON steadytext_counters TO PUBLIC;

CREATE SEQUENCE IF NOT EXISTS steadytext_sql_cache_hits;
CREATE SEQUENCE IF NOT EXISTS steadytext_sql_cache_misses;
REVOKE ALL ON SEQUENCE steadytext_sql_cache_hits, steadytext_sql_cache_misses FROM PUBLIC;

CREATE OR REPLACE FUNCTION steadytext_stats_bump(deltas jsonb)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
    INSERT INTO steadytext_counters AS c (name, value, updated_at)
    SELECT d.key, d.value::bigint, now()
      FROM jsonb_each_text($1) AS d
     WHERE d.value ~ '^-?[0-9]+$'
    ORDER BY d.key -- a fixed lock order: concurrent bumps cannot deadlock
    ON CONFLICT (name) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at
$fn$;

CREATE OR REPLACE VIEW steadytext_stats AS
WITH c AS (
    SELECT coalesce(jsonb_object_agg(name, value), '{}'::jsonb) AS v, min(updated_at) AS since
      FROM steadytext_counters
), s AS (
    SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM steadytext_sql_cache_hits) AS hits,
           (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM steadytext_sql_cache_misses) AS misses
)
SELECT coalesce((c.v ->> 'requests')::bigint, 0) + s.hits + s.misses AS requests,
       coalesce((c.v ->> 'cache_hits')::bigint, 0) + s.hits AS cache_hits,
       coalesce((c.v ->> 'cache_misses')::bigint, 0) + s.misses AS cache_misses,
       coalesce((c.v ->> 'callback_requests')::bigint, 0) AS callback_requests,
       coalesce((c.v ->> 'rewrite_requests')::bigint, 0) AS rewrite_requests,
       coalesce((c.v ->> 'prefetch_requests')::bigint, 0) AS prefetch_requests,
       coalesce((c.v ->> 'generate_requests')::bigint, 0) AS generate_requests,
       coalesce((c.v ->> 'embed_requests')::bigint, 0) AS embed_requests,
       coalesce((c.v ->> 'errors')::bigint, 0) AS errors
  FROM c, s;
REVOKE ALL ON steadytext_stats FROM PUBLIC;
GRANT SELECT ON steadytext_stats TO PUBLIC;

-- ---------------------------------------------------------------------------------------------------
-- Logs

CREATE TABLE IF NOT EXISTS steadytext_logs (
    id          bigserial PRIMARY KEY,
    "timestamp" timestamptz NOT NULL DEFAULT now(),
    level       text NOT NULL,
    event       text NOT NULL,
    message     text,
    details     jsonb
);
CREATE INDEX IF NOT EXISTS steadytext_logs_timestamp_idx ON steadytext_logs ("timestamp");

CREATE TABLE IF NOT EXISTS steadytext_debug_logs (
    id          bigserial PRIMARY KEY,
    "timestamp" timestamptz NOT NULL DEFAULT now(),
    level       text NOT NULL,
    event       text NOT NULL,
    message     text,
    details     jsonb
);
CREATE INDEX IF NOT EXISTS steadytext_debug_logs_timestamp_idx ON steadytext_debug_logs ("timestamp");

REVOKE ALL ON steadytext_logs, steadytext_debug_logs FROM PUBLIC;
GRANT SELECT ON steadytext_logs, steadytext_debug_logs TO PUBLIC;

-- Debug entries are kept only while debug_mode is true. Silently skipped in read-only transactions
-- (hot standby, SET TRANSACTION READ ONLY) so that logging never makes a read fail.
CREATE OR REPLACE FUNCTION steadytext_log(level text, event text, message text DEFAULT NULL, details jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    IF current_setting('transaction_read_only') = 'on' THEN
        RETURN;
    END IF;
    IF $1 = 'debug' THEN
        IF coalesce(steadytext_config_get('debug_mode')::boolean, false) THEN
            INSERT INTO steadytext_debug_logs (level, event, message, details) VALUES ($1, $2, $3, $4);
        END IF;
    ELSE
        INSERT INTO steadytext_logs (level, event, message, details) VALUES ($1, $2, $3, $4);
    END IF;
END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Cache lookups now count hits and misses and leave debug entries.

CREATE OR REPLACE FUNCTION _steadytext_cache_lookup(
    p_op text, p_role text, p_size text, p_params text, p_input text, p_ttl_seconds integer,
    OUT cache_key text, OUT response text, OUT embedding @vector_schema@.vector)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_identity text;
    v_writable boolean := current_setting('transaction_read_only') = 'off';
BEGIN
    SELECT m.identity INTO v_identity FROM steadytext_models m WHERE m.role = p_role AND m.size = p_size;
    IF v_identity IS NOT NULL THEN
        cache_key := steadytext_cache_key(p_op, v_identity, p_params, p_input);
        SELECT c.response, c.embedding INTO response, embedding
          FROM steadytext_cache c
         WHERE c.cache_key = _steadytext_cache_lookup.cache_key
           AND greatest(c.created_at, c.last_accessed) > now() - make_interval(secs => p_ttl_seconds);
    END IF;
    IF v_writable THEN
        IF response IS NOT NULL OR embedding IS NOT NULL THEN
            PERFORM nextval('steadytext_sql_cache_hits');
        ELSE
            PERFORM nextval('steadytext_sql_cache_misses');
        END IF;
        IF steadytext_config_get('debug_mode') = 'true' THEN
            PERFORM steadytext_log('debug',
                CASE WHEN response IS NOT NULL OR embedding IS NOT NULL THEN 'cache_hit'
                     WHEN v_identity IS NULL THEN 'model_unregistered' ELSE 'cache_miss' END,
                format('%s lookup in the database', p_op),
                jsonb_build_object('op', p_op, 'model_size', p_size, 'params', p_params, 'cache_key', cache_key,
                                   'model_identity', v_identity, 'user', session_user));
        END IF;
    END IF;
END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Cache maintenance (owner only; the proxy runs it periodically)

CREATE OR REPLACE FUNCTION steadytext_cache_evict()
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
    WITH gone AS (
        DELETE FROM steadytext_cache c
         WHERE greatest(c.created_at, c.last_accessed)
               <= now() - make_interval(secs => coalesce(steadytext_config_get('cache_ttl_seconds')::integer, 3600))
        RETURNING 1
    )
    SELECT count(*) FROM gone
$fn$;

REVOKE EXECUTE ON FUNCTION steadytext_stats_bump(jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION steadytext_log(text, text, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_cache_lookup(text, text, text, text, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION steadytext_cache_evict() FROM PUBLIC;
