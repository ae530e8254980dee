-- Record the outcomes of one integration's share in one statement, and log every send that did
-- not deliver. $1 is NULL inside the claim's own transaction, which holds the rows' locks; for
-- a share handed over to a lease it is the lease token, and rows whose lease was lost (taken
-- over by another worker after it expired) are left alone: lease_token no longer matches.
-- The plan is pinned by its shape, not left to estimates: each outcome finds its row by primary
-- key (a lateral lookup), and the update reaches it by ctid. A plain join let the planner
-- hash-join against a sequential scan of the whole table, a cost that grew with the backlog.
-- $3 is the outcomes as one JSON array of objects (relay.dispatch.Outcome, field for field):
-- encoding eight parallel arrays cost the relay twice as much CPU per outcome.
WITH u AS (
    SELECT *
    FROM json_to_recordset($3::json)
         AS u(event_id text, status text, attempts int, sent bool, delay float8, status_code int,
              error text, duration_ms int)
),
held AS MATERIALIZED (
    SELECT d.ctid AS tid, u.*
    FROM u
    CROSS JOIN LATERAL (
        SELECT d.ctid
        FROM relay.deliveries d
        WHERE d.integration_id = $2 AND d.event_id = u.event_id
          AND ($1::uuid IS NULL OR d.lease_token = $1)
        LIMIT 1  -- at most one by key; also keeps the planner from flattening the lookup
    ) d
),
updated AS (
    UPDATE relay.deliveries AS d SET
        status           = h.status,
        attempts         = h.attempts,
        next_attempt_at  = CASE WHEN h.status = 'pending'
                                THEN now() + make_interval(secs => h.delay) END,
        last_attempt_at  = CASE WHEN h.sent THEN now() ELSE d.last_attempt_at END,
        last_status_code = CASE WHEN h.sent THEN h.status_code ELSE d.last_status_code END,
        last_duration_ms = CASE WHEN h.sent THEN h.duration_ms ELSE d.last_duration_ms END,
        last_error       = CASE WHEN h.sent OR h.error IS NOT NULL THEN h.error
                                ELSE d.last_error END,
        delivered_at     = CASE WHEN h.status = 'delivered' THEN now() ELSE d.delivered_at END,
        lease_token      = NULL,
        updated_at       = now()
    FROM held h
    WHERE d.ctid = h.tid
    RETURNING d.integration_id, d.event_id, d.status, d.attempts, d.last_status_code,
              d.last_error, d.last_duration_ms, h.sent
),
logged AS (
    INSERT INTO relay.attempts
        (integration_id, event_id, attempt, status_code, error, duration_ms, outcome)
    SELECT integration_id, event_id, attempts, last_status_code, last_error, last_duration_ms,
           CASE WHEN status = 'failed' THEN 'failed' ELSE 'retry' END
    FROM updated
    WHERE sent AND status <> 'delivered'
)
SELECT count(*) FROM updated
