//! Named network namespaces: create, open, remove, and run code inside one on its own thread.
//!
//! A network namespace lives as long as a process is in it or a file is bind-mounted onto its
//! `/proc/<tid>/ns/net`. A *named* namespace is such a bind mount in a directory
//! (`/var/run/netns/<name>` for `ip netns`, the same for containerd's `cni-<random>`): it stays
//! after the thread that created it exits, and anyone can enter it by path.
//!
//! Entering a namespace (`setns`) changes only the calling thread. A tokio worker thread runs
//! many tasks, so netready never enters a namespace on one: [`Netns::run`] starts a plain thread,
//! enters, runs the closure and lets the thread die. Sockets opened there stay in the pod's
//! namespace when handed back to the async side.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

pub mod confine;
pub mod loopback;

/// Errors of namespace operations; every variant names the namespace path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the mount point, unsharing or bind-mounting failed.
    #[error("create netns {path}: {step}: {source}")]
    Create {
        /// Where the namespace was to be mounted.
        path: PathBuf,
        /// Which step failed.
        step: &'static str,
        /// The system error.
        source: std::io::Error,
    },
    /// Unmounting or deleting the mount point failed.
    #[error("remove netns {path}: {step}: {source}")]
    Remove {
        /// The namespace's path.
        path: PathBuf,
        /// Which step failed.
        step: &'static str,
        /// The system error.
        source: std::io::Error,
    },
    /// Opening or entering the namespace failed.
    #[error("enter netns {path}: {source}")]
    Enter {
        /// The namespace's path.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// The thread running code inside the namespace panicked.
    #[error("thread inside netns {path} panicked")]
    ThreadPanicked {
        /// The namespace's path.
        path: PathBuf,
    },
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// A named network namespace, bind-mounted at `path`.
///
/// One made by [`Netns::create`] removes itself when dropped, until [`Netns::keep`] hands its
/// lifetime to someone else (a sandbox store, a harness that removes it on its own terms).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    remove_on_drop: bool,
}

// === impl Netns ===

impl Netns {
    /// Creates a new, empty network namespace mounted at `dir/name`.
    ///
    /// The namespace starts with only a down `lo`, as `ip netns add` leaves it.
    pub fn create(dir: impl AsRef<Path>, name: &str) -> Result<Self> {
        Self::create_with(dir, name, false)
    }

    /// [`Netns::create`], with `lo` set up (when `lo_up`) by the creating thread while it is
    /// inside the new namespace anyway: no second thread enters it for that.
    pub fn create_with(dir: impl AsRef<Path>, name: &str, lo_up: bool) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(name);
        let err = |step, source| Error::Create {
            path: path.clone(),
            step,
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| err("create directory", e))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| err("create mount point", e))?;
        // From here on the file exists: a failure must not leave it behind.
        let ns = Netns {
            path: path.clone(),
            remove_on_drop: true,
        };
        let target = path.clone();
        // A throwaway thread: after unshare it is inside the new namespace and must never run
        // anything else, so it ends right after the bind mount that keeps the namespace alive.
        let made = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || -> Result<(), (&'static str, std::io::Error)> {
                #[allow(clippy::disallowed_methods)]
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare", io(e)))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| ("bind mount", io(e)))?;
                if lo_up {
                    loopback::up().map_err(|e| ("lo up over netlink", e))?;
                }
                Ok(())
            })
            .map_err(|e| err("spawn thread", e))?
            .join()
            .map_err(|_| Error::ThreadPanicked { path: path.clone() })?;
        made.map_err(|(step, source)| err(step, source))?;
        Ok(ns)
    }

    /// Refers to an existing namespace at `path`; dropping it removes nothing.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        File::open(&path).map_err(|source| Error::Enter {
            path: path.clone(),
            source,
        })?;
        Ok(Netns {
            path,
            remove_on_drop: false,
        })
    }

    /// The namespace's path, as given to CNI plugins in `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last path component, the namespace's name.
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    /// Stops this handle from removing the namespace on drop and returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.remove_on_drop = false;
        std::mem::take(&mut self.path)
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    ///
    /// Use it to open sockets or netlink handles that must live in the namespace: file
    /// descriptors keep their namespace when they move to other threads.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn("netns-run", f)?
            .join()
            .map_err(|_| Error::ThreadPanicked {
                path: self.path.clone(),
            })?
    }

    /// Starts a long-lived thread inside this namespace running `f`; threads it creates
    /// (a tokio runtime's workers, say) are inside the namespace too.
    pub fn spawn<T, F>(&self, name: &str, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = File::open(&self.path).map_err(|source| Error::Enter {
            path: self.path.clone(),
            source,
        })?;
        let path = self.path.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || -> Result<T> {
                #[allow(clippy::disallowed_methods)]
                nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    Error::Enter {
                        path,
                        source: io(e),
                    }
                })?;
                Ok(f())
            })
            .map_err(|source| Error::Enter {
                path: self.path.clone(),
                source,
            })
    }

    /// Unmounts and deletes the namespace; a namespace already gone is not an error.
    pub fn remove(mut self) -> Result<()> {
        self.remove_on_drop = false;
        remove_path(&self.path)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if let Err(e) = remove_path(&self.path) {
                tracing::warn!(error = %e, "dropping netns");
            }
        }
    }
}

