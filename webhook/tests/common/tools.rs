//! The command-line tools `make setup` installs into the repository's `.venv`.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `.venv/bin/<name>`, or the path in the environment variable `env` when set. Fails
/// the test, saying to run `make setup`, when the tool is missing.
pub fn venv_tool(name: &str, env: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.venv/bin")
                .join(name)
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run `make setup` (scripts/setup.sh installs it into .venv), or \
         point {env} at it",
        path.display()
    );
    path
}

pub fn kubectl() -> PathBuf {
    venv_tool("kubectl", "SIDEKEY_KUBECTL")
}

pub fn kubernetes_validate() -> PathBuf {
    venv_tool("kubernetes-validate", "SIDEKEY_KUBERNETES_VALIDATE")
}

pub fn bao() -> PathBuf {
    venv_tool("bao", "SIDEKEY_BAO")
}

/// The venv's Python, which has PyYAML (a dependency of kubernetes-validate).
pub fn python() -> PathBuf {
    venv_tool("python3", "SIDEKEY_VENV_PYTHON")
}

/// Runs `cmd`, failing the test with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
