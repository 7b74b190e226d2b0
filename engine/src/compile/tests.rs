//! Each fusion rule on a small QDQ graph: which steps the compiler makes of it (the
//! rule fired, or declined and left a float op), and for the arithmetic rules the
//! engine's output against a float reference worked out here (dequantise, compute in
//! f64, quantise with ties to even). tests/tests/int8_integer_ops.rs and
//! int8_models.rs check whole graphs against tract and ONNX Runtime.

use edgemed_onnx::builder::{Attr, GraphBuilder, D};
use edgemed_onnx::model::OnnxModel;
use edgemed_onnx::pb;
use prost::Message;

use super::compile;
use crate::error::Error;
use crate::kernels::Isa;
use crate::plan::{ConvKind, Copies, Op, Plan, Step};
use crate::Engine;

/// A QDQ graph under construction; every value is a fresh name.
struct Qdq {
    g: GraphBuilder,
    n: usize,
    input: Vec<usize>,
}

impl Qdq {
    fn new(input: &[usize]) -> Self {
        let mut g = GraphBuilder::new("rule");
        g.input_f32("x", &input.iter().map(|&d| D::N(d as i64)).collect::<Vec<_>>());
        Qdq { g, n: 0, input: input.to_vec() }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{what}{}", self.n)
    }

    fn u8_zero_point(&mut self, zp: u8) -> String {
        let z = self.fresh("zp");
        self.g.graph.initializer.push(pb::TensorProto {
            name: z.clone(),
            data_type: pb::tensor_proto::DataType::Uint8 as i32,
            raw_data: vec![zp],
            ..Default::default()
        });
        z
    }

    fn q(&mut self, x: &str, scale: f32, zp: u8) -> String {
        let s = self.fresh("s");
        self.g.init_f32(&s, &[], &[scale]);
        let z = self.u8_zero_point(zp);
        let q = self.fresh("q");
        self.g.node("QuantizeLinear", &q, &[x, &s, &z], vec![])
    }

    fn dq(&mut self, q: &str, scale: f32, zp: u8) -> String {
        let s = self.fresh("s");
        self.g.init_f32(&s, &[], &[scale]);
        let z = self.u8_zero_point(zp);
        let dq = self.fresh("dq");
        self.g.node("DequantizeLinear", &dq, &[q, &s, &z], vec![])
    }

    fn qdq(&mut self, x: &str, scale: f32, zp: u8) -> String {
        let q = self.q(x, scale, zp);
        self.dq(&q, scale, zp)
    }

    /// DequantizeLinear of int8 weights `w` with one scale.
    fn weight(&mut self, shape: &[usize], w: &[i8], scale: f32) -> String {
        let q = self.fresh("w");
        self.g.graph.initializer.push(pb::TensorProto {
            name: q.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Int8 as i32,
            raw_data: w.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        });
        let s = self.fresh("ws");
        self.g.init_f32(&s, &[], &[scale]);
        let dq = self.fresh("wdq");
        self.g.node("DequantizeLinear", &dq, &[&q, &s], vec![])
    }

    fn f32s(&mut self, shape: &[usize], v: &[f32]) -> String {
        let name = self.fresh("c");
        self.g.init_f32(&name, shape, v)
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        let y = self.fresh(&op.to_lowercase());
        self.g.node(op, &y, inputs, attrs)
    }

    fn model(mut self, output: &str) -> OnnxModel {
        self.g.output_f32(output, &[]);
        let model = self.g.into_model("rule-test", &[]);
        OnnxModel::from_bytes("rule.onnx", &model.encode_to_vec()).expect("a valid model")
    }

    fn input_len(&self) -> usize {
        self.input.iter().product()
    }
}

/// The plan of `model` for this CPU's kernels.
fn compile_best(model: &OnnxModel) -> crate::error::Result<Plan> {
    compile(model, Isa::detect())
}

/// The kinds of the plan's steps, e.g. ["quantize", "conv", "dequantize"].
fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.steps
        .iter()
        .map(|s| match s {
            Step::Quantize { .. } => "quantize",
            Step::Dequantize { .. } => "dequantize",
            Step::ConvToFloat { .. } => "conv to float",
            Step::Float { op, .. } => op.name(),
            Step::Int(op) => match op {
                Op::Conv(_) => "conv",
                Op::Lut { .. } => "table",
                Op::Add { .. } => "add",
                Op::Gather(_) => "gather",
                Op::MeanPool { .. } => "mean pool",
                Op::InstanceNorm(_) => "instance norm",
                Op::ConvNorm(_) => "conv + instance norm",
                Op::GatherMax { .. } => "max",
                Op::Multiply { .. } => "multiply",
            },
        })
        .collect()
}

fn ramp(n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|i| lo + (hi - lo) * i as f32 / (n - 1).max(1) as f32).collect()
}

/// q(x) with ties to even, saturated to u8, then dequantised: the reference's rounding.
fn fake_quant(x: f64, scale: f32, zp: u8) -> f32 {
    let q = ((x / scale as f64).round_ties_even() + zp as f64).clamp(0.0, 255.0);
    ((q - zp as f64) * scale as f64) as f32
}

fn run(model: &OnnxModel, x: &[f32]) -> Vec<f32> {
    Engine::new(model).unwrap().run_one(x).unwrap()[0].iter().copied().collect()
}

fn assert_within_one_step(got: &[f32], want: &[f32], step: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= step * 1.001, "element {i}: {g} vs {w} (step {step})");
    }
}

#[test]
fn quantize_and_dequantize_round_trip() {
    // Only conversions: nothing would run in integers, so the engine declines.
    let mut b = Qdq::new(&[1, 2, 3, 3]);
    let y = b.qdq("x", 0.05, 128);
    let err = compile_best(&b.model(&y)).unwrap_err();
    assert!(matches!(&err, Error::Unsupported(m) if m.contains("nothing runs in integers")), "{err}");
    // With an integer op between, the conversions are exact.
    let mut b = Qdq::new(&[1, 2, 3, 3]);
    let x = b.qdq("x", 0.05, 128);
    let r = b.op("Relu", &[&x], vec![]);
    let y = b.qdq(&r, 0.05, 128);
    let n = b.input_len();
    let m = b.model(&y);
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "table", "dequantize"]);
    let x = ramp(n, -7.0, 7.0);
    let want: Vec<f32> = x.iter().map(|&v| fake_quant(v.max(0.0) as f64, 0.05, 128)).collect();
    assert_eq!(run(&m, &x), want);
}

/// A 3x3 conv, bias, Relu: one fused op whose output equals the float reference.
#[test]
fn conv_with_bias_and_relu_is_one_fused_op() {
    let (cin, cout, h) = (2, 3, 5);
    let mut b = Qdq::new(&[1, cin, h, h]);
    let x = b.qdq("x", 0.02, 100);
    let wv: Vec<i8> = (0..cout * cin * 9).map(|i| ((i * 37 % 255) as i32 - 127) as i8).collect();
    let w = b.weight(&[cout, cin, 3, 3], &wv, 0.01);
    let bias = b.f32s(&[cout], &[0.1, -0.2, 0.05]);
    let c = b.op("Conv", &[&x, &w, &bias], vec![Attr::Ints("pads", vec![1, 1, 1, 1])]);
    let r = b.op("Relu", &[&c], vec![]);
    let y = b.qdq(&r, 0.03, 0);
    let m = b.model(&y);
    let plan = compile_best(&m).unwrap();
    assert_eq!(kinds(&plan), ["quantize", "conv", "dequantize"]);
    // (On AVX2 the layout is named: "conv 3x3/1 pixels in lanes dense 2 -> 3".)
    let label = plan.label(&plan.steps[1]);
    assert!(label.starts_with("conv 3x3/1 ") && label.contains("dense 2 -> 3"), "{label}");
    let input = ramp(cin * h * h, -2.0, 2.5);
    let xq: Vec<f64> = input.iter().map(|&v| fake_quant(v as f64, 0.02, 100) as f64).collect();
    let mut want = vec![0f32; cout * h * h];
    for co in 0..cout {
        for oy in 0..h {
            for ox in 0..h {
                let mut s: f64 = [0.1, -0.2, 0.05][co];
                for ci in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                            if (0..h as isize).contains(&iy) && (0..h as isize).contains(&ix) {
                                let wq = wv[((co * cin + ci) * 3 + ky) * 3 + kx] as f64 * 0.01f32 as f64;
                                s += wq * xq[(ci * h + iy as usize) * h + ix as usize];
                            }
                        }
                    }
                }
                want[(co * h + oy) * h + ox] = fake_quant(s.max(0.0), 0.03, 0);
            }
        }
    }
    // The engine requantises in f32: a value on a rounding boundary may land one step off.
    assert_within_one_step(&run(&m, &input), &want, 0.03);
}

