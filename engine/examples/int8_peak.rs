//! The core's int8 multiply-add peak, the yardstick of the engine's GMAC/s figures
//! (`edgemed-run bench --profile`): on x86-64 with AVX-512 VNNI, 12 independent
//! accumulators each take one `vpdpbusd` (64 u8 x s8 products into 16 i32 lanes) per
//! step, so the loop is bound by the instruction's throughput, not its latency.
//!
//!     cargo run --release -p edgemed-engine --example int8_peak [seconds]
//!
//! Prints GMAC/s on one thread, and what a model of N MMAC would take at half of it.
//! On a CPU with AVX2 but no AVX-512 VNNI (AMD Zen 2 and 3, Intel before Ice Lake),
//! the yardstick is the exact AVX2 product the engine uses there: 12 independent
//! accumulators each take one `vpmaddwd` (16 i16 x i16 products summed in pairs into
//! 8 i32 lanes) and one `vpaddd` per step. For comparison it also times the route of
//! runtimes that accept saturation (`vpmaddubsw` u8 x s8 into saturated i16 pair
//! sums, `vpmaddwd` by ones, `vpaddd`: 32 products per step); both are bound by the
//! same multiply pipes.
//! Where the CPU has AMX-INT8 (and the OS lends the tile state: `Isa::Avx512Amx`), also
//! the tiles' peak: 4 independent C tiles each take one `tdpbusd` (16 x 16 x 64 u8 x s8
//! products) per step.

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
        None => match avx2_peak_gmacs(seconds) {
            Some((exact, saturating)) => {
                println!("int8 peak, one thread: {exact:.1} GMAC/s (AVX2 vpmaddwd + vpaddd, exact, 12 accumulators)");
                println!("  the saturating vpmaddubsw route: {saturating:.1} GMAC/s (not exact for u8 x s8; for comparison)");
                for (name, mmac) in [("MobileNetV2 x1.0 at 224x224", 299.5), ("3-D U-Net window 32^3 (zoo)", 17.5)] {
                    println!("  {name}, {mmac} MMAC: {:.3} ms at the peak, {:.3} ms at half of it", mmac / exact, 2.0 * mmac / exact);
                }
            }
            None => println!("neither AVX-512 VNNI nor AVX2 on this CPU (or not x86-64): nothing measured"),
        },
    }
    if let Some(g) = amx_peak_gmacs(seconds) {
        println!("int8 peak of the AMX tiles, one thread: {g:.1} GMAC/s (tdpbusd, 4 accumulator tiles)");
    }
}

#[cfg(target_arch = "x86_64")]
fn amx_peak_gmacs(seconds: f64) -> Option<f64> {
    if !edgemed_engine::kernels::Isa::Avx512Amx.is_available() {
        return None;
    }
    const STEPS: u64 = 1 << 16;
    let start = std::time::Instant::now();
    let mut rounds = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        // SAFETY: the CPU has AMX-INT8 and the engine obtained the tile state for this
        // process (`is_available`).
        unsafe { amx_loop(STEPS) };
        rounds += 1;
    }
    let macs = rounds as f64 * STEPS as f64 * 4.0 * 16.0 * 16.0 * 64.0;
    Some(macs / start.elapsed().as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn amx_peak_gmacs(_seconds: f64) -> Option<f64> {
    None
}

/// `steps` x 4 `tdpbusd` into tiles 0-3 from tiles 4-7 (whatever they hold).
///
/// # Safety
/// The CPU must have AMX-INT8, with the tile state granted to the process.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_loop(steps: u64) {
    use std::arch::asm;
    // Palette 1, tiles 0-7 of 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut c = Config([0; 64]);
    c.0[0] = 1;
    for t in 0..8 {
        c.0[16 + 2 * t] = 64;
        c.0[48 + t] = 16;
    }
    // SAFETY: the caller's obligation; a valid palette-1 configuration; the loop touches
    // tile registers only, and the tiles are released at its end.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly));
        for _ in 0..steps {
            asm!(
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                options(nomem, nostack)
            );
        }
        asm!("tilerelease", options(nomem, nostack));
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

/// GMAC/s of the exact AVX2 loop and of the saturating one.
#[cfg(target_arch = "x86_64")]
fn avx2_peak_gmacs(seconds: f64) -> Option<(f64, f64)> {
    if !is_x86_feature_detected!("avx2") {
        return None;
    }
    const STEPS: u64 = 1 << 20;
    let time = |f: unsafe fn(u64), macs_per_step: f64| {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { f(1 << 14) };
        let start = std::time::Instant::now();
        let mut rounds = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            // SAFETY: as above.
            unsafe { f(STEPS) };
            rounds += 1;
        }
        rounds as f64 * STEPS as f64 * macs_per_step / start.elapsed().as_secs_f64() / 1e9
    };
    Some((time(madd_loop, 12.0 * 16.0), time(maddubs_loop, 12.0 * 32.0)))
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_peak_gmacs(_seconds: f64) -> Option<(f64, f64)> {
    None
}

/// `steps` x 12 (`vpmaddwd` + `vpaddd`) on registers only (in assembly: LLVM would
/// hoist a product of loop-invariant registers).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn madd_loop(steps: u64) {
    use std::arch::{asm, x86_64::*};
    let (a, b) = (_mm256_set1_epi16(3), _mm256_set1_epi16(-2));
    let mut acc = [_mm256_setzero_si256(); 6];
    for _ in 0..steps {
        // SAFETY: register operations only; AVX2 is the caller's obligation.
        unsafe {
            asm!(
                "vpmaddwd {t0}, {a}, {b}", "vpaddd {c0}, {c0}, {t0}",
                "vpmaddwd {t1}, {a}, {b}", "vpaddd {c1}, {c1}, {t1}",
                "vpmaddwd {t2}, {a}, {b}", "vpaddd {c2}, {c2}, {t2}",
                "vpmaddwd {t3}, {a}, {b}", "vpaddd {c3}, {c3}, {t3}",
                "vpmaddwd {t0}, {a}, {b}", "vpaddd {c4}, {c4}, {t0}",
                "vpmaddwd {t1}, {a}, {b}", "vpaddd {c5}, {c5}, {t1}",
                "vpmaddwd {t2}, {a}, {b}", "vpaddd {c0}, {c0}, {t2}",
                "vpmaddwd {t3}, {a}, {b}", "vpaddd {c1}, {c1}, {t3}",
                "vpmaddwd {t0}, {a}, {b}", "vpaddd {c2}, {c2}, {t0}",
                "vpmaddwd {t1}, {a}, {b}", "vpaddd {c3}, {c3}, {t1}",
                "vpmaddwd {t2}, {a}, {b}", "vpaddd {c4}, {c4}, {t2}",
                "vpmaddwd {t3}, {a}, {b}", "vpaddd {c5}, {c5}, {t3}",
                a = in(ymm_reg) a, b = in(ymm_reg) b,
                t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _, t3 = out(ymm_reg) _,
                c0 = inout(ymm_reg) acc[0], c1 = inout(ymm_reg) acc[1], c2 = inout(ymm_reg) acc[2],
                c3 = inout(ymm_reg) acc[3], c4 = inout(ymm_reg) acc[4], c5 = inout(ymm_reg) acc[5],
                options(nomem, nostack, pure)
            );
        }
    }
    std::hint::black_box(acc);
}

