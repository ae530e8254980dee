-- Per integration: counts by status, the oldest pending delivery, the most recent error.
SELECT i.id AS integration_id, i.name, i.status,
       coalesce(c.pending, 0) AS pending, coalesce(c.due, 0) AS due,
       coalesce(c.pending, 0) - coalesce(c.due, 0) AS scheduled,
       coalesce(c.delivered, 0) AS delivered, coalesce(c.skipped, 0) AS skipped,
       coalesce(c.failed, 0) AS failed,
       c.oldest_pending_at,
       extract(epoch FROM now() - c.oldest_pending_at)::float8 AS oldest_pending_age_seconds,
       e.last_error, e.last_error_at
FROM relay.integrations i
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS due,
           count(*) FILTER (WHERE status = 'delivered') AS delivered,
           count(*) FILTER (WHERE status = 'skipped') AS skipped,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending_at
    FROM relay.deliveries d WHERE d.integration_id = i.id
) c ON true
LEFT JOIN LATERAL (
    SELECT d.last_error, d.updated_at AS last_error_at
    FROM relay.deliveries d
    WHERE d.integration_id = i.id AND d.last_error IS NOT NULL
    ORDER BY d.updated_at DESC
    LIMIT 1
) e ON true
WHERE $1::text IS NULL OR i.id = $1
ORDER BY i.organization_id, i.app_id, i.created_at
