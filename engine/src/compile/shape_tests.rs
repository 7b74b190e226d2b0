//! Shape folding on QDQ graphs with a dynamic batch, as torch's exporters write them:
//! escnn's group pooling through the legacy exporter's Shape -> Gather -> Unsqueeze
//! -> Concat -> Reshape chain and the dynamo exporter's (opset 18) Shape slices,
//! Range, ConstantOfShape, Expand, Where; each must compile into integer ops only
//! (the group pooling still the integer ReduceMax) and match a float reference within
//! a quantisation step. A shape computed from the data must be refused by name.
//! Also what such U-Nets and exports meet next to them: CastLike'd Clip bounds, nearest
//! upsampling of a u8 tensor, a float ConvTranspose between integer ops.

use edgemed_onnx::builder::{tensor_i64, Attr, GraphBuilder, D};
use edgemed_onnx::model::OnnxModel;
use edgemed_onnx::pb;
use prost::Message;

use super::compile;
use crate::error::Error;
use crate::kernels::Isa;
use crate::plan::{MaxGroups, Op, Plan, Step};
use crate::Engine;

/// A QDQ graph with a symbolic batch under construction; every value is a fresh name.
struct Graph {
    g: GraphBuilder,
    n: usize,
}

impl Graph {
    fn new(channels_and_sizes: &[i64]) -> Self {
        let mut g = GraphBuilder::new("shape");
        let dims: Vec<D> = std::iter::once(D::Sym("batch")).chain(channels_and_sizes.iter().map(|&d| D::N(d))).collect();
        g.input_f32("x", &dims);
        Graph { g, n: 0 }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{what}{}", self.n)
    }

    fn i64s(&mut self, shape: &[usize], v: &[i64]) -> String {
        let name = self.fresh("i");
        self.g.init_i64(&name, shape, v)
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        let y = self.fresh(&op.to_lowercase());
        self.g.node(op, &y, inputs, attrs)
    }

    /// QuantizeLinear then DequantizeLinear with one u8 zero point.
    fn qdq(&mut self, x: &str, scale: f32, zp: u8) -> String {
        let (s, z) = (self.fresh("s"), self.fresh("zp"));
        self.g.init_f32(&s, &[], &[scale]);
        self.g.graph.initializer.push(pb::TensorProto {
            name: z.clone(),
            data_type: pb::tensor_proto::DataType::Uint8 as i32,
            raw_data: vec![zp],
            ..Default::default()
        });
        let q = self.op("QuantizeLinear", &[x, &s, &z], vec![]);
        self.op("DequantizeLinear", &[&q, &s, &z], vec![])
    }

    /// DequantizeLinear of int8 weights with one scale.
    fn weight(&mut self, shape: &[usize], w: &[i8], scale: f32) -> String {
        let (q, s) = (self.fresh("w"), self.fresh("ws"));
        self.g.graph.initializer.push(pb::TensorProto {
            name: q.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Int8 as i32,
            raw_data: w.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        });
        self.g.init_f32(&s, &[], &[scale]);
        self.op("DequantizeLinear", &[&q, &s], vec![])
    }

    fn model(mut self, output: &str, opset: i64) -> OnnxModel {
        self.g.output_f32(output, &[]);
        let mut model = self.g.into_model("shape-test", &[]);
        model.opset_import[0].version = opset;
        OnnxModel::from_bytes("shape.onnx", &model.encode_to_vec()).expect("a valid model")
    }
}

/// The escnn-like front of every test: x [b, 2, 3, 3] quantised, a 1x1 conv to 8
/// channels (`relu` fused or not). Returns the conv's output (before any QDQ).
fn conv_front(b: &mut Graph, relu: bool) -> String {
    let x = b.qdq("x", 0.05, 128);
    let w = b.weight(&[8, 2, 1, 1], &WEIGHTS, 0.02);
    let c = b.op("Conv", &[&x, &w], vec![]);
    if relu {
        b.op("Relu", &[&c], vec![])
    } else {
        c
    }
}

