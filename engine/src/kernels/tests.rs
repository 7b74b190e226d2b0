//! The property tests of every kernel family against the scalar reference, for every
//! implementation this CPU has ([`Isa::available`]; the scalar one checks itself):
//! dense products, fused convolutions (dense and depthwise, any kernel, strides and
//! padding; grouped, with the scalar reference itself checked against f64 loops), the VNNI-shaped 3x3 depthwise case with extreme values, int32 sums,
//! standalone depthwise and requantisation, input quantisation and the quantised
//! Add. Random cases come from [`super::testgen`]; weights are packed once per ISA,
//! as the compiler packs them. What only one architecture can differ in (armv7's
//! subnormal flushing) is tested in that architecture's file.

use super::testgen::{conv_case, grouped_case, random_requant, ConvCase, ConvSpec, GroupedCase, Lcg};
use super::*;
use super::{ConvKind, QTensor};

/// Mean and standard deviation (at least 1) of int32 sums.
fn spread(acc: &[i32]) -> (f64, f64) {
    let n = acc.len() as f64;
    let mean = acc.iter().map(|&a| a as f64).sum::<f64>() / n;
    let sd = (acc.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n).sqrt().max(1.0);
    (mean, sd)
}

#[test]
fn the_architectures_simd_kernels_are_available() {
    let available = Isa::available();
    eprintln!("available: {available:?}, detected: {:?}", Isa::detect());
    assert_eq!(available[0], Isa::Scalar);
    #[cfg(target_arch = "aarch64")]
    assert!(available.contains(&Isa::Neon), "NEON is part of the aarch64 baseline");
    // Detection picks the best one, or the one asked for.
    let detected = Isa::detect();
    assert!(available.contains(&detected));
    if std::env::var_os("EDGEMED_INT8_ISA").is_none() {
        assert_eq!(detected, *available.last().unwrap());
    }
}

#[test]
#[should_panic(expected = "weights packed for")]
fn weights_packed_for_another_isa_are_refused() {
    let w = PackedWeights::new(Isa::Scalar, vec![1; 8], 2, 1, 4);
    let other = *Isa::available().last().unwrap();
    let other = if other == Isa::Scalar { Isa::Avx2 } else { other };
    let mut acc = vec![0; 2];
    gemm(other, &[1; 4], 1, &w, &mut acc);
}

#[test]
fn gemm_equals_scalar_on_random_shapes() {
    let mut s = Lcg::new(1);
    for isa in Isa::available() {
        for _ in 0..60 {
            let (p, k, c) = (1 + s.below(23), 1 + s.below(77), 1 + s.below(41));
            let x: Vec<u8> = (0..p * k).map(|_| s.u8()).collect();
            // Extremes included: 255 x -128 everywhere would overflow 16-bit pair sums.
            let w: Vec<i8> = (0..c * k).map(|i| if i % 7 == 0 { -128 } else { s.i8() }).collect();
            let reference = PackedWeights::new(Isa::Scalar, w.clone(), c, 1, k);
            let packed = PackedWeights::new(isa, w, c, 1, k);
            let (mut a, mut b) = (vec![0; p * c], vec![0x5a5a_5a5a; p * c]);
            scalar::gemm(&x, p, &reference, &mut a);
            gemm(isa, &x, p, &packed, &mut b);
            assert_eq!(a, b, "p {p} k {k} c {c} on {isa:?}");
        }
    }
}

/// Whole fused convolutions (dense with any kernel, depthwise; strides, padding)
/// on every implementation this CPU has, against the scalar reference.
#[test]
fn convolutions_equal_scalar_on_random_geometries() {
    let spec = ConvSpec { max_hw: 14, max_c: 40, kh: &[1, 3, 5], kw: None, max_stride: 2, extreme_every: 5 };
    let (checked, inside, total, _) = convs_equal_scalar(11, &spec, 160);
    assert!(checked > 100);
    // Most outputs unsaturated: the comparisons say something.
    assert!(inside * 2 > total, "{inside} of {total} outputs inside the clamp");
}

/// One layer's weights, packed once, called with one requantisation and input zero
/// point, then others, then the first again, as a caller may: the kernels that keep
/// parameters made at a layer's first call with its weights (AVX2's `KeptParams`) must
/// give each call the reference's bytes for what that call passed.
#[test]
fn weights_called_with_other_requantisations_give_their_outputs() {
    let spec = ConvSpec { max_hw: 9, max_c: 40, kh: &[1, 3], kw: None, max_stride: 2, extreme_every: 7 };
    let mut s = Lcg::new(13);
    let mut checked = 0;
    for _ in 0..60 {
        let Some(case) = conv_case(&mut s, &spec) else { continue };
        let (g, n, cout) = (case.g, case.outputs(), case.cout);
        let (scalar_kind, scratch_len, acc) = scalar_sums(&case);
        let (r1, r2) = (centred_requant(&mut s, &acc, cout), centred_requant(&mut s, &acc, cout));
        // The same parameters but one channel's clamp, and another input zero point.
        let mut r3 = r1.clone();
        r3.hi[cout - 1] = r3.hi[cout - 1].saturating_sub(40);
        let zp2 = case.zp ^ 0x5a;
        let calls = [(&r1, case.zp), (&r2, case.zp), (&r1, zp2), (&r3, case.zp), (&r1, case.zp)];
        let reference: Vec<Vec<u8>> = calls
            .iter()
            .map(|&(r, zp)| {
                let mut out = vec![0u8; n];
                conv(Isa::Scalar, &case.x, &g, zp, &scalar_kind, r, &mut vec![0; scratch_len], &mut vec![0; n], &mut out);
                out
            })
            .collect();
        for isa in Isa::available() {
            let kind = case.kind(isa);
            for (k, &(r, zp)) in calls.iter().enumerate() {
                let mut out = vec![0u8; n];
                conv(isa, &case.x, &g, zp, &kind, r, &mut vec![0; scratch_len], &mut vec![0; n], &mut out);
                assert_eq!(reference[k], out, "{isa:?} call {k}, depthwise {} {g:?} cout {cout}", case.depthwise);
            }
        }
        checked += 1;
    }
    assert!(checked > 40, "{checked} cases");
}

/// Kernels taller than 16 rows (a depthwise conv along one long axis): kernels whose
/// fast paths hold a bounded number of kernel rows (AVX2's depthwise: 8 row pairs) must
/// hand them to their general path, not stop.
#[test]
fn tall_kernels_equal_scalar() {
    let spec = ConvSpec { max_hw: 24, max_c: 20, kh: &[17, 18, 21], kw: Some(&[1, 2]), max_stride: 1, extreme_every: 5 };
    let (checked, _, _, depthwise) = convs_equal_scalar(12, &spec, 120);
    assert!(checked > 20 && depthwise > 10, "{checked} cases, {depthwise} depthwise");
}

