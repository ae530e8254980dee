-- Re-queue dead letters (or skipped deliveries) with attempts reset.
WITH changed AS (
    UPDATE relay.deliveries
    SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_token = NULL,
        updated_at = now()
    WHERE integration_id = $1
      AND status = $2
      AND ($3::timestamptz IS NULL OR updated_at >= $3)
      AND ($4::text[] IS NULL OR event_id = ANY ($4))
    RETURNING 1
)
SELECT count(*) FROM changed