const WEIGHTS: [i8; 16] = [3, -5, 7, 1, -2, 9, 4, 4, -8, 6, 0, -3, 5, 5, -1, -7];

/// q(x) with ties to even, saturated to u8, then dequantised.
fn fake_quant(x: f64, scale: f32, zp: u8) -> f32 {
    let q = ((x / scale as f64).round_ties_even() + zp as f64).clamp(0.0, 255.0);
    ((q - zp as f64) * scale as f64) as f32
}

fn input() -> Vec<f32> {
    (0..18).map(|i| -2.0 + 4.0 * i as f32 / 17.0).collect()
}

/// The reference: the conv in f64 on the quantised input, quantised with 0.04, then the
/// max over each field's 4 channels (the same scale: exact).
fn group_pooled(x: &[f32], relu: bool) -> Vec<f32> {
    let y = conv_reference(x, relu);
    (0..2).flat_map(|f| (0..9).map(move |p| (f, p))).map(|(f, p)| (0..4).map(|k| y[(f * 4 + k) * 9 + p]).fold(f32::MIN, f32::max)).collect()
}

/// The conv of [`conv_front`] (no Relu) quantised with 0.04, then `pool(y, k, p)` for
/// each of `groups` outputs k at each of the 9 pixels p, in NCHW order.
fn group_pooled_by(x: &[f32], pool: impl Fn(&[f32], usize, usize) -> f32, groups: usize) -> Vec<f32> {
    let y = conv_reference(x, false);
    (0..groups).flat_map(|k| (0..9).map(move |p| (k, p))).map(|(k, p)| pool(&y, k, p)).collect()
}

/// The conv in f64 on the quantised input, quantised with 0.04: [8][9] (NCHW).
fn conv_reference(x: &[f32], relu: bool) -> Vec<f32> {
    let xq: Vec<f64> = x.iter().map(|&v| fake_quant(v as f64, 0.05, 128) as f64).collect();
    (0..8)
        .flat_map(|o| {
            let xq = &xq;
            (0..9).map(move |p| {
                let v: f64 = (0..2).map(|i| WEIGHTS[o * 2 + i] as f64 * 0.02 * xq[i * 9 + p]).sum();
                fake_quant(if relu { v.max(0.0) } else { v }, 0.04, 128)
            })
        })
        .collect()
}

fn compile_best(model: &OnnxModel) -> crate::error::Result<Plan> {
    compile(model, Isa::detect())
}

/// The plan's steps: integer ops by name, float ops by their ONNX operator.
fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.steps
        .iter()
        .map(|s| match s {
            Step::Quantize { .. } => "quantize",
            Step::Dequantize { .. } => "dequantize",
            Step::ConvToFloat { .. } => "conv to float",
            Step::Float { op, .. } => op.name(),
            Step::Int(Op::Conv(_)) => "conv",
            Step::Int(Op::GatherMax { .. }) => "max",
            Step::Int(_) => "other integer op",
        })
        .collect()
}

fn assert_within_one_step(got: &[f32], want: &[f32], step: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= step * 1.001, "element {i}: {g} vs {w} (step {step})");
    }
}

/// Compiles `model`, checks it is integer ops only (the pooling the integer ReduceMax),
/// runs it and compares with the reference.
fn check_group_pooling(model: &OnnxModel, relu: bool) {
    let plan = compile_best(model).unwrap();
    assert_eq!(kinds(&plan), ["quantize", "conv", "max", "dequantize"]);
    let Step::Int(Op::GatherMax { group, index, .. }) = &plan.steps[2] else { unreachable!() };
    assert_eq!(*group, 4, "4 rotations per field");
    assert_eq!(*index, MaxGroups::Contiguous, "a field's rotations are read in place");
    let got: Vec<f32> = Engine::new(model).unwrap().run_one(&input()).unwrap()[0].iter().copied().collect();
    assert_within_one_step(&got, &group_pooled(&input(), relu), 0.04);
}

