-- pg-steadytext SQL objects, level 4: the seed's exact signatures; answers handed over through tables.
--
-- Up to level 3 the proxy appended its answer to each call as a hidden trailing argument. That put answers
-- in the statement text (readable through current_query(), pg_stat_activity, pg_prepared_statements, kept
-- in views, rules and PREPAREd statements), let a planner that skipped the call hand the text out without
-- an EXECUTE check, and gave every function a signature the seed's GRANT, REVOKE, COMMENT and ALTER
-- FUNCTION do not name. From this level the proxy hands answers over through two tables that only the
-- owning role writes and only these functions read: steadytext_cache (by the key the function computes
-- from its own arguments) and steadytext_mailbox (per backend: management answers and failures).
--
-- The level-1 functions are renamed and now only call the new ones, so views and functions that were
-- created against them keep working, under the new functions' privileges.

ALTER FUNCTION steadytext_generate(text, integer, integer, double precision, text, text) RENAME TO _steadytext_v1_generate;
ALTER FUNCTION steadytext_embed(text, integer, text, text) RENAME TO _steadytext_v1_embed;
ALTER FUNCTION steadytext_generate_stream(text, integer, integer, text) RENAME TO _steadytext_v1_generate_stream;
ALTER FUNCTION steadytext_daemon_status(text) RENAME TO _steadytext_v1_daemon_status;
ALTER FUNCTION steadytext_daemon_start(text) RENAME TO _steadytext_v1_daemon_start;
ALTER FUNCTION steadytext_daemon_stop(text) RENAME TO _steadytext_v1_daemon_stop;
ALTER FUNCTION steadytext_daemon_restart(text) RENAME TO _steadytext_v1_daemon_restart;
ALTER FUNCTION steadytext_model_info(text) RENAME TO _steadytext_v1_model_info;

-- ---------------------------------------------------------------------------------------------------
-- The mailbox: what the proxy computed for one backend's statement that is not a cache row.
-- topic: 'status', 'model_info', 'start', 'stop', 'restart', or 'error:' || cache key.

CREATE TABLE IF NOT EXISTS steadytext_mailbox (
    backend_pid integer NOT NULL,
    topic       text NOT NULL,
    answer      text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (backend_pid, topic)
);
REVOKE ALL ON steadytext_mailbox FROM PUBLIC;

-- The entry the proxy posted for this backend right before the current statement reached the database.
-- The proxy commits it before it forwards the statement, so it is older than statement_timestamp() by
-- the proxy's own latency only; an older entry belongs to an earlier statement (or a reused pid).
CREATE OR REPLACE FUNCTION _steadytext_mailbox_read(p_topic text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
    SELECT m.answer FROM steadytext_mailbox m
     WHERE m.backend_pid = pg_backend_pid() AND m.topic = $1
       AND m.created_at >= statement_timestamp() - interval '30 seconds'
$fn$;

-- The same, consumed: an action (start, stop, restart) is reported once. A read-only transaction (a hot
-- standby, SET TRANSACTION READ ONLY) can only read it; it then expires with its 30 seconds.
CREATE OR REPLACE FUNCTION _steadytext_mailbox_take(p_topic text)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_answer text;
BEGIN
    IF current_setting('transaction_read_only')::boolean THEN
        RETURN _steadytext_mailbox_read(p_topic);
    END IF;
    DELETE FROM steadytext_mailbox m
     WHERE m.backend_pid = pg_backend_pid() AND m.topic = p_topic
       AND m.created_at >= statement_timestamp() - interval '30 seconds'
    RETURNING m.answer INTO v_answer;
    RETURN v_answer;
END
$fn$;

-- A failure the proxy met computing this backend's call (it is raised here, inside the statement, with its
-- SQLSTATE, as the function itself would fail). Nothing when the proxy did not try.
CREATE OR REPLACE FUNCTION _steadytext_raise_posted(p_function text, p_cache_key text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    IF p_cache_key IS NOT NULL THEN
        PERFORM _steadytext_unwrap(p_function, _steadytext_mailbox_read('error:' || p_cache_key));
    END IF;
END
$fn$;

-- Cache lookup: the proxy's answers are cache rows even while cache_enabled is false (then only those just
-- handed over count, so nothing is reused later).
CREATE OR REPLACE FUNCTION _steadytext_lookup_ttl(p_cache_enabled boolean, p_ttl_seconds integer)
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $fn$
    SELECT CASE WHEN $1 THEN $2 ELSE 60 END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Generation and embeddings, with the seed's signatures. STABLE, not PARALLEL SAFE (see level 1).

