//! One Sidekey sidecar left running for minutes, as one pod would be: what it asks of
//! OpenBao over that time, class by class, and what it leaves behind after SIGTERM.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use sidekey_tests::audit::Entry;

use crate::compare::{self, Agent, DB_TTLS, NAMESPACE, Plan};
use crate::env::{self, AUTH_MOUNT, Env};

/// How one soak run is sized.
#[derive(Debug, Clone)]
pub struct Soak {
    pub secrets: usize,
    pub minutes: u64,
    pub refresh: Duration,
}

/// The request classes of the table, in its order.
const CLASSES: [&str; 8] = [
    "login",
    "mount lookups",
    "KV reads",
    "database creds",
    "lease renewals",
    "lease revokes",
    "token renew/revoke",
    "other",
];

/// Which class of [`CLASSES`] an audited request falls in.
fn class(e: &Entry) -> usize {
    let p = e.path.as_str();
    if p == format!("{AUTH_MOUNT}/login") {
        0
    } else if p.starts_with("sys/internal/ui/mounts") {
        1
    } else if p.starts_with("secret/") {
        2
    } else if p.starts_with("database/creds/") {
        3
    } else if p.starts_with("sys/leases/renew") || p.starts_with("sys/renew") {
        4
    } else if p.starts_with("sys/leases/revoke") || p.starts_with("sys/revoke") {
        5
    } else if p.starts_with("auth/token/renew") || p.starts_with("auth/token/revoke") {
        6
    } else {
        7
    }
}

/// Runs the soak and returns its report as Markdown.
pub fn run(env: &Env, soak: &Soak, agent_bin: &Path) -> Result<String> {
    let plan = Plan {
        secrets: soak.secrets,
        refresh: soak.refresh,
        window: Duration::from_secs(soak.minutes * 60),
        writes: 0,
        starts: 1,
    };
    let role = format!("so{}n{}", sidekey_tests::random_id(6), soak.secrets);
    let db = env
        .run_role(&role, NAMESPACE, Some(DB_TTLS))?
        .context("the run's database role")?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("sidekey-bench-{role}-"))
        .tempdir()?;
    let (jwt_path, files) = compare::prepare(env, &plan, dir.path())?;
    let cmd = compare::sidekey_command(
        env,
        agent_bin,
        &plan,
        &role,
        &jwt_path,
        dir.path(),
        &db.creds_path(),
    )?;

    let (mut process, rendered_in) =
        compare::start_until_rendered(Agent::Sidekey, cmd, dir.path(), &files)?;
    // Start-up ends one second after every file appeared, as in the comparison.
    std::thread::sleep(Duration::from_secs(1));
    let steady_from = env::now_epoch();
    let clock = Instant::now();
    while clock.elapsed() < plan.window {
        std::thread::sleep(Duration::from_secs(5).min(plan.window - clock.elapsed()));
        anyhow::ensure!(
            matches!(process.try_status(), Ok(None)),
            "the agent exited during the soak:\n{}",
            process.logs()
        );
    }
    let term_at = env::now_epoch();
    process.signal("TERM")?;
    let status = process.wait_timeout(Duration::from_secs(15));
    process.kill();
    std::thread::sleep(Duration::from_secs(1));

    let trail = env.trail()?;
    let requests = env::role_requests(&trail, &role);
    let accessors = trail.login_accessors(AUTH_MOUNT, &role);
    let mut left_tokens = 0;
    for a in &accessors {
        left_tokens += usize::from(env.bao.accessor_valid(a)?);
    }
    let left_leases = db.leases()?.len();
    let left_pg_roles = db.pg_roles()?.len();
    for a in &accessors {
        let _ = env.revoke_accessor(a);
    }

    // Counts per class and phase: start-up, steady, after SIGTERM.
    let mut counts = [[0usize; 3]; CLASSES.len()];
    for e in &requests {
        let phase = if e.time < steady_from {
            0
        } else if e.time < term_at {
            1
        } else {
            2
        };
        counts[class(e)][phase] += 1;
    }
    let failed = requests.iter().filter(|e| e.error.is_some()).count();
    let steady_secs = term_at - steady_from;
    let steady: usize = counts.iter().map(|c| c[1]).sum();

    let mut md = String::new();
    md.push_str("| requests | start-up | steady | after SIGTERM | total |\n");
    md.push_str("| --- | ---: | ---: | ---: | ---: |\n");
    let mut totals = [0usize; 3];
    for (name, c) in CLASSES.iter().zip(counts) {
        for (t, n) in totals.iter_mut().zip(c) {
            *t += n;
        }
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} |",
            c[0],
            c[1],
            c[2],
            c.iter().sum::<usize>()
        );
    }
    let _ = writeln!(
        md,
        "| **total** | **{}** | **{}** | **{}** | **{}** |\n",
        totals[0],
        totals[1],
        totals[2],
        totals.iter().sum::<usize>()
    );
    let _ = writeln!(
        md,
        "| measure | value |\n| --- | ---: |\n\
         | secrets | {} KV v2 + 1 PostgreSQL credential (TTL {} s, max TTL {} s) |\n\
         | refresh | {} |\n\
         | start → every file rendered | {:.3} s |\n\
         | steady window (1 s after rendered → SIGTERM) | {:.1} s |\n\
         | requests per minute, steady | {:.2} |\n\
         | requests that failed | {failed} |\n\
         | exit after SIGTERM | {} |\n\
         | left after SIGTERM: valid tokens / leases / PostgreSQL roles | {left_tokens} / {left_leases} / {left_pg_roles} |",
        soak.secrets,
        DB_TTLS.default,
        DB_TTLS.max,
        sidekey_agent::contract::duration::format(soak.refresh),
        rendered_in.as_secs_f64(),
        steady_secs,
        steady as f64 * 60.0 / steady_secs,
        match status {
            Ok(s) => format!("{s}"),
            Err(_) => "not within 15 s (killed)".to_owned(),
        },
    );
    drop(db);
    Ok(md)
}
