DROP INDEX orders_new_by_schedule;
ALTER TABLE orders DROP COLUMN recheck_at;
