//! Child processes with their output in files, bounded waits and cleanup.
//!
//! Output goes to files rather than pipes: nobody has to drain a pipe for the child to
//! make progress, and the logs stay readable after the child exits, for a failing
//! test's report.
//!
//! Servers shared by a whole test binary live in `static`s that are never dropped, so
//! [`Process`] alone can't stop them. Long-lived children are therefore started under
//! `setpriv --pdeathsig KILL`, and from one thread that lives as long as the process:
//! the kernel sends the signal when the *thread* that forked the child exits, so forking
//! from a short-lived test thread would kill a shared server when the first test ends.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{Error, IoContext, Result, failed};

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from the process-long spawner thread (see the module docs).
fn spawn_from_spawner(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the harness spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("harness spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("harness spawner thread is gone"))?
}

/// A command that runs `program` and is killed when this test process exits.
pub fn guarded(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
    cmd
}

/// A running (or finished) child process with its output in `<log_dir>/<name>.{out,err}`.
pub struct Process {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
    /// Logs to copy into the suite-wide leak scan's directory when dropped (when a
    /// hard link there could not be made at spawn).
    leak_copies: Vec<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .finish()
    }
}

impl Process {
    /// Starts `cmd` with stdin closed and output captured under `log_dir`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Process> {
        let stdout = log_dir.join(format!("{name}.out"));
        let stderr = log_dir.join(format!("{name}.err"));
        let out = File::create(&stdout).ctx(|| format!("creating {}", stdout.display()))?;
        let err = File::create(&stderr).ctx(|| format!("creating {}", stderr.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = spawn_from_spawner(cmd).ctx(|| format!("starting {name}"))?;
        // For the suite-wide leak scan: a hard link sees every line, even of servers in
        // `static`s that are never dropped; a copy on drop is the fallback.
        let mut leak_copies = Vec::new();
        for (path, ext) in [(&stdout, "out"), (&stderr, "err")] {
            if let Some(link) = crate::leak::suite_log_path(&format!("{name}.{ext}"))
                && std::fs::hard_link(path, &link).is_err()
            {
                leak_copies.push((path.clone(), link));
            }
        }
        Ok(Process {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            status: None,
            leak_copies,
        })
    }

    /// Name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .ctx(|| format!("checking on {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits for exit, at most `limit`; on timeout the process is left running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("exit of {}", self.name),
                    after: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`, ...) to this process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        send_signal(self.child.id(), sig)
    }

    /// Kills the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        if matches!(self.try_status(), Ok(None)) {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.status = Some(s);
            }
        }
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Both outputs, labelled, for a failure report.
    pub fn logs(&self) -> String {
        format!(
            "----- {name} stdout -----\n{}\n----- {name} stderr -----\n{}",
            self.stdout(),
            self.stderr(),
            name = self.name
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        for (from, to) in &self.leak_copies {
            let _ = std::fs::copy(from, to);
        }
    }
}

/// Sends signal `sig` (a name such as `TERM`) to `pid` with kill(1); the crate forbids
/// `unsafe`, so no libc call.
pub fn send_signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .ctx(|| format!("running kill -s {sig} {pid}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!("kill -s {sig} {pid} failed: {status}")))
    }
}

/// Direct children of `pid`, from `/proc/<pid>/task/<pid>/children`.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Runs `cmd` to completion (bounded by `limit`) and returns its output; a non-zero
/// exit is an error carrying stderr.
pub fn run(what: &str, cmd: Command, limit: Duration) -> Result<std::process::Output> {
    run_with_stdin(what, cmd, None, limit)
}

/// [`run`] with `stdin` fed to the command (from a file, so no pipe to drain).
pub fn run_with_stdin(
    what: &str,
    mut cmd: Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Result<std::process::Output> {
    let dir = tempfile::tempdir().ctx(|| "creating a temporary directory".into())?;
    match stdin {
        Some(bytes) => {
            let path = dir.path().join("in");
            std::fs::write(&path, bytes).ctx(|| "writing stdin file".into())?;
            cmd.stdin(File::open(&path).ctx(|| "opening stdin file".into())?);
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    cmd.stdout(File::create(&out_path).ctx(|| "creating output file".into())?);
    cmd.stderr(File::create(&err_path).ctx(|| "creating output file".into())?);
    let mut child = cmd.spawn().ctx(|| format!("starting {what}"))?;

    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().ctx(|| format!("waiting for {what}"))? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout {
                what: format!("completion of {what}"),
                after: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    let output = std::process::Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    if !status.success() {
        // Some tools (kubernetes-validate) report on stdout; keep both.
        let said = [&output.stderr, &output.stdout]
            .iter()
            .map(|b| String::from_utf8_lossy(b).trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        return Err(failed(format!("{what} failed ({status}): {said}")));
    }
    Ok(output)
}

/// Polls `check` every 50 ms until it returns `Some`, at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback TCP port (bound, read, released; fine for a test machine).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").ctx(|| "binding 127.0.0.1:0".into())?;
    Ok(l.local_addr()
        .ctx(|| "reading local address".into())?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut p = Process::spawn("t", cmd, dir.path()).unwrap();
        let status = p.wait_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.stdout(), "out\n");
        assert_eq!(p.stderr(), "err\n");
    }

    #[test]
    fn wait_timeout_gives_up_and_drop_kills() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = guarded("sleep");
        cmd.arg("30");
        let mut p = Process::spawn("sleeper", cmd, dir.path()).unwrap();
        let pid = p.pid();
        assert!(matches!(
            p.wait_timeout(Duration::from_millis(100)),
            Err(Error::Timeout { .. })
        ));
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
                // A zombie would still have a /proc entry; Drop reaps, so it must be gone.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| !s.contains("sleep"))
                    .unwrap_or(true)
            }
        );
    }

    #[test]
    fn run_reports_stderr_of_a_failing_command() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo broken thing >&2; exit 1"]);
        let err = run("probe", cmd, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("broken thing"), "{err}");
    }
}
