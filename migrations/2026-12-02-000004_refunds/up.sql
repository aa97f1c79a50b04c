-- Refunds of payments made after we closed the order (paid_after_close): one per order,
-- named at the gateway by `out_request_no`, so that however often the request is sent
-- (a retry after a timeout, a redelivered message, an operator asking twice) the gateway
-- makes one refund. Its progress: requested -> succeeded, or failed (permanent answer,
-- or every retry step used); an operator may ask again, which reopens a failed one.
CREATE TABLE refunds (
    id             BIGSERIAL PRIMARY KEY,
    order_id       BIGINT      NOT NULL UNIQUE REFERENCES orders (id),
    out_trade_no   TEXT        NOT NULL,
    out_request_no TEXT        NOT NULL UNIQUE,
    amount_minor   BIGINT      NOT NULL CHECK (amount_minor > 0),
    status         TEXT        NOT NULL DEFAULT 'requested'
                   CHECK (status IN ('requested', 'succeeded', 'failed')),
    attempts       INTEGER     NOT NULL DEFAULT 0,
    last_error     TEXT,
    gateway_answer TEXT,
    requested_by   TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refunds_open ON refunds (created_at) WHERE status <> 'succeeded';
