//! `order-closer keygen`: an RSA-2048 application key pair for development and the simulator.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use order_closer::gateway::rsa::RsaPrivateKey;

/// Flags of `keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write `app_private.pem` (PKCS#8) and `app_public.pem` (SPKI) into.
    #[arg(long)]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// Writes the key pair.
pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let private_path = args.out.join("app_private.pem");
    let public_path = args.out.join("app_public.pem");
    if !args.force && (private_path.exists() || public_path.exists()) {
        anyhow::bail!(
            "{} already holds a key pair; pass --force to replace it",
            args.out.display()
        );
    }
    let key = RsaPrivateKey::generate().context("generating an RSA-2048 key")?;
    write_private(&private_path, &key.to_pkcs8_pem())?;
    std::fs::write(&public_path, key.public_key().to_spki_pem())
        .with_context(|| format!("writing {}", public_path.display()))?;
    println!(
        "wrote {} and {}",
        private_path.display(),
        public_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
