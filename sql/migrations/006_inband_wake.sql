-- pg-steadytext SQL objects, level 6: an in-band call waits for its answer instead of polling for it.
--
-- At level 5 a function that asked the proxy in-band polled for the answer with naps of up to 4 ms: an
-- answer waited 2 ms on average for the poll that saw it, and every waiting call ran a statement every
-- few milliseconds. Now the proxy, as it accepts a request, takes a session-level advisory lock keyed by
-- the request's id on a connection of its own, and lets go of it once the answer is committed. The function
-- blocks on a shared lock on that key, so it wakes the moment the answer is there. Until the proxy holds the
-- lock (it is taken a round trip after the notice) or when it does not (an older proxy, its connection
-- lost, another session holding the key), the function polls as before; the key only says when to look,
-- never what the answer is, so whoever else takes it can delay a call (by at most a second per wait,
-- lock_timeout) but not change it.
--
-- A statement with many misses (an UPDATE or INSERT through a PL/pgSQL wrapper or a trigger) is not answered
-- one round trip per row: at its second miss the proxy answers with an error (40001, naming the request) that
-- stops it before anything reached the client, runs it once more inside a transaction it rolls back, with
-- steadytext.gather = on, where each miss only asks (wait false) and returns NULL, computes every answer so
-- gathered at once, and runs the statement again, now finding them in steadytext_cache. Setting
-- steadytext.gather oneself only makes one's own calls return NULL. Such a statement runs up to three times
-- (stopped, dry run, for real): what it does outside its transaction (nextval, dblink, session advisory
-- locks) happens each time. steadytext_config inband_rerun = false answers it miss by miss instead.

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
BEGIN
    SELECT s.secret INTO v_secret FROM steadytext_daemon_secret s WHERE s.id = 1;
    IF v_secret IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('%s cannot ask the pg-steadytext proxy: this database has no daemon secret yet', p_function),
            HINT = 'Connect through the pg-steadytext proxy once; it creates the secret when it prepares the database.';
    END IF;
    IF v_isolation NOT IN ('read committed', 'read uncommitted') AND NOT current_setting('transaction_read_only')::boolean THEN
        -- A random oid above 2^31; the proxy creates the large object, so a taken one fails there, not here.
        v_lo := (2147483648 + floor(random() * 2147483000))::bigint::oid;
    END IF;
    IF current_setting('steadytext.gather', true) = 'on'
       AND p_function IN ('steadytext_generate', 'steadytext_embed', 'steadytext_generate_stream') THEN
        -- The proxy's dry run of a statement whose calls it gathers (see the top of this file): ask, do not
        -- wait, and answer NULL for now; the dry run is rolled back and the statement runs again with answers.
        v_payload := (p_request || jsonb_build_object('id', v_id, 'timeout_ms', p_timeout_ms, 'function', p_function,
                                                      'user', session_user, 'database', current_database(),
                                                      'backend_pid', pg_backend_pid(), 'wait', false, 'gather', true))::text;
        RAISE INFO 'steadytext:inband' USING
            DETAIL = v_payload,
            HINT = encode(_steadytext_hmac(convert_to(v_secret, 'UTF8'), convert_to(v_payload, 'UTF8')), 'hex');
        RETURN NULL;
    END IF;
    v_payload := (p_request || jsonb_build_object('id', v_id, 'timeout_ms', p_timeout_ms, 'function', p_function,
                                                  'user', session_user, 'database', current_database(),
                                                  'backend_pid', pg_backend_pid(), 'lo', v_lo,
                                                  -- false: this call will not wait (40001 below), so only cache the answer
                                                  'wait', v_lo IS NOT NULL OR v_isolation IN ('read committed', 'read uncommitted')))::text;
    RAISE INFO 'steadytext:inband' USING
        DETAIL = v_payload,
        HINT = encode(_steadytext_hmac(convert_to(v_secret, 'UTF8'), convert_to(v_payload, 'UTF8')), 'hex');

    IF v_isolation NOT IN ('read committed', 'read uncommitted') AND v_lo IS NULL THEN
        -- Read-only at this level: neither a committed row nor a large object can reach this snapshot. The
        -- proxy computes and caches the answer all the same, so the transaction, run again, finds it.
        RAISE EXCEPTION USING ERRCODE = '40001',
            MESSAGE = format('%s: the answer is not in steadytext_cache yet and cannot become visible in a read-only %s transaction', p_function, upper(v_isolation)),
            DETAIL = 'The pg-steadytext proxy was asked for it through the connection and stores it for the next attempt.',
            HINT = 'Retry the transaction (as for any serialization failure), or run the call in READ COMMITTED or in a read-write transaction.';
    END IF;

    LOOP
        IF v_lo IS NULL THEN
            -- Level 4's taker: VOLATILE, so each look sees what was committed since the last.
            v_answer := _steadytext_mailbox_take('inband:' || v_id);
        ELSE
            v_answer := _steadytext_inband_lo_take(v_lo);
        END IF;
        IF v_answer IS NOT NULL THEN
            RETURN _steadytext_unwrap(p_function, v_answer);
        END IF;
        IF clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION USING ERRCODE = '57014',
                MESSAGE = format('%s: no pg-steadytext proxy answered within %s ms', p_function, p_timeout_ms),
                DETAIL = 'The call was not visible to a proxy (inside a function, trigger or view) and missed steadytext_cache, so it asked the proxy through the client connection.'
                         || coalesce(' The daemon endpoint was tried first: ' || p_tried, ''),
                HINT = 'Connect through the pg-steadytext proxy rather than to the database directly, or raise daemon_timeout_ms with steadytext_config_set if the proxy is busy.';
        END IF;
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
    END LOOP;
END
$fn$;

ALTER FUNCTION _steadytext_inband_call(text, jsonb, integer, text) SET standard_conforming_strings = on;

INSERT INTO steadytext_config (key, value, description) VALUES
    ('inband_rerun', 'true', 'Run a statement that misses row after row again with its calls answered together (in-band transport)')
ON CONFLICT (key) DO NOTHING;

-- The level-5 check keeps serving every other key under its new name.
ALTER FUNCTION _steadytext_config_check(text, text) RENAME TO _steadytext_config_check_v5;

CREATE FUNCTION _steadytext_config_check(p_key text, p_value text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v text := lower(btrim(p_value));
BEGIN
    IF p_key IS DISTINCT FROM 'inband_rerun' THEN
        RETURN _steadytext_config_check_v5(p_key, p_value);
    END IF;
    IF v IN ('true', 't', 'on', 'yes', 'y', '1') THEN
        RETURN 'true';
    ELSIF v IN ('false', 'f', 'off', 'no', 'n', '0') THEN
        RETURN 'false';
    END IF;
    RAISE EXCEPTION USING ERRCODE = '22023',
        MESSAGE = format('steadytext_config_set: inband_rerun must be true or false, got %s', coalesce(quote_literal(p_value), 'NULL'));
END
$fn$;

REVOKE EXECUTE ON FUNCTION _steadytext_config_check(text, text) FROM PUBLIC;
ALTER FUNCTION _steadytext_config_check(text, text) SET standard_conforming_strings = on;
