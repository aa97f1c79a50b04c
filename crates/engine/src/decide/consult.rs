//! Asking the gateway: the deadline protocol's calls ([`Protocol`], pure, says which
//! call comes next) at every open trade's gateway at once, each call timed and counted
//! by channel and method (and in the process's retry budget), a transient error retried
//! in the process first ([`super::quick_retry`]), with the transcript of every answer and
//! every quick retry kept for the audit row.

use std::time::Instant;

use futures_util::future::join_all;
use tracing::info;

use super::order_table::TradeVerdict;
use super::quick_retry::{self, Session, Verdict};
use super::table::{self, Action, Protocol, Step};
use super::{Decider, Mode};
use order_closer_core::order::Order;
use order_closer_core::trade::Trade;
use order_closer_gateway::{
    CloseAnswer, Gateway, GatewayError, GatewayMethod, QueryAnswer, TradeRef,
};

impl Decider {
    /// Runs the deadline protocol at every open trade's gateway, all at once: each
    /// trade's verdict with the transcript of its answers. A trade whose channel has no
    /// gateway configured is parked, never guessed at. The trades' quick retries share
    /// one [`Session`]: the decision's time in quick retries is capped as a whole.
    pub(super) async fn consult_all(
        &self,
        order: &Order,
        trades: &[Trade],
        mode: Mode,
    ) -> Vec<(TradeVerdict, String)> {
        let session = self.quick.session();
        let session = &session;
        join_all(
            trades
                .iter()
                .filter(|t| t.is_open())
                .map(|trade| async move {
                    let (action, transcript) = match self.gateways.get(&trade.channel) {
                        Some(gateway) => {
                            self.consult(gateway.as_ref(), order, trade, mode, session)
                                .await
                        }
                        None => (
                            Action::Park {
                                code: "unknown_channel".into(),
                                detail: format!(
                                    "no gateway is configured for channel {:?}",
                                    trade.channel
                                ),
                            },
                            format!("{} trade {}: no gateway", trade.channel, trade.out_trade_no),
                        ),
                    };
                    (
                        TradeVerdict {
                            trade_id: trade.id,
                            action,
                        },
                        transcript,
                    )
                }),
        )
        .await
    }

    /// Runs the deadline protocol ([`Protocol`]: query, then close and query again as
    /// the table says) for one trade of the order at its gateway and returns the final
    /// action with the transcript of every answer, for the audit row.
    async fn consult(
        &self,
        gateway: &dyn Gateway,
        order: &Order,
        stored: &Trade,
        mode: Mode,
        session: &Session,
    ) -> (Action, String) {
        let trade = TradeRef::of(stored);
        let calls = Calls {
            decider: self,
            channel: stored.channel.as_str(),
            session,
        };
        let (mut protocol, mut step) = Protocol::start(order, mode == Mode::DryRun);
        let mut transcript = Vec::new();
        let action = loop {
            step = match step {
                Step::Done(action) => break action,
                Step::Query => {
                    let answer = calls
                        .make(
                            GatewayMethod::Query,
                            || gateway.query(trade),
                            describe_query,
                            &mut transcript,
                        )
                        .await;
                    protocol.after_query(answer.as_ref().map(|a| &a.state))
                }
                Step::Close => {
                    let closed = calls
                        .make(
                            GatewayMethod::Close,
                            || gateway.close(trade),
                            describe_close,
                            &mut transcript,
                        )
                        .await;
                    if matches!(closed, Ok(CloseAnswer::NotCloseable { .. })) {
                        info!("gateway refused the close; asking again");
                    }
                    protocol.after_close(closed.as_ref())
                }
            };
        };
        let head = format!("{} trade {}:", stored.channel, stored.out_trade_no);
        (action, format!("{head}\n{}", transcript.join("\n")))
    }

    /// Makes one gateway call, timed and counted by channel and method, and counted in
    /// the process's retry budget (every path's calls: the deadline protocol's, the
    /// notify endpoint's hint queries, reconcile's, refunds').
    pub(super) async fn timed<T>(
        &self,
        channel: &str,
        method: GatewayMethod,
        call: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        self.quick.record_request();
        let started = Instant::now();
        let answer = call.await;
        self.metrics.gateway_call(
            channel,
            method,
            started.elapsed(),
            answer.as_ref().err().map(|e| e.code.as_str()),
        );
        answer
    }

    /// Asks a trade's gateway about it (timed and counted like the worker's queries);
    /// None when no gateway serves the trade's channel.
    pub async fn query_gateway(&self, trade: &Trade) -> Option<Result<QueryAnswer, GatewayError>> {
        let gateway = self.gateways.get(&trade.channel)?;
        Some(
            self.timed(
                &trade.channel,
                GatewayMethod::Query,
                gateway.query(TradeRef::of(trade)),
            )
            .await,
        )
    }
}

/// The calls of one trade's protocol: at its channel, within its decision's session.
struct Calls<'a> {
    decider: &'a Decider,
    channel: &'a str,
    session: &'a Session,
}

impl Calls<'_> {
    /// Makes the call the protocol asks for; a transient error (as the table says:
    /// [`table::worth_repeating`]) is made again after a jittered wait while the call's
    /// quick retries, the decision's time for them and the process's budget allow. Each
    /// answer, each quick retry and the reason the last error was not retried go into
    /// `transcript`. The answer handed back is the last one: what follows is the
    /// protocol's, exactly as without quick retries.
    async fn make<T, F, Fut>(
        &self,
        method: GatewayMethod,
        call: F,
        describe: fn(&Result<T, GatewayError>) -> String,
        transcript: &mut Vec<String>,
    ) -> Result<T, GatewayError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        let decider = self.decider;
        let mut retried = 0;
        loop {
            let answer = decider.timed(self.channel, method, call()).await;
            transcript.push(describe(&answer));
            let error = match &answer {
                Err(error) if table::worth_repeating(error) => error,
                _ => return answer,
            };
            match decider.quick.next(self.session, retried) {
                Verdict::RetryAfter(delay) => {
                    retried += 1;
                    decider.metrics.quick_retry(self.channel, method);
                    transcript.push(quick_retry::transcript_line(
                        retried,
                        decider.quick.attempts(),
                        delay,
                    ));
                    info!(
                        code = %error.code,
                        method = method.as_str(),
                        retry = retried,
                        wait_ms = delay.as_millis() as u64,
                        "transient gateway error; retrying at once"
                    );
                    tokio::time::sleep(delay).await;
                }
                Verdict::Refused(refusal) => {
                    decider.metrics.quick_retry_refused(refusal);
                    transcript.push(format!("no quick retry: {}", refusal.describe()));
                    return answer;
                }
                Verdict::Off => return answer,
            }
        }
    }
}

fn describe_query(answer: &Result<QueryAnswer, GatewayError>) -> String {
    match answer {
        Ok(a) => format!("query: {:?} {}", a.state, a.raw),
        Err(e) => format!("query: {e}"),
    }
}

fn describe_close(answer: &Result<CloseAnswer, GatewayError>) -> String {
    match answer {
        Ok(answer) => format!("close: {answer:?}"),
        Err(e) => format!("close: {e}"),
    }
}
