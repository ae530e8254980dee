SELECT id, organization_id, app_id, name, write_key, region, endpoint, status, event_settings,
       message_id_suffix, rate_limited_until, created_at, updated_at
FROM relay.integrations
WHERE id = $1
