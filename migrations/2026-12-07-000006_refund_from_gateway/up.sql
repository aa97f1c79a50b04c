-- Issue 19: a refund's amount and number are decided when the worker sends it, from the
-- gateway's signed answer about the trade: the amount is what the gateway says was paid
-- (never what a bill row or a notification claimed), and the number `RF-<trade number>`
-- is unique per merchant at every gateway (WeChat Pay scopes `out_refund_no` per
-- merchant: `RF-<order id>` repeated across deployments sharing one merchant account).
-- A request therefore stores neither: both stay NULL until the first send, and `sent_at`
-- says when the row's amount and number were last handed to the gateway. A refund whose
-- trade the gateway no longer reports paid (a full refund closes it) is sent again as it
-- was sent before, so that a refund made by a call whose answer was lost is confirmed.
ALTER TABLE refunds ALTER COLUMN amount_minor DROP NOT NULL;
ALTER TABLE refunds ALTER COLUMN out_request_no DROP NOT NULL;
ALTER TABLE refunds ADD COLUMN sent_at TIMESTAMPTZ;
-- Rows of earlier versions. Sent at least once: they keep what they sent (the gateway
-- may have made that refund), until a send finds the trade still paid, which replaces
-- the amount with the gateway's and the number with the new one. Never sent: their
-- amount came from unverified input and their number from the order id; both are
-- forgotten, and the first send decides them.
UPDATE refunds SET sent_at = updated_at WHERE attempts > 0;
UPDATE refunds SET amount_minor = NULL, out_request_no = NULL
    WHERE attempts = 0 AND status = 'requested';
ALTER TABLE refunds ADD CONSTRAINT refunds_sent_is_named
    CHECK ((sent_at IS NULL AND status <> 'succeeded')
           OR (amount_minor IS NOT NULL AND out_request_no IS NOT NULL));
