SELECT id, organization_id, app_id, name, write_key, region, endpoint, status, event_settings,
       message_id_suffix, rate_limited_until, created_at, updated_at
FROM relay.integrations
WHERE ($1::text IS NULL OR organization_id = $1)
  AND ($2::text IS NULL OR app_id = $2)
ORDER BY organization_id, app_id, created_at