#[test]
fn legacy_exporter_group_pooling_folds_into_the_integer_reduce_max() {
    // y.view(b, c // 4, 4, h, w).amax(2) as torch.onnx's TorchScript exporter writes it.
    let mut b = Graph::new(&[2, 3, 3]);
    let c = conv_front(&mut b, false);
    let y = b.qdq(&c, 0.04, 128);
    let s = b.op("Shape", &[&y], vec![]);
    let dim = |b: &mut Graph, i: i64| {
        let idx = b.i64s(&[], &[i]);
        b.op("Gather", &[&s, &idx], vec![Attr::Int("axis", 0)])
    };
    let (batch, ch, h, w) = (dim(&mut b, 0), dim(&mut b, 1), dim(&mut b, 2), dim(&mut b, 3));
    let four = b.i64s(&[], &[4]);
    let fields = b.op("Div", &[&ch, &four], vec![]);
    let fields = b.op("Cast", &[&fields], vec![Attr::Int("to", 7)]);
    let axes = b.i64s(&[1], &[0]);
    let mut parts = Vec::new();
    for v in [&batch, &fields, &four, &h, &w] {
        parts.push(b.op("Unsqueeze", &[v, &axes], vec![]));
    }
    let shape = b.op("Concat", &parts.iter().map(String::as_str).collect::<Vec<_>>(), vec![Attr::Int("axis", 0)]);
    let view = b.op("Reshape", &[&y, &shape], vec![]);
    let pooled = b.op("ReduceMax", &[&view], vec![Attr::Ints("axes", vec![2]), Attr::Int("keepdims", 0)]);
    let out = b.qdq(&pooled, 0.04, 128);
    check_group_pooling(&b.model(&out, 13), false);
}

/// A max over each rotation's fields (channels k and 4 + k: strided groups), with a
/// constant shape: the integer ReduceMax through its index, not read in place as a
/// field's contiguous rotations are.
#[test]
fn a_max_over_strided_channels_goes_through_its_index() {
    let mut b = Graph::new(&[2, 3, 3]);
    let c = conv_front(&mut b, false);
    let y = b.qdq(&c, 0.04, 128);
    let shape = b.i64s(&[5], &[1, 2, 4, 3, 3]);
    let view = b.op("Reshape", &[&y, &shape], vec![]);
    let pooled = b.op("ReduceMax", &[&view], vec![Attr::Ints("axes", vec![1]), Attr::Int("keepdims", 0)]);
    let out = b.qdq(&pooled, 0.04, 128);
    let model = b.model(&out, 13);
    let plan = compile_best(&model).unwrap();
    assert_eq!(kinds(&plan), ["quantize", "conv", "max", "dequantize"]);
    let Step::Int(Op::GatherMax { group, index, .. }) = &plan.steps[2] else { unreachable!() };
    assert_eq!(*group, 2, "2 fields per rotation");
    assert!(matches!(index, MaxGroups::Indexed(_)), "strided groups need the index");
    let got: Vec<f32> = Engine::new(&model).unwrap().run_one(&input()).unwrap()[0].iter().copied().collect();
    // The reference: y as group_pooled computes it, the max over f of channel 4 f + k.
    let fields = group_pooled_by(&input(), |y, k, p| (0..2).map(|f| y[(f * 4 + k) * 9 + p]).fold(f32::MIN, f32::max), 4);
    assert_within_one_step(&got, &fields, 0.04);
}

