//! ADD with retries, timed the way DESIGN.md defines it: every attempt from its start to its
//! end; a failed attempt's leftovers removed with DEL before the next (after the last, the
//! caller's to remove); backoff between attempts; no new attempt after the deadline.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chain::{Added, Attachment, Network};
use crate::clock::Stamp;
use crate::error::Error;
use crate::gate::{Gate, Work};

/// How often and how long to retry a failing ADD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts at most (1 = no retry).
    pub attempts: u32,
    /// Wait after the first failure; doubles after each further one.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// No attempt starts later than this after the first one started.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            deadline: Duration::from_secs(120),
        }
    }
}

/// What one failed step reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// CNI error code (999: no code).
    pub code: u32,
    /// Bounded class (`plugin_error`, `timeout`, ...), for metric labels.
    pub reason: String,
    /// The full message, plugin message included.
    pub message: String,
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Self {
        Failure {
            code: e.code(),
            reason: e.reason().into(),
            message: e.to_string(),
        }
    }
}

/// One ADD attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the ADD started.
    pub start: Stamp,
    /// When it ended.
    pub end: Stamp,
    /// Why it failed; `None` for the successful one.
    pub error: Option<Failure>,
    /// The DEL that cleaned up after a failure: its duration and error.
    pub cleanup: Option<(Duration, Option<Failure>)>,
    /// How long the attempt waited for a place at the [`Gate`] before it started (netready's
    /// queueing, not the plugins' time).
    #[serde(default)]
    pub queued: Duration,
}

impl AttemptRecord {
    /// The attempt's duration.
    pub fn duration(&self) -> Duration {
        self.end.since(&self.start)
    }
}

/// Runs ADD until it succeeds or the policy gives up. `on_attempt` sees every record as soon
/// as it is complete (to persist progress). Returns the success or the last error.
pub async fn add_with_retry(
    net: &Network,
    att: &Attachment,
    policy: &RetryPolicy,
    gate: &Gate,
    mut on_attempt: impl FnMut(&AttemptRecord),
) -> Result<Added, Error> {
    let attempts = policy.attempts.max(1);
    let mut backoff = policy.initial_backoff;
    let mut first: Option<Stamp> = None;
    let mut n = 0;
    loop {
        n += 1;
        // The attempt starts when its chain may run: the wait is the gate's, recorded apart.
        let (permit, queued) = gate.enter(Work::Add).await;
        let start = Stamp::now();
        let first = *first.get_or_insert(start);
        let outcome = net.add(att).await;
        let end = Stamp::now();
        drop(permit);
        let err = match outcome {
            Ok(added) => {
                on_attempt(&AttemptRecord {
                    start,
                    end,
                    error: None,
                    cleanup: None,
                    queued,
                });
                return Ok(added);
            }
            Err(e) => e,
        };
        let too_late = || Stamp::now().since(&first) + backoff > policy.deadline;
        let mut last = n >= attempts || too_late();
        // Plugins that failed mid-chain may hold addresses or links: released before the next
        // attempt. After the last one the caller's undo runs the DEL (one place tears a
        // failed sandbox down, also after a crash).
        let cleanup = if last {
            None
        } else {
            let _permit = gate.enter(Work::Del).await;
            let del_start = Stamp::now();
            let del = net.del(att, None).await;
            if let Err(d) = &del {
                tracing::warn!(container = %att.container_id, error = %d, "DEL after failed ADD");
            }
            // A slow DEL may have used up the time left.
            last = too_late();
            Some((
                Stamp::now().since(&del_start),
                del.as_ref().err().map(Failure::from),
            ))
        };
        on_attempt(&AttemptRecord {
            start,
            end,
            error: Some(Failure::from(&err)),
            cleanup,
            queued,
        });
        if last {
            return Err(err);
        }
        tracing::debug!(container = %att.container_id, attempt = n, error = %err, ?backoff, "ADD failed, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}
