UPDATE relay.integrations
SET name = $2, write_key = $3, region = $4, endpoint = $5, status = $6, event_settings = $7,
    rate_limited_until = CASE WHEN write_key IS DISTINCT FROM $3 OR endpoint IS DISTINCT FROM $5
                              THEN NULL ELSE rate_limited_until END,
    updated_at = now()
WHERE id = $1