#[test]
fn dynamo_exporter_shape_arithmetic_folds() {
    // Opset 18: Shape with start/end (one of them on the conv before its fused Relu),
    // Range, ConstantOfShape, Expand, Size, integer arithmetic whose result differs in
    // float (7 / 2 truncates), Equal/Where guarding a -1, ReduceMax with axes as an input.
    let mut b = Graph::new(&[2, 3, 3]);
    let c = conv_front(&mut b, false);
    let r = b.op("Relu", &[&c], vec![]);
    let y = b.qdq(&r, 0.04, 128);
    let batch = b.op("Shape", &[&c], vec![Attr::Int("start", 0), Attr::Int("end", 1)]);
    let ch = b.op("Shape", &[&y], vec![Attr::Int("start", 1), Attr::Int("end", 2)]);
    let hw = b.op("Shape", &[&y], vec![Attr::Int("start", -2)]);
    // batch -> ConstantOfShape(int64 1) -> Expand -> Squeeze -> Range(0, b, 1) -> Size: b again.
    let rank1 = b.op("Shape", &[&batch], vec![]);
    let ones = b.fresh("ones");
    b.g.graph.node.push(pb::NodeProto {
        name: ones.clone(),
        op_type: "ConstantOfShape".into(),
        input: vec![rank1],
        output: vec![ones.clone()],
        attribute: vec![pb::AttributeProto {
            name: "value".into(),
            r#type: pb::attribute_proto::AttributeType::Tensor as i32,
            t: Some(tensor_i64("value", &[1], &[1])),
            ..Default::default()
        }],
        ..Default::default()
    });
    let expanded = b.op("Expand", &[&batch, &ones], vec![]);
    let axes0 = b.i64s(&[1], &[0]);
    let scalar = b.op("Squeeze", &[&expanded, &axes0], vec![]);
    let (zero, one) = (b.i64s(&[], &[0]), b.i64s(&[], &[1]));
    let range = b.op("Range", &[&zero, &scalar, &one], vec![]);
    let size = b.op("Size", &[&range], vec![]);
    let batch = b.op("Unsqueeze", &[&size, &axes0], vec![]);
    let four = b.i64s(&[1], &[4]);
    let fields = b.op("Div", &[&ch, &four], vec![]);
    // h + r - 1 with r = 7 - (7 / 2) 2, the remainder: 1 in integers (0 in float, which
    // would make h 2), w through Floor of a float.
    let (s0, s1, two, seven) = (b.i64s(&[1], &[0]), b.i64s(&[1], &[1]), b.i64s(&[1], &[2]), b.i64s(&[], &[7]));
    let h = b.op("Slice", &[&hw, &s0, &s1, &s0], vec![]);
    let q = b.op("Div", &[&seven, &two], vec![]);
    let q2 = b.op("Mul", &[&q, &two], vec![]);
    let r = b.op("Sub", &[&seven, &q2], vec![]);
    let h = b.op("Add", &[&h, &r], vec![]);
    let h = b.op("Sub", &[&h, &s1], vec![]);
    let end = b.i64s(&[1], &[i64::MAX]);
    let w = b.op("Slice", &[&hw, &s1, &end], vec![]);
    let wf = b.op("Cast", &[&w], vec![Attr::Int("to", 1)]);
    let half = b.g.init_f32("half", &[], &[0.5]);
    let wf = b.op("Add", &[&wf, &half], vec![]);
    let wf = b.op("Floor", &[&wf], vec![]);
    let w = b.op("Cast", &[&wf], vec![Attr::Int("to", 7)]);
    let shape = b.op("Concat", &[&batch, &fields, &four, &h, &w], vec![Attr::Int("axis", 0)]);
    let minus1 = b.i64s(&[1], &[-1]);
    let is_free = b.op("Equal", &[&shape, &minus1], vec![]);
    let ones5 = b.i64s(&[5], &[1; 5]);
    let shape = b.op("Where", &[&is_free, &ones5, &shape], vec![]);
    let view = b.op("Reshape", &[&y, &shape], vec![]);
    let axes2 = b.i64s(&[1], &[2]);
    let pooled = b.op("ReduceMax", &[&view, &axes2], vec![Attr::Int("keepdims", 0)]);
    let out = b.qdq(&pooled, 0.04, 128);
    check_group_pooling(&b.model(&out, 18), true);
}

