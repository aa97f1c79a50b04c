//! The `order-closer` binary: one command per part of the product.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    bounded_allocator();
    let args = cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            // The message may quote an argument (a path that was a pasted key).
            eprintln!("error: {}", cli::scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Makes glibc return every large buffer to the system when it is freed. A message body
/// can be tens of MB (up to the broker's limit), and glibc's default raises its mmap
/// threshold after the first such buffer is freed, so later ones come from per-thread
/// heaps that keep the memory: the peak then depends on which runtime thread happened
/// to read which message. With a fixed threshold of 1 MiB a process holds what it uses.
fn bounded_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 1 << 20;
        // SAFETY: mallopt only sets an allocator parameter; it is called before any
        // other thread exists. A refusal (0) leaves glibc's default, which is correct
        // too, only less frugal.
        let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
    }
}