/// A conv of `cout` outputs (random int8 weights, a bias) on the `input` shape with
/// `kernel`, `strides` and `pads`, its output requantised after a ReLU or, with
/// `to_float`, read as sums by a float op (Sigmoid): every ISA's bytes, on 1 and 3
/// threads with every op cut, equal the scalar engine's. Returns, for each of `labels`,
/// how many of those engines had a step whose label contains it.
fn conv_equals_scalar_on_every_isa(
    s: &mut crate::kernels::testgen::Lcg,
    input: &[usize],
    cout: usize,
    (kernel, strides, pads): (&[usize], &[usize], Vec<i64>),
    to_float: bool,
    labels: &[&str],
) -> Vec<usize> {
    let cin = input[1];
    let mut b = Qdq::new(input);
    let x = b.qdq("x", 0.03, s.u8());
    let wv: Vec<i8> = (0..cout * cin * kernel.iter().product::<usize>()).map(|_| s.u8() as i8).collect();
    let w = b.weight(&[&[cout, cin][..], kernel].concat(), &wv, 0.004);
    let bias = b.f32s(&[cout], &(0..cout).map(|c| c as f32 * 0.1 - 0.3).collect::<Vec<_>>());
    let attrs = vec![Attr::Ints("strides", strides.iter().map(|&v| v as i64).collect()), Attr::Ints("pads", pads)];
    let c = b.op("Conv", &[&x, &w, &bias], attrs);
    let y = if to_float {
        b.op("Sigmoid", &[&c], vec![])
    } else {
        let r = b.op("Relu", &[&c], vec![]);
        b.qdq(&r, 0.05, 3)
    };
    let n = b.input_len();
    let m = b.model(&y);
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 211) as f32 / 40.0) - 2.5).collect();
    let reference = Engine::with_isa(&m, Isa::Scalar).unwrap().run_one(&x).unwrap();
    let mut seen = vec![0; labels.len()];
    for isa in Isa::available() {
        for threads in [1, 3] {
            let e = Engine::with_isa(&m, isa).unwrap().with_threads(threads).with_min_part(1, 1);
            for (count, label) in seen.iter_mut().zip(labels) {
                if e.plan.steps.iter().any(|st| e.plan.label(st).contains(label)) {
                    *count += 1;
                }
            }
            assert_eq!(e.run_one(&x).unwrap(), reference, "{isa:?} {threads} threads, {input:?} {kernel:?} {strides:?} -> {cout}");
        }
    }
    seen
}

/// 3-D convs on AVX-512 VNNI: with few output channels the narrow layout (pixels in
/// lanes on zero-point padded planes), with more the in-place layout (kernel rows read
/// from the zero-point padded channels-last volume); on AVX2, with few input channels,
/// the in-place layout with voxels in lanes (units of 2, 4 and 8 bytes, channel groups
/// of 8, 4, 2 and 1, runs that start and end inside rows on 3 threads). All give the
/// bytes of every other ISA's gathered rows, requantised (with a ReLU's clamp) and as
/// sums a float op reads: random channel counts 1-8 and 9-40 (inputs 1-4 and 8: the
/// narrow de-interleaving has a path per 2, 4 and 8), kernels 1-5 along x, strides
/// 1-2, padding, odd sizes, threads.
#[test]
fn dense_3d_convs_equal_every_isa() {
    use crate::kernels::testgen::Lcg;
    let mut s = Lcg::new(17);
    let (mut narrow_seen, mut in_place_seen, mut lanes_seen) = (0, 0, 0);
    for round in 0..60 {
        let wide = round % 3 == 2;
        let (cin, cout) = ([1, 2, 3, 4, 8][s.below(5)], if wide { 9 + s.below(32) } else { 1 + s.below(8) });
        let kernel = [1 + s.below(3), 1 + s.below(3), 1 + s.below(5)];
        let strides = [1 + s.below(2), 1 + s.below(2), 1 + s.below(2)];
        let pads: Vec<i64> = (0..6).map(|i| s.below(kernel[i % 3]) as i64).collect();
        let input = [1, cin, kernel[0] + s.below(5), kernel[1] + s.below(6), kernel[2] + s.below(20)];
        // Odd rounds: the sums go to a float op.
        let seen = conv_equals_scalar_on_every_isa(
            &mut s,
            &input,
            cout,
            (&kernel, &strides, pads),
            round % 2 == 1,
            &["narrow", "in place", "voxels in lanes"],
        );
        narrow_seen += seen[0];
        in_place_seen += seen[1];
        lanes_seen += seen[2];
    }
    if Isa::Avx2.is_available() {
        assert!(lanes_seen > 20, "voxels in lanes ran {lanes_seen} times");
    }
    if Isa::Avx512Vnni.is_available() {
        assert!(narrow_seen > 20, "the narrow layout ran {narrow_seen} times");
        assert!(in_place_seen > 10, "the in-place layout ran {in_place_seen} times");
    }
}

/// 2-D convs of few input and output channels (an RGB stem at stride 2, a MobileNet
/// x0.25's 8 -> 8 pointwise): on AVX2 with the pixels in lanes (units of 2, 4, 6 and 8
/// bytes), the bytes of every other ISA, requantised and as sums a float op reads, on 1
/// and 3 threads, any kernel up to 5x5, strides 1-2, padding, odd sizes.
#[test]
fn few_channel_2d_convs_equal_every_isa() {
    use crate::kernels::testgen::Lcg;
    let mut s = Lcg::new(41);
    let mut lanes_seen = 0;
    for round in 0..40 {
        let (cin, cout) = ([1, 2, 3, 4, 8][s.below(5)], 1 + s.below(16));
        let kernel = [1 + s.below(5), 1 + s.below(5)];
        let strides = [1 + s.below(2), 1 + s.below(2)];
        let pads: Vec<i64> = (0..4).map(|i| s.below(kernel[i % 2]) as i64).collect();
        let input = [1, cin, kernel[0] + s.below(12), kernel[1] + s.below(30)];
        lanes_seen +=
            conv_equals_scalar_on_every_isa(&mut s, &input, cout, (&kernel, &strides, pads), round % 2 == 1, &["pixels in lanes"])[0];
    }
    if Isa::Avx2.is_available() {
        assert!(lanes_seen > 20, "pixels in lanes ran {lanes_seen} times");
    }
}

/// 2-D convs with short kernel rows (1-4 input channels, kernels up to 3x3): on AMX,
/// where the work is large enough, as a pointwise conv on gathered rows; the bytes of
/// every other ISA's in-place form, requantised (with a ReLU's clamp) and as sums a
/// float op reads, on 1 and 3 threads (a part may start and end anywhere in an output
/// row), strides 1-2, any padding, odd sizes, outputs of one gathered chunk and of
/// several, 8-40 output channels (AVX2's half blocks among them).
#[test]
fn short_row_convs_equal_every_isa() {
    use crate::kernels::testgen::Lcg;
    let mut s = Lcg::new(29);
    let (mut gathered_seen, mut half_gathered_seen) = (0, 0);
    for round in 0..24 {
        let (cin, cout) = (1 + s.below(4), [8, 16, 24, 32, 40][s.below(5)]);
        let kernel = [1 + s.below(3), 2 + s.below(2)];
        // Every third round a 3-channel 3x3 kernel: 27 inputs, the rows AVX2 gathers.
        let (cin, kernel) = if round % 3 == 2 { (3, [3, 3]) } else { (cin, kernel) };
        let strides = [1 + s.below(2), 1 + s.below(2)];
        let pads: Vec<i64> = (0..4).map(|i| s.below(kernel[i % 2]) as i64).collect();
        // The first rounds: more outputs than one gathered chunk (`Rows2::CHUNK`).
        let (strides, side) = if round < 2 { ([1, 1], 100) } else { (strides, 40 + s.below(30)) };
        // Rounds 5, 11, 17, 23: MobileNetV2 x0.25's first conv (3 -> 8, 3x3, large
        // enough to gather on AVX2 at stride 2).
        let (cout, side) = if round % 6 == 5 { (8, 95 + s.below(4)) } else { (cout, side) };
        let input = [1, cin, side, side - 3 + s.below(7)];
        // Odd rounds: the sums go to a float op.
        let seen = conv_equals_scalar_on_every_isa(&mut s, &input, cout, (&kernel, &strides, pads), round % 2 == 1, &["gathered"])[0];
        gathered_seen += seen;
        if cout == 8 {
            half_gathered_seen += seen;
        }
    }
    if Isa::Avx512Amx.is_available() {
        assert!(gathered_seen > 10, "the gathered layout ran {gathered_seen} times");
    }
    if Isa::Avx2.is_available() {
        // AVX2's half blocks on gathered rows (8 outputs), on 1 and 3 threads.
        assert!(half_gathered_seen >= 2, "8 outputs on gathered rows ran {half_gathered_seen} times");
    }
    // AVX2 gathers kernel rows of 8-16 bytes (its two shuffles' lanes) of more than 24
    // inputs in all, AMX those whose two neighbouring outputs' bytes fit 16; neither
    // the others.
    use crate::kernels::{ConvGeometry, Rows2};
    let g = |c, k, s| ConvGeometry::new(224, 224, c, k, k, [s, s], [1; 4]).unwrap();
    #[cfg(target_arch = "x86_64")]
    assert!(Rows2::applies(Isa::Avx2, &g(3, 3, 2), 32), "MobileNetV2's first conv on AVX2");
    assert!(!Rows2::applies(Isa::Avx2, &g(1, 3, 1), 32), "rows of 3 bytes on AVX2");
    assert!(!Rows2::applies(Isa::Avx2, &g(4, 2, 1), 32), "16 inputs on AVX2");
    #[cfg(target_arch = "x86_64")]
    assert!(Rows2::applies(Isa::Avx2, &g(3, 3, 2), 8), "8 outputs on AVX2: a half block");
    assert!(!Rows2::applies(Isa::Avx2, &g(3, 3, 2), 7), "7 outputs on AVX2");
    assert!(!Rows2::applies(Isa::Avx512Amx, &g(3, 3, 2), 8), "8 outputs on AMX");
    assert!(!Rows2::applies(Isa::Avx512Vnni, &g(3, 3, 2), 32) && !Rows2::applies(Isa::Scalar, &g(3, 3, 2), 32));
}

