-- Back to amounts and numbers fixed at request time: a refund never sent gets the order's
-- amount and the old number `RF-<order id>`.
ALTER TABLE refunds DROP CONSTRAINT refunds_sent_is_named;
UPDATE refunds r
    SET amount_minor = COALESCE(r.amount_minor, o.amount_minor),
        out_request_no = COALESCE(r.out_request_no, 'RF-' || r.order_id)
    FROM orders o WHERE o.id = r.order_id;
ALTER TABLE refunds DROP COLUMN sent_at;
ALTER TABLE refunds ALTER COLUMN amount_minor SET NOT NULL;
ALTER TABLE refunds ALTER COLUMN out_request_no SET NOT NULL;