/// `rounds` random convs of `spec` requantised on every ISA, each equal to the scalar
/// reference's bytes: (cases checked, outputs inside the clamp, outputs, depthwise cases).
fn convs_equal_scalar(seed: u64, spec: &ConvSpec, rounds: usize) -> (usize, usize, usize, usize) {
    let mut s = Lcg::new(seed);
    let (mut checked, mut inside, mut total, mut depthwise) = (0, 0, 0, 0);
    for _ in 0..rounds {
        let Some(case) = conv_case(&mut s, spec) else { continue };
        let (g, n, cout) = (case.g, case.outputs(), case.cout);
        let (scalar_kind, scratch_len, acc) = scalar_sums(&case);
        let r = centred_requant(&mut s, &acc, cout);
        let mut reference = vec![0u8; n];
        conv(Isa::Scalar, &case.x, &g, case.zp, &scalar_kind, &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut reference);
        for isa in Isa::available() {
            let kind = case.kind(isa);
            let mut out = vec![0u8; n];
            conv(isa, &case.x, &g, case.zp, &kind, &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut out);
            assert_eq!(reference, out, "{isa:?} depthwise {} {g:?} cout {cout}", case.depthwise);
        }
        inside += reference.iter().filter(|&&v| v > r.lo[0] && v < 235).count();
        total += n;
        checked += 1;
        depthwise += case.depthwise as usize;
    }
    (checked, inside, total, depthwise)
}

/// `case`'s weights for the scalar reference, the scratch bytes its conv needs (with
/// slack for every ISA's), and its int32 sums.
fn scalar_sums(case: &ConvCase) -> (ConvKind, usize, Vec<i32>) {
    let kind = case.kind(Isa::Scalar);
    let scratch_len = conv_scratch_len(&case.g, &kind) + 64;
    let mut acc = vec![0i32; case.outputs()];
    scalar::accumulate(&case.x, &case.g, case.zp, &kind, &mut vec![0; scratch_len], &mut acc);
    (kind, scratch_len, acc)
}

/// Requantisation of `case`'s sums `acc` scaled and centred on them (most outputs
/// inside the clamp, so that comparisons say something).
fn centred_requant(s: &mut Lcg, acc: &[i32], cout: usize) -> Requant {
    let mut r = random_requant(s, cout);
    let (mean, sd) = spread(acc);
    r.offset.fill(0);
    for c in 0..cout {
        r.mult[c] *= (40.0 / sd / 0.01) as f32;
        r.bias[c] = (-mean * r.mult[c] as f64) as f32 + r.bias[c] * 0.1;
    }
    r.out_zp = 128.0;
    r
}

/// Grouped convolutions (cin_g and cout_g in 1..=16, equal or not; kernels 1, 3, 5;
/// strides 1, 2; any padding; extreme inputs, weights and zero points) on every
/// implementation this CPU has, against the scalar reference: fused with
/// requantisation, and the int32 sums; scratch, accumulators and outputs start dirty.
#[test]
fn grouped_convolutions_equal_scalar_on_random_geometries() {
    let mut s = Lcg::new(31);
    let (mut checked, mut inside, mut total) = (0, 0, 0);
    // Cases VNNI's or `sdot`'s direct kernel ran (groups of 4k inputs).
    #[allow(unused_mut)]
    let mut direct = 0;
    // Cases AVX2's direct kernel ran (small even groups).
    #[allow(unused_mut)]
    let mut pairs = 0;
    for _ in 0..250 {
        let Some(case) = grouped_case(&mut s, 11, 5) else { continue };
        let (g, n, cout) = (case.g, case.outputs(), case.cout());
        let scalar_kind = case.kind(Isa::Scalar);
        let mut acc = vec![0x5a5a_5a5a; n];
        accumulate(Isa::Scalar, &case.x, &g, case.zp, &scalar_kind, &mut [], &mut acc);
        let r = centred_requant(&mut s, &acc, cout);
        let mut reference = vec![0u8; n];
        conv(Isa::Scalar, &case.x, &g, case.zp, &scalar_kind, &r, &mut [], &mut vec![0; n], &mut reference);
        for isa in Isa::available() {
            let kind = case.kind(isa);
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            if matches!(&kind, ConvKind::Grouped(w) if w.quads.is_some()) {
                direct += 1;
            }
            #[cfg(target_arch = "x86_64")]
            if matches!(&kind, ConvKind::Grouped(w) if w.pairs.is_some()) {
                pairs += 1;
            }
            let scratch = conv_scratch_len(&g, &kind) + 64;
            let mut out = vec![0xa5u8; n];
            conv(isa, &case.x, &g, case.zp, &kind, &r, &mut vec![0x5a; scratch], &mut vec![0x5a5a_5a5a; n], &mut out);
            let what = format!("{isa:?} {}x{} in {} groups {g:?} zp {}", case.cin_g, case.cout_g, case.groups, case.zp);
            assert_eq!(reference, out, "{what}");
            let mut sums = vec![0x5a5a_5a5a; n];
            accumulate(isa, &case.x, &g, case.zp, &kind, &mut vec![0xa5; scratch], &mut sums);
            assert_eq!(acc, sums, "int32 sums, {what}");
        }
        inside += reference.iter().filter(|&&v| v > r.lo[0] && v < 235).count();
        total += n;
        checked += 1;
    }
    assert!(checked > 200);
    assert!(inside * 2 > total, "{inside} of {total} outputs inside the clamp");
    let has_direct = Isa::Avx512Vnni.is_available() || Isa::NeonDot.is_available();
    assert!(direct > 60 || !has_direct, "{direct} cases on a direct kernel");
    assert!(pairs > 30 || !Isa::Avx2.is_available(), "{pairs} cases on AVX2's direct kernel");
}

/// The fused kernels' requantisation at its edges: multipliers of 1/2 and 1/4 put
/// many values exactly half-way between two integers (ties go to even), a multiplier
/// of 1000 sends most far past 2^22 (where the reference clamps before rounding, and
/// the VNNI kernel rounds with `vrndscaleps`): the same bytes on every ISA.
#[test]
fn requantisation_ties_and_huge_values_equal_scalar_in_every_kernel() {
    let mut s = Lcg::new(29);
    let spec = ConvSpec { max_hw: 9, max_c: 40, kh: &[1, 3], kw: None, max_stride: 2, extreme_every: 5 };
    let mut ties = 0;
    for i in 0..120 {
        let Some(case) = conv_case(&mut s, &spec) else { continue };
        let (g, n, cout) = (case.g, case.outputs(), case.cout);
        let (scalar_kind, scratch_len, acc) = scalar_sums(&case);
        let mult = [0.5f32, 0.25, 1000.0][i % 3];
        let mut r = random_requant(&mut s, cout);
        r.offset.fill(0);
        r.mult.fill(mult);
        r.bias = (0..cout).map(|c| [0.0, 0.5, -0.5, 0.25][c % 4]).collect();
        r.out_zp = 128.0;
        ties += acc.iter().enumerate().filter(|&(j, &a)| (a as f32 * mult + r.bias[j % cout]).fract().abs() == 0.5).count();
        let mut reference = vec![0u8; n];
        conv(Isa::Scalar, &case.x, &g, case.zp, &scalar_kind, &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut reference);
        for isa in Isa::available() {
            let mut out = vec![0u8; n];
            conv(isa, &case.x, &g, case.zp, &case.kind(isa), &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut out);
            assert_eq!(reference, out, "{isa:?} depthwise {} {g:?} cout {cout} mult {mult}", case.depthwise);
        }
    }
    assert!(ties > 1000, "{ties} ties");
}

