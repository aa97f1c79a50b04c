//! Diesel table definitions, matching `migrations/`.
// Generated (`diesel print-schema`): the tables are documented in the migrations. Two
// columns of `orders` are left out: `channel` and `gateway_ref`, the first trade's, kept
// only for a worker of the release before trades during a rolling upgrade (written by
// the one-call form's SQL in `orders::insert_scheduled`, read by nothing here). Without
// them the table stays within diesel's 16 columns.
#![allow(missing_docs)]

diesel::table! {
    orders (id) {
        id -> Int8,
        out_trade_no -> Text,
        amount_minor -> Int8,
        currency -> Text,
        status -> Text,
        deadline -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        paid_at -> Nullable<Timestamptz>,
        closed_at -> Nullable<Timestamptz>,
        gateway_trade_no -> Nullable<Text>,
        close_reason -> Nullable<Text>,
        recheck_at -> Nullable<Timestamptz>,
        open_trades -> Int4,
        paid_trade_id -> Nullable<Int8>,
    }
}

diesel::table! {
    trades (id) {
        id -> Int8,
        order_id -> Int8,
        channel -> Text,
        out_trade_no -> Text,
        gateway_ref -> Nullable<Text>,
        status -> Text,
        gateway_trade_no -> Nullable<Text>,
        paid_minor -> Nullable<Int8>,
        paid_at -> Nullable<Timestamptz>,
        closed_at -> Nullable<Timestamptz>,
        close_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        kind -> Text,
        routing_key -> Text,
        payload -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    decisions (id) {
        id -> Int8,
        order_id -> Int8,
        attempt -> Int4,
        outcome -> Text,
        gateway_answer -> Nullable<Text>,
        detail -> Text,
        actor -> Text,
        decided_at -> Timestamptz,
    }
}

diesel::table! {
    anomalies (id) {
        id -> Int8,
        order_id -> Nullable<Int8>,
        out_trade_no -> Text,
        kind -> Text,
        detail -> Text,
        created_at -> Timestamptz,
        trade_id -> Nullable<Int8>,
    }
}

diesel::table! {
    parked_discards (id) {
        id -> Int8,
        order_id -> Nullable<Int8>,
        out_trade_no -> Nullable<Text>,
        park_reason -> Text,
        payload -> Bytea,
        actor -> Text,
        discarded_at -> Timestamptz,
    }
}

diesel::table! {
    refunds (id) {
        id -> Int8,
        order_id -> Int8,
        out_trade_no -> Text,
        out_request_no -> Nullable<Text>,
        amount_minor -> Nullable<Int8>,
        status -> Text,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        gateway_answer -> Nullable<Text>,
        requested_by -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        trade_id -> Int8,
    }
}

diesel::table! {
    gateway_quotas (account) {
        account -> Text,
        tat_us -> Int8,
        slow_until_us -> Int8,
    }
}

diesel::joinable!(decisions -> orders (order_id));
diesel::joinable!(refunds -> orders (order_id));
diesel::joinable!(trades -> orders (order_id));
diesel::allow_tables_to_appear_in_same_query!(
    orders,
    outbox,
    decisions,
    anomalies,
    parked_discards,
    refunds,
    trades,
    gateway_quotas
);
