//! Pause points for the fault tests: the agent stops dead at an exact moment (between
//! fetching a credential and writing its file, say) so a test can SIGKILL it there,
//! instead of hoping to hit the moment by timing.
//!
//! Compiled only into debug builds (`cfg(debug_assertions)`): the agent image is built
//! with `cargo build --release` (Dockerfile.agent), whose profile has no debug
//! assertions, so there [`hit`] is an empty inline function and the environment
//! variable is never read. In a debug build, `SIDEKEY_FAILPOINT=<point>[@<file>]`
//! stops the agent at `<point>` (for `<file>` only, if given): it prints
//! `failpoint <point> reached` on stderr and blocks its only thread for an hour.
//!
//! Points: `after-fetch` (a source was fetched and the state saved, its files not yet
//! written; `<file>` is the first secret's file) and `after-temp-write` (a file's
//! temporary copy is written and synced, not yet renamed over the target).

/// The environment variable naming the point.
pub const ENV: &str = "SIDEKEY_FAILPOINT";

/// Stops here if the failpoint names `point` (and `file`, when it names one).
#[cfg(debug_assertions)]
pub fn hit(point: &str, file: &str) {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let (name, only) = match spec.split_once('@') {
        Some((n, f)) => (n, Some(f)),
        None => (spec.as_str(), None),
    };
    if name != point || only.is_some_and(|f| f != file) {
        return;
    }
    eprintln!("sidekey-agent: failpoint {point} reached at {file}; waiting to be killed");
    // Blocks the runtime's only thread on purpose; bounded all the same.
    std::thread::sleep(std::time::Duration::from_secs(3600));
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: &str, _file: &str) {}
