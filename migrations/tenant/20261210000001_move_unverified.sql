-- The write pause reads a moving tenant's touched keys that no comparison has
-- settled yet: the last few. Without this index that read scans every key the
-- catch-up wrote, each settled row's old versions included, and grows with the
-- length of the move.
CREATE INDEX move_touched_unverified ON move_touched (tenant, table_name) WHERE NOT verified;
