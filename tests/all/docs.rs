//! The documentation stays in step with the code: every environment variable the code
//! reads is in the configuration table of `docs/operations.md` (and every variable there is
//! read), every `[env: ...]` of every command's `--help` is documented, and the README's
//! command table lists exactly the binary's commands.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Names that are environment variables of ours (or that we read), as opposed to other
/// upper-case literals (gateway states, units).
fn is_variable(name: &str) -> bool {
    const PREFIXES: [&str; 3] = ["ORDER_CLOSER_", "SIM_", "DATABASE_URL"];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || gateway_prefixes()
            .iter()
            .any(|p| name.starts_with(p.as_str()))
        || name.starts_with("AMQP_URL")
        || name == "RUST_LOG"
        || name == "HOSTNAME"
}

/// The prefixes of every gateway's variables (`ALIPAY_`, `WECHAT_`), from the variables
/// each gateway declares.
fn gateway_prefixes() -> Vec<String> {
    order_closer::gateway::ALL
        .iter()
        .map(|p| format!("{}_", p.env_prefix))
        .collect()
}

#[test]
fn every_gateway_declares_the_variables_it_reads() {
    let code = read_by_code();
    let declared: BTreeSet<String> = order_closer::gateway::ALL
        .iter()
        .flat_map(|p| p.variables.iter().map(|v| (*v).to_owned()))
        .collect();
    let prefixes = gateway_prefixes();
    let undeclared: Vec<_> = code
        .iter()
        .filter(|v| prefixes.iter().any(|p| v.starts_with(p.as_str())))
        .filter(|v| !declared.contains(*v))
        .collect();
    assert!(
        undeclared.is_empty(),
        "gateway variables read but not in their gateway's VARIABLES: {undeclared:?}"
    );
}

/// `"NAME"` string literals in Rust source that name a variable.
fn literals(text: &str) -> BTreeSet<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() > 3
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .filter(|s| is_variable(s))
        .map(str::to_owned)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Variables the library and the binary read (test modules included: they read the same),
/// in the root package and in every crate of the workspace.
fn read_by_code() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(root.join("src").as_path(), &mut files);
    rust_files(root.join("crates").as_path(), &mut files);
    files
        .iter()
        .flat_map(|f| literals(&std::fs::read_to_string(f).expect("source file")))
        .collect()
}

/// The text of one `## ` section of a markdown file.
fn section(file: &str, heading: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("{file} has no section {heading:?}"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// Backticked names in the first column of the section's tables.
fn table_variables(section: &str) -> BTreeSet<String> {
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|line| line.split(" |").next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned))
        .filter(|name| is_variable(name))
        .collect()
}

/// Every backticked variable anywhere in the section.
fn mentioned_variables(section: &str) -> BTreeSet<String> {
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| literals(&format!("\"{s}\"")).contains(*s))
        .map(str::to_owned)
        .collect()
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_order-closer"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run the binary");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The subcommands listed under `Commands:` of a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_variable_the_code_reads_is_documented_and_no_other() {
    let code = read_by_code();
    let config = section("docs/operations.md", "Configuration");
    let table = table_variables(&config);
    let mentioned = mentioned_variables(&config);
    let undocumented: Vec<_> = code.difference(&mentioned).collect();
    assert!(
        undocumented.is_empty(),
        "read by the code but not in docs/operations.md's configuration: {undocumented:?}"
    );
    let stale: Vec<_> = table.difference(&code).collect();
    assert!(
        stale.is_empty(),
        "in docs/operations.md's configuration table but never read: {stale:?}"
    );
    // The README's essentials are a subset of the real variables.
    let readme = section("README.md", "Configuration essentials");
    let unknown: Vec<_> = table_variables(&readme)
        .into_iter()
        .filter(|v| !code.contains(v))
        .collect();
    assert!(
        unknown.is_empty(),
        "README names unknown variables: {unknown:?}"
    );
}

