//! How a process shares its gateways' quotas: the variables (`ORDER_CLOSER_GATEWAY_QUOTA`,
//! `ORDER_CLOSER_GATEWAY_PROCESSES`), read where they are used as each gateway reads its
//! own, and the plan a process builds its quotas by ([`QuotaPlan`]: the sharing, the
//! database, and the process's [`Priority`]).

use std::num::NonZeroU32;
use std::sync::Arc;

use order_closer_core::config::{ConfigError, Vars};
use order_closer_core::db::DbPool;

use super::bucket::{Priority, Rate};
use super::{Limiter, Quota, SharedQuota};

/// The variable that says how a quota is shared.
pub const SHARING_VAR: &str = "ORDER_CLOSER_GATEWAY_QUOTA";
/// The variable that says how many processes draw on each quota.
pub const PROCESSES_VAR: &str = "ORDER_CLOSER_GATEWAY_PROCESSES";
/// Most processes `ORDER_CLOSER_GATEWAY_PROCESSES` may name.
const MAX_PROCESSES: usize = 1000;

/// How a merchant account's quota is shared (`ORDER_CLOSER_GATEWAY_QUOTA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// `shared` (the default): one quota per account, booked through Postgres by every
    /// process.
    Shared,
    /// `local`: each process keeps its own, at the quota divided by
    /// `ORDER_CLOSER_GATEWAY_PROCESSES` (a fixed split; no database needed).
    Local,
}

/// The quota variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// How the quota is shared.
    pub sharing: Sharing,
    /// How many processes draw on each account's quota (worker replicas, `notify`,
    /// `reconcile`): each takes this fraction when it cannot share (`local`, or while the
    /// database cannot be reached). 1 unless set, from 1 to 1000.
    pub processes: NonZeroU32,
}

impl QuotaSettings {
    /// Reads the variables; an invalid value is an error naming it.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let sharing = vars.choice(
            SHARING_VAR,
            Sharing::Shared,
            &[("shared", Sharing::Shared), ("local", Sharing::Local)],
        )?;
        let processes = vars.number(PROCESSES_VAR, 1, 1, MAX_PROCESSES)?;
        Ok(Self {
            sharing,
            processes: NonZeroU32::new(processes as u32).unwrap_or(NonZeroU32::MIN),
        })
    }
}

/// How a process builds the quota of each account it talks to.
#[derive(Clone)]
pub struct QuotaPlan {
    /// Where shared quotas are booked; `None`: each quota is this process's own.
    pool: Option<DbPool>,
    priority: Priority,
    processes: NonZeroU32,
}

impl std::fmt::Debug for QuotaPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaPlan")
            .field("shared", &self.pool.is_some())
            .field("priority", &self.priority)
            .field("processes", &self.processes)
            .finish()
    }
}

impl QuotaPlan {
    /// Quotas of this process alone, each at the whole rate: a process with no database
    /// (and the tests' gateways).
    pub fn local(priority: Priority) -> Self {
        Self {
            pool: None,
            priority,
            processes: NonZeroU32::MIN,
        }
    }

    /// As `settings` say: shared through `pool` (a small pool of the quotas' own, so that
    /// bookings never wait behind the process's other statements), or local at the
    /// process's fraction of the rate.
    pub fn from_settings(
        settings: QuotaSettings,
        pool: Option<DbPool>,
        priority: Priority,
    ) -> Self {
        Self {
            pool: pool.filter(|_| settings.sharing == Sharing::Shared),
            priority,
            processes: settings.processes,
        }
    }

    /// The priority of this process's requests.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Whether the quotas are shared through the database.
    pub fn is_shared(&self) -> bool {
        self.pool.is_some()
    }

    /// The quota of one merchant account (`<channel>:<account>`) at `rate`.
    pub fn quota(&self, account: &str, rate: Rate) -> Arc<dyn Quota> {
        match &self.pool {
            Some(pool) => Arc::new(SharedQuota::new(
                pool.clone(),
                account.to_owned(),
                rate,
                self.priority,
                self.processes,
            )),
            None => Arc::new(Limiter::with(rate.divided(self.processes), self.priority)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&'static str, &'static str)]) -> Result<QuotaSettings, ConfigError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        QuotaSettings::from_vars(&Vars::from_fn(move |name| {
            map.get(name).map(|v| (*v).to_owned())
        }))
    }

    #[test]
    fn shared_by_default_and_bad_values_name_their_variable() {
        let defaults = read(&[]).unwrap();
        assert_eq!(defaults.sharing, Sharing::Shared);
        assert_eq!(defaults.processes.get(), 1);
        let set = read(&[(SHARING_VAR, "local"), (PROCESSES_VAR, "3")]).unwrap();
        assert_eq!((set.sharing, set.processes.get()), (Sharing::Local, 3));
        for (var, bad) in [
            (SHARING_VAR, "global"),
            (SHARING_VAR, "Shared "),
            (PROCESSES_VAR, "0"),
            (PROCESSES_VAR, "1001"),
            (PROCESSES_VAR, "three"),
        ] {
            let err = read(&[(var, bad)]).unwrap_err().to_string();
            assert!(err.contains(var), "{var}={bad}: {err}");
        }
        let err = read(&[(SHARING_VAR, "global")]).unwrap_err().to_string();
        assert!(err.contains("shared or local"), "{err}");
    }

    #[tokio::test]
    async fn the_plan_shares_only_when_shared_and_given_a_database() {
        let settings = read(&[(SHARING_VAR, "local"), (PROCESSES_VAR, "4")]).unwrap();
        let pool = order_closer_core::db::pool("postgres://u@127.0.0.1:9/x", 1).unwrap();
        let plan = QuotaPlan::from_settings(settings, Some(pool), Priority::Bulk);
        assert!(!plan.is_shared());
        assert_eq!(plan.priority(), Priority::Bulk);
        let shared = QuotaPlan::from_settings(
            read(&[]).unwrap(),
            Some(order_closer_core::db::pool("postgres://u@127.0.0.1:9/x", 1).unwrap()),
            Priority::Deadline,
        );
        assert!(shared.is_shared());
        assert!(
            !QuotaPlan::from_settings(read(&[]).unwrap(), None, Priority::Deadline).is_shared()
        );
    }
}