/// The scalar grouped reference against the definition in f64, on NCHW-style loops
/// over groups (a different order from the kernel's): the int32 sums exactly, and the
/// requantised outputs within one step of (Σ (x - zp) s_x w s_w + bias) / s_y
/// rounded half to even.
#[test]
fn scalar_grouped_conv_equals_float_definition() {
    let mut s = Lcg::new(37);
    for _ in 0..120 {
        let Some(case) = grouped_case(&mut s, 9, 4) else { continue };
        let GroupedCase { g, cin_g, cout_g, groups, .. } = case;
        let (n, cout) = (case.outputs(), case.cout());
        let mut acc = vec![0; n];
        scalar::accumulate(&case.x, &g, case.zp, &case.kind(Isa::Scalar), &mut [], &mut acc);
        let (sx, sw, sy) = (0.02f64, 0.003f64, 0.05f64);
        let bias: Vec<f64> = (0..cout).map(|c| c as f64 * 0.01 - 0.1).collect();
        let r = Requant {
            offset: vec![0; cout],
            mult: vec![(sx * sw / sy) as f32; cout],
            bias: bias.iter().map(|b| (b / sy) as f32).collect(),
            out_zp: 100.0,
            lo: vec![0; cout],
            hi: vec![255; cout],
        };
        let mut out = vec![0u8; n];
        scalar::requantize(&acc, cout, &r, &mut out);
        for gi in 0..groups {
            for o in 0..cout_g {
                let c = gi * cout_g + o;
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut sum = 0f64;
                        for j in 0..cin_g {
                            for i in 0..g.kh {
                                for k in 0..g.kw {
                                    let (iy, ix) = (
                                        (oy * g.stride[0] + i) as f64 - g.pads[0] as f64,
                                        (ox * g.stride[1] + k) as f64 - g.pads[1] as f64,
                                    );
                                    if iy < 0.0 || ix < 0.0 || iy >= g.h as f64 || ix >= g.w as f64 {
                                        continue;
                                    }
                                    let xv = case.x[(iy as usize * g.w + ix as usize) * g.cin + gi * cin_g + j] as f64 - case.zp as f64;
                                    sum += xv * sx * case.w[((c * cin_g + j) * g.kh + i) * g.kw + k] as f64 * sw;
                                }
                            }
                        }
                        let p = oy * g.ow + ox;
                        assert_eq!(acc[p * cout + c] as f64, (sum / (sx * sw)).round(), "sum at {p} {c}, {g:?}");
                        let want = ((sum + bias[c]) / sy).round_ties_even() + 100.0;
                        let got = out[p * cout + c] as f64;
                        assert!((got - want.clamp(0.0, 255.0)).abs() <= 1.0, "{got} for {want} at {p} {c}, {g:?}");
                    }
                }
            }
        }
    }
}

/// 3x3 depthwise convolutions (the fused VNNI kernel's case) on every implementation,
/// against the scalar reference: strides 1 and 2 in either direction, any padding,
/// odd sizes, channel counts around multiples of 16, extreme zero points and weights,
/// and requantisations from ordinary to ones whose values overflow an int32.
#[test]
fn depthwise3x3_equals_scalar_on_random_geometries() {
    let mut s = Lcg::new(23);
    let (mut checked, mut inside, mut total) = (0, 0, 0);
    for case in 0..400 {
        let (h, w) = (1 + s.below(21), 1 + s.below(21));
        let c = s.pick(&[1, 3, 15, 16, 17, 31, 32, 33, 48, 63, 64, 70]);
        let stride = [1 + s.below(2), 1 + s.below(2)];
        let pads: [usize; 4] = std::array::from_fn(|_| s.pick(&[0, 1, 1, 2]));
        let Some(g) = ConvGeometry::new(h, w, c, 3, 3, stride, pads) else { continue };
        let zp = [0u8, 128, 255, s.u8()][case % 4];
        let x: Vec<u8> = (0..h * w * c + 64)
            .map(|i| match (case / 4) % 4 {
                0 => 255,
                1 => 0,
                _ if i % 11 == 0 => 255,
                _ => s.u8(),
            })
            .collect();
        let wt: Vec<i8> = (0..c * 9)
            .map(|i| match (case / 16) % 3 {
                0 => [-128, 127][i % 2],
                1 => -128,
                _ => s.i8(),
            })
            .collect();
        let scalar_kind = ConvKind::Depthwise(DepthwiseWeights::new(Isa::Scalar, &wt, c, [3, 3]));
        let n = g.oh * g.ow * c;
        let mut r = random_requant(&mut s, c);
        r.out_zp = [0.0, 128.0, 255.0, (s.u32() % 256) as f32][(case / 2) % 4];
        match case % 5 {
            // Centred on the sums, most outputs inside the clamp.
            0 | 1 => {
                let ConvKind::Depthwise(dw) = &scalar_kind else { unreachable!() };
                let mut acc = vec![0i32; n];
                scalar::depthwise(&x, &g, zp, &dw.w, &mut acc);
                let (mean, sd) = spread(&acc);
                r.offset.fill(0);
                for ch in 0..c {
                    r.mult[ch] = (40.0 / sd) as f32 * (1.0 + ch as f32 * 0.01);
                    r.bias[ch] = (-mean * r.mult[ch] as f64) as f32 + ch as f32 * 0.37;
                }
            }
            // Past 2^22 and past 2^31 either way: saturation to lo and hi.
            2 => r.mult.iter_mut().enumerate().for_each(|(i, m)| *m = if i % 2 == 0 { 3e4 } else { -3e4 }),
            3 => r.bias.iter_mut().enumerate().for_each(|(i, b)| *b = [5e6, -5e6, 3e9, -3e9][i % 4]),
            _ => {}
        }
        let scratch_len = conv_scratch_len(&g, &scalar_kind) + 64;
        let mut reference = vec![0u8; n];
        conv(Isa::Scalar, &x, &g, zp, &scalar_kind, &r, &mut vec![0; scratch_len], &mut vec![0; n], &mut reference);
        for isa in Isa::available() {
            let kind = ConvKind::Depthwise(DepthwiseWeights::new(isa, &wt, c, [3, 3]));
            // Output and scratch start dirty: every byte must be written, none read.
            let mut out = vec![0xa5u8; n];
            conv(isa, &x, &g, zp, &kind, &r, &mut vec![0x5a; scratch_len], &mut vec![0; n], &mut out);
            assert_eq!(reference, out, "{isa:?} case {case} {g:?} zp {zp} out_zp {}", r.out_zp);
        }
        if case % 5 < 2 {
            inside += reference.iter().enumerate().filter(|&(i, &v)| v > r.lo[i % c] && v < r.hi[i % c]).count();
            total += n;
        }
        checked += 1;
    }
    assert!(checked > 300);
    // The centred cases mostly unsaturated: their comparisons say something.
    assert!(inside * 2 > total, "{inside} of {total} outputs inside the clamp");
}

