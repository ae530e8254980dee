SELECT id, organization_id, app_id, name, write_key, region, endpoint, status, event_settings,
       message_id_suffix
FROM relay.integrations
WHERE id = ANY($1::text[])
