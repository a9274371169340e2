-- What the plan-change preview said when a move started, kept beside what the
-- move did: the copy rate and the longest write pause of this installation's
-- earlier moves (none before any was measured).
ALTER TABLE tenant_moves
    ADD COLUMN estimated_rows_per_second double precision,
    ADD COLUMN estimated_pause_ms bigint;