/// Whether `path` is a network namespace (a mount of nsfs), not a plain file or nothing: a
/// runtime killed between a namespace's unmount and the removal of its mount point leaves
/// the file, and a plugin handed that path fails ("unknown FS magic").
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unmounts and deletes a named namespace by path; idempotent (already gone is success).
pub fn remove_path(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (never mounted, or unmounted already).
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::Remove {
                path: path.to_owned(),
                step: "unmount",
                source: io(e),
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Remove {
            path: path.to_owned(),
            step: "delete mount point",
            source,
        }),
    }
}

#[cfg(test)]
mod tests;

/// A small pool of threads that run short jobs inside a namespace given per job: each job's
/// thread enters that namespace, runs the job, and returns to the namespace it started in
/// (so no deleted pod namespace stays alive through it).
///
/// Creating a socket in a pod's namespace is microseconds of work; a thread made for it
/// costs far more when hundreds of pods check at once. These threads do nothing else, so
/// entering namespaces on them never moves unrelated work.
#[derive(Debug, Clone)]
pub struct EnterPool {
    tx: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl EnterPool {
    /// Starts `threads` threads, each staying in the namespace of the thread that calls this
    /// between jobs.
    pub fn new(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("netns-pool-{i}"))
                .spawn(move || loop {
                    let job = {
                        let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                        guard.recv()
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
        }
        EnterPool { tx }
    }

    /// Runs `f` inside the namespace at `path` on a pool thread; the receiver gets the result.
    pub fn run<T, F>(&self, path: &Path, f: F) -> std::sync::mpsc::Receiver<Result<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let path = path.to_owned();
        let job: Job = Box::new(move || {
            let _ = done.send(enter_run_return(&path, f));
        });
        if let Err(std::sync::mpsc::SendError(job)) = self.tx.send(job) {
            // No pool threads (could not be spawned): run on a thread of its own.
            let _ = std::thread::spawn(job).join();
        }
        result
    }
}

fn enter_run_return<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let enter_err = |source| Error::Enter {
        path: path.to_owned(),
        source,
    };
    let home = File::open("/proc/thread-self/ns/net").map_err(enter_err)?;
    let target = File::open(path).map_err(enter_err)?;
    #[allow(clippy::disallowed_methods)]
    nix::sched::setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| enter_err(io(e)))?;
    let out = f();
    #[allow(clippy::disallowed_methods)]
    let back = nix::sched::setns(home.as_fd(), CloneFlags::CLONE_NEWNET);
    if let Err(e) = back {
        // A thread stuck in a pod's namespace would keep it alive and run later jobs there.
        tracing::error!(error = %e, "pool thread could not return to its namespace; exiting");
        panic!("netns pool thread could not return home: {e}");
    }
    Ok(out)
}
