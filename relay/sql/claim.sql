-- Claim due deliveries fairly: at most $3 integrations with due work, in random order, none of
-- those in $4 (already at their in-flight cap in this worker), at most $2 deliveries from each
-- and $1 in all. Claimed rows are only locked (FOR NO KEY UPDATE SKIP LOCKED), not written:
-- the caller keeps this transaction open while it sends them (relay.store.Claim), so other
-- workers skip them, and a worker that dies lets them go at once. Each row's ctid (tid) is where
-- complete.sql finds it again: the locks keep it in place.
WITH candidates AS (
    SELECT i.id
    FROM relay.integrations i
    WHERE i.status = 'active'
      AND (i.rate_limited_until IS NULL OR i.rate_limited_until <= now())
      AND i.id <> ALL ($4::text[])
      AND EXISTS (
          SELECT 1 FROM relay.deliveries d
          WHERE d.integration_id = i.id AND d.status = 'pending' AND d.next_attempt_at <= now()
      )
    ORDER BY random()
    LIMIT $3
),
claimed AS (
    SELECT p.*
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT d.integration_id, d.event_id, d.attempts, d.ctid::text AS tid
        FROM relay.deliveries d
        WHERE d.integration_id = c.id AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT $2
        FOR NO KEY UPDATE SKIP LOCKED
    ) p
    LIMIT $1
)
SELECT c.integration_id, c.attempts, c.tid,
       e.id, e.organization_id, e.app_id, e.event_type,
       -- Segment's time format, written here: cheaper than decoding a timestamptz and formatting
       -- it in Python, and a time no datetime can hold (past 9999, BC, infinity) arrives as
       -- text that fails its own event alone, instead of failing the whole claim to decode.
       CASE WHEN e.occurred_at >= '0001-01-01 00:00:00+00'
                 AND e.occurred_at < '10000-01-01 00:00:00+00'
            THEN to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
            ELSE e.occurred_at::text END AS occurred_at,
       e.user_id, e.anonymous_id, e.survey_id, e.response_id, e.page_path, e.page_referrer,
       e.locale,
       -- JSON as PostgreSQL's text, sent verbatim (relay.model.parse_event says why).
       e.traits::text AS traits_json, e.identities::text AS identities_json,
       e."references"::text AS references_json,
       -- For the latency and age metrics only, as Unix seconds.
       date_part('epoch', e.occurred_at) AS occurred_epoch,
       date_part('epoch', e.created_at) AS created_epoch
FROM claimed c
JOIN relay.events e ON e.id = c.event_id
