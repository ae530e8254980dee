-- Record the outcomes of one integration's share in one statement, and log every send that did
-- not deliver. Rows are found by their physical address ($2, ctid), as the claim read it or as
-- the hand-over to a lease rewrote it: no index lookup per row. $1 is NULL inside the claim's
-- own transaction, whose row locks keep those addresses valid. For a share handed over to a
-- lease it is the lease token: a row whose lease was lost (taken over by another worker after
-- it expired) no longer carries the token, and neither does any other row that may have come
-- to occupy its address, so it is left alone. No other condition on d: one that an index can
-- serve (integration_id, say) lets the planner scan the share's whole integration instead.
-- Outcomes come in groups of deliveries that fared alike (relay.dispatch.Outcome): $4 is the
-- groups as a JSON array of objects, numbered by "n"; $3[i] is the group of row $2[i]. The
-- attempt count goes up by one for a send: the locks (or the token) guarantee it is still the
-- count the claim read.
WITH outcome AS (
    SELECT *
    FROM json_to_recordset($4::json)
         AS o(n int, status text, sent bool, delay float8, status_code int, error text,
              duration_ms int)
),
target AS (
    SELECT t.tid, o.*
    FROM unnest($2::text::tid[], $3::text::int[]) AS t(tid, n)
    JOIN outcome o USING (n)
),
updated AS (
    UPDATE relay.deliveries AS d SET
        status           = h.status,
        attempts         = d.attempts + CASE WHEN h.sent THEN 1 ELSE 0 END,
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
    FROM target h
    WHERE d.ctid = h.tid AND ($1::uuid IS NULL OR d.lease_token = $1)
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