/// The int32 sums (a head conv's `accumulate`: dense with padding, depthwise with any
/// kernel shape, even widths included, and strides up to 3) on every implementation,
/// with dirty scratch and output buffers.
#[test]
fn int32_sums_equal_scalar_on_random_geometries() {
    let mut s = Lcg::new(5);
    let spec = ConvSpec { max_hw: 12, max_c: 37, kh: &[1, 3, 5], kw: Some(&[1, 2, 3]), max_stride: 3, extreme_every: 3 };
    let mut checked = 0;
    for _ in 0..300 {
        let Some(case) = conv_case(&mut s, &spec) else { continue };
        let (g, n) = (case.g, case.outputs());
        let scalar_kind = case.kind(Isa::Scalar);
        let scratch = conv_scratch_len(&g, &scalar_kind) + 64;
        let mut reference = vec![0i32; n];
        accumulate(Isa::Scalar, &case.x, &g, case.zp, &scalar_kind, &mut vec![0; scratch], &mut reference);
        for isa in Isa::available() {
            let kind = case.kind(isa);
            let mut acc = vec![0x5a5a_5a5a; n];
            accumulate(isa, &case.x, &g, case.zp, &kind, &mut vec![0xa5; scratch], &mut acc);
            assert_eq!(reference, acc, "{isa:?} depthwise {} {g:?} cout {}", case.depthwise, case.cout);
        }
        checked += 1;
    }
    assert!(checked > 200);
}

/// Dense convs with rows of up to 150 inputs and up to 150 channels: several 64-input
/// tiles with their tails, odd numbers of 16-channel blocks, pixel counts off the
/// 32-pixel step of the AMX kernel, pointwise (read in place) and strided, padded
/// kernels (gathered), on every implementation, fused and as int32 sums, against the
/// scalar reference.
#[test]
fn wide_dense_convolutions_equal_scalar() {
    let mut s = Lcg::new(23);
    let spec = ConvSpec { max_hw: 28, max_c: 150, kh: &[1, 1, 3], kw: Some(&[1, 2, 3]), max_stride: 2, extreme_every: 4 };
    // (Only x86-64 counts tiled convs.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let (mut checked, mut tiled) = (0, 0);
    while checked < 40 {
        let Some(case) = conv_case(&mut s, &spec) else { continue };
        if case.depthwise {
            continue;
        }
        let (g, n) = (case.g, case.outputs());
        let scalar_kind = case.kind(Isa::Scalar);
        let scratch = conv_scratch_len(&g, &scalar_kind) + 64;
        let mut sums = vec![0i32; n];
        accumulate(Isa::Scalar, &case.x, &g, case.zp, &scalar_kind, &mut vec![0; scratch], &mut sums);
        let r = centred_requant(&mut s, &sums, case.cout);
        let mut reference = vec![0u8; n];
        conv(Isa::Scalar, &case.x, &g, case.zp, &scalar_kind, &r, &mut vec![0; scratch], &mut vec![0; n], &mut reference);
        for isa in Isa::available() {
            let kind = case.kind(isa);
            #[cfg(target_arch = "x86_64")]
            if let (Isa::Avx512Amx, ConvKind::Dense(w)) = (isa, &kind) {
                tiled += usize::from(super::amx::worth_tiles(g.oh * g.ow, g.ow, w));
            }
            let mut acc = vec![0x5a5a_5a5a; n];
            accumulate(isa, &case.x, &g, case.zp, &kind, &mut vec![0xa5; scratch], &mut acc);
            assert_eq!(sums, acc, "{isa:?} sums {g:?} cout {}", case.cout);
            let mut out = vec![0x5a; n];
            conv(isa, &case.x, &g, case.zp, &kind, &r, &mut vec![0xa5; scratch], &mut vec![0; n], &mut out);
            assert_eq!(reference, out, "{isa:?} {g:?} cout {}", case.cout);
        }
        checked += 1;
    }
    // Where the CPU has tiles, enough of these convs are large enough to run on them.
    assert!(tiled >= 10 || !Isa::Avx512Amx.is_available(), "{tiled} convs on AMX tiles");
}

