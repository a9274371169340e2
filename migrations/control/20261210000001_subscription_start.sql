-- When each tenant's subscription began at Stripe: usage of the hour it began
-- in is dated at that instant, not at the hour's start, so that Stripe (which
-- invoices metered usage from the subscription's start) bills all of it.
ALTER TABLE tenant_billing ADD COLUMN subscribed_at timestamptz;

-- When a window's usage is dated at Stripe: its start, or the subscription's
-- start when the subscription began inside it.
CREATE FUNCTION billed_at(window_start timestamptz, subscribed_at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN subscribed_at > window_start AND subscribed_at < window_start + interval '1 hour'
                THEN subscribed_at ELSE window_start END
$$;
