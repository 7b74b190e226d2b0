//! The engine's thread pool: `threads - 1` workers made once per [`crate::Engine`],
//! plus the calling thread, which always takes part. One op at a time is split into
//! parts ([`Pool::run`]); the parts are claimed from a shared counter, so a worker the
//! OS delays is covered by the others, and which thread runs which part never changes
//! a result (each part writes its own output bytes with the same integer arithmetic).
//!
//! An op lasts tens of microseconds, so waking the workers must cost far less: a
//! worker polls the job counter for a short while before it sleeps on a condition
//! variable, and the caller polls likewise before sleeping while the last parts
//! finish. Polling yields the core at every turn after the first few: on a machine
//! busy with other work, the thread being waited for may share the poller's core, and
//! a pure spin would keep it off for the whole spell (measured: +200 us per op).
//!
//! The caller waits only for the workers that joined the job, never for one that has
//! not arrived yet: once every part is claimed, it withdraws the job (under the lock
//! that a worker takes to join) and waits for those inside to leave. A worker the OS
//! has descheduled (a 2-vCPU VM whose other vCPU is taken) then costs nothing: the
//! caller has run its parts (measured before: MobileNetV2 x0.25 on two threads some
//! runs 0.45 ms against 0.27, slower than one thread).
//!
//! The pool runs one job at a time. A second caller that finds it busy (an engine
//! shared by several threads, each running its own item) runs its parts itself.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a thread polls before it sleeps: longer than the gap between two ops of a
/// plan (a few microseconds of serial work), short enough not to hold a core long.
const SPIN: Duration = Duration::from_micros(200);
/// Polls that spin before the polling starts to yield the core (about a microsecond).
const PURE_SPINS: u32 = 64;

/// Polls `ready` until it holds or [`SPIN`] has passed; whether it holds.
fn poll(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    for i in 0u32.. {
        if ready() {
            return true;
        }
        if i < PURE_SPINS {
            std::hint::spin_loop();
        } else if start.elapsed() < SPIN {
            std::thread::yield_now();
        } else {
            return false;
        }
    }
    unreachable!()
}

/// A job as workers see it: `f(lane)` claims parts until none is left. The lifetime is
/// erased; see [`Pool::run`] for why the pointer stays valid while a worker holds it.
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync` (shared calls from several threads are fine), and
// `Pool::run` keeps it alive until every worker has finished with it.
unsafe impl Send for JobRef {}

struct State {
    /// The current job, while workers may join it (withdrawn once every part is claimed).
    job: Option<JobRef>,
    shutdown: bool,
    /// Workers asleep on `wake`.
    sleeping: usize,
    /// The caller asleep on `done`, waiting for the workers inside the job.
    caller_sleeping: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped (under the lock) when a job is published or at shutdown.
    generation: AtomicU64,
    /// Workers inside the current job: incremented under the lock while `job` is set,
    /// so that none joins after the caller has withdrawn it.
    inside: AtomicUsize,
    wake: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Parts run outside the lock and panics are caught, so poisoning would only
        // come from a bug in this file; the state stays consistent either way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held for the length of a job: one job at a time.
    submit: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` in all (the caller and `threads - 1` workers; 0 counts as 1).
    /// Workers that the OS refuses to start are simply not there (fewer threads, same results).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { job: None, shutdown: false, sleeping: 0, caller_sleeping: false }),
            generation: AtomicU64::new(0),
            inside: AtomicUsize::new(0),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let workers: Vec<JoinHandle<()>> = (1..threads.max(1))
            .map_while(|lane| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new().name(format!("edgemed-int8-{lane}")).spawn(move || worker(&shared, lane)).ok()
            })
            .collect();
        Pool { threads: workers.len() + 1, shared, workers, submit: Mutex::new(()) }
    }

    /// Threads that run a job's parts, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether a job is running now (from any caller). A hint only: the answer may
    /// change as soon as it is given, and [`Pool::run`] stays correct either way.
    pub fn busy(&self) -> bool {
        matches!(self.submit.try_lock(), Err(TryLockError::WouldBlock))
    }

    /// Runs `f(part, lane)` for every part in `0..parts`, each exactly once, on the
    /// caller and the workers; returns when all have finished. `lane` (below
    /// [`Pool::threads`]) names the thread: no two parts run on one lane at once, so
    /// a lane may own scratch buffers. A panic in a part is raised here afterwards.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let guard = match self.submit.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            // Another caller's job is running: this one runs alone.
            Err(TryLockError::WouldBlock) => None,
        };
        if self.workers.is_empty() || parts <= 1 || guard.is_none() {
            (0..parts).for_each(|i| f(i, 0));
            return;
        }
        let next = AtomicUsize::new(0);
        // The first panic of a part, raised here once every part has finished; each
        // part is caught on its own, so a thread goes on claiming parts after one.
        let panicked: Mutex<Option<Box<dyn std::any::Any + Send>>> = Mutex::new(None);
        let job = |lane: usize| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= parts {
                break;
            }
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| f(i, lane))) {
                panicked.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
            }
        };
        let job: &(dyn Fn(usize) + Sync) = &job;
        // SAFETY: only the lifetime is erased (same fat pointer layout). `job` outlives
        // every use of the pointer: a worker calls it only after joining (taking it out
        // of the state and incrementing `inside`, under the lock, while it is set) and
        // before leaving (decrementing `inside`); this function withdraws it under the
        // lock and does not return before `inside` is 0 (nor unwind: parts are caught).
        let erased: JobRef = JobRef(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(job) });
        let sh = &*self.shared;
        {
            let mut st = sh.lock();
            st.job = Some(erased);
            sh.generation.fetch_add(1, Ordering::SeqCst);
            if st.sleeping > 0 {
                sh.wake.notify_all();
            }
        }
        // The caller claims parts until none is left (all of them if no worker came).
        job(0);
        // Every part is claimed: no worker may join any more; wait for those inside
        // (their last parts end about when ours did: poll first).
        sh.lock().job = None;
        poll(|| sh.inside.load(Ordering::Acquire) == 0);
        let mut st = sh.lock();
        while sh.inside.load(Ordering::Acquire) != 0 {
            st.caller_sleeping = true;
            st = sh.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.caller_sleeping = false;
        drop(st);
        drop(guard);
        if let Some(p) = panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
            panic::resume_unwind(p);
        }
    }
}

