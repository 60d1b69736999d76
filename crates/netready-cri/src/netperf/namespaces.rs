//! How netperf pods' network namespaces are made and removed: the kernel's, or in unit tests
//! a stand-in that needs no root (the lifecycle's undo logic is tested with it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

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
    /// Gives the namespace at `from` the name `to`; on error `from` is as it was.
    fn rename(&self, from: &Path, to: &Path) -> Result<(), String>;
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

    fn rename(&self, from: &Path, to: &Path) -> Result<(), String> {
        netready_netns::rename(from, to).map_err(|e| e.to_string())
    }
}

/// Namespaces made ahead of time (`netperf.netns_pool`): a thread keeps `size` spares, each
/// made as a pod's would be (`lo` up or not), and a pod's netns is a spare renamed to the
/// name its record gave. The unshare and the kernel's setup of a new namespace leave
/// RunPodSandbox's path; their CPU is spent all the same, by the refilling thread.
///
/// Spares are named `netready-spare-<hash of the state dir>-<random>`: one netready's own, so at
/// start it removes those a killed predecessor left, and never another instance's.
pub struct Spares {
    inner: Arc<dyn Namespaces>,
    lo_up: bool,
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
}

/// The prefix of one netready's spares: FNV-1a of its state dir, a hash written out here
/// because it must not change between builds (std's hasher may), or a restarted netready
/// would not know its predecessor's spares.
pub fn spare_prefix(state_dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("netready-spare-{:08x}-", h as u32)
}

impl Spares {
    /// Removes the spares a previous run left in `dir` and starts keeping `size` new ones.
    pub fn start(
        inner: Arc<dyn Namespaces>,
        dir: &Path,
        prefix: String,
        lo_up: bool,
        size: usize,
    ) -> Self {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                tracing::info!(netns = %e.path().display(), "removing a spare netns left by a previous run");
                if let Err(e) = inner.remove(&e.path()) {
                    tracing::warn!(error = %e, "removing a left spare netns");
                }
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(Pool::default()),
            wake: Condvar::new(),
        });
        let (ns, sh, dir) = (inner.clone(), shared.clone(), dir.to_owned());
        let refill = std::thread::Builder::new()
            .name("netns-spares".into())
            .spawn(move || {
                loop {
                    {
                        let mut pool = sh.state.lock().unwrap_or_else(|p| p.into_inner());
                        while !pool.stop && pool.ready.len() >= size {
                            pool = sh.wake.wait(pool).unwrap_or_else(|p| p.into_inner());
                        }
                        if pool.stop {
                            return;
                        }
                    }
                    // Random, so a restart's spares never take a left one's name.
                    let path = dir.join(format!("{prefix}{:016x}", rand::random::<u64>()));
                    match ns.create(&path, lo_up) {
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
            .ok();
        Spares {
            inner,
            lo_up,
            shared,
            refill,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Namespaces for Spares {
    fn create(&self, path: &Path, lo_up: bool) -> Result<(), String> {
        let spare = if lo_up == self.lo_up {
            self.lock().ready.pop_front()
        } else {
            None
        };
        self.shared.wake.notify_one();
        if let Some(spare) = spare {
            match self.inner.rename(&spare, path) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "a spare netns could not be used: making one");
                    let _ = self.inner.remove(&spare);
                }
            }
        }
        self.inner.create(path, lo_up)
    }

    fn remove(&self, path: &Path) -> Result<(), String> {
        self.inner.remove(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), String> {
        self.inner.rename(from, to)
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
            if let Err(e) = self.inner.remove(&spare) {
                tracing::warn!(netns = %spare.display(), error = %e, "removing a spare netns");
            }
        }
    }
}
