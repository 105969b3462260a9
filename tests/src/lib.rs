//! End-to-end harness for Sidekey: real OpenBao, real TLS, the real webhook and agent
//! binaries, and pods run "as the kubelet would" in private mount namespaces.
//!
//! The only stand-in is the Kubernetes API server, reduced to the TokenReview endpoint
//! OpenBao's kubernetes auth method calls ([`tokenreview`]). Everything else is the real
//! thing, so a green run means the parts work together, not that mocks agree.
//!
//! Parts, in the order a run uses them:
//! - [`bins`]: where the built binaries and the external tools are.
//! - [`process`]: child processes with captured logs, bounded waits and cleanup.
//! - [`tls`]: throwaway CAs and serving certificates, and clients that trust only them.
//! - [`openbao`]: a `bao server -dev -dev-tls` per harness, plus CLI helpers.
//! - [`tokenreview`]: the fake API server and the projected-token minter.
//! - [`setup`]: the demo app's KV secret, policy and kubernetes auth role.
//! - [`webhook`]: the webhook binary behind TLS, and `POST /mutate` over TLS.
//! - [`review`]: a pod as the ReplicaSet controller creates it, its AdmissionReview,
//!   and applying the returned patch.
//! - [`podcheck`]: schema validation, API-server pod rules and Pod Security "restricted".
//! - [`container`]: runs one container of a pod exactly as its spec says.
//! - [`kubelet`]: runs a whole pod as the kubelet does: init containers in order,
//!   native sidecars through their startup probe, app containers, and termination.
//! - [`stack`]: all of the above wired together, as the tests and the demo use it.
//! - [`workload`]: the fixture's pods (Deployment, Job) with app containers that run.
//! - [`demo`]: the `sidekey-demo` narration of the whole flow.
//!
//! For dynamic secrets and leases:
//! - [`postgres`]: the machine's PostgreSQL: roles, and logins checked as SCRAM would.
//! - [`database`]: OpenBao's database secrets engine, one connection and role per test.
//! - [`tenant`]: one test's auth role, policy, KV secret and database role.
//! - [`agentpod`]: a patched pod's agent run in its layout (classic or native sidecar).
//! - [`audit`]: OpenBao's audit log, to count what an agent asked for.
//! - [`leak`]: the values that must never be logged, and the check.
//!
//! Needs root: containers run in mount and PID namespaces with `chroot`.

pub mod agentpod;
pub mod audit;
pub mod bins;
pub mod container;
pub mod database;
pub mod demo;
pub mod kubelet;
pub mod leak;
pub mod openbao;
pub mod podcheck;
pub mod postgres;
pub mod process;
pub mod review;
pub mod rt;
pub mod setup;
pub mod stack;
pub mod tenant;
pub mod tls;
pub mod tokenreview;
pub mod webhook;
pub mod workload;

use std::time::Duration;

/// Why a harness step failed. Messages name the step so a red test says what broke.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("{what} did not happen within {after:?}")]
    Timeout { what: String, after: Duration },
    /// A step ran but its result is wrong; the message says what was expected.
    #[error("{0}")]
    Failed(String),
}

/// Result of a harness step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a step description to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

/// Shorthand for [`Error::Failed`].
pub(crate) fn failed(msg: impl Into<String>) -> Error {
    Error::Failed(msg.into())
}

/// Parent of every directory the harness creates: `<tmp>/sidekey-harness/<pid>`.
///
/// Servers shared by a test binary live in `static`s whose destructors never run, so
/// their directories can't be removed by `Drop`. Instead, the first call in a process
/// removes the directories of earlier processes that are no longer running.
pub fn scratch_root() -> std::path::PathBuf {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let parent = std::env::temp_dir().join("sidekey-harness");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                let alive = std::path::Path::new("/proc").join(&pid).exists();
                if pid.parse::<u32>().is_ok() && !alive {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let mine = parent.join(std::process::id().to_string());
        // Failure surfaces at the first tempdir_in() with the path in the message.
        let _ = std::fs::create_dir_all(&mine);
        mine
    })
    .clone()
}

/// A new temporary directory under [`scratch_root`], removed on drop.
pub(crate) fn tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    let root = scratch_root();
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&root)
        .ctx(|| format!("creating a {prefix}* directory in {}", root.display()))
}

/// Whether this process runs as root (needed for namespaces and tmpfs mounts).
pub fn is_root() -> bool {
    // /proc/self/status has "Uid:\treal\teffective\tsaved\tfs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A random lowercase alphanumeric string, for tokens, uids and name suffixes.
pub fn random_id(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// A random RFC 4122 version-4 UUID, as Kubernetes uses for uids.
pub fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        (b[8] & 0x3) | 0x8,
        &hex[17..20],
        &hex[20..32]
    )
}
