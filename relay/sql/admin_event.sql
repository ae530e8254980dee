SELECT id, event_type, organization_id, app_id, occurred_at FROM relay.events WHERE id = $1