/// Dense convs large enough for the AMX tiles (pointwise with one 64-input chunk and
/// with several, a 3x3 conv) with each requantisation the x86 dense kernels tell
/// apart: random zero-point offsets (the sums start from -offset), multipliers small
/// enough that the values stay below 2^30 (rounded without the upper clamp first, hi
/// applied to the bytes) and multipliers or biases that send them far past 2^31 (the
/// upper clamp before the rounding), channels of both kinds in one conv. The same
/// bytes as the scalar reference on every ISA.
#[test]
fn dense_requantisation_with_offsets_and_huge_values_equals_scalar() {
    let mut s = Lcg::new(0x0ff5e7);
    // (cin, cout, size, kernel): 0.6-3.8 M MACs each. With one chunk and 64 channels
    // or more (48 -> 200, 64 -> 64), AMX takes four blocks of a pixel at a time: whole
    // groups of four, then single blocks (200 = 3 x 64 + 8 ends in a partial block).
    // The last two (several chunks, kernel rows) have as many channels on the general
    // path, block pair by block pair. The last 32-pixel step of AMX's tiles: whole
    // (24x24), 16 pixels or fewer (26x26, 14x14, 13x13: one A tile, multiplied alone),
    // 17 (7x7: two, the second of one pixel), with one chunk and with several.
    for (i, &(cin, cout, size, k)) in [
        (64, 192, 7, 1),
        (160, 96, 7, 1),
        (24, 40, 24, 1),
        (16, 50, 26, 1),
        (100, 36, 14, 1),
        (200, 20, 13, 1),
        (16, 33, 20, 3),
        (48, 200, 20, 1),
        (64, 64, 12, 1),
        (96, 136, 14, 1),
        (16, 64, 20, 3),
    ]
    .iter()
    .enumerate()
    {
        let g = ConvGeometry::new(size, size, cin, k, k, [1, 1], [k / 2; 4]).unwrap();
        let x: Vec<u8> = (0..size * size * cin + 64).map(|_| s.u8()).collect();
        let w: Vec<i8> = (0..cout * k * k * cin).map(|j| if j % 7 == 0 { -128 } else { s.i8() }).collect();
        let zp = s.u8();
        let n = g.oh * g.ow * cout;
        let scalar_kind = ConvKind::Dense(PackedWeights::new(Isa::Scalar, w.clone(), cout, k, k * cin));
        let scratch = conv_scratch_len(&g, &scalar_kind) + 64;
        let mut sums = vec![0i32; n];
        accumulate(Isa::Scalar, &x, &g, zp, &scalar_kind, &mut vec![0; scratch], &mut sums);
        let (mean, sd) = spread(&sums);
        for huge in [0usize, 1, 2] {
            let mut r = random_requant(&mut s, cout);
            // The correction the compiler puts there (zp Σw) plus noise, so that
            // sums - offset is centred as the real one is.
            let centre = mean as i32 + (s.below(101) as f64 / 100.0 * sd / 2.0 - sd / 4.0) as i32;
            for c in 0..cout {
                r.offset[c] = centre;
                r.mult[c] = (40.0 / sd) as f32 * (0.5 + s.below(100) as f32 / 100.0);
                r.bias[c] = s.below(41) as f32 - 20.0;
                // Bounds that differ between channels (taken 64 at a time by AMX).
                r.lo[c] = s.below(40) as u8;
                // huge 1: every channel far out of range; huge 2: every third.
                if huge == 1 || (huge == 2 && c % 3 == 0) {
                    match s.below(3) {
                        0 => r.mult[c] = 1e9,
                        1 => r.bias[c] = 3e9,
                        _ => r.bias[c] = -3e9,
                    }
                }
            }
            r.out_zp = (100 + s.below(56)) as f32;
            let mut reference = vec![0u8; n];
            conv(Isa::Scalar, &x, &g, zp, &scalar_kind, &r, &mut vec![0; scratch], &mut vec![0; n], &mut reference);
            let inside = reference.iter().enumerate().filter(|&(j, &y)| y > r.lo[j % cout] && y < r.hi[j % cout]).count();
            if huge == 0 {
                assert!(inside * 2 > n, "case {i}: {inside} of {n} outputs inside the clamp");
            }
            for isa in Isa::available() {
                let kind = ConvKind::Dense(PackedWeights::new(isa, w.clone(), cout, k, k * cin));
                let mut out = vec![0x5a; n];
                conv(isa, &x, &g, zp, &kind, &r, &mut vec![0xa5; scratch], &mut vec![0; n], &mut out);
                assert_eq!(reference, out, "{isa:?} case {i} {g:?} cout {cout} huge {huge}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        assert!(
            super::amx::worth_tiles(g.oh * g.ow, g.ow, &PackedWeights::new(Isa::Avx512Amx, w.clone(), cout, k, k * cin)),
            "case {i} runs on tiles where the CPU has them"
        );
    }
}

/// The standalone depthwise kernel (raw [taps][c] weights, unpadded input without
/// slack) and requantisation.
#[test]
fn depthwise_and_requant_equal_scalar() {
    let mut s = Lcg::new(7);
    for isa in Isa::available() {
        for _ in 0..30 {
            let (h, w, c) = (1 + s.below(13), 1 + s.below(13), 1 + s.below(37));
            let stride = [1 + s.below(2); 2];
            let pad = s.below(2);
            let Some(g) = ConvGeometry::new(h, w, c, 3, 3, stride, [pad; 4]) else { continue };
            let x: Vec<u8> = (0..h * w * c).map(|_| s.u8()).collect();
            let wt: Vec<i32> = (0..9 * c).map(|_| s.i8() as i32).collect();
            let zp = s.u8();
            let n = g.oh * g.ow * c;
            let (mut a, mut b) = (vec![0; n], vec![0; n]);
            scalar::depthwise(&x, &g, zp, &wt, &mut a);
            depthwise(isa, &x, &g, zp, &wt, &mut b);
            assert_eq!(a, b, "{isa:?} {g:?}");
            let r = random_requant(&mut s, c);
            let (mut qa, mut qb) = (vec![0u8; n], vec![0u8; n]);
            scalar::requantize(&a, c, &r, &mut qa);
            requantize(isa, &a, c, &r, &mut qb);
            assert_eq!(qa, qb, "{isa:?}");
        }
    }
}

/// Requantisation on every channel count up to 40 (below 8, not a multiple of 8 and
/// up to [`FLAT_CHANNELS`](super::avx2): the parameters repeated over flat blocks;
/// multiples of 8; the rest with a scalar tail), on runs of pixels that end inside a
/// block, with many ties and values past 2^22, and the two-sided form of a PReLU
/// against its definition.
#[test]
fn requantisation_equals_scalar_for_every_channel_count() {
    let mut s = Lcg::new(23);
    for isa in Isa::available() {
        for c in (1..=40).chain([48, 96, 100]) {
            for pixels in [1, 3, 17, 64] {
                let n = pixels * c;
                let a: Vec<i32> = (0..n).map(|_| (s.u32() % 200_000) as i32 - 100_000).collect();
                let mut r = random_requant(&mut s, c);
                // Every third case: multipliers of 1/2 and 1/4 with biases on halves
                // and quarters (many values exactly half-way: ties go to even), or of
                // 1000 (most values far past 2^22, where the reference saturates).
                match (c + pixels) % 3 {
                    0 => {}
                    k => {
                        r.offset.fill(0);
                        r.mult = (0..c).map(|j| if k == 2 { 1000.0 } else { [0.5, 0.25][j % 2] }).collect();
                        r.bias = (0..c).map(|j| [0.0, 0.5, -0.5, 0.25][j % 4]).collect();
                    }
                }
                let (mut qa, mut qb) = (vec![0u8; n], vec![0u8; n]);
                scalar::requantize(&a, c, &r, &mut qa);
                requantize(isa, &a, c, &r, &mut qb);
                assert_eq!(qa, qb, "{isa:?} {c} channels, {pixels} pixels");
                // pos clamped to [z, 255], neg to [0, z]: one of them is z.
                let z = s.u8();
                let pos = Requant { out_zp: z as f32, lo: vec![z; c], hi: vec![255; c], ..r.clone() };
                let neg = Requant {
                    out_zp: z as f32,
                    mult: r.mult.iter().map(|m| m * 0.25).collect(),
                    bias: r.bias.iter().map(|b| b * 0.25).collect(),
                    lo: vec![0; c],
                    hi: vec![z; c],
                    ..r.clone()
                };
                let (mut p, mut q) = (vec![0u8; n], vec![0u8; n]);
                scalar::requantize(&a, c, &pos, &mut p);
                scalar::requantize(&a, c, &neg, &mut q);
                let want: Vec<u8> = p.iter().zip(&q).map(|(&p, &q)| if p != z { p } else { q }).collect();
                let mut got = vec![0u8; n];
                requantize_two_sided(isa, &a, c, &pos, &neg, z, &mut got);
                assert_eq!(got, want, "{isa:?} {c} channels, two-sided");
                // A negative side with offsets of its own (the kernels convert the sums
                // once only where they are the same): with pos held at z, y is its bytes.
                let held = Requant { lo: vec![z; c], hi: vec![z; c], ..pos.clone() };
                let own = Requant { offset: neg.offset.iter().map(|o| o.wrapping_add(977)).collect(), ..neg.clone() };
                scalar::requantize(&a, c, &own, &mut q);
                requantize_two_sided(isa, &a, c, &held, &own, z, &mut got);
                assert_eq!(got, q, "{isa:?} {c} channels, two-sided with the negative side's own offsets");
            }
        }
    }
}

/// An instance norm's partial integer moments on every ISA equal the scalar loop's,
/// for sums as large as 24 input bytes times taps give and blocks of every width.
#[test]
fn moment_sums_equal_scalar() {
    let mut s = Lcg::new(31);
    for isa in Isa::available() {
        for width in [1, 2, 3, 8, 16, 24, 32, 36, 40, 48, 64] {
            // Whole blocks, and some with a partial last block.
            let n = width * (1 + s.below(50)) + if s.below(2) == 0 { 0 } else { s.below(width) };
            let v: Vec<i32> =
                (0..n).map(|i| if i % 11 == 0 { -(255 * 128 * 27 * 8) } else { (s.u32() % 1_000_000) as i32 - 500_000 }).collect();
            let (mut s1, mut q1) = (vec![3i64; width], vec![5i64; width]);
            let (mut s2, mut q2) = (s1.clone(), q1.clone());
            scalar::moment_sums(&v, &mut s1, &mut q1);
            moment_sums(isa, &v, &mut s2, &mut q2);
            assert_eq!((s1.clone(), q1.clone()), (s2, q2), "{isa:?} width {width}");
            let want: i64 = v.iter().map(|&x| x as i64 * x as i64).sum::<i64>() + 5 * width as i64;
            assert_eq!(q1.iter().sum::<i64>(), want);
            let slot = |j: usize| v.iter().skip(j).step_by(width).map(|&x| x as i64).sum::<i64>();
            assert_eq!(s1, (0..width).map(|j| slot(j) + 3).collect::<Vec<_>>(), "sums per slot, width {width}");
        }
    }
}

/// A global average pool on every ISA gives the scalar loop's bytes, and the scalar
/// loop the mean of an independent f64 sum within one output step (it rounds the
/// float arithmetic and then quantises), over channel counts around the vector widths,
/// maps from 1x1 to 7x9, and scales and zero points near the edges.
#[test]
fn mean_pool_equals_scalar() {
    let mut s = Lcg::new(37);
    for isa in Isa::available() {
        for c in [1, 3, 8, 15, 16, 17, 33, 64, 100, 1280] {
            for (h, w) in [(1, 1), (2, 3), (7, 7), (7, 9)] {
                let t = QTensor { c, h, w, scale: 0.02 + (s.u32() % 1000) as f32 * 1e-4, zp: (s.u32() % 256) as u8 };
                let to = QTensor { c, h: 1, w: 1, scale: 0.01 + (s.u32() % 1000) as f32 * 1e-4, zp: (s.u32() % 256) as u8 };
                let x: Vec<u8> = (0..c * h * w).map(|i| if i % 13 == 0 { 255 } else { (s.u32() % 256) as u8 }).collect();
                let (mut s1, mut s2) = (vec![7i32; c], vec![-7i32; c]);
                let (mut o1, mut o2) = (vec![0u8; c], vec![1u8; c]);
                scalar::mean_pool(&x, &t, &to, &mut s1, &mut o1);
                mean_pool(isa, &x, &t, &to, &mut s2, &mut o2);
                assert_eq!(o1, o2, "{isa:?} {c} channels at {h}x{w}");
                for ch in 0..c {
                    let mean = (0..h * w).map(|p| (x[p * c + ch] as f64 - t.zp as f64) * t.scale as f64).sum::<f64>() / (h * w) as f64;
                    let want = (mean / to.scale as f64 + to.zp as f64).round().clamp(0.0, 255.0);
                    assert!((o1[ch] as f64 - want).abs() <= 1.0, "{c} channels at {h}x{w}, channel {ch}: {} against {want}", o1[ch]);
                }
            }
        }
    }
}

/// The gathered rows of short-row convs ([`Rows2::gather`]): every ISA's bytes equal
/// the portable loop's (the AVX-512 pairs and AVX2's shuffles for outputs inside the
/// columns, rows of padding included), and those an independent index computation:
/// each output's kh kw cin taps, the zero point outside the input, zeros to the pitch. Kernels 1-3 rows
/// of 1-5 taps, 1-4 channels, strides 1-2, any padding, runs that start and end
/// anywhere in an output row, inputs with and without slack past them.
#[test]
fn gathered_rows_equal_scalar() {
    let mut s = Lcg::new(41);
    let mut fast_shapes = 0;
    #[cfg(target_arch = "x86_64")]
    let mut avx2_shapes = 0;
    for round in 0..300 {
        let (cin, kh, kw) = (1 + s.below(4), 1 + s.below(3), 1 + s.below(5));
        if kh * kw * cin > ROWS2_PITCH {
            continue;
        }
        let stride = [1 + s.below(2), 1 + s.below(2)];
        let pads = [s.below(kh), s.below(kw), s.below(kh), s.below(kw)];
        let (h, w) = (kh + s.below(6), kw + s.below(30));
        let Some(g) = ConvGeometry::new(h, w, cin, kh, kw, stride, pads) else { continue };
        let rows = Rows2 { g };
        fast_shapes += usize::from((kw + stride[1]) * cin <= 16);
        #[cfg(target_arch = "x86_64")]
        {
            avx2_shapes += usize::from(super::avx2::row_shuffles(kh, kw * cin).is_some());
        }
        let zp = s.u8();
        // Odd rounds: no slack past the tensor (the fast path must stop short).
        let slack = if round % 2 == 0 { 64 } else { 0 };
        let x: Vec<u8> = (0..h * w * cin + slack).map(|_| s.u8()).collect();
        let total = g.oh * g.ow;
        let from = s.below(total);
        let to = from + 1 + s.below(total - from);
        let n = to - from;
        let mut want = vec![0u8; n * ROWS2_PITCH];
        for (j, row) in want.chunks_exact_mut(ROWS2_PITCH).enumerate() {
            let (oy, ox) = ((from + j) / g.ow, (from + j) % g.ow);
            for i in 0..kh {
                for t in 0..kw {
                    let (iy, ix) = ((oy * stride[0] + i) as isize - pads[0] as isize, (ox * stride[1] + t) as isize - pads[1] as isize);
                    for ch in 0..cin {
                        row[(i * kw + t) * cin + ch] = if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            x[(iy as usize * w + ix as usize) * cin + ch]
                        } else {
                            zp
                        };
                    }
                }
            }
        }
        for isa in Isa::available() {
            let mut got = vec![0x5a; n * ROWS2_PITCH];
            rows.gather(isa, &x, zp, from..to, &mut got);
            assert_eq!(got, want, "{isa:?}: {h}x{w}x{cin}, kernel {kh}x{kw}, strides {stride:?}, pads {pads:?}, outputs {from}..{to}");
        }
    }
    assert!(fast_shapes > 100, "{fast_shapes} shapes for the fast path");
    #[cfg(target_arch = "x86_64")]
    assert!(avx2_shapes > 50, "{avx2_shapes} shapes for AVX2's fast path");
}

#[test]
fn finiteness_checks_find_every_nan_and_infinity() {
    // One bad value at every position of lengths around the 64-value blocks, of each
    // kind (NaN with payloads, both infinities), beside the largest finite values.
    let bad = [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::INFINITY, f32::NEG_INFINITY];
    for isa in Isa::available() {
        for n in [0, 1, 7, 63, 64, 65, 130, 200] {
            let clean: Vec<f32> = (0..n).map(|i| [f32::MAX, -f32::MAX, 0.0, -0.0, f32::MIN_POSITIVE / 2.0, 1.5][i % 6]).collect();
            assert!(all_finite(isa, &clean), "{isa:?} n {n}");
            for at in 0..n {
                for &b in &bad {
                    let mut v = clean.clone();
                    v[at] = b;
                    assert!(!all_finite(isa, &v), "{isa:?}: {b} at {at} of {n}");
                }
            }
        }
    }
}

#[test]
fn quantisation_of_float_planes_equals_scalar() {
    let mut s = Lcg::new(11);
    for isa in Isa::available() {
        for _ in 0..200 {
            // One channel in a quarter of the rounds (its own path: a volume's input), three
            // in another quarter (RGB: AVX2 interleaves them by byte shuffles).
            let c = match s.below(4) {
                0 => 1,
                1 => 3,
                _ => 1 + s.below(40),
            };
            let hw = 1 + s.below(70);
            let scale = (1 + s.u32() % 1000) as f32 * 1e-4;
            let t = QTensor { c, h: 1, w: hw, scale, zp: s.u8() };
            // Ties (k + 0.5 steps), saturating and huge values among ordinary ones.
            let x: Vec<f32> = (0..c * hw)
                .map(|_| match s.u32() % 8 {
                    0 => ((s.u32() % 600) as f32 - 300.0 + 0.5) * scale,
                    1 => (s.u32() as f32 - 2e9) * 1e3,
                    _ => (s.u32() as f32 / u32::MAX as f32 - 0.5) * 300.0 * scale,
                })
                .collect();
            let (mut a, mut b) = (vec![0u8; c * hw], vec![0u8; c * hw]);
            scalar::quantize_nchw_to_nhwc(&x, hw, &t, &mut a);
            assert!(quantize_nchw_to_nhwc(isa, &x, hw, &t, &mut b), "finite values");
            assert_eq!(a, b, "{} c {c} hw {hw}", isa.name());
            // A run of pixels of the planes (a thread's part) gives those pixels' bytes.
            let (p0, p1) = (s.below(hw), hw.min(hw / 2 + 1 + s.below(hw)));
            if p0 < p1 {
                let part = QTensor { w: p1 - p0, ..t };
                let mut run = vec![0u8; c * (p1 - p0)];
                assert!(quantize_nchw_to_nhwc(isa, &x[p0..], hw, &part, &mut run));
                assert_eq!(run, a[p0 * c..p1 * c], "{} c {c} hw {hw}, pixels {p0}..{p1}", isa.name());
            }
        }
    }
}

/// The input quantisation's answer to one NaN or infinity anywhere among finite values:
/// in a whole run of the kernels' steps or in the tail, in any plane, first and last
/// values included, for plane counts the x86 kernels take and past them (9, 17), with
/// planes further apart than their pixels (a thread's part). Every ISA must say "not
/// finite"; the same values without it, "finite".
#[test]
fn one_non_finite_input_value_anywhere_is_reported() {
    let mut s = Lcg::new(0xf1);
    for isa in Isa::available() {
        for c in (1..=9).chain([17]) {
            let hw = 16 * s.below(7) + s.below(16) + 1;
            let stride = hw + s.below(5);
            let t = QTensor { c, h: 1, w: hw, scale: 0.02, zp: 128 };
            let x: Vec<f32> = (0..c * stride).map(|_| (s.u32() as f32 / u32::MAX as f32 - 0.5) * 4.0).collect();
            let mut out = vec![0u8; c * hw];
            assert!(quantize_nchw_to_nhwc(isa, &x, stride, &t, &mut out), "{isa:?} c {c} hw {hw}: finite");
            let mut places: Vec<(usize, usize)> = (0..c).flat_map(|ch| [(ch, 0), (ch, hw - 1)]).collect();
            places.extend((0..24).map(|_| (s.below(c), s.below(hw))));
            for (ch, p) in places {
                let mut y = x.clone();
                y[ch * stride + p] = s.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN]);
                let v = y[ch * stride + p];
                assert!(!quantize_nchw_to_nhwc(isa, &y, stride, &t, &mut out), "{isa:?} c {c} hw {hw}: {v} at plane {ch} pixel {p}");
            }
        }
    }
}

