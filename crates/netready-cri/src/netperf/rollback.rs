//! Undoing a RunPodSandbox that did not finish: each step's undo is registered right after the
//! step (the ADD's before it: a chain failing half-way holds what its first plugins made), and
//! on failure they run in reverse — DEL, netns removal, record, name. A netready killed
//! mid-ADD leaves the record on disk; at start-up the same steps are rebuilt from it
//! ([`Rollback::for_record`]) and run by the same code.

use std::path::PathBuf;

use netready_cni::Attachment;

use super::state::SandboxRecord;
use super::NetperfRuntime;

/// One step's undo.
#[derive(Debug, Clone)]
pub(super) enum Undo {
    /// Free the sandbox name reserved for `name_namespace_uid_attempt`.
    ReleaseName(String),
    /// Forget the sandbox's record, in memory and on disk.
    ForgetRecord(String),
    /// Remove the pod's network namespace.
    RemoveNetns(PathBuf),
    /// CNI DEL of the chain, so the plugins free what they hold (addresses above all).
    Del(Attachment),
}

/// The undo steps of a RunPodSandbox in progress. Run or disarm it: dropped with steps left
/// (a panic in a step) it says so, and the record on disk is torn down at the next start.
#[must_use = "run the undo steps on failure, or disarm them on success"]
#[derive(Debug, Default)]
pub(super) struct Rollback {
    steps: Vec<Undo>,
}

impl Rollback {
    /// Registers the undo of a step that just succeeded.
    pub fn push(&mut self, undo: Undo) {
        self.steps.push(undo);
    }

    /// The sandbox made it: nothing is undone.
    pub fn disarm(mut self) {
        self.steps.clear();
    }

    /// The undo of every step a sandbox in `rec` has been through, as RunPodSandbox
    /// registered them.
    pub fn for_record(rec: &SandboxRecord) -> Self {
        Rollback {
            steps: vec![
                Undo::ReleaseName(SandboxRecord::reserved_name(&rec.meta)),
                Undo::ForgetRecord(rec.id.clone()),
                Undo::RemoveNetns(rec.netns.clone()),
                Undo::Del(attachment(rec)),
            ],
        }
    }

    /// Runs every undo step, latest first. A step that fails is logged and the next still
    /// runs (leaving the netns because DEL failed would leak both), but then the record stays
    /// on disk: it is what tells the next start to try the DEL and the removal again, and the
    /// only place the plugins' addresses are still written down. The name is released all
    /// the same, so kubelet's retry is not refused. A DEL that failed only because plugins
    /// are not installed keeps nothing: a plugin that never ran holds nothing.
    pub async fn run(mut self, rt: &NetperfRuntime, sandbox: &str) {
        let mut keep_record = false;
        while let Some(step) = self.steps.pop() {
            let result = match &step {
                Undo::ForgetRecord(id) if keep_record => {
                    rt.store().sandboxes.remove(id);
                    rt.forget_guards(id);
                    tracing::warn!(%sandbox, "kept the failed sandbox's record: its teardown is tried again at the next start");
                    Ok(())
                }
                _ => rt.undo(&step).await,
            };
            if let Err((e, holds)) = result {
                tracing::warn!(%sandbox, step = ?step, error = %e, "undoing a failed sandbox");
                keep_record |= holds;
            }
            super::crash::reached(match step {
                Undo::Del(_) => "undo:deleted",
                Undo::RemoveNetns(_) => "undo:netns-removed",
                Undo::ForgetRecord(_) => "undo:forgotten",
                Undo::ReleaseName(_) => "undo:released",
            });
        }
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if !self.steps.is_empty() {
            tracing::error!(steps = ?self.steps, "a failed sandbox's undo did not run: its name stays reserved and it is torn down at the next start");
        }
    }
}

/// Whether a DEL failed only because plugins are not installed.
fn not_installed(e: &netready_cni::Error) -> bool {
    match e {
        netready_cni::Error::NotFound { .. } | netready_cni::Error::NotExecutable { .. } => true,
        netready_cni::Error::Many(all) => all.iter().all(not_installed),
        _ => false,
    }
}

/// The attachment a sandbox's plugins were (or are) run with.
pub(super) fn attachment(rec: &SandboxRecord) -> Attachment {
    Attachment {
        container_id: rec.id.clone(),
        netns: rec.netns.display().to_string(),
        ifname: rec.ifname.clone(),
        args: rec.cni_args.clone(),
        capability_args: rec.capability_args.clone(),
    }
}

impl NetperfRuntime {
    /// Runs one undo step; an error says whether what the step was to undo may still be held
    /// (a namespace, plugin state).
    async fn undo(&self, step: &Undo) -> Result<(), (String, bool)> {
        match step {
            Undo::ReleaseName(name) => {
                self.store().names.remove(name);
                Ok(())
            }
            Undo::ForgetRecord(id) => {
                self.store().sandboxes.remove(id);
                self.forget_guards(id);
                self.inner
                    .state
                    .remove_sandbox(id)
                    .map_err(|e| (e.to_string(), false))
            }
            Undo::RemoveNetns(path) => {
                let ns = self.inner.namespaces.clone();
                let path = path.clone();
                tokio::task::spawn_blocking(move || ns.remove(&path))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
                    .map_err(|e| (e, true))
            }
            Undo::Del(att) => {
                let net = self.network().map_err(|e| (e.to_string(), true))?;
                let mut att = att.clone();
                // libcni allows an empty CNI_NETNS on DEL: the plugins still free their IPAM
                // and host-side state when the namespace never came to be or is gone.
                if !self
                    .inner
                    .namespaces
                    .exists(std::path::Path::new(&att.netns))
                {
                    att.netns.clear();
                }
                // Not in `cni_del_duration`: that family is StopPodSandbox's DELs.
                let _permit = self.inner.gate.enter(netready_cni::Work::Del).await;
                net.del(&att, None).await.map_err(|e| {
                    if let Some(m) = self.metrics() {
                        m.cni_failures
                            .get_or_create(&super::metrics::CniFailureLabels {
                                command: "del",
                                reason: e.reason(),
                            })
                            .inc();
                    }
                    (e.to_string(), !not_installed(&e))
                })
            }
        }
    }
}
