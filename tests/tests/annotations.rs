//! Every annotation that changes what the agent does, done for real: the pod goes
//! through the webhook, runs under the harness kubelet in the native layout, and the
//! agent logs in, reads and renders against OpenBao as the annotations say.
//!
//! Several annotations share a pod where one pod can show each of them, to keep the
//! suite fast: one OpenBao, fake API server and webhook serve every test here, and
//! each test sets up its own roles, policies and secrets under its own names.
//!
//! Needs root and the built binaries (`cargo build --bins`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sidekey_agent::contract::layout;
use sidekey_tests::container::{self, ObjectKind};
use sidekey_tests::kubelet::KubeletPod;
use sidekey_tests::openbao::OpenBao;
use sidekey_tests::stack::{INIT_LIMIT, Stack, logged_accessor};
use sidekey_tests::tokenreview::ISSUER;
use sidekey_tests::{Result, podcheck, process, setup, workload};

/// An app that only waits; it prints `up` once its SIGTERM handler is set (PID 1 of a
/// container ignores a signal it has no handler for, so termination must wait for it).
const IDLE_APP: &str = "trap 'exit 0' TERM; echo up; while :; do sleep 0.1; done";

fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}", Stack::shared().diagnostics()))
}

/// A random value with the characters formats must escape.
fn tricky_secret() -> Value {
    json!({
        "password": format!("p$w\"d`-{}", sidekey_tests::random_id(20)),
        "port": 5432,
        "user": "app",
    })
}

/// `bao` as root in one OpenBao namespace (`None`: the root namespace).
struct Cli<'a> {
    bao: &'a OpenBao,
    ns: Option<&'a str>,
}

fn cli_in<'a>(bao: &'a OpenBao, ns: Option<&'a str>) -> Cli<'a> {
    Cli { bao, ns }
}

impl Cli<'_> {
    /// Runs `bao <args>` with `stdin`; its stdout.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = self.bao.command();
        if let Some(ns) = self.ns {
            cmd.env("BAO_NAMESPACE", ns);
        }
        cmd.args(args);
        let out = ok(process::run_with_stdin(
            &format!("bao {}", args.join(" ")),
            cmd,
            stdin.map(str::as_bytes),
            Duration::from_secs(20),
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the token with `accessor` is still valid in this namespace.
    fn accessor_valid(&self, accessor: &str) -> bool {
        let mut cmd = self.bao.command();
        if let Some(ns) = self.ns {
            cmd.env("BAO_NAMESPACE", ns);
        }
        cmd.args(["token", "lookup", "-accessor", accessor]);
        match process::run("bao token lookup", cmd, Duration::from_secs(20)) {
            Ok(_) => true,
            Err(e) if e.to_string().contains("invalid accessor") => false,
            Err(e) => panic!("{e}"),
        }
    }

    /// Writes policy `name`: read on `paths`.
    fn policy(&self, name: &str, paths: &[&str]) {
        let hcl: String = paths
            .iter()
            .map(|p| format!("path \"{p}\" {{\n  capabilities = [\"read\"]\n}}\n"))
            .collect();
        self.run(&["policy", "write", name, "-"], Some(&hcl));
    }
}

/// Enables kubernetes auth at `path` (against the fake API server) with role `role`.
fn kubernetes_auth(cli: &Cli<'_>, path: &str, role: &str, policy: &str) {
    let api = &Stack::shared().api;
    cli.run(
        &["auth", "enable", &format!("-path={path}"), "kubernetes"],
        None,
    );
    let config = json!({
        "kubernetes_host": api.host(),
        "kubernetes_ca_cert": api.ca_pem(),
        "disable_local_ca_jwt": true,
    });
    cli.run(
        &["write", &format!("auth/{path}/config"), "-"],
        Some(&config.to_string()),
    );
    let role_body = json!({
        "bound_service_account_names": [setup::SERVICE_ACCOUNT],
        "bound_service_account_namespaces": [setup::NAMESPACE],
        "audience": setup::AUDIENCE,
        "token_policies": [policy],
        "token_ttl": "10m",
    });
    cli.run(
        &["write", &format!("auth/{path}/role/{role}"), "-"],
        Some(&role_body.to_string()),
    );
}

/// The fixture's pod with the Sidekey annotations replaced by `annotations` (plus the
/// opt-in), the app running `app_script`.
fn annotated_pod(annotations: &[(&str, &str)], app_script: &str) -> Value {
    ok(workload::deployment_pod(
        |a| {
            a.retain(|k, _| !k.starts_with("sidekey.dev/"));
            a.insert("sidekey.dev/inject".into(), json!("true"));
            for (k, v) in annotations {
                a.insert(format!("sidekey.dev/{k}"), json!(v));
            }
        },
        app_script,
    ))
}

/// Admits `pod` through the shared webhook, checks it as the API server would.
fn admit(pod: &Value) -> Value {
    let admitted = ok(Stack::shared().admit(pod));
    assert!(admitted.verdict.allowed, "{:?}", admitted.verdict);
    ok(podcheck::check_all(&admitted.pod));
    admitted.pod
}

/// Starts an admitted pod; each of `objects` (name, key, value) exists in the pod's
/// namespace both as a Secret and as a ConfigMap.
fn start(mutated: &Value, objects: &[(&str, &str, &str)]) -> KubeletPod {
    let stack = Stack::shared();
    let mut run = ok(stack.pod_run(mutated));
    for (name, key, value) in objects {
        let data = BTreeMap::from([((*key).to_owned(), value.as_bytes().to_vec())]);
        run.add_object(ObjectKind::Secret, name, data.clone());
        run.add_object(ObjectKind::ConfigMap, name, data);
    }
    match KubeletPod::start(run, INIT_LIMIT) {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{}", stack.diagnostics()),
    }
}

fn secrets_dir(pod: &KubeletPod) -> PathBuf {
    pod.run
        .volume_path(layout::SECRETS_VOLUME)
        .expect("the agent mounts the secrets volume")
        .to_path_buf()
}

fn read(pod: &KubeletPod, file: &str) -> Vec<u8> {
    let path = secrets_dir(pod).join(file);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}\n{}", path.display(), pod.all_logs()))
}

