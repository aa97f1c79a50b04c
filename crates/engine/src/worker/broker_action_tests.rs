//! The worker's broker actions as tables: every decision outcome, and every kind of
//! message before a decision.

use std::collections::BTreeSet;

use super::*;
use crate::decide::table::{Action, CloseReason};
use order_closer_core::order::OrderStatus;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

const STARTED: &str = "2026-11-22T10:00:00Z";
const NOW: &str = "2026-11-22T10:00:01Z";
const FIRST_SEEN: &str = "2026-11-22T09:50:00Z";

/// A message as delivered: attempt `attempt`, first seen before when it is a retry.
fn message(attempt: u32) -> CloseMessage {
    CloseMessage {
        attempt,
        first_seen: (attempt > 0).then(|| t(FIRST_SEEN)),
        ..CloseMessage::new(7, "ORD-7", t("2026-11-22T09:59:59Z"))
    }
}

/// The variant's name; matching without a wildcard makes a new outcome fail to compile
/// here until the table below has a row for it.
fn variant(outcome: &Result<Outcome, Unavailable>) -> &'static str {
    match outcome {
        Ok(Outcome::Missing) => "Missing",
        Ok(Outcome::Settled(_)) => "Settled",
        Ok(Outcome::NotDue { .. }) => "NotDue",
        Ok(Outcome::Decided { .. }) => "Decided",
        Ok(Outcome::LostRace(_)) => "LostRace",
        Ok(Outcome::Retry { .. }) => "Retry",
        Ok(Outcome::Park { .. }) => "Park",
        Ok(Outcome::WouldDo(_)) => "WouldDo",
        Ok(Outcome::Refunded { .. }) => "Refunded",
        Ok(Outcome::WouldRefund { .. }) => "WouldRefund",
        Ok(Outcome::StillParked { .. }) => "StillParked",
        Err(Unavailable(_)) => "Unavailable",
    }
}

const EVERY_VARIANT: [&str; 12] = [
    "Missing",
    "Settled",
    "NotDue",
    "Decided",
    "LostRace",
    "Retry",
    "Park",
    "WouldDo",
    "Refunded",
    "WouldRefund",
    "StillParked",
    "Unavailable",
];

fn unavailable() -> Unavailable {
    Unavailable::from(diesel::result::Error::NotFound)
}

fn ack() -> BrokerAction {
    BrokerAction::Ack(Finished::Done)
}

fn parked(attempt: u32, code: &str, detail: &str, attempts: u32, first_seen: &str) -> BrokerAction {
    BrokerAction::Park {
        message: message(attempt),
        note: Parking {
            reason: ParkReason::Decision(code.into()),
            last_error: detail.into(),
            attempts,
            first_seen: t(first_seen),
        },
    }
}

#[test]
fn after_decision_rows() {
    let later_deadline = t("2026-11-22T11:00:00Z");
    let retry_due = t("2026-11-22T10:00:31Z");
    let retry = |attempt| Outcome::Retry {
        delay: Duration::from_secs(30),
        not_before: retry_due,
        attempt,
        code: "timeout".into(),
        detail: "no answer".into(),
    };
    let rescheduled = |attempt: u32, first_seen: &str| BrokerAction::Schedule {
        message: CloseMessage {
            attempt,
            first_seen: Some(t(first_seen)),
            not_before: Some(retry_due),
            ..message(0)
        },
        why: Reschedule::Retry {
            code: "timeout".into(),
            delay: Duration::from_secs(30),
        },
    };
    let db_down = |attempt: u32, first_seen: &str| BrokerAction::Schedule {
        message: CloseMessage {
            first_seen: Some(t(first_seen)),
            not_before: Some(t("2026-11-22T10:00:06Z")),
            ..message(attempt)
        },
        why: Reschedule::DatabaseUnavailable {
            error: unavailable().to_string(),
        },
    };
    let park = |code: &str| Outcome::Park {
        code: code.into(),
        detail: "why".into(),
    };
    let rows: Vec<(&str, u32, Result<Outcome, Unavailable>, BrokerAction)> = vec![
        // Done with: acknowledge.
        (
            "decided",
            0,
            Ok(Outcome::Decided {
                status: OrderStatus::Closed,
                decision_id: 1,
                lateness: Duration::ZERO,
            }),
            ack(),
        ),
        (
            "settled before",
            0,
            Ok(Outcome::Settled(OrderStatus::Paid)),
            ack(),
        ),
        (
            "lost the race",
            2,
            Ok(Outcome::LostRace(OrderStatus::Paid)),
            ack(),
        ),
        (
            "refunded",
            1,
            Ok(Outcome::Refunded { decision_id: 9 }),
            ack(),
        ),
        (
            "a dry run's decision",
            0,
            Ok(Outcome::WouldDo(Action::Close(CloseReason::NoTrade))),
            ack(),
        ),
        (
            "a dry run's refund",
            0,
            Ok(Outcome::WouldRefund { amount_minor: 100 }),
            ack(),
        ),
        (
            "no such order",
            0,
            Ok(Outcome::Missing),
            BrokerAction::Ack(Finished::OrderMissing),
        ),
        // Comes round again.
        (
            "deadline extended",
            3,
            Ok(Outcome::NotDue {
                wait: Duration::from_secs(3599),
                deadline: later_deadline,
            }),
            BrokerAction::Schedule {
                message: CloseMessage {
                    deadline: later_deadline,
                    ..message(3)
                },
                why: Reschedule::NotDue,
            },
        ),
        ("first retry", 0, Ok(retry(1)), rescheduled(1, STARTED)),
        (
            "a later retry keeps first_seen",
            4,
            Ok(retry(5)),
            rescheduled(5, FIRST_SEEN),
        ),
        (
            "database down, first try",
            0,
            Err(unavailable()),
            db_down(0, STARTED),
        ),
        (
            "database down, no attempt counted",
            2,
            Err(unavailable()),
            db_down(2, FIRST_SEEN),
        ),
        // Parked for an operator, counting this attempt.
        (
            "parked",
            0,
            Ok(park("attempts_exhausted")),
            parked(0, "attempts_exhausted", "why", 1, STARTED),
        ),
        (
            "parked on a later attempt",
            5,
            Ok(park("ACQ.TRADE_HAS_CLOSE")),
            parked(5, "ACQ.TRADE_HAS_CLOSE", "why", 6, FIRST_SEEN),
        ),
        (
            "the attempt count cannot overflow",
            u32::MAX,
            Ok(park("x")),
            parked(u32::MAX, "x", "why", u32::MAX, FIRST_SEEN),
        ),
        (
            "still parked reads as parked",
            1,
            Ok(Outcome::StillParked {
                code: "timeout".into(),
                detail: "no answer".into(),
            }),
            parked(1, "timeout", "no answer", 2, FIRST_SEEN),
        ),
    ];
    let covered: BTreeSet<&str> = rows.iter().map(|(_, _, o, _)| variant(o)).collect();
    assert_eq!(
        covered,
        EVERY_VARIANT.into_iter().collect(),
        "a row per outcome"
    );
    for (name, attempt, outcome, expected) in rows {
        assert_eq!(
            after_decision(message(attempt), &outcome, t(STARTED), t(NOW)),
            expected,
            "{name}"
        );
    }
}

