//! Many pods, one Vault: N Sidekey agents, each its own process with its own service
//! account token, login and files (as N pods would), against one OpenBao. Reports
//! OpenBao's request rate and CPU and whether refreshes spread over the interval.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use sidekey_agent::contract::config::{
    AgentConfig, AuthConfig, AuthMethod, SecretSpec, VaultConfig,
};
use sidekey_tests::database::Ttls;
use sidekey_tests::process::{Process, guarded};

use crate::env::{self, AUTH_MOUNT, Env, kv_api_path};
use crate::sys;

const NAMESPACE: &str = "fleet";
/// KV secrets in OpenBao; agent `i` reads two of them.
const KV_SECRETS: usize = 20;

#[derive(Debug, Clone)]
pub struct FleetResult {
    pub agents: usize,
    pub refresh_secs: u64,
    pub run_secs: u64,
    pub db_ttl_secs: u64,
    pub all_rendered: Duration,
    pub rss_mean: u64,
    pub rss_total: u64,
    pub agents_cpu_steady: f64,
    pub bao_cpu_steady: Option<f64>,
    pub steady_from: u64,
    pub startup_requests: usize,
    /// Requests per second since the agents were started.
    pub per_second: Vec<usize>,
    pub exited: usize,
    pub left_tokens: usize,
    pub left_leases: usize,
    pub left_pg_roles: usize,
}

