SELECT d.integration_id, i.name AS integration_name, i.message_id_suffix, d.status, d.attempts,
       d.next_attempt_at, d.last_attempt_at, d.last_status_code, d.last_error,
       d.last_duration_ms, d.delivered_at
FROM relay.deliveries d
JOIN relay.integrations i ON i.id = d.integration_id
WHERE d.event_id = $1
ORDER BY i.created_at
