//! The reply table is the README's: each row of the README's table of notification
//! replies (and of the rarer cases in docs/operations.md) is read from the file, and every
//! finding it describes must get the reply and the outcome the row says. A row added,
//! dropped or reworded in either file, or a finding that no row describes, fails here.

use std::collections::BTreeSet;
use std::path::Path;

use axum::http::HeaderMap;
use order_closer_gateway::notice::{Notice, NoticeError};

use super::*;

/// A gateway's rule as the README writes both: `success` to say "handled", `fail` (with
/// a status) to have it sent again.
struct Words;

impl NotifyVerifier for Words {
    fn read(&self, _: &HeaderMap, _: &[u8]) -> Result<Notice, NoticeError> {
        Err(NoticeError::NoOrder)
    }

    fn acknowledge(&self) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain",
            body: "success".into(),
        }
    }

    fn refuse(&self, status: u16) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: "fail".into(),
        }
    }
}

const APPLIED: [Applied; 5] = [
    Applied::Paid,
    Applied::AlreadyPaid,
    Applied::PaidAfterClose,
    Applied::Vanished,
    Applied::Unexpected,
];

/// Every finding (an HTTP refusal with each status the endpoint gives). The match makes
/// a new variant fail to compile here until it is listed, and then until a row describes
/// it.
fn every_finding() -> Vec<Finding> {
    fn listed(finding: Finding) {
        match finding {
            Finding::NoSuchChannel
            | Finding::Unread { .. }
            | Finding::TooLarge
            | Finding::Malformed
            | Finding::NotOurs
            | Finding::UnknownOrder(Trust::Verified | Trust::Unverified)
            | Finding::DatabaseDown => {}
            Finding::Verified(applied) | Finding::Hint(Hint::Applied(applied)) => match applied {
                Applied::Paid
                | Applied::AlreadyPaid
                | Applied::PaidAfterClose
                | Applied::Vanished
                | Applied::Unexpected => {}
            },
            Finding::Hint(
                Hint::OrderPaid
                | Hint::Refused(_)
                | Hint::NoGateway
                | Hint::QueryFailed
                | Hint::NothingToApply,
            ) => {}
        }
    }
    let mut all = vec![
        Finding::NoSuchChannel,
        Finding::Unread { status: 400 },
        Finding::Unread { status: 408 },
        Finding::Unread { status: 413 },
        Finding::TooLarge,
        Finding::Malformed,
        Finding::NotOurs,
        Finding::UnknownOrder(Trust::Verified),
        Finding::UnknownOrder(Trust::Unverified),
        Finding::DatabaseDown,
        Finding::Hint(Hint::OrderPaid),
        Finding::Hint(Hint::NoGateway),
        Finding::Hint(Hint::QueryFailed),
        Finding::Hint(Hint::NothingToApply),
    ];
    all.extend(Refusal::ALL.map(|r| Finding::Hint(Hint::Refused(r))));
    all.extend(APPLIED.map(Finding::Verified));
    all.extend(APPLIED.map(|a| Finding::Hint(Hint::Applied(a))));
    all.iter().copied().for_each(listed);
    all
}

