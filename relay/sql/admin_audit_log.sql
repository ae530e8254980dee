SELECT id, at, actor, action, integration_id, details
FROM relay.audit_log
WHERE $1::text IS NULL OR integration_id = $1
ORDER BY id DESC
LIMIT $2
