-- pg-steadytext SQL objects, level 10: a waiting in-band call waits on a lock the proxy took before it asked.
--
-- From level 6 on, the proxy takes the lock a waiting function blocks on (keyed by the request's id) as it
-- accepts the request, a round trip after the notice: until then the function naps and looks, and that round
-- trip and those naps run beside the model's computation of the answer, on a machine whose cores it needs.
-- Now, once a backend has asked in-band, the proxy holds a standing lock for it on its listener connection,
-- class 'STEY', keyed by the first 32 bits of an HMAC under the daemon secret of the backend's pid and a nonce
-- the function keeps in the session (steadytext.wake_nonce): no other role can compute the key, so only the
-- proxy can hold it. A function that finds it held says so in its request and blocks on it at once; the proxy
-- lets go of it once the answer is committed and takes it again behind the waking function. Otherwise (the
-- backend's first request, a new nonce after RESET ALL or DISCARD ALL, a proxy that does not hold it) the
-- request goes as at level 9, and the proxy takes the standing lock after answering it. The nonce and the lock
-- only say when to look, never what the answer is: a session that sets its own nonce only loses the standing
-- lock for itself.

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
    -- The computing function's own lookup (level 9): where the proxy commits a cacheable answer.
    v_cache_key text := p_request->>'cache_key';
    v_ttl integer := (p_request->>'ttl_seconds')::integer;
    v_embedding boolean := p_request->>'op' = 'embed';
    -- This session's nonce, and the key of the proxy's standing lock for its backend (see the top of this file).
    v_nonce text;
    v_standing integer;
    v_armed boolean := false;
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
    IF NOT v_single AND (v_lo IS NOT NULL OR NOT v_snapshot) THEN
        -- A call that will wait: on the proxy's standing lock for this backend when it holds it, else as before.
        v_nonce := current_setting('steadytext.wake_nonce', true);
        IF v_nonce IS NULL OR v_nonce !~ '^[0-9a-f]{32}$' THEN
            v_nonce := md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text);
            PERFORM set_config('steadytext.wake_nonce', v_nonce, false);
        END IF;
        v_standing := ('x' || left(encode(_steadytext_hmac(convert_to(v_secret, 'UTF8'),
                          convert_to('wake:' || pg_backend_pid() || ':' || v_nonce, 'UTF8')), 'hex'), 8))::bit(32)::integer;
        IF pg_try_advisory_lock_shared(1398031705, v_standing) THEN
            PERFORM pg_advisory_unlock_shared(1398031705, v_standing);
        ELSE
            v_armed := true;
        END IF;
    END IF;
    v_payload := (p_request || jsonb_build_object('id', v_id, 'timeout_ms', p_timeout_ms, 'function', p_function,
                                                  'user', session_user, 'database', current_database(),
                                                  'backend_pid', pg_backend_pid(), 'lo', v_lo,
                                                  'nonce', v_nonce, 'armed', v_armed,
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
        IF v_armed THEN
            -- The proxy held this backend's standing lock before it was asked: wait on it at once. It lets go once
            -- the answer is committed (and takes it again); if the answer is not there then, look as below.
            BEGIN
                PERFORM pg_advisory_lock_shared(1398031705, v_standing);
                PERFORM pg_advisory_unlock_shared(1398031705, v_standing);
                v_armed := false;
            EXCEPTION WHEN lock_not_available THEN
                NULL; -- a second passed (lock_timeout): look, check the deadline, wait again
            END;
        -- Wait first: the proxy has not even read the request yet.
        ELSIF pg_try_advisory_lock_shared(1398031704, v_key) THEN
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


ALTER FUNCTION _steadytext_inband_call(text, jsonb, integer, text) SET standard_conforming_strings = on;
