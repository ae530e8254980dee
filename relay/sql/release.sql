-- Give back what one integration's share of a claim still holds (shutdown, or an error inside
-- the worker): due again after $3 seconds, attempts untouched.
UPDATE relay.deliveries
SET next_attempt_at = now() + make_interval(secs => $3), lease_token = NULL, updated_at = now()
WHERE lease_token = $1 AND integration_id = $2 AND status = 'pending'
