//! Buffers whose first value starts a cache line (64 bytes): the scratch the engine
//! keeps between runs and the weight layouts the x86 kernels read 64 bytes at a time
//! (`vpdpbusd` quadruples of 16 channels, AMX B tiles of 64-byte rows).

/// A zeroed buffer of `len` values whose first value starts a cache line (64 bytes):
/// a vector's 64-byte rows of a channels-last tensor then never straddle two lines
/// where the channel count is a multiple of 64. The allocator aligns to 16 bytes only,
/// so where a buffer began within its line moved with how earlier blocks were laid out:
/// `edgemed-run` keeping freed memory moved MobileNetV2 x1.0's buffers and made it
/// 1.5-2% slower on one thread. Lined: 4.4% faster than either (p50, 9 interleaved
/// runs), its pointwise convs of more than 64 inputs 9% (per-op profiles).
#[derive(Default)]
pub(crate) struct Lined<T> {
    v: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> Lined<T> {
    pub(crate) fn zeroed(len: usize) -> Self {
        let per_line = 64 / std::mem::size_of::<T>().max(1);
        let v = vec![T::default(); len + per_line];
        let start = v.as_ptr().align_offset(64).min(per_line);
        Lined { v, start, len }
    }

    /// A lined copy of `values`.
    pub(crate) fn from_slice(values: &[T]) -> Self {
        let mut l = Lined::zeroed(values.len());
        l.copy_from_slice(values);
        l
    }
}

/// A copy is lined again (a clone of the inner vector could start anywhere in a line).
impl<T: Copy + Default> Clone for Lined<T> {
    fn clone(&self) -> Self {
        Lined::from_slice(self)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Lined<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> std::ops::Deref for Lined<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.v[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for Lined<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.v[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::Lined;

    /// Every buffer starts a cache line, holds exactly its length of zeros, and keeps
    /// what is written to it; for bytes and int32, at lengths around a line.
    #[test]
    fn lined_buffers_start_a_cache_line() {
        for len in [0, 1, 15, 16, 63, 64, 65, 1000, 4097] {
            let mut b = Lined::<u8>::zeroed(len);
            assert_eq!((b.len(), b.as_ptr() as usize % 64), (len, 0), "u8 x {len}");
            assert!(b.iter().all(|&v| v == 0));
            b.iter_mut().enumerate().for_each(|(i, v)| *v = i as u8);
            assert!(b.iter().enumerate().all(|(i, &v)| v == i as u8));
            let mut a = Lined::<i32>::zeroed(len);
            assert_eq!((a.len(), a.as_ptr() as usize % 64), (len, 0), "i32 x {len}");
            a.iter_mut().enumerate().for_each(|(i, v)| *v = -(i as i32));
            assert!(a.iter().enumerate().all(|(i, &v)| v == -(i as i32)));
        }
        assert_eq!(Lined::<u8>::default().len(), 0);
        // Copies and clones: lined, the same values.
        let v: Vec<i8> = (0..300).map(|i| (i % 251) as i8).collect();
        let l = Lined::from_slice(&v);
        let c = l.clone();
        for x in [&l, &c] {
            assert_eq!((x.as_ptr() as usize % 64, &x[..]), (0, &v[..]));
        }
    }
}
