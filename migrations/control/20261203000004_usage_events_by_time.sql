-- The fleet's usage summary and the roll-up read usage events by time across
-- every tenant; without this index each of those reads scans the whole table.
CREATE INDEX IF NOT EXISTS usage_events_occurred_idx ON usage_events (occurred_at);
