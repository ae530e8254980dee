INSERT INTO relay.audit_log (actor, action, integration_id, details) VALUES ($1, $2, $3, $4)
