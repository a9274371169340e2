-- A tenant's usage since a time, read mostly from the hourly roll-ups, now
-- for AI credits as well as storefront calls: the data planes ask every few
-- seconds for each tenant's calls today and AI credits this month.
--
-- The bounds are storefront_calls' (20261204000001_calls_from_rollups.sql),
-- now in one place: an hour is read from `usage_hourly` once the roll-up has
-- closed it, the rest from the events; the ranges do not overlap.
CREATE OR REPLACE FUNCTION rolled_bounds(since timestamptz, OUT whole_hour timestamptz, OUT rolled_until timestamptz)
LANGUAGE sql STABLE AS $$
    WITH aligned AS (
        SELECT date_trunc('hour', since, 'UTC')
               + CASE WHEN date_trunc('hour', since, 'UTC') < since THEN interval '1 hour' ELSE interval '0' END
               AS whole_hour
    )
    SELECT whole_hour,
           greatest(whole_hour, COALESCE(
               (SELECT date_trunc('hour', watermark - interval '5 minutes', 'UTC') FROM jobs WHERE name = 'rollup'),
               whole_hour))
    FROM aligned
$$;

CREATE OR REPLACE FUNCTION storefront_calls(tenant uuid, since timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (SELECT COALESCE(sum(h.events), 0)::bigint FROM usage_hourly h
             WHERE h.tenant_id = tenant AND h.event_type IN ('api_call', 'search_query')
               AND h.hour >= b.whole_hour AND h.hour < b.rolled_until)
         + (SELECT count(*) FROM usage_events e
             WHERE e.tenant_id = tenant AND e.event_type IN ('api_call', 'search_query')
               AND ((e.occurred_at >= since AND e.occurred_at < b.whole_hour) OR e.occurred_at >= b.rolled_until))
    FROM rolled_bounds(since) b
$$;

-- The AI credits of a tenant's `ai_request` events since a time (their stored
-- quantity is the credits).
CREATE OR REPLACE FUNCTION ai_credits_used(tenant uuid, since timestamptz) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT (SELECT COALESCE(sum(h.quantity), 0) FROM usage_hourly h
             WHERE h.tenant_id = tenant AND h.event_type = 'ai_request'
               AND h.hour >= b.whole_hour AND h.hour < b.rolled_until)
         + (SELECT COALESCE(sum(e.quantity), 0) FROM usage_events e
             WHERE e.tenant_id = tenant AND e.event_type = 'ai_request'
               AND ((e.occurred_at >= since AND e.occurred_at < b.whole_hour) OR e.occurred_at >= b.rolled_until))
    FROM rolled_bounds(since) b
$$;