#[test]
fn grouped_conv_with_one_channel_per_group_is_depthwise() {
    let mut b = Qdq::new(&[1, 4, 6, 6]);
    let x = b.qdq("x", 0.02, 128);
    let w = b.weight(&[4, 1, 3, 3], &[3; 36], 0.01);
    let c = b.op("Conv", &[&x, &w], vec![Attr::Int("group", 4), Attr::Ints("strides", vec![2, 2])]);
    let y = b.qdq(&c, 0.02, 128);
    let plan = compile_best(&b.model(&y)).unwrap();
    let Step::Int(Op::Conv(conv)) = &plan.steps[1] else { panic!("{:?}", kinds(&plan)) };
    assert!(matches!(conv.kind, ConvKind::Depthwise(_)));
    assert_eq!(plan.shapes[conv.dst], [1, 4, 2, 2]);
}

/// A grouped conv (escnn's regular-field depthwise layer: `group` fields of cin_g
/// channels, cout_g outputs each) with bias: one fused integer op labelled with its
/// grouping, whose output equals the float reference within one step.
fn grouped_conv_matches_float(group: usize, cin_g: usize, cout_g: usize, h: usize, stride: usize, pads: [usize; 4]) {
    let (cin, cout) = (group * cin_g, group * cout_g);
    let mut b = Qdq::new(&[1, cin, h, h]);
    let x = b.qdq("x", 0.02, 100);
    let wv: Vec<i8> = (0..cout * cin_g * 9).map(|i| ((i * 37 % 255) as i32 - 127) as i8).collect();
    let w = b.weight(&[cout, cin_g, 3, 3], &wv, 0.01);
    let bias_v: Vec<f32> = (0..cout).map(|c| c as f32 * 0.03 - 0.2).collect();
    let bias = b.f32s(&[cout], &bias_v);
    let attrs = vec![
        Attr::Int("group", group as i64),
        Attr::Ints("strides", vec![stride as i64; 2]),
        Attr::Ints("pads", pads.iter().map(|&p| p as i64).collect()),
    ];
    let c = b.op("Conv", &[&x, &w, &bias], attrs);
    let y = b.qdq(&c, 0.05, 128);
    let m = b.model(&y);
    let plan = compile_best(&m).unwrap();
    assert_eq!(kinds(&plan), ["quantize", "conv", "dequantize"]);
    let label = plan.label(&plan.steps[1]);
    assert!(label.contains(&format!("grouped {cin_g}x{cout_g} {cin} -> {cout}")), "{label}");
    let (oh, ow) = ((h + pads[0] + pads[2] - 3) / stride + 1, (h + pads[1] + pads[3] - 3) / stride + 1);
    assert_eq!(plan.steps[1].macs(), (oh * ow * cout * cin_g * 9) as u64);
    let input = ramp(cin * h * h, -2.0, 2.5);
    let xq: Vec<f64> = input.iter().map(|&v| fake_quant(v as f64, 0.02, 100) as f64).collect();
    let mut want = vec![0f32; cout * oh * ow];
    for co in 0..cout {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = bias_v[co] as f64;
                for j in 0..cin_g {
                    let ci = (co / cout_g) * cin_g + j;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (oy * stride + ky) as isize - pads[0] as isize;
                            let ix = (ox * stride + kx) as isize - pads[1] as isize;
                            if (0..h as isize).contains(&iy) && (0..h as isize).contains(&ix) {
                                let wq = wv[((co * cin_g + j) * 3 + ky) * 3 + kx] as f64 * 0.01f32 as f64;
                                s += wq * xq[(ci * h + iy as usize) * h + ix as usize];
                            }
                        }
                    }
                }
                want[(co * oh + oy) * ow + ox] = fake_quant(s, 0.05, 128);
            }
        }
    }
    assert_within_one_step(&run(&m, &input), &want, 0.05);
}

#[test]
fn grouped_convs_are_one_fused_integer_op() {
    // C4 regular fields: 4 in, 4 out per group; stride 1 and 2, symmetric and not.
    grouped_conv_matches_float(6, 4, 4, 9, 1, [1; 4]);
    grouped_conv_matches_float(6, 4, 4, 9, 2, [1, 0, 1, 1]);
    // C8 and C12 fields, and twice as many outputs as inputs per group.
    grouped_conv_matches_float(2, 8, 8, 7, 1, [1; 4]);
    grouped_conv_matches_float(2, 12, 12, 6, 2, [0; 4]);
    grouped_conv_matches_float(3, 4, 8, 8, 1, [1; 4]);
    // One input per group but several outputs (a channel multiplier).
    grouped_conv_matches_float(4, 1, 2, 6, 1, [1; 4]);
}

/// Groups the channels do not split into: Invalid, naming the node.
#[test]
fn grouped_convs_of_bad_geometry_are_invalid() {
    // (input channels, output channels, group, weights' input channels per group)
    for (cin, cout, group, cin_g) in [(6, 8, 4, 1), (8, 8, 2, 3), (8, 6, 4, 2), (8, 8, 0, 8)] {
        let mut b = Qdq::new(&[1, cin, 5, 5]);
        let x = b.qdq("x", 0.1, 128);
        let w = b.weight(&[cout, cin_g, 3, 3], &vec![1; cout * cin_g * 9], 0.1);
        let c = b.op("Conv", &[&x, &w], vec![Attr::Int("group", group)]);
        let y = b.qdq(&c, 0.1, 128);
        let err = compile_best(&b.model(&y)).unwrap_err();
        assert!(matches!(&err, Error::Invalid(m) if m.contains(&c) && m.contains("groups")), "{cin} {cout} {group} {cin_g}: {err}");
    }
}

#[test]
fn activations_on_a_tensor_become_one_table() {
    let mut b = Qdq::new(&[1, 3, 4, 4]);
    let x = b.qdq("x", 0.1, 128);
    let lo = b.f32s(&[], &[-1.0]);
    let hi = b.f32s(&[], &[2.0]);
    let c = b.op("Clip", &[&x, &lo, &hi], vec![]);
    let r = b.op("Relu", &[&c], vec![]);
    let y = b.qdq(&r, 0.01, 0);
    let n = b.input_len();
    let m = b.model(&y);
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "table", "dequantize"]);
    let input = ramp(n, -5.0, 5.0);
    let want: Vec<f32> =
        input.iter().map(|&v| fake_quant(fake_quant(v as f64, 0.1, 128).clamp(-1.0, 2.0).max(0.0) as f64, 0.01, 0)).collect();
    assert_eq!(run(&m, &input), want);
}

#[test]
fn add_of_two_tensors_is_an_integer_add() {
    let mut b = Qdq::new(&[1, 2, 3, 3]);
    let x = b.qdq("x", 0.05, 128);
    let r = b.op("Relu", &["x"], vec![]);
    let rq = b.qdq(&r, 0.02, 0);
    let a = b.op("Add", &[&x, &rq], vec![]);
    let y = b.qdq(&a, 0.07, 64);
    let n = b.input_len();
    let m = b.model(&y);
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "Relu", "quantize", "add", "dequantize"]);
    let input = ramp(n, -3.0, 3.0);
    let want: Vec<f32> = input
        .iter()
        .map(|&v| fake_quant(fake_quant(v as f64, 0.05, 128) as f64 + fake_quant(v.max(0.0) as f64, 0.02, 0) as f64, 0.07, 64))
        .collect();
    assert_within_one_step(&run(&m, &input), &want, 0.07);
}