#[test]
fn every_env_of_every_command_is_documented() {
    let config = section("docs/operations.md", "Configuration");
    let mentioned = mentioned_variables(&config);
    let top = help(&[]);
    let mut helps = vec![top.clone()];
    for command in subcommands(&top) {
        let text = help(&[&command]);
        for sub in subcommands(&text) {
            helps.push(help(&[&command, &sub]));
        }
        helps.push(text);
    }
    let mut seen = 0;
    for text in &helps {
        for hint in text.split("[env: ").skip(1) {
            let name: String = hint
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            seen += 1;
            assert!(
                mentioned.contains(&name),
                "--help names {name}, which docs/operations.md does not"
            );
        }
    }
    assert!(seen > 0, "no [env: ...] hint found in any --help");
}

#[test]
fn the_readme_lists_exactly_the_commands() {
    let commands: BTreeSet<String> = subcommands(&help(&[])).into_iter().collect();
    let table = section("README.md", "Commands");
    let listed: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `order-closer "))
        .filter_map(|l| l.split([' ', '`']).next())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        listed, commands,
        "the README's command table and `order-closer --help` differ"
    );
}

#[test]
fn the_readme_stays_short_and_its_links_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    assert!(
        readme.lines().count() <= 250,
        "README.md has {} lines; move detail to docs/",
        readme.lines().count()
    );
    for (file, text) in std::iter::once(("README.md".to_owned(), readme)).chain(
        std::fs::read_dir(root.join("docs"))
            .expect("docs/")
            .map(|e| e.expect("entry").path())
            .map(|p| {
                (
                    format!("docs/{}", p.file_name().unwrap().to_string_lossy()),
                    std::fs::read_to_string(&p).expect("doc"),
                )
            }),
    ) {
        let base = root.join(&file);
        let dir = base.parent().expect("a directory");
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap_or("");
            let path = target.split('#').next().unwrap_or("");
            if path.is_empty() || path.starts_with("http") {
                continue;
            }
            assert!(
                dir.join(path).exists(),
                "{file} links to {target}, which does not exist"
            );
        }
    }
}

/// Every file or folder of the repository a document names (in backticks or as a link,
/// starting at a top-level folder: `crates/engine/src/worker/handler.rs`,
/// `docs/operations.md`) exists, so a move or a rename cannot leave a stale path behind.
#[test]
fn every_path_a_document_names_exists() {
    const ROOTS: [&str; 9] = [
        "crates/",
        "src/",
        "tests/",
        "docs/",
        "scripts/",
        "docker/",
        "migrations/",
        "examples/",
        "bench/",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut missing = Vec::new();
    for doc in &documents {
        let text = std::fs::read_to_string(doc).unwrap();
        let base = doc.parent().unwrap();
        // Backticked spans and link targets: `a/b.rs`, (a/b.md), (../a/b.md#anchor).
        let spans = text
            .split('`')
            .skip(1)
            .step_by(2)
            .chain(text.split("](").skip(1).filter_map(|s| s.split(')').next()));
        for span in spans {
            let path = span
                .split(['#', ' ', ','])
                .next()
                .unwrap_or("")
                .trim_end_matches([':', '.']);
            let path = path.split(':').next().unwrap_or("");
            let (relative_to, path) = match path.strip_prefix("../") {
                Some(rest) => (base.parent().unwrap_or(root), rest),
                None if doc.starts_with(root.join("docs")) && !path.contains('/') => (base, path),
                None => (root, path),
            };
            let checked = ROOTS.iter().any(|r| path.starts_with(r))
                || (relative_to == base && path.ends_with(".md"));
            if !checked || path.contains(['*', '<', '{', '$']) {
                continue;
            }
            if !relative_to.join(path).exists() {
                missing.push(format!(
                    "{}: {path}",
                    doc.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "documents name paths that do not exist:\n{}",
        missing.join("\n")
    );
}

/// The Dockerfile's default image is the deployable binary: built without the tooling
/// (`--no-default-features --features cli`), as its last stage.
#[test]
fn the_dockerfile_builds_the_deployable_binary_by_default() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/Dockerfile"))
            .unwrap();
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    let last = stages.last().expect("a stage");
    assert!(last.starts_with("runtime AS deploy"), "{last}");
    assert!(last.contains("COPY --from=builder "), "{last}");
    let builder = stages
        .iter()
        .find(|s| s.starts_with("source AS builder"))
        .expect("the builder stage");
    assert!(
        builder.contains(
            "cargo build --release --locked --bin order-closer --no-default-features --features cli"
        ),
        "{builder}"
    );
}
