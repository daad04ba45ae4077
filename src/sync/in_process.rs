//! Ranks that are threads of one program: the in-process [`Collective`].
//! Native targets only: a browser's thread cannot wait for another rank.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Collective, DEFAULT_COLLECTIVE_TIMEOUT};
use crate::error::{Error, Result};

/// Ranks that are threads of one program, one per device (a
/// [`GpuContext`](crate::GpuContext) each): [`in_process`] makes a group of them.
///
/// A rank that is dropped (its thread ended, or panicked) or that aborts
/// fails the group: every collective not yet complete, and every later one,
/// returns [`Error::Collective`] on every rank.
#[derive(Debug)]
pub struct InProcessRank {
    rank: usize,
    /// The collectives this rank has taken part in.
    calls: AtomicU64,
    group: Arc<Group>,
}

#[derive(Debug)]
struct Group {
    size: usize,
    timeout: Duration,
    state: Mutex<GroupState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Collectives under way by number: each rank's values, and how many
    /// ranks have yet to read the result of a complete one.
    rounds: HashMap<u64, Round>,
    /// Why the group failed, once it did.
    failed: Option<String>,
}

#[derive(Debug)]
struct Round {
    parts: Vec<Option<Vec<f64>>>,
    unread: usize,
}

impl Round {
    fn complete(&self) -> bool {
        self.parts.iter().all(Option::is_some)
    }
}

/// `size` ranks of one process, to be moved one to each thread; a collective
/// waits at most [`DEFAULT_COLLECTIVE_TIMEOUT`] for the others.
///
/// ```
/// use wgpu_batchnorm::{in_process, Collective};
/// let ranks = in_process(2);
/// let threads: Vec<_> = ranks.into_iter().map(|r| std::thread::spawn(move || r.all_gather(&[r.rank() as f64]))).collect();
/// for t in threads {
///     assert_eq!(t.join().unwrap().unwrap(), vec![0.0, 1.0]);
/// }
/// ```
pub fn in_process(size: usize) -> Vec<InProcessRank> {
    in_process_with_timeout(size, DEFAULT_COLLECTIVE_TIMEOUT)
}

/// [`in_process`] whose collectives wait at most `timeout` for the other
/// ranks; past it a waiting rank returns [`Error::Collective`] and fails the group.
pub fn in_process_with_timeout(size: usize, timeout: Duration) -> Vec<InProcessRank> {
    let group = Arc::new(Group { size, timeout, state: Mutex::default(), changed: Condvar::new() });
    (0..size).map(|rank| InProcessRank { rank, calls: AtomicU64::new(0), group: group.clone() }).collect()
}

impl Group {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the group (the first reason stays) and wakes every waiting rank.
    fn fail(&self, state: &mut GroupState, reason: String) {
        state.failed.get_or_insert(reason);
        self.changed.notify_all();
    }
}

impl Collective for InProcessRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.size
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<f64>> {
        let group = &self.group;
        let number = self.calls.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + group.timeout;
        let mut state = group.lock();
        if let Some(reason) = &state.failed {
            return Err(Error::Collective(reason.clone()));
        }
        let round = state.rounds.entry(number).or_insert_with(|| Round { parts: vec![None; group.size], unread: group.size });
        round.parts[self.rank] = Some(local.to_vec());
        if round.complete() {
            group.changed.notify_all();
        }
        loop {
            let round = state.rounds.get_mut(&number).filter(|r| r.complete());
            if let Some(round) = round {
                let gathered: Vec<f64> = round.parts.iter().flatten().flatten().copied().collect();
                round.unread -= 1;
                if round.unread == 0 {
                    state.rounds.remove(&number);
                }
                if gathered.len() != local.len() * group.size {
                    let reason = format!("ranks gathered {} values, {} each expected", gathered.len(), local.len());
                    group.fail(&mut state, reason.clone());
                    return Err(Error::Collective(reason));
                }
                return Ok(gathered);
            }
            if let Some(reason) = &state.failed {
                return Err(Error::Collective(reason.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = state
                    .rounds
                    .get(&number)
                    .map_or_else(Vec::new, |r| r.parts.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(rank, _)| rank).collect());
                let reason = format!("rank {} waited {:?} for ranks {missing:?} in collective {number}", self.rank, group.timeout);
                group.fail(&mut state, reason.clone());
                return Err(Error::Collective(reason));
            }
            state = group.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn abort(&self, reason: &str) {
        let mut state = self.group.lock();
        self.group.fail(&mut state, format!("rank {} failed: {reason}", self.rank));
    }
}

impl Drop for InProcessRank {
    fn drop(&mut self) {
        let panicking = if std::thread::panicking() { " (its thread panicked)" } else { "" };
        let mut state = self.group.lock();
        // Collectives this rank completed stay readable; any other fails.
        if state.failed.is_none() {
            let reason = format!("rank {} left the group{panicking}", self.rank);
            self.group.fail(&mut state, reason);
        }
    }
}
