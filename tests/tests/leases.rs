//! Dynamic secrets end to end: pods mutated by the real webhook run the real agent
//! against a real OpenBao whose database secrets engine creates real PostgreSQL roles.
//!
//! What is checked is what an operator would check: the PostgreSQL roles that exist
//! (`pg_roles`), whether a client can log in with the rendered credentials (password
//! checked against the SCRAM verifier, `VALID UNTIL` against the clock), the leases
//! OpenBao still holds, and, from OpenBao's audit log, how many logins, credential
//! reads and renewals the agent made.
//!
//! Every test has its own auth role, policy, KV secret and database role
//! ([`Tenant`]), so they share one OpenBao and run in parallel. TTLs are seconds long.
//!
//! Needs root, PostgreSQL on 127.0.0.1:5432 and the built binaries
//! (`cargo build --bins`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::Value;
use sidekey_agent::contract::layout;
use sidekey_tests::agentpod::{AgentPod, Layout};
use sidekey_tests::audit::{self, Trail};
use sidekey_tests::database::Ttls;
use sidekey_tests::leak::Secrets;
use sidekey_tests::stack::{Stack, TERM_GRACE};
use sidekey_tests::tenant::{AUTH_MOUNT, DB_FILE, KV_FILE, Options, Tenant};
use sidekey_tests::{Result, postgres};

/// Unwraps, or fails with the servers' logs attached.
fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}", Stack::shared().diagnostics()))
}

/// The shared stack, after checking what these tests need from the machine.
fn stack() -> &'static Stack {
    assert!(
        sidekey_tests::is_root(),
        "the end-to-end tests run containers in mount namespaces and need root"
    );
    ok(postgres::check_available());
    Stack::shared()
}

/// The agent's hand-off file in its state directory (agent/src/state.rs), which holds
/// its Vault token.
const STATE_FILE: &str = "state.json";

/// The classic layout (init container plus sidecar), which also exercises the
/// init-to-sidecar hand-off. Without it a pod gets the webhook's default, the native
/// sidecar; the rotation test runs one replica in each, and the native layout has its
/// own test below.
const CLASSIC: (&str, &str) = ("agent-mode", "init-and-sidecar");

/// Admits `pod` through the webhook and starts its agent as the pod's layout says.
fn start_pod(stack: &Stack, pod: &Value) -> AgentPod {
    let admitted = ok(stack.admit(pod));
    assert!(admitted.verdict.allowed, "{:?}", admitted.verdict);
    let run = ok(stack.pod_run(&admitted.pod));
    ok(AgentPod::start(run))
}

/// The username and password an agent rendered to [`DB_FILE`].
fn db_creds(pod: &AgentPod) -> (String, SecretString) {
    let v = ok(pod.read_json(DB_FILE));
    let user = v["username"].as_str().unwrap_or_default().to_owned();
    let pass = v["password"].as_str().unwrap_or_default().to_owned();
    assert!(
        !user.is_empty() && !pass.is_empty(),
        "{DB_FILE} has no username/password; keys: {:?}",
        v.as_object().map(|m| m.keys().collect::<Vec<_>>())
    );
    (user, SecretString::from(pass))
}

/// The agent's requests, from the tokens its logins as the tenant's role obtained.
fn agent_requests(trail: &Trail, tenant: &Tenant) -> Vec<audit::Entry> {
    trail
        .agent_requests(AUTH_MOUNT, &tenant.auth_role)
        .into_iter()
        .cloned()
        .collect()
}

fn refs(entries: &[audit::Entry]) -> Vec<&audit::Entry> {
    entries.iter().collect()
}

