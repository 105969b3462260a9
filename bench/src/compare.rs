//! Sidekey's agent and `bao agent` in turn against the same OpenBao, with the same
//! secrets, refresh interval and Kubernetes auth: start-up, memory, CPU, requests,
//! change latency and what each leaves behind after SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rand::Rng as _;
use sidekey_agent::contract::config::{
    AgentConfig, AuthConfig, AuthMethod, SecretSpec, VaultConfig,
};
use sidekey_tests::database::Ttls;
use sidekey_tests::process::{Process, guarded};

use crate::env::{self, AUTH_MOUNT, Env, kv_api_path};
use crate::sys;

/// Namespace and service account both agents log in as.
pub const NAMESPACE: &str = "bench";
const SERVICE_ACCOUNT: &str = "app-sa";
/// The dynamic credential's TTLs: long enough that nothing but a refresh bug would
/// issue a second one during a run.
pub const DB_TTLS: Ttls = Ttls {
    default: 600,
    max: 3600,
};

/// Which agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Sidekey,
    BaoAgent,
}

impl Agent {
    pub fn label(self) -> &'static str {
        match self {
            Agent::Sidekey => "Sidekey",
            Agent::BaoAgent => "bao agent",
        }
    }
}

/// Sizes of one comparison.
#[derive(Debug, Clone)]
pub struct Plan {
    /// KV secrets per agent (each its own path), plus one database credential.
    pub secrets: usize,
    pub refresh: Duration,
    /// The measured idle window.
    pub window: Duration,
    /// KV updates timed to their file change.
    pub writes: usize,
    /// Cold starts timed (the first is the measured run's).
    pub starts: usize,
}

/// What one agent run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub agent: Agent,
    pub secrets: usize,
    /// Median of [`Measured::starts`].
    pub start_to_rendered: Duration,
    /// Every cold start measured, sorted.
    pub starts: Vec<Duration>,
    pub peak_rss: u64,
    pub steady_rss: u64,
    pub cpu_secs: f64,
    pub window_secs: f64,
    pub bao_cpu_secs: Option<f64>,
    pub startup_requests: usize,
    pub window_requests: usize,
    /// `database/creds` reads over the whole run (1 = never re-issued).
    pub db_issues: usize,
    pub lease_renewals: usize,
    pub latencies: Vec<f64>,
    pub exit_after_term: Option<Duration>,
    pub shutdown_requests: usize,
    pub left_tokens: usize,
    pub left_leases: usize,
    pub left_pg_roles: usize,
    /// Start-up requests as `+<ms since spawn> <operation> <path>`.
    pub startup_detail: Vec<String>,
}

impl Measured {
    pub fn requests_per_min(&self) -> f64 {
        self.window_requests as f64 * 60.0 / self.window_secs
    }
    pub fn requests_per_refresh(&self, refresh: Duration) -> f64 {
        self.window_requests as f64 * refresh.as_secs_f64() / self.window_secs
    }
}

