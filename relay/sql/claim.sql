-- Claim due deliveries fairly: at most $5 integrations with due work, in random order, none
-- of those in $6 (already at their in-flight cap in this worker), at most $2 deliveries from
-- each and $1 in all. Claimed rows get a lease: next_attempt_at moves $3 seconds ahead and
-- lease_token = $4, so a dead worker's rows fall due again by themselves.
-- The update finds the locked rows by ctid (a TID scan): joining on the key let the planner
-- hash-join against a sequential scan of the whole table, a cost that grew with the backlog.
WITH candidates AS (
    SELECT i.id
    FROM relay.integrations i
    WHERE i.status = 'active'
      AND (i.rate_limited_until IS NULL OR i.rate_limited_until <= now())
      AND i.id <> ALL ($6::text[])
      AND EXISTS (
          SELECT 1 FROM relay.deliveries d
          WHERE d.integration_id = i.id AND d.status = 'pending' AND d.next_attempt_at <= now()
      )
    ORDER BY random()
    LIMIT $5
),
picked AS (
    SELECT p.ctid
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT d.ctid
        FROM relay.deliveries d
        WHERE d.integration_id = c.id AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) p
    LIMIT $1
),
claimed AS (
    UPDATE relay.deliveries d
    SET next_attempt_at = now() + make_interval(secs => $3), lease_token = $4, updated_at = now()
    WHERE d.ctid = ANY (ARRAY(SELECT ctid FROM picked))
    RETURNING d.integration_id, d.event_id, d.attempts
)
SELECT c.integration_id, c.attempts,
       e.id, e.organization_id, e.app_id, e.event_type, e.occurred_at, e.user_id,
       e.anonymous_id, e.survey_id, e.response_id, e.page_path, e.page_referrer, e.locale,
       e.traits, e.identities, e."references", e.created_at
FROM claimed c
JOIN relay.events e ON e.id = c.event_id