/// PRelu on a tensor (one slope, or one per channel as [C, 1, 1] or [1, C, 1, 1]) is
/// a table, exact; slopes along another axis stay a float op.
#[test]
fn prelu_on_a_tensor_is_a_table() {
    let slopes = [0.25f32, -0.5, 2.0];
    for (shape, table) in [(vec![1usize], true), (vec![3, 1, 1], true), (vec![1, 3, 1, 1], true), (vec![3], false)] {
        let mut b = Qdq::new(&[1, 3, 4, 3]);
        let x = b.qdq("x", 0.05, 128);
        let n: usize = shape.iter().product();
        let s = b.f32s(&shape, &slopes[..n]);
        let p = b.op("PRelu", &[&x, &s], vec![]);
        let y = b.qdq(&p, 0.03, 100);
        let len = b.input_len();
        let m = b.model(&y);
        if !table {
            // Nothing else here runs in integers: the engine declines the model.
            let err = compile_best(&m).unwrap_err();
            assert!(matches!(&err, Error::Unsupported(m) if m.contains("nothing runs in integers")), "{err}");
            continue;
        }
        let k = kinds(&compile_best(&m).unwrap());
        assert_eq!(k, ["quantize", "table", "dequantize"], "{shape:?}");
        let input = ramp(len, -6.0, 6.0);
        let want: Vec<f32> = input
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let slope = if n == 1 { slopes[0] } else { slopes[i / 12] };
                let q = fake_quant(v as f64, 0.05, 128);
                fake_quant((if q < 0.0 { slope * q } else { q }) as f64, 0.03, 100)
            })
            .collect();
        assert_eq!(run(&m, &input), want, "{shape:?}");
    }
}

/// InstanceNormalization between Q/DQ pairs is one integer step (a histogram and
/// tables) whose bytes are the float op's: statistics of the dequantised values in
/// f64, the normalisation in f32, quantised.
#[test]
fn instance_norm_of_a_tensor_is_one_integer_step() {
    let (c, plane) = (3, 4 * 5 * 6);
    let slopes = [0.25f32, -0.5, 0.0];
    // Alone, and with a PRelu after it (one table: the activation joins the norm's).
    for prelu in [false, true] {
        let mut b = Qdq::new(&[1, c, 4, 5, 6]);
        let x = b.qdq("x", 0.04, 120);
        let scale = b.f32s(&[c], &[1.5, -0.7, 0.2]);
        let bias = b.f32s(&[c], &[0.1, 0.0, -2.0]);
        let mut y = b.op("InstanceNormalization", &[&x, &scale, &bias], vec![Attr::Float("epsilon", 1e-3)]);
        if prelu {
            let s = b.f32s(&[c, 1, 1, 1], &slopes);
            y = b.op("PRelu", &[&y, &s], vec![]);
        }
        let y = b.qdq(&y, 0.02, 110);
        let m = b.model(&y);
        assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "instance norm", "dequantize"]);
        // Skewed values, a different spread per channel; the reference quantises as
        // ONNX does in f32 (these values meet ties, where an f64 division would differ).
        let input: Vec<f32> = (0..c * plane).map(|i| ((i * 37 % 101) as f32 / 20.0 - 1.0) * (1 + i / plane) as f32).collect();
        let fq = |v: f32, s: f32, z: u8| (crate::kernels::quantize_u8(v, s, z) as i32 - z as i32) as f32 * s;
        let mut want = Vec::new();
        for ch in 0..c {
            let v: Vec<f32> = input[ch * plane..(ch + 1) * plane].iter().map(|&v| fq(v, 0.04, 120)).collect();
            let mean = v.iter().map(|&v| v as f64).sum::<f64>() / plane as f64;
            let var = v.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / plane as f64;
            let (mean, inv) = (mean as f32, 1.0 / (var as f32 + 1e-3).sqrt());
            let (s, o) = ([1.5f32, -0.7, 0.2][ch], [0.1f32, 0.0, -2.0][ch]);
            want.extend(v.iter().map(|&v| {
                let y = (v - mean) * inv * s + o;
                fq(if prelu && y < 0.0 { slopes[ch] * y } else { y }, 0.02, 110)
            }));
        }
        assert_eq!(run(&m, &input), want, "prelu {prelu}");
    }
}

/// Activations after an add clamp its output bytes in the same step, bit for bit the
/// float graph's: a residual's ReLU, and a Clip with crossed bounds (all values `hi`,
/// as ONNX says).
#[test]
fn activations_after_an_add_clamp_it() {
    for (lo, hi) in [(None, None), (Some(-0.4), Some(0.5)), (Some(0.3), Some(-0.2))] {
        let mut b = Qdq::new(&[1, 2, 3, 5]);
        let x = b.qdq("x", 0.05, 128);
        let r = b.op("Neg", &["x"], vec![]);
        let rq = b.qdq(&r, 0.02, 90);
        let a = b.op("Add", &[&x, &rq], vec![]);
        let mut act = b.op("Relu", &[&a], vec![]);
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let (l, h) = (b.f32s(&[], &[lo]), b.f32s(&[], &[hi]));
            act = b.op("Clip", &[&act, &l, &h], vec![]);
        }
        let y = b.qdq(&act, 0.01, 3);
        let n = b.input_len();
        let m = b.model(&y);
        assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "Neg", "quantize", "add", "dequantize"]);
        let input = ramp(n, -3.0, 3.0);
        // The float graph in f32, as the QDQ model says.
        let want: Vec<f32> = input
            .iter()
            .map(|&v| {
                let s = fake_quant(v as f64, 0.05, 128) + fake_quant(-v as f64, 0.02, 90);
                let s = s.max(0.0);
                let s = match (lo, hi) {
                    (Some(lo), Some(hi)) => s.max(lo).min(hi),
                    _ => s,
                };
                fake_quant(s as f64, 0.01, 3)
            })
            .collect();
        assert_eq!(run(&m, &input), want, "{lo:?} {hi:?}");
    }
}

#[test]
fn data_movement_is_byte_copies() {
    let mut b = Qdq::new(&[1, 2, 2, 2]);
    let x = b.qdq("x", 0.05, 128);
    let c = b.op("Concat", &[&x, &x], vec![Attr::Int("axis", 1)]);
    let y = b.qdq(&c, 0.05, 128);
    let m = b.model(&y);
    let plan = compile_best(&m).unwrap();
    assert_eq!(kinds(&plan), ["quantize", "gather", "dequantize"]);
    let Step::Int(Op::Gather(g)) = &plan.steps[1] else { unreachable!() };
    assert!(g.tables.iter().all(|t| t.is_none()), "same parameters: no tables");
    assert!(matches!(g.copies, Copies::Runs(_) | Copies::Channels(_) | Copies::Bytes(_)));
    let input = ramp(8, -1.0, 1.0);
    let q: Vec<f32> = input.iter().map(|&v| fake_quant(v as f64, 0.05, 128)).collect();
    assert_eq!(run(&m, &input), [q.clone(), q].concat());
}

#[test]
fn pooling_in_integers() {
    let mut b = Qdq::new(&[1, 4, 2, 2]);
    let x = b.qdq("x", 0.1, 128);
    let p = b.op("GlobalAveragePool", &[&x], vec![]);
    let y = b.qdq(&p, 0.1, 128);
    let m = b.model(&y);
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "mean pool", "dequantize"]);
    let input = ramp(16, -2.0, 2.0);
    let want: Vec<f32> = input
        .chunks(4)
        .map(|c| fake_quant(c.iter().map(|&v| fake_quant(v as f64, 0.1, 128) as f64).sum::<f64>() / 4.0, 0.1, 128))
        .collect();
    assert_within_one_step(&run(&m, &input), &want, 0.1);

    // Group pooling: [1, 4, 2, 2] viewed as 2 fields of 2 rotations, the max over each field.
    let mut b = Qdq::new(&[1, 4, 2, 2]);
    let x = b.qdq("x", 0.1, 128);
    let shape = b.g.init_i64("shape", &[5], &[1, 2, 2, 2, 2]);
    let v = b.op("Reshape", &[&x, &shape], vec![]);
    let mx = b.op("ReduceMax", &[&v], vec![Attr::Ints("axes", vec![2]), Attr::Int("keepdims", 0)]);
    let y = b.qdq(&mx, 0.1, 128);
    let m = b.model(&y);
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "max", "dequantize"]);
    let q: Vec<f32> = input.iter().map(|&v| fake_quant(v as f64, 0.1, 128)).collect();
    let want: Vec<f32> = (0..2).flat_map(|f| (0..4).map(move |p| (f, p))).map(|(f, p)| q[f * 8 + p].max(q[f * 8 + 4 + p])).collect();
    assert_eq!(run(&m, &input), want);
}

#[test]
fn mul_by_a_constant_mask_is_tables() {
    let mut b = Qdq::new(&[1, 2, 2, 2]);
    let x = b.qdq("x", 0.1, 128);
    let mask = b.f32s(&[1, 1, 2, 2], &[1.0, 0.0, 0.0, 1.0]);
    let p = b.op("Mul", &[&x, &mask], vec![]);
    let y = b.qdq(&p, 0.1, 128);
    let m = b.model(&y);
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "multiply", "dequantize"]);
    let input = ramp(8, -2.0, 2.0);
    let want: Vec<f32> =
        input.iter().enumerate().map(|(i, &v)| if [0, 3].contains(&(i % 4)) { fake_quant(v as f64, 0.1, 128) } else { 0.0 }).collect();
    assert_eq!(run(&m, &input), want);
}