/// `steps` x 12 (`vpmaddubsw` + `vpmaddwd` by ones + `vpaddd`) on registers only.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn maddubs_loop(steps: u64) {
    use std::arch::{asm, x86_64::*};
    let (a, b, ones) = (_mm256_set1_epi8(3), _mm256_set1_epi8(-2), _mm256_set1_epi16(1));
    let mut acc = [_mm256_setzero_si256(); 6];
    for _ in 0..steps {
        // SAFETY: register operations only; AVX2 is the caller's obligation.
        unsafe {
            asm!(
                "vpmaddubsw {t0}, {a}, {b}", "vpmaddwd {t0}, {t0}, {o}", "vpaddd {c0}, {c0}, {t0}",
                "vpmaddubsw {t1}, {a}, {b}", "vpmaddwd {t1}, {t1}, {o}", "vpaddd {c1}, {c1}, {t1}",
                "vpmaddubsw {t2}, {a}, {b}", "vpmaddwd {t2}, {t2}, {o}", "vpaddd {c2}, {c2}, {t2}",
                "vpmaddubsw {t0}, {a}, {b}", "vpmaddwd {t0}, {t0}, {o}", "vpaddd {c3}, {c3}, {t0}",
                "vpmaddubsw {t1}, {a}, {b}", "vpmaddwd {t1}, {t1}, {o}", "vpaddd {c4}, {c4}, {t1}",
                "vpmaddubsw {t2}, {a}, {b}", "vpmaddwd {t2}, {t2}, {o}", "vpaddd {c5}, {c5}, {t2}",
                "vpmaddubsw {t0}, {a}, {b}", "vpmaddwd {t0}, {t0}, {o}", "vpaddd {c0}, {c0}, {t0}",
                "vpmaddubsw {t1}, {a}, {b}", "vpmaddwd {t1}, {t1}, {o}", "vpaddd {c1}, {c1}, {t1}",
                "vpmaddubsw {t2}, {a}, {b}", "vpmaddwd {t2}, {t2}, {o}", "vpaddd {c2}, {c2}, {t2}",
                "vpmaddubsw {t0}, {a}, {b}", "vpmaddwd {t0}, {t0}, {o}", "vpaddd {c3}, {c3}, {t0}",
                "vpmaddubsw {t1}, {a}, {b}", "vpmaddwd {t1}, {t1}, {o}", "vpaddd {c4}, {c4}, {t1}",
                "vpmaddubsw {t2}, {a}, {b}", "vpmaddwd {t2}, {t2}, {o}", "vpaddd {c5}, {c5}, {t2}",
                a = in(ymm_reg) a, b = in(ymm_reg) b, o = in(ymm_reg) ones,
                t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _,
                c0 = inout(ymm_reg) acc[0], c1 = inout(ymm_reg) acc[1], c2 = inout(ymm_reg) acc[2],
                c3 = inout(ymm_reg) acc[3], c4 = inout(ymm_reg) acc[4], c5 = inout(ymm_reg) acc[5],
                options(nomem, nostack, pure)
            );
        }
    }
    std::hint::black_box(acc);
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