/// The quotients where a kernel's division could go wrong (the AVX-512 input
/// quantisation divides by a multiplication and two FMAs): for scales of every kind
/// (powers of two, all-ones significands, random ones, tiny and huge, and outside the
/// range that kernel takes without a division, where it must divide), the 64 floats
/// on either side of each tie (k + 1/2) s and each integer step k s for |k| <= 300,
/// exact ties where they are representable, and sums landing on and near ties through
/// the quantised Add; the values as one plane and as three (an RGB image). Every ISA's
/// bytes equal the scalar reference's `x / scale`. (Caught: the reciprocal's product
/// alone, and the FMA path taken for every scale.)
#[test]
fn quantisation_near_ties_equals_the_division_on_every_isa() {
    let mut s = Lcg::new(0x71e5);
    let mut scales = vec![1.0f32, 0.5, 0.0078125, 3.0 * 2f32.powi(-10), f32::from_bits(0x3f7f_ffff), f32::from_bits(0x3bff_ffff)];
    scales.extend([
        1e-30,
        3e-31,
        7e29,
        2f32.powi(-100),
        2f32.powi(100),
        2f32.powi(-101),
        1.5 * 2f32.powi(100),
        f32::MIN_POSITIVE / 4.0,
        3e38,
    ]);
    // Random significands over the exponents real models use (1e-5 to 10).
    scales.extend((0..40).map(|_| f32::from_bits(((110 + s.below(20)) as u32) << 23 | (s.u32() & 0x7f_ffff))));
    for &scale in &scales {
        let zp = s.u8();
        let mut x = Vec::new();
        for k in -300i32..=300 {
            for centre in [(k as f32 + 0.5) * scale, k as f32 * scale] {
                if !centre.is_finite() {
                    continue;
                }
                let bits = centre.to_bits() as i64;
                x.extend((-64i64..=64).map(|d| f32::from_bits((bits + d) as u32)).filter(|v| v.is_finite()));
            }
        }
        let t = QTensor { c: 1, h: 1, w: x.len(), scale, zp };
        let mut want = vec![0u8; x.len()];
        scalar::quantize_nchw_to_nhwc(&x, x.len(), &t, &mut want);
        // The reference itself against the definition (a tie rounds to even).
        for (&v, &q) in x.iter().zip(&want).step_by(97) {
            assert_eq!(q as f32, ((v / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0), "{v} / {scale}");
        }
        for isa in Isa::available() {
            let mut got = vec![0u8; x.len()];
            assert!(quantize_nchw_to_nhwc(isa, &x, x.len(), &t, &mut got));
            let bad = (0..x.len()).find(|&i| got[i] != want[i]);
            assert!(bad.is_none(), "{}: {} / {scale:e} gave {} for {}", isa.name(), x[bad.unwrap()], got[bad.unwrap()], want[bad.unwrap()]);
        }
        // The same values as three planes (an RGB image: the AVX-512 kernel's own path).
        let w3 = x.len() / 3;
        let t3 = QTensor { c: 3, h: 1, w: w3, scale, zp };
        let mut want3 = vec![0u8; 3 * w3];
        scalar::quantize_nchw_to_nhwc(&x, w3, &t3, &mut want3);
        for isa in Isa::available() {
            let mut got = vec![0u8; 3 * w3];
            assert!(quantize_nchw_to_nhwc(isa, &x, w3, &t3, &mut got));
            assert!(got == want3, "{}: three planes, scale {scale:e}", isa.name());
        }
    }
    // The Add: sums of two dequantised bytes divided by output scales whose
    // quotients land on and near ties (the input scales multiples of the output's).
    for &scale in &scales[..20] {
        let to = QTensor { c: 1, h: 1, w: 1 << 16, scale, zp: s.u8() };
        let ta = QTensor { scale: scale * [0.5f32, 1.5, 3.0, 0.75][s.below(4)], zp: s.u8(), ..to };
        let tb = QTensor { scale: scale * [0.25f32, 2.5, 1.0][s.below(3)], zp: s.u8(), ..to };
        let (xa, xb): (Vec<u8>, Vec<u8>) = (0..to.w).map(|i| ((i & 255) as u8, (i >> 8) as u8)).unzip();
        let mut want = vec![0u8; to.w];
        scalar::add_quantized(&xa, &ta, &xb, &tb, &to, [0, 255], &mut want);
        for isa in Isa::available() {
            let mut got = vec![0u8; to.w];
            add_quantized(isa, &xa, &ta, &xb, &tb, &to, [0, 255], &mut got);
            assert_eq!(got, want, "{} scale {scale:e}", isa.name());
        }
    }
}

fn tensor(s: &mut Lcg, c: usize, h: usize, w: usize) -> QTensor {
    QTensor { c, h, w, scale: (1 + s.u32() % 1000) as f32 * 1e-3, zp: s.u8() }
}

/// Input quantisation of small images (the channel counts NEON interleaves) with
/// ties, huge and non-finite values, and the quantised Add.
#[test]
fn input_quantisation_and_add_equal_scalar() {
    let mut s = Lcg::new(9);
    for round in 0..200 {
        let (c, h, w) = (1 + s.below(6), 1 + s.below(9), 1 + s.below(11));
        let t = tensor(&mut s, c, h, w);
        // Ties (half steps), huge values and non-finite ones among ordinary inputs.
        let x: Vec<f32> = (0..t.len())
            .map(|i| match (i + round) % 11 {
                0 => (s.u32() % 600) as f32 * 0.5 * t.scale - 100.0 * t.scale,
                1 => s.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, -0.0]),
                _ => (s.u32() as f32 / u32::MAX as f32 - 0.5) * 600.0 * t.scale,
            })
            .collect();
        let (mut a, mut b) = (vec![0u8; t.len()], vec![0u8; t.len()]);
        scalar::quantize_nchw_to_nhwc(&x, t.h * t.w, &t, &mut a);
        for isa in Isa::available() {
            // Whether all were finite, each value tested (the AVX-512 kernel as it
            // quantises, in its 16-pixel steps and in the tail).
            assert_eq!(quantize_nchw_to_nhwc(isa, &x, t.h * t.w, &t, &mut b), x.iter().all(|v| v.is_finite()), "{isa:?} {t:?}");
            assert_eq!(a, b, "{isa:?} {t:?}");
        }
        let (ta, tb, mut to) = (tensor(&mut s, c, h, w), tensor(&mut s, c, h, w), tensor(&mut s, c, h, w));
        // One round in four, an output scale so small that the sums divided by it go
        // past 2^22 (where the reference saturates) and past 2^31.
        if round % 4 == 3 {
            to.scale = [1e-7, 1e-10][round / 4 % 2];
        }
        // One round in five, input scales a half and a quarter of the output's: sums on
        // quarter steps, a quarter of them exact ties (half to even), the others a
        // quarter step away, where a quotient an ulp off would round the other way.
        let (ta, tb) =
            if round % 5 == 1 { (QTensor { scale: to.scale * 0.5, ..ta }, QTensor { scale: to.scale * 0.25, ..tb }) } else { (ta, tb) };
        let (xa, xb): (Vec<u8>, Vec<u8>) = (0..t.len()).map(|_| (s.u8(), s.u8())).unzip();
        // No clamp, a ReLU's (the zero point up) or a random interval.
        let bounds = match round % 3 {
            0 => [0, 255],
            1 => [to.zp, 255],
            _ => {
                let (x, y) = (s.u8(), s.u8());
                [x.min(y), x.max(y)]
            }
        };
        scalar::add_quantized(&xa, &ta, &xb, &tb, &to, bounds, &mut a);
        // The scalar loop itself against the float definition, clamped.
        for (i, &q) in a.iter().enumerate() {
            let v = ta.deq(xa[i]) + tb.deq(xb[i]);
            assert_eq!(q, quantize_u8(v, to.scale, to.zp).clamp(bounds[0], bounds[1]), "{v}");
        }
        for isa in Isa::available() {
            add_quantized(isa, &xa, &ta, &xb, &tb, &to, bounds, &mut b);
            assert_eq!(a, b, "{isa:?} {bounds:?}");
        }
    }
}

