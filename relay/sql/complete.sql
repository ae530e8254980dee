-- Record the outcomes of one claim in one statement. Rows whose lease was lost (taken over by
-- another worker after it expired) are left alone: lease_token no longer matches.
UPDATE relay.deliveries AS d SET
    status           = u.status,
    attempts         = u.attempts,
    next_attempt_at  = CASE WHEN u.status = 'pending' THEN now() + make_interval(secs => u.delay) END,
    last_attempt_at  = CASE WHEN u.sent THEN now() ELSE d.last_attempt_at END,
    last_status_code = CASE WHEN u.sent THEN u.status_code ELSE d.last_status_code END,
    last_error       = CASE WHEN u.sent OR u.error IS NOT NULL THEN u.error ELSE d.last_error END,
    delivered_at     = CASE WHEN u.status = 'delivered' THEN now() ELSE d.delivered_at END,
    lease_token      = NULL,
    updated_at       = now()
FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::bool[], $7::float8[], $8::int[],
            $9::text[])
     AS u(integration_id, event_id, status, attempts, sent, delay, status_code, error)
WHERE d.integration_id = u.integration_id
  AND d.event_id = u.event_id
  AND d.lease_token = $1
