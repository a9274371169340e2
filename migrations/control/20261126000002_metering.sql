-- Metering to billing: hourly and daily roll-ups of the raw usage events, the
-- scheduled jobs that compute them and report them to Stripe, what Stripe has
-- acknowledged per tenant and window, and Stripe's webhook deliveries.

-- The roll-up finds the buckets touched since its last run by arrival time.
CREATE INDEX usage_events_received_idx ON usage_events (received_at);

-- Each row is recomputed from the raw events of its bucket, never incremented:
-- a bucket always equals the sum of its distinct events.
CREATE TABLE usage_hourly (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    event_type  text NOT NULL,
    hour        timestamptz NOT NULL,
    quantity    double precision NOT NULL,
    events      bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_type, hour)
);

CREATE TABLE usage_daily (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    event_type  text NOT NULL,
    day         date NOT NULL,
    quantity    double precision NOT NULL,
    events      bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_type, day)
);

-- Scheduled jobs: what each last did, and when it runs next.
CREATE TABLE jobs (
    name             text PRIMARY KEY,
    schedule         text NOT NULL,
    runs             bigint NOT NULL DEFAULT 0,
    last_started_at  timestamptz,
    last_finished_at timestamptz,
    last_outcome     text CHECK (last_outcome IN ('ok', 'skipped', 'failed')),
    last_error       text,
    last_detail      jsonb,
    next_run_at      timestamptz,
    -- The roll-up's: events received before this are rolled up.
    watermark        timestamptz
);

-- What Stripe has acknowledged, per tenant, meter and hour window: a window is
-- reported again only by the difference, under an identifier derived from
-- what was reported before, so a resent request is deduplicated by Stripe.
CREATE TABLE billing_reports (
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    meter              text NOT NULL,
    window_start       timestamptz NOT NULL,
    reported_quantity  double precision NOT NULL,
    last_identifier    text NOT NULL,
    reported_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, meter, window_start)
);

-- Stripe webhook deliveries, each processed once.
CREATE TABLE stripe_events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    tenant_id    uuid REFERENCES tenants (id),
    outcome      text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Payment standing: a failed payment opens a grace period; when it ends unpaid
-- the reconciler suspends the tenant, and a payment resumes it.
ALTER TABLE tenant_billing
    ADD COLUMN payment_state text NOT NULL DEFAULT 'ok'
        CHECK (payment_state IN ('ok', 'past_due', 'suspended_unpaid')),
    ADD COLUMN grace_until timestamptz;
