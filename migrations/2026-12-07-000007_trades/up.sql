-- Issue 21: an order is paid through any of several trades (payment attempts), at any
-- gateway, opened after the order exists. The order keeps its number, amount, deadline
-- and status (NEW -> PAID | CLOSED); each trade has its gateway (`channel`), its merchant
-- trade number (unique per gateway, not across gateways: a shop may use the order number
-- at both), the gateway's own reference when it has one, and its own state:
--
--   open -> paid      the gateway took the money on it
--   open -> closed    closed at its gateway (or it never existed there)
--   closed -> paid    paid after we closed it (a `paid_after_close` anomaly)
--
-- The order is PAID as soon as one trade is paid; it is CLOSED only when no trade is
-- open. `orders.open_trades` counts the open ones (kept by the trigger below, whoever
-- writes `trades`), so that guard is a condition on the order's own row: the CLOSED
-- update and the insert of a trade both lock that row, and a trade added while a worker
-- decides the order makes the worker's `... AND open_trades = 0` match nothing, in the
-- statement itself, never by timing. The CHECK is the backstop for any writer that
-- forgets the condition (a worker of the previous release during a rolling upgrade).
CREATE TABLE trades (
    id               BIGSERIAL PRIMARY KEY,
    order_id         BIGINT      NOT NULL REFERENCES orders (id),
    channel          TEXT        NOT NULL CHECK (char_length(channel) BETWEEN 1 AND 32),
    out_trade_no     TEXT        NOT NULL
                     CHECK (char_length(out_trade_no) BETWEEN 1 AND 64),
    gateway_ref      TEXT
                     CHECK (gateway_ref IS NULL OR char_length(gateway_ref) BETWEEN 1 AND 255),
    status           TEXT        NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'paid', 'closed')),
    gateway_trade_no TEXT,
    paid_minor       BIGINT,
    paid_at          TIMESTAMPTZ,
    closed_at        TIMESTAMPTZ,
    close_reason     TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (channel, out_trade_no)
);
CREATE UNIQUE INDEX trades_by_gateway_ref ON trades (channel, gateway_ref)
    WHERE gateway_ref IS NOT NULL;
CREATE INDEX trades_by_order ON trades (order_id, id);

ALTER TABLE orders ADD COLUMN open_trades INTEGER NOT NULL DEFAULT 0
    CHECK (open_trades >= 0);
-- The trade that paid the order (NULL: not paid, paid before this release, or settled by
-- other means: store credit, a voucher, a zero amount).
ALTER TABLE orders ADD COLUMN paid_trade_id BIGINT REFERENCES trades (id);
-- An order without a trade has no gateway: its `channel` is NULL. An order written with
-- a channel (the one-call form, and every writer of the previous release's contract,
-- which knows nothing of trades and may leave `channel` to its default) is an order with
-- its first trade: the trigger `orders_first_trade` below adds it, numbered as the order.
-- These two columns stay filled for such orders, so that a worker of the previous
-- release, during a rolling upgrade, can still read them.
ALTER TABLE orders ALTER COLUMN channel DROP NOT NULL;

-- Every existing order becomes an order with one trade: its channel, numbers, state and
-- times. A CLOSED order the gateway was paid on later (a `paid_after_close` anomaly, or a
-- refund row) has a paid trade: that is what its refund gives back.
INSERT INTO trades (order_id, channel, out_trade_no, gateway_ref, status, gateway_trade_no,
                    paid_at, closed_at, close_reason, created_at, updated_at)
SELECT o.id, o.channel, o.out_trade_no, o.gateway_ref,
       CASE
           WHEN o.status = 'NEW' THEN 'open'
           WHEN o.status = 'PAID' THEN 'paid'
           WHEN EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.id)
                OR EXISTS (SELECT 1 FROM anomalies a
                           WHERE a.order_id = o.id AND a.kind = 'paid_after_close')
               THEN 'paid'
           ELSE 'closed'
       END,
       o.gateway_trade_no, o.paid_at, o.closed_at, o.close_reason, o.created_at, o.updated_at
FROM orders o
ORDER BY o.id;
UPDATE orders o SET paid_trade_id = t.id
    FROM trades t WHERE t.order_id = o.id AND o.status = 'PAID';
