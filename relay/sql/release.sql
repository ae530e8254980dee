-- Give back what one integration's share of a claim still holds (shutdown, or an error inside
-- the worker): due again after $3 seconds, attempts untouched. $1 is the lease token, or NULL
-- while the claim's own transaction holds the rows' locks.
UPDATE relay.deliveries
SET next_attempt_at = now() + make_interval(secs => $3), lease_token = NULL, updated_at = now()
WHERE integration_id = $2 AND event_id = ANY ($4::text[]) AND status = 'pending'
  AND ($1::uuid IS NULL OR lease_token = $1)