fn worker(sh: &Shared, lane: usize) {
    let mut seen = 0u64;
    loop {
        // Poll for the next job, then sleep.
        poll(|| sh.generation.load(Ordering::Acquire) != seen);
        let job = {
            let mut st = sh.lock();
            while !st.shutdown && sh.generation.load(Ordering::Acquire) == seen {
                st.sleeping += 1;
                st = sh.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                st.sleeping -= 1;
            }
            if st.shutdown {
                return;
            }
            seen = sh.generation.load(Ordering::Acquire);
            // Withdrawn already (the caller claimed every part): nothing to join.
            let Some(job) = st.job else { continue };
            sh.inside.fetch_add(1, Ordering::AcqRel);
            job
        };
        // SAFETY: this worker joined under the lock while the job was set; `Pool::run`
        // keeps it alive until `inside` reaches 0, which needs the decrement below.
        // The job catches its parts' panics.
        unsafe { (*job.0)(lane) };
        if sh.inside.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Taking the lock orders this with the caller's check of `inside` before it sleeps.
            let st = sh.lock();
            if st.caller_sleeping {
                sh.done.notify_one();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_to_back_jobs_each_run_every_part_once() {
        // Jobs far shorter than a worker's wake-up: workers arrive late, and a worker
        // still leaving one job must not take a part of the next.
        for threads in [2, 3] {
            let pool = Pool::new(threads);
            for k in 0..20_000usize {
                let parts = 2 + k % 3;
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                pool.run(parts, &|i, _| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "job {k}: {parts} parts on {threads} threads");
            }
        }
    }

    #[test]
    fn every_part_runs_once_on_a_lane_below_threads() {
        for threads in [1, 2, 3, 4] {
            let pool = Pool::new(threads);
            for parts in [0, 1, 2, 5, 64] {
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                pool.run(parts, &|i, lane| {
                    assert!(lane < pool.threads());
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{threads} threads, {parts} parts");
            }
        }
    }

    #[test]
    fn a_panicking_part_is_raised_to_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(3);
        for _ in 0..2 {
            let r = panic::catch_unwind(AssertUnwindSafe(|| pool.run(8, &|i, _| assert!(i != 5, "part 5"))));
            assert!(r.is_err());
        }
        let n = AtomicUsize::new(0);
        pool.run(8, &|_, _| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn concurrent_callers_share_one_pool() {
        let pool = Pool::new(2);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let n = AtomicUsize::new(0);
                        pool.run(4, &|_, _| {
                            n.fetch_add(1, Ordering::Relaxed);
                        });
                        assert_eq!(n.load(Ordering::Relaxed), 4);
                    }
                });
            }
        });
    }
}
