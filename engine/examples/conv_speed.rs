//! One dense conv (fused with its requantisation) on every SIMD kernel set this CPU
//! has: the time of the kernel alone, without the engine around it.
//!
//!     cargo run --release -p edgemed-engine --example conv_speed [cin cout size kernel stride]...
//!
//! `size` x `size` inputs, square kernels padded by kernel / 2. Without arguments:
//! MobileNetV2 x1.0's first conv (3 -> 32, 3x3 stride 2 at 224x224), its small-K
//! expansion (16 -> 96 at 112x112), a projection (96 -> 24 at 56x56) and a deep
//! layer (576 -> 96 at 14x14).

mod common;

use edgemed_engine::kernels::{ConvGeometry, ConvKind, Isa, PackedWeights};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let shapes: Vec<[usize; 5]> = if args.len() >= 5 {
        args.chunks_exact(5).map(|c| [c[0], c[1], c[2], c[3], c[4]]).collect()
    } else {
        vec![[3, 32, 224, 3, 2], [16, 96, 112, 1, 1], [96, 24, 56, 1, 1], [576, 96, 14, 1, 1]]
    };
    for [cin, cout, size, k, stride] in shapes {
        let p = k / 2;
        let Some(g) = ConvGeometry::new(size, size, cin, k, k, [stride; 2], [p; 4]) else {
            eprintln!("no output for {cin} -> {cout} at {size}, kernel {k} stride {stride}");
            continue;
        };
        let mut bytes = common::Bytes::default();
        let x = bytes.take(size * size * cin + 64);
        let w: Vec<i8> = bytes.take(cout * k * k * cin).into_iter().map(|b| b as i8).collect();
        let r = common::requant(cout);
        let macs = (g.oh * g.ow * cout * k * k * cin) as f64;
        for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
            let kind = ConvKind::Dense(PackedWeights::new(isa, w.clone(), cout, k, k * cin));
            let best = common::seconds_per_conv(isa, &x, &g, &kind, &r, macs, 2e9);
            println!(
                "{cin:>4} -> {cout:<4} {k}x{k}/{stride} at {size:>3}x{size:<3} {:>11}: {:8.2} us, {:6.1} GMAC/s",
                isa.name(),
                best * 1e6,
                macs / best / 1e9
            );
        }
    }
}
