//! A bound on the plugin chains run at once, DEL served first.
//!
//! Every ADD and DEL execs a chain of plugin processes (Go binaries: tens of milliseconds of
//! CPU each to start). Unbounded, a burst past what the cores can run makes hundreds of them
//! contend at once: each gets slower, ADDs time out or fail on addresses that DELs stuck behind
//! them would have freed, and their retries add more. Measured on 2 cores at 120 pods/s
//! (issue 15): ~145 `host-local` and ~145 `bridge` processes alive at once, 75 % of the CPU in
//! plugins, the /24 full and 193 sandboxes stuck in ADD. A gate keeps the chains at a number the
//! machine runs well; waiting DELs go before waiting ADDs because each one frees what the next
//! ADD needs (an address, a veth). The time spent waiting is the caller's to record, apart from
//! the plugin's: it is the instrument's queueing, not the CNI's latency.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// What a chain run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Attach (waits behind every waiting DEL).
    Add,
    /// Detach (served first).
    Del,
}

#[derive(Debug)]
struct State {
    free: usize,
    dels: VecDeque<oneshot::Sender<Permit>>,
    adds: VecDeque<oneshot::Sender<Permit>>,
}

/// The gate; cheap to clone. `limit` 0 means no bound.
#[derive(Debug, Clone)]
pub struct Gate {
    state: Option<Arc<Mutex<State>>>,
}

/// A running chain's place; the next waiter gets it when this drops.
#[derive(Debug)]
pub struct Permit {
    state: Option<Arc<Mutex<State>>>,
}

impl Gate {
    /// At most `limit` chains at once; 0: unbounded.
    pub fn new(limit: usize) -> Self {
        Gate {
            state: (limit > 0).then(|| {
                Arc::new(Mutex::new(State {
                    free: limit,
                    dels: VecDeque::new(),
                    adds: VecDeque::new(),
                }))
            }),
        }
    }

    /// Waits for a place; returns it and how long the wait was.
    pub async fn enter(&self, work: Work) -> (Permit, Duration) {
        let started = Instant::now();
        let Some(state) = &self.state else {
            return (Permit { state: None }, Duration::ZERO);
        };
        let waiting = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if s.free > 0 && s.dels.is_empty() && (work == Work::Del || s.adds.is_empty()) {
                s.free -= 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                match work {
                    Work::Del => s.dels.push_back(tx),
                    Work::Add => s.adds.push_back(tx),
                }
                Some(rx)
            }
        };
        let permit = match waiting {
            None => Permit {
                state: Some(state.clone()),
            },
            // A sender is only dropped after sending (a permit handing over); were it dropped
            // otherwise, this call runs without taking a place rather than failing.
            Some(rx) => rx.await.unwrap_or_else(|_| Permit { state: None }),
        };
        (permit, started.elapsed())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let next = s.dels.pop_front().or_else(|| s.adds.pop_front());
            let Some(tx) = next else {
                s.free += 1;
                return;
            };
            // A waiter that gave up (its call was dropped) hands the place on at once.
            let handed = Permit {
                state: Some(state.clone()),
            };
            match tx.send(handed) {
                Ok(()) => return,
                Err(mut back) => back.state = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_most_limit_run_and_dels_go_first() {
        let gate = Gate::new(1);
        let (held, waited) = gate.enter(Work::Add).await;
        assert!(
            waited < Duration::from_millis(1),
            "{waited:?}: an open gate does not wait"
        );
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, work) in [
            ("add1", Work::Add),
            ("del1", Work::Del),
            ("add2", Work::Add),
        ] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let (_p, _) = gate.enter(work).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            // Queued in this order.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "nobody passes a full gate"
        );
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["del1", "add1", "add2"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_does_not_keep_the_place() {
        let gate = Gate::new(1);
        let (held, _) = gate.enter(Work::Add).await;
        let gone = tokio::time::timeout(Duration::from_millis(10), gate.enter(Work::Del)).await;
        assert!(gone.is_err());
        drop(held);
        let (_again, waited) = tokio::time::timeout(Duration::from_secs(1), gate.enter(Work::Add))
            .await
            .expect("the place came back");
        assert!(waited < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn zero_is_unbounded() {
        let gate = Gate::new(0);
        let mut held = Vec::new();
        for _ in 0..100 {
            let (p, waited) = gate.enter(Work::Add).await;
            assert_eq!(waited, Duration::ZERO);
            held.push(p);
        }
    }
}

#[cfg(test)]
mod bound {
    use super::*;

    /// The one property the gate exists for, under contention from two worker threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_limit_at_once() {
        let gate = Gate::new(3);
        let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..60 {
            let (gate, now, max) = (gate.clone(), now.clone(), max.clone());
            tasks.push(tokio::spawn(async move {
                let work = if i % 3 == 0 { Work::Del } else { Work::Add };
                let (_p, _) = gate.enter(work).await;
                let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                max.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
