//! One depthwise conv (fused with its requantisation) on every SIMD kernel set this CPU
//! has: the time of the kernel alone, without the engine around it.
//!
//!     cargo run --release -p edgemed-engine --example depthwise_speed [channels size kernel stride]...
//!
//! `size` x `size` inputs, square kernels padded by kernel / 2. Without arguments:
//! MobileNetV2 x1.0's depthwise layers at 112, 56 (both strides) and 14.

mod common;

use edgemed_engine::kernels::{ConvGeometry, ConvKind, DepthwiseWeights, Isa};

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
        let mut bytes = common::Bytes::default();
        let x = bytes.take(size * size * c + 64);
        let w: Vec<i8> = bytes.take(c * k * k).into_iter().map(|b| b as i8).collect();
        let r = common::requant(c);
        let macs = (g.oh * g.ow * c * k * k) as f64;
        for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
            let kind = ConvKind::Depthwise(DepthwiseWeights::new(isa, &w, c, [k, k]));
            let best = common::seconds_per_conv(isa, &x, &g, &kind, &r, macs, 2e8);
            println!(
                "{c:>4} ch {k}x{k}/{stride} at {size:>3}x{size:<3} {:>11}: {:8.2} us, {:6.1} GMAC/s",
                isa.name(),
                best * 1e6,
                macs / best / 1e9
            );
        }
    }
}
