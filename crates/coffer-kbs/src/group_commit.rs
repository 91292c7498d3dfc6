//! Group commit: rows that concurrent callers append share one transaction, hence one fsync.
//!
//! Every release decision is audited durably before it is answered. One fsync per decision made
//! the audit table a queue of its own under load (the disk serialises them); here the first caller
//! to arrive becomes the leader, writes everything queued by then in one transaction and wakes the
//! others, whose rows it carried. A lone caller pays exactly one commit, as before.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

struct State<T, E> {
    /// Rows waiting for a leader; `queue[0]` has ticket `queued_from`.
    queue: Vec<T>,
    queued_from: u64,
    /// Tickets below this are written (or failed).
    committed: u64,
    leader: bool,
    /// Tickets whose batch failed, with why; each waiter takes its own.
    failed: HashMap<u64, E>,
}

/// `E` is the batch's error, handed to every caller whose row the batch carried.
pub(crate) struct GroupCommit<T, E> {
    state: Mutex<State<T, E>>,
    done: Condvar,
}

impl<T, E: Clone> GroupCommit<T, E> {
    pub(crate) fn new() -> Self {
        GroupCommit {
            state: Mutex::new(State {
                queue: Vec::new(),
                queued_from: 0,
                committed: 0,
                leader: false,
                failed: HashMap::new(),
            }),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, E>> {
        // The state is consistent between statements; a panic elsewhere does not poison its meaning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append `row`; returns once it is durable (or its batch failed). `write` commits a batch
    /// atomically; whichever caller leads uses its own `write`, so all callers pass the same one.
    pub(crate) fn submit(
        &self,
        row: T,
        write: impl FnOnce(Vec<T>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut st = self.lock();
        let ticket = st.queued_from + st.queue.len() as u64;
        st.queue.push(row);
        let mut write = Some(write);
        loop {
            if ticket < st.committed {
                return match st.failed.remove(&ticket) {
                    Some(why) => Err(why),
                    None => Ok(()),
                };
            }
            if !st.leader {
                if let Some(write) = write.take() {
                    st.leader = true;
                    let batch = std::mem::take(&mut st.queue);
                    let (from, to) = (st.queued_from, st.queued_from + batch.len() as u64);
                    st.queued_from = to;
                    drop(st);
                    let result = write(batch);
                    st = self.lock();
                    st.leader = false;
                    st.committed = to;
                    if let Err(why) = result {
                        st.failed.extend((from..to).map(|t| (t, why.clone())));
                    }
                    self.done.notify_all();
                    continue;
                }
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_rows_share_batches_and_all_land_once() {
        let gc = Arc::new(GroupCommit::<usize, ()>::new());
        let written = Arc::new(Mutex::new(Vec::new()));
        let batches = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (gc, written, batches) = (gc.clone(), written.clone(), batches.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        gc.submit(t * 1000 + i, |rows: Vec<usize>| {
                            batches.fetch_add(1, Ordering::SeqCst);
                            // A slow commit, as an fsync is: others queue meanwhile.
                            std::thread::sleep(std::time::Duration::from_millis(1));
                            written.lock().unwrap().extend(rows);
                            Ok(())
                        })
                        .unwrap();
                        // Durable on return.
                        assert!(written.lock().unwrap().contains(&(t * 1000 + i)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut all = written.lock().unwrap().clone();
        all.sort();
        let mut expected: Vec<usize> = (0..16)
            .flat_map(|t| (0..50).map(move |i| t * 1000 + i))
            .collect();
        expected.sort();
        assert_eq!(all, expected);
        assert!(batches.load(Ordering::SeqCst) < 800, "rows were grouped");
    }

    #[test]
    fn a_failed_batch_fails_exactly_its_rows() {
        let gc = GroupCommit::new();
        assert_eq!(gc.submit(1, |_| Err("disk full")), Err("disk full"));
        assert_eq!(
            gc.submit(2, |rows| if rows == vec![2] {
                Ok(())
            } else {
                Err("wrong batch")
            }),
            Ok(())
        );
    }
}
