-- pg-steadytext SQL objects, level 3: the cache and the logs are private to the installing role.
--
-- steadytext_cache holds every role's prompts and answers, and the logs name roles and sessions: one
-- role must not read another's. The SQL functions read them as their owner (SECURITY DEFINER), so
-- calls work as before; an administrator can still GRANT SELECT to whom it may concern.

REVOKE ALL ON steadytext_cache FROM PUBLIC;
REVOKE ALL ON steadytext_logs, steadytext_debug_logs FROM PUBLIC;
