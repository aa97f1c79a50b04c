//! Asking the gateway: the deadline protocol's calls ([`Protocol`], pure, says which
//! call comes next), each timed and counted by channel and method, with the transcript
//! of every answer kept for the audit row.

use std::time::Instant;

use tracing::info;

use super::table::{Action, Protocol, Step};
use super::{Decider, Mode};
use order_closer_core::order::Order;
use order_closer_core::trade::Trade;
use order_closer_gateway::{
    CloseAnswer, Gateway, GatewayError, GatewayMethod, QueryAnswer, TradeRef,
};

impl Decider {
    /// Runs the deadline protocol ([`Protocol`]: query, then close and query again as
    /// the table says) for one trade of the order at its gateway and returns the final
    /// action with the transcript of every answer, for the audit row.
    pub(super) async fn consult(
        &self,
        gateway: &dyn Gateway,
        order: &Order,
        stored: &Trade,
        mode: Mode,
    ) -> (Action, String) {
        let trade = TradeRef::of(stored);
        let channel = stored.channel.as_str();
        let (mut protocol, mut step) = Protocol::start(order, mode == Mode::DryRun);
        let mut transcript = Vec::new();
        let action = loop {
            step = match step {
                Step::Done(action) => break action,
                Step::Query => {
                    let answer = self
                        .timed(channel, GatewayMethod::Query, gateway.query(trade))
                        .await;
                    transcript.push(describe_query(&answer));
                    protocol.after_query(answer.as_ref().map(|a| &a.state))
                }
                Step::Close => {
                    let closed = self
                        .timed(channel, GatewayMethod::Close, gateway.close(trade))
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
        let head = format!("{} trade {}:", stored.channel, stored.out_trade_no);
        (action, format!("{head}\n{}", transcript.join("\n")))
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

fn describe_query(answer: &Result<QueryAnswer, GatewayError>) -> String {
    match answer {
        Ok(a) => format!("query: {:?} {}", a.state, a.raw),
        Err(e) => format!("query: {e}"),
    }
}