#[test]
fn gemm_head_is_a_pointwise_conv() {
    let mut b = Qdq::new(&[1, 4]);
    let x = b.qdq("x", 0.05, 128);
    let w = b.weight(&[3, 4], &[1, 2, 3, 4, -1, -2, -3, -4, 10, 0, -10, 5], 0.1);
    let bias = b.f32s(&[3], &[0.5, 0.0, -0.5]);
    let g = b.op("Gemm", &[&x, &w, &bias], vec![Attr::Int("transB", 1)]);
    let y = b.qdq(&g, 0.05, 128);
    let m = b.model(&y);
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "conv", "dequantize"]);
    let input = [0.5f32, -1.0, 2.0, 0.25];
    let xq: Vec<f64> = input.iter().map(|&v| fake_quant(v as f64, 0.05, 128) as f64).collect();
    let wv = [[1., 2., 3., 4.], [-1., -2., -3., -4.], [10., 0., -10., 5.]];
    let want: Vec<f32> = (0..3)
        .map(|o| fake_quant([0.5, 0.0, -0.5][o] + (0..4).map(|k| wv[o][k] * 0.1f32 as f64 * xq[k]).sum::<f64>(), 0.05, 128))
        .collect();
    assert_within_one_step(&run(&m, &input), &want, 0.05);
}

#[test]
fn constant_nodes_are_read_as_bounds_and_float_ops_run_between() {
    let mut b = Qdq::new(&[1, 2, 2, 2]);
    let x = b.qdq("x", 0.1, 128);
    let six =
        pb::AttributeProto { name: "value".into(), t: Some(edgemed_onnx::builder::tensor_f32("", &[], &[0.5])), ..Default::default() };
    b.g.graph.node.push(pb::NodeProto {
        op_type: "Constant".into(),
        output: vec!["bound".into()],
        attribute: vec![six],
        ..Default::default()
    });
    let mn = b.op("Min", &[&x, "bound"], vec![]);
    let mq = b.qdq(&mn, 0.1, 128);
    let sg = b.op("Sigmoid", &[&mq], vec![]);
    let y = b.qdq(&sg, 1.0 / 256.0, 0);
    let m = b.model(&y);
    // Min by the Constant's bound is a table; the float Sigmoid reads its dequantised output.
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "table", "dequantize", "Sigmoid", "quantize", "dequantize"]);
    let input = ramp(8, -2.0, 2.0);
    let want: Vec<f32> = input
        .iter()
        .map(|&v| {
            let t = fake_quant(fake_quant(v as f64, 0.1, 128).min(0.5) as f64, 0.1, 128);
            fake_quant(1.0 / (1.0 + (-(t as f64)).exp()), 1.0 / 256.0, 0)
        })
        .collect();
    assert_within_one_step(&run(&m, &input), &want, 1.0 / 256.0);
}

#[test]
fn refusals_say_unsupported_or_invalid() {
    // No QuantizeLinear at all: not a QDQ model.
    let mut b = Qdq::new(&[1, 2, 2, 2]);
    let r = b.op("Relu", &["x"], vec![]);
    let err = compile_best(&b.model(&r)).unwrap_err();
    assert!(matches!(&err, Error::Unsupported(m) if m.contains("not a QDQ model")), "{err}");
    // An op the interpreter does not know.
    let mut b = Qdq::new(&[1, 2, 2, 2]);
    let x = b.qdq("x", 0.1, 128);
    let e = b.op("Erf", &[&x], vec![]);
    let err = compile_best(&b.model(&e)).unwrap_err();
    assert!(matches!(&err, Error::Unsupported(m) if m.contains("Erf")), "{err}");
    // A kernel larger than the padded input: no runtime can run this model.
    let mut b = Qdq::new(&[1, 1, 2, 2]);
    let x = b.qdq("x", 0.1, 128);
    let w = b.weight(&[1, 1, 3, 3], &[1; 9], 0.1);
    let c = b.op("Conv", &[&x, &w], vec![]);
    let y = b.qdq(&c, 0.1, 128);
    let err = compile_best(&b.model(&y)).unwrap_err();
    assert!(matches!(&err, Error::Invalid(m) if m.contains("kernel larger than the padded input")), "{err}");
    // Per-channel scales that do not match the weights' axis.
    let mut b = Qdq::new(&[1, 2, 3, 3]);
    let x = b.qdq("x", 0.1, 128);
    b.g.graph.initializer.push(pb::TensorProto {
        name: "w".into(),
        dims: vec![2, 2, 1, 1],
        data_type: pb::tensor_proto::DataType::Int8 as i32,
        raw_data: vec![1; 4],
        ..Default::default()
    });
    let s = b.f32s(&[3], &[0.1, 0.2, 0.3]);
    let w = b.op("DequantizeLinear", &["w", &s], vec![Attr::Int("axis", 0)]);
    let c = b.op("Conv", &[&x, &w], vec![]);
    let err = compile_best(&b.model(&c)).unwrap_err();
    assert!(matches!(&err, Error::Invalid(m) if m.contains("3 scales for axis 0")), "{err}");
}

/// Conv -> Q -> DQ -> Relu -> Min (per channel) -> Q on the same grid, the way the
/// converter and ONNX Runtime write a ReLU6 chain: the table only clamps the conv's
/// output, which nothing else reads, so the conv's own clamp narrows instead (no
/// table step) and the bytes are those of the table. A second reader keeps the table.
#[test]
fn a_clamping_table_on_a_conv_output_narrows_the_convs_clamp() {
    let build = |second_reader: bool| {
        let (cin, cout, h) = (2, 3, 5);
        let mut b = Qdq::new(&[1, cin, h, h]);
        let x = b.qdq("x", 0.02, 100);
        let wv: Vec<i8> = (0..cout * cin * 9).map(|i| ((i * 53 % 255) as i32 - 127) as i8).collect();
        let w = b.weight(&[cout, cin, 3, 3], &wv, 0.01);
        let c = b.op("Conv", &[&x, &w], vec![Attr::Ints("pads", vec![1, 1, 1, 1])]);
        let q = b.q(&c, 0.03, 90);
        let dq = b.dq(&q, 0.03, 90);
        let r = b.op("Relu", &[&dq], vec![]);
        let bound = b.f32s(&[1, cout, 1, 1], &[0.5, 2.0, 1.0]);
        let m = b.op("Min", &[&r, &bound], vec![]);
        let y = b.qdq(&m, 0.03, 90);
        let out = if second_reader {
            let dq2 = b.dq(&q, 0.03, 90);
            b.op("Add", &[&y, &dq2], vec![])
        } else {
            y
        };
        (b.model(&out), cin * h * h)
    };
    let (fused, n) = build(false);
    let plan = compile_best(&fused).unwrap();
    assert_eq!(kinds(&plan), ["quantize", "conv", "dequantize"]);
    let input = ramp(n, -2.0, 2.5);
    let unfused = {
        let (with_reader, _) = build(true);
        kinds(&compile_best(&with_reader).unwrap())
    };
    assert!(unfused.contains(&"table"), "a second reader of the conv's output keeps the table: {unfused:?}");
    let got = run(&fused, &input);
    // Every output is on the grid and inside each channel's [0, bound].
    for (i, v) in got.iter().enumerate() {
        let bound = [0.5f32, 2.0, 1.0][i / 25];
        assert!(*v >= 0.0 && *v <= bound + 0.015, "element {i}: {v}");
    }
    // Against the conv alone on the same grid, then ReLU and the bounds applied here.
    let conv_only = {
        let (cin, cout, h) = (2, 3, 5);
        let mut b = Qdq::new(&[1, cin, h, h]);
        let x = b.qdq("x", 0.02, 100);
        let wv: Vec<i8> = (0..cout * cin * 9).map(|i| ((i * 53 % 255) as i32 - 127) as i8).collect();
        let w = b.weight(&[cout, cin, 3, 3], &wv, 0.01);
        let c = b.op("Conv", &[&x, &w], vec![Attr::Ints("pads", vec![1, 1, 1, 1])]);
        let y = b.qdq(&c, 0.03, 90);
        run(&b.model(&y), &input)
    };
    let want: Vec<f32> =
        conv_only.iter().enumerate().map(|(i, &v)| fake_quant(v.max(0.0).min([0.5f32, 2.0, 1.0][i / 25]) as f64, 0.03, 90)).collect();
    assert_eq!(got, want);
}

/// A 3-D net with three instance norms: one of u8 tensors (between Q/DQ pairs: a
/// histogram), one of a conv's float values (fused with the conv; with `unfused`, an
/// Add of 0 between them keeps the conv's float output and the interpreter's norm,
/// the same values), and one of a table's float output (the interpreter's); valid
/// convs 3x3x3 and 1x1x1 stride 2, so each output sees 3 input voxels per axis, 2 apart.
fn norm_net(n: [usize; 3], unfused: bool) -> OnnxModel {
    norm_net_with(n, unfused, None)
}

