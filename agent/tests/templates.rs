//! Drop-in check against the incumbent: pods annotated the way the Vault Agent
//! Injector's documentation shows are rendered by Sidekey (annotations translated by the
//! contract, templates run by the agent binary) and by `bao agent`, which embeds the
//! consul-template code the Vault Agent Injector runs, from the same templates against
//! the same OpenBao. Data that stays put between the two reads (KV v1 and v2, a database
//! static role) must match byte for byte; freshly issued values (dynamic database
//! credentials, PKI certificates) are compared by structure.
//!
//! Needs `<workspace>/.venv/bin/bao` (or `SIDEKEY_BAO`) and PostgreSQL at
//! 127.0.0.1:5432 (user postgres, trust).

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::json;
use sidekey_agent::contract::{
    annotations::{self, Defaults},
    config::AgentConfig,
};

const DATA: &str = r#"{
  "user": "app",
  "password": "p@ss w\"rd<&>$x",
  "port": 5432,
  "ratio": 0.5,
  "enabled": true,
  "tags": ["a", "b c"],
  "nested": {"k": "v", "n": 1},
  "empty": "",
  "yes": "yes",
  "multi": "line1\nline2",
  "b64": "aGVsbG8gd29ybGQ=",
  "hosts": " db1, db2 ,db3 "
}"#;

