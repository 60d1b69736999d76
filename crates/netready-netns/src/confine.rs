//! A command run inside a pod's network namespace, as an unprivileged user.
//!
//! netready runs as root in a privileged node pod, and a netperf pod's container command comes
//! from whoever may create pods. So the child, between fork and exec, enters the pod's netns,
//! takes its limits, drops every group, its uid and gid (to a non-root user: the kernel then
//! clears its capabilities), sets `no_new_privs` (no setuid bit or file capability can give any
//! back) and asks to be killed when netready dies. This is the one place netready needs
//! `unsafe`: std has no safe way to run code between fork and exec (`pre_exec`), and `setns`
//! after the fork is what keeps netready's own threads out of the pod's namespace. The hook
//! calls async-signal-safe syscalls only and allocates nothing.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Pid, Uid};

/// Who the command runs as and what it may use.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// User id; never 0.
    pub uid: u32,
    /// Group id; never 0.
    pub gid: u32,
    /// Resource limits, soft and hard alike.
    pub limits: Vec<(Resource, u64)>,
    /// Working directory, entered as the user.
    pub cwd: String,
}

/// Arranges for `cmd` to start confined inside the network namespace at `netns`, in a process
/// group of its own (so that killing the group reaches whatever it forks).
pub fn confine(
    cmd: &mut std::process::Command,
    netns: &Path,
    c: &Confinement,
) -> std::io::Result<()> {
    if c.uid == 0 || c.gid == 0 {
        return Err(std::io::Error::other(
            "a confined command never runs as root (uid or gid 0)",
        ));
    }
    let ns = File::open(netns)?;
    let cwd = CString::new(c.cwd.as_bytes()).map_err(std::io::Error::other)?;
    let (uid, gid) = (Uid::from_raw(c.uid), Gid::from_raw(c.gid));
    let limits = c.limits.clone();
    let parent = Pid::this();
    cmd.process_group(0);
    let hook = move || -> std::io::Result<()> {
        let err = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(err)?;
        // netready died between the fork and the line above: nobody would kill this child.
        if nix::unistd::getppid() != parent {
            return Err(err(nix::errno::Errno::ESRCH));
        }
        // In the child after fork: no other thread of netready's is moved.
        #[allow(clippy::disallowed_methods)]
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(err)?;
        for (resource, value) in &limits {
            setrlimit(*resource, *value, *value).map_err(err)?;
        }
        nix::unistd::setgroups(&[]).map_err(err)?;
        nix::unistd::setresgid(gid, gid, gid).map_err(err)?;
        nix::unistd::setresuid(uid, uid, uid).map_err(err)?;
        nix::sys::prctl::set_no_new_privs().map_err(err)?;
        nix::unistd::chdir(cwd.as_c_str()).map_err(err)?;
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec; it only makes syscalls through
    // nix on values prepared before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}