/// Runs `agent` with `plan` and measures it.
pub fn run(env: &Env, agent: Agent, plan: &Plan, agent_bin: &Path) -> Result<Measured> {
    let prefix = match agent {
        Agent::Sidekey => "sk",
        Agent::BaoAgent => "ba",
    };
    let role = format!("{prefix}{}n{}", sidekey_tests::random_id(6), plan.secrets);
    let db = env
        .run_role(&role, NAMESPACE, Some(DB_TTLS))?
        .context("the run's database role")?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("sidekey-bench-{role}-"))
        .tempdir()?;
    let (jwt_path, files) = prepare(env, plan, dir.path())?;
    let creds = db.creds_path();

    let command = || match agent {
        Agent::Sidekey => {
            sidekey_command(env, agent_bin, plan, &role, &jwt_path, dir.path(), &creds)
        }
        Agent::BaoAgent => bao_agent_command(env, plan, &role, &jwt_path, dir.path(), &creds),
    };

    let spawn_epoch = env::now_epoch();
    let (mut process, first_start) = start_until_rendered(agent, command()?, dir.path(), &files)?;
    let pid = process.pid();

    // Let start-up finish (the incumbent renews its token right after login).
    std::thread::sleep(Duration::from_secs(1));
    let window_start = env::now_epoch();
    let ticks0 = sys::cpu_ticks(pid).context("agent CPU")?;
    let bao0 = env.bao_ticks();
    let clock = Instant::now();
    let mut samples = Vec::new();
    while clock.elapsed() < plan.window {
        std::thread::sleep(Duration::from_secs(1).min(plan.window.saturating_sub(clock.elapsed())));
        if let Some(rss) = sys::rss(pid) {
            samples.push(rss);
        }
    }
    let ticks1 = sys::cpu_ticks(pid).context("agent CPU")?;
    let bao1 = env.bao_ticks();
    let window_secs = clock.elapsed().as_secs_f64();
    let window_end = env::now_epoch();

    // KV updates at a random phase of the refresh interval, each timed to the file.
    let mut latencies = Vec::new();
    let mut rng = rand::rng();
    for _ in 0..plan.writes {
        std::thread::sleep(plan.refresh.mul_f64(rng.random_range(0.0..1.0)));
        let marker = env.update_kv(0)?;
        let written = Instant::now();
        let limit = plan.refresh * 3 + Duration::from_secs(2);
        loop {
            if std::fs::read_to_string(&files[0]).is_ok_and(|t| t.contains(&marker)) {
                latencies.push(written.elapsed().as_secs_f64());
                break;
            }
            if written.elapsed() > limit {
                bail!(
                    "{}: a KV update did not reach its file within {limit:?}",
                    agent.label()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    let peak_rss = sys::peak_rss(pid).context("agent peak RSS")?;
    let term_epoch = env::now_epoch();
    process.signal("TERM")?;
    let term = Instant::now();
    let exit_after_term = process
        .wait_timeout(Duration::from_secs(15))
        .ok()
        .map(|_| term.elapsed());
    process.kill();
    std::thread::sleep(Duration::from_secs(1));

    let trail_at_term = env.trail()?;
    let requests = env::role_requests(&trail_at_term, &role);
    let in_range = |a: f64, b: f64| {
        requests
            .iter()
            .filter(|e| e.time >= a && e.time < b)
            .count()
    };
    let accessors = trail_at_term.login_accessors(AUTH_MOUNT, &role);
    let mut left_tokens = 0;
    for a in &accessors {
        if env.bao.accessor_valid(a)? {
            left_tokens += 1;
        }
    }
    let left_leases = db.leases()?.len();
    let left_pg_roles = db.pg_roles()?.len();
    // More cold starts for a steadier start-up figure: the median of all of them.
    let mut starts = vec![first_start];
    for _ in 1..plan.starts {
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
        let (mut again, took) = start_until_rendered(agent, command()?, dir.path(), &files)?;
        starts.push(took);
        again.signal("TERM")?;
        let _ = again.wait_timeout(Duration::from_secs(15));
    }
    starts.sort_unstable();
    let start_to_rendered = starts[starts.len() / 2];
    let trail = env.trail()?;
    let accessors = trail.login_accessors(AUTH_MOUNT, &role);

    // Clean up what was left, so the next run starts from nothing.
    for a in &accessors {
        let _ = env.revoke_accessor(a);
    }
    drop(db);

    samples.sort_unstable();
    Ok(Measured {
        agent,
        secrets: plan.secrets,
        start_to_rendered,
        starts,
        peak_rss,
        steady_rss: samples.get(samples.len() / 2).copied().unwrap_or(0),
        cpu_secs: (ticks1 - ticks0) as f64 * sys::TICK_SECS,
        window_secs,
        bao_cpu_secs: bao0.zip(bao1).map(|(a, b)| (b - a) as f64 * sys::TICK_SECS),
        startup_requests: in_range(0.0, window_start),
        window_requests: in_range(window_start, window_end),
        db_issues: requests
            .iter()
            .filter(|e| e.path == creds && e.operation == "read")
            .count(),
        lease_renewals: requests
            .iter()
            .filter(|e| e.path == "sys/leases/renew")
            .count(),
        latencies,
        exit_after_term,
        shutdown_requests: in_range(term_epoch, f64::MAX),
        left_tokens,
        left_leases,
        left_pg_roles,
        startup_detail: requests
            .iter()
            .filter(|e| e.time < window_start)
            .map(|e| {
                format!(
                    "+{:.0} ms {} {}",
                    (e.time - spawn_epoch) * 1000.0,
                    e.operation,
                    e.path
                )
            })
            .chain(
                trail_at_term
                    .responses_to(&trail_at_term.login_accessors(AUTH_MOUNT, &role))
                    .iter()
                    .filter(|e| e.time < window_start)
                    .map(|e| e.time)
                    .max_by(f64::total_cmp)
                    .map(|t| format!("last response +{:.0} ms", (t - spawn_epoch) * 1000.0)),
            )
            .collect(),
    })
}

/// Writes the service-account token into `dir` and creates its secrets directory;
/// returns the token's path and the files the agent must render.
pub fn prepare(env: &Env, plan: &Plan, dir: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let secrets_dir = dir.join("secrets");
    std::fs::create_dir_all(&secrets_dir)?;
    let jwt_path = dir.join("sa-token");
    std::fs::write(&jwt_path, env.jwt(NAMESPACE, SERVICE_ACCOUNT)?)?;
    let mut files: Vec<PathBuf> = (0..plan.secrets)
        .map(|i| secrets_dir.join(format!("kv-{i}.json")))
        .collect();
    files.push(secrets_dir.join("db.json"));
    Ok((jwt_path, files))
}

/// Spawns `cmd` and waits (polling every 2 ms, at most 30 s) until every file exists
/// and is not empty.
pub fn start_until_rendered(
    agent: Agent,
    cmd: Command,
    dir: &Path,
    files: &[PathBuf],
) -> Result<(Process, Duration)> {
    let started = Instant::now();
    let mut process = Process::spawn(agent.label().replace(' ', "-").as_str(), cmd, dir)?;
    loop {
        if files
            .iter()
            .all(|f| f.metadata().is_ok_and(|m| m.len() > 0))
        {
            return Ok((process, started.elapsed()));
        }
        if !matches!(process.try_status(), Ok(None)) || started.elapsed() > Duration::from_secs(30)
        {
            bail!(
                "{} did not render every file within 30 s:\n{}",
                agent.label(),
                process.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn base_env(cmd: &mut Command, home: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home);
}

pub fn sidekey_command(
    env: &Env,
    agent_bin: &Path,
    plan: &Plan,
    role: &str,
    jwt_path: &Path,
    dir: &Path,
    creds: &str,
) -> Result<Command> {
    let mut config = AgentConfig::new(
        VaultConfig {
            addr: env.bao.addr().to_owned(),
            ca_pem: Some(env.ca_pem.clone()),
            ..Default::default()
        },
        AuthConfig {
            method: AuthMethod::Kubernetes,
            mount_path: AUTH_MOUNT.into(),
            role: role.into(),
            jwt_path: jwt_path.display().to_string(),
        },
    );
    config.secrets_dir = dir.join("secrets").display().to_string();
    config.state_dir = dir.join("state").display().to_string();
    std::fs::create_dir_all(&config.state_dir)?;
    config.refresh_secs = plan.refresh.as_secs();
    config.secrets = (0..plan.secrets)
        .map(|i| SecretSpec::new(format!("kv-{i}.json"), kv_api_path(i)))
        .collect();
    config.secrets.push(SecretSpec::new("db.json", creds));

    let mut cmd = guarded(agent_bin);
    cmd.arg("sidecar");
    base_env(&mut cmd, dir);
    cmd.env("SIDEKEY_AGENT_CONFIG", config.to_json())
        .env("SIDEKEY_POD_NAMESPACE", NAMESPACE)
        .env("SIDEKEY_POD_NAME", "bench-0");
    Ok(cmd)
}

/// The incumbent as the injector configures it: Kubernetes auto-auth, a file sink,
/// `exit_on_retry_failure`, one template per secret rendering the same JSON.
fn bao_agent_command(
    env: &Env,
    plan: &Plan,
    role: &str,
    jwt_path: &Path,
    dir: &Path,
    creds: &str,
) -> Result<Command> {
    let mut hcl = format!(
        r#"pid_file = "{dir}/agent.pid"
exit_after_auth = false

vault {{
  address = "{addr}"
  ca_cert = "{ca}"
}}

auto_auth {{
  method "kubernetes" {{
    mount_path = "{AUTH_MOUNT}"
    config = {{
      role       = "{role}"
      token_path = "{jwt}"
    }}
  }}
  sink "file" {{
    config = {{
      path = "{dir}/token-sink"
    }}
  }}
}}

template_config {{
  exit_on_retry_failure         = true
  static_secret_render_interval = "{refresh}s"
}}
"#,
        dir = dir.display(),
        addr = env.bao.addr(),
        ca = env.bao.ca_path().display(),
        jwt = jwt_path.display(),
        refresh = plan.refresh.as_secs(),
    );
    let template = |dest: String, path: &str, data: &str| {
        format!(
            "\ntemplate {{\n  destination = \"{}/secrets/{dest}\"\n  contents    = \"{{{{ with secret \\\"{path}\\\" }}}}{{{{ {data} | toJSON }}}}{{{{ end }}}}\"\n}}\n",
            dir.display()
        )
    };
    for i in 0..plan.secrets {
        hcl.push_str(&template(
            format!("kv-{i}.json"),
            &kv_api_path(i),
            ".Data.data",
        ));
    }
    hcl.push_str(&template("db.json".into(), creds, ".Data"));
    let config = dir.join("agent.hcl");
    std::fs::write(&config, hcl)?;

    let mut cmd = guarded(sidekey_tests::bins::bao()?);
    cmd.arg("agent")
        .arg(format!("-config={}", config.display()));
    base_env(&mut cmd, dir);
    Ok(cmd)
}
