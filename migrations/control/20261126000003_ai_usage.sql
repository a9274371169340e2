-- AI calls: the service and tokens behind an ai_request's credits.
ALTER TABLE usage_events
    ADD COLUMN service text,
    ADD COLUMN input_tokens bigint CHECK (input_tokens >= 0),
    ADD COLUMN output_tokens bigint CHECK (output_tokens >= 0);
