//! Where the binaries under test and the external tools are.
//!
//! The harness never builds anything itself: `cargo test` builds only test targets, and
//! a build from inside a test would fight the outer cargo for the lock. Run
//! `cargo build --bins` (or `make build`) first; a missing binary says so.

use std::path::{Path, PathBuf};

use crate::{Result, failed};

/// Directory of the built Sidekey binaries. Unset or empty: `<workspace>/target/debug`.
pub const BIN_DIR_ENV: &str = "SIDEKEY_BIN_DIR";
/// The `bao` CLI/server. Unset or empty: `<workspace>/.venv/bin/bao`, then `PATH`.
pub const BAO_ENV: &str = "SIDEKEY_BAO";
/// `kubernetes-validate`. Unset or empty: `<workspace>/.venv/bin/kubernetes-validate`,
/// then `PATH`.
pub const KUBERNETES_VALIDATE_ENV: &str = "SIDEKEY_KUBERNETES_VALIDATE";

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn bin_dir() -> PathBuf {
    env_path(BIN_DIR_ENV).unwrap_or_else(|| workspace_root().join("target").join("debug"))
}

fn built(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(failed(format!(
            "{} not found; build the binaries first with `cargo build --bins` (or `make build`), \
             or point {BIN_DIR_ENV} at the directory holding them",
            path.display()
        )))
    }
}

/// The webhook binary.
pub fn webhook() -> Result<PathBuf> {
    built("sidekey-webhook")
}

/// The agent binary.
pub fn agent() -> Result<PathBuf> {
    built("sidekey-agent")
}

fn tool(var: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = env_path(var) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(failed(format!("{var}={} does not exist", p.display())))
        };
    }
    let venv = workspace_root().join(".venv").join("bin").join(name);
    if venv.is_file() {
        return Ok(venv);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(failed(format!(
        "{name} not found in {var}, .venv/bin or PATH; run `scripts/setup.sh` (or `make setup`)"
    )))
}

/// The OpenBao CLI and server.
pub fn bao() -> Result<PathBuf> {
    tool(BAO_ENV, "bao")
}

/// The `kubernetes-validate` schema checker.
pub fn kubernetes_validate() -> Result<PathBuf> {
    tool(KUBERNETES_VALIDATE_ENV, "kubernetes-validate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
