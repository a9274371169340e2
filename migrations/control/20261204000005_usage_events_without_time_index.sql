-- Every reader of usage events now goes by tenant (the limits, the summary,
-- the calls-so-far function: usage_events_tenant_idx) or by the buckets the
-- intake logged (the roll-up, usage_touched); none reads all tenants' events
-- by time any more. The index only cost each ingested event an insert into a
-- third B-tree.
DROP INDEX IF EXISTS usage_events_occurred_idx;
