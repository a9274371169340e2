-- How a tenant's product search is set up: written by onboarding's search step.
CREATE TABLE search_settings (
    tenant_id   uuid PRIMARY KEY,
    -- A PostgreSQL text-search configuration.
    language    text NOT NULL DEFAULT 'english'
                CHECK (language IN ('simple', 'english', 'french', 'german', 'spanish', 'italian', 'dutch')),
    synonyms    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
