-- Give back what a claim still holds (shutdown, or a crash inside the worker): due again after
-- $2 seconds, attempts untouched.
UPDATE relay.deliveries
SET next_attempt_at = now() + make_interval(secs => $2), lease_token = NULL, updated_at = now()
WHERE lease_token = $1 AND status = 'pending'
