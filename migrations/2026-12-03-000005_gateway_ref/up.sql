-- The gateway's own reference of an order's trade, for gateways that look trades up by
-- their own id rather than our out_trade_no (Stripe's PaymentIntent `pi_...`). Given by
-- the shop when it creates the order; NULL for gateways that need none (Alipay, WeChat
-- Pay), which find the trade by out_trade_no.
ALTER TABLE orders ADD COLUMN gateway_ref TEXT
    CHECK (gateway_ref IS NULL OR length(gateway_ref) BETWEEN 1 AND 255);
