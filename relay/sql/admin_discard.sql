-- Drop a backlog on purpose: the deliveries become skipped, with who and when as the reason.
WITH changed AS (
    UPDATE relay.deliveries
    SET status = 'skipped', next_attempt_at = NULL, lease_token = NULL, last_error = $3,
        updated_at = now()
    WHERE integration_id = $1 AND status = $2
    RETURNING 1
)
SELECT count(*) FROM changed
