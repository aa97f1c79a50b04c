-- When an order's own schedule next looks at it, if that is later than its deadline: a
-- retry's `not_before`, 'infinity' while its message is parked for an operator, or the
-- janitor's lease while the janitor re-drives it. NULL: the deadline.
--
-- The janitor (inside every worker) re-drives NEW orders whose
-- GREATEST(deadline, recheck_at) is further in the past than ORDER_CLOSER_JANITOR_AFTER:
-- their close message was lost somewhere. The index keeps that query cheap however many
-- orders are settled.
ALTER TABLE orders ADD COLUMN recheck_at TIMESTAMPTZ;
CREATE INDEX orders_new_by_schedule ON orders ((GREATEST(deadline, recheck_at)))
    WHERE status = 'NEW';
