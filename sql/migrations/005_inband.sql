-- pg-steadytext SQL objects, level 5: the in-band callback transport.
--
-- A call the proxy cannot see (inside a PL/pgSQL function, a trigger, a view) that misses the cache asks the
-- proxy for its answer. Up to level 4 it could only do so through dblink, which needs the extension and a
-- network path from the database server back to the proxy. From this level it may ask through the client's
-- own connection instead: the request goes out as an INFO notice (sent to the client at once, whatever
-- client_min_messages says), which the proxy reads off the connection and never shows the client; the proxy
-- computes the answer and commits it to steadytext_mailbox through its service connection; the function
-- polls for it through a VOLATILE helper, whose every statement takes a fresh snapshot, so in READ
-- COMMITTED the committed answer becomes visible while the statement runs. A REPEATABLE READ or SERIALIZABLE
-- snapshot never shows rows committed after it was taken; there the answer comes in a large object instead:
-- a large object opened for writing reads what other transactions committed, whatever the snapshot (the
-- documented behaviour of lo_open with INV_WRITE), so no retry is needed either. Only a read-only
-- transaction at those levels, which may not open one for writing, gets a serialization failure (40001);
-- the answer is stored all the same, so the retried transaction finds it in steadytext_cache.
--
-- The request is signed: an HMAC-SHA256 over its text, keyed with the daemon secret that only the owning
-- role reads (the secret itself never goes on the wire). A notice another role raises with the same text
-- cannot carry a valid signature, so the proxy ignores it. The request names the backend it comes from and
-- a fresh id; the proxy answers under exactly that id for exactly that backend.
--
-- callback_transport (steadytext_config): auto (dblink when the extension is there and the daemon answers,
-- else in-band), dblink, inband.

INSERT INTO steadytext_config (key, value, description) VALUES
    ('callback_transport', 'auto', 'How a call the proxy cannot see asks for its answer: auto, dblink or inband')
ON CONFLICT (key) DO NOTHING;

-- The level-1 check keeps serving every other key under its new name.
ALTER FUNCTION _steadytext_config_check(text, text) RENAME TO _steadytext_config_check_v1;

