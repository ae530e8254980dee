-- Record the outcomes of one claim in one statement, and log every send that did not deliver.
-- Rows whose lease was lost (taken over by another worker after it expired) are left alone:
-- lease_token no longer matches.
WITH u AS (
    SELECT *
    FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::bool[], $7::float8[],
                $8::int[], $9::text[], $10::int[])
         AS u(integration_id, event_id, status, attempts, sent, delay, status_code, error,
              duration_ms)
),
updated AS (
    UPDATE relay.deliveries AS d SET
        status           = u.status,
        attempts         = u.attempts,
        next_attempt_at  = CASE WHEN u.status = 'pending'
                                THEN now() + make_interval(secs => u.delay) END,
        last_attempt_at  = CASE WHEN u.sent THEN now() ELSE d.last_attempt_at END,
        last_status_code = CASE WHEN u.sent THEN u.status_code ELSE d.last_status_code END,
        last_duration_ms = CASE WHEN u.sent THEN u.duration_ms ELSE d.last_duration_ms END,
        last_error       = CASE WHEN u.sent OR u.error IS NOT NULL THEN u.error
                                ELSE d.last_error END,
        delivered_at     = CASE WHEN u.status = 'delivered' THEN now() ELSE d.delivered_at END,
        lease_token      = NULL,
        updated_at       = now()
    FROM u
    WHERE d.integration_id = u.integration_id
      AND d.event_id = u.event_id
      AND d.lease_token = $1
    RETURNING d.integration_id, d.event_id, d.status, d.attempts, d.last_status_code,
              d.last_error, d.last_duration_ms, u.sent
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
