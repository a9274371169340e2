-- Notices that a tenant approaches or reached a plan limit: one per tenant,
-- limit, period (its local day, or the billing month) and threshold, so the
-- limits job may run any number of times and each notice goes out once.
CREATE TABLE limit_notices (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    limit_name  text NOT NULL,
    period      text NOT NULL,
    threshold   smallint NOT NULL CHECK (threshold IN (80, 100)),
    used        double precision NOT NULL,
    allowed     double precision NOT NULL,
    noticed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, limit_name, period, threshold)
);
