//! How netperf pods' network namespaces are made and removed: the kernel's, or in unit tests
//! a stand-in that needs no root (the lifecycle's undo logic is tested with it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::state::StateDir;

/// Makes and removes pod network namespaces. Both calls block (namespace creation waits for a
/// thread of its own), so the runtime calls them off the tokio workers.
pub trait Namespaces: Send + Sync + 'static {
    /// Creates a namespace mounted at `path`, with `lo` up when `lo_up`; on error nothing is
    /// left at `path`.
    fn create(&self, path: &Path, lo_up: bool) -> Result<(), String>;
    /// Removes the namespace at `path`; already gone is success.
    fn remove(&self, path: &Path) -> Result<(), String>;
    /// Whether `path` is still a namespace to hand to a plugin as `CNI_NETNS`.
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Real namespaces, bind-mounted as `ip netns` and containerd mount them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl Namespaces for Kernel {
    fn create(&self, path: &Path, lo_up: bool) -> Result<(), String> {
        let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(d), Some(n)) => (d, n),
            _ => return Err(format!("{}: not a namespace path", path.display())),
        };
        netready_netns::Netns::create_with(dir, name, lo_up)
            .map(|ns| {
                ns.keep();
            })
            .map_err(|e| e.to_string())
    }

    fn remove(&self, path: &Path) -> Result<(), String> {
        netready_netns::remove_path(path).map_err(|e| e.to_string())
    }

    fn exists(&self, path: &Path) -> bool {
        netready_netns::is_netns(path)
    }
}

/// Namespaces made ahead of time (`netperf.netns_pool`): a thread keeps `size` spares, each
/// made as a pod's would be (`cni-<random>` in the netns directory, `lo` up or not), and a pod
/// takes one as it is: its record names the spare, so nothing is made, renamed or mounted on
/// RunPodSandbox's path. The unshare and the kernel's setup of a new namespace still cost
/// their CPU, spent by the refilling thread between pods.
///
/// Each spare is noted in the state journal before it is made and forgotten once removed or
/// named by a sandbox record: a restart removes the ones a killed netready left, and only
/// those (the directory may be containerd's too).
pub struct Spares {
    inner: Arc<dyn Namespaces>,
    state: StateDir,
    shared: Arc<Shared>,
    refill: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<Pool>,
    wake: Condvar,
}

#[derive(Default)]
struct Pool {
    /// Oldest first: taken in the order made, so none waits forever.
    ready: std::collections::VecDeque<PathBuf>,
    stop: bool,
    /// RunPodSandbox calls in flight, and when the last one ended: spares are made only when
    /// the node has been quiet for [`QUIET`].
    busy: usize,
    last_busy: Option<std::time::Instant>,
}

/// How long no RunPodSandbox must have run before a spare is made: long enough for the last
/// one's answer to be written, so the namespace's unshare and setup do not take the node's
/// cores from a pod's own path (measured: refilled at once, they moved the cost from before
/// the pod's ADD to after it). Under back-to-back load the pool drains and pods make their
/// own namespace, as without a pool: it only helps where arrivals leave gaps.
const QUIET: std::time::Duration = std::time::Duration::from_millis(2);

impl Pool {
    /// How long the last RunPodSandbox's quiet has yet to last; `None`: none is in flight or
    /// recent.
    fn quiet_left(&self) -> Option<std::time::Duration> {
        let since = self.last_busy?.elapsed();
        (since < QUIET).then(|| QUIET - since)
    }
}

/// A RunPodSandbox in flight, as [`Spares`] sees it (see [`QUIET`]).
pub struct Busy<'a>(&'a Spares);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut pool = self.0.lock();
        pool.busy -= 1;
        pool.last_busy = Some(std::time::Instant::now());
        drop(pool);
        self.0.shared.wake.notify_one();
    }
}

/// A spare taken for a pod. Until [`Spare::claim`] (once the pod's record names it) it goes
/// back to the pool when dropped, so a RunPodSandbox that fails before that loses nothing.
pub struct Spare<'a> {
    pool: &'a Spares,
    path: Option<PathBuf>,
}

