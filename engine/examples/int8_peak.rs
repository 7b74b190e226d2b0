//! The core's int8 multiply-add peak, the yardstick of the engine's GMAC/s figures
//! (`edgemed-run bench --profile`): on x86-64 with AVX-512 VNNI, 12 independent
//! accumulators each take one `vpdpbusd` (64 u8 x s8 products into 16 i32 lanes) per
//! step, so the loop is bound by the instruction's throughput, not its latency.
//!
//!     cargo run --release -p edgemed-engine --example int8_peak [seconds]
//!
//! Prints GMAC/s on one thread, and what a model of N MMAC would take at half of it.

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    match peak_gmacs(seconds) {
        Some(g) => {
            println!("int8 peak, one thread: {g:.1} GMAC/s (vpdpbusd zmm, 12 accumulators)");
            for (name, mmac) in [("MobileNetV2 x1.0 at 224x224", 299.5), ("3-D U-Net window 32^3 (zoo)", 17.5)] {
                // MMAC over GMAC/s is milliseconds.
                println!("  {name}, {mmac} MMAC: {:.3} ms at the peak, {:.3} ms at half of it", mmac / g, 2.0 * mmac / g);
            }
        }
        None => println!("no AVX-512 VNNI on this CPU (or not x86-64): nothing measured"),
    }
}

#[cfg(target_arch = "x86_64")]
fn peak_gmacs(seconds: f64) -> Option<f64> {
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")) {
        return None;
    }
    const STEPS: u64 = 1 << 20;
    // SAFETY: the CPU has AVX-512F and VNNI (checked above).
    unsafe { vnni_loop(1 << 14) };
    let start = std::time::Instant::now();
    let mut rounds = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        // SAFETY: as above.
        unsafe { vnni_loop(STEPS) };
        rounds += 1;
    }
    let macs = rounds as f64 * STEPS as f64 * 12.0 * 64.0;
    Some(macs / start.elapsed().as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn peak_gmacs(_seconds: f64) -> Option<f64> {
    None
}

/// `steps` x 12 `vpdpbusd` on registers only.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vnni_loop(steps: u64) {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
    let mut acc = [_mm512_setzero_si512(); 12];
    for _ in 0..steps {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    // Keep the sums alive so that the loop is not removed.
    let mut sum = _mm512_setzero_si512();
    for v in acc {
        sum = _mm512_add_epi32(sum, v);
    }
    std::hint::black_box(sum);
}
