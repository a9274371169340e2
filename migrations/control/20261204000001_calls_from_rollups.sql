-- A tenant's storefront calls (api_call and search_query events) since a time,
-- read mostly from the hourly roll-ups: the data planes ask every few seconds
-- and the fleet summary on every view, so a busy tenant's day must not be
-- counted event by event each time.
--
-- An hour is taken from `usage_hourly` once the roll-up has closed it: it
-- ended at least the roll-up's in-flight margin (5 minutes, `IN_FLIGHT_MARGIN`
-- in metering/rollup.rs) before the roll-up's watermark, so every event that
-- arrived on time is in its bucket. The rest (the part of an hour before the
-- first whole one, and the hours not closed yet) is counted from the events.
-- The two ranges do not overlap, so nothing is counted twice; an event that
-- arrives late for a closed hour is counted from the next roll-up on (within
-- a minute).
CREATE OR REPLACE FUNCTION storefront_calls(tenant uuid, since timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    WITH aligned AS (
        SELECT date_trunc('hour', since, 'UTC')
               + CASE WHEN date_trunc('hour', since, 'UTC') < since THEN interval '1 hour' ELSE interval '0' END
               AS whole_hour
    ), bounds AS (
        SELECT whole_hour,
               greatest(whole_hour, COALESCE(
                   (SELECT date_trunc('hour', watermark - interval '5 minutes', 'UTC') FROM jobs WHERE name = 'rollup'),
                   whole_hour)) AS rolled_until
        FROM aligned
    )
    SELECT (SELECT COALESCE(sum(h.events), 0)::bigint FROM usage_hourly h
             WHERE h.tenant_id = tenant AND h.event_type IN ('api_call', 'search_query')
               AND h.hour >= b.whole_hour AND h.hour < b.rolled_until)
         + (SELECT count(*) FROM usage_events e
             WHERE e.tenant_id = tenant AND e.event_type IN ('api_call', 'search_query')
               AND e.occurred_at >= since AND e.occurred_at < b.whole_hour)
         + (SELECT count(*) FROM usage_events e
             WHERE e.tenant_id = tenant AND e.event_type IN ('api_call', 'search_query')
               AND e.occurred_at >= b.rolled_until)
    FROM bounds b
$$;
