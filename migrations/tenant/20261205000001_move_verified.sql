-- A moving tenant's rows are compared on both sides as the catch-up writes
-- them, not all at the switch: a key is `verified` once its row was found
-- equal on source and target, and applying a later change of it clears the
-- mark. The write pause then compares only the rows changed since — the last
-- few — and stays short however long the move took.
ALTER TABLE move_touched ADD COLUMN verified boolean NOT NULL DEFAULT false;