/// Times a C4-style grouped 3x3 layer (96 channels in 24 fields of 4, 47x47, pad 1)
/// on every implementation: `cargo test --release -p edgemed-engine --lib
/// grouped_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn grouped_speed() {
    let mut s = Lcg::new(41);
    let (groups, cin_g, cout_g, h) = (24, 4, 4, 47);
    let (cin, cout) = (groups * cin_g, groups * cout_g);
    for stride in [1, 2] {
        let g = ConvGeometry::new(h, h, cin, 3, 3, [stride; 2], [1; 4]).unwrap();
        let x: Vec<u8> = (0..h * h * cin + 64).map(|_| s.u8()).collect();
        let w: Vec<i8> = (0..cout * cin_g * 9).map(|_| s.i8()).collect();
        let case = GroupedCase { g, cin_g, cout_g, groups, x, zp: 113, w };
        let r = random_requant(&mut s, cout);
        let n = case.outputs();
        for isa in Isa::available() {
            let kind = case.kind(isa);
            let (mut scratch, mut acc, mut out) = (vec![0u8; conv_scratch_len(&g, &kind) + 64], vec![0; n], vec![0u8; n]);
            let reps = if isa == Isa::Scalar { 10 } else { 100 };
            let t = std::time::Instant::now();
            for _ in 0..reps {
                conv(isa, &case.x, &g, case.zp, &kind, &r, &mut scratch, &mut acc, &mut out);
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            let macs = (n * cin_g * 9) as f64;
            eprintln!("stride {stride} {:>10}: {:8.3} ms, {:5.2} GMAC/s", isa.name(), dt * 1e3, macs / dt / 1e9);
        }
    }
}

