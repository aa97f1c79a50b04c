//! The stepped back-off schedule for transient failures, and when to give up and park.

use std::time::Duration;

/// Back-off steps: attempt `n` (0-based count of failed attempts so far) waits `steps[n]`;
/// once every step is used the message is parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    steps: Vec<Duration>,
}

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStep {
    /// Try again after `delay`, as attempt number `attempt`.
    Retry {
        /// How long to wait.
        delay: Duration,
        /// The attempt number the next try carries.
        attempt: u32,
    },
    /// Every step is used: park the message.
    Exhausted,
}

impl Default for RetryPolicy {
    /// 3 s, 30 s, 60 s, 120 s, 180 s, 300 s: about 11.5 minutes before parking.
    fn default() -> Self {
        Self {
            steps: [3, 30, 60, 120, 180, 300]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }
}

impl RetryPolicy {
    /// A schedule with the given steps (at least one, at most 100, none longer than a day).
    pub fn new(steps: Vec<Duration>) -> Result<Self, String> {
        if steps.is_empty() || steps.len() > 100 {
            return Err("give between 1 and 100 steps".into());
        }
        if steps.iter().any(|s| *s > Duration::from_secs(86_400)) {
            return Err("a step may not be longer than 24h".into());
        }
        Ok(Self { steps })
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Duration] {
        &self.steps
    }

    /// What follows a transient failure of attempt `attempt` (0 for the first try).
    pub fn after_failure(&self, attempt: u32) -> RetryStep {
        match self.steps.get(attempt as usize) {
            Some(delay) => RetryStep::Retry {
                delay: *delay,
                attempt: attempt.saturating_add(1),
            },
            None => RetryStep::Exhausted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_the_steps_then_parks() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.after_failure(0),
            RetryStep::Retry {
                delay: Duration::from_secs(3),
                attempt: 1
            }
        );
        assert_eq!(
            p.after_failure(5),
            RetryStep::Retry {
                delay: Duration::from_secs(300),
                attempt: 6
            }
        );
        assert_eq!(p.after_failure(6), RetryStep::Exhausted);
        assert_eq!(p.after_failure(u32::MAX), RetryStep::Exhausted);
    }

    #[test]
    fn rejects_empty_or_absurd_schedules() {
        assert!(RetryPolicy::new(vec![]).is_err());
        assert!(RetryPolicy::new(vec![Duration::from_secs(100_000)]).is_err());
        assert!(RetryPolicy::new(vec![Duration::from_secs(1)]).is_ok());
    }
}
