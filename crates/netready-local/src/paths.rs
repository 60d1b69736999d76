//! Where `netready local` runs keep their files and namespaces, and how those are named. The
//! cluster makes them and the sweep of killed runs finds them again by the same names, so both
//! take them from here rather than from each other.

use std::path::{Path, PathBuf};

/// Where runs keep their files, one directory per `netready local` process id.
pub const RUN_ROOT: &str = "/run/netready-local";
/// Where node namespaces are mounted (visible to `ip netns`, named `nrl<pid>-…`).
pub const NETNS_DIR: &str = "/run/netns";

/// The run directory of the `netready local` process `pid`.
pub fn run_dir(pid: u32) -> PathBuf {
    Path::new(RUN_ROOT).join(pid.to_string())
}

/// How the names of process `pid`'s namespaces in [`NETNS_DIR`] begin.
pub fn netns_prefix(pid: u32) -> String {
    format!("nrl{pid}-")
}

/// The process a namespace in [`NETNS_DIR`] was made for, if [`netns_prefix`] named it.
pub fn pid_of_netns(name: &str) -> Option<u32> {
    name.strip_prefix("nrl")?.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_name_gives_back_its_run() {
        assert_eq!(
            pid_of_netns(&format!("{}n3", netns_prefix(4242))),
            Some(4242)
        );
        assert_eq!(pid_of_netns(&format!("{}fabric", netns_prefix(7))), Some(7));
        // Namespaces someone else made in /run/netns are left alone.
        assert_eq!(pid_of_netns("cni-1234-abcd"), None);
        assert_eq!(pid_of_netns("nrlx-fabric"), None);
        assert_eq!(pid_of_netns("nrl12"), None);
    }
}
