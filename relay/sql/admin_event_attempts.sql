SELECT integration_id, attempt, attempted_at, status_code, error, duration_ms, outcome
FROM relay.attempts
WHERE event_id = $1
ORDER BY id
