//! Running one plugin binary: `CNI_*` environment, config on stdin, result on stdout, error
//! JSON on a non-zero exit, a kill after the timeout.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use std::process::Output;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready for ADDs (spec 1.1).
    Status,
}

impl Command {
    /// The `CNI_COMMAND` value.
    pub fn env(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
        }
    }

    /// Lowercase, as libcni words its errors ("failed (add)").
    pub fn label(self) -> &'static str {
        match self {
            Command::Add => "add",
            Command::Del => "delete",
            Command::Check => "check",
            Command::Status => "status",
        }
    }
}

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The plugin `type` (binary name).
    pub plugin: &'a str,
    /// The command.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (empty for STATUS).
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
    /// The config on stdin.
    pub stdin: Vec<u8>,
}

/// A boxed future of a plugin's stdout.
pub type ExecFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>>> + Send + 'a>>;

/// A boxed future of a plugin's own version line.
pub type VersionFuture<'a> = Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>>;

/// Runs plugins; the real one execs binaries, tests may record instead.
pub trait Exec: Send + Sync {
    /// Runs the plugin and returns its stdout on success.
    fn exec<'a>(&'a self, inv: Invocation<'a>) -> ExecFuture<'a>;

    /// The plugin's own release line, for run fingerprints (none by default: stand-ins have
    /// no release).
    fn version<'a>(&'a self, _plugin: &'a str) -> VersionFuture<'a> {
        Box::pin(async { None })
    }
}

/// Execs plugin binaries found in the CNI path directories.
#[derive(Debug, Clone)]
pub struct PluginExec {
    /// Directories searched for plugin binaries, in order (`CNI_PATH`).
    pub paths: Vec<PathBuf>,
    /// How long one plugin run may take before it is killed.
    pub timeout: Duration,
}

impl PluginExec {
    fn find(&self, plugin: &str) -> Result<PathBuf> {
        if plugin.contains('/') {
            return Err(Error::NotFound {
                plugin: plugin.into(),
                paths: self.paths.clone(),
            });
        }
        use std::os::unix::fs::PermissionsExt as _;
        let found = self
            .paths
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::NotFound {
                plugin: plugin.into(),
                paths: self.paths.clone(),
            })?;
        // libcni takes the first file found and its exec fails with a bare EACCES: say so.
        match std::fs::metadata(&found) {
            Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(Error::NotExecutable {
                plugin: plugin.into(),
                path: found,
            }),
            _ => Ok(found),
        }
    }

    fn cni_path(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    async fn run(&self, inv: Invocation<'_>) -> Result<Vec<u8>> {
        let bin = self.find(inv.plugin)?;
        let exec_err = |reason: String| Error::Exec {
            plugin: inv.plugin.into(),
            command: inv.command.label(),
            reason,
        };
        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", inv.command.env())
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns)
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", inv.args)
            .env("CNI_PATH", self.cni_path())
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that a timeout or a dropped call also kills what the
            // plugin started (its IPAM plugin, say), which `kill_on_drop` alone would leave.
            .process_group(0)
            .spawn()
            .map_err(|e| exec_err(format!("{}: {e}", bin.display())))?;
        let mut group = Group(child.id());
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = inv.stdin;
        let write = async move {
            // A plugin that exits without reading its config closes the pipe: not our error.
            let _ = stdin.write_all(&input).await;
        };
        let (so, se) = (child.stdout.take(), child.stderr.take());
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let exited = {
            // Written and read beside the wait, so a plugin that prints before reading, or
            // more than a pipe holds, cannot deadlock us.
            let io = async {
                tokio::join!(
                    write,
                    read_pipe(so, &mut stdout),
                    read_pipe(se, &mut stderr)
                );
            };
            tokio::pin!(io);
            let timeout = tokio::time::sleep(self.timeout);
            tokio::pin!(timeout);
            let mut io_done = false;
            let exited = loop {
                tokio::select! {
                    r = child.wait() => break Some(r),
                    () = &mut io, if !io_done => io_done = true,
                    () = &mut timeout => break None,
                }
            };
            if exited.is_some() {
                // It exited: what it left running (a child holding its pipes) is its own
                // business, and its group id may be reused from here on.
                group.disarm();
                // Such a child must not hang us either: what the plugin wrote is read for at
                // most GRACE after its exit; then the pipes are closed, what was read kept.
                if !io_done {
                    let _ = tokio::time::timeout(GRACE, &mut io).await;
                }
            }
            exited
        };
        let Some(status) = exited else {
            // Kill and reap before answering: no plugin, nor a plugin it started, outlives
            // its attempt.
            group.kill();
            let _ = child.kill().await;
            return Err(Error::Timeout {
                plugin: inv.plugin.into(),
                command: inv.command.label(),
                after: self.timeout,
            });
        };
        let out = Output {
            status: status.map_err(|e| exec_err(e.to_string()))?,
            stdout,
            stderr,
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&out.status) {
            return Err(Error::Killed {
                plugin: inv.plugin.into(),
                command: inv.command.label(),
                signal,
            });
        }
        Err(plugin_error(
            inv.plugin,
            inv.command,
            &out.stdout,
            &out.stderr,
        ))
    }
}

/// How long a plugin's pipes are still read after it exited, for what a child it left running
/// holds open.
const GRACE: Duration = Duration::from_secs(1);

/// Reads a child's pipe to its end into `buf`. Dropped before the end, `buf` keeps what was
/// read (tokio's `read_to_end` grows the vector as it reads).
async fn read_pipe<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, buf: &mut Vec<u8>) {
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(buf).await;
    }
}