#[test]
fn shapes_computed_from_the_data_are_refused_by_name() {
    // Reshape to [1, 8, k, -1] where k is the (integer) max of the data.
    let mut b = Graph::new(&[2, 3, 3]);
    let c = conv_front(&mut b, false);
    let y = b.qdq(&c, 0.04, 128);
    let k = b.op("ReduceMax", &[&y], vec![Attr::Int("keepdims", 0)]);
    let k = b.op("Cast", &[&k], vec![Attr::Int("to", 7)]);
    let axes = b.i64s(&[1], &[0]);
    let k = b.op("Unsqueeze", &[&k, &axes], vec![]);
    let (front, back) = (b.i64s(&[2], &[1, 8]), b.i64s(&[1], &[-1]));
    let shape = b.op("Concat", &[&front, &k, &back], vec![Attr::Int("axis", 0)]);
    let view = b.op("Reshape", &[&y, &shape], vec![]);
    let err = compile_best(&b.model(&view, 13)).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported(m) if m.contains(&view) && m.contains("Reshape") && m.contains("depends on the input data")),
        "{err}"
    );
    // The Shape of a name no node writes.
    let mut b = Graph::new(&[2, 3, 3]);
    let c = conv_front(&mut b, false);
    let y = b.qdq(&c, 0.04, 128);
    let s = b.op("Shape", &["nowhere"], vec![]);
    let view = b.op("Reshape", &[&y, &s], vec![]);
    let err = compile_best(&b.model(&view, 13)).unwrap_err();
    assert!(matches!(&err, Error::Unsupported(m) if m.contains(&s) && m.contains("\"nowhere\"")), "{err}");
}

#[test]
fn cast_like_keeps_constants_constant() {
    // The dynamo exporter's ReLU6: Clip(x, CastLike(0, x), CastLike(6, x)) still fuses
    // into the conv, though x is read three times.
    let mut b = Graph::new(&[2, 3, 3]);
    let c = conv_front(&mut b, false);
    let (lo, hi) = (b.g.init_f32("lo", &[], &[0.0]), b.g.init_f32("hi", &[], &[0.1]));
    let lo = b.op("CastLike", &[&lo, &c], vec![]);
    let hi = b.op("CastLike", &[&hi, &c], vec![]);
    let clipped = b.op("Clip", &[&c, &lo, &hi], vec![]);
    // A float shape cast like an int64 tensor truncates: [1, 8, 9.9] is [1, 8, 9].
    let (shape, like) = (b.g.init_f32("shape", &[3], &[1.0, 8.0, 9.9]), b.i64s(&[], &[0]));
    let shape = b.op("CastLike", &[&shape, &like], vec![]);
    let y = b.qdq(&clipped, 0.04, 128);
    let flat = b.op("Reshape", &[&y, &shape], vec![]);
    let out = b.qdq(&flat, 0.04, 128);
    let m = b.model(&out, 18);
    let plan = compile_best(&m).unwrap();
    assert_eq!(kinds(&plan), ["quantize", "conv", "other integer op", "dequantize"]);
    let got: Vec<f32> = Engine::new(&m).unwrap().run_one(&input()).unwrap()[0].iter().copied().collect();
    let xq: Vec<f64> = input().iter().map(|&v| fake_quant(v as f64, 0.05, 128) as f64).collect();
    let want: Vec<f32> = (0..72)
        .map(|i| {
            let (o, p) = (i / 9, i % 9);
            let v: f64 = (0..2).map(|k| WEIGHTS[o * 2 + k] as f64 * 0.02 * xq[k * 9 + p]).sum();
            fake_quant(v.clamp(0.0, 0.1), 0.04, 128)
        })
        .collect();
    assert_within_one_step(&got, &want, 0.04);
}

