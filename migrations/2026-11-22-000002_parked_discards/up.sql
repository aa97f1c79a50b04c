-- Parked messages an operator discarded: the audit trail of what was thrown away, by
-- whom and why, with the message itself (a parked message may name no order at all).
CREATE TABLE parked_discards (
    id           BIGSERIAL PRIMARY KEY,
    order_id     BIGINT      REFERENCES orders (id),
    out_trade_no TEXT,
    park_reason  TEXT        NOT NULL,
    payload      BYTEA       NOT NULL,
    actor        TEXT        NOT NULL,
    discarded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
