//! One thread per core, fed first come first served, for the CPU work of requests (report checks,
//! token signatures, key wrapping).
//!
//! Why not the runtime's workers: tokio polls ready connections in its own order (local queues, a
//! LIFO slot, work stealing), so with 64 clients some requests waited twice as long as the median.
//! Why not `spawn_blocking` behind a semaphore: the permit came back only when the async task was
//! polled again, leaving a core idle between jobs (20% idle at saturation). Here a thread takes
//! the next job the moment it finishes one.

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct CpuPool {
    jobs: mpsc::Sender<Job>,
}

impl CpuPool {
    /// `threads` workers; they exit when the pool is dropped.
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
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

    /// Run `f` on the pool; `None` if it panicked or the pool is gone.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic drops `tx`: the caller gets None and the worker lives on.
            if let Ok(v) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            }
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn runs_concurrent_jobs_and_survives_a_panic() {
        let pool = Arc::new(CpuPool::new(2).unwrap());
        assert_eq!(pool.run(|| 6 * 7).await, Some(42));
        assert_eq!(pool.run(|| -> u8 { panic!("job failed") }).await, None);
        let handles: Vec<_> = (0..32usize)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || i * 2).await })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Some(i * 2));
        }
        // Both workers are still there after the panic.
        assert_eq!(pool.run(|| 1).await, Some(1));
    }
}
