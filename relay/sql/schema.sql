-- relay schema. Idempotent: `relay migrate` applies it on every deploy, safely twice.
-- Everything lives in the schema `relay`.

CREATE SCHEMA IF NOT EXISTS relay;

CREATE TABLE IF NOT EXISTS relay.schema_version (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One Segment destination (source write key) per row; several per organization+app are allowed.
CREATE TABLE IF NOT EXISTS relay.integrations (
    id                 text PRIMARY KEY,
    organization_id    text NOT NULL,
    app_id             text NOT NULL,
    name               text NOT NULL DEFAULT '',
    write_key          text NOT NULL CHECK (write_key <> ''),
    region             text NOT NULL CHECK (region IN ('global', 'eu')),
    endpoint           text NOT NULL,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    -- {"Response Submitted": {"enabled": true, "rename": "survey_responded"}}
    event_settings     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(event_settings) = 'object'),
    -- NULL for the first integration of an app (messageId = event id); a fixed suffix otherwise,
    -- because Segment dedupes messageIds across all workspaces.
    message_id_suffix  text,
    -- Set when Segment answers 429: no claims for this integration until then.
    rate_limited_until timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- Mirrors relay.model.REGION_ENDPOINTS (a test keeps the two equal): Segment never forwards
    -- across regions, so a mismatched pair would lose every event.
    CONSTRAINT integrations_endpoint_matches_region CHECK (
        (region = 'global' AND endpoint IN ('https://api.segment.io'))
        OR (region = 'eu' AND endpoint IN ('https://events.eu1.segmentapis.com',
                                           'https://eu1.api.segmentapis.com'))
    )
);
CREATE INDEX IF NOT EXISTS integrations_app ON relay.integrations (organization_id, app_id);
CREATE UNIQUE INDEX IF NOT EXISTS integrations_one_bare_message_id
    ON relay.integrations (organization_id, app_id) WHERE message_id_suffix IS NULL;

-- The outbox. Deliberately permissive beyond the five identifying columns, so a malformed row
-- never fails the product's transaction; the relay validates and records why a row is bad.
CREATE TABLE IF NOT EXISTS relay.events (
    id              text PRIMARY KEY,
    organization_id text NOT NULL,
    app_id          text NOT NULL,
    event_type      text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    user_id         text,
    anonymous_id    text,
    survey_id       text,
    response_id     text,
    page_path       text,
    page_referrer   text,
    locale          text,
    traits          jsonb,
    identities      jsonb,
    "references"    jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per (event, integration), created in the product's own transaction.
-- A pending row is due when next_attempt_at <= now(). A claim locks its rows in a transaction it
-- keeps open while sending (relay.store.Claim); a share still sending after the hold moves
-- next_attempt_at forward by the lease and stamps lease_token. So a worker that dies simply
-- lets its rows fall due again: at once with its locks, or when the lease expires.
CREATE TABLE IF NOT EXISTS relay.deliveries (
    integration_id   text NOT NULL REFERENCES relay.integrations (id) ON DELETE CASCADE,
    event_id         text NOT NULL REFERENCES relay.events (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'skipped', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz DEFAULT now(),
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    lease_token      uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, event_id)
);
-- Every row is updated at least once (its outcome; a retry or a hand-over adds more): leave room
-- for HOT updates and vacuum this high-churn table early.
ALTER TABLE relay.deliveries SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
CREATE INDEX IF NOT EXISTS deliveries_due
    ON relay.deliveries (integration_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_event ON relay.deliveries (event_id);
-- version 2
ALTER TABLE relay.deliveries ADD COLUMN IF NOT EXISTS last_duration_ms integer;
CREATE INDEX IF NOT EXISTS deliveries_errors
    ON relay.deliveries (integration_id, updated_at) WHERE last_error IS NOT NULL;

-- Every send that did not deliver: retries and dead letters. The send that delivered is on the
-- delivery row itself (last_attempt_at, last_status_code, last_duration_ms), so the happy path
-- writes nothing here. Attempt numbers restart after a replay.
CREATE TABLE IF NOT EXISTS relay.attempts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integration_id text NOT NULL,
    event_id       text NOT NULL,
    attempt        integer NOT NULL,
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    status_code    integer,
    error          text,
    duration_ms    integer,
    outcome        text NOT NULL CHECK (outcome IN ('retry', 'failed')),
    FOREIGN KEY (integration_id, event_id)
        REFERENCES relay.deliveries (integration_id, event_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON relay.attempts (event_id, integration_id, id);

-- Who changed what, and when; never a write key. Kept after an integration is deleted.
CREATE TABLE IF NOT EXISTS relay.audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    actor          text NOT NULL,
    action         text NOT NULL,
    integration_id text,
    details        jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_integration ON relay.audit_log (integration_id, id);

-- version 3
-- Dead letters by integration: replay, stats and the backlog gauge.
CREATE INDEX IF NOT EXISTS deliveries_failed
    ON relay.deliveries (integration_id) WHERE status = 'failed';
-- Retention walks the outbox oldest first.
CREATE INDEX IF NOT EXISTS events_created ON relay.events (created_at);

-- Fan-out: one INSERT ... SELECT per INSERT statement on the outbox (not per row), and one
-- constant notification per transaction (PostgreSQL folds identical payloads), so the trigger
-- adds no per-row NOTIFY traffic to the product's inserts. SECURITY DEFINER: the product's role
-- needs INSERT on relay.events only and never reads write keys.
-- A transaction that notifies takes a cluster-wide lock at commit, which costs a product that
-- commits one event per transaction about a third of its insert rate (README, Benchmark).
-- `relay.notify = off` (per role, database or session, e.g. ALTER ROLE app SET relay.notify =
-- off) skips the notification; the relay then finds new work by polling
-- (RELAY_POLL_INTERVAL_SECONDS).
CREATE OR REPLACE FUNCTION relay.fan_out_events() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, relay AS $$
BEGIN
    INSERT INTO relay.deliveries (integration_id, event_id)
    SELECT i.id, n.id
    FROM new_events n
    JOIN relay.integrations i
      ON i.organization_id = n.organization_id AND i.app_id = n.app_id;
    -- Any other value, or none, notifies: a mistyped setting must not fail the insert.
    IF FOUND AND lower(coalesce(current_setting('relay.notify', true), ''))
                 NOT IN ('off', 'false', 'no', '0') THEN
        PERFORM pg_notify('relay_deliveries', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER events_fan_out
    AFTER INSERT ON relay.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION relay.fan_out_events();

INSERT INTO relay.schema_version (version) VALUES (3)
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = now();
