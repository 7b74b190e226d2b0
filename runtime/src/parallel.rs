//! Running independent pieces of work (whole batches) side by side on scoped threads.

use crate::error::{Error, Result};

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