impl Spare<'_> {
    /// The spare's path, for the pod's record.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The pod's record names the spare now: it is the pod's, no longer noted as a spare.
    pub fn claim(mut self) {
        if let Some(path) = self.path.take() {
            if let Err(e) = self.pool.state.remove_spare(&path) {
                // Harmless: a restart finds the record naming it and leaves it to the pod.
                tracing::warn!(netns = %path.display(), error = %e, "forgetting a taken spare netns");
            }
        }
    }
}

impl Drop for Spare<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            self.pool.lock().ready.push_front(path);
        }
    }
}

impl Spares {
    /// Removes the spares a previous run left (noted in `state` and not named by a sandbox
    /// record in `claimed`) and starts keeping `size` new ones in `dir`.
    pub fn start(
        inner: Arc<dyn Namespaces>,
        state: StateDir,
        dir: &Path,
        claimed: &std::collections::HashSet<PathBuf>,
        lo_up: bool,
        size: usize,
    ) -> Self {
        for left in state.spares() {
            if !claimed.contains(&left) {
                tracing::info!(netns = %left.display(), "removing a spare netns left by a previous run");
                if let Err(e) = inner.remove(&left) {
                    // Still noted: the next start tries again.
                    tracing::warn!(netns = %left.display(), error = %e, "removing a left spare netns");
                    continue;
                }
            }
            if let Err(e) = state.remove_spare(&left) {
                tracing::warn!(netns = %left.display(), error = %e, "forgetting a left spare netns");
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(Pool::default()),
            wake: Condvar::new(),
        });
        let (ns, sh, book, dir) = (inner.clone(), shared.clone(), state.clone(), dir.to_owned());
        let refill = std::thread::Builder::new()
            .name("netns-spares".into())
            .spawn(move || {
                loop {
                    {
                        let mut pool = sh.state.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            if pool.stop {
                                return;
                            }
                            // A pod in flight wakes this thread when it ends (`Busy`).
                            if pool.ready.len() >= size || pool.busy > 0 {
                                pool = sh.wake.wait(pool).unwrap_or_else(|p| p.into_inner());
                            } else if let Some(wait) = pool.quiet_left() {
                                pool = sh
                                    .wake
                                    .wait_timeout(pool, wait)
                                    .unwrap_or_else(|p| p.into_inner())
                                    .0;
                            } else {
                                break;
                            }
                        }
                    }
                    let path = dir.join(format!("cni-{}", super::sandbox::uuid_like()));
                    let made = book
                        .save_spare(&path)
                        .map_err(|e| format!("noting it in the state journal: {e}"))
                        .and_then(|()| {
                            ns.create(&path, lo_up).inspect_err(|_| {
                                let _ = book.remove_spare(&path);
                            })
                        });
                    match made {
                        Ok(()) => sh
                            .state
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .ready
                            .push_back(path),
                        Err(e) => {
                            // Pods make their own meanwhile; try again later, not in a loop.
                            tracing::warn!(error = %e, "making a spare netns");
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    }
                }
            })
            .inspect_err(
                |e| tracing::warn!(error = %e, "starting the netns pool's thread: no spares"),
            )
            .ok();
        Spares {
            inner,
            state,
            shared,
            refill,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a RunPodSandbox in flight until the guard is dropped: no spare is made meanwhile.
    pub fn busy(&self) -> Busy<'_> {
        self.lock().busy += 1;
        Busy(self)
    }

    /// A ready spare, if there is one (none: the pod makes its own, as without a pool). Taken
    /// under [`Spares::busy`], whose end wakes the refill: no wake-up here, on the pod's path.
    pub fn take(&self) -> Option<Spare<'_>> {
        let mut pool = self.lock();
        debug_assert!(pool.busy > 0, "a spare taken outside Spares::busy");
        let path = pool.ready.pop_front();
        drop(pool);
        path.map(|path| Spare {
            pool: self,
            path: Some(path),
        })
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.refill.take() {
            let _ = t.join();
        }
        for spare in std::mem::take(&mut self.lock().ready) {
            match self.inner.remove(&spare) {
                Ok(()) => {
                    let _ = self.state.remove_spare(&spare);
                }
                Err(e) => {
                    tracing::warn!(netns = %spare.display(), error = %e, "removing a spare netns")
                }
            }
        }
    }
}