/// [`norm_net`], its second norm followed by a PReLU with `slopes` (one, or one per
/// channel) instead of a ReLU, where given.
fn norm_net_with(n: [usize; 3], unfused: bool, slopes: Option<&[f32]>) -> OnnxModel {
    let mut b = Qdq::new(&[1, 1, n[0], n[1], n[2]]);
    let x = b.qdq("x", 0.03, 100);
    let w1: Vec<i8> = (0..3 * 27).map(|i| ((i * 37 % 23) as i8) - 11).collect();
    let w1 = b.weight(&[3, 1, 3, 3, 3], &w1, 0.01);
    let b1 = b.f32s(&[3], &[0.1, -0.2, 0.3]);
    let c1 = b.op("Conv", &[&x, &w1, &b1], vec![]);
    let c1 = b.qdq(&c1, 0.05, 128);
    let (s1, o1) = (b.f32s(&[3], &[1.2, 0.8, -1.0]), b.f32s(&[3], &[0.0, 0.5, 0.1]));
    let n1 = b.op("InstanceNormalization", &[&c1, &s1, &o1], vec![Attr::Float("epsilon", 1e-5)]);
    let r1 = b.op("Relu", &[&n1], vec![]);
    let r1 = b.qdq(&r1, 0.02, 0);
    let w2: Vec<i8> = (0..4 * 3).map(|i| ((i * 29 % 31) as i8) - 15).collect();
    let w2 = b.weight(&[4, 3, 1, 1, 1], &w2, 0.02);
    let b2 = b.f32s(&[4], &[0.0, 0.1, -0.1, 0.2]);
    let mut c2 = b.op("Conv", &[&r1, &w2, &b2], vec![Attr::Ints("strides", vec![2, 2, 2])]);
    if unfused {
        let zero = b.f32s(&[], &[0.0]);
        c2 = b.op("Add", &[&c2, &zero], vec![]);
    }
    let (s2, o2) = (b.f32s(&[4], &[1.0, -0.5, 2.0, 0.7]), b.f32s(&[4], &[0.2, 0.0, -0.3, 0.1]));
    let n2 = b.op("InstanceNormalization", &[&c2, &s2, &o2], vec![Attr::Float("epsilon", 1e-5)]);
    let y2 = match slopes {
        None => {
            let r2 = b.op("Relu", &[&n2], vec![]);
            b.qdq(&r2, 0.03, 0)
        }
        Some(a) => {
            let shape = if a.len() == 1 { vec![1] } else { vec![a.len(), 1, 1, 1] };
            let a = b.f32s(&shape, a);
            let r2 = b.op("PRelu", &[&n2, &a], vec![]);
            b.qdq(&r2, 0.03, 100)
        }
    };
    let g = b.op("Sigmoid", &[&y2], vec![]);
    let (s3, o3) = (b.f32s(&[4], &[0.5, 1.0, -1.0, 2.0]), b.f32s(&[4], &[0.0, 0.3, 0.0, -0.2]));
    let n3 = b.op("InstanceNormalization", &[&g, &s3, &o3], vec![Attr::Float("epsilon", 1e-5)]);
    let y = b.qdq(&n3, 0.03, 128);
    b.model(&y)
}

/// `Conv -> InstanceNormalization -> Relu | PRelu -> QuantizeLinear` is one step, a
/// requantisation of the conv's sums with statistics from their integer moments (two,
/// one per side, with a PReLU): the same bytes on every ISA and thread count, and
/// within one output step of the unfused float steps (conv to float, the interpreter's
/// norm and activation, quantize). Slopes of each sign, 0, and one for all channels.
#[test]
fn a_conv_and_its_instance_norm_are_one_requantisation() {
    let n = [9, 8, 11];
    let slopes: [Option<&[f32]>; 3] = [None, Some(&[0.25, -0.3, 0.0, 0.1]), Some(&[0.2])];
    for a in slopes {
        let (fused, unfused) = (norm_net_with(n, false, a), norm_net_with(n, true, a));
        let labels = |m: &OnnxModel| {
            let e = Engine::new(m).unwrap();
            e.plan.steps.iter().map(|s| e.plan.label(s)).collect::<Vec<_>>()
        };
        assert!(labels(&fused).iter().any(|l| l.contains("+ instance norm")), "{:?}", labels(&fused));
        assert!(!labels(&unfused).iter().any(|l| l.contains("+ instance norm")), "{:?}", labels(&unfused));
        let x: Vec<f32> = (0..n.iter().product::<usize>()).map(|i| ((i * 7919 % 211) as f32 / 40.0) - 2.5).collect();
        fused_equals_its_float_steps(&fused, &unfused, &x, 0.03, &format!("slopes {a:?}"));
    }
}

/// The fused model's output, which must be the same bits on every ISA at 1 and 3
/// threads and within one output `step` of the `unfused` float steps' (95% or more of
/// its elements equal); `what` names the case in failures.
fn fused_equals_its_float_steps(
    fused: &OnnxModel,
    unfused: &OnnxModel,
    x: &[f32],
    step: f32,
    what: &str,
) -> Vec<crate::ndarray::ArrayD<f32>> {
    let float_steps = Engine::new(unfused).unwrap().run_one(x).unwrap().remove(0);
    let want = Engine::with_isa(fused, Isa::Scalar).unwrap().run_one(x).unwrap();
    for isa in Isa::available() {
        for threads in [1, 3] {
            let e = Engine::with_isa(fused, isa).unwrap().with_threads(threads).with_min_part(1, 1);
            assert_eq!(e.run_one(x).unwrap(), want, "{isa:?} {threads} threads, {what}");
        }
    }
    let d: Vec<f32> = want[0].iter().zip(float_steps.iter()).map(|(a, b)| (a - b).abs()).collect();
    let same = d.iter().filter(|&&v| v == 0.0).count();
    assert!(d.iter().all(|&v| v <= step * 1.001), "max {}, {what}", d.iter().fold(0f32, |m, &v| m.max(v)));
    assert!(same * 100 >= d.len() * 95, "{same} of {} equal, {what}", d.len());
    want
}

/// A transposed conv (the sub-pixel form) and its instance norm are one step too: where
/// every class voxel of the sub-conv is an output (output padding 1, a U-Net's
/// up-conv), its sums are normalised and requantised as they are and shuffled as
/// bytes; where the output cuts the last class voxels off (output padding 0), the sums
/// are shuffled first. Both give the same bytes on every ISA and thread count, within
/// one output step of the unfused float steps, with a ReLU or a PReLU.
#[test]
fn a_transposed_conv_and_its_instance_norm_are_one_requantisation() {
    let (cin, cout, n) = (3, 4, [3, 4, 5]);
    for (out_pad, slopes) in [(1, None), (0, None), (1, Some([0.25f32, -0.3, 0.0, 0.1])), (0, Some([0.2, 0.2, -1.0, 0.5]))] {
        let net = |unfused: bool| {
            let mut b = Qdq::new(&[1, cin, n[0], n[1], n[2]]);
            let x = b.qdq("x", 0.03, 100);
            let w: Vec<i8> = (0..cin * cout * 27).map(|i| ((i * 37 % 51) as i8) - 25).collect();
            let w = b.weight(&[cin, cout, 3, 3, 3], &w, 0.01);
            let bias = b.f32s(&[cout], &[0.1, -0.2, 0.3, 0.0]);
            let attrs =
                vec![Attr::Ints("strides", vec![2, 2, 2]), Attr::Ints("pads", vec![1; 6]), Attr::Ints("output_padding", vec![out_pad; 3])];
            let mut c = b.op("ConvTranspose", &[&x, &w, &bias], attrs);
            if unfused {
                let zero = b.f32s(&[], &[0.0]);
                c = b.op("Add", &[&c, &zero], vec![]);
            }
            let (s, o) = (b.f32s(&[cout], &[1.0, -0.5, 2.0, 0.7]), b.f32s(&[cout], &[0.2, 0.0, -0.3, 0.1]));
            let nrm = b.op("InstanceNormalization", &[&c, &s, &o], vec![Attr::Float("epsilon", 1e-5)]);
            let y = match slopes {
                None => {
                    let r = b.op("Relu", &[&nrm], vec![]);
                    b.qdq(&r, 0.03, 0)
                }
                Some(a) => {
                    let a = b.f32s(&[cout, 1, 1, 1], &a);
                    let r = b.op("PRelu", &[&nrm, &a], vec![]);
                    b.qdq(&r, 0.03, 100)
                }
            };
            b.model(&y)
        };
        let (fused, unfused) = (net(false), net(true));
        let e = Engine::new(&fused).unwrap();
        let labels: Vec<String> = e.plan.steps.iter().map(|s| e.plan.label(s)).collect();
        assert!(labels.iter().any(|l| l.contains("sub-pixel") && l.contains("+ instance norm")), "{labels:?}");
        let x: Vec<f32> = (0..cin * n.iter().product::<usize>()).map(|i| ((i * 7919 % 211) as f32 / 40.0) - 2.5).collect();
        let want = fused_equals_its_float_steps(&fused, &unfused, &x, 0.03, &format!("output padding {out_pad}, slopes {slopes:?}"));
        assert_eq!(
            want[0].shape(),
            &[1, cout, 2 * n[0] - 1 + out_pad as usize, 2 * n[1] - 1 + out_pad as usize, 2 * n[2] - 1 + out_pad as usize]
        );
    }
}

