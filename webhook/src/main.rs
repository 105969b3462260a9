//! `sidekey-webhook`: serves the mutating admission webhook over TLS.
//!
//! Configuration comes from flags or their `SIDEKEY_*` variables (`--help` lists them).
//! `SIDEKEY_LOG` sets the log filter (default `info`; an unparsable filter falls back to
//! `info`). Exit codes: 0 after a clean shutdown on SIGTERM or SIGINT, 1 when serving
//! fails or a second signal cuts the drain short, 64 when the configuration is unusable.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use sidekey_webhook::config::{Cli, LogFormat, Settings};
use sidekey_webhook::server::{self, AppState, ServeOptions};
use sidekey_webhook::tls::{self, Reloader};
use tracing_subscriber::EnvFilter;

/// sysexits' EX_USAGE, shared with the agent.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                // --help and --version
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(cli.log_format);

    let settings = match cli.validate() {
        Ok(settings) => settings,
        Err(error) => return config_failure(&error),
    };
    // Everything TLS in this process uses ring; the error only means another part
    // already installed a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reloader = match Reloader::load(&settings.tls_cert, &settings.tls_key) {
        Ok(reloader) => reloader,
        Err(error) => return config_failure(&error),
    };

    match run(settings, reloader) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "webhook failed");
            ExitCode::FAILURE
        }
    }
}

fn config_failure(error: &dyn std::error::Error) -> ExitCode {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %message, "unusable configuration");
    ExitCode::from(EXIT_CONFIG)
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SIDEKEY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn run(settings: Settings, reloader: Reloader) -> anyhow::Result<()> {
    let tls = reloader
        .server_config()
        .context("building the tls configuration")?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    tracing::info!(
        listen = %settings.listen,
        vault_addr = %settings.patch.defaults.vault_addr,
        agent_image = %settings.patch.agent_image,
        sidecar_mode = ?settings.patch.sidecar_mode,
        excluded_namespaces = ?settings.patch.excluded_namespaces,
        "serving the admission webhook"
    );

    let watcher = tokio::spawn(reloader.watch(tls::DEFAULT_POLL_INTERVAL));
    let app = server::router(AppState {
        settings: Arc::new(settings.patch),
    });
    server::serve(
        listener,
        tls,
        app,
        shutdown_signal(),
        ServeOptions::default(),
    )
    .await;
    watcher.abort();
    Ok(())
}

/// Completes on the first SIGTERM (what the kubelet sends) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};

    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the webhook");
            None
        }
    };
    let sigterm = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = sigterm => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
}