/// Every value that must never appear in the pod's logs: the KV data (all versions
/// given), the credentials in the rendered files and the state directory (the agent's
/// Vault token), the pod's JWT and the root token.
fn secrets_of(stack: &Stack, pod: &AgentPod, kv_versions: &[Value]) -> Secrets {
    let mut s = Secrets::new();
    for v in kv_versions {
        s.add_all_values("a KV value", v);
    }
    ok(s.add_files("a rendered credential", &ok(pod.secrets_dir())));
    let state = ok(pod.state_dir());
    ok(s.add_files("the agent's state", &state));
    // The hand-off file (agent/src/state.rs) holds the agent's Vault token: make sure
    // the check really has it, not only whatever the generic walk found.
    let handed = std::fs::read(state.join(STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    if let Some(token) = handed.as_ref().and_then(|v| v["token"]["token"].as_str()) {
        s.add("the agent's Vault token", token);
    }
    let token = pod
        .run
        .volume_path(layout::TOKEN_VOLUME)
        .map(|d| d.join(layout::TOKEN_FILE));
    if let Some(t) = token
        && let Ok(jwt) = std::fs::read_to_string(t)
    {
        s.add("the pod's JWT", &jwt);
    }
    s.add("the root token", stack.bao.root_token());
    s
}

fn assert_no_leak(secrets: &Secrets, pod: &AgentPod, stack: &Stack) {
    ok(secrets.check("the agent's output", &pod.all_output()));
    ok(secrets.check("the webhook's output", &stack.webhook.logs()));
}

/// How long OpenBao may take to drop the database roles of a revoked token: revoking a
/// token marks its leases expired and the expiration manager revokes them right after,
/// in the background.
const LEASE_REVOCATION_LAG: Duration = Duration::from_secs(3);

/// Waits (bounded) until the role has no lease in OpenBao and no user in PostgreSQL;
/// returns how long that took.
fn nothing_left(db: &sidekey_tests::database::DbRole, output: &str) -> Duration {
    let start = Instant::now();
    let result = sidekey_tests::process::wait_for(
        "no lease and no PostgreSQL role left",
        LEASE_REVOCATION_LAG,
        || {
            let leases = db.leases().ok()?;
            let roles = db.pg_roles().ok()?;
            (leases.is_empty() && roles.is_empty()).then_some(())
        },
    );
    if let Err(e) = result {
        panic!(
            "{e}: leases {:?}, roles {:?}\n{output}",
            db.leases(),
            db.pg_roles()
        );
    }
    let took = start.elapsed();
    eprintln!(
        "{}: nothing left {took:?} after the sidecar exited",
        db.name
    );
    took
}

/// File identity and modification time: unchanged means not rewritten.
fn stamp(path: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.ino(), m.mtime(), m.mtime_nsec())
}

/// The pod made one login and one credential read in all, its one PostgreSQL user is
/// `user`, and the credential file still has the `(path, stamp)` it had.
fn one_login_one_credential(
    tenant: &Tenant,
    pod: &AgentPod,
    user: &str,
    file: (&Path, (u64, i64, i64)),
    when: &str,
) {
    let db = ok(tenant.db());
    let trail = ok(tenant.trail());
    let logins = trail.logins(AUTH_MOUNT, &tenant.auth_role).len();
    let mine = agent_requests(&trail, tenant);
    let creds = audit::count(&refs(&mine), &db.creds_path(), Some("read"));
    assert_eq!(
        (logins, creds),
        (1, 1),
        "{when}: expected one login and one credential read for the pod; requests:\n{}\n{}",
        audit::summary(&refs(&mine)),
        pod.all_output()
    );
    assert_eq!(
        ok(db.pg_roles()),
        vec![user.to_owned()],
        "{when}: PostgreSQL roles of this pod\n{}",
        pod.all_output()
    );
    assert_eq!(
        stamp(file.0),
        file.1,
        "{when}: {} was rewritten",
        file.0.display()
    );
}

#[test]
fn init_and_sidecar_share_one_login_and_one_database_credential_across_a_crash() {
    let stack = stack();
    let tenant = ok(Tenant::create(&stack.bao, &Options::default()));
    let db = ok(tenant.db());
    let mut pod = start_pod(stack, &ok(tenant.pod(&[CLASSIC])));
    assert_eq!(pod.layout, Layout::Classic);

    // The init container rendered both secrets, and the credential works.
    assert_eq!(ok(pod.read_json(KV_FILE)), tenant.kv_data);
    let (user, pass) = db_creds(&pod);
    assert!(
        user.starts_with(&db.user_prefix()),
        "{user} is not from role {}",
        db.name
    );
    if let Err(e) = postgres::login(&user, &pass) {
        panic!(
            "login with the rendered credential: {e}\n{}",
            pod.all_output()
        );
    }
    let db_file = ok(pod.secrets_dir()).join(DB_FILE);
    let rendered_by_init = stamp(&db_file);

    // The sidecar adopts what the init container obtained: no second login, no second
    // credential, the file untouched. Give it time to do either if it were going to.
    std::thread::sleep(Duration::from_secs(3));
    assert!(ok(pod.sidecar()).is_running(), "{}", pod.all_output());
    let check_one_of_each = |pod: &AgentPod, when: &str| {
        one_login_one_credential(&tenant, pod, &user, (&db_file, rendered_by_init), when)
    };
    check_one_of_each(&pod, "after the sidecar started");

    // A crash (SIGKILL: nothing revoked) and a restart by the kubelet: the new sidecar
    // takes over the same token and lease from the state volume.
    ok(pod.crash_sidecar());
    ok(pod.start_sidecar());
    std::thread::sleep(Duration::from_secs(3));
    assert!(ok(pod.sidecar()).is_running(), "{}", pod.all_output());
    check_one_of_each(&pod, "after a crash and restart of the sidecar");
    if let Err(e) = postgres::login(&user, &pass) {
        panic!("login after the restart: {e}\n{}", pod.all_output());
    }

    let secrets = secrets_of(stack, &pod, std::slice::from_ref(&tenant.kv_data));
    let (done, _) = ok(pod.terminate_sidecar(TERM_GRACE));
    assert_eq!(done.code(), Some(0), "{}", done.logs());
    nothing_left(db, &pod.all_output());
    assert_no_leak(&secrets, &pod, stack);
}

/// What a database client saw while it kept logging in with the file's current
/// credentials.
#[derive(Default)]
struct ClientReport {
    attempts: usize,
    /// (seconds since the client started, what failed)
    failures: Vec<(f64, String)>,
    /// Users in the order seen: name, first seen, when its role was seen gone.
    users: Vec<(String, f64, Option<f64>)>,
    /// Every password used, for the leak check.
    passwords: Vec<SecretString>,
    /// Every Vault token seen in the agent's state file, for the leak check.
    tokens: Vec<SecretString>,
}

impl ClientReport {
    /// Adds the passwords and tokens seen to `secrets`.
    fn add_to(&self, secrets: &mut Secrets) {
        use secrecy::ExposeSecret;
        for p in &self.passwords {
            secrets.add("a database password", p.expose_secret());
        }
        for t in &self.tokens {
            secrets.add("a Vault token of the agent", t.expose_secret());
        }
    }
}

/// A client that, every `period` for `how_long`, reads `file` and logs in with what
/// it holds, as an app reconnecting with its current credentials does. A login that
/// fails because the file changed in between is retried once with the new content
/// (the client was not using the current credentials); any other failure counts. It
/// also notes when each replaced user's role disappears from PostgreSQL, and keeps
/// every token the agent's `state` file held, for the leak check.
fn client_loop(file: &Path, state: &Path, period: Duration, how_long: Duration) -> ClientReport {
    let read = || -> std::result::Result<(String, String), String> {
        let bytes = std::fs::read(file).map_err(|e| format!("reading the file: {e}"))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("the file is not JSON: {e}"))?;
        match (v["username"].as_str(), v["password"].as_str()) {
            (Some(u), Some(p)) => Ok((u.to_owned(), p.to_owned())),
            _ => Err("the file has no username/password".into()),
        }
    };
    let mut report = ClientReport::default();
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < how_long {
        let t = start.elapsed().as_secs_f64();
        report.attempts += 1;
        let outcome =
            read().and_then(
                |(u, p)| match postgres::login(&u, &SecretString::from(p.clone())) {
                    Ok(()) => Ok((u, p)),
                    Err(first) => {
                        let (u2, p2) = read()?;
                        if u2 == u {
                            return Err(format!("{first}"));
                        }
                        postgres::login(&u2, &SecretString::from(p2.clone()))
                            .map(|()| (u2, p2))
                            .map_err(|e| format!("{e} (after {first} with the previous file)"))
                    }
                },
            );
        match outcome {
            Ok((user, pass)) => {
                if !report.users.iter().any(|(u, _, _)| *u == user) {
                    report.users.push((user.clone(), t, None));
                    report.passwords.push(SecretString::from(pass));
                }
            }
            Err(e) => report.failures.push((t, e)),
        }
        let token = std::fs::read(state)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["token"]["token"].as_str().map(str::to_owned));
        if let Some(t) = token {
            use secrecy::ExposeSecret;
            if !report.tokens.iter().any(|x| x.expose_secret() == t) {
                report.tokens.push(SecretString::from(t));
            }
        }
        let current = report.users.last().map(|(u, _, _)| u.clone());
        for (u, _, gone) in report.users.iter_mut() {
            if gone.is_none()
                && Some(&*u) != current.as_ref()
                && !postgres::role_exists(u).unwrap_or(true)
            {
                *gone = Some(start.elapsed().as_secs_f64());
            }
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    report
}

/// Delays from each grant of the pod's database lease (the credential read, or a
/// renewal's response) to the next renewal request, in seconds.
fn renewal_delays(trail: &Trail, accessors: &[String], creds_path: &str) -> Vec<f64> {
    let mut delays = Vec::new();
    let mut granted_at: Option<f64> = None;
    for e in trail.entries.iter().filter(|e| {
        e.accessor.as_ref().is_some_and(|a| accessors.contains(a))
            && (e.path == creds_path || e.path == "sys/leases/renew")
    }) {
        match (e.kind, e.path.as_str()) {
            (audit::Kind::Request, "sys/leases/renew") => {
                if let Some(g) = granted_at.take() {
                    delays.push(e.time - g);
                }
            }
            (audit::Kind::Response, _) if e.error.is_none() => granted_at = Some(e.time),
            _ => {}
        }
    }
    delays
}

#[test]
fn database_credentials_are_renewed_and_replaced_before_max_ttl_while_a_client_keeps_logging_in() {
    const TTL: f64 = 10.0;
    const MAX_TTL: f64 = 25.0;
    let stack = stack();
    let tenant = ok(Tenant::create(
        &stack.bao,
        &Options {
            db: Some(Ttls {
                default: TTL as u64,
                max: MAX_TTL as u64,
            }),
            ..Options::default()
        },
    ));
    let db = ok(tenant.db());
    // Two replicas started together, one in each layout.
    let started = Instant::now();
    let mut pods = [
        start_pod(stack, &ok(tenant.pod(&[CLASSIC]))),
        start_pod(stack, &ok(tenant.pod(&[]))),
    ];
    assert_eq!(
        [pods[0].layout, pods[1].layout],
        [Layout::Classic, Layout::Native]
    );
    let ready_after = started.elapsed().as_secs_f64();

    let files: Vec<_> = pods
        .iter()
        .map(|p| {
            (
                ok(p.secrets_dir()).join(DB_FILE),
                ok(p.state_dir()).join(STATE_FILE),
            )
        })
        .collect();
    let reports: Vec<ClientReport> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| {
                s.spawn(move || {
                    client_loop(
                        &f.0,
                        &f.1,
                        Duration::from_millis(500),
                        Duration::from_secs(35),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });

    for (i, (pod, r)) in pods.iter().zip(&reports).enumerate() {
        let users: Vec<_> = r
            .users
            .iter()
            .map(|(u, t, g)| format!("{u} seen at {t:.1}s, gone at {g:?}"))
            .collect();
        let context = format!(
            "pod {i}: {} attempts; users:\n  {}\n{}",
            r.attempts,
            users.join("\n  "),
            pod.all_output()
        );
        assert!(
            r.failures.is_empty(),
            "the client could not log in: {:?}\n{context}",
            r.failures
        );
        assert!(
            r.users.len() >= 2,
            "the credential was never replaced in 35 s (max_ttl {MAX_TTL} s)\n{context}"
        );
        // Replaced before the first lease hit its max TTL (issued before the client
        // started, at most `ready_after` after the test began).
        let replaced = r.users[1].1;
        assert!(
            replaced < MAX_TTL,
            "replaced only {replaced:.1}s after the client started\n{context}"
        );
        // Each replaced user's role goes away soon after its replacement.
        for w in r.users.windows(2) {
            let (old, _, gone) = &w[0];
            let (_, replaced_at, _) = &w[1];
            let gone = gone.unwrap_or_else(|| {
                panic!("role {old} still exists after its replacement\n{context}")
            });
            assert!(
                gone - replaced_at <= 5.5,
                "role {old} outlived its replacement by {:.1}s\n{context}",
                gone - replaced_at
            );
        }
    }

    // Renewals: each pod renewed its lease, never later than 2/3 of the TTL, and the
    // two pods' renewals do not all fall on the exact 2/3 mark (jitter).
    let trail = ok(tenant.trail());
    let mut delays = Vec::new();
    for log in trail.logins(AUTH_MOUNT, &tenant.auth_role) {
        let accessor = log.issued_accessor().unwrap_or_default().to_owned();
        let d = renewal_delays(&trail, std::slice::from_ref(&accessor), &db.creds_path());
        delays.extend(d);
    }
    let mine = agent_requests(&trail, &tenant);
    // The old credentials were revoked by the agents (the policy allows it), not
    // left to expire: one successful revocation per replacement at least.
    let accessors = trail.login_accessors(AUTH_MOUNT, &tenant.auth_role);
    let revoked = trail
        .responses_to(&accessors)
        .iter()
        .filter(|e| {
            e.path
                .starts_with(&format!("sys/leases/revoke/{}/", db.creds_path()))
        })
        .filter(|e| e.error.is_none())
        .count();
    let replacements: usize = reports.iter().map(|r| r.users.len() - 1).sum();
    assert!(
        revoked >= replacements,
        "{revoked} successful lease revocations for {replacements} replacements:\n{}",
        audit::summary(&refs(&mine))
    );
    let renews = audit::count(&refs(&mine), "sys/leases/renew", None);
    assert!(
        renews >= 2,
        "{renews} lease renewals by the pods:\n{}",
        audit::summary(&refs(&mine))
    );
    let two_thirds = TTL * 2.0 / 3.0;
    assert!(
        delays.iter().all(|d| *d <= two_thirds + 0.3),
        "a renewal came later than 2/3 of the TTL: {delays:?}"
    );
    assert!(
        delays.iter().any(|d| two_thirds - d > 0.15),
        "every renewal fell on the 2/3 mark: no jitter across the pods: {delays:?}"
    );
    eprintln!(
        "ready after {ready_after:.1}s; renewal delays (s): {delays:.2?}; requests:\n{}",
        audit::summary(&refs(&mine))
    );

    let mut all_secrets = Vec::new();
    for (pod, r) in pods.iter().zip(&reports) {
        let mut s = secrets_of(stack, pod, std::slice::from_ref(&tenant.kv_data));
        r.add_to(&mut s);
        all_secrets.push(s);
    }
    for (pod, s) in pods.iter_mut().zip(&all_secrets) {
        let (done, _) = ok(pod.terminate_sidecar(TERM_GRACE));
        assert_eq!(done.code(), Some(0), "{}", done.logs());
        assert_no_leak(s, pod, stack);
    }
    let outputs: String = pods.iter().map(AgentPod::all_output).collect();
    nothing_left(db, &outputs);
}

#[test]
fn static_refresh_picks_up_a_kv_change_and_leaves_files_and_the_database_credential_alone() {
    const REFRESH: Duration = Duration::from_secs(2);
    let stack = stack();
    let mut tenant = ok(Tenant::create(&stack.bao, &Options::default()));
    let db = ok(tenant.db());
    let creds_path = db.creds_path();
    let mut pod = start_pod(stack, &ok(tenant.pod(&[CLASSIC, ("refresh", "2s")])));
    let dir = ok(pod.secrets_dir());
    let (kv_file, db_file) = (dir.join(KV_FILE), dir.join(DB_FILE));
    let before = (stamp(&kv_file), stamp(&db_file));
    let first = ok(tenant.trail());
    let (role, kv_api_path) = (tenant.auth_role.clone(), tenant.kv_api_path.clone());
    let kv_reads = |trail: &Trail| {
        let mine = trail.agent_requests(AUTH_MOUNT, &role);
        (
            audit::count(&mine, &kv_api_path, Some("read")),
            audit::count(&mine, &creds_path, Some("read")),
            audit::summary(&mine),
        )
    };
    let (kv_at_start, _, _) = kv_reads(&first);

    // Two and a half intervals with nothing changed: re-read, not rewritten.
    std::thread::sleep(REFRESH * 5 / 2);
    let (kv_now, creds_now, summary) = kv_reads(&ok(tenant.trail()));
    assert!(
        kv_now >= kv_at_start + 2,
        "the KV secret was read {kv_now} times (from {kv_at_start}) in 5 s with refresh 2s\n{summary}"
    );
    assert_eq!(
        creds_now, 1,
        "static refreshes issued new database credentials\n{summary}"
    );
    assert_eq!(
        (stamp(&kv_file), stamp(&db_file)),
        before,
        "a file was rewritten although nothing changed\n{}",
        pod.all_output()
    );

    // A KV change reaches the file within two intervals.
    let old_kv = tenant.kv_data.clone();
    let changed_at = Instant::now();
    let new_kv = ok(tenant.update_kv());
    ok(pod.wait_json(
        "the new KV version in the file",
        KV_FILE,
        REFRESH * 2 + Duration::from_millis(500),
        |v| *v == new_kv,
    ));
    eprintln!("KV change rendered after {:?}", changed_at.elapsed());
    let (_, creds_after, summary) = kv_reads(&ok(tenant.trail()));
    assert_eq!(
        creds_after, 1,
        "a KV change issued new database credentials\n{summary}"
    );
    assert_eq!(
        stamp(&db_file),
        before.1,
        "{DB_FILE} was rewritten by a static refresh"
    );

    let secrets = secrets_of(stack, &pod, &[old_kv, new_kv]);
    let (done, _) = ok(pod.terminate_sidecar(TERM_GRACE));
    assert_eq!(done.code(), Some(0), "{}", done.logs());
    assert_no_leak(&secrets, &pod, stack);
}

#[test]
fn sigterm_waits_the_revoke_delay_then_leaves_no_lease_and_no_role() {
    let stack = stack();
    let tenant = ok(Tenant::create(&stack.bao, &Options::default()));
    let db = ok(tenant.db());
    let mut pod = start_pod(stack, &ok(tenant.pod(&[CLASSIC, ("revoke-delay", "2s")])));
    let (user, pass) = db_creds(&pod);
    ok(postgres::login(&user, &pass).map_err(|e| sidekey_tests::Error::Failed(e.to_string())));
    assert_eq!(ok(db.leases()).len(), 1, "one lease before SIGTERM");
    let secrets = secrets_of(stack, &pod, std::slice::from_ref(&tenant.kv_data));

    // Watch the role while the sidecar shuts down.
    let sent = Instant::now();
    let (watch, (done, took)) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut last_seen = None;
            while sent.elapsed() < Duration::from_secs(15) {
                match postgres::role_exists(&user) {
                    Ok(true) => last_seen = Some(sent.elapsed()),
                    Ok(false) => return (last_seen, Some(sent.elapsed())),
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (last_seen, None)
        });
        let term = ok(pod.terminate_sidecar(TERM_GRACE));
        (watcher.join().expect("watcher"), term)
    });
    let (last_seen, gone) = watch;
    let out = format!("{}{}", done.stdout, done.stderr);
    assert_eq!(done.code(), Some(0), "{}", done.logs());
    // Polls can be late, not early: the first poll that finds the role gone bounds
    // the drop from above, so a drop before the delay shows as `gone` < 2 s.
    assert!(
        gone.is_some_and(|g| g >= Duration::from_millis(1900)),
        "the role was gone {gone:?} after SIGTERM (last seen {last_seen:?}), before the 2s revoke delay\n{out}"
    );
    assert!(
        gone.is_some_and(|g| g <= took + LEASE_REVOCATION_LAG),
        "the role was gone at {gone:?}, the sidecar exited after {took:?}\n{out}"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "exited after {took:?}, before the revoke delay\n{out}"
    );
    nothing_left(db, &pod.all_output());
    eprintln!("role last seen {last_seen:?}, gone at {gone:?}, sidecar exited after {took:?}");
    assert_no_leak(&secrets, &pod, stack);
}

#[test]
fn sigterm_with_openbao_down_exits_in_time_and_says_what_it_could_not_revoke() {
    assert!(sidekey_tests::is_root(), "needs root");
    ok(postgres::check_available());
    // Its own OpenBao, since this test kills it.
    let own = Stack::start().unwrap_or_else(|e| panic!("starting a dedicated stack: {e}"));
    let tenant = Tenant::create(&own.bao, &Options::default())
        .unwrap_or_else(|e| panic!("{e}\n{}", own.diagnostics()));
    let admitted = own.admit(&tenant.pod(&[CLASSIC]).unwrap()).unwrap();
    assert!(admitted.verdict.allowed, "{:?}", admitted.verdict);
    let mut pod = AgentPod::start(own.pod_run(&admitted.pod).unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", own.diagnostics()));
    let (user, _) = db_creds(&pod);
    let secrets = secrets_of(&own, &pod, std::slice::from_ref(&tenant.kv_data));

    // Let the sidecar settle first: it confirms the handed-over token
    // (`auth/token/lookup-self`, docs/vault-policy.md) before it serves.
    sidekey_tests::process::wait_for(
        "the sidecar's token lookup",
        Duration::from_secs(10),
        || {
            let trail = tenant.trail().ok()?;
            let mine = trail.agent_requests(AUTH_MOUNT, &tenant.auth_role);
            (audit::count(&mine, "auth/token/lookup-self", None) >= 1).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", pod.all_output()));
    std::thread::sleep(Duration::from_millis(500));
    own.bao.kill().unwrap();
    let (done, took) = pod
        .terminate_sidecar(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = format!("{}{}", done.stdout, done.stderr);
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM\n{out}"
    );
    let after_signal = out
        .lines()
        .skip_while(|l| !l.contains("SIGTERM"))
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("revok"))
        .collect::<Vec<_>>();
    assert!(
        !after_signal.is_empty()
            && after_signal
                .iter()
                .any(|l| l.contains("token") || l.contains("lease")),
        "no warning after SIGTERM says what could not be revoked\n{out}"
    );
    eprintln!(
        "exited {:?} after SIGTERM with {}; said:\n{}",
        took,
        done.status,
        after_signal.join("\n")
    );
    // OpenBao is gone, so the role it created stays until the tenant's cleanup.
    assert!(
        postgres::role_exists(&user).unwrap(),
        "the role vanished although OpenBao was down"
    );
    drop(pod);
    drop(tenant);
    assert!(
        !postgres::role_exists(&user).unwrap(),
        "cleanup left the role behind"
    );
    ok(secrets.check("the agent's output", &out));
}

#[test]
fn token_max_ttl_leads_to_a_new_login_and_new_credentials_before_the_old_ones_die() {
    const TOKEN_MAX_TTL: u64 = 20;
    let stack = stack();
    let tenant = ok(Tenant::create(
        &stack.bao,
        &Options {
            token_ttl: "10s".into(),
            token_max_ttl: format!("{TOKEN_MAX_TTL}s"),
            // The lease could outlive the token; OpenBao revokes it with the token.
            db: Some(Ttls {
                default: 30,
                max: 30,
            }),
            ..Options::default()
        },
    ));
    let db = ok(tenant.db());
    let mut pod = start_pod(stack, &ok(tenant.pod(&[CLASSIC])));
    let file = ok(pod.secrets_dir()).join(DB_FILE);
    let report = client_loop(
        &file,
        &ok(pod.state_dir()).join(STATE_FILE),
        Duration::from_millis(500),
        Duration::from_secs(TOKEN_MAX_TTL + 8),
    );
    let users: Vec<_> = report
        .users
        .iter()
        .map(|(u, t, g)| format!("{u} seen at {t:.1}s, gone at {g:?}"))
        .collect();
    let trail = ok(tenant.trail());
    let mine = agent_requests(&trail, &tenant);
    let context = format!(
        "users:\n  {}\nrequests:\n{}\n{}",
        users.join("\n  "),
        audit::summary(&refs(&mine)),
        pod.all_output()
    );
    assert!(
        report.failures.is_empty(),
        "the client could not log in: {:?}\n{context}",
        report.failures
    );
    let logins = trail.logins(AUTH_MOUNT, &tenant.auth_role).len();
    assert!(
        logins >= 2,
        "{logins} logins in {} s with token_max_ttl {TOKEN_MAX_TTL}s\n{context}",
        TOKEN_MAX_TTL + 8
    );
    assert!(
        report.users.len() >= 2,
        "the credential was not replaced before the token's end\n{context}"
    );
    assert!(
        audit::count(&refs(&mine), &db.creds_path(), Some("read")) >= 2,
        "{context}"
    );

    let mut secrets = secrets_of(stack, &pod, std::slice::from_ref(&tenant.kv_data));
    report.add_to(&mut secrets);
    assert!(
        report.tokens.len() >= 2,
        "the state file showed {} tokens across the new login",
        report.tokens.len()
    );
    let (done, _) = ok(pod.terminate_sidecar(TERM_GRACE));
    assert_eq!(done.code(), Some(0), "{}", done.logs());
    nothing_left(db, &pod.all_output());
    assert_no_leak(&secrets, &pod, stack);
}

#[test]
fn native_sidecar_passes_its_startup_probe_survives_a_crash_without_a_new_login_and_revokes_on_sigterm()
 {
    let stack = stack();
    let tenant = ok(Tenant::create(&stack.bao, &Options::default()));
    let db = ok(tenant.db());
    // The webhook's default layout: no annotation.
    let mut pod = start_pod(stack, &ok(tenant.pod(&[])));
    assert_eq!(pod.layout, Layout::Native);
    assert_eq!(ok(pod.read_json(KV_FILE)), tenant.kv_data);
    let (user, pass) = db_creds(&pod);
    if let Err(e) = postgres::login(&user, &pass) {
        panic!(
            "login with the rendered credential: {e}\n{}",
            pod.all_output()
        );
    }
    let db_file = ok(pod.secrets_dir()).join(DB_FILE);
    let rendered = stamp(&db_file);
    std::thread::sleep(Duration::from_secs(1));
    one_login_one_credential(&tenant, &pod, &user, (&db_file, rendered), "once ready");

    // The kubelet restarts a crashed native sidecar (restartPolicy: Always) and runs
    // its startup probe again; the new process carries on from the state volume.
    ok(pod.crash_sidecar());
    ok(pod.start_sidecar());
    std::thread::sleep(Duration::from_secs(2));
    assert!(ok(pod.sidecar()).is_running(), "{}", pod.all_output());
    one_login_one_credential(
        &tenant,
        &pod,
        &user,
        (&db_file, rendered),
        "after a crash and restart",
    );

    let secrets = secrets_of(stack, &pod, std::slice::from_ref(&tenant.kv_data));
    let (done, _) = ok(pod.terminate_sidecar(TERM_GRACE));
    assert_eq!(done.code(), Some(0), "{}", done.logs());
    nothing_left(db, &pod.all_output());
    assert_no_leak(&secrets, &pod, stack);
}

#[test]
fn without_the_optional_revoke_grant_a_replaced_credential_expires_on_its_own_with_one_warning() {
    const MAX_TTL: f64 = 12.0;
    let stack = stack();
    let tenant = ok(Tenant::create(
        &stack.bao,
        &Options {
            db: Some(Ttls {
                default: 6,
                max: 12,
            }),
            revoke_replaced: false,
            ..Options::default()
        },
    ));
    let db = ok(tenant.db());
    let mut pod = start_pod(stack, &ok(tenant.pod(&[CLASSIC])));
    let report = client_loop(
        &ok(pod.secrets_dir()).join(DB_FILE),
        &ok(pod.state_dir()).join(STATE_FILE),
        Duration::from_millis(500),
        Duration::from_secs(16),
    );
    let out = pod.all_output();
    assert!(
        report.failures.is_empty(),
        "the client could not log in: {:?}\n{out}",
        report.failures
    );
    assert!(report.users.len() >= 2, "never replaced in 16 s\n{out}");
    // The first credential lived until its max TTL: gone, but not before the agent
    // tried and was denied.
    let (first, _, gone) = &report.users[0];
    let gone = gone.unwrap_or_else(|| panic!("{first} outlived its max TTL\n{out}"));
    assert!(
        gone <= MAX_TTL + LEASE_REVOCATION_LAG.as_secs_f64(),
        "{first} gone only {gone:.1}s after the client started\n{out}"
    );
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("sys/leases/revoke"))
        .collect();
    let trail = ok(tenant.trail());
    let accessors = trail.login_accessors(AUTH_MOUNT, &tenant.auth_role);
    let revocations: Vec<&audit::Entry> = trail
        .responses_to(&accessors)
        .into_iter()
        .filter(|e| e.path.starts_with("sys/leases/revoke/"))
        .collect();
    assert!(
        revocations.iter().all(|e| e.error.is_some()),
        "a revocation succeeded without the grant"
    );
    // docs/vault-policy.md: "the agent logs one warning naming the path". It tries
    // only when the old credential has 2 s or more left (schedule::MIN_WORTH_REVOKING),
    // so no attempt, no warning.
    let expected = usize::from(!revocations.is_empty());
    assert_eq!(
        warnings.len(),
        expected,
        "{} denied revocation(s); warnings naming the missing sys/leases/revoke grant:\n{}\n{out}",
        revocations.len(),
        warnings.join("\n")
    );
    // How long before its max TTL the first credential was replaced (issue and
    // replacement times from the audit log).
    let issued: Vec<f64> = trail
        .responses_to(&accessors)
        .iter()
        .filter(|e| e.path == db.creds_path() && e.error.is_none())
        .map(|e| e.time)
        .collect();
    let lead = issued.get(1).map(|t1| issued[0] + MAX_TTL - t1);
    eprintln!(
        "{} replacement(s), {} denied revocation(s), {} warning(s), first credential replaced \
         {lead:.1?}s before its max TTL and gone at {gone:.1}s: {}",
        report.users.len() - 1,
        revocations.len(),
        warnings.len(),
        warnings.first().copied().unwrap_or_default()
    );

    let mut secrets = secrets_of(stack, &pod, std::slice::from_ref(&tenant.kv_data));
    report.add_to(&mut secrets);
    let (done, _) = ok(pod.terminate_sidecar(TERM_GRACE));
    assert_eq!(done.code(), Some(0), "{}", done.logs());
    nothing_left(db, &pod.all_output());
    assert_no_leak(&secrets, &pod, stack);
}
