//! The figures as Markdown tables: printed as each part finishes, and the whole report
//! at the end (`--out`), ready for docs/benchmarks.md.

use std::fmt::Write as _;
use std::time::Duration;

use crate::compare::{Agent, Measured};
use crate::fleet::FleetResult;
use crate::sys::mb;
use crate::webhook::WebhookResult;

pub struct Report {
    pub smoke: bool,
    pub refresh: Duration,
    pub agents: Vec<Measured>,
    pub webhook: Option<WebhookResult>,
    pub fleet: Option<FleetResult>,
}

impl Report {
    pub fn new(smoke: bool) -> Report {
        Report {
            smoke,
            refresh: Duration::from_secs(5),
            agents: Vec::new(),
            webhook: None,
            fleet: None,
        }
    }

    pub fn print_agents(&self) {
        println!("{}", self.agents_md());
    }
    pub fn print_webhook(&self) {
        println!("{}", self.webhook_md());
    }
    pub fn print_fleet(&self) {
        println!("{}", self.fleet_md());
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# sidekey-bench report{}\n\nMachine: {}\n\n",
            if self.smoke {
                " (smoke sizes: not figures)"
            } else {
                ""
            },
            machine_note()
        );
        for part in [self.webhook_md(), self.agents_md(), self.fleet_md()] {
            if !part.is_empty() {
                out.push_str(&part);
                out.push('\n');
            }
        }
        out
    }

    fn agents_md(&self) -> String {
        let mut out = String::new();
        let mut sizes: Vec<usize> = self.agents.iter().map(|m| m.secrets).collect();
        sizes.dedup();
        for n in sizes {
            let find = |a: Agent| self.agents.iter().find(|m| m.secrets == n && m.agent == a);
            let (Some(s), Some(b)) = (find(Agent::Sidekey), find(Agent::BaoAgent)) else {
                continue;
            };
            let _ = writeln!(
                out,
                "### Agent: {n} KV v2 secret(s) + 1 PostgreSQL credential, refresh {} s, window {:.0} s\n",
                self.refresh.as_secs(),
                s.window_secs
            );
            out.push_str("| measure | Sidekey | bao agent | ratio S/b | target |\n| --- | ---: | ---: | ---: | --- |\n");
            let mut row = |name: &str, sv: String, bv: String, ratio: Option<f64>, target: &str| {
                let r = ratio.map_or("-".to_owned(), |r| format!("{r:.3}"));
                let _ = writeln!(out, "| {name} | {sv} | {bv} | {r} | {target} |");
            };
            let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
            let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
            row(
                &format!(
                    "start → all {} files rendered (median of {} cold starts)",
                    n + 1,
                    s.starts.len()
                ),
                secs(s.start_to_rendered),
                secs(b.start_to_rendered),
                ratio(
                    s.start_to_rendered.as_secs_f64(),
                    b.start_to_rendered.as_secs_f64(),
                ),
                "≤ 0.333",
            );
            row(
                "peak RSS (VmHWM)",
                format!("{:.1} MB", mb(s.peak_rss)),
                format!("{:.1} MB", mb(b.peak_rss)),
                ratio(s.peak_rss as f64, b.peak_rss as f64),
                "≤ 0.125",
            );
            row(
                "steady RSS (median VmRSS in window)",
                format!("{:.1} MB", mb(s.steady_rss)),
                format!("{:.1} MB", mb(b.steady_rss)),
                ratio(s.steady_rss as f64, b.steady_rss as f64),
                "≤ 0.125",
            );
            row(
                "agent CPU in window (utime+stime, 10 ms ticks)",
                format!("{:.2} s", s.cpu_secs),
                format!("{:.2} s", b.cpu_secs),
                ratio(s.cpu_secs, b.cpu_secs),
                "≤ 0.2",
            );
            let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} s"));
            row(
                "OpenBao CPU in the same window",
                opt(s.bao_cpu_secs),
                opt(b.bao_cpu_secs),
                s.bao_cpu_secs
                    .zip(b.bao_cpu_secs)
                    .and_then(|(x, y)| ratio(x, y)),
                "",
            );
            row(
                "requests at start-up (login to rendered)",
                s.startup_requests.to_string(),
                b.startup_requests.to_string(),
                ratio(s.startup_requests as f64, b.startup_requests as f64),
                "≤ 1",
            );
            row(
                "requests per minute, idle",
                format!("{:.1}", s.requests_per_min()),
                format!("{:.1}", b.requests_per_min()),
                ratio(s.requests_per_min(), b.requests_per_min()),
                "≤ 1",
            );
            row(
                &format!("requests per {} s refresh", self.refresh.as_secs()),
                format!("{:.2}", s.requests_per_refresh(self.refresh)),
                format!("{:.2}", b.requests_per_refresh(self.refresh)),
                ratio(
                    s.requests_per_refresh(self.refresh),
                    b.requests_per_refresh(self.refresh),
                ),
                "≤ 1",
            );
            row(
                "database credentials issued (whole run)",
                s.db_issues.to_string(),
                b.db_issues.to_string(),
                None,
                "1 each",
            );
            row(
                "lease renewals (whole run)",
                s.lease_renewals.to_string(),
                b.lease_renewals.to_string(),
                None,
                "",
            );
            let lat = |m: &Measured| {
                let mut l = m.latencies.clone();
                l.sort_by(f64::total_cmp);
                if l.is_empty() {
                    "-".to_owned()
                } else {
                    format!(
                        "{:.2} / {:.2} / {:.2} s",
                        l[0],
                        l[l.len() / 2],
                        l[l.len() - 1]
                    )
                }
            };
            row(
                &format!(
                    "KV update → file changed, min / median / max ({} writes)",
                    s.latencies.len()
                ),
                lat(s),
                lat(b),
                None,
                &format!("≤ {} s", self.refresh.as_secs()),
            );
            let exit = |m: &Measured| {
                m.exit_after_term
                    .map_or("did not exit in 15 s".to_owned(), |d| {
                        format!("{:.3} s", d.as_secs_f64())
                    })
            };
            row("exit after SIGTERM", exit(s), exit(b), None, "");
            row(
                "requests during shutdown",
                s.shutdown_requests.to_string(),
                b.shutdown_requests.to_string(),
                None,
                "",
            );
            let left = |m: &Measured| {
                format!(
                    "{} / {} / {}",
                    m.left_tokens, m.left_leases, m.left_pg_roles
                )
            };
            row(
                "left after SIGTERM: valid tokens / leases / PostgreSQL roles",
                left(s),
                left(b),
                None,
                "0 / 0 / 0",
            );
            out.push('\n');
            for m in [s, b] {
                let _ = writeln!(
                    out,
                    "{} start-up requests (ms after spawn, audit log clock): {}\n",
                    m.agent.label(),
                    m.startup_detail.join(", ")
                );
            }
        }
        out
    }

    fn webhook_md(&self) -> String {
        let Some(w) = &self.webhook else {
            return String::new();
        };
        let mut out = format!(
            "### Webhook: wrk, {} thread, {} s per run, TLS keep-alive (HTTP/1.1), {} byte AdmissionReview\n\n",
            w.threads, w.duration_secs, w.body_bytes
        );
        out.push_str(
            "| connections | server | requests/s | p50 | p99 | errors |\n| ---: | --- | ---: | ---: | ---: | ---: |\n",
        );
        for p in &w.pairs {
            for r in [&p.baseline, &p.webhook] {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.3} ms | {:.3} ms | {} |",
                    p.connections, r.label, r.rps, r.p50_ms, r.p99_ms, r.errors
                );
            }
            let _ = writeln!(
                out,
                "| {} | ratio webhook / baseline | {:.3} | {:.2} | {:.2} | |",
                p.connections,
                p.webhook.rps / p.baseline.rps,
                p.webhook.p50_ms / p.baseline.p50_ms,
                p.webhook.p99_ms / p.baseline.p99_ms
            );
        }
        let best = w.pairs.iter().map(|p| p.webhook.rps).fold(0.0, f64::max);
        let p99 = w.pairs.first().map_or(f64::MAX, |p| p.webhook.p99_ms);
        let _ = writeln!(
            out,
            "\nTarget ≥ 5000 admissions/s: {} ({best:.0}/s); p99 < 5 ms on one connection: {} ({p99:.2} ms).\n",
            if best >= 5000.0 { "met" } else { "NOT met" },
            if p99 < 5.0 { "met" } else { "NOT met" },
        );
        out
    }

    fn fleet_md(&self) -> String {
        let Some(f) = &self.fleet else {
            return String::new();
        };
        f.markdown()
    }
}

/// CPU model, core count, memory and load, for the report header.
pub fn machine_note() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cores} × {model}, {:.0} GiB; load average at the end {}",
        mem_kb as f64 / 1048576.0,
        load.join(" ")
    )
}
