-- The roll-up recomputes the buckets that new events touched, and only those.
-- It used to find them by scanning every event received in the last five
-- minutes (to catch inserts that committed late), which at a high ingest rate
-- is millions of events a run. Instead each insert of usage events logs the
-- buckets it touched, in its own transaction: a roll-up takes the log rows it
-- can see (committed ones) and recomputes their buckets; a row committed
-- later is still there for the next run, so nothing is missed and no insert
-- waits for a roll-up (the log has no key for them to collide on).
CREATE TABLE usage_touched (
    -- One row per insert statement, its buckets as three parallel arrays: a
    -- batch of 10,000 events is one row here, not thousands, so taking the
    -- log stays cheap however much was ingested since.
    tenant_ids  uuid[] NOT NULL,
    event_types text[] NOT NULL,
    hours       timestamptz[] NOT NULL
);
-- Kept out of line and uncompressed: ids and hours do not compress, and
-- trying costs the intake CPU.
ALTER TABLE usage_touched
    ALTER COLUMN tenant_ids SET STORAGE EXTERNAL,
    ALTER COLUMN event_types SET STORAGE EXTERNAL,
    ALTER COLUMN hours SET STORAGE EXTERNAL;

-- A statement trigger, so that every writer of usage events (the intake, the
-- storage measurement, an operator's repair) logs what it touched, once per
-- statement and bucket. Duplicates skipped by ON CONFLICT are not in `stored`.
CREATE FUNCTION usage_events_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_touched (tenant_ids, event_types, hours)
    SELECT array_agg(tenant_id), array_agg(event_type), array_agg(hour)
    FROM (SELECT DISTINCT tenant_id, event_type, date_trunc('hour', occurred_at, 'UTC') AS hour FROM stored) b
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER usage_events_touch AFTER INSERT ON usage_events
    REFERENCING NEW TABLE AS stored FOR EACH STATEMENT EXECUTE FUNCTION usage_events_touch();

-- Events already stored and not yet rolled up are found one last time by
-- arrival, as the roll-up used to; from here on the log has them.
INSERT INTO usage_touched (tenant_ids, event_types, hours)
SELECT array_agg(tenant_id), array_agg(event_type), array_agg(hour)
FROM (SELECT DISTINCT tenant_id, event_type, date_trunc('hour', occurred_at, 'UTC') AS hour FROM usage_events
      WHERE received_at >= COALESCE((SELECT watermark FROM jobs WHERE name = 'rollup'), '-infinity')
                           - interval '5 minutes') b
HAVING count(*) > 0;

-- Only the old roll-up read events by arrival; each insert paid for the index.
DROP INDEX usage_events_received_idx;

-- `storefront_calls()` (20261204000001) still closes an hour 5 minutes after
-- it ended: that margin is now the data planes' delivery allowance, no longer
-- the roll-up's own.

-- The intake refuses events of unknown tenants before it inserts (and tenants
-- are never deleted: an offboarded one stays, `deleted`); a foreign key checked
-- row by row on top cost the intake a lookup per event.
ALTER TABLE usage_events DROP CONSTRAINT usage_events_tenant_id_fkey;
