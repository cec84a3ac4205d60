-- pg-steadytext SQL objects, level 9: an in-band answer that is a cache row is handed over as one.
--
-- Up to level 8 a function waiting in READ COMMITTED for its in-band answer took it from steadytext_mailbox:
-- the proxy inserted it there (and wrote the same answer into steadytext_cache later, off the answer's path),
-- and the function deleted it again, which made the client's statement a writing transaction. Now a computing
-- function sends the cache key it looked up (and the freshness its lookup required) with its request, and the
-- proxy, when the answer is a cache row under exactly that key, commits the row itself where it committed the
-- mailbox entry, and writes nothing later. The function, woken, repeats its own lookup (the same key, the same
-- freshness: steadytext_cache is written only by the owning role, so a row found there is the proxy's answer
-- for these arguments) with a fresh snapshot, and returns it (an embedding as a vector: steadytext_embed reads it
-- itself when told to by chr(2)); nothing is written in the client's transaction.
-- Failures, answers not cached (cache_enabled off), a key the proxy does not agree with (a model identity not
-- registered yet, or changed) and management calls still come through the mailbox, which the function looks
-- in when the cache has no row; large objects (a read-write REPEATABLE READ or SERIALIZABLE transaction) and a
-- one-session database (level 8) are as before.
--
-- Also: the function no longer looks for the answer before it first waits: it cannot be there yet.

CREATE OR REPLACE FUNCTION steadytext_generate(
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
    v_ttl integer;
BEGIN
    IF prompt IS NULL THEN
        RETURN NULL;
    END IF;
    r := _steadytext_resolve('steadytext_generate', max_tokens, seed, temperature, model_size);
    v_ttl := _steadytext_lookup_ttl(r.cache_enabled, r.cache_ttl_seconds);
    k := _steadytext_cache_lookup('generate', 'generation', r.model_size,
                                  _steadytext_generate_params(r.max_tokens, r.seed, r.temperature), prompt, v_ttl);
    IF k.response IS NOT NULL THEN
        RETURN k.response;
    END IF;
    PERFORM _steadytext_raise_posted('steadytext_generate', k.cache_key);
    RETURN _steadytext_daemon_call('steadytext_generate', jsonb_build_object(
        'op', 'generate', 'prompt', prompt, 'max_tokens', r.max_tokens, 'seed', r.seed,
        'temperature', r.temperature, 'temperature_bits', encode(float8send(r.temperature), 'hex'),
        'model_size', r.model_size, 'cache', r.cache_enabled, 'debug', r.debug,
        'auto_start', coalesce(steadytext_config_get('daemon_auto_start')::boolean, true),
        'cache_key', k.cache_key, 'ttl_seconds', v_ttl));
END
$fn$;

CREATE OR REPLACE FUNCTION steadytext_embed(
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
    v_ttl integer;
    v_answer text;
    v_embedding @vector_schema@.vector;
BEGIN
    IF v_input IS NULL THEN
        RETURN NULL;
    END IF;
    r := _steadytext_resolve('steadytext_embed', NULL, seed, NULL, model_size);
    v_ttl := _steadytext_lookup_ttl(r.cache_enabled, r.cache_ttl_seconds);
    k := _steadytext_cache_lookup('embed', 'embedding', r.model_size, _steadytext_embed_params(r.seed), v_input, v_ttl);
    IF k.embedding IS NOT NULL THEN
        RETURN k.embedding;
    END IF;
    PERFORM _steadytext_raise_posted('steadytext_embed', k.cache_key);
    v_answer := _steadytext_daemon_call('steadytext_embed', jsonb_build_object(
        'op', 'embed', 'text', v_input, 'seed', r.seed, 'model_size', r.model_size,
        'cache', r.cache_enabled, 'debug', r.debug,
        'auto_start', coalesce(steadytext_config_get('daemon_auto_start')::boolean, true),
        'cache_key', k.cache_key, 'ttl_seconds', v_ttl));
    IF v_answer = chr(2) THEN
        -- The in-band answer is the cache row just committed under k.cache_key (see the top of this file): read
        -- as a vector, not printed as text and parsed again (~0.3 ms for 1024 floats).
        v_embedding := _steadytext_inband_embedding(k.cache_key, v_ttl);
        IF v_embedding IS NOT NULL THEN
            RETURN v_embedding;
        END IF;
        -- Removed in between (an administrator's DELETE or TRUNCATE): asked again.
        RETURN steadytext_embed(v_input, seed, model_size);
    END IF;
    RETURN v_answer::@vector_schema@.vector;
END
$fn$;

-- The embedding of a cache row the proxy committed during the current statement: VOLATILE, so its query takes
-- a fresh snapshot (the caller's is the statement's), with the lookup's own conditions.
CREATE OR REPLACE FUNCTION _steadytext_inband_embedding(p_cache_key text, p_ttl_seconds integer)
RETURNS @vector_schema@.vector
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
    SELECT c.embedding FROM steadytext_cache c
     WHERE c.cache_key = $1
       AND greatest(c.created_at, c.last_accessed) > now() - make_interval(secs => $2)
$fn$;
REVOKE EXECUTE ON FUNCTION _steadytext_inband_embedding(text, integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION steadytext_generate_stream(
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
    v_ttl integer;
BEGIN
    IF prompt IS NULL THEN
        RETURN;
    END IF;
    r := _steadytext_resolve('steadytext_generate_stream', max_tokens, seed, NULL, NULL);
    v_ttl := _steadytext_lookup_ttl(r.cache_enabled, r.cache_ttl_seconds);
    k := _steadytext_cache_lookup('generate_stream', 'generation', r.model_size,
                                  _steadytext_generate_params(r.max_tokens, r.seed, r.temperature), prompt, v_ttl);
    v_chunks := k.response;
    IF v_chunks IS NULL THEN
        PERFORM _steadytext_raise_posted('steadytext_generate_stream', k.cache_key);
        v_chunks := _steadytext_daemon_call('steadytext_generate_stream', jsonb_build_object(
            'op', 'generate_stream', 'prompt', prompt, 'max_tokens', r.max_tokens, 'seed', r.seed,
            'temperature', r.temperature, 'temperature_bits', encode(float8send(r.temperature), 'hex'),
            'model_size', r.model_size, 'cache', r.cache_enabled, 'debug', r.debug,
            'auto_start', coalesce(steadytext_config_get('daemon_auto_start')::boolean, true),
            'cache_key', k.cache_key, 'ttl_seconds', v_ttl));
    END IF;
    RETURN QUERY SELECT json_array_elements_text(v_chunks::json);
END
$fn$;

CREATE OR REPLACE FUNCTION _steadytext_inband_call(p_function text, p_request jsonb, p_timeout_ms integer, p_tried text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @schema@, pg_temp
SET lock_timeout = '1s'
AS $fn$
DECLARE
    v_secret text;
    v_id text := md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text);
    -- The advisory lock the proxy holds while it works on this request: class 'STEX', the id's first 32 bits.
    v_key integer := ('x' || substr(v_id, 1, 8))::bit(32)::integer;
    v_payload text;
    v_answer text;
    v_deadline timestamptz := clock_timestamp() + make_interval(secs => p_timeout_ms / 1000.0);
    v_nap double precision := 0.0005;
    v_isolation text := current_setting('transaction_isolation');
    v_lo oid;
    -- What the proxy names the answer by when it hands it over in this session (level 7).
    v_answer_key text := md5(p_request::text);
    v_slot text;
    v_given text;
    -- The snapshot is the transaction's: an answer committed after it began cannot be seen.
    v_snapshot boolean := current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted');
    -- PGlite: one session for every connection, so nothing can be committed while this statement runs.
    v_single boolean := pg_catalog.version() LIKE '%PGlite%';
    -- The computing function's own lookup (see the top of this file): where the proxy commits a cacheable answer.
    v_cache_key text := p_request->>'cache_key';
    v_ttl integer := (p_request->>'ttl_seconds')::integer;
    v_embedding boolean := p_request->>'op' = 'embed';
BEGIN
    IF v_single THEN
        v_snapshot := true; -- answers for a block are handed over in the session (level 7), never committed during it
    END IF;
    SELECT s.secret INTO v_secret FROM steadytext_daemon_secret s WHERE s.id = 1;
    IF v_secret IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('%s cannot ask the pg-steadytext proxy: this database has no daemon secret yet', p_function),
            HINT = 'Connect through the pg-steadytext proxy once; it creates the secret when it prepares the database.';
    END IF;
    v_slot := current_setting('steadytext.answers_' || substr(v_answer_key, 1, 2), true);
    IF v_slot IS NOT NULL AND v_slot <> '' THEN
        BEGIN
            v_given := v_slot::jsonb ->> v_answer_key;
        EXCEPTION WHEN invalid_text_representation THEN
            v_given := NULL; -- not the proxy's: ignored
        END;
        IF v_given IS NOT NULL AND length(v_given) > 64
           AND substr(v_given, 1, 64) = encode(_steadytext_hmac(convert_to(v_secret, 'UTF8'), convert_to(v_answer_key || substr(v_given, 65), 'UTF8')), 'hex') THEN
            RETURN _steadytext_unwrap(p_function, substr(v_given, 65));
        END IF;
    END IF;
    IF v_isolation NOT IN ('read committed', 'read uncommitted') AND NOT current_setting('transaction_read_only')::boolean AND NOT v_single THEN
        -- A random oid above 2^31; the proxy creates the large object, so a taken one fails there, not here.
        v_lo := (2147483648 + floor(random() * 2147483000))::bigint::oid;
    END IF;
    IF current_setting('steadytext.gather', true) = 'on'
       AND p_function IN ('steadytext_generate', 'steadytext_embed', 'steadytext_generate_stream') THEN
        -- The proxy's dry run of a statement whose calls it gathers (level 6): ask, do not wait, and answer
        -- NULL for now; the dry run is rolled back and the statement runs again with answers.
        v_payload := (p_request || jsonb_build_object('id', v_id, 'timeout_ms', p_timeout_ms, 'function', p_function,
                                                      'user', session_user, 'database', current_database(),
                                                      'backend_pid', pg_backend_pid(), 'wait', false, 'gather', true,
                                                      'answer_key', v_answer_key, 'snapshot', v_snapshot))::text;
        RAISE INFO 'steadytext:inband' USING
            DETAIL = v_payload,
            HINT = encode(_steadytext_hmac(convert_to(v_secret, 'UTF8'), convert_to(v_payload, 'UTF8')), 'hex');
        RETURN NULL;
    END IF;
    v_payload := (p_request || jsonb_build_object('id', v_id, 'timeout_ms', p_timeout_ms, 'function', p_function,
                                                  'user', session_user, 'database', current_database(),
                                                  'backend_pid', pg_backend_pid(), 'lo', v_lo,
                                                  -- false: this call will not wait (40001 below), so only cache the answer
                                                  'wait', v_lo IS NOT NULL OR NOT v_snapshot,
                                                  -- true: the 40001 below names this request, so the proxy may run the statement again
                                                  'stops', v_lo IS NULL AND v_snapshot,
                                                  'answer_key', v_answer_key, 'snapshot', v_snapshot))::text;
    RAISE INFO 'steadytext:inband' USING
        DETAIL = v_payload,
        HINT = encode(_steadytext_hmac(convert_to(v_secret, 'UTF8'), convert_to(v_payload, 'UTF8')), 'hex');

    IF v_single THEN
        RAISE EXCEPTION USING ERRCODE = '40001',
            MESSAGE = format('%s: the answer is not in steadytext_cache yet, and this database has one session, which cannot wait for it (steadytext:rerun:%s)', p_function, v_id),
            DETAIL = 'The pg-steadytext proxy was asked for it through the connection and runs the statement again with it.',
            HINT = 'Connect through the pg-steadytext proxy, which answers this by itself; if this reaches you, run the statement again.';
    END IF;
    IF v_isolation NOT IN ('read committed', 'read uncommitted') AND v_lo IS NULL THEN
        -- Read-only at this level: neither a committed row nor a large object can reach this snapshot. The
        -- proxy computes and caches the answer all the same, so the transaction, run again, finds it.
        RAISE EXCEPTION USING ERRCODE = '40001',
            MESSAGE = format('%s: the answer is not in steadytext_cache yet and cannot become visible in a read-only %s transaction (steadytext:rerun:%s)', p_function, upper(v_isolation), v_id),
            DETAIL = 'The pg-steadytext proxy was asked for it through the connection and stores it for the next attempt.',
            HINT = 'Retry the transaction (as for any serialization failure), or run the call in READ COMMITTED or in a read-write transaction.';
    END IF;

    LOOP
        -- Wait first: the proxy has not even read the request yet.
        IF pg_try_advisory_lock_shared(1398031704, v_key) THEN
            -- Nobody holds the key: the proxy has not taken it yet (or will not). Look again shortly.
            PERFORM pg_advisory_unlock_shared(1398031704, v_key);
            PERFORM pg_sleep(v_nap);
            v_nap := least(v_nap * 2, 0.004);
        ELSE
            -- The proxy is working on it: wait for it to let go, which it does once the answer is committed.
            BEGIN
                PERFORM pg_advisory_lock_shared(1398031704, v_key);
                PERFORM pg_advisory_unlock_shared(1398031704, v_key);
            EXCEPTION WHEN lock_not_available THEN
                NULL; -- a second passed (lock_timeout): look, check the deadline, wait again
            END;
        END IF;
        IF v_lo IS NULL THEN
            -- Each statement of this VOLATILE function sees what was committed since the last. The cache row
            -- first: the lookup the computing function made, by its key and with its freshness.
            IF v_cache_key IS NOT NULL THEN
                -- An embedding is only found here: chr(2) (no vector's text) tells steadytext_embed to read it as a
                -- vector itself. Text is returned as the lookup returns it: never wrapped.
                SELECT CASE WHEN v_embedding THEN CASE WHEN c.embedding IS NOT NULL THEN chr(2) END ELSE c.response END INTO v_answer
                  FROM steadytext_cache c
                 WHERE c.cache_key = v_cache_key
                   AND greatest(c.created_at, c.last_accessed) > now() - make_interval(secs => v_ttl);
                IF v_answer IS NOT NULL THEN
                    RETURN v_answer;
                END IF;
            END IF;
            v_answer := _steadytext_mailbox_take('inband:' || v_id);
        ELSE
            v_answer := _steadytext_inband_lo_take(v_lo);
        END IF;
        IF v_answer IS NOT NULL THEN
            RETURN _steadytext_unwrap(p_function, v_answer);
        END IF;
        IF clock_timestamp() >= v_deadline THEN
            -- For status and model information, as dblink's failure to connect (which those report as the
            -- daemon not running); for a call, as a timeout.
            RAISE EXCEPTION USING ERRCODE = CASE WHEN p_request->>'op' IN ('status', 'model_info') THEN '08001' ELSE '57014' END,
                MESSAGE = format('%s: no pg-steadytext proxy answered within %s ms', p_function, p_timeout_ms),
                DETAIL = 'The call was not visible to a proxy (inside a function, trigger or view) and missed steadytext_cache, so it asked the proxy through the client connection.'
                         || coalesce(' The daemon endpoint was tried first: ' || p_tried, ''),
                HINT = 'Connect through the pg-steadytext proxy rather than to the database directly, or raise daemon_timeout_ms with steadytext_config_set if the proxy is busy.';
        END IF;
    END LOOP;
END
$fn$;

ALTER FUNCTION steadytext_generate(text, integer, integer, double precision, text) SET standard_conforming_strings = on;
ALTER FUNCTION steadytext_embed(text, integer, text) SET standard_conforming_strings = on;
ALTER FUNCTION steadytext_generate_stream(text, integer, integer) SET standard_conforming_strings = on;
ALTER FUNCTION _steadytext_inband_call(text, jsonb, integer, text) SET standard_conforming_strings = on;
ALTER FUNCTION _steadytext_inband_embedding(text, integer) SET standard_conforming_strings = on;