CREATE FUNCTION steadytext_generate(
    prompt text,
    max_tokens integer DEFAULT NULL,
    seed integer DEFAULT NULL,
    temperature double precision DEFAULT NULL,
    model_size text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    r record;
    k record;
BEGIN
    IF prompt IS NULL THEN
        RETURN NULL;
    END IF;
    r := _steadytext_resolve('steadytext_generate', max_tokens, seed, temperature, model_size);
    k := _steadytext_cache_lookup('generate', 'generation', r.model_size,
                                  _steadytext_generate_params(r.max_tokens, r.seed, r.temperature),
                                  prompt, _steadytext_lookup_ttl(r.cache_enabled, r.cache_ttl_seconds));
    IF k.response IS NOT NULL THEN
        RETURN k.response;
    END IF;
    PERFORM _steadytext_raise_posted('steadytext_generate', k.cache_key);
    RETURN _steadytext_daemon_call('steadytext_generate', jsonb_build_object(
        'op', 'generate', 'prompt', prompt, 'max_tokens', r.max_tokens, 'seed', r.seed,
        'temperature', r.temperature, 'temperature_bits', encode(float8send(r.temperature), 'hex'),
        'model_size', r.model_size, 'cache', r.cache_enabled, 'debug', r.debug,
        'auto_start', coalesce(steadytext_config_get('daemon_auto_start')::boolean, true)));
END
$fn$;

CREATE FUNCTION steadytext_embed(
    text text,
    seed integer DEFAULT NULL,
    model_size text DEFAULT NULL)
RETURNS @vector_schema@.vector
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_input text := $1;
    r record;
    k record;
BEGIN
    IF v_input IS NULL THEN
        RETURN NULL;
    END IF;
    r := _steadytext_resolve('steadytext_embed', NULL, seed, NULL, model_size);
    k := _steadytext_cache_lookup('embed', 'embedding', r.model_size, _steadytext_embed_params(r.seed),
                                  v_input, _steadytext_lookup_ttl(r.cache_enabled, r.cache_ttl_seconds));
    IF k.embedding IS NOT NULL THEN
        RETURN k.embedding;
    END IF;
    PERFORM _steadytext_raise_posted('steadytext_embed', k.cache_key);
    RETURN _steadytext_daemon_call('steadytext_embed', jsonb_build_object(
        'op', 'embed', 'text', v_input, 'seed', r.seed, 'model_size', r.model_size,
        'cache', r.cache_enabled, 'debug', r.debug,
        'auto_start', coalesce(steadytext_config_get('daemon_auto_start')::boolean, true)))::@vector_schema@.vector;
END
$fn$;

-- Chunks travel and are cached as one JSON array of strings; joined they equal the generated text.
CREATE FUNCTION steadytext_generate_stream(
    prompt text,
    max_tokens integer DEFAULT NULL,
    seed integer DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_chunks text;
    r record;
    k record;
BEGIN
    IF prompt IS NULL THEN
        RETURN;
    END IF;
    r := _steadytext_resolve('steadytext_generate_stream', max_tokens, seed, NULL, NULL);
    k := _steadytext_cache_lookup('generate_stream', 'generation', r.model_size,
                                  _steadytext_generate_params(r.max_tokens, r.seed, r.temperature),
                                  prompt, _steadytext_lookup_ttl(r.cache_enabled, r.cache_ttl_seconds));
    v_chunks := k.response;
    IF v_chunks IS NULL THEN
        PERFORM _steadytext_raise_posted('steadytext_generate_stream', k.cache_key);
        v_chunks := _steadytext_daemon_call('steadytext_generate_stream', jsonb_build_object(
            'op', 'generate_stream', 'prompt', prompt, 'max_tokens', r.max_tokens, 'seed', r.seed,
            'temperature', r.temperature, 'temperature_bits', encode(float8send(r.temperature), 'hex'),
            'model_size', r.model_size, 'cache', r.cache_enabled, 'debug', r.debug,
            'auto_start', coalesce(steadytext_config_get('daemon_auto_start')::boolean, true)));
    END IF;
    RETURN QUERY SELECT json_array_elements_text(v_chunks::json);
END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- Daemon management and information

CREATE FUNCTION steadytext_daemon_status()
RETURNS TABLE(running boolean, pid integer, host text, port integer, uptime_seconds integer,
              requests_processed bigint, errors_count bigint, avg_latency_ms double precision)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_answer text := _steadytext_unwrap('steadytext_daemon_status', _steadytext_mailbox_read('status'));
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

CREATE FUNCTION steadytext_model_info()
RETURNS TABLE(model_type text, model_size text, loaded boolean, memory_mb integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_answer text := _steadytext_unwrap('steadytext_model_info', _steadytext_mailbox_read('model_info'));
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

CREATE FUNCTION steadytext_daemon_start()
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    RETURN coalesce(_steadytext_unwrap('steadytext_daemon_start', _steadytext_mailbox_take('start')),
                    _steadytext_daemon_call('steadytext_daemon_start', '{"op":"start"}'))::boolean;
END
$fn$;

CREATE FUNCTION steadytext_daemon_stop()
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    RETURN coalesce(_steadytext_unwrap('steadytext_daemon_stop', _steadytext_mailbox_take('stop')),
                    _steadytext_daemon_call('steadytext_daemon_stop', '{"op":"stop"}'))::boolean;
END
$fn$;

CREATE FUNCTION steadytext_daemon_restart()
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    RETURN coalesce(_steadytext_unwrap('steadytext_daemon_restart', _steadytext_mailbox_take('restart')),
                    _steadytext_daemon_call('steadytext_daemon_restart', '{"op":"restart"}'))::boolean;
END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- The level-1 signatures call the new functions as the caller (SECURITY INVOKER): their EXECUTE and
-- REVOKEs are the new functions'. A hidden answer they are given is ignored.

CREATE OR REPLACE FUNCTION _steadytext_v1_generate(prompt text, max_tokens integer DEFAULT NULL, seed integer DEFAULT NULL,
    temperature double precision DEFAULT NULL, model_size text DEFAULT NULL, _steadytext_answer text DEFAULT NULL)
RETURNS text LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT @schema@.steadytext_generate($1, $2, $3, $4, $5) $fn$;

CREATE OR REPLACE FUNCTION _steadytext_v1_embed(text text, seed integer DEFAULT NULL, model_size text DEFAULT NULL, _steadytext_answer text DEFAULT NULL)
RETURNS @vector_schema@.vector LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT @schema@.steadytext_embed($1, $2, $3) $fn$;

CREATE OR REPLACE FUNCTION _steadytext_v1_generate_stream(prompt text, max_tokens integer DEFAULT NULL, seed integer DEFAULT NULL, _steadytext_answer text DEFAULT NULL)
RETURNS SETOF text LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM @schema@.steadytext_generate_stream($1, $2, $3) $fn$;

CREATE OR REPLACE FUNCTION _steadytext_v1_daemon_status(_steadytext_answer text DEFAULT NULL)
RETURNS TABLE(running boolean, pid integer, host text, port integer, uptime_seconds integer,
              requests_processed bigint, errors_count bigint, avg_latency_ms double precision)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM @schema@.steadytext_daemon_status() $fn$;

CREATE OR REPLACE FUNCTION _steadytext_v1_model_info(_steadytext_answer text DEFAULT NULL)
RETURNS TABLE(model_type text, model_size text, loaded boolean, memory_mb integer)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM @schema@.steadytext_model_info() $fn$;

CREATE OR REPLACE FUNCTION _steadytext_v1_daemon_start(_steadytext_answer text DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT @schema@.steadytext_daemon_start() $fn$;

CREATE OR REPLACE FUNCTION _steadytext_v1_daemon_stop(_steadytext_answer text DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT @schema@.steadytext_daemon_stop() $fn$;

CREATE OR REPLACE FUNCTION _steadytext_v1_daemon_restart(_steadytext_answer text DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT @schema@.steadytext_daemon_restart() $fn$;

-- ---------------------------------------------------------------------------------------------------
-- Privileges carried over: whatever was granted or revoked on a level-1 function (REVOKE ... FROM PUBLIC,
-- GRANT ... TO a role) now holds for the function that replaces it. The renamed ones keep theirs too.

DO $carry$
DECLARE
    p record;
    g record;
    v_acl aclitem[];
    v_owner oid;
BEGIN
    FOR p IN SELECT v.o::regprocedure AS old_fn, v.n::regprocedure AS new_fn, v.admin FROM (VALUES
        ('@schema@._steadytext_v1_generate(text,integer,integer,double precision,text,text)', '@schema@.steadytext_generate(text,integer,integer,double precision,text)', false),
        ('@schema@._steadytext_v1_embed(text,integer,text,text)', '@schema@.steadytext_embed(text,integer,text)', false),
        ('@schema@._steadytext_v1_generate_stream(text,integer,integer,text)', '@schema@.steadytext_generate_stream(text,integer,integer)', false),
        ('@schema@._steadytext_v1_daemon_status(text)', '@schema@.steadytext_daemon_status()', false),
        ('@schema@._steadytext_v1_model_info(text)', '@schema@.steadytext_model_info()', false),
        ('@schema@._steadytext_v1_daemon_start(text)', '@schema@.steadytext_daemon_start()', true),
        ('@schema@._steadytext_v1_daemon_stop(text)', '@schema@.steadytext_daemon_stop()', true),
        ('@schema@._steadytext_v1_daemon_restart(text)', '@schema@.steadytext_daemon_restart()', true)) AS v(o, n, admin)
    LOOP
        SELECT f.proacl, f.proowner INTO v_acl, v_owner FROM pg_proc f WHERE f.oid = p.old_fn;
        CONTINUE WHEN v_acl IS NULL; -- never changed: the defaults below apply
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', p.new_fn);
        -- PUBLIC's old EXECUTE on an administration function is not carried: administration is granted.
        FOR g IN SELECT a.grantee, a.is_grantable FROM aclexplode(v_acl) a
                  WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> v_owner AND NOT (p.admin AND a.grantee = 0) LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s%s', p.new_fn,
                CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
END
$carry$;

-- ---------------------------------------------------------------------------------------------------
-- Privileges. Reading stays open; changing configuration and starting or stopping the models is for
-- the owning role and whoever it GRANTs EXECUTE on these functions (README: "Administrators").

REVOKE EXECUTE ON FUNCTION steadytext_config_set(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION steadytext_daemon_start() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION steadytext_daemon_stop() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION steadytext_daemon_restart() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_mailbox_read(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_mailbox_take(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_raise_posted(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_lookup_ttl(boolean, integer) FROM PUBLIC;

-- Every function reads its own literals (regular expressions, conninfo quoting) with standard strings,
-- whatever the calling session set: with standard_conforming_strings off, '\' would start an escape.
DO $scs$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = '@schema@'::regnamespace
                AND (p.proname LIKE 'steadytext\_%' OR p.proname LIKE '\_steadytext\_%')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET standard_conforming_strings = on', f);
    END LOOP;
END
$scs$;
