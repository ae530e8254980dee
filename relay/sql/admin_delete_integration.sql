WITH gone AS (
    SELECT count(*) AS deliveries, count(*) FILTER (WHERE status = 'pending') AS pending
    FROM relay.deliveries WHERE integration_id = $1
),
deleted AS (DELETE FROM relay.integrations WHERE id = $1 RETURNING id)
SELECT deleted.id, gone.deliveries, gone.pending FROM deleted, gone
