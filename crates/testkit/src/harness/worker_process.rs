//! Worker processes of the real binary for the tests that kill or stop them (the serial
//! tests and the chaos runs): `order-closer worker` with the test's variables, its
//! standard error in a log file, killed when dropped; and SIGTERM, which the binary
//! answers with a graceful stop.

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// Starts `<bin> worker` with `vars` (nothing else of the test's environment matters: the
/// variables say everything), its standard error written to `log`.
pub fn spawn_worker(bin: &str, vars: &[(String, String)], log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("the worker's log file");
    Command::new(bin)
        .arg("worker")
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker")
}

/// Sends SIGTERM to a running child; whether it was delivered (false once it has exited).
pub fn sigterm(child: &Child) -> bool {
    let Some(pid) = child.id() else {
        return false;
    };
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
