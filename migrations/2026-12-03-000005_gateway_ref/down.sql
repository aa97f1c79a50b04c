ALTER TABLE orders DROP COLUMN gateway_ref;