fn json_of(pod: &KubeletPod, file: &str) -> Value {
    serde_json::from_slice(&read(pod, file)).unwrap()
}

/// Terminates the pod; every container exits 0 without SIGKILL, and the agent's token
/// is revoked. Checks the agent's output for every value in `never`.
fn stop_and_check(mut pod: KubeletPod, bao: &Cli<'_>, never: &[String]) {
    let accessor = accessor_of(&pod);
    // Both app scripts print once their SIGTERM handler is set.
    process::wait_for(
        "the app to set its SIGTERM handler",
        Duration::from_secs(10),
        || (!pod.output("app").is_empty()).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", pod.all_logs()));
    pod.terminate().unwrap_or_else(|e| panic!("{e}"));
    let agent = pod.ended(layout::SIDECAR_CONTAINER).unwrap();
    assert!(!agent.killed, "{}", pod.all_logs());
    assert_eq!(agent.finished.code(), Some(0), "{}", pod.all_logs());
    assert!(
        !bao.accessor_valid(&accessor),
        "token still valid after the pod stopped\n{}",
        pod.all_logs()
    );
    let out = pod.output(layout::SIDECAR_CONTAINER);
    for s in never.iter().filter(|s| s.len() >= 8) {
        assert!(!out.contains(s.as_str()), "the agent logged a secret value");
    }
}

/// The token accessor the agent logged (waits a little: a sidecar that adopted its
/// token from the init container logs it once it has read the state file).
fn accessor_of(pod: &KubeletPod) -> String {
    process::wait_for(
        "the agent to log its token accessor",
        Duration::from_secs(10),
        || logged_accessor(&pod.output(layout::SIDECAR_CONTAINER)),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", pod.all_logs()))
}

fn values(data: &Value) -> Vec<String> {
    data.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str().map(str::to_owned))
        .collect()
}

/// `auth-method: jwt` at a non-default `auth-path`: OpenBao checks the projected token's
/// signature itself against the cluster's public key, and binds the role to the
/// token's claims. The role exists only on that mount, so the render proves the agent
/// logged in there.
#[test]
fn jwt_auth_method_at_a_custom_auth_path_logs_in_without_the_token_review_api() {
    let stack = Stack::shared();
    let root = cli_in(&stack.bao, None);
    let data = tricky_secret();
    ok(stack.bao.kv_put("secret/annot-jwt", &data));
    root.policy("annot-jwt", &["secret/data/annot-jwt"]);
    root.run(&["auth", "enable", "-path=k8s-jwt", "jwt"], None);
    let config = json!({
        "jwt_validation_pubkeys": [stack.api.key().public_pem()],
        "bound_issuer": ISSUER,
    });
    root.run(
        &["write", "auth/k8s-jwt/config", "-"],
        Some(&config.to_string()),
    );
    let role = json!({
        "role_type": "jwt",
        "user_claim": "sub",
        "bound_audiences": [setup::AUDIENCE],
        "bound_claims": {
            "/kubernetes.io/namespace": setup::NAMESPACE,
            "/kubernetes.io/serviceaccount/name": setup::SERVICE_ACCOUNT,
        },
        "token_policies": ["annot-jwt"],
        "token_ttl": "10m",
    });
    root.run(
        &["write", "auth/k8s-jwt/role/jwt-app", "-"],
        Some(&role.to_string()),
    );

    let mutated = admit(&annotated_pod(
        &[
            ("role", "jwt-app"),
            ("auth-method", "jwt"),
            ("auth-path", "auth/k8s-jwt"),
            ("secret-creds", "secret/data/annot-jwt"),
        ],
        IDLE_APP,
    ));
    let pod = start(&mutated, &[]);
    assert_eq!(json_of(&pod, "creds"), data);
    stop_and_check(pod, &root, &values(&data));
}

/// `vault-namespace`: auth and KV live in an OpenBao namespace; the agent sends the
/// namespace with the login and the read. Kubernetes auth there is mounted at a
/// non-default `auth-path` too.
#[test]
fn vault_namespace_sends_login_and_reads_to_that_namespace() {
    let stack = Stack::shared();
    let root = cli_in(&stack.bao, None);
    root.run(&["namespace", "create", "team-a"], None);
    let ns = cli_in(&stack.bao, Some("team-a"));
    ns.run(&["secrets", "enable", "-path=kv", "kv-v2"], None);
    let data = tricky_secret();
    ns.run(&["kv", "put", "kv/app", "-"], Some(&data.to_string()));
    ns.policy("annot-ns", &["kv/data/app"]);
    kubernetes_auth(&ns, "k8s-team", "team-app", "annot-ns");
    // The same path in the root namespace does not exist: a read there would fail.

    let mutated = admit(&annotated_pod(
        &[
            ("role", "team-app"),
            ("auth-path", "auth/k8s-team"),
            ("vault-namespace", "team-a"),
            ("secret-ns", "kv/data/app"),
        ],
        IDLE_APP,
    ));
    let pod = start(&mutated, &[]);
    assert_eq!(json_of(&pod, "ns"), data);
    stop_and_check(pod, &ns, &values(&data));
}

/// `vault-addr` and `ca-cert`: the pod talks to a second OpenBao with its own CA, which
/// the pod trusts through a Secret volume (then a ConfigMap; without either, the
/// certificate is not trusted); `tls-server-name` verifies its certificate
/// against `localhost` while connecting to 127.0.0.1, and a name the certificate lacks
/// fails the TLS handshake.
#[test]
fn vault_addr_ca_cert_and_tls_server_name_reach_another_vault() {
    let stack = Stack::shared();
    let other = ok(OpenBao::start());
    let data = ok(setup::configure(&other, &stack.api)).data;
    let other_ca = ok(other.ca_pem());
    assert_ne!(
        other_ca,
        ok(stack.bao.ca_pem()),
        "the two servers share a CA"
    );

    let annotations = |server_name: &'static str| {
        let mut a = vec![
            ("role", setup::ROLE),
            ("vault-addr", other.addr()),
            ("ca-cert", "secret:other-vault-ca/ca.crt"),
            ("tls-server-name", server_name),
            ("secret-app.json", setup::KV_API_PATH),
        ];
        if server_name != "localhost" {
            a.push(("agent-mode", "init-only"));
        }
        a
    };
    let objects = [("other-vault-ca", "ca.crt", other_ca.as_str())];

    let mutated = admit(&annotated_pod(&annotations("localhost"), IDLE_APP));
    let agent = workload::container(&mutated, "initContainers", layout::SIDECAR_CONTAINER).unwrap();
    assert!(
        agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == layout::CA_MOUNT_PATH && m["readOnly"] == true),
        "{agent}"
    );
    let app = workload::container(&mutated, "containers", "app").unwrap();
    assert!(
        !app.to_string().contains(layout::CA_VOLUME),
        "the CA volume must be agent-only"
    );
    let pod = start(&mutated, &objects);
    assert_eq!(json_of(&pod, "app.json"), data);
    stop_and_check(pod, &cli_in(&other, None), &values(&data));

    // The same CA from a ConfigMap.
    let from_configmap: Vec<_> = annotations("localhost")
        .into_iter()
        .map(|(k, v)| match k {
            "ca-cert" => (k, "configmap:other-vault-ca/ca.crt"),
            _ => (k, v),
        })
        .collect();
    let mutated = admit(&annotated_pod(&from_configmap, IDLE_APP));
    let ca_volume = mutated["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == layout::CA_VOLUME)
        .expect("the CA volume");
    assert_eq!(
        ca_volume["configMap"]["name"], "other-vault-ca",
        "{ca_volume}"
    );
    let pod = start(&mutated, &objects);
    assert_eq!(json_of(&pod, "app.json"), data);
    stop_and_check(pod, &cli_in(&other, None), &values(&data));

    // A name not in the certificate: the handshake fails, the init container says so.
    let log = init_fails(&annotations("vault.example"), &objects);
    assert!(
        log.contains("name mismatch") && log.contains("vault.tls_server_name"),
        "the failure does not say why\n{log}"
    );
    // Without ca-cert the webhook's CA (the first OpenBao's) applies: not trusted. The
    // two dev CAs carry the same name, so rustls reports a bad signature rather than an
    // unknown issuer.
    let without_ca: Vec<_> = annotations("vault.example")
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "ca-cert" | "tls-server-name"))
        .collect();
    let log = init_fails(&without_ca, &[]);
    assert!(
        log.contains("not trusted") && log.contains("vault.ca_pem"),
        "the failure does not say why\n{log}"
    );
}

