-- One request quota per merchant account at a gateway, shared by every process that
-- talks to it (worker replicas, notify, reconcile): a GCRA reservation clock. A process
-- books the next slots with one short UPDATE and sleeps until they start; nothing else
-- holds the row, so a process that dies holds at most the slots it booked (well under a
-- second of the quota). Times are microseconds since the Unix epoch on this server's
-- clock, so that processes whose clocks differ still agree. See
-- crates/gateway/src/quota/ for the arithmetic.
CREATE TABLE gateway_quotas (
    -- `<channel>:<account>`: the gateway and its merchant account (Alipay's app id,
    -- WeChat Pay's merchant id), as the gateway's own crate names it.
    account        TEXT   PRIMARY KEY CHECK (char_length(account) BETWEEN 1 AND 200),
    -- The theoretical arrival time: when the next request would go at the steady rate.
    tat_us         BIGINT NOT NULL DEFAULT 0,
    -- Until when the rate is halved because the gateway throttled the account.
    slow_until_us  BIGINT NOT NULL DEFAULT 0
);