/// Dequantisation into float planes, alone and with a second term (a residual Add), on
/// every ISA this CPU has, bit for bit the reference's tables: 1-5 channels (AVX2's own
/// paths: 1 and 2), pixel counts around its steps of 8, scales from tiny to huge, every
/// byte value on both sides.
#[test]
fn dequantized_rows_equal_scalar() {
    let mut s = Lcg::new(0xdec0);
    for round in 0..300 {
        let c = if round % 3 == 0 { 1 + s.below(5) } else { 1 + s.below(2) };
        let n = [0, 1, 7, 8, 9, 15, 16, 17, 31][s.below(9)] + s.below(3) * 8;
        let scale = |s: &mut Lcg| s.pick(&[1e-30f32, 3e-3, 0.0117, 1.0, 7.5e5, 3.4e37]) * (1.0 + s.below(100) as f32 / 100.0);
        let ta = QTensor { c, h: 1, w: n, scale: scale(&mut s), zp: s.u8() };
        let tb = QTensor { scale: scale(&mut s), zp: s.u8(), ..ta };
        let (a, b): (Vec<u8>, Vec<u8>) = (0..n * c).map(|i| ((i * 7 + round) as u8, s.u8())).unzip();
        let plus = s.coin();
        let b = plus.then_some((&b[..], &tb));
        fn planes(f: &mut [f32], n: usize, c: usize) -> Vec<&mut [f32]> {
            f.chunks_exact_mut(n.max(1)).take(c).map(|r| &mut r[..n]).collect()
        }
        let mut want = vec![f32::NAN; n.max(1) * c];
        scalar::dequantize_rows(&a, &ta, b, &mut planes(&mut want, n, c));
        for isa in Isa::available() {
            let mut got = vec![0.5f32; n.max(1) * c];
            dequantize_rows(isa, &a, &ta, b, &mut planes(&mut got, n, c));
            // Each row's n values (the buffers' fills differ: a value left unwritten shows).
            let bits = |v: &[f32]| v.chunks(n.max(1)).flat_map(|r| &r[..n]).map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} {c} channels, {n} pixels, plus {plus}", isa.name());
        }
    }
}
