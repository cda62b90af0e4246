//! Running commands with a timeout, and guarding background children.
//!
//! Everything a test runs goes through [`run_with_timeout`] (one-shot commands: a hung
//! command fails the test instead of hanging it) or is held by a [`ChildGuard`]
//! (background servers, the agent: killed and reaped on drop, also while unwinding).

use crate::time_scale::scaled;
use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Timeout used by the `run` helpers that take none: 20 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for stdout/stderr to reach end-of-file after the child exited
/// (a background grandchild may keep the pipes open forever).
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Exit status of the command.
    pub status: ExitStatus,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
    /// Description of the command (its `Debug` form), for error messages.
    pub command: String,
}

impl RunOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Returns `self` if the command succeeded, else an error carrying its status and output.
    pub fn ensure_success(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!("{self}")
        }
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Collects one pipe's bytes on a thread; the bytes read so far stay available even if
/// end-of-file never comes.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Receiver<()>,
}

impl Capture {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Capture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        if let Some(mut pipe) = pipe {
            let sink = Arc::clone(&buf);
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => match sink.lock() {
                            Ok(mut b) => b.extend_from_slice(&chunk[..n]),
                            Err(_) => break,
                        },
                    }
                }
                let _ = tx.send(());
            });
        }
        Capture { buf, done }
    }

    /// Waits up to `grace` for end-of-file, then returns what was read.
    fn finish(self, grace: Duration) -> String {
        let _ = self.done.recv_timeout(scaled(grace));
        let bytes = match self.buf.lock() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured.
///
/// Returns `Err` if the command cannot be started or is still running after `timeout`
/// (it is then killed with SIGKILL; the error carries the output so far). A non-zero exit
/// is *not* an error: inspect [`RunOutput::status`] or call [`RunOutput::ensure_success`].
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<RunOutput> {
    let command = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {command}"))?;
    let out = Capture::start::<ChildStdout>(child.stdout.take());
    let err = Capture::start::<ChildStderr>(child.stderr.take());
    let deadline = Instant::now() + scaled(timeout);
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "timed out after {timeout:?} (killed): {command}\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
                    out.finish(Duration::ZERO),
                    err.finish(Duration::ZERO)
                );
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).with_context(|| format!("waiting for {command}"));
            }
        }
    };
    Ok(RunOutput {
        status,
        stdout: out.finish(PIPE_GRACE),
        stderr: err.finish(PIPE_GRACE),
        command,
    })
}

/// Builds a [`Command`] from `args` (`args[0]` is the program) with `make`, and runs it with
/// [`run_with_timeout`].
pub(crate) fn run_args<S: AsRef<OsStr>>(
    make: impl FnOnce(&OsStr) -> Command,
    args: &[S],
    timeout: Duration,
) -> Result<RunOutput> {
    let (program, rest) = args
        .split_first()
        .context("run: empty argument list (args[0] must be the program)")?;
    let mut cmd = make(program.as_ref());
    cmd.args(rest);
    run_with_timeout(&mut cmd, timeout)
}

/// Runs a harness tool (`ip`, `kill`, ...) and returns its stdout, or an error naming the
/// command and its stderr if it fails.
pub(crate) fn tool<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    Ok(run_with_timeout(&mut cmd, DEFAULT_TIMEOUT)?
        .ensure_success()?
        .stdout)
}

/// Owns a spawned [`Child`]: on drop, the child is killed (SIGKILL) and reaped unless it
/// has already exited. Derefs to [`Child`] for `id()`, `stdout`, `try_wait()`, ...
///
/// Use it for anything running in the background: upstream servers, the agent.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    /// Spawns `cmd` and guards the child.
    pub fn spawn(cmd: &mut Command) -> Result<ChildGuard> {
        let what = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(ChildGuard {
            child: Some(child),
            what,
        })
    }

    /// Guards an already spawned child.
    pub fn new(child: Child) -> ChildGuard {
        let what = format!("pid {}", child.id());
        ChildGuard {
            child: Some(child),
            what,
        }
    }

    /// Waits up to `timeout` for the child to exit on its own; `Ok(None)` if it is still
    /// running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + scaled(timeout);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child (if still running) and reaps it, returning its exit status.
    pub fn kill_and_wait(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("child already released")?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let _ = child.kill();
        Ok(child.wait()?)
    }

    /// Gives up ownership: the child is no longer killed on drop.
    ///
    /// # Panics
    /// Never: a guard holds its child until it is dropped or given up here.
    pub fn into_inner(mut self) -> Child {
        self.child
            .take()
            .expect("ChildGuard always holds a child until dropped")
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.child
            .as_ref()
            .expect("ChildGuard always holds a child until dropped")
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("ChildGuard always holds a child until dropped")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
        } else {
            if let Err(e) = child.kill() {
                eprintln!("iamlet-tests: cannot kill {}: {e}", self.what);
            }
            if let Err(e) = child.wait() {
                eprintln!("iamlet-tests: cannot reap {}: {e}", self.what);
            }
        }
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
        Path::to_path_buf,
    )
}

/// A binary built from this workspace: `$<env_var>` if set, else next to the running
/// executable (a test binary lives in `target/<profile>/deps`, a bin in `target/<profile>`),
/// else `<workspace>/target/debug/<name>`.
pub fn workspace_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            for candidate in [dir.join(name), dir.join("..").join(name)] {
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
    }
    workspace_root().join("target/debug").join(name)
}