/// The README's rows, in order: how each row's first cell starts, and what it describes.
fn readme_rows() -> Vec<(&'static str, Vec<Finding>)> {
    let hint = |h| Finding::Hint(h);
    vec![
        (
            "verified \"paid\", order NEW",
            vec![Finding::Verified(Applied::Paid)],
        ),
        (
            "verified \"paid\", order PAID already",
            vec![Finding::Verified(Applied::AlreadyPaid)],
        ),
        (
            "verified \"paid\", order CLOSED",
            vec![Finding::Verified(Applied::PaidAfterClose)],
        ),
        (
            "bad signature, an amount that differs",
            vec![
                hint(Hint::Applied(Applied::Paid)),
                hint(Hint::Applied(Applied::AlreadyPaid)),
                hint(Hint::Applied(Applied::PaidAfterClose)),
                hint(Hint::NothingToApply),
                hint(Hint::QueryFailed),
            ],
        ),
        (
            "the same, but the order was asked about less than 5 s ago",
            vec![
                hint(Hint::Refused(Refusal::TooSoon)),
                hint(Hint::Refused(Refusal::Busy)),
                hint(Hint::Refused(Refusal::RateLimited)),
            ],
        ),
        (
            "an order number we do not have",
            vec![
                Finding::UnknownOrder(Trust::Verified),
                Finding::UnknownOrder(Trust::Unverified),
            ],
        ),
        (
            "not the gateway's format",
            vec![
                Finding::Malformed,
                Finding::NotOurs,
                // The budget never sees another merchant's notification; were it to, it
                // would be refused as one.
                hint(Hint::Refused(Refusal::NotOurMerchant)),
            ],
        ),
        (
            "untrusted, about an order that is PAID already",
            vec![hint(Hint::OrderPaid)],
        ),
        (
            "a body over 64 KiB",
            vec![
                Finding::TooLarge,
                Finding::Unread { status: 413 },
                Finding::Unread { status: 408 },
                Finding::Unread { status: 400 },
            ],
        ),
        ("the database cannot be used", vec![Finding::DatabaseDown]),
    ]
}

/// The rarer rows, in docs/operations.md.
fn rare_rows() -> Vec<(&'static str, Vec<Finding>)> {
    vec![
        (
            "at a channel no gateway serves",
            vec![Finding::NoSuchChannel],
        ),
        (
            "untrusted, about an order of a channel no gateway serves",
            vec![Finding::Hint(Hint::NoGateway)],
        ),
        (
            "a payment applied, but the order gone",
            vec![
                Finding::Verified(Applied::Vanished),
                Finding::Hint(Hint::Applied(Applied::Vanished)),
            ],
        ),
        (
            "a payment applied, but the decision gave an outcome",
            vec![
                Finding::Verified(Applied::Unexpected),
                Finding::Hint(Hint::Applied(Applied::Unexpected)),
            ],
        ),
    ]
}

/// One row of a table: its three cells.
#[derive(Debug)]
struct Row {
    notification: String,
    reply: String,
    outcome: String,
}

/// The rows of the table under the heading `heading` of `file` (from the workspace root)
/// whose header starts `| the notification | reply | outcome`.
fn table(file: &str, heading: &str) -> Vec<Row> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    let section = text
        .split("\n#")
        .find(|s| s.trim_start_matches('#').trim_start().starts_with(heading))
        .unwrap_or_else(|| panic!("{file} has no section {heading:?}"));
    let mut lines = section
        .lines()
        .skip_while(|l| !l.starts_with("| the notification | reply | outcome"))
        .skip(2);
    let rows: Vec<Row> = lines
        .by_ref()
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            assert_eq!(cells.len(), 3, "{file}: {l}");
            Row {
                notification: cells[0].to_owned(),
                reply: cells[1].to_owned(),
                outcome: cells[2].to_owned(),
            }
        })
        .collect();
    assert!(!rows.is_empty(), "{file}: no reply table under {heading:?}");
    rows
}