#[test]
fn nearest_upsampling_of_a_tensor_is_byte_copies() {
    // torch's nn.Upsample(scale_factor=2) at opset 13: Resize(x, roi, scales), asymmetric, floor.
    let mut b = Graph::new(&[2, 3, 3]);
    let x = b.qdq("x", 0.05, 128);
    let (roi, scales) = (b.g.init_f32("roi", &[0], &[]), b.g.init_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0]));
    let string = |name: &str, v: &str| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    };
    let up = b.fresh("up");
    let node = pb::NodeProto {
        name: up.clone(),
        op_type: "Resize".into(),
        input: vec![x, roi, scales],
        output: vec![up.clone()],
        attribute: vec![string("mode", "nearest"), string("coordinate_transformation_mode", "asymmetric"), string("nearest_mode", "floor")],
        ..Default::default()
    };
    b.g.graph.node.push(node);
    let out = b.qdq(&up, 0.05, 128);
    let m = b.model(&out, 13);
    assert_eq!(kinds(&compile_best(&m).unwrap()), ["quantize", "other integer op", "dequantize"]);
    let got: Vec<f32> = Engine::new(&m).unwrap().run_one(&input()).unwrap()[0].iter().copied().collect();
    let q: Vec<f32> = input().iter().map(|&v| fake_quant(v as f64, 0.05, 128)).collect();
    let want: Vec<f32> = (0..2 * 36).map(|i| q[(i / 36) * 9 + (i % 36 / 6 / 2) * 3 + (i % 6) / 2]).collect();
    assert_eq!(got, want);
}

#[test]
fn float_conv_transpose_runs_between_integer_ops() {
    // A U-Net's up-convolution left in float (weights not int8) after an integer conv:
    // 1x1 taps at stride 2 with output padding, 72 MACs against the conv's 144 (a
    // float ConvTranspose costing more than the integer part is refused).
    let mut b = Graph::new(&[2, 3, 3]);
    let c = conv_front(&mut b, false);
    let y = b.qdq(&c, 0.04, 128);
    let wt = [0.3, -0.2, 0.1, 0.5, -0.4, 0.25, 0.0, -0.1];
    let w = b.g.init_f32("wt", &[8, 1, 1, 1], &wt);
    let bias = b.g.init_f32("bias", &[1], &[0.5]);
    let up = b.op("ConvTranspose", &[&y, &w, &bias], vec![Attr::Ints("strides", vec![2, 2]), Attr::Ints("output_padding", vec![1, 1])]);
    let m = b.model(&up, 13);
    let plan = compile_best(&m).unwrap();
    assert_eq!(kinds(&plan), ["quantize", "conv", "dequantize", "ConvTranspose"]);
    let got: Vec<f32> = Engine::new(&m).unwrap().run_one(&input()).unwrap()[0].iter().copied().collect();
    // Output (2i, 2j) is pixel (i, j) weighted over the channels; the rest only the bias.
    let xq: Vec<f64> = input().iter().map(|&v| fake_quant(v as f64, 0.05, 128) as f64).collect();
    let yq: Vec<f64> = (0..72)
        .map(|i| {
            let (o, p) = (i / 9, i % 9);
            fake_quant((0..2).map(|k| WEIGHTS[o * 2 + k] as f64 * 0.02 * xq[k * 9 + p]).sum(), 0.04, 128) as f64
        })
        .collect();
    let want: Vec<f32> = (0..36)
        .map(|o| {
            let (r, c) = (o / 6, o % 6);
            let v: f64 =
                if r % 2 == 0 && c % 2 == 0 { (0..8).map(|ic| yq[ic * 9 + (r / 2) * 3 + c / 2] * wt[ic] as f64).sum() } else { 0.0 };
            (v + 0.5) as f32
        })
        .collect();
    assert_within_one_step(&got, &want, 1e-5);
    // With 2x2 taps it would cost 288 MACs in float: refused, the runtime runs it elsewhere.
    let mut b = Graph::new(&[2, 3, 3]);
    let c = conv_front(&mut b, false);
    let y = b.qdq(&c, 0.04, 128);
    let w = b.g.init_f32("wt", &[8, 1, 2, 2], &[0.1; 32]);
    let up = b.op("ConvTranspose", &[&y, &w], vec![Attr::Ints("strides", vec![2, 2])]);
    let err = compile_best(&b.model(&up, 13)).unwrap_err();
    assert!(matches!(&err, Error::Unsupported(m) if m.contains("would run in float")), "{err}");
}
