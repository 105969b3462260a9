//! `sidekey-agent <init|sidecar>`: see the crate docs of `sidekey_agent`.
//!
//! Main only wires things up: tracing, configuration (exit 64 when unusable), the rustls
//! provider, a current-thread runtime (the agent does one thing at a time, and one
//! thread keeps its memory small), the run, and the exit code.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use sidekey_agent::{
    contract::{config, config::AgentConfig, duration, layout},
    run,
};
use tracing::{error, info_span};
use tracing_subscriber::EnvFilter;

/// Log filter (tracing `EnvFilter` syntax). Unset or empty: `info`.
const LOG_ENV: &str = "SIDEKEY_LOG";
/// `text` or `json`. Unset or empty: `text`.
const LOG_FORMAT_ENV: &str = "SIDEKEY_LOG_FORMAT";
const POD_NAME_ENV: &str = "SIDEKEY_POD_NAME";
const POD_NAMESPACE_ENV: &str = "SIDEKEY_POD_NAMESPACE";

/// Exit code for an unusable configuration (BSD `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "sidekey-agent",
    version,
    about = "Renders Vault/OpenBao secrets into files"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Log in, render every secret once, exit (init container).
    Init,
    /// Render, keep secrets fresh, revoke the token on SIGTERM (sidecar).
    Sidecar,
    /// Exit 0 once every secret has been rendered (`<state_dir>/ready` exists), else 1:
    /// the native sidecar's startup probe. No network.
    Probe,
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    if let Err(message) = init_tracing() {
        eprintln!("sidekey-agent: {message}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let pod_namespace = std::env::var(POD_NAMESPACE_ENV).unwrap_or_default();
    let pod_name = std::env::var(POD_NAME_ENV).unwrap_or_default();
    let span = info_span!("agent", pod.namespace = %pod_namespace, pod.name = %pod_name);
    let _entered = span.enter();

    let (config, deadline) = match read_config(&cli.mode) {
        Ok(c) => c,
        Err(message) => {
            error!("{message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    if matches!(cli.mode, Mode::Probe) {
        // Runs every second until it passes: quiet, and only a file check.
        let ready = layout::ready_path(&config.state_dir);
        if std::path::Path::new(&ready).exists() {
            return ExitCode::SUCCESS;
        }
        eprintln!("sidekey-agent: not ready yet: {ready} does not exist");
        return ExitCode::from(1);
    }

    // reqwest is built without a default provider; without this it panics on first use.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };

    let result = runtime.block_on(async {
        match cli.mode {
            // Answered above, before the runtime starts.
            Mode::Probe => Ok(()),
            Mode::Init => run::init(config, deadline).await,
            Mode::Sidecar => match run::shutdown_signal() {
                Ok(shutdown) => run::sidecar(config, shutdown).await,
                Err(e) => {
                    error!(error = %e, "cannot install signal handlers");
                    return Err(None);
                }
            },
        }
        .map_err(Some)
    });

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(None) => ExitCode::from(1),
        Err(Some(e)) => {
            error!(error = %run::error_chain(&e), "failed");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn init_tracing() -> Result<(), String> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(v.trim())
            .map_err(|e| format!("{LOG_ENV} is not a valid log filter: {e}"))?,
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var(LOG_FORMAT_ENV).as_deref().map(str::trim) {
        Err(_) | Ok("") | Ok("text") => builder.with_ansi(false).init(),
        Ok("json") => builder.json().init(),
        Ok(other) => {
            return Err(format!(
                "{LOG_FORMAT_ENV} is {other:?}; it must be \"text\" or \"json\""
            ));
        }
    }
    Ok(())
}

/// The agent configuration and the init deadline, or a message naming the variable and
/// the problem (never the value: the CA bundle is long and not useful in a log line).
fn read_config(mode: &Mode) -> Result<(AgentConfig, Duration), String> {
    let text = match std::env::var(config::CONFIG_ENV) {
        Ok(t) if !t.trim().is_empty() => t,
        Ok(_) => return Err(format!("{} is empty", config::CONFIG_ENV)),
        Err(std::env::VarError::NotPresent) => {
            return Err(format!(
                "{} is not set; it must hold the agent configuration JSON that the Sidekey webhook injects",
                config::CONFIG_ENV
            ));
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("{} is not valid UTF-8", config::CONFIG_ENV));
        }
    };
    let config = AgentConfig::from_json(&text).map_err(|e| e.to_string())?;

    let deadline = match (mode, std::env::var(run::INIT_DEADLINE_ENV)) {
        (Mode::Init, Ok(v)) if !v.trim().is_empty() => duration::parse(&v)
            .map_err(|e| format!("{} is not usable: {e}", run::INIT_DEADLINE_ENV))?,
        _ => run::DEFAULT_INIT_DEADLINE,
    };
    Ok((config, deadline))
}
