//! Running independent pieces of work (whole batches, a volume's windows) side by side
//! on scoped threads, and the allocator setting that batches need
//! ([`keep_freed_memory`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};

use crate::error::{Error, Result};

/// Keeps memory the process frees for its next runs. Runs allocate and free the same
/// large buffers again and again (a batch's outputs, a volume's windows). glibc hands
/// freed memory at the top of its heap back to the kernel past 128 KiB by default, and
/// serves blocks past a threshold from fresh mappings, so each run paid page faults on
/// memory it had just freed: a U-Net window batch of two on one thread took 1.25 ms
/// against 2 x 0.47 for its items, the join of its two outputs 140 us. With freed
/// memory kept (up to 256 MiB above what a run holds), 1.06 ms and 19 us, with the
/// same peak resident memory to 0.5 MiB. A process-wide setting: call it once, before
/// other threads start (`edgemed-run` does, first thing; a server or a Python binding
/// running batches should too). Elsewhere than glibc on Linux it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of the allocator's thresholds; the caller calls it
    // before other threads start.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// `f` over every item, one thread per item (inline when there is one), results in
/// item order. Callers pass as many items as they want threads.
pub fn map_side_by_side<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Vec<Result<R>> {
    if items.len() == 1 {
        return vec![f(&items[0])];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|item| s.spawn(|| f(item))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::Invalid("worker thread panicked".into())))).collect()
    })
}

/// Threads kept for a whole job that runs `f` on groups of items side by side: the
/// calling thread takes a group's first item, each helper one more
/// ([`Helpers::map`]). Where groups come one after another (a volume's windows, a few
/// at a time, blended in order between groups), this spares a thread spawn per group
/// (tens of microseconds), which [`map_side_by_side`] pays.
pub struct Helpers<'a, T, R> {
    jobs: Vec<Sender<T>>,
    results: Vec<Receiver<Result<R>>>,
    f: &'a (dyn Fn(T) -> Result<R> + Sync),
}

/// `f(item)`, a panic turned into an error.
fn guarded<T, R>(f: &(dyn Fn(T) -> Result<R> + Sync), item: T) -> Result<R> {
    catch_unwind(AssertUnwindSafe(|| f(item))).unwrap_or_else(|_| Err(Error::Invalid("worker thread panicked".into())))
}

impl<T: Send, R: Send> Helpers<'_, T, R> {
    /// Threads that run a group's items at once, the caller included.
    pub fn threads(&self) -> usize {
        self.jobs.len() + 1
    }

    /// `f` over `items`, results in item order: the first on this thread, the next
    /// [`Helpers::threads`] - 1 on the helpers at the same time, any beyond those here
    /// afterwards.
    pub fn map(&mut self, items: Vec<T>) -> Vec<Result<R>> {
        let mut items = items.into_iter();
        let first = items.next();
        // Helper i has an item when sent[i]; a helper that is gone gets none.
        let sent: Vec<bool> = self.jobs.iter().map(|tx| items.next().is_some_and(|item| tx.send(item).is_ok())).collect();
        let mut out: Vec<Result<R>> = first.into_iter().map(|item| guarded(self.f, item)).collect();
        for (rx, sent) in self.results.iter().zip(sent) {
            if sent {
                out.push(rx.recv().unwrap_or_else(|_| Err(Error::Invalid("worker thread stopped".into()))));
            }
        }
        out.extend(items.map(|item| guarded(self.f, item)));
        out
    }
}

/// Runs `body` with `helpers` threads that apply `f` to the items [`Helpers::map`]
/// hands them; they end when `body` returns. Helpers the OS refuses to start are
/// simply not there (the caller runs their items).
pub fn with_helpers<T: Send, R: Send, O>(
    helpers: usize,
    f: impl Fn(T) -> Result<R> + Sync,
    body: impl FnOnce(&mut Helpers<'_, T, R>) -> O,
) -> O {
    let f: &(dyn Fn(T) -> Result<R> + Sync) = &f;
    std::thread::scope(|s| {
        let (mut jobs, mut results) = (Vec::new(), Vec::new());
        for i in 0..helpers {
            let (job_tx, job_rx) = channel::<T>();
            let (result_tx, result_rx) = channel::<Result<R>>();
            let spawned = std::thread::Builder::new().name(format!("edgemed-side-{}", i + 1)).spawn_scoped(s, move || {
                for item in job_rx {
                    if result_tx.send(guarded(f, item)).is_err() {
                        break;
                    }
                }
            });
            if spawned.is_ok() {
                jobs.push(job_tx);
                results.push(result_rx);
            }
        }
        // Dropped before the scope joins: the closed job channels end the helpers.
        let mut h = Helpers { jobs, results, f };
        body(&mut h)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_keep_item_order_and_report_errors_and_panics() {
        for helpers in [0, 1, 3] {
            let total = with_helpers(
                helpers,
                |x: usize| match x {
                    7 => Err(Error::Invalid("seven".into())),
                    13 => panic!("thirteen"),
                    _ => Ok((x * 10, std::thread::current().id())),
                },
                |h| {
                    assert_eq!(h.threads(), helpers + 1);
                    let mut seen = 0;
                    for group in (0..20usize).collect::<Vec<_>>().chunks(h.threads() + 1) {
                        let out = h.map(group.to_vec());
                        assert_eq!(out.len(), group.len());
                        for (&x, r) in group.iter().zip(out) {
                            match (x, r) {
                                (7, Err(e)) => assert!(e.to_string().contains("seven")),
                                (13, Err(e)) => assert!(e.to_string().contains("panicked")),
                                (x, Ok((y, _))) => assert_eq!(y, x * 10),
                                (x, r) => panic!("item {x}: {:?}", r.map(|v| v.0)),
                            }
                            seen += 1;
                        }
                    }
                    seen
                },
            );
            assert_eq!(total, 20);
        }
    }

    #[test]
    fn a_group_runs_on_as_many_threads_as_it_has_items() {
        use std::collections::HashSet;
        with_helpers(
            2,
            |_: ()| Ok(std::thread::current().id()),
            |h| {
                let ids: HashSet<_> = h.map(vec![(); 3]).into_iter().map(|r| r.unwrap()).collect();
                assert_eq!(ids.len(), 3);
            },
        );
    }
}
