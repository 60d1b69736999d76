//! Helpers for tests of CNI config loading, here and in the binary's end-to-end tests.

use std::io;
use std::path::Path;

/// Updates `dir` as kubelet updates a ConfigMap volume (its `AtomicWriter`): the conflist is
/// written into a new directory `dir/<version>`, the `..data` symlink is swapped to it by a
/// rename, `10-net.conflist` is a symlink through `..data` (made on the first update), and the
/// previous version's directory is removed.
pub fn configmap_update(dir: &Path, version: &str, conflist: &str) -> io::Result<()> {
    let data = dir.join(version);
    std::fs::create_dir(&data)?;
    std::fs::write(data.join("10-net.conflist"), conflist)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    let link = dir.join("10-net.conflist");
    if link.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("..data/10-net.conflist", link)?;
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}
