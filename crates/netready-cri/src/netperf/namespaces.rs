//! How netperf pods' network namespaces are made and removed: the kernel's, or in unit tests
//! a stand-in that needs no root (the lifecycle's undo logic is tested with it).

use std::path::Path;

/// Makes and removes pod network namespaces. Both calls block (namespace creation waits for a
/// thread of its own), so the runtime calls them off the tokio workers.
pub trait Namespaces: Send + Sync + 'static {
    /// Creates a namespace mounted at `path`, with `lo` up when `lo_up`; on error nothing is
    /// left at `path`.
    fn create(&self, path: &Path, lo_up: bool) -> Result<(), String>;
    /// Removes the namespace at `path`; already gone is success.
    fn remove(&self, path: &Path) -> Result<(), String>;
    /// Whether `path` is still there to hand to a plugin as `CNI_NETNS`.
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
}