UPDATE orders o SET open_trades = 1
    FROM trades t WHERE t.order_id = o.id AND t.status = 'open';

ALTER TABLE orders ADD CONSTRAINT orders_closed_has_no_open_trade
    CHECK (status <> 'CLOSED' OR open_trades = 0);

-- Keeps `orders.open_trades` equal to the number of the order's open trades, whoever
-- inserts, moves or deletes them. One exception, for speed: the first trade of an order
-- being inserted (added by `orders_first_trade`, one trigger level down) is counted by
-- `orders_count_first_trade` in the order's own row as it is written, so creating an order
-- does not update the row it just inserted (an update of `open_trades`, which an index
-- predicate names, is never a HOT update: every index of `orders` would get a new entry).
CREATE FUNCTION trades_count_open() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE
    delta INTEGER;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.status = 'open' THEN
            UPDATE orders SET open_trades = open_trades - 1 WHERE id = OLD.order_id;
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' AND pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.order_id <> OLD.order_id THEN
        RAISE EXCEPTION 'a trade never moves to another order';
    END IF;
    delta := (NEW.status = 'open')::int - (TG_OP = 'UPDATE' AND OLD.status = 'open')::int;
    IF delta <> 0 THEN
        UPDATE orders SET open_trades = open_trades + delta WHERE id = NEW.order_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER trades_count_open AFTER INSERT OR UPDATE OF status, order_id OR DELETE ON trades
    FOR EACH ROW EXECUTE FUNCTION trades_count_open();

-- An order inserted with a channel gets its first trade, numbered as the order, in the
-- same statement: one place for the one-call form and for writers of the previous
-- contract, so that no such order is ever closed without its gateway being asked. The
-- order's row is written counting it already (see `trades_count_open`).
CREATE FUNCTION orders_count_first_trade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.open_trades := (NEW.channel IS NOT NULL)::int;
    RETURN NEW;
END $$;
CREATE TRIGGER orders_count_first_trade BEFORE INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_count_first_trade();
CREATE FUNCTION orders_first_trade() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO trades (order_id, channel, out_trade_no, gateway_ref)
    VALUES (NEW.id, NEW.channel, NEW.out_trade_no, NEW.gateway_ref);
    RETURN NULL;
END $$;
CREATE TRIGGER orders_first_trade AFTER INSERT ON orders
    FOR EACH ROW WHEN (NEW.channel IS NOT NULL) EXECUTE FUNCTION orders_first_trade();

-- Refunds give back one trade's money: keyed by trade, not by order (an order paid twice
-- has its duplicate refunded, and could have more than one).
ALTER TABLE refunds ADD COLUMN trade_id BIGINT REFERENCES trades (id);
UPDATE refunds r SET trade_id = t.id FROM trades t WHERE t.order_id = r.order_id;
ALTER TABLE refunds ALTER COLUMN trade_id SET NOT NULL;
ALTER TABLE refunds DROP CONSTRAINT refunds_order_id_key;
ALTER TABLE refunds ADD CONSTRAINT refunds_trade_id_key UNIQUE (trade_id);
CREATE INDEX refunds_by_order ON refunds (order_id);

-- Anomalies may name the trade they are about; one per (order number, kind, trade), so a
-- third payment on an order is a second `duplicate_payment`, not a repeat of the first.
ALTER TABLE anomalies ADD COLUMN trade_id BIGINT REFERENCES trades (id);
UPDATE anomalies a SET trade_id = t.id FROM trades t WHERE t.order_id = a.order_id;
ALTER TABLE anomalies DROP CONSTRAINT anomalies_out_trade_no_kind_key;
CREATE UNIQUE INDEX anomalies_once ON anomalies (out_trade_no, kind, COALESCE(trade_id, 0));

-- The janitor re-drives NEW orders whose schedule is long past, and PAID orders that
-- still have open trades (each one a chance to pay twice) likewise.
CREATE INDEX orders_open_trades_by_schedule ON orders ((GREATEST(deadline, recheck_at)))
    WHERE status = 'PAID' AND open_trades > 0;
