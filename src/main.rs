//! The `order-closer` binary: one command per part of the product.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
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