/// KV v1 and v2 data, a policy and role `tmpl` that may use everything, and the
/// database engine with a static role (a PostgreSQL login created here) and a dynamic
/// one. Returns the static login's name.
fn setup(bao: &Bao, work: &Path) -> String {
    bao.ok_stdin(
        &["policy", "write", "tmpl", "-"],
        r#"path "*" { capabilities = ["create", "read", "update", "list"] }"#,
    );
    bao.ok(&[
        "write",
        "auth/kubernetes/role/tmpl",
        &format!("bound_service_account_names={SERVICE_ACCOUNT}"),
        &format!("bound_service_account_namespaces={NAMESPACE}"),
        "policies=tmpl",
        "ttl=1h",
    ]);
    let data = work.join("data.json");
    std::fs::write(&data, DATA).unwrap();
    let at = format!("@{}", data.display());
    bao.ok(&["kv", "put", "secret/app", &at]);
    bao.ok(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    bao.ok(&["write", "kv1/app", &at]);

    bao.ok(&["secrets", "enable", "database"]);
    bao.ok(&[
        "write",
        "database/config/pg",
        "plugin_name=postgresql-database-plugin",
        "connection_url=postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable",
        "username=postgres",
        "password=unused-with-trust",
        "allowed_roles=*",
    ]);
    bao.ok(&[
        "write",
        "database/roles/app",
        "db_name=pg",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        "default_ttl=10m",
        "max_ttl=1h",
    ]);
    // One login per setup: the tests of this binary run in parallel against one
    // PostgreSQL, and a shared role would be dropped under another test's feet.
    static SETUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SETUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let login = format!("sk_static_{}_{n}", std::process::id());
    psql(&format!(
        "DROP ROLE IF EXISTS {login}; CREATE ROLE {login} LOGIN PASSWORD 'initial'"
    ));
    bao.ok(&[
        "write",
        "database/static-roles/static-app",
        "db_name=pg",
        &format!("username={login}"),
        "rotation_period=24h",
    ]);
    login
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atc",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Vault Agent Injector annotations of a pod, plus the opt-in and role.
fn pod(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = [
        ("vault.hashicorp.com/agent-inject", "true"),
        ("vault.hashicorp.com/role", "tmpl"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    a.retain(|_, v| !v.is_empty());
    a
}

/// The agent configuration the webhook would give this pod, pointed at `work`.
fn sidekey_config(bao: &Bao, work: &Path, pod: &BTreeMap<String, String>) -> AgentConfig {
    let defaults = Defaults {
        vault_addr: bao.addr.clone(),
        vault_ca_pem: Some(std::fs::read_to_string(bao.ca_path()).unwrap()),
    };
    let (translated, _warnings) =
        sidekey_agent::contract::compat::translate(pod).expect("the pod translates");
    let mut config = annotations::agent_config(pod, &defaults).expect("the pod is accepted");
    assert!(translated.keys().all(|k| k.starts_with("sidekey.dev/")));
    let base = bao.config(work, Vec::new());
    config.auth.jwt_path = base.auth.jwt_path;
    config.secrets_dir = base.secrets_dir;
    config.state_dir = base.state_dir;
    config
}

/// Runs Sidekey's init container for `pod`; returns the secrets directory.
fn run_sidekey(bao: &Bao, work: &Path, pod: &BTreeMap<String, String>) -> PathBuf {
    let config = sidekey_config(bao, work, pod);
    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "30s");
    let (out, _) = run_bounded(cmd, Duration::from_secs(45));
    assert!(
        out.status.success(),
        "sidekey init failed: {}",
        stderr(&out)
    );
    PathBuf::from(&config.secrets_dir)
}

/// Runs `bao agent` with the configuration the Vault Agent Injector generates for the
/// same pod (auto-auth with the Kubernetes method, one template per secret, exit after
/// the first render); returns the directory it rendered into.
fn run_incumbent(bao: &Bao, work: &Path, config: &AgentConfig) -> PathBuf {
    let out_dir = work.join("incumbent");
    std::fs::create_dir_all(&out_dir).unwrap();
    let templates: Vec<serde_json::Value> = config
        .secrets
        .iter()
        .map(|s| {
            json!({
                "destination": out_dir.join(&s.file).display().to_string(),
                "contents": s.template.as_deref().expect("translated secrets have templates"),
                "left_delimiter": "{{",
                "right_delimiter": "}}",
            })
        })
        .collect();
    let agent_config = json!({
        "auto_auth": {
            "method": {
                "type": "kubernetes",
                "mount_path": "auth/kubernetes",
                "config": {"role": config.auth.role, "token_path": config.auth.jwt_path},
            },
            "sink": [{"type": "file", "config": {"path": work.join("bao-token").display().to_string()}}],
        },
        "exit_after_auth": true,
        "pid_file": work.join("bao-agent.pid").display().to_string(),
        "vault": {"address": bao.addr, "ca_cert": bao.ca_path().display().to_string()},
        "template_config": {"exit_on_retry_failure": true},
        "template": templates,
    });
    let path = work.join("bao-agent.json");
    std::fs::write(&path, agent_config.to_string()).unwrap();
    let mut cmd = Command::new(&bao.bin);
    cmd.arg("agent")
        .arg(format!("-config={}", path.display()))
        .env_remove("BAO_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (out, _) = run_bounded(cmd, Duration::from_secs(45));
    assert!(
        out.status.success(),
        "bao agent failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out_dir
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

const HELPERS: &str = r#"{{- with secret "secret/data/app" -}}
{{ .Data.data | toJSON }}
{{ .Data.data | toJSONPretty }}
{{ .Data.data | toYAML }}
b64={{ .Data.data.b64 | base64Decode }} enc={{ "a&b" | base64Encode }}
{{ range $i, $h := split "," .Data.data.hosts }}{{ $i }}={{ $h | trimSpace }};{{ end }}
joined={{ split "," .Data.data.hosts | join "+" }}
{{ if .Data.data.tags | contains "b c" }}has-b-c{{ end }} {{ if .Data.data.password | contains "<&>" }}has-sym{{ end }}
{{ .Data.data.password | replaceAll "$" "\\$" }}
{{ index .Data.data "b64" }} {{ index .Data.data.tags 1 }} {{ len .Data.data.tags }}
{{ printf "%q %v %s %d" .Data.data.user .Data.data.port .Data.data.ratio 7 }}
{{ $u := .Data.data.user }}{{ if eq $u "app" }}user-is-app{{ else }}other{{ end }}
{{ if eq .Data.data.port "5432" }}port-is-a-string{{ end }}
{{ .Data.metadata.version }} {{ .Data.data.nested }} {{ .Data.data.tags }} {{ .Data.data.enabled }}
{{- end }}
"#;

#[test]
fn static_data_renders_byte_for_byte_like_bao_agent() {
    let bao = Bao::start();
    let work = tempfile::tempdir().unwrap();
    let login = setup(&bao, work.path());
    let pod = pod(&[
        // The default "map" template, for KV v2 and KV v1.
        (
            "vault.hashicorp.com/agent-inject-secret-config.txt",
            "secret/data/app",
        ),
        ("vault.hashicorp.com/agent-inject-secret-kv1", "kv1/app"),
        // The KV v2 form without /data/, which both shim.
        (
            "vault.hashicorp.com/agent-inject-secret-short",
            "secret/app",
        ),
        // Templates as the injector's documentation writes them.
        (
            "vault.hashicorp.com/agent-inject-secret-database-config.txt",
            "secret/data/app",
        ),
        (
            "vault.hashicorp.com/agent-inject-template-database-config.txt",
            "{{- with secret \"secret/data/app\" -}}\n  postgresql://{{ .Data.data.user }}:{{ .Data.data.password }}@postgres:5432/wizard\n{{- end -}}\n",
        ),
        (
            "vault.hashicorp.com/agent-inject-template-app.env",
            "{{ with secret \"secret/data/app\" }}{{ range $k, $v := .Data.data }}export {{ $k }}={{ $v | printf \"%q\" }}\n{{ end }}{{ end }}",
        ),
        ("vault.hashicorp.com/agent-inject-template-helpers", HELPERS),
        (
            "vault.hashicorp.com/agent-inject-template-static-db",
            "{{- with secret \"database/static-creds/static-app\" -}}\npostgresql://{{ .Data.username }}:{{ .Data.password }}@127.0.0.1:5432/postgres?sslmode=disable\n{{ end -}}\n",
        ),
        (
            "vault.hashicorp.com/agent-inject-file-static-db",
            "db/static.url",
        ),
    ]);
    let config = sidekey_config(&bao, work.path(), &pod);
    let ours = run_sidekey(&bao, work.path(), &pod);
    let theirs = run_incumbent(&bao, work.path(), &config);
    for s in &config.secrets {
        assert_eq!(
            read(&ours, &s.file),
            read(&theirs, &s.file),
            "{} differs from bao agent's",
            s.file
        );
    }
    // The comparison is not vacuous.
    let map = read(&ours, "config.txt");
    assert!(map.starts_with("data: map[b64:"), "{map}");
    assert!(map.contains("\nmetadata: map[created_time:"), "{map}");
    assert!(read(&ours, "helpers").contains("port-is-a-string"));
    assert!(read(&ours, "db/static.url").contains(&login));
    psql(&format!("DROP ROLE IF EXISTS {login}"));
}

#[test]
fn the_json_default_template_matches_bao_agent() {
    let bao = Bao::start();
    let work = tempfile::tempdir().unwrap();
    let login = setup(&bao, work.path());
    let pod = pod(&[
        ("vault.hashicorp.com/agent-inject-default-template", "json"),
        (
            "vault.hashicorp.com/agent-inject-secret-app.json",
            "secret/data/app",
        ),
        (
            "vault.hashicorp.com/agent-inject-secret-kv1.json",
            "kv1/app",
        ),
    ]);
    let config = sidekey_config(&bao, work.path(), &pod);
    let ours = run_sidekey(&bao, work.path(), &pod);
    let theirs = run_incumbent(&bao, work.path(), &config);
    for file in ["app.json", "kv1.json"] {
        assert_eq!(read(&ours, file), read(&theirs, file), "{file}");
    }
    assert!(read(&ours, "app.json").contains("\\u003c\\u0026\\u003e"));
    psql(&format!("DROP ROLE IF EXISTS {login}"));
}

/// The `BEGIN`/`END` blocks of a PEM text, in order.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let Some(end_rel) = rest[start..].find("-----END ") else {
            break;
        };
        let end = start + end_rel;
        let close = end + rest[end..][5..].find("-----").unwrap() + 10;
        blocks.push(rest[start..close].to_owned());
        rest = &rest[close..];
    }
    blocks
}

/// The text with every PEM block replaced by its type, for a structural comparison.
fn shape(text: &str) -> String {
    let mut out = text.to_owned();
    for b in pem_blocks(text) {
        let kind = b.lines().next().unwrap_or("").to_owned();
        out = out.replacen(&b, &format!("<{kind}>"), 1);
    }
    out
}

#[test]
fn dynamic_credentials_and_a_chained_certificate_match_bao_agent_by_structure() {
    let bao = Bao::start();
    let work = tempfile::tempdir().unwrap();
    let login = setup(&bao, work.path());
    // A root and an intermediate CA: certificates come with a chain.
    bao.ok(&["secrets", "enable", "pki"]);
    bao.ok(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
    bao.ok(&[
        "write",
        "pki/root/generate/internal",
        "common_name=Sidekey Test Root",
        "ttl=87600h",
    ]);
    bao.ok(&["secrets", "enable", "-path=pki_int", "pki"]);
    bao.ok(&["secrets", "tune", "-max-lease-ttl=43800h", "pki_int"]);
    let csr = bao.ok(&[
        "write",
        "-field=csr",
        "pki_int/intermediate/generate/internal",
        "common_name=Sidekey Test Intermediate",
    ]);
    std::fs::write(work.path().join("int.csr"), csr.trim()).unwrap();
    let signed = bao.ok(&[
        "write",
        "-field=certificate",
        "pki/root/sign-intermediate",
        &format!("csr=@{}", work.path().join("int.csr").display()),
        "format=pem_bundle",
        "ttl=43800h",
    ]);
    std::fs::write(work.path().join("int.pem"), signed.trim()).unwrap();
    bao.ok(&[
        "write",
        "pki_int/intermediate/set-signed",
        &format!("certificate=@{}", work.path().join("int.pem").display()),
    ]);
    bao.ok(&[
        "write",
        "pki_int/roles/web",
        "allowed_domains=demo.svc",
        "allow_subdomains=true",
        "max_ttl=1h",
    ]);

    let pod = pod(&[
        // Dynamic credentials with the default template, and read twice in one template.
        (
            "vault.hashicorp.com/agent-inject-secret-db-creds",
            "database/creds/app",
        ),
        (
            "vault.hashicorp.com/agent-inject-template-db-url",
            "{{- with secret \"database/creds/app\" -}}\npostgresql://{{ .Data.username }}:\
             {{- end }}{{ with secret \"database/creds/app\" }}{{ .Data.password }}{{ end -}}\
             @127.0.0.1:5432/postgres\n",
        ),
        (
            "vault.hashicorp.com/agent-inject-template-cert.pem",
            "{{- with secret \"pki_int/issue/web\" \"common_name=web.demo.svc\" \"ttl=1h\" -}}\n\
             {{ .Data.certificate }}\n{{ range .Data.ca_chain }}{{ . }}\n{{ end }}{{ end }}",
        ),
        (
            "vault.hashicorp.com/agent-inject-template-key.pem",
            "{{ with secret \"pki_int/issue/web\" \"common_name=web.demo.svc\" \"ttl=1h\" }}{{ .Data.private_key }}{{ end }}\n",
        ),
        (
            "vault.hashicorp.com/agent-inject-template-bundle.pem",
            "{{ with pkiCert \"pki_int/issue/web\" \"common_name=bundle.demo.svc\" }}{{ .Cert }}{{ .Key }}{{ .CA }}{{ end }}",
        ),
        ("vault.hashicorp.com/agent-inject-perms-key.pem", "0400"),
    ]);
    let config = sidekey_config(&bao, work.path(), &pod);
    let before = count_requests(&bao, "database/creds/app");
    let issued_before = count_requests(&bao, "pki_int/issue/web");
    let ours = run_sidekey(&bao, work.path(), &pod);
    // One lease for the three reads of the database credential, one certificate for
    // the two templates that issue the same one.
    assert_eq!(count_requests(&bao, "database/creds/app") - before, 1);
    assert_eq!(count_requests(&bao, "pki_int/issue/web") - issued_before, 2);
    let theirs = run_incumbent(&bao, work.path(), &config);

    let creds = read(&ours, "db-creds");
    let keys = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split_once(": ").map_or("", |(k, _)| k).to_owned())
            .collect()
    };
    assert_eq!(keys(&creds), keys(&read(&theirs, "db-creds")), "{creds}");
    assert_eq!(keys(&creds), ["password", "username"]);
    let user = creds
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("username: ")
        .unwrap();
    let url = read(&ours, "db-url");
    assert!(
        url.starts_with(&format!("postgresql://{user}:")),
        "one credential: {url}"
    );
    let url_shape = |u: &str| u.split(['/', ':', '@']).count();
    assert_eq!(url_shape(&url), url_shape(&read(&theirs, "db-url")));

    for file in ["cert.pem", "key.pem", "bundle.pem"] {
        let (a, b) = (read(&ours, file), read(&theirs, file));
        assert_eq!(shape(&a), shape(&b), "{file}:\n{a}\n---\n{b}");
    }
    let chain_ours = pem_blocks(&read(&ours, "cert.pem"));
    let chain_theirs = pem_blocks(&read(&theirs, "cert.pem"));
    assert_eq!(chain_ours.len(), 3, "leaf, intermediate and root");
    assert_eq!(chain_ours[1..], chain_theirs[1..], "the same CA chain");
    assert_ne!(
        chain_ours[0], chain_theirs[0],
        "each issued its own certificate"
    );
    assert_eq!(mode_of(&ours.join("key.pem")), 0o400);
    let bundle = pem_blocks(&read(&ours, "bundle.pem"));
    assert_eq!(bundle.len(), 3);
    assert!(bundle[1].contains("PRIVATE KEY"));
    psql(&format!("DROP ROLE IF EXISTS {login}"));
}

#[test]
fn a_failing_template_keeps_the_file_and_names_template_path_and_key() {
    let bao = Bao::start();
    let work = tempfile::tempdir().unwrap();
    let login = setup(&bao, work.path());
    let pod = pod(&[(
        "vault.hashicorp.com/agent-inject-template-bad",
        "{{ with secret \"secret/data/app\" }}{{ .Data.data.password }}{{ .Data.data.pasword }}{{ end }}",
    )]);
    let config = sidekey_config(&bao, work.path(), &pod);
    let file = Path::new(&config.secrets_dir).join("bad");
    std::fs::write(&file, "last good\n").unwrap();
    let mut cmd = agent("init", &config);
    cmd.env("SIDEKEY_INIT_DEADLINE", "20s");
    let (out, _) = run_bounded(cmd, Duration::from_secs(30));
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("\\\"bad\\\"") || log.contains("\"bad\""),
        "{log}"
    );
    assert!(log.contains("secret/data/app"), "{log}");
    assert!(log.contains("pasword"), "{log}");
    assert!(
        !log.contains("p@ss"),
        "a secret value reached the log: {log}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "last good\n");
    psql(&format!("DROP ROLE IF EXISTS {login}"));
}

#[test]
fn in_the_sidecar_a_failing_template_keeps_its_file_and_fetches_nothing_again() {
    let bao = Bao::start();
    let work = tempfile::tempdir().unwrap();
    let login = setup(&bao, work.path());
    bao.ok(&["kv", "put", "secret/flags", "user=app", "flag=on"]);
    let pod: BTreeMap<String, String> = [
        ("sidekey.dev/inject", "true"),
        ("sidekey.dev/role", "tmpl"),
        ("sidekey.dev/refresh", "1s"),
        (
            "sidekey.dev/template-user",
            "{{ with secret \"secret/flags\" }}{{ .Data.data.user }}{{ end }}",
        ),
        (
            "sidekey.dev/template-flag",
            "{{ with secret \"secret/data/flags\" }}{{ .Data.data.flag }}{{ end }}",
        ),
        (
            "sidekey.dev/template-db",
            "{{ with secret \"database/creds/app\" }}{{ .Data.username }}{{ end }}",
        ),
        ("sidekey.dev/secret-db-json", "database/creds/app"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let config = sidekey_config(&bao, work.path(), &pod);
    let dir = PathBuf::from(&config.secrets_dir);
    let sidecar = Running::spawn(agent("sidecar", &config));
    let ready = wait_for(Duration::from_secs(20), || {
        ["user", "flag", "db", "db-json"]
            .iter()
            .all(|f| dir.join(f).exists())
    });
    assert!(ready, "not rendered");
    assert_eq!(read(&dir, "flag"), "on");
    let user = read(&dir, "db");
    assert!(
        read(&dir, "db-json").contains(&user),
        "one credential for both"
    );

    // The flag disappears: its template fails, the other one follows the change.
    bao.ok(&["kv", "put", "secret/flags", "user=changed"]);
    let followed = wait_for(Duration::from_secs(10), || read(&dir, "user") == "changed");
    std::thread::sleep(Duration::from_secs(2));
    let (_, _, log) = sidecar.terminate(Duration::from_secs(10));
    assert!(followed, "{log}");
    assert_eq!(read(&dir, "flag"), "on", "the last good file stays");
    assert!(
        log.contains("template failed; keeping the last good file"),
        "{log}"
    );
    assert!(log.contains("flag"), "{log}");
    assert_eq!(read(&dir, "db"), user);
    assert_eq!(
        count_requests(&bao, "database/creds/app"),
        1,
        "a failing template fetches nothing again"
    );
    psql(&format!("DROP ROLE IF EXISTS {login}"));
}