/// A volume streamed in tiles ([`crate::norms`]), one pass per instance norm and a
/// last one for the outputs, gives the whole volume's output bit for bit, for norms
/// of u8 tensors, of a conv's values and of a float op's, at 1 and 3 threads; each
/// tile's own statistics would not.
#[test]
fn streamed_instance_norms_equal_the_whole_volume() {
    use crate::norms::{owned_box, site_strides, NormPass, NormSums, PassResult};
    let (s, rf, m, t) = (2usize, 3usize, [5usize, 4, 6], 2usize);
    let span = |v: usize| s * v + rf - 1;
    let whole_n = m.map(span);
    let x: Vec<f32> =
        (0..whole_n.iter().product::<usize>()).map(|i| ((i * 7919 % 211) as f32 / 40.0) - 2.5 + (i % 13) as f32 * 0.1).collect();
    let whole = Engine::new(&norm_net(whole_n, false)).unwrap().run_one(&x).unwrap().remove(0);
    assert_eq!(whole.shape(), &[1, 4, m[0], m[1], m[2]]);
    let tile_engine = Engine::new(&norm_net([span(t); 3], false)).unwrap();
    let sites = tile_engine.norm_sites();
    assert_eq!(sites.iter().map(|s| s.bytes).collect::<Vec<_>>(), [true, false, false]);
    let strides = site_strides(&sites, &Engine::new(&norm_net([span(t) + s; 3], false)).unwrap().norm_sites(), s).unwrap();
    assert_eq!(strides, [vec![1; 3], vec![2; 3], vec![2; 3]]);
    // Map starts per axis, every t voxels, the last flush with the end.
    let starts: Vec<Vec<usize>> = m.iter().map(|&v| (0..v - t).step_by(t).chain([v - t]).collect()).collect();
    let voxel_starts: Vec<Vec<usize>> = starts.iter().map(|v| v.iter().map(|a| a * s).collect()).collect();
    let mut tiles = vec![];
    for i in 0..starts[0].len() {
        for j in 0..starts[1].len() {
            for k in 0..starts[2].len() {
                tiles.push([i, j, k]);
            }
        }
    }
    let tile_input = |at: [usize; 3]| -> Vec<f32> {
        let o = [0, 1, 2].map(|a| voxel_starts[a][at[a]]);
        let w = span(t);
        let mut v = Vec::with_capacity(w * w * w);
        for a in 0..w {
            for b in 0..w {
                let row = ((o[0] + a) * whole_n[1] + o[1] + b) * whole_n[2] + o[2];
                v.extend_from_slice(&x[row..row + w]);
            }
        }
        v
    };
    for threads in [1, 3] {
        let e = Engine::new(&norm_net([span(t); 3], false)).unwrap().with_threads(threads).with_min_part(1, 1);
        let mut given: Vec<NormSums> = vec![];
        for (k, site) in sites.iter().enumerate() {
            let mut total: Option<NormSums> = None;
            for &at in &tiles {
                let region = owned_box(&voxel_starts, &at, &strides[k], &site.spatial).unwrap();
                let PassResult::Sums(sums) = e.run_pass(&tile_input(at), NormPass { given: &given, collect: Some(&region) }).unwrap()
                else {
                    panic!("a collecting pass gives sums")
                };
                match &mut total {
                    None => total = Some(sums),
                    Some(t) => t.merge(&sums).unwrap(),
                }
            }
            let total = total.unwrap();
            // Every activation of the volume counted once.
            let whole_len: usize = match k {
                0 => whole_n.iter().map(|n| n - 2).product(),
                _ => whole_n.iter().map(|n| (n - 3) / 2 + 1).product(),
            };
            assert_eq!(total.count(), whole_len as u64, "norm {k}");
            given.push(total);
        }
        let mut streamed = whole.clone();
        streamed.fill(f32::NAN);
        let mut own_differs = false;
        for &at in &tiles {
            let xt = tile_input(at);
            let y = e.run_pass(&xt, NormPass { given: &given, collect: None }).unwrap().outputs().remove(0);
            own_differs |= e.run_one(&xt).unwrap()[0] != y;
            let o = [0, 1, 2].map(|a| starts[a][at[a]]);
            let mut dst = streamed.slice_mut(crate::ndarray::s![0, .., o[0]..o[0] + t, o[1]..o[1] + t, o[2]..o[2] + t]);
            dst.assign(&y.slice(crate::ndarray::s![0, .., .., .., ..]));
        }
        assert!(own_differs, "each tile's own statistics gave the whole volume's output");
        assert_eq!(streamed, whole, "{threads} threads");
    }
}

/// A conv + instance norm whose scale is not finite (a corrupt or badly converted
/// model) is refused when it runs, in one line naming the op: never a panic, never
/// bytes from a NaN multiplier. With a PReLU after it too.
#[test]
fn a_conv_norm_with_an_infinite_scale_is_refused_at_run() {
    for prelu in [false, true] {
        let mut b = Qdq::new(&[1, 1, 6, 6, 6]);
        let x = b.qdq("x", 0.03, 100);
        let w: Vec<i8> = (0..2 * 27).map(|i| ((i * 37 % 23) as i8) - 11).collect();
        let w = b.weight(&[2, 1, 3, 3, 3], &w, 0.01);
        let c = b.op("Conv", &[&x, &w], vec![]);
        let (s, o) = (b.f32s(&[2], &[f32::INFINITY, 1.0]), b.f32s(&[2], &[0.0, 0.1]));
        let n = b.op("InstanceNormalization", &[&c, &s, &o], vec![Attr::Float("epsilon", 1e-5)]);
        let a = if prelu {
            let slope = b.f32s(&[1], &[0.2]);
            b.op("PRelu", &[&n, &slope], vec![])
        } else {
            b.op("Relu", &[&n], vec![])
        };
        let y = b.qdq(&a, 0.03, 100);
        let e = Engine::new(&b.model(&y)).unwrap();
        assert!(e.plan.steps.iter().any(|s| e.plan.label(s).contains("+ instance norm")));
        let err = e.run_one(&vec![0.5; 216]).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
        assert!(err.to_string().contains("instance norm"), "{err}");
    }
}

