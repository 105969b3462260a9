//! `sidekey-webhook`: serves the mutating admission webhook over TLS.
//!
//! Configuration comes from flags or their `SIDEKEY_*` variables (`--help` lists them).
//! `SIDEKEY_LOG` sets the log filter (default `info`; an unparsable filter falls back to
//! `info`). Exit codes: 0 after a clean shutdown on SIGTERM or SIGINT, 1 when serving
//! fails or a second signal cuts the drain short, 64 when the configuration is unusable.
//!
//! `sidekey-webhook certs --out DIR` writes a CA, a serving certificate and the
//! manifests installing them instead (see `certs --help`).

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use sidekey_webhook::certs::{self, CertsCli};
use sidekey_webhook::config::{Cli, LogFormat, Settings};
use sidekey_webhook::metrics::Metrics;
use sidekey_webhook::server::{self, AppState, ServeOptions};
use sidekey_webhook::tls::{self, Reloader};
use sidekey_webhook::{logging, vault};
use tracing_subscriber::EnvFilter;

/// sysexits' EX_USAGE, shared with the agent.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "certs") {
        return certs_main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return clap_exit(&error),
    };
    init_tracing(cli.log_format);

    let settings = match cli.validate() {
        Ok(settings) => settings,
        Err(error) => return config_failure(&error),
    };
    // Everything TLS in this process uses ring; the error only means another part
    // already installed a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    let reloader = match Reloader::load(&settings.tls_cert, &settings.tls_key) {
        Ok(reloader) => reloader.with_metrics(Arc::clone(&metrics)),
        Err(error) => return config_failure(&error),
    };
    let checker = match vault::Checker::new(
        &settings.patch.defaults.vault_addr,
        settings.patch.defaults.vault_ca_pem.as_deref(),
    ) {
        Ok(checker) => checker,
        Err(error) => return config_failure(&error),
    };

    match run(settings, reloader, checker, metrics) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "webhook failed");
            ExitCode::FAILURE
        }
    }
}

fn clap_exit(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    if error.use_stderr() {
        ExitCode::from(EXIT_CONFIG)
    } else {
        // --help and --version
        ExitCode::SUCCESS
    }
}

fn certs_main() -> ExitCode {
    let cli = match CertsCli::try_parse_from(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(error) => return clap_exit(&error),
    };
    init_tracing(LogFormat::Text);
    match certs::write(&cli) {
        Ok(written) => {
            tracing::info!(
                out = %cli.out.display(),
                dns_names = ?written.dns_names,
                bundle_cas = written.bundle_cas,
                not_after = written.not_after,
                "wrote secret.yaml and webhook-ca-bundle.yaml; apply both (the caBundle trusts \
                 the new CA and the previous one)"
            );
            ExitCode::SUCCESS
        }
        Err(error) => config_failure(&error),
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
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing::subscriber::set_global_default(logging::subscriber(
        format,
        filter,
        std::io::stderr,
        ansi,
    ));
}

#[tokio::main]
async fn run(
    settings: Settings,
    reloader: Reloader,
    checker: vault::Checker,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
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
        tls_not_after = reloader.not_after(),
        "serving the admission webhook"
    );

    let watcher = tokio::spawn(reloader.watch(tls::DEFAULT_POLL_INTERVAL));
    // Off the admission path: its own task, its own timeouts.
    let health = (!settings.vault_check_interval.is_zero())
        .then(|| tokio::spawn(checker.run(settings.vault_check_interval, Arc::clone(&metrics))));
    let app = server::router(AppState {
        settings: Arc::new(settings.patch),
        metrics,
    });
    server::serve(
        listener,
        tls,
        app,
        shutdown_signal(settings.shutdown_delay),
        ServeOptions::default(),
    )
    .await;
    watcher.abort();
    if let Some(health) = health {
        health.abort();
    }
    Ok(())
}

/// Completes `delay` after the first SIGTERM (what the kubelet sends) or SIGINT. A
/// second signal after that exits at once with status 1, for a drain that hangs.
async fn shutdown_signal(delay: Duration) {
    use tokio::signal::unix::{SignalKind, signal};

    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the webhook");
            None
        }
    };
    let first = wait_for_signal(term.as_mut()).await;
    tracing::info!(signal = first, "shutdown requested");
    tokio::spawn(async move {
        let second = wait_for_signal(term.as_mut()).await;
        tracing::warn!(
            signal = second,
            "second signal: exiting without finishing the drain"
        );
        std::process::exit(1);
    });
    if !delay.is_zero() {
        tracing::info!(
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "still serving while the API server learns this replica is going away"
        );
        tokio::time::sleep(delay).await;
    }
}

/// The next SIGTERM (when it can be listened for) or SIGINT; returns its name.
async fn wait_for_signal(term: Option<&mut tokio::signal::unix::Signal>) -> &'static str {
    let sigterm = async {
        match term {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = sigterm => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
