-- Retention, one small batch: delete old events (oldest first) whose deliveries are all done -
-- delivered or skipped, or failed longer ago than the dead-letter retention - together with
-- their deliveries and attempts (ON DELETE CASCADE). Events that never had a delivery (no
-- integration existed for their app) go by the first age too. Pending deliveries are never
-- purged. SKIP LOCKED: never waits for, or blocks, anything else.
WITH doomed AS (
    SELECT e.id
    FROM relay.events e
    WHERE e.created_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (
          SELECT 1 FROM relay.deliveries d
          WHERE d.event_id = e.id
            AND (d.status = 'pending'
                 OR (d.status = 'failed' AND d.updated_at >= now() - make_interval(secs => $2)))
      )
    ORDER BY e.created_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
gone AS (
    DELETE FROM relay.events e USING doomed WHERE e.id = doomed.id RETURNING 1
)
SELECT count(*) FROM gone
