//! The engine's thread pool: `threads - 1` workers made once per [`crate::Engine`],
//! plus the calling thread, which always takes part. One op at a time is split into
//! parts ([`Pool::run`]); the parts are claimed from a shared counter, so a worker the
//! OS delays is covered by the others, and which thread runs which part never changes
//! a result (each part writes its own output bytes with the same integer arithmetic).
//!
//! An op lasts a few to tens of microseconds, so handing out its parts must cost far
//! less. The fast path takes no lock:
//! - a job is published as one atomic *ticket* (generation, parts, next part), and a
//!   part is claimed by a compare-and-swap of that ticket, so a claim made for an old
//!   job can never take a part of a new one;
//! - the caller waits for its job's parts to be *finished* (a counter), not for the
//!   workers to check in: a worker that wakes after the caller has done every part
//!   itself finds nothing left and costs the caller nothing. Measured on 2 cores, a
//!   job of two parts of 2 us with 1 us of serial work between jobs: 4.1 us per job
//!   with a locked hand-over that waited for every worker, 3.8 us now; two empty
//!   parts: 3.2 us, now 1.7 us.
//!
//! A worker polls the ticket for a short while before it sleeps on a condition
//! variable, and the caller polls likewise before sleeping while the last parts
//! finish. Polling yields the core at every turn after the first microseconds: on a
//! machine busy with other work, the thread being waited for may share the poller's
//! core, and a pure spin would keep it off for the whole spell (measured: +200 us per
//! op). Sleeping and waking pair a sequentially consistent flag with a re-check under
//! the lock, so no wake-up is lost.
//!
//! The pool runs one job at a time. A second caller that finds it busy (an engine
//! shared by several threads, each running its own item) runs its parts itself.

use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a thread polls before it sleeps: longer than the gap between two ops of a
/// plan (a few microseconds of serial work), short enough not to hold a core long.
const SPIN: Duration = Duration::from_micros(200);
/// How long the polling spins before it starts to yield the core at every turn.
const PURE_SPIN: Duration = Duration::from_micros(1);

/// Polls `ready` until it holds or [`SPIN`] has passed; whether it holds.
fn poll(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..16 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        let t = start.elapsed();
        if t >= SPIN {
            return ready();
        }
        if t >= PURE_SPIN {
            std::thread::yield_now();
        }
    }
}

/// The ticket of a job: generation (32 bits) | parts (16) | next part to claim (16).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ticket(u64);

/// Parts one ticket can hand out; [`Pool::run`] runs more as several jobs.
const MAX_PARTS: usize = 0xffff;

impl Ticket {
    fn new(generation: u32, parts: usize) -> Ticket {
        debug_assert!(parts <= MAX_PARTS);
        Ticket((generation as u64) << 32 | (parts as u64) << 16)
    }
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    fn parts(self) -> usize {
        (self.0 >> 16 & 0xffff) as usize
    }
    fn next(self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

/// A job as the threads see it: `f(part, lane)`. The lifetime is erased; see
/// [`Pool::run`] for why the pointer stays valid while a thread uses it.
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize, usize) + Sync));

struct Shared {
    ticket: AtomicU64,
    /// The current job; written by the caller only while no part of any job is
    /// claimed and unfinished (see [`Pool::run`]).
    job: UnsafeCell<Option<JobRef>>,
    /// Parts of the current job that have finished.
    finished: AtomicUsize,
    /// A worker's part panicked in the current job.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers asleep on `wake`, or about to be (incremented under `lock`).
    sleepers: AtomicUsize,
    /// The caller is asleep on `done`, or about to be.
    caller_sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    done: Condvar,
}

