-- Segment answered 429: no worker claims for this integration for $2 seconds.
UPDATE relay.integrations
SET rate_limited_until = greatest(coalesce(rate_limited_until, now()),
                                  now() + make_interval(secs => $2))
WHERE id = $1
