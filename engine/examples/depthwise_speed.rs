//! One depthwise conv (fused with its requantisation) on every SIMD kernel set this CPU
//! has: the time of the kernel alone, without the engine around it.
//!
//!     cargo run --release -p edgemed-engine --example depthwise_speed [channels size kernel stride]...
//!
//! `size` x `size` inputs, square kernels padded by kernel / 2. Without arguments:
//! MobileNetV2 x1.0's depthwise layers at 112, 56 (both strides) and 14.

use edgemed_engine::kernels::{conv, conv_scratch_len, ConvGeometry, ConvKind, DepthwiseWeights, Isa, Requant};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let shapes: Vec<[usize; 4]> = if args.len() >= 4 {
        args.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
    } else {
        vec![[32, 112, 3, 1], [144, 56, 3, 1], [96, 112, 3, 2], [384, 14, 3, 1]]
    };
    for [c, size, k, stride] in shapes {
        let p = k / 2;
        let Some(g) = ConvGeometry::new(size, size, c, k, k, [stride; 2], [p; 4]) else {
            eprintln!("no output for {c} channels at {size}, kernel {k} stride {stride}");
            continue;
        };
        let mut seed = 12345u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        };
        let x: Vec<u8> = (0..size * size * c + 64).map(|_| next()).collect();
        let w: Vec<i8> = (0..c * k * k).map(|_| next() as i8).collect();
        let r = Requant { offset: vec![0; c], mult: vec![1e-3; c], bias: vec![-20.0; c], out_zp: 3.0, lo: vec![3; c], hi: vec![255; c] };
        let (n, macs) = (g.oh * g.ow * c, (g.oh * g.ow * c * k * k) as f64);
        for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
            let kind = ConvKind::Depthwise(DepthwiseWeights::new(isa, &w, c, [k, k]));
            let (mut scratch, mut acc, mut out) = (vec![0u8; conv_scratch_len(&g, &kind) + 64], vec![0; n], vec![0u8; n]);
            let reps = (2e8 / macs).clamp(20.0, 20_000.0) as usize;
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    conv(isa, &x, &g, 128, &kind, &r, &mut scratch, &mut acc, &mut out);
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            println!(
                "{c:>4} ch {k}x{k}/{stride} at {size:>3}x{size:<3} {:>11}: {:8.2} us, {:6.1} GMAC/s",
                isa.name(),
                best * 1e6,
                macs / best / 1e9
            );
        }
    }
}
