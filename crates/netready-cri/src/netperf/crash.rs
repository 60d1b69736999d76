//! Crash points, for the tests that kill netready at each step of a pod's lifecycle.
//!
//! `NETREADY_TEST_CRASH_AT=<step>` makes netready SIGKILL itself the first time it reaches
//! `<step>`: what a `kill -9` or an OOM kill at that instant leaves on the node is then exactly
//! reproducible, where killing from outside only lands somewhere. Unset (always, outside
//! those tests) a step costs one load of a cached `Option`.

use std::sync::OnceLock;

/// Every step a crash can be injected at, in lifecycle order.
pub const STEPS: &[&str] = &[
    // RunPodSandbox: the record saved, nothing made yet.
    "run:recorded",
    // The netns made (lo up), no ADD yet.
    "run:netns",
    // ADD done, the ready record not saved.
    "run:added",
    // The ready record saved, the response not sent.
    "run:ready",
    // StopPodSandbox: DEL done, the netns still there.
    "stop:deleted",
    // The netns removed, the stopped record not saved.
    "stop:netns-removed",
    // RemovePodSandbox: the sandbox's file removed, the pod's not yet.
    "remove:sandbox-removed",
    // The undo of a RunPodSandbox whose ADD failed (the same code tears down at start-up):
    // after its DEL, its netns removal, its record's removal, its name's release.
    "undo:deleted",
    "undo:netns-removed",
    "undo:forgotten",
    "undo:released",
];

/// Dies here if told to.
pub(crate) fn reached(step: &'static str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("NETREADY_TEST_CRASH_AT").ok());
    if at.as_deref() == Some(step) {
        debug_assert!(STEPS.contains(&step), "{step} is not in STEPS");
        tracing::warn!(step, "NETREADY_TEST_CRASH_AT: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
