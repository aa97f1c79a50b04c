//! Diesel table definitions, matching `migrations/`.
// Generated (`diesel print-schema`): the tables are documented in the migrations.
#![allow(missing_docs)]

diesel::table! {
    orders (id) {
        id -> Int8,
        out_trade_no -> Text,
        channel -> Text,
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
        gateway_ref -> Nullable<Text>,
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
    }
}

diesel::joinable!(decisions -> orders (order_id));
diesel::joinable!(refunds -> orders (order_id));
diesel::allow_tables_to_appear_in_same_query!(
    orders,
    outbox,
    decisions,
    anomalies,
    parked_discards,
    refunds
);
