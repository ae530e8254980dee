-- The first integration of an organization+app sends bare event ids as messageIds; any further
-- one gets the suffix $9. A concurrent first insert loses on integrations_one_bare_message_id
-- and is retried, then sees the other and takes the suffix.
INSERT INTO relay.integrations
    (id, organization_id, app_id, name, write_key, region, endpoint, event_settings,
     message_id_suffix)
SELECT $1, $2, $3, $4, $5, $6, $7, $8,
       CASE WHEN EXISTS (
           SELECT 1 FROM relay.integrations
           WHERE organization_id = $2 AND app_id = $3 AND message_id_suffix IS NULL
       ) THEN $9 END
RETURNING id
