//! Asking the gateway: the deadline protocol's calls ([`Protocol`], pure, says which
//! call comes next), each timed and counted by channel and method, with the transcript
//! of every answer kept for the audit row.

use std::time::Instant;

use tracing::info;

use super::table::{Action, Protocol, Step};
use super::{Decider, Mode};
use order_closer_core::order::Order;
use order_closer_gateway::{
    CloseAnswer, Gateway, GatewayError, GatewayMethod, QueryAnswer, TradeRef,
};

impl Decider {
    /// Runs the deadline protocol ([`Protocol`]: query, then close and query again as
    /// the table says) against the order's gateway and returns the final action with the
    /// transcript of every answer, for the audit row.
    pub(super) async fn consult(
        &self,
        gateway: &dyn Gateway,
        order: &Order,
        mode: Mode,
    ) -> (Action, Option<String>) {
        let trade = TradeRef::of(order);
        let (mut protocol, mut step) = Protocol::start(order, mode == Mode::DryRun);
        let mut transcript = Vec::new();
        let action = loop {
            step = match step {
                Step::Done(action) => break action,
                Step::Query => {
                    let answer = self
                        .timed(&order.channel, GatewayMethod::Query, gateway.query(trade))
                        .await;
                    transcript.push(describe_query(&answer));
                    protocol.after_query(answer.as_ref().map(|a| &a.state))
                }
                Step::Close => {
                    let closed = self
                        .timed(&order.channel, GatewayMethod::Close, gateway.close(trade))
                        .await;
                    transcript.push(match &closed {
                        Ok(answer) => format!("close: {answer:?}"),
                        Err(e) => format!("close: {e}"),
                    });
                    if matches!(closed, Ok(CloseAnswer::NotCloseable { .. })) {
                        info!("gateway refused the close; asking again");
                    }
                    protocol.after_close(closed.as_ref())
                }
            };
        };
        (action, Some(transcript.join("\n")))
    }

    /// Makes one gateway call, timed and counted by channel and method.
    pub(super) async fn timed<T>(
        &self,
        channel: &str,
        method: GatewayMethod,
        call: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
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

    /// Asks the order's gateway about its trade (timed and counted like the worker's
    /// queries); None when no gateway serves the order's channel.
    pub async fn query_gateway(&self, order: &Order) -> Option<Result<QueryAnswer, GatewayError>> {
        let gateway = self.gateways.get(&order.channel)?;
        Some(
            self.timed(
                &order.channel,
                GatewayMethod::Query,
                gateway.query(TradeRef::of(order)),
            )
            .await,
        )
    }
}

fn describe_query(answer: &Result<QueryAnswer, GatewayError>) -> String {
    match answer {
        Ok(a) => format!("query: {:?} {}", a.state, a.raw),
        Err(e) => format!("query: {e}"),
    }
}
