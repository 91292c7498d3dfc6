//! One thread per core, fed first come first served, for the CPU work of requests (report checks,
//! token signatures, key wrapping).
//!
//! Why not the runtime's workers: tokio polls ready connections in its own order (local queues, a
//! LIFO slot, work stealing), so with 64 clients some requests waited twice as long as the median.
//! Why not `spawn_blocking` behind a semaphore: the permit came back only when the async task was
//! polled again, leaving a core idle between jobs (20% idle at saturation). Here a thread takes
//! the next job the moment it finishes one.
//!
//! The queue is bounded: when it is full a request is refused at once ([`CpuError::Busy`], a 503)
//! rather than queued behind work it would time out waiting for. A job whose caller has gone
//! (timeout, closed connection) is skipped.

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not run to completion.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CpuError {
    /// The queue is full.
    #[error("the server is busy")]
    Busy,
    /// The job panicked or the pool is gone.
    #[error("the task failed")]
    Failed,
}

pub(crate) struct CpuPool {
    jobs: mpsc::SyncSender<Job>,
}

impl CpuPool {
    /// `threads` workers and room for `pending` jobs not yet started; the workers exit when the
    /// pool is dropped.
    pub(crate) fn new(threads: usize, pending: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(pending.max(1));
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("coffer-cpu-{i}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(CpuPool { jobs })
    }

    /// Run `f` on the pool; [`CpuError::Busy`] at once if the queue is full.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CpuError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // Nobody waits for the answer any more: do not spend a core on it.
            if tx.is_closed() {
                return;
            }
            // A panic drops `tx`: the caller gets Failed and the worker lives on.
            if let Ok(v) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            }
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => CpuError::Busy,
            mpsc::TrySendError::Disconnected(_) => CpuError::Failed,
        })?;
        rx.await.map_err(|_| CpuError::Failed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn runs_concurrent_jobs_and_survives_a_panic() {
        let pool = Arc::new(CpuPool::new(2, 64).unwrap());
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
        assert_eq!(
            pool.run(|| -> u8 { panic!("job failed") }).await,
            Err(CpuError::Failed)
        );
        let handles: Vec<_> = (0..32usize)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || i * 2).await })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Ok(i * 2));
        }
        // Both workers are still there after the panic.
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }

    /// One worker busy, one job queued: the next is refused at once, and the pool works again
    /// once the queue drains.
    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let pool = CpuPool::new(1, 1).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let mut first = std::pin::pin!(pool.run(move || {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            1
        }));
        // Polled once, a job is submitted; it then waits for its answer.
        tokio::select! { biased; _ = &mut first => unreachable!(), _ = async {} => {} }
        started_rx.recv().unwrap();
        let mut second = std::pin::pin!(pool.run(|| 2));
        tokio::select! { biased; _ = &mut second => unreachable!(), _ = async {} => {} }
        let t = std::time::Instant::now();
        assert_eq!(pool.run(|| 3).await, Err(CpuError::Busy));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        release_tx.send(()).unwrap();
        assert_eq!(first.await, Ok(1));
        assert_eq!(second.await, Ok(2));
        assert_eq!(pool.run(|| 4).await, Ok(4));
    }
}