#[test]
fn before_deciding_rows() {
    let now = t(STARTED);
    let due_in = |d: chrono::Duration| CloseMessage::new(7, "ORD-7", now + d);
    let ms = chrono::Duration::milliseconds;
    let max = chrono::Duration::from_std(MAX_TIME_TO_PAY).unwrap();
    let smallest = chrono::Duration::from_std(SMALLEST_TIER).unwrap();
    let hop = |d: chrono::Duration| {
        Triage::Act(BrokerAction::Schedule {
            message: due_in(d),
            why: Reschedule::EarlyHop {
                remaining: d.to_std().unwrap(),
            },
        })
    };
    let decide = |d: chrono::Duration| Triage::Decide(due_in(d));
    let beyond = max + ms(1);
    let rows = [
        (
            "long past its deadline",
            ms(-86_400_000),
            decide(ms(-86_400_000)),
        ),
        ("due now", ms(0), decide(ms(0))),
        (
            "due within the smallest tier",
            smallest - ms(1),
            decide(smallest - ms(1)),
        ),
        ("due in exactly the smallest tier", smallest, hop(smallest)),
        ("an hour ahead", ms(3_600_000), hop(ms(3_600_000))),
        ("the longest time to pay ahead", max, hop(max)),
        (
            "beyond any order's time to pay",
            beyond,
            Triage::Act(BrokerAction::Park {
                message: due_in(beyond),
                note: Parking {
                    reason: ParkReason::DeadlineOutOfRange,
                    last_error: format!(
                        "due at {}, more than {MAX_TIME_TO_PAY:?} ahead",
                        now + beyond
                    ),
                    attempts: 0,
                    first_seen: now,
                },
            }),
        ),
    ];
    for (name, due, expected) in rows {
        assert_eq!(before_deciding(due_in(due), now), expected, "{name}");
    }
    // A retry's own moment counts, not only the deadline; a retry parked keeps its count.
    let retried = CloseMessage {
        attempt: 3,
        first_seen: Some(t(FIRST_SEEN)),
        not_before: Some(now + beyond),
        ..due_in(ms(-1000))
    };
    let Triage::Act(BrokerAction::Park { note, .. }) = before_deciding(retried, now) else {
        panic!("a retry due beyond any time to pay is parked")
    };
    assert_eq!(
        (note.attempts, note.first_seen, note.reason.as_str()),
        (3, t(FIRST_SEEN), "deadline_out_of_range")
    );
}

#[test]
fn the_park_reason_is_written_as_the_note_always_wrote_it() {
    assert_eq!(
        ParkReason::DeadlineOutOfRange.as_str(),
        "deadline_out_of_range"
    );
    assert_eq!(
        ParkReason::Decision("order_mismatch".into()).as_str(),
        "order_mismatch"
    );
}