CREATE FUNCTION _steadytext_config_check(p_key text, p_value text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v text := lower(btrim(p_value));
BEGIN
    IF p_key IS DISTINCT FROM 'callback_transport' THEN
        RETURN _steadytext_config_check_v1(p_key, p_value);
    END IF;
    IF p_value IS NULL OR v NOT IN ('auto', 'dblink', 'inband') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('steadytext_config_set: callback_transport must be auto, dblink or inband, got %s',
                             coalesce(quote_literal(p_value), 'NULL'));
    END IF;
    RETURN v;
END
$fn$;

-- HMAC-SHA256 (RFC 2104) with the built-in sha256(): pgcrypto may be absent (PGlite, hosted databases).
CREATE OR REPLACE FUNCTION _steadytext_hmac(p_key bytea, p_message bytea)
RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    k bytea := p_key;
    ipad bytea;
    opad bytea;
BEGIN
    IF length(k) > 64 THEN
        k := sha256(k);
    END IF;
    k := k || decode(repeat('00', 64 - length(k)), 'hex');
    ipad := k;
    opad := k;
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(k, i) # 54);  -- 0x36
        opad := set_byte(opad, i, get_byte(k, i) # 92);  -- 0x5c
    END LOOP;
    RETURN sha256(opad || sha256(ipad || p_message));
END
$fn$;

-- The answer the proxy wrote into large object p_lo, or NULL while it is not there. Opened for writing (INV_READ
-- | INV_WRITE): such a descriptor sees what other transactions committed after this one's snapshot.
CREATE OR REPLACE FUNCTION _steadytext_inband_lo_take(p_lo oid)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    fd integer;
    n bigint;
    v bytea;
BEGIN
    BEGIN
        fd := lo_open(p_lo, 393216); -- x'40000' INV_READ | x'20000' INV_WRITE
    EXCEPTION WHEN undefined_object THEN
        RETURN NULL;
    END;
    n := lo_lseek64(fd, 0, 2);
    PERFORM lo_lseek64(fd, 0, 0);
    v := loread(fd, n::integer);
    PERFORM lo_close(fd);
    -- Read once. Should this transaction roll back, the unlink does too, and the proxy's sweep removes it.
    PERFORM lo_unlink(p_lo);
    RETURN convert_from(v, 'UTF8');
END
$fn$;

-- Large objects the proxy wrote answers into, so that one left behind (its transaction rolled back, its
-- caller gone) is removed later (sql/inband.ts sweeps entries older than ten minutes).
CREATE TABLE IF NOT EXISTS steadytext_inband_objects (
    lo         oid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON steadytext_inband_objects FROM PUBLIC;

-- The proxy's side: writes an answer into the large object the request named, owned by the owning role
-- (which the functions run as), and records it for the sweep.
CREATE OR REPLACE FUNCTION _steadytext_inband_lo_put(p_lo oid, p_answer text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
BEGIN
    PERFORM lo_from_bytea(p_lo, convert_to(p_answer, 'UTF8'));
    INSERT INTO steadytext_inband_objects (lo) VALUES (p_lo);
END
$fn$;

-- Removes what an answer's reader did not: large objects older than p_age.
CREATE OR REPLACE FUNCTION _steadytext_inband_sweep(p_age interval)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN DELETE FROM steadytext_inband_objects o WHERE o.created_at < clock_timestamp() - p_age RETURNING o.lo LOOP
        IF EXISTS (SELECT 1 FROM pg_largeobject_metadata m WHERE m.oid = r.lo) THEN
            PERFORM lo_unlink(r.lo);
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$fn$;

-- Asks the proxy through the client's connection and waits for the answer (see the top of this file).
CREATE OR REPLACE FUNCTION _steadytext_inband_call(p_function text, p_request jsonb, p_timeout_ms integer, p_tried text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    v_secret text;
    v_id text := md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text);
    v_payload text;
    v_answer text;
    v_deadline timestamptz := clock_timestamp() + make_interval(secs => p_timeout_ms / 1000.0);
    v_nap double precision := 0.001;
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
            -- Level 4's taker: VOLATILE, so each poll sees what was committed since the last; the answer was
            -- posted during this statement, so its 30-second window always holds.
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
        -- Naps of at most 4 ms: an answer waits 2 ms on average for the poll that sees it (at 50 ms it waited
        -- 21 ms, which made an in-band miss 1.4-1.9x a dblink one: bench:sql). A poll is one DELETE by key.
        PERFORM pg_sleep(v_nap);
        v_nap := least(v_nap * 2, 0.004);
    END LOOP;
END
$fn$;

-- The dblink transport, as level 1 defined it (its body is unchanged; only its name is new).
ALTER FUNCTION _steadytext_daemon_call(text, jsonb) RENAME TO _steadytext_dblink_call;

CREATE FUNCTION _steadytext_daemon_call(p_function text, p_request jsonb)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $fn$
DECLARE
    c record;
    v_tried text;
BEGIN
    SELECT max(value) FILTER (WHERE key = 'callback_transport') AS transport,
           max(value) FILTER (WHERE key = 'daemon_timeout_ms') AS timeout_ms
      INTO c
      FROM steadytext_config
     WHERE key IN ('callback_transport', 'daemon_timeout_ms');
    c.transport := coalesce(c.transport, 'auto');
    IF c.transport = 'dblink' THEN
        RETURN _steadytext_dblink_call(p_function, p_request);
    END IF;
    IF c.transport = 'auto' AND EXISTS (SELECT 1 FROM pg_extension e WHERE e.extname = 'dblink') THEN
        BEGIN
            RETURN _steadytext_dblink_call(p_function, p_request);
        EXCEPTION WHEN sqlclient_unable_to_establish_sqlconnection THEN
            GET STACKED DIAGNOSTICS v_tried = MESSAGE_TEXT; -- no daemon endpoint answers: ask in-band
        END;
    END IF;
    RETURN _steadytext_inband_call(p_function, p_request, coalesce(c.timeout_ms::integer, 30000), v_tried);
END
$fn$;

REVOKE EXECUTE ON FUNCTION _steadytext_config_check(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_hmac(bytea, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_inband_call(text, jsonb, integer, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_inband_lo_take(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_inband_lo_put(oid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_inband_sweep(interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_dblink_call(text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _steadytext_daemon_call(text, jsonb) FROM PUBLIC;

-- As at level 4: every function reads its own literals with standard strings, whatever the session set.
DO $scs$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = '@schema@'::regnamespace
                AND p.proname IN ('_steadytext_config_check', '_steadytext_hmac', '_steadytext_inband_lo_take',
                                  '_steadytext_inband_lo_put', '_steadytext_inband_sweep', '_steadytext_inband_call', '_steadytext_daemon_call')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET standard_conforming_strings = on', f);
    END LOOP;
END
$scs$;
