-- Orders, their close schedule (outbox) and the decision audit trail.

CREATE TABLE orders (
    id               BIGSERIAL PRIMARY KEY,
    out_trade_no     TEXT        NOT NULL UNIQUE
                     CHECK (char_length(out_trade_no) BETWEEN 1 AND 64),
    channel          TEXT        NOT NULL DEFAULT 'alipay',
    amount_minor     BIGINT      NOT NULL CHECK (amount_minor > 0),
    currency         TEXT        NOT NULL DEFAULT 'CNY' CHECK (char_length(currency) = 3),
    status           TEXT        NOT NULL DEFAULT 'NEW'
                     CHECK (status IN ('NEW', 'PAID', 'CLOSED')),
    deadline         TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at          TIMESTAMPTZ,
    closed_at        TIMESTAMPTZ,
    gateway_trade_no TEXT,
    close_reason     TEXT
);

-- The reconcile sweep looks for NEW orders past their deadline.
CREATE INDEX orders_new_by_deadline ON orders (deadline) WHERE status = 'NEW';

-- Messages waiting to be published: close schedules and events. A row exists until the
-- broker confirmed its publish, so a decision's event is sent iff the decision committed.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    kind         TEXT        NOT NULL CHECK (kind IN ('close', 'event')),
    routing_key  TEXT        NOT NULL,
    payload      TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per decision about an order: what the gateway answered, what was done.
CREATE TABLE decisions (
    id             BIGSERIAL PRIMARY KEY,
    order_id       BIGINT      NOT NULL REFERENCES orders (id),
    attempt        INTEGER     NOT NULL,
    outcome        TEXT        NOT NULL,
    gateway_answer TEXT,
    detail         TEXT        NOT NULL DEFAULT '',
    actor          TEXT        NOT NULL,
    decided_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX decisions_by_order ON decisions (order_id, id);

-- Places where money and orders disagree (amount mismatch, paid after close, ...).
CREATE TABLE anomalies (
    id           BIGSERIAL PRIMARY KEY,
    order_id     BIGINT      REFERENCES orders (id),
    out_trade_no TEXT        NOT NULL,
    kind         TEXT        NOT NULL,
    detail       TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (out_trade_no, kind)
);