pub fn run(bins: &Path, agents: usize, smoke: bool) -> Result<FleetResult> {
    let (refresh, run_secs, db_ttl) = if smoke { (5, 20, 30) } else { (60, 180, 120) };
    eprintln!("bench: {agents} agents, refresh {refresh} s, {run_secs} s ...");
    let env = Env::start(KV_SECRETS)?;
    let role = format!("fl{}", sidekey_tests::random_id(6));
    let db = env
        .run_role(
            &role,
            NAMESPACE,
            Some(Ttls {
                default: db_ttl,
                max: 3600,
            }),
        )?
        .context("the fleet's database role")?;
    let dir = tempfile::Builder::new()
        .prefix("sidekey-bench-fleet-")
        .tempdir()?;

    let mut expected: Vec<PathBuf> = Vec::new();
    let mut commands = Vec::new();
    for i in 0..agents {
        let home = dir.path().join(format!("pod-{i}"));
        std::fs::create_dir_all(home.join("secrets"))?;
        std::fs::create_dir_all(home.join("state"))?;
        let jwt = home.join("sa-token");
        std::fs::write(&jwt, env.jwt(NAMESPACE, &format!("app-{i}"))?)?;
        let mut config = AgentConfig::new(
            VaultConfig {
                addr: env.bao.addr().to_owned(),
                ca_pem: Some(env.ca_pem.clone()),
                ..Default::default()
            },
            AuthConfig {
                method: AuthMethod::Kubernetes,
                mount_path: AUTH_MOUNT.into(),
                role: role.clone(),
                jwt_path: jwt.display().to_string(),
            },
        );
        config.secrets_dir = home.join("secrets").display().to_string();
        config.state_dir = home.join("state").display().to_string();
        config.refresh_secs = refresh;
        config.secrets = vec![
            SecretSpec::new("a.json", kv_api_path(i % KV_SECRETS)),
            SecretSpec::new("b.json", kv_api_path((i + 1) % KV_SECRETS)),
            SecretSpec::new("db.json", db.creds_path()),
        ];
        for f in ["a.json", "b.json", "db.json"] {
            expected.push(home.join("secrets").join(f));
        }
        let mut cmd = guarded(bins.join("sidekey-agent"));
        cmd.arg("sidecar")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SIDEKEY_AGENT_CONFIG", config.to_json())
            .env("SIDEKEY_POD_NAMESPACE", NAMESPACE)
            .env("SIDEKEY_POD_NAME", format!("app-{i}"));
        commands.push((home, cmd));
    }

    // Start them all at once, as a scale-up or a node's worth of restarts would.
    let t0_epoch = env::now_epoch();
    let started = Instant::now();
    let mut procs = Vec::new();
    for (i, (home, cmd)) in commands.into_iter().enumerate() {
        procs.push(Process::spawn(&format!("agent-{i}"), cmd, &home)?);
    }
    loop {
        if expected
            .iter()
            .all(|f| f.metadata().is_ok_and(|m| m.len() > 0))
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let missing = expected.iter().filter(|f| !f.exists()).count();
            bail!("{missing} files still missing after 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let all_rendered = started.elapsed();
    eprintln!(
        "bench: all {agents} agents rendered after {:.2} s",
        all_rendered.as_secs_f64()
    );

    // Steady state: from the end of the first interval to the end of the run.
    let steady_from = refresh;
    sleep_until(started, Duration::from_secs(steady_from));
    let agent_ticks =
        |procs: &[Process]| -> u64 { procs.iter().filter_map(|p| sys::cpu_ticks(p.pid())).sum() };
    let a0 = agent_ticks(&procs);
    let b0 = env.bao_ticks();
    sleep_until(started, Duration::from_secs(run_secs));
    let a1 = agent_ticks(&procs);
    let b1 = env.bao_ticks();
    let rss: Vec<u64> = procs.iter().filter_map(|p| sys::rss(p.pid())).collect();
    let rss_total: u64 = rss.iter().sum();

    for p in &procs {
        let _ = p.signal("TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut exited = 0;
    for p in &mut procs {
        let left = deadline.saturating_duration_since(Instant::now());
        if p.wait_timeout(left).is_ok_and(|s| s.success()) {
            exited += 1;
        }
    }
    drop(procs);
    std::thread::sleep(Duration::from_secs(1));

    let trail = env.trail()?;
    let requests = env::role_requests(&trail, &role);
    let mut per_second = vec![0usize; run_secs as usize];
    for e in &requests {
        let t = e.time - t0_epoch;
        if t >= 0.0 && (t as usize) < per_second.len() {
            per_second[t as usize] += 1;
        }
    }
    let rendered_epoch = t0_epoch + all_rendered.as_secs_f64();
    let startup_requests = requests.iter().filter(|e| e.time < rendered_epoch).count();
    let accessors = trail.login_accessors(AUTH_MOUNT, &role);
    let mut left_tokens = 0;
    for a in &accessors {
        if env.bao.accessor_valid(a)? {
            left_tokens += 1;
            let _ = env.revoke_accessor(a);
        }
    }
    let left_leases = db.leases()?.len();
    let left_pg_roles = db.pg_roles()?.len();
    drop(db);

    Ok(FleetResult {
        agents,
        refresh_secs: refresh,
        run_secs,
        db_ttl_secs: db_ttl,
        all_rendered,
        rss_mean: rss_total / rss.len().max(1) as u64,
        rss_total,
        agents_cpu_steady: a1.saturating_sub(a0) as f64 * sys::TICK_SECS,
        bao_cpu_steady: b0.zip(b1).map(|(a, b)| (b - a) as f64 * sys::TICK_SECS),
        steady_from,
        startup_requests,
        per_second,
        exited,
        left_tokens,
        left_leases,
        left_pg_roles,
    })
}

fn sleep_until(started: Instant, at: Duration) {
    let now = started.elapsed();
    if at > now {
        std::thread::sleep(at - now);
    }
}

impl FleetResult {
    pub fn markdown(&self) -> String {
        let steady = &self.per_second[self.steady_from as usize..];
        let steady_secs = steady.len().max(1) as f64;
        let steady_total: usize = steady.iter().sum();
        let mean = steady_total as f64 / steady_secs;
        let max = steady.iter().copied().max().unwrap_or(0);
        let mut sorted = steady.to_vec();
        sorted.sort_unstable();
        let p95 = sorted.get(sorted.len() * 95 / 100).copied().unwrap_or(0);
        let idle = steady.iter().filter(|&&c| c == 0).count();
        // Share of the steady requests that fell in the busiest tenth of the seconds.
        let top = sorted
            .iter()
            .rev()
            .take(sorted.len().div_ceil(10))
            .sum::<usize>();

        let mut out = format!(
            "### Fleet: {} Sidekey agents on one OpenBao (2 KV secrets each at {} s refresh + 1 database credential, TTL {} s), {} s\n\n",
            self.agents, self.refresh_secs, self.db_ttl_secs, self.run_secs
        );
        out.push_str("| measure | value |\n| --- | ---: |\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "| {k} | {v} |");
        };
        row(
            "start of all agents → every file rendered",
            format!(
                "{:.2} s ({} requests)",
                self.all_rendered.as_secs_f64(),
                self.startup_requests
            ),
        );
        row(
            "agent RSS at the end: mean / total",
            format!(
                "{:.1} MB / {:.0} MB",
                sys::mb(self.rss_mean),
                sys::mb(self.rss_total)
            ),
        );
        let window = self.run_secs - self.steady_from;
        row(
            &format!(
                "steady state (t = {}–{} s): requests/s mean / p95 / max",
                self.steady_from, self.run_secs
            ),
            format!("{mean:.2} / {p95} / {max}"),
        );
        row(
            "steady seconds with no request at all",
            format!("{idle} of {}", steady.len()),
        );
        row(
            "share of steady requests in the busiest 10 % of seconds",
            format!("{:.0} %", 100.0 * top as f64 / steady_total.max(1) as f64),
        );
        row(
            &format!("OpenBao CPU over the steady {window} s"),
            self.bao_cpu_steady.map_or("-".into(), |c| {
                format!("{c:.2} s ({:.2} % of one core)", 100.0 * c / window as f64)
            }),
        );
        row(
            &format!("all agents' CPU over the steady {window} s"),
            format!("{:.2} s", self.agents_cpu_steady),
        );
        row(
            "agents exited 0 within 30 s of SIGTERM",
            format!("{} of {}", self.exited, self.agents),
        );
        row(
            "left after SIGTERM: valid tokens / leases / PostgreSQL roles",
            format!(
                "{} / {} / {}",
                self.left_tokens, self.left_leases, self.left_pg_roles
            ),
        );
        out.push('\n');

        // Requests per second, in 5-second buckets, as text bars.
        let bucket = 5usize;
        let chunks: Vec<&[usize]> = self.per_second.chunks(bucket).collect();
        let peak = chunks
            .iter()
            .map(|c| c.iter().sum::<usize>())
            .max()
            .unwrap_or(1)
            .max(1);
        out.push_str(
            "Requests per second over time (5 s buckets: mean and busiest second; the agents start at 0 s):\n\n```\n",
        );
        for (i, c) in chunks.iter().enumerate() {
            let sum: usize = c.iter().sum();
            let busiest = c.iter().copied().max().unwrap_or(0);
            let bar = "#".repeat((50 * sum).div_ceil(peak));
            let _ = writeln!(
                out,
                "{:>4}-{:<4} s {:>7.1}/s max {:>4}/s |{bar}",
                i * bucket,
                (i + 1) * bucket,
                sum as f64 / c.len() as f64,
                busiest
            );
        }
        out.push_str("```\n");
        out
    }
}
