-- Hand one integration's share of a claim over to a lease before the claim's transaction
-- commits (the share is still sending): the rows stay out of other claims until
-- next_attempt_at, $3 seconds ahead, and only the holder of lease_token $1 may record them.
-- Returns each row's new address, which complete.sql then updates.
UPDATE relay.deliveries
SET next_attempt_at = now() + make_interval(secs => $3), lease_token = $1, updated_at = now()
WHERE integration_id = $2 AND event_id = ANY ($4::text[]) AND status = 'pending'
RETURNING event_id, ctid::text AS tid