/// Runs the `sidekey-init` container of a pod annotated with `annotations` (which must
/// ask for `init-only`) with a 3 s deadline; it must fail, render nothing, and its log
/// is returned.
fn init_fails(annotations: &[(&str, &str)], objects: &[(&str, &str, &str)]) -> String {
    let mut mutated = admit(&annotated_pod(annotations, "true"));
    let init = mutated["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == layout::INIT_CONTAINER)
        .expect("an init-only pod");
    // Shorter than the default 2m deadline, to fail fast.
    init["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "SIDEKEY_INIT_DEADLINE", "value": "3s"}));
    let mut run = ok(Stack::shared().pod_run(&mutated));
    for (name, key, value) in objects {
        let data = BTreeMap::from([((*key).to_owned(), value.as_bytes().to_vec())]);
        run.add_object(ObjectKind::Secret, name, data);
    }
    let done = ok(run.run(layout::INIT_CONTAINER, Duration::from_secs(20)));
    assert_eq!(done.code(), Some(1), "{}", done.logs());
    assert!(
        !secrets_dir_has(&run, "app.json"),
        "rendered despite the failed handshake"
    );
    done.logs()
}

fn secrets_dir_has(run: &container::PodRun, file: &str) -> bool {
    run.volume_path(layout::SECRETS_VOLUME)
        .is_some_and(|d| d.join(file).exists())
}

/// A loopback HTTP listener that answers 200 and records `(path, X-Sidekey-Secret)`.
struct Listener {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Listener {
    fn start() -> Listener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        // The thread ends with the test binary; each connection is bounded by timeouts.
        std::thread::spawn(move || {
            for stream in l.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut secret = String::new();
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                    if k.eq_ignore_ascii_case("x-sidekey-secret") {
                        secret = v.trim().to_owned();
                    }
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length.min(4096)];
                let _ = reader.read_exact(&mut body);
                into.lock().unwrap().push((path, secret));
                let _ = (&stream).write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Listener { port, seen }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// `file-` with a sub-path, `perms-`, every `format-`, `refresh`/`refresh-`, and
/// `notify-` over HTTP (to a listener of the test: the pod's containers share the
/// host's loopback here, as a pod's share theirs) and exec (a program of the agent's
/// own image, `/sidekey-agent --version`, which exits 0), on one pod.
#[test]
fn file_perms_format_refresh_and_notify_shape_each_rendered_file() {
    let stack = Stack::shared();
    let data = tricky_secret();
    ok(stack.bao.kv_put("secret/annot-files", &data));
    ok(stack.bao.kv_put("secret/annot-fast", &tricky_secret()));
    ok(stack.bao.kv_put("secret/annot-slow", &tricky_secret()));
    let root = cli_in(&stack.bao, None);
    root.policy(
        "annot-files",
        &[
            "secret/data/annot-files",
            "secret/data/annot-fast",
            "secret/data/annot-slow",
        ],
    );
    kubernetes_auth(&root, "k8s-files", "files", "annot-files");
    let listener = Listener::start();
    let notify_url = format!("http://127.0.0.1:{}/-/reload", listener.port);

    let path = "secret/data/annot-files";
    let mutated = admit(&annotated_pod(
        &[
            ("role", "files"),
            ("auth-path", "auth/k8s-files"),
            ("refresh", "1h"),
            ("secret-db", path),
            ("file-db", "db/config.json"),
            ("perms-db", "0400"),
            ("secret-yaml", path),
            ("format-yaml", "yaml"),
            ("secret-env", path),
            ("format-env", "dotenv"),
            ("file-env", "app.env"),
            ("secret-props", path),
            ("format-props", "properties"),
            ("secret-pw", path),
            ("format-pw", "key:password"),
            ("secret-fast", "secret/data/annot-fast"),
            ("refresh-fast", "1s"),
            ("notify-fast", &notify_url),
            ("secret-fastpw", "secret/data/annot-fast"),
            ("format-fastpw", "key:password"),
            ("notify-fastpw", r#"exec:["/sidekey-agent", "--version"]"#),
            ("secret-slow", "secret/data/annot-slow"),
        ],
        IDLE_APP,
    ));
    let pod = start(&mutated, &[]);
    let pw = data["password"].as_str().unwrap();
    let pw_json = serde_json::to_string(pw).unwrap();

    // file- with a sub-path and perms-: 0400, the agent's user, unreadable by the app.
    let db = secrets_dir(&pod).join("db/config.json");
    let meta = std::fs::metadata(&db).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    assert_eq!(meta.uid(), container::IMAGE_USER);
    assert_eq!(
        String::from_utf8(read(&pod, "db/config.json")).unwrap(),
        format!("{{\n  \"password\": {pw_json},\n  \"port\": 5432,\n  \"user\": \"app\"\n}}\n")
    );
    assert!(container::read_as_uid(&db, 1000).is_err());
    // The others keep the default 0644.
    let env_mode = std::fs::metadata(secrets_dir(&pod).join("app.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(env_mode & 0o777, 0o644);

    // format-: exact bytes.
    let text = |f: &str| String::from_utf8(read(&pod, f)).unwrap();
    assert_eq!(
        text("yaml"),
        format!("\"password\": {pw_json}\n\"port\": 5432\n\"user\": \"app\"\n")
    );
    let shell = pw
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "\\$")
        .replace('`', "\\`");
    assert_eq!(
        text("app.env"),
        format!("password=\"{shell}\"\nport=\"5432\"\nuser=\"app\"\n")
    );
    assert_eq!(
        text("props"),
        format!("password={pw}\nport=5432\nuser=app\n")
    );
    assert_eq!(text("pw"), pw);

    // refresh-fast (1s) picks up a change within two intervals; the pod's refresh (1h)
    // keeps the slow secret as it was.
    let slow_before = read(&pod, "slow");
    ok(stack.bao.kv_put("secret/annot-slow", &tricky_secret()));
    let fast = tricky_secret();
    let changed_at = Instant::now();
    ok(stack.bao.kv_put("secret/annot-fast", &fast));
    let fast_pw = fast["password"].as_str().unwrap().to_owned();
    let took = process::wait_for(
        "the fast secret to refresh",
        Duration::from_secs(10),
        || {
            (std::fs::read(secrets_dir(&pod).join("fastpw")).ok()? == fast_pw.as_bytes())
                .then(|| changed_at.elapsed())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", pod.all_logs()));
    assert!(
        took <= Duration::from_secs(2) + Duration::from_millis(500),
        "{took:?}"
    );
    assert_eq!(json_of(&pod, "fast"), fast);

    // notify-: the HTTP listener got a POST naming the secret, and the exec ran.
    process::wait_for("the HTTP notification", Duration::from_secs(10), || {
        listener
            .seen()
            .iter()
            .any(|(p, s)| p == "/-/reload" && s == "fast")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", listener.seen(), pod.all_logs()));
    process::wait_for("the exec notification", Duration::from_secs(10), || {
        let out = pod.output(layout::SIDECAR_CONTAINER);
        out.lines()
            .any(|l| {
                l.contains("app notified of the change")
                    && l.contains("secret.name=\"fastpw\"")
                    && l.contains("notify.kind=\"command\"")
            })
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pod.all_logs()));
    assert!(
        !listener.seen().iter().any(|(_, s)| s != "fast"),
        "only notify-fast posts: {:?}",
        listener.seen()
    );
    assert_eq!(
        read(&pod, "slow"),
        slow_before,
        "refresh 1h re-read the slow secret"
    );

    let mut never = values(&data);
    never.push(fast_pw);
    stop_and_check(pod, &root, &never);
}

/// `mount-path`, `containers`, `init-first: "false"` and `revoke-delay` on one pod:
/// only the named container sees the secrets, at the chosen path; the pod's own init
/// container runs before the agent; the token outlives SIGTERM by the delay.
#[test]
fn mount_path_containers_init_first_and_revoke_delay_place_and_time_the_agent() {
    let stack = Stack::shared();
    let data = tricky_secret();
    ok(stack.bao.kv_put("secret/annot-place", &data));
    let root = cli_in(&stack.bao, None);
    root.policy("annot-place", &["secret/data/annot-place"]);
    kubernetes_auth(&root, "k8s-place", "place", "annot-place");

    let app_script = workload::watch_script("/run/secrets/app/cfg");
    let mut pod_spec = annotated_pod(
        &[
            ("role", "place"),
            ("auth-path", "auth/k8s-place"),
            ("secret-cfg", "secret/data/annot-place"),
            ("mount-path", "/run/secrets/app"),
            ("containers", "app"),
            ("init-first", "false"),
            ("revoke-delay", "2s"),
        ],
        &app_script,
    );
    // A second app container that must not get the secrets.
    let mut other = pod_spec["spec"]["containers"][0].clone();
    other["name"] = json!("other");
    workload::run_script(
        &mut other,
        "if [ -e /run/secrets/app ] || [ -e /vault/secrets ]; then echo has-secrets; \
         else echo no-secrets; fi; trap 'exit 0' TERM; while :; do sleep 0.1; done",
    );
    pod_spec["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(other);

    let mutated = admit(&pod_spec);
    // init-first false: the agent goes after the pod's own init container.
    assert_eq!(
        workload::names(&mutated, "initContainers"),
        ["migrate", layout::SIDECAR_CONTAINER]
    );
    let mut pod = start(&mutated, &[]);
    assert_eq!(
        pod.start_order(),
        ["migrate", layout::SIDECAR_CONTAINER, "app", "other"]
    );
    let migrate = pod.ended("migrate").unwrap();
    assert!(pod.probe_time(layout::SIDECAR_CONTAINER).is_some());
    assert_eq!(migrate.finished.code(), Some(0));

    // mount-path: the app reads at /run/secrets/app; containers: "other" sees nothing.
    let bytes = read(&pod, "cfg");
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), data);
    let line = workload::seen_line(&bytes);
    process::wait_for(
        "the app to read its secret",
        Duration::from_secs(10),
        || {
            (pod.output("app").contains(&line) && pod.output("other").contains("-secrets"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", pod.all_logs()));
    assert!(
        pod.output("other").contains("no-secrets"),
        "{}",
        pod.output("other")
    );

    // revoke-delay: after the app stopped and the agent got SIGTERM, the token stays
    // valid for the delay, then is revoked.
    let accessor = accessor_of(&pod);
    let checker = {
        let accessor = accessor.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1200));
            Stack::shared().bao.accessor_valid(&accessor)
        })
    };
    let took = pod.terminate().unwrap_or_else(|e| panic!("{e}"));
    let valid_during_delay = checker.join().unwrap();
    assert!(
        ok(valid_during_delay),
        "the token was revoked before the delay ran out\n{}",
        pod.all_logs()
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let agent = pod.ended(layout::SIDECAR_CONTAINER).unwrap();
    assert_eq!(agent.finished.code(), Some(0), "{}", pod.all_logs());
    assert!(!agent.killed);
    assert!(pod.ended("app").unwrap().at < agent.at);
    assert!(
        !ok(stack.bao.accessor_valid(&accessor)),
        "not revoked after the delay"
    );
}
