-- Usage proven against Stripe: per tenant, the last comparison of what Indigo
-- reported for each meter and closed hour with what Stripe says it received.
CREATE TABLE billing_parity (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id),
    checked_at  timestamptz NOT NULL,
    in_parity   boolean NOT NULL,
    -- [{meter, window_start, reported, received}] for each window that differs.
    mismatches  jsonb NOT NULL DEFAULT '[]'
);
