-- Database-wide backlog, for the gauges (every replica reports the same numbers).
SELECT count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
       count(*) FILTER (WHERE next_attempt_at > now()) AS scheduled,
       coalesce(extract(epoch FROM now() - min(next_attempt_at)
                        FILTER (WHERE next_attempt_at <= now())), 0)::float8 AS oldest_due_seconds,
       (SELECT count(*) FROM relay.deliveries WHERE status = 'failed') AS failed
FROM relay.deliveries
WHERE status = 'pending'