/// A plugin's error output. Read with our own type rather than rscni-types' `ErrorResult`,
/// whose conversion replaces a spec-range code's message with the spec's wording: the
/// plugin's own message ("no IP addresses available in range set") is what users need.
#[derive(serde::Deserialize)]
struct WireError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The error a failed plugin reported: its JSON error, or its output when it printed none.
fn plugin_error(plugin: &str, command: Command, stdout: &[u8], stderr: &[u8]) -> Error {
    match serde_json::from_slice::<WireError>(stdout) {
        Ok(w) => Error::Plugin {
            plugin: plugin.into(),
            command: command.label(),
            code: w.code,
            msg: w.msg,
            details: w.details,
        },
        Err(_) => {
            let text = if stdout.iter().all(u8::is_ascii_whitespace) {
                stderr
            } else {
                stdout
            };
            Error::Plugin {
                plugin: plugin.into(),
                command: command.label(),
                code: 999,
                msg: "plugin failed without a CNI error".into(),
                details: excerpt(text),
            }
        }
    }
}

/// The first 300 characters of some output, for messages.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

impl Exec for PluginExec {
    fn exec<'a>(&'a self, inv: Invocation<'a>) -> ExecFuture<'a> {
        Box::pin(self.run(inv))
    }

    /// What the plugin prints when run without `CNI_COMMAND` (the reference plugins print
    /// "CNI bridge plugin v1.1.1"), waited for at most 2 s.
    fn version<'a>(&'a self, plugin: &'a str) -> VersionFuture<'a> {
        Box::pin(async move {
            let bin = self.find(plugin).ok()?;
            let out = tokio::process::Command::new(bin)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(2), out)
                .await
                .ok()?
                .ok()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with("CNI ") || l.contains(" v"))
                .map(str::to_owned)
        })
    }
}

/// Plugin processes running for any of `container_ids`: those whose environment holds its
/// `CNI_CONTAINERID`, a plugin and the IPAM plugin it runs alike. A runtime killed mid-ADD
/// leaves its plugin running; its restart must not DEL under it, or the ADD finishing after
/// the DEL keeps its address and veth for good. Processes this user may not read are skipped.
///
/// Each is held by a pidfd opened before its environment is read, so a signal sent through it
/// reaches the process that was read or, if that one has exited since, no process: never
/// another one that was given the same pid meanwhile. Where pidfds are refused (Linux before
/// 5.3, a seccomp profile without them) the pid alone is kept, as before them.
pub fn plugins_running_for(container_ids: &[String]) -> Vec<(u32, Option<OwnedFd>)> {
    use rustix::io::Errno;
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let wanted: Vec<Vec<u8>> = container_ids
        .iter()
        .map(|id| format!("CNI_CONTAINERID={id}").into_bytes())
        .collect();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let fd = match pidfd_open(Pid::from_raw(pid as i32)?, PidfdFlags::empty()) {
                Ok(fd) => Some(fd),
                Err(Errno::SRCH) => return None,
                Err(_) => None,
            };
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            env.split(|b| *b == 0)
                .any(|v| wanted.iter().any(|w| v == w.as_slice()))
                .then_some((pid, fd))
        })
        .collect()
}

/// A running plugin's process group, killed (SIGKILL) at a timeout or when the call is dropped
/// before the plugin exited (netready shutting down mid-ADD), children included.
struct Group(Option<u32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills (SIGKILL) the plugins running for `container_ids` and waits, up to 5 s, until they
/// are gone (a plugin inside a system call finishes it first); how many were found. Killed
/// rather than waited for because their ADDs are torn down anyway: letting a plugin finish
/// work that is undone next only holds up its caller, for as long as the plugin hangs. A
/// plugin cut short is what an `exec_timeout` leaves too, and DEL is made to clean that up.
/// Scanned again after each kill: a plugin may have started its IPAM plugin meanwhile.
pub fn kill_plugins_of(container_ids: &[String]) -> usize {
    let mut found = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = plugins_running_for(container_ids);
        if left.is_empty() {
            return found.len();
        }
        if std::time::Instant::now() >= deadline {
            let pids: Vec<u32> = left.iter().map(|(pid, _)| *pid).collect();
            tracing::error!(?pids, "plugins still running 5 s after SIGKILL");
            return found.len();
        }
        for (pid, fd) in left {
            if found.insert(pid) {
                tracing::warn!(pid, "killing a plugin of an interrupted ADD");
            }
            // ESRCH: it exited since the scan, nothing to kill.
            match fd {
                Some(fd) => {
                    let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
                }
                None => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `CNI_ARGS` as containerd builds it for a pod: `IgnoreUnknown=1` and the `K8S_POD_*` keys.
pub fn k8s_args(namespace: &str, name: &str, sandbox_id: &str, uid: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
         K8S_POD_INFRA_CONTAINER_ID={sandbox_id};K8S_POD_UID={uid}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_keeps_code_msg_details() {
        let e = plugin_error(
            "bridge",
            Command::Add,
            br#"{"cniVersion":"1.0.0","code":11,"msg":"no IPs left","details":"range full"}"#,
            b"",
        );
        assert_eq!(e.code(), 11);
        assert_eq!(
            e.to_string(),
            r#"plugin type="bridge" failed (add): code 11: no IPs left (range full)"#
        );
    }

    #[test]
    fn failure_without_json_keeps_output() {
        let e = plugin_error("x", Command::Del, b"", b"segfault in foo\n");
        assert_eq!(e.code(), 999);
        assert!(e.to_string().contains("segfault in foo"), "{e}");
    }
}
