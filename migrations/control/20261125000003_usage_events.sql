-- Raw usage as the data plane (and other callers) report it. The event id is
-- the primary key, so a batch delivered twice is stored once.

CREATE TABLE usage_events (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    event_type   text NOT NULL CHECK (event_type IN ('api_call', 'search_query', 'ai_request', 'storage_gb')),
    quantity     double precision NOT NULL CHECK (quantity >= 0 AND quantity < 'Infinity'),
    route        text,
    status       smallint,
    latency_ms   integer,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX usage_events_tenant_idx ON usage_events (tenant_id, occurred_at);