/// Integer transposed convs (the sub-pixel form: a dense conv on the input and a
/// shuffle) against their float definition worked out here, each input value times each
/// tap added where it lands: random 2-D and 3-D geometries (kernels 1-4, strides 1-3,
/// padding below the kernel, output padding below the stride, 1-9 output channels),
/// requantised after a ReLU or read by a float op (Sigmoid); the same bytes on every
/// ISA at 1 and 3 threads. Padding of a whole kernel falls back to the scatter form.
#[test]
fn transposed_convs_equal_their_float_definition() {
    use crate::kernels::testgen::Lcg;
    let mut s = Lcg::new(29);
    let (mut checked, mut scattered) = (0, 0);
    for round in 0..42 {
        let sp = if round % 3 == 0 { 2 } else { 3 };
        let (cin, cout) = (1 + s.below(4), [1, 2, 3, 4, 8, 9][s.below(6)]);
        let mut kernel: Vec<usize> = (0..sp).map(|_| 1 + s.below(4)).collect();
        let mut strides: Vec<usize> = (0..sp).map(|_| 1 + s.below(3)).collect();
        let mut pads: Vec<usize> = (0..2 * sp).map(|i| s.below(kernel[i % sp])).collect();
        let out_pad: Vec<usize> = (0..sp).map(|i| s.below(strides[i])).collect();
        let mut input: Vec<usize> = (0..sp).map(|_| 1 + s.below(5)).collect();
        // The last two: padding of the whole kernel before x, which the sub-pixel form
        // does not take (the scatter of each tap's columns runs instead).
        let scatter = round >= 40;
        if scatter {
            (kernel[sp - 1], strides[sp - 1], pads[sp - 1], pads[2 * sp - 1], input[sp - 1]) = (2, 2, 2, 0, 4);
        }
        let output: Vec<usize> = (0..sp)
            .map(|i| ((input[i] - 1) * strides[i] + kernel[i] + out_pad[i]) as isize - (pads[i] + pads[i + sp]) as isize)
            .map(|v| v.max(0) as usize)
            .collect();
        if output.contains(&0) {
            continue;
        }
        let mut shape = vec![1, cin];
        shape.extend_from_slice(&input);
        let mut b = Qdq::new(&shape);
        let (xs, xz, ws) = (0.03, s.u8(), 0.004);
        let x = b.qdq("x", xs, xz);
        let taps: usize = kernel.iter().product();
        let wv: Vec<i8> = (0..cin * cout * taps).map(|_| s.u8() as i8).collect();
        let mut wshape = vec![cin, cout];
        wshape.extend_from_slice(&kernel);
        let w = b.weight(&wshape, &wv, ws);
        let bias_v: Vec<f32> = (0..cout).map(|c| c as f32 * 0.05 - 0.2).collect();
        let bias = b.f32s(&[cout], &bias_v);
        let ints = |v: &[usize]| v.iter().map(|&u| u as i64).collect::<Vec<_>>();
        let attrs =
            vec![Attr::Ints("strides", ints(&strides)), Attr::Ints("pads", ints(&pads)), Attr::Ints("output_padding", ints(&out_pad))];
        let c = b.op("ConvTranspose", &[&x, &w, &bias], attrs);
        let requantised = round % 2 == 0;
        let (ys, yz) = (0.05, 3);
        let y = if requantised {
            let r = b.op("Relu", &[&c], vec![]);
            b.qdq(&r, ys, yz)
        } else {
            b.op("Sigmoid", &[&c], vec![])
        };
        let n = b.input_len();
        let m = b.model(&y);
        let xin: Vec<f32> = (0..n).map(|i| ((i * 7919 % 211) as f32 / 40.0) - 2.5).collect();
        // The definition, in f64 on the dequantised values; 2-D lifted to depth 1.
        let lift = |v: &[usize], fill: usize| -> [usize; 3] {
            let mut o = [fill; 3];
            o[3 - v.len()..].copy_from_slice(v);
            o
        };
        let (i3, k3, s3, p3, o3) = (lift(&input, 1), lift(&kernel, 1), lift(&strides, 1), lift(&pads[..sp], 0), lift(&output, 1));
        // QuantizeLinear divides in f32 (ONNX): a quotient near a tie rounds as f32's does.
        let xq: Vec<f64> =
            xin.iter().map(|&v| (((v / xs).round_ties_even() + xz as f32).clamp(0.0, 255.0) - xz as f32) as f64 * xs as f64).collect();
        let opix: usize = o3.iter().product();
        let mut sums: Vec<f64> = (0..cout * opix).map(|i| bias_v[i / opix] as f64).collect();
        for ci in 0..cin {
            for v in 0..i3.iter().product::<usize>() {
                let iv = [v / (i3[1] * i3[2]), v / i3[2] % i3[1], v % i3[2]];
                for t in 0..taps {
                    let kv = [t / (k3[1] * k3[2]), t / k3[2] % k3[1], t % k3[2]];
                    let o: Vec<isize> = (0..3).map(|a| (iv[a] * s3[a] + kv[a]) as isize - p3[a] as isize).collect();
                    if (0..3).any(|a| o[a] < 0 || o[a] >= o3[a] as isize) {
                        continue;
                    }
                    let at = (o[0] as usize * o3[1] + o[1] as usize) * o3[2] + o[2] as usize;
                    for co in 0..cout {
                        let wq = wv[(ci * cout + co) * taps + t] as f64 * ws as f64;
                        sums[co * opix + at] += xq[ci * i3.iter().product::<usize>() + v] * wq;
                    }
                }
            }
        }
        let got = run(&m, &xin);
        if requantised {
            let want: Vec<f32> = sums.iter().map(|&v| fake_quant(v.max(0.0), ys, yz)).collect();
            assert_within_one_step(&got, &want, ys);
        } else {
            for (i, (&g, &v)) in got.iter().zip(&sums).enumerate() {
                let want = 1.0 / (1.0 + (-v).exp());
                assert!((g as f64 - want).abs() < 1e-5, "{i}: {g} vs {want}; {shape:?} {kernel:?} /{strides:?} pads {pads:?} -> {cout}");
            }
        }
        let reference = Engine::with_isa(&m, Isa::Scalar).unwrap().run_one(&xin).unwrap();
        for isa in Isa::available() {
            for threads in [1, 3] {
                let e = Engine::with_isa(&m, isa).unwrap().with_threads(threads).with_min_part(1, 1);
                let sub_pixel = e.plan.steps.iter().any(|st| e.plan.label(st).contains("sub-pixel"));
                assert_eq!(sub_pixel, !scatter, "{:?}", kinds(&e.plan));
                assert_eq!(e.run_one(&xin).unwrap(), reference, "{isa:?} {threads} threads, {shape:?} {kernel:?} /{strides:?} -> {cout}");
            }
        }
        checked += 1;
        scattered += scatter as usize;
    }
    assert!(checked > 25, "{checked} geometries");
    assert!(scattered == 2, "{scattered} scattered");
}

/// A channel concat of whole tensors with few channels each (a U-Net's skip
/// connection) copies each pixel's channels from every source, through each source's
/// requantisation table where its parameters differ from the output's: the float
/// reference's bytes, the same at any thread count.
#[test]
fn a_channel_concat_copies_pixels_from_each_source() {
    let (c, h, w) = (3, 4, 6);
    let mut b = Qdq::new(&[1, c, h, w]);
    let a = b.qdq("x", 0.05, 128);
    let r = b.op("Relu", &[&a], vec![]);
    let r = b.qdq(&r, 0.03, 0);
    let cat = b.op("Concat", &[&a, &r, &a], vec![Attr::Int("axis", 1)]);
    let y = b.qdq(&cat, 0.07, 120);
    let m = b.model(&y);
    let plan = compile_best(&m).unwrap();
    let gather = plan.steps.iter().find_map(|st| if let Step::Int(Op::Gather(g)) = st { Some(g) } else { None }).expect("a gather");
    assert!(matches!(&gather.copies, Copies::Channels(p) if p.len() == 3), "{:?}", gather.copies);
    let input = ramp(c * h * w, -3.0, 4.0);
    let xa: Vec<f32> = input.iter().map(|&v| fake_quant(v as f64, 0.05, 128)).collect();
    let xr: Vec<f32> = xa.iter().map(|&v| fake_quant(v.max(0.0) as f64, 0.03, 0)).collect();
    let want: Vec<f32> = [&xa[..], &xr[..], &xa[..]].concat().iter().map(|&v| fake_quant(v as f64, 0.07, 120)).collect();
    assert_eq!(run(&m, &input), want);
    let e = Engine::new(&m).unwrap().with_threads(3).with_min_part(1, 1);
    assert_eq!(e.run_one(&input).unwrap()[0].iter().copied().collect::<Vec<f32>>(), want);
}

/// A NaN or an infinity that a float op makes mid-graph (Log of zero or of a negative
/// value) is an error naming the quantisation it would have reached, at any thread
/// count and however the quantisation is cut into parts; a NaN in the model's input
/// likewise, naming the input. Finite values give the reference's bytes.
#[test]
fn non_finite_values_reaching_a_quantisation_are_errors() {
    let mut b = Qdq::new(&[1, 2, 3, 5]);
    let x = b.qdq("x", 0.05, 128);
    // An integer op first (the engine runs nothing otherwise): a 1x1 conv by the identity.
    let w = b.weight(&[2, 2, 1, 1], &[100, 0, 0, 100], 0.01);
    let c = b.op("Conv", &[&x, &w], vec![]);
    let c = b.qdq(&c, 0.05, 128);
    let l = b.op("Log", &[&c], vec![]);
    let y = b.qdq(&l, 0.02, 200);
    let n = b.input_len();
    let model = b.model(&y);
    let good: Vec<f32> = (0..n).map(|i| 0.3 + 0.17 * (i % 11) as f32).collect();
    let one = Engine::new(&model).unwrap().run_one(&good).unwrap().remove(0);
    for (i, (&v, &o)) in good.iter().zip(one.iter()).enumerate() {
        // ln of the quantised input, within one output step (and the identity's rounding).
        let xq = (v / 0.05).round_ties_even() * 0.05;
        assert!((o - xq.ln()).abs() <= 0.0201, "element {i}: {o} for ln({xq})");
    }
    for threads in [1, 2, 3] {
        let e = Engine::new(&model).unwrap().with_threads(threads).with_min_part(1, 1);
        assert_eq!(e.run_one(&good).unwrap().remove(0), one, "{threads} threads");
        // One element at or below zero, anywhere: -inf or NaN after the Log.
        for bad in [0, n / 2, n - 1] {
            let mut x = good.clone();
            x[bad] = if bad % 2 == 0 { 0.0 } else { -1.0 };
            let err = e.run_one(&x).unwrap_err();
            assert!(matches!(err, Error::NonFinite { .. }), "{threads} threads, element {bad}: {err}");
            assert!(err.to_string().contains("value before"), "{err}");
        }
        let mut x = good.clone();
        x[n - 2] = f32::NAN;
        let err = e.run_one(&x).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }) && err.to_string().contains("model input"), "{err}");
    }
}