/// The `code` spans of a cell.
fn spans(cell: &str) -> BTreeSet<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The HTTP statuses (three-digit numbers) a text names.
fn statuses(text: &str) -> BTreeSet<u16> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|n| n.len() == 3)
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Checks a file's rows against what they describe; returns the findings described.
fn check(file: &str, rows: &[Row], described: &[(&str, Vec<Finding>)]) -> Vec<Finding> {
    let firsts: Vec<&str> = rows.iter().map(|r| r.notification.as_str()).collect();
    assert_eq!(
        rows.len(),
        described.len(),
        "{file}'s table has other rows than this test: {firsts:#?}"
    );
    let mut all = Vec::new();
    for (row, (starts, findings)) in rows.iter().zip(described) {
        assert!(
            row.notification.starts_with(starts),
            "{file}: expected a row starting {starts:?}, found {:?}",
            row.notification
        );
        let said = format!("{file}, row {starts:?}");
        let words = spans(&row.reply);
        let named = statuses(&format!("{} {}", row.notification, row.reply));
        let mut outcomes = BTreeSet::new();
        let mut bodies = BTreeSet::new();
        let mut refusals = BTreeSet::new();
        for finding in findings {
            let rule: Option<&dyn NotifyVerifier> = match finding {
                Finding::NoSuchChannel => None,
                _ => Some(&Words),
            };
            let (outcome, sent) = reply(*finding, rule);
            assert!(
                words.contains(sent.body.as_str()),
                "{said}: {finding:?} is answered `{}`, which the row does not say",
                sent.body
            );
            if let Verdict::SendAgain(status) = answer(*finding).verdict {
                assert_eq!(sent.status, status, "{said}: {finding:?}");
                assert!(
                    named.contains(&status),
                    "{said}: {finding:?} is refused with {status}, which the row does not name"
                );
                refusals.insert(status);
            }
            outcomes.insert(outcome.as_str());
            bodies.insert(sent.body);
        }
        assert_eq!(
            spans(&row.outcome),
            outcomes,
            "{said}: the outcomes it names"
        );
        for word in ["success", "fail", "no such channel"] {
            assert_eq!(
                words.contains(word),
                bodies.contains(word),
                "{said}: whether `{word}` is a reply to it"
            );
        }
        let unsent: Vec<u16> = statuses(&row.reply)
            .difference(&refusals)
            .copied()
            .collect();
        assert!(unsent.is_empty(), "{said}: no reply has status {unsent:?}");
        all.extend(findings.iter().copied());
    }
    all
}

#[test]
fn the_readme_s_reply_table_is_the_reply_table() {
    let readme = table("README.md", "Payment notifications: which reply, and why");
    let rare = table(
        "docs/operations.md",
        "Payment notifications (`order-closer notify`)",
    );
    let mut described = check("README.md", &readme, &readme_rows());
    described.extend(check("docs/operations.md", &rare, &rare_rows()));
    for finding in every_finding() {
        let rows = described.iter().filter(|f| **f == finding).count();
        assert_eq!(rows, 1, "{finding:?} is described by {rows} rows, not one");
    }
}

#[test]
fn the_gateway_s_own_words_carry_the_reply() {
    let (outcome, handled) = reply(Finding::Verified(Applied::Paid), Some(&Words));
    assert_eq!(outcome, NotifyOutcome::Paid);
    assert_eq!(handled, Words.acknowledge());
    for status in [400, 404, 408, 413, 429, 500, 503] {
        assert_eq!(
            Verdict::SendAgain(status).worded(Some(&Words)),
            Words.refuse(status)
        );
    }
    // Without a gateway there are no gateway's words: plain text, and nobody to tell
    // "handled".
    let plain = reply(Finding::NoSuchChannel, None).1;
    assert_eq!(
        (plain.status, plain.content_type, plain.body.as_str()),
        (404, "text/plain", "no such channel")
    );
    assert_eq!(Verdict::Handled.worded(None).status, 404);
}

#[test]
fn a_hint_answered_is_replied_to_as_the_verified_notification_and_counted_as_a_query() {
    for applied in APPLIED {
        let verified = answer(Finding::Verified(applied));
        let hinted = answer(Finding::Hint(Hint::Applied(applied)));
        assert_eq!(hinted.verdict, verified.verdict, "{applied:?}");
        let expected = match verified.outcome {
            NotifyOutcome::Rejected => NotifyOutcome::Rejected,
            _ => NotifyOutcome::Queried,
        };
        assert_eq!(hinted.outcome, expected, "{applied:?}");
    }
}
