-- Back to one trade per order. Orders without a trade, or with more than one, cannot be
-- expressed by the previous release: the down step refuses rather than lose them.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM orders o
               WHERE (SELECT count(*) FROM trades t WHERE t.order_id = o.id) <> 1) THEN
        RAISE EXCEPTION 'orders with no trade or several trades exist; the previous release cannot hold them';
    END IF;
    IF EXISTS (SELECT 1 FROM refunds r JOIN trades t ON t.id = r.trade_id
               WHERE t.order_id <> r.order_id) THEN
        RAISE EXCEPTION 'a refund names a trade of another order';
    END IF;
END $$;
DROP INDEX orders_open_trades_by_schedule;
DROP INDEX anomalies_once;
DELETE FROM anomalies a WHERE a.id NOT IN
    (SELECT min(id) FROM anomalies GROUP BY out_trade_no, kind);
ALTER TABLE anomalies ADD CONSTRAINT anomalies_out_trade_no_kind_key UNIQUE (out_trade_no, kind);
ALTER TABLE anomalies DROP COLUMN trade_id;
DROP INDEX refunds_by_order;
ALTER TABLE refunds DROP CONSTRAINT refunds_trade_id_key;
ALTER TABLE refunds ADD CONSTRAINT refunds_order_id_key UNIQUE (order_id);
ALTER TABLE refunds DROP COLUMN trade_id;
UPDATE orders o SET channel = t.channel, gateway_ref = t.gateway_ref,
                    gateway_trade_no = COALESCE(o.gateway_trade_no, t.gateway_trade_no)
    FROM trades t WHERE t.order_id = o.id;
ALTER TABLE orders ALTER COLUMN channel SET NOT NULL;
ALTER TABLE orders ALTER COLUMN channel SET DEFAULT 'alipay';
ALTER TABLE orders DROP CONSTRAINT orders_closed_has_no_open_trade;
ALTER TABLE orders DROP COLUMN paid_trade_id;
ALTER TABLE orders DROP COLUMN open_trades;
DROP TRIGGER orders_first_trade ON orders;
DROP FUNCTION orders_first_trade();
DROP TRIGGER orders_count_first_trade ON orders;
DROP FUNCTION orders_count_first_trade();
DROP TRIGGER trades_count_open ON trades;
DROP FUNCTION trades_count_open();
DROP TABLE trades;
