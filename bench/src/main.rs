//! `sidekey-bench`: Sidekey measured against the incumbent on this machine.
//!
//! `make bench` runs `sidekey-bench all` from `target/release`; `make bench-smoke` the
//! same with tiny sizes. Every figure comes with the incumbent's from the same run, as
//! a ratio, because the machines are shared and noisy. See docs/benchmarks.md.

mod compare;
mod env;
mod fleet;
mod report;
mod soak;
mod sys;
mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sidekey-bench", about)]
struct Cli {
    /// Tiny sizes (1 secret, 10-second windows, 5 agents): checks the harness, not
    /// the figures.
    #[arg(long, global = true)]
    smoke: bool,
    /// Also write the report (Markdown) to this file.
    #[arg(long, global = true, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Everything below, in this order.
    All,
    /// Sidekey's agent and `bao agent` side by side.
    Agents,
    /// The webhook under TLS keep-alive load (wrk) against an empty-200 baseline.
    Webhook,
    /// Many Sidekey agents, one OpenBao.
    Fleet {
        /// Number of agents (default 200; 5 with --smoke).
        #[arg(long)]
        agents: Option<usize>,
    },
    /// One Sidekey sidecar for minutes: OpenBao requests by class, and leftovers.
    Soak {
        /// KV v2 secrets (plus one PostgreSQL credential).
        #[arg(long, default_value_t = 20)]
        secrets: usize,
        /// How long the agent runs before SIGTERM.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Refresh interval of the static secrets (default: the agent's, 5m).
        #[arg(long, value_parser = sidekey_agent::contract::duration::parse)]
        refresh: Option<Duration>,
    },
    /// (internal) The baseline server of the webhook load test.
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let What::BaselineServer { listen, cert, key } = &cli.what {
        return webhook::baseline_server(*listen, cert, key);
    }
    sidekey_tests::rt::install_crypto();
    let bins = bin_dir()?;
    if let What::Soak {
        secrets,
        minutes,
        refresh,
    } = &cli.what
    {
        let soak = soak::Soak {
            secrets: *secrets,
            minutes: *minutes,
            refresh: refresh.unwrap_or(Duration::from_secs(
                sidekey_agent::contract::config::DEFAULT_REFRESH_SECS,
            )),
        };
        let env = env::Env::start(soak.secrets)?;
        eprintln!("bench: one Sidekey sidecar, {soak:?} ...");
        let md = soak::run(&env, &soak, &bins.join("sidekey-agent"))?;
        println!("{md}");
        if let Some(out) = &cli.out {
            std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        }
        return Ok(());
    }
    let mut report = report::Report::new(cli.smoke);
    let (agents, web, fleet_n) = match &cli.what {
        What::All => (true, true, Some(None)),
        What::Agents => (true, false, None),
        What::Webhook => (false, true, None),
        What::Fleet { agents } => (false, false, Some(*agents)),
        What::BaselineServer { .. } | What::Soak { .. } => unreachable!("handled above"),
    };
    if web {
        report.webhook = Some(webhook::run(&bins, cli.smoke)?);
        report.print_webhook();
    }
    if agents {
        let env = env::Env::start(20)?;
        let sizes: &[usize] = if cli.smoke { &[1] } else { &[1, 20] };
        for &secrets in sizes {
            let plan = compare::Plan {
                secrets,
                refresh: Duration::from_secs(5),
                window: Duration::from_secs(if cli.smoke { 10 } else { 60 }),
                writes: if cli.smoke { 1 } else { 6 },
                starts: if cli.smoke { 2 } else { 5 },
            };
            for agent in [compare::Agent::Sidekey, compare::Agent::BaoAgent] {
                eprintln!(
                    "bench: {} with {secrets} KV secret(s) + 1 database credential ...",
                    agent.label()
                );
                let m = compare::run(&env, agent, &plan, &bins.join("sidekey-agent"))?;
                report.agents.push(m);
            }
        }
        report.refresh = Duration::from_secs(5);
        report.print_agents();
    }
    if let Some(n) = fleet_n {
        let n = n.unwrap_or(if cli.smoke { 5 } else { 200 });
        report.fleet = Some(fleet::run(&bins, n, cli.smoke)?);
        report.print_fleet();
    }
    if let Some(out) = &cli.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, report.markdown())
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("bench: report written to {}", out.display());
    }
    Ok(())
}

/// Directory of the binaries measured: the one this binary runs from (`make bench`
/// builds all three in release into `target/release`).
fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating sidekey-bench")?;
    let dir = exe
        .parent()
        .context("sidekey-bench has no directory")?
        .to_path_buf();
    for bin in ["sidekey-agent", "sidekey-webhook"] {
        anyhow::ensure!(
            dir.join(bin).is_file(),
            "{} is missing: build it next to sidekey-bench (`cargo build --release -p sidekey-agent -p sidekey-webhook -p sidekey-bench`)",
            dir.join(bin).display()
        );
    }
    if !exe.components().any(|c| c.as_os_str() == "release") {
        eprintln!(
            "bench: warning: {} is not a release build; figures are not representative",
            dir.display()
        );
    }
    Ok(dir)
}
