//! What handing an op's parts to the engine's thread pool costs: a job of two parts,
//! each spinning for a given time, against the same two spells run one after the
//! other on the calling thread. The difference at zero work is the hand-over; the
//! cut rules of `split.rs` weigh a part's work against it.
//!
//!     cargo run --release -p edgemed-engine --example pool_handover [threads]
//!
//! Each line: best of 5 batches of 20,000 jobs, each job followed by 1 us of serial
//! work (an op's set-up between two cut ops), that microsecond left out.

use edgemed_engine::pool::Pool;
use std::time::{Duration, Instant};

/// Spins for `ns` nanoseconds.
fn spin(ns: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_nanos(ns) {
        std::hint::spin_loop();
    }
}

/// Microseconds per iteration of `f`, less the 1 us of serial work it includes: the
/// best of 5 batches.
fn per_job(f: impl Fn()) -> f64 {
    const JOBS: u32 = 20_000;
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..JOBS {
                f();
                spin(1000);
            }
            t.elapsed().as_secs_f64() / JOBS as f64 * 1e6 - 1.0
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2).max(2);
    let pool = Pool::new(threads);
    println!("{} threads ({} asked)", pool.threads(), threads);
    for work in [0u64, 500, 1000, 2000, 4000] {
        let parts = pool.threads();
        let pooled = per_job(|| pool.run(parts, &|_, _| spin(work)));
        let serial = per_job(|| (0..parts).for_each(|_| spin(work)));
        println!("{parts} parts of {work:>4} ns: pool {pooled:5.2} us, one thread {serial:5.2} us");
    }
}
