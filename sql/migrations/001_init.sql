-- pg-steadytext SQL objects, level 1: configuration, cache, model identities, the daemon secret and the
-- steadytext_* functions. Applied by sql/install.ts inside one transaction with
--   search_path = @schema@, @vector_schema@
-- where @schema@ / @vector_schema@ are replaced by the quoted install schema and pgvector's schema.
--
-- The answer contract: every function that computes something takes a trailing _steadytext_answer.
-- When the proxy has already evaluated the call it appends the answer there and the function returns it
-- untouched (the database still checks EXECUTE because the function still runs). Otherwise the function
-- resolves defaults, looks in steadytext_cache and, on a miss, asks the proxy's daemon endpoint through
-- dblink (the callback path).

-- ---------------------------------------------------------------------------------------------------
-- Configuration

CREATE TABLE IF NOT EXISTS steadytext_config (
    key         text PRIMARY KEY,
    value       text,
    description text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO steadytext_config (key, value, description) VALUES
    ('daemon_host',          'localhost', 'Host of the pg-steadytext daemon endpoint, as the database server reaches it (dblink)'),
    ('daemon_port',          '5557',      'Port of the pg-steadytext daemon endpoint'),
    ('daemon_timeout_ms',    '30000',     'Time limit of one callback request to the daemon, in milliseconds'),
    ('default_max_tokens',   '512',       'Default max_tokens of steadytext_generate'),
    ('default_seed',         '42',        'Default seed for deterministic output'),
    ('default_model_size',   'small',     'Default model size: small, large or a configured model name'),
    ('cache_enabled',        'true',      'Look answers up in steadytext_cache and store new ones'),
    ('cache_ttl_seconds',    '3600',      'How long a cache entry stays valid after it was written or last used'),
    ('debug_mode',           'false',     'Record debug entries in steadytext_debug_logs'),
    ('daemon_auto_start',    'true',      'Load models on the first request instead of at proxy start-up'),
    ('connection_pool_size', '4',         'Connections each proxy keeps to the database for its own work')
ON CONFLICT (key) DO NOTHING;

REVOKE ALL ON steadytext_config FROM PUBLIC;
GRANT SELECT ON steadytext_config TO PUBLIC;

CREATE OR REPLACE FUNCTION steadytext_config_get(key text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
    SELECT c.value FROM steadytext_config c WHERE c.key = $1
$fn$;

-- Checks a value for a known key and returns it normalised; unknown keys pass through unchanged
-- (users keep their own entries there, e.g. the seed's cache_hit_rate).
CREATE OR REPLACE FUNCTION _steadytext_config_check(p_key text, p_value text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v text := btrim(p_value);
    n numeric;
    bad text;
BEGIN
    IF p_key IN ('daemon_host', 'daemon_port', 'daemon_timeout_ms', 'default_max_tokens', 'default_seed',
                 'default_model_size', 'cache_enabled', 'cache_ttl_seconds', 'debug_mode',
                 'daemon_auto_start', 'connection_pool_size') AND p_value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('steadytext_config_set: %s cannot be NULL', p_key);
    END IF;

    CASE p_key
    WHEN 'daemon_host' THEN
        -- A host name, an IP address or a Unix-socket directory; it ends up in a libpq connection string.
        IF v = '' OR v !~ '^(/[^''\\[:space:]]*|[A-Za-z0-9._:%-]+)$' THEN
            bad := 'a host name, an IP address or an absolute Unix-socket directory';
        END IF;
    WHEN 'daemon_port' THEN
        IF v !~ '^[0-9]{1,5}$' OR v::int NOT BETWEEN 1 AND 65535 THEN
            bad := 'an integer from 1 to 65535';
        END IF;
    WHEN 'daemon_timeout_ms', 'default_max_tokens', 'cache_ttl_seconds', 'connection_pool_size' THEN
        IF v !~ '^\+?[0-9]{1,10}$' OR v::bigint NOT BETWEEN 1 AND 2147483647 THEN
            bad := 'a positive integer (1 to 2147483647)';
        ELSE
            v := (v::bigint)::text;
        END IF;
    WHEN 'default_seed' THEN
        IF v !~ '^\+?[0-9]{1,10}$' OR v::bigint > 2147483647 THEN
            bad := 'an integer from 0 to 2147483647';
        ELSE
            v := (v::bigint)::text;
        END IF;
    WHEN 'default_model_size' THEN
        IF v !~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$' THEN
            bad := 'small, large or a model name (letters, digits and ._:/-)';
        END IF;
    WHEN 'cache_enabled', 'debug_mode', 'daemon_auto_start' THEN
        IF lower(v) IN ('true', 't', 'on', 'yes', 'y', '1') THEN
            v := 'true';
        ELSIF lower(v) IN ('false', 'f', 'off', 'no', 'n', '0') THEN
            v := 'false';
        ELSE
            bad := 'true or false';
        END IF;
    ELSE
        RETURN p_value;
    END CASE;

    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('steadytext_config_set: %s must be %s, got %s', p_key, bad, quote_literal(p_value));
    END IF;
    RETURN v;
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_config_set(key text, value text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v text;
    v_owner regrole;
BEGIN
    IF $1 IS NULL OR btrim($1) = '' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'steadytext_config_set: key must not be empty';
    END IF;
    v := _steadytext_config_check($1, $2);
    -- The daemon address receives the daemon secret and serves every session's callbacks: whoever could
    -- move it could collect the secret and forge answers. Only members of the owning role may. The check
    -- uses session_user because current_user is the owner inside this SECURITY DEFINER function.
    IF $1 IN ('daemon_host', 'daemon_port') THEN
        SELECT c.relowner::regrole INTO v_owner FROM pg_class c WHERE c.oid = 'steadytext_config'::regclass;
        IF NOT pg_has_role(session_user, v_owner, 'MEMBER') THEN
            RAISE EXCEPTION USING ERRCODE = '42501',
                MESSAGE = format('steadytext_config_set: only members of role %s may change %s', v_owner, $1),
                HINT = 'The daemon address receives the daemon secret; ask the owner of the steadytext objects to change it.';
        END IF;
    END IF;
    INSERT INTO steadytext_config AS c (key, value, updated_at)
    VALUES ($1, v, now())
    ON CONFLICT ON CONSTRAINT steadytext_config_pkey
    DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at;
    -- Proxies LISTEN on this channel and reload their runtime settings (delivered at commit).
    PERFORM pg_notify('steadytext_config', $1);
END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Model identities, cache, daemon secret

-- Written by the proxy: which model file answers (role, size). The cache key includes the identity so
-- a new model never serves an old model's answers.
CREATE TABLE IF NOT EXISTS steadytext_models (
    role       text NOT NULL CHECK (role IN ('generation', 'embedding')),
    size       text NOT NULL,
    identity   text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, size)
);
REVOKE ALL ON steadytext_models FROM PUBLIC;
GRANT SELECT ON steadytext_models TO PUBLIC;

CREATE TABLE IF NOT EXISTS steadytext_cache (
    cache_key      text PRIMARY KEY,
    operation      text NOT NULL,
    model_identity text NOT NULL,
    params         jsonb,
    prompt         text,
    response       text,
    embedding      @vector_schema@.vector,
    created_at     timestamptz NOT NULL DEFAULT now(),
    access_count   bigint NOT NULL DEFAULT 0,
    last_accessed  timestamptz
);
-- Written only by the proxy (the installing role): clients cannot poison answers. Level 3 makes it private.
REVOKE ALL ON steadytext_cache FROM PUBLIC;
GRANT SELECT ON steadytext_cache TO PUBLIC;

-- The password dblink presents to the daemon endpoint. Only the owner (and the SECURITY DEFINER
-- functions below) can read it.
CREATE TABLE IF NOT EXISTS steadytext_daemon_secret (
    id         integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    secret     text NOT NULL CHECK (length(secret) >= 16),
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON steadytext_daemon_secret FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------------
-- The cache key (sql/cache-key.ts computes the same bytes in TypeScript)

-- An answer the proxy passes may instead carry the error its evaluation raised, so that the error
-- happens inside the database (aborting the transaction, at the right point of the statement) exactly
-- as a failing function would: chr(1) || sqlstate || chr(1) || message || chr(1) || hint. An answer
-- that really starts with chr(1) travels with a second chr(1) in front.
CREATE OR REPLACE FUNCTION _steadytext_unwrap(p_function text, p_answer text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog
AS $fn$
DECLARE
    v_parts text[];
BEGIN
    IF p_answer IS NULL OR left(p_answer, 1) <> chr(1) THEN
        RETURN p_answer;
    END IF;
    IF substr(p_answer, 2, 1) = chr(1) THEN
        RETURN substr(p_answer, 2);
    END IF;
    v_parts := string_to_array(substr(p_answer, 2), chr(1));
    RAISE EXCEPTION USING ERRCODE = coalesce(v_parts[1], 'XX000'),
        MESSAGE = coalesce(v_parts[2], p_function || ' failed'),
        HINT = coalesce(v_parts[3], '');
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_cache_key(op text, model_identity text, params text, input text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
        $1 OPERATOR(pg_catalog.||) pg_catalog.chr(31) OPERATOR(pg_catalog.||) $2
           OPERATOR(pg_catalog.||) pg_catalog.chr(31) OPERATOR(pg_catalog.||) $3
           OPERATOR(pg_catalog.||) pg_catalog.chr(31) OPERATOR(pg_catalog.||) $4,
        'UTF8')), 'hex')
$fn$;

CREATE OR REPLACE FUNCTION _steadytext_generate_params(max_tokens integer, seed integer, temperature double precision)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    -- The temperature enters as its exact IEEE-754 bits, independent of extra_float_digits; adding +0
    -- turns -0 into 0 so that both spellings of greedy share a key.
    SELECT 'max_tokens=' || $1::text || ';seed=' || $2::text || ';temperature=' || encode(float8send($3 + 0::float8), 'hex')
$fn$;

CREATE OR REPLACE FUNCTION _steadytext_embed_params(seed integer)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT 'seed=' || $1::text
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Internal helpers (EXECUTE revoked from PUBLIC; the user-facing functions run them as the owner)

-- Resolves NULL arguments from steadytext_config and validates the result.
CREATE OR REPLACE FUNCTION _steadytext_resolve(
    p_function text, p_max_tokens integer, p_seed integer, p_temperature double precision, p_model_size text,
    OUT max_tokens integer, OUT seed integer, OUT temperature double precision, OUT model_size text,
    OUT cache_enabled boolean, OUT cache_ttl_seconds integer, OUT debug boolean)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    c record;
BEGIN
    SELECT max(value) FILTER (WHERE key = 'default_max_tokens') AS max_tokens,
           max(value) FILTER (WHERE key = 'default_seed') AS seed,
           max(value) FILTER (WHERE key = 'default_model_size') AS model_size,
           max(value) FILTER (WHERE key = 'cache_enabled') AS cache_enabled,
           max(value) FILTER (WHERE key = 'cache_ttl_seconds') AS ttl,
           max(value) FILTER (WHERE key = 'debug_mode') AS debug
      INTO c
      FROM steadytext_config
     WHERE key IN ('default_max_tokens', 'default_seed', 'default_model_size', 'cache_enabled',
                   'cache_ttl_seconds', 'debug_mode');

    max_tokens := coalesce(p_max_tokens, c.max_tokens::integer, 512);
    seed := coalesce(p_seed, c.seed::integer, 42);
    temperature := coalesce(p_temperature, 0);
    model_size := coalesce(p_model_size, c.model_size, 'small');
    cache_enabled := coalesce(c.cache_enabled::boolean, true);
    cache_ttl_seconds := coalesce(c.ttl::integer, 3600);
    debug := coalesce(c.debug::boolean, false);

    IF max_tokens < 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s: max_tokens must be a positive integer, got %s', p_function, max_tokens);
    END IF;
    IF seed < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s: seed must be an integer >= 0, got %s', p_function, seed);
    END IF;
    IF temperature < 0 OR temperature = 'Infinity' OR temperature = 'NaN' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s: temperature must be a finite number >= 0 (0 = greedy), got %s', p_function, temperature);
    END IF;
    IF btrim(model_size) = '' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s: model_size must be small, large or a model name', p_function);
    END IF;
END
$fn$;

-- Looks an answer up in steadytext_cache. Returns the key (NULL when the model identity is unknown,
-- i.e. the proxy never registered it: the callback then decides) and the cached row if still fresh.
CREATE OR REPLACE FUNCTION _steadytext_cache_lookup(
    p_op text, p_role text, p_size text, p_params text, p_input text, p_ttl_seconds integer,
    OUT cache_key text, OUT response text, OUT embedding @vector_schema@.vector)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_identity text;
BEGIN
    SELECT m.identity INTO v_identity FROM steadytext_models m WHERE m.role = p_role AND m.size = p_size;
    IF v_identity IS NULL THEN
        RETURN;
    END IF;
    cache_key := steadytext_cache_key(p_op, v_identity, p_params, p_input);
    SELECT c.response, c.embedding INTO response, embedding
      FROM steadytext_cache c
     WHERE c.cache_key = _steadytext_cache_lookup.cache_key
       AND greatest(c.created_at, c.last_accessed) > now() - make_interval(secs => p_ttl_seconds);
END
$fn$;

-- Quotes a value for a libpq connection string.
CREATE OR REPLACE FUNCTION _steadytext_conninfo_value(v text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT '''' || replace(replace($1, '\', '\\'), '''', '\''') || ''''
$fn$;

-- Sends one request to the daemon endpoint through dblink and returns its one-text-value answer.
-- One connection per call, never a named one kept in the session: a kept connection would be listed by
-- dblink_get_connections() and usable by anyone in the session with EXECUTE on dblink, who could then
-- send requests that REVOKEs deny them (daemon_stop, say). Connecting costs ~0.3 ms, little next to
-- any inference.
CREATE OR REPLACE FUNCTION _steadytext_daemon_call(p_function text, p_request jsonb)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    c record;
    v_dblink text;
    v_secret text;
    v_timeout_ms integer;
    v_connstr text;
    v_result text;
    v_msg text;
    v_detail text;
BEGIN
    SELECT max(value) FILTER (WHERE key = 'daemon_host') AS host,
           max(value) FILTER (WHERE key = 'daemon_port') AS port,
           max(value) FILTER (WHERE key = 'daemon_timeout_ms') AS timeout_ms
      INTO c
      FROM steadytext_config
     WHERE key IN ('daemon_host', 'daemon_port', 'daemon_timeout_ms');
    c.host := coalesce(c.host, 'localhost');
    c.port := coalesce(c.port, '5557');
    v_timeout_ms := coalesce(c.timeout_ms::integer, 30000);

    -- dblink is optional and may be created after us, in any schema: find it at call time.
    SELECT n.nspname INTO v_dblink
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'dblink';
    IF v_dblink IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('%s has no cached answer and cannot call the pg-steadytext daemon: the dblink extension is not installed in database %s',
                             p_function, quote_ident(current_database())),
            DETAIL = 'The call was not visible to the proxy (inside a function, trigger or view), so the database must ask the daemon itself.',
            HINT = 'Run CREATE EXTENSION dblink (as a superuser) in this database, or call the function directly through the pg-steadytext proxy.';
    END IF;

    SELECT s.secret INTO v_secret FROM steadytext_daemon_secret s WHERE s.id = 1;
    IF v_secret IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('%s cannot call the pg-steadytext daemon: this database has no daemon secret yet', p_function),
            HINT = 'Start the pg-steadytext proxy against this database once; it creates the secret when it prepares the database.';
    END IF;

    p_request := p_request || jsonb_build_object('timeout_ms', v_timeout_ms, 'function', p_function,
                                                 'user', session_user, 'database', current_database(),
                                                 'backend_pid', pg_backend_pid());
    -- PostgreSQL 15's dblink waits for the answer without checking for cancels: the daemon enforces
    -- timeout_ms, and connect_timeout bounds an unreachable host.
    v_connstr := format('host=%s port=%s dbname=steadytext user=steadytext password=%s connect_timeout=%s sslmode=disable gssencmode=disable application_name=%s',
                        _steadytext_conninfo_value(c.host), _steadytext_conninfo_value(c.port),
                        _steadytext_conninfo_value(v_secret),
                        least(greatest(ceil(v_timeout_ms / 1000.0)::integer, 2), 10),
                        _steadytext_conninfo_value('steadytext:' || current_database()));
    BEGIN
        EXECUTE format('SELECT t.answer FROM %I.dblink($1, $2) AS t(answer text)', v_dblink)
           INTO v_result USING v_connstr, p_request::text;
    EXCEPTION WHEN connection_exception OR sqlclient_unable_to_establish_sqlconnection THEN
        -- Errors the daemon sends keep their own SQLSTATE; these are the ones of the connection itself.
        GET STACKED DIAGNOSTICS v_msg = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION USING ERRCODE = '08001',
            MESSAGE = format('%s could not reach the pg-steadytext daemon at %s:%s: %s', p_function, c.host, c.port,
                             regexp_replace(btrim(coalesce(nullif(v_detail, ''), v_msg)), '\s+', ' ', 'g')),
            HINT = 'Start the pg-steadytext proxy (it serves the daemon endpoint), or point the database at it with '
                   'steadytext_config_set(''daemon_host'', ...) and steadytext_config_set(''daemon_port'', ...).';
    END;
    RETURN v_result;
END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Generation and embeddings
--
-- STABLE (not VOLATILE) so that `ORDER BY embedding <=> steadytext_embed('...')` can use a vector index,
-- which evaluates the call once (a sequential scan still evaluates it per row, as for any non-IMMUTABLE
-- function; `(SELECT steadytext_embed(...))` makes it once there too). Not PARALLEL SAFE: the callback
-- path needs subtransactions (exception blocks) and dblink, neither allowed in a parallel operation.

CREATE OR REPLACE FUNCTION steadytext_generate(
    prompt text,
    max_tokens integer DEFAULT NULL,
    seed integer DEFAULT NULL,
    temperature double precision DEFAULT NULL,
    model_size text DEFAULT NULL,
    _steadytext_answer text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    r record;
    k record;
BEGIN
    IF _steadytext_answer IS NOT NULL THEN
        RETURN _steadytext_unwrap('steadytext_generate', _steadytext_answer);
    END IF;
    IF prompt IS NULL THEN
        RETURN NULL;
    END IF;
    r := _steadytext_resolve('steadytext_generate', max_tokens, seed, temperature, model_size);
    IF r.cache_enabled THEN
        k := _steadytext_cache_lookup('generate', 'generation', r.model_size,
                                      _steadytext_generate_params(r.max_tokens, r.seed, r.temperature),
                                      prompt, r.cache_ttl_seconds);
        IF k.response IS NOT NULL THEN
            RETURN k.response;
        END IF;
    END IF;
    RETURN _steadytext_daemon_call('steadytext_generate', jsonb_build_object(
        'op', 'generate', 'prompt', prompt, 'max_tokens', r.max_tokens, 'seed', r.seed,
        'temperature', r.temperature, 'temperature_bits', encode(float8send(r.temperature), 'hex'),
        'model_size', r.model_size, 'cache', r.cache_enabled, 'debug', r.debug));
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_embed(
    text text,
    seed integer DEFAULT NULL,
    model_size text DEFAULT NULL,
    _steadytext_answer text DEFAULT NULL)
RETURNS @vector_schema@.vector
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_input text := $1;
    r record;
    k record;
BEGIN
    IF _steadytext_answer IS NOT NULL THEN
        RETURN _steadytext_unwrap('steadytext_embed', _steadytext_answer)::@vector_schema@.vector;
    END IF;
    IF v_input IS NULL THEN
        RETURN NULL;
    END IF;
    r := _steadytext_resolve('steadytext_embed', NULL, seed, NULL, model_size);
    IF r.cache_enabled THEN
        k := _steadytext_cache_lookup('embed', 'embedding', r.model_size, _steadytext_embed_params(r.seed),
                                      v_input, r.cache_ttl_seconds);
        IF k.embedding IS NOT NULL THEN
            RETURN k.embedding;
        END IF;
    END IF;
    RETURN _steadytext_daemon_call('steadytext_embed', jsonb_build_object(
        'op', 'embed', 'text', v_input, 'seed', r.seed, 'model_size', r.model_size,
        'cache', r.cache_enabled, 'debug', r.debug))::@vector_schema@.vector;
END
$fn$;

-- Chunks travel and are cached as one JSON array of strings; joined they equal the generated text.
CREATE OR REPLACE FUNCTION steadytext_generate_stream(
    prompt text,
    max_tokens integer DEFAULT NULL,
    seed integer DEFAULT NULL,
    _steadytext_answer text DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_chunks text := _steadytext_unwrap('steadytext_generate_stream', _steadytext_answer);
    r record;
    k record;
BEGIN
    IF v_chunks IS NULL THEN
        IF prompt IS NULL THEN
            RETURN;
        END IF;
        r := _steadytext_resolve('steadytext_generate_stream', max_tokens, seed, NULL, NULL);
        IF r.cache_enabled THEN
            k := _steadytext_cache_lookup('generate_stream', 'generation', r.model_size,
                                          _steadytext_generate_params(r.max_tokens, r.seed, r.temperature),
                                          prompt, r.cache_ttl_seconds);
            v_chunks := k.response;
        END IF;
        IF v_chunks IS NULL THEN
            v_chunks := _steadytext_daemon_call('steadytext_generate_stream', jsonb_build_object(
                'op', 'generate_stream', 'prompt', prompt, 'max_tokens', r.max_tokens, 'seed', r.seed,
                'temperature', r.temperature, 'temperature_bits', encode(float8send(r.temperature), 'hex'),
                'model_size', r.model_size, 'cache', r.cache_enabled, 'debug', r.debug));
        END IF;
    END IF;
    RETURN QUERY SELECT json_array_elements_text(v_chunks::json);
END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Daemon management and information

CREATE OR REPLACE FUNCTION steadytext_daemon_status(_steadytext_answer text DEFAULT NULL)
RETURNS TABLE(running boolean, pid integer, host text, port integer, uptime_seconds integer,
              requests_processed bigint, errors_count bigint, avg_latency_ms double precision)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_answer text := _steadytext_unwrap('steadytext_daemon_status', _steadytext_answer);
    v_msg text;
BEGIN
    IF v_answer IS NULL THEN
        BEGIN
            v_answer := _steadytext_daemon_call('steadytext_daemon_status', '{"op":"status"}');
        EXCEPTION WHEN connection_exception OR object_not_in_prerequisite_state THEN
            -- Monitoring queries keep working while the daemon is away: it is simply not running.
            GET STACKED DIAGNOSTICS v_msg = MESSAGE_TEXT;
            RAISE NOTICE '%', v_msg;
            RETURN QUERY
            SELECT false, NULL::integer, steadytext_config_get('daemon_host'),
                   steadytext_config_get('daemon_port')::integer, NULL::integer, 0::bigint, 0::bigint,
                   NULL::double precision;
            RETURN;
        END;
    END IF;
    RETURN QUERY
    SELECT j.running, j.pid, j.host, j.port, j.uptime_seconds, j.requests_processed, j.errors_count, j.avg_latency_ms
      FROM json_to_record(v_answer::json) AS j(running boolean, pid integer, host text, port integer,
                                               uptime_seconds integer, requests_processed bigint,
                                               errors_count bigint, avg_latency_ms double precision);
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_daemon_start(_steadytext_answer text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    RETURN coalesce(_steadytext_unwrap('steadytext_daemon_start', _steadytext_answer), _steadytext_daemon_call('steadytext_daemon_start', '{"op":"start"}'))::boolean;
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_daemon_stop(_steadytext_answer text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    RETURN coalesce(_steadytext_unwrap('steadytext_daemon_stop', _steadytext_answer), _steadytext_daemon_call('steadytext_daemon_stop', '{"op":"stop"}'))::boolean;
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_daemon_restart(_steadytext_answer text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    RETURN coalesce(_steadytext_unwrap('steadytext_daemon_restart', _steadytext_answer), _steadytext_daemon_call('steadytext_daemon_restart', '{"op":"restart"}'))::boolean;
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_model_info(_steadytext_answer text DEFAULT NULL)
RETURNS TABLE(model_type text, model_size text, loaded boolean, memory_mb integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_answer text := _steadytext_unwrap('steadytext_model_info', _steadytext_answer);
    v_msg text;
BEGIN
    IF v_answer IS NULL THEN
        BEGIN
            v_answer := _steadytext_daemon_call('steadytext_model_info', '{"op":"model_info"}');
        EXCEPTION WHEN connection_exception OR object_not_in_prerequisite_state THEN
            -- Without the daemon, list what the proxy registered; nothing is known to be loaded.
            GET STACKED DIAGNOSTICS v_msg = MESSAGE_TEXT;
            RAISE NOTICE '%', v_msg;
            RETURN QUERY
            SELECT m.role, m.size, false, NULL::integer FROM steadytext_models m ORDER BY m.role, m.size;
            RETURN;
        END;
    END IF;
    RETURN QUERY
    SELECT j.model_type, j.model_size, j.loaded, j.memory_mb
      FROM json_to_recordset(v_answer::json) AS j(model_type text, model_size text, loaded boolean, memory_mb integer);
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_version()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
    -- The version of the last migration applied (steadytext_meta is created by the installer).
    SELECT m.version FROM steadytext_meta m ORDER BY m.migration DESC LIMIT 1
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Privileges: user-facing functions keep PUBLIC's EXECUTE (so REVOKE ... FROM PUBLIC works as usual);
-- the helpers that touch the secret or bypass validation are for the owner only.

REVOKE EXECUTE ON FUNCTION _steadytext_config_check(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_unwrap(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_generate_params(integer, integer, double precision) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_embed_params(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_resolve(text, integer, integer, double precision, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_cache_lookup(text, text, text, text, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_conninfo_value(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_daemon_call(text, jsonb) FROM PUBLIC;