// SAFETY: `job` is the only field that is not itself Sync. It is written by the one
// caller holding `Pool::submit`, only between jobs, and read by a thread only after it
// has claimed a part of the current job (see `Pool::run` for the ordering); the
// pointee is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // Nothing runs under the lock but flag checks: poisoning cannot leave a state to repair.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the next part of job `generation`; None when it has none left or
    /// another job has begun.
    fn claim(&self, generation: u32) -> Option<usize> {
        let mut t = Ticket(self.ticket.load(Acquire));
        loop {
            if t.generation() != generation || t.next() >= t.parts() {
                return None;
            }
            match self.ticket.compare_exchange_weak(t.0, t.0 + 1, AcqRel, Acquire) {
                Ok(_) => return Some(t.next()),
                Err(now) => t = Ticket(now),
            }
        }
    }

    /// Runs part `i` of the current job on `lane` (claimed by this thread), then
    /// counts it finished, waking the caller if it was the last one. A panic on a
    /// worker is flagged before the part counts as finished (the caller reads the flag
    /// once all have); the caller's own (lane 0) payload is returned.
    fn run_part(&self, i: usize, lane: usize, parts: usize) -> Option<Box<dyn std::any::Any + Send>> {
        // SAFETY: a claimed, unfinished part keeps the job published and alive (Pool::run).
        let job = unsafe { (*self.job.get()).expect("a claimed part has a job") };
        // SAFETY: as above; the pointee lives until every part has finished.
        let r = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*job.0)(i, lane) })).err();
        if r.is_some() && lane != 0 {
            self.panicked.store(true, Relaxed);
        }
        if self.finished.fetch_add(1, SeqCst) + 1 == parts && self.caller_sleeping.load(SeqCst) {
            let _g = self.lock();
            self.done.notify_one();
        }
        r
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
            ticket: AtomicU64::new(Ticket::new(0, 0).0),
            job: UnsafeCell::new(None),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            caller_sleeping: AtomicBool::new(false),
            lock: Mutex::new(()),
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
        for first in (0..parts).step_by(MAX_PARTS) {
            let n = (parts - first).min(MAX_PARTS);
            self.job(n, &|i, lane| f(first + i, lane));
        }
        drop(guard);
    }

    /// One job of at most [`MAX_PARTS`] parts; the caller holds `submit`.
    fn job(&self, parts: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let sh = &*self.shared;
        // SAFETY: only the lifetime is erased (same fat pointer layout). Threads call the
        // pointer only for a part they claimed of this job's ticket, and this function
        // returns (or unwinds) only after every part has finished: all claims, hence
        // all calls, end before `f` goes. The previous job's parts have all finished
        // too, so no thread reads `job` while it is written here; the ticket's Release
        // store below publishes it to the threads that claim with Acquire.
        let erased = JobRef(unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static (dyn Fn(usize, usize) + Sync)>(f) });
        unsafe { *sh.job.get() = Some(erased) };
        sh.finished.store(0, Relaxed);
        sh.panicked.store(false, Relaxed);
        let generation = Ticket(sh.ticket.load(Relaxed)).generation().wrapping_add(1);
        sh.ticket.store(Ticket::new(generation, parts).0, SeqCst);
        if sh.sleepers.load(SeqCst) > 0 {
            let _g = sh.lock();
            sh.wake.notify_all();
        }
        let mut mine = None;
        while let Some(i) = sh.claim(generation) {
            if let Some(p) = sh.run_part(i, 0, parts) {
                mine.get_or_insert(p);
            }
        }
        // The workers' parts end about when ours did: poll, then sleep.
        if !poll(|| sh.finished.load(Acquire) == parts) {
            let mut g = sh.lock();
            sh.caller_sleeping.store(true, SeqCst);
            while sh.finished.load(SeqCst) != parts {
                g = sh.done.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            sh.caller_sleeping.store(false, SeqCst);
            drop(g);
        }
        // Every part has finished: the pointer goes before `f` does.
        unsafe { *sh.job.get() = None };
        if let Some(p) = mine {
            panic::resume_unwind(p);
        }
        assert!(!sh.panicked.load(Acquire), "a part of an INT8 engine op panicked on a worker thread");
    }
}

fn worker(sh: &Shared, lane: usize) {
    let mut seen = 0u32;
    loop {
        // Poll for the next job, then sleep.
        let fresh = || Ticket(sh.ticket.load(Acquire)).generation() != seen || sh.shutdown.load(Acquire);
        if !poll(fresh) {
            let mut g = sh.lock();
            sh.sleepers.fetch_add(1, SeqCst);
            while Ticket(sh.ticket.load(SeqCst)).generation() == seen && !sh.shutdown.load(SeqCst) {
                g = sh.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            sh.sleepers.fetch_sub(1, SeqCst);
            drop(g);
        }
        if sh.shutdown.load(Acquire) {
            return;
        }
        let t = Ticket(sh.ticket.load(Acquire));
        seen = t.generation();
        while let Some(i) = sh.claim(seen) {
            sh.run_part(i, lane, t.parts());
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let sh = &*self.shared;
        {
            let _g = sh.lock();
            sh.shutdown.store(true, SeqCst);
            sh.wake.notify_all();
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
    use std::sync::atomic::Ordering;

    #[test]
    fn back_to_back_jobs_each_run_every_part_once() {
        // Jobs far shorter than a worker's wake-up: late workers meet newer tickets,
        // and a claim made for an old job must never take a part of a new one.
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
