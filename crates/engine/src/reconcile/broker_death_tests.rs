use super::*;
use lapin::types::FieldArray;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn death(reason: &str, queue: &str, count: i64, time: u64) -> AMQPValue {
    let mut d = FieldTable::default();
    d.insert("count".into(), AMQPValue::LongLongInt(count));
    d.insert("reason".into(), long(reason));
    d.insert("queue".into(), long(queue));
    d.insert("time".into(), AMQPValue::Timestamp(time));
    d.insert("exchange".into(), long("t.close"));
    d.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![long("due")])),
    );
    AMQPValue::FieldTable(d)
}

/// What RabbitMQ 3.10 writes on a close message the close queue dead-lettered past its
/// delivery limit, after its tier expired it: the latest death first, and the first
/// death (the tier's) in `x-first-death-*`.
fn dead_lettered_past_the_limit() -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            death("delivery_limit", "t.close.due", 1, 1_700_000_100),
            death("expired", "t.close.delay.4000ms", 1, 1_700_000_000),
        ])),
    );
    h.insert("x-first-death-reason".into(), long("expired"));
    h.insert("x-first-death-queue".into(), long("t.close.delay.4000ms"));
    h.insert("x-first-death-exchange".into(), long(""));
    h
}

#[test]
fn the_latest_death_is_the_reason_not_the_tiers_expiry() {
    let death = BrokerDeath::of(&dead_lettered_past_the_limit()).unwrap();
    assert_eq!(death.reason, DeathReason::DeliveryLimit);
    assert_eq!(death.queue.as_deref(), Some("t.close.due"));
    assert_eq!(death.count, Some(1));
    assert_eq!(death.time.unwrap().timestamp(), 1_700_000_100);
    let text = death.to_string();
    assert!(
        text.contains("delivery_limit") && text.contains("t.close.due"),
        "{text}"
    );
}

/// 4.x writes the same `x-death` and adds `x-last-death-*`; without `x-death` (a
/// message whose headers were rewritten) the summary headers still say why.
#[test]
fn the_summary_headers_are_read_when_there_is_no_x_death() {
    let mut h = FieldTable::default();
    h.insert("x-first-death-reason".into(), long("expired"));
    h.insert("x-last-death-reason".into(), long("delivery_limit"));
    h.insert("x-last-death-queue".into(), long("t.close.due"));
    let death = BrokerDeath::of(&h).unwrap();
    assert_eq!(death.reason, DeathReason::DeliveryLimit);
    assert_eq!(death.queue.as_deref(), Some("t.close.due"));

    let mut first_only = FieldTable::default();
    first_only.insert("x-first-death-reason".into(), long("maxlen"));
    assert_eq!(
        BrokerDeath::of(&first_only).unwrap().reason,
        DeathReason::MaxLen
    );
    let mut unknown = FieldTable::default();
    unknown.insert("x-first-death-reason".into(), long("something_new"));
    assert_eq!(
        BrokerDeath::of(&unknown).unwrap().reason.as_str(),
        "something_new"
    );
}

#[test]
fn a_message_the_broker_never_dead_lettered_has_no_death() {
    assert_eq!(BrokerDeath::of(&FieldTable::default()), None);
    let mut ours = FieldTable::default();
    ours.insert(HEADER_REASON.into(), long("attempts_exhausted"));
    assert_eq!(BrokerDeath::of(&ours), None);
    // An `x-death` of the wrong shape (a client rewrote it) is not believed.
    let mut odd = FieldTable::default();
    odd.insert("x-death".into(), long("delivery_limit"));
    assert_eq!(BrokerDeath::of(&odd), None);
}

/// The copy keeps our headers and the broker's reason, never the broker's own headers
/// (3.x would read an `x-death` we published as its record, for cycles too).
#[test]
fn a_reparked_copy_carries_the_reason_and_no_broker_header() {
    let copy = reparked_headers(&dead_lettered_past_the_limit(), None);
    assert!(copy.inner().keys().all(|k| !k.as_str().starts_with("x-")));
    assert_eq!(get(&copy, HEADER_REASON), Some(&long("delivery_limit")));
    let error = text(&copy, HEADER_LAST_ERROR).unwrap();
    assert!(error.contains("t.close.due"), "{error}");
    assert!(
        text(&copy, HEADER_PARKED_AT)
            .unwrap()
            .starts_with("2023-11-14T22:")
    );
}

#[test]
fn our_own_reason_is_kept_as_it_is() {
    let mut h = dead_lettered_past_the_limit();
    h.insert(HEADER_REASON.into(), long("attempts_exhausted"));
    h.insert(HEADER_LAST_ERROR.into(), long("timeout"));
    h.insert("oc-attempts".into(), AMQPValue::LongLongInt(4));
    let copy = reparked_headers(&h, None);
    assert_eq!(get(&copy, HEADER_REASON), Some(&long("attempts_exhausted")));
    assert_eq!(get(&copy, HEADER_LAST_ERROR), Some(&long("timeout")));
    assert_eq!(get(&copy, "oc-attempts"), Some(&AMQPValue::LongLongInt(4)));
    assert_eq!(get(&copy, HEADER_PARKED_AT), None);

    let cut = reparked_headers(
        &h,
        Some(Cut {
            original_bytes: 1 << 20,
        }),
    );
    let error = text(&cut, HEADER_LAST_ERROR).unwrap();
    assert!(error.starts_with("timeout; re-parked cut: "), "{error}");
    assert!(error.contains("1048576"), "{error}");
}
