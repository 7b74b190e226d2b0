//! The INT8 engine's integer forms of the QDQ patterns that are not convolutions:
//! data movement as byte copies (Concat with shared or own parameters, a 2-D and a 3-D
//! pixel shuffle whose rank-6 and rank-8 values never become tensors, Slice,
//! Squeeze/Unsqueeze/Transpose, Flatten), GlobalAveragePool as an exact integer sum,
//! Gemm and MatMul on the pointwise kernels, ReduceMax over a field's rotations, and a
//! multiplication by a constant mask. Each small QDQ graph must compile without float
//! ops (the profile label of the integer op is checked) and agree with tract's float
//! simulation of the same graph: bit for bit where the integers only move, within one
//! output step where a sum or a requantisation rounds.

use edgemed_engine::Engine;
use edgemed_onnx::builder::{Attr, GraphBuilder, D};
use edgemed_onnx::pb;
use edgemed_runtime::backend::{self, BackendKind, BackendOptions};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::ArrayD;
use prost::Message;

use crate::common;
use common::noise;

/// A QDQ graph under construction.
struct Qdq {
    g: GraphBuilder,
    n: usize,
}

impl Qdq {
    fn new(name: &str, input: &[usize]) -> Self {
        let mut g = GraphBuilder::new(name);
        g.input_f32("x", &input.iter().map(|&d| D::N(d as i64)).collect::<Vec<_>>());
        Qdq { g, n: 0 }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{what}{}", self.n)
    }

    fn raw(&mut self, name: &str, shape: &[usize], ty: pb::tensor_proto::DataType, raw_data: Vec<u8>) -> String {
        self.g.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: ty as i32,
            raw_data,
            ..Default::default()
        });
        name.to_string()
    }

    /// QuantizeLinear then DequantizeLinear of `x` (u8, per tensor).
    fn qdq(&mut self, x: &str, scale: f32, zp: u8) -> String {
        let s = self.fresh("scale");
        self.g.init_f32(&s, &[], &[scale]);
        let z = self.fresh("zp");
        self.raw(&z, &[], pb::tensor_proto::DataType::Uint8, vec![zp]);
        let q = self.fresh("q");
        self.g.node("QuantizeLinear", &q, &[x, &s, &z], vec![]);
        let dq = self.fresh("dq");
        self.g.node("DequantizeLinear", &dq, &[&q, &s, &z], vec![]);
        dq
    }

    /// DequantizeLinear of int8 weights, per tensor or per channel along `axis`.
    fn weight(&mut self, shape: &[usize], seed: u64, scales: &[f32], axis: i64) -> String {
        let n: usize = shape.iter().product();
        let w: Vec<u8> = noise(&[n], seed).iter().map(|v| ((v * 63.0).round() as i8) as u8).collect();
        let q = self.fresh("w");
        self.raw(&q, shape, pb::tensor_proto::DataType::Int8, w);
        let s = self.fresh("wscale");
        let shape = if scales.len() == 1 { vec![] } else { vec![scales.len()] };
        self.g.init_f32(&s, &shape, scales);
        let dq = self.fresh("wdq");
        self.g.node("DequantizeLinear", &dq, &[&q, &s], if scales.len() > 1 { vec![Attr::Int("axis", axis)] } else { vec![] });
        dq
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        let y = self.fresh(&op.to_lowercase());
        self.g.node(op, &y, inputs, attrs)
    }

    fn i64s(&mut self, v: &[i64]) -> String {
        let name = self.fresh("c");
        self.g.init_i64(&name, &[v.len()], v)
    }

    fn f32s(&mut self, shape: &[usize], v: &[f32]) -> String {
        let name = self.fresh("f");
        self.g.init_f32(&name, shape, v)
    }

    fn finish(mut self, y: &str, rank: usize) -> OnnxModel {
        self.g.node("Identity", "y", &[y], vec![]);
        let syms = ["o0", "o1", "o2", "o3", "o4", "o5"];
        self.g.output_f32("y", &syms[..rank].iter().map(|s| D::Sym(s)).collect::<Vec<_>>());
        let name = self.g.graph.name.clone();
        let proto = self.g.into_model("int8-integer-ops-test", &[]);
        OnnxModel::from_bytes(format!("{name}.onnx"), &proto.encode_to_vec()).unwrap()
    }
}

struct Case {
    model: OnnxModel,
    input: Vec<usize>,
    /// A step of the plan whose label starts with this.
    label: &'static str,
    /// The output's quantisation step, and how many of them the engine may be from tract.
    step: f32,
    steps_allowed: f32,
}

const S: f32 = 0.02;
const Z: u8 = 128;

fn cases() -> Vec<(&'static str, Case)> {
    let mut v = Vec::new();
    let case = |model, input: &[usize], label, step, steps_allowed| Case { model, input: input.to_vec(), label, step, steps_allowed };

    let mut q = Qdq::new("concat shared", &[1, 3, 4, 5]);
    let (a, b) = (q.qdq("x", S, Z), q.qdq("x", S, Z));
    let c = q.op("Concat", &[&a, &b], vec![Attr::Int("axis", 1)]);
    let y = q.qdq(&c, S, Z);
    v.push(("concat, shared parameters", case(q.finish(&y, 4), &[1, 3, 4, 5], "move (Concat) 6", S, 0.0)));

    let mut q = Qdq::new("concat own", &[1, 3, 4, 5]);
    let (a, b) = (q.qdq("x", S, Z), q.qdq("x", 0.035, 100));
    let c = q.op("Concat", &[&a, &b], vec![Attr::Int("axis", 1)]);
    let y = q.qdq(&c, 0.03, 120);
    v.push(("concat, own parameters", case(q.finish(&y, 4), &[1, 3, 4, 5], "move (Concat) 6", 0.03, 1.0)));

    // DepthToSpace as exporters write it, every op wrapped in Q/DQ as ONNX Runtime's
    // quantiser does; the rank-6 values between them are no tensor of the plan.
    let mut q = Qdq::new("pixel shuffle 2-D", &[1, 8, 5, 6]);
    let x = q.qdq("x", S, Z);
    let shape = q.i64s(&[1, 2, 2, 2, 5, 6]);
    let r = q.op("Reshape", &[&x, &shape], vec![]);
    let r = q.qdq(&r, S, Z);
    let t = q.op("Transpose", &[&r], vec![Attr::Ints("perm", vec![0, 1, 4, 2, 5, 3])]);
    let t = q.qdq(&t, S, Z);
    let shape = q.i64s(&[1, 2, 10, 12]);
    let r = q.op("Reshape", &[&t, &shape], vec![]);
    let y = q.qdq(&r, S, Z);
    v.push(("pixel shuffle 2-D", case(q.finish(&y, 4), &[1, 8, 5, 6], "move (Reshape+Transpose+Reshape) 2 at 10x12", S, 0.0)));

    let mut q = Qdq::new("pixel shuffle 3-D", &[1, 8, 3, 4, 5]);
    let x = q.qdq("x", S, Z);
    let shape = q.i64s(&[1, 1, 2, 2, 2, 3, 4, 5]);
    let r = q.op("Reshape", &[&x, &shape], vec![]);
    let r = q.qdq(&r, S, Z);
    let t = q.op("Transpose", &[&r], vec![Attr::Ints("perm", vec![0, 1, 5, 2, 6, 3, 7, 4])]);
    let t = q.qdq(&t, S, Z);
    let shape = q.i64s(&[1, 1, 6, 8, 10]);
    let r = q.op("Reshape", &[&t, &shape], vec![]);
    let y = q.qdq(&r, S, Z);
    v.push(("pixel shuffle 3-D", case(q.finish(&y, 5), &[1, 8, 3, 4, 5], "move (Reshape+Transpose+Reshape) 1 at 6x8x10", S, 0.0)));

    let mut q = Qdq::new("slice", &[1, 8, 6, 5]);
    let x = q.qdq("x", S, Z);
    let (starts, ends, axes, steps) = (q.i64s(&[1, -4]), q.i64s(&[100, 5]), q.i64s(&[1, 2]), q.i64s(&[2, 1]));
    let s = q.op("Slice", &[&x, &starts, &ends, &axes, &steps], vec![]);
    let y = q.qdq(&s, S, Z);
    v.push(("slice with steps", case(q.finish(&y, 4), &[1, 8, 6, 5], "move (Slice) 4 at 3x5", S, 0.0)));

    let mut q = Qdq::new("squeeze unsqueeze transpose", &[1, 4, 1, 6]);
    let x = q.qdq("x", S, Z);
    let axes = q.i64s(&[2]);
    let s = q.op("Squeeze", &[&x, &axes], vec![]);
    let s = q.qdq(&s, S, Z);
    let axes = q.i64s(&[3]);
    let u = q.op("Unsqueeze", &[&s, &axes], vec![]);
    let u = q.qdq(&u, S, Z);
    let t = q.op("Transpose", &[&u], vec![Attr::Ints("perm", vec![0, 2, 1, 3])]);
    let y = q.qdq(&t, S, Z);
    v.push(("squeeze, unsqueeze, transpose", case(q.finish(&y, 4), &[1, 4, 1, 6], "move (Squeeze+Unsqueeze+Transpose) 6 at 4x1", S, 0.0)));

    // A classifier head: pooled, flattened, a Gemm with per-channel int8 weights.
    let mut q = Qdq::new("head", &[1, 16, 5, 5]);
    let x = q.qdq("x", S, Z);
    let p = q.op("GlobalAveragePool", &[&x], vec![]);
    let p = q.qdq(&p, 0.004, 130);
    let f = q.op("Flatten", &[&p], vec![]);
    let f = q.qdq(&f, 0.004, 130);
    let scales: Vec<f32> = (0..10).map(|i| 0.004 + 0.001 * i as f32).collect();
    let w = q.weight(&[10, 16], 21, &scales, 0);
    let b = q.f32s(&[10], &noise(&[10], 22).iter().map(|v| v * 0.1).collect::<Vec<_>>());
    let g = q.op("Gemm", &[&f, &w, &b], vec![Attr::Int("transB", 1)]);
    let y = q.qdq(&g, 0.01, 128);
    v.push(("pool, flatten, Gemm (per channel)", case(q.finish(&y, 2), &[1, 16, 5, 5], "conv 1x1/1 pointwise 16 -> 10", 0.01, 1.0)));

    let mut q = Qdq::new("global average pool", &[1, 6, 7, 9]);
    let x = q.qdq("x", S, Z);
    let p = q.op("GlobalAveragePool", &[&x], vec![]);
    let y = q.qdq(&p, 0.003, 127);
    v.push(("global average pool", case(q.finish(&y, 4), &[1, 6, 7, 9], "global average pool 6 at 7x9", 0.003, 1.0)));

    let mut q = Qdq::new("matmul", &[1, 12]);
    let x = q.qdq("x", S, Z);
    let w = q.weight(&[12, 7], 23, &[0.01], 1);
    let m = q.op("MatMul", &[&x, &w], vec![]);
    let y = q.qdq(&m, 0.02, 128);
    v.push(("MatMul (per tensor)", case(q.finish(&y, 2), &[1, 12], "conv 1x1/1 pointwise 12 -> 7", 0.02, 1.0)));

    let mut q = Qdq::new("gemm per column", &[1, 12]);
    let x = q.qdq("x", S, Z);
    let scales: Vec<f32> = (0..5).map(|i| 0.01 + 0.002 * i as f32).collect();
    let w = q.weight(&[12, 5], 24, &scales, 1);
    let m = q.op("Gemm", &[&x, &w], vec![]);
    let y = q.qdq(&m, 0.02, 128);
    v.push(("Gemm [K, N] (per column)", case(q.finish(&y, 2), &[1, 12], "conv 1x1/1 pointwise 12 -> 5", 0.02, 1.0)));

    // Group pooling of an equivariant network: fields of 4 rotations, the max of each.
    for keepdims in [0, 1] {
        let mut q = Qdq::new("group pooling", &[1, 12, 5, 5]);
        let x = q.qdq("x", S, Z);
        let shape = q.i64s(&[1, 3, 4, 5, 5]);
        let r = q.op("Reshape", &[&x, &shape], vec![]);
        let r = q.qdq(&r, S, Z);
        let m = q.op("ReduceMax", &[&r], vec![Attr::Ints("axes", vec![2]), Attr::Int("keepdims", keepdims)]);
        let y = q.qdq(&m, 0.015, 110);
        let rank = if keepdims == 1 { 5 } else { 4 };
        let name = if keepdims == 1 { "ReduceMax (keepdims)" } else { "ReduceMax over rotations" };
        v.push((name, case(q.finish(&y, rank), &[1, 12, 5, 5], "max of 4 3 at", 0.015, 1.0)));
    }

    // The circular mask of an equivariant network, and a per-channel factor.
    let mut q = Qdq::new("mask", &[1, 6, 5, 5]);
    let x = q.qdq("x", S, Z);
    let mask: Vec<f32> = (0..25i32).map(|i| if (i / 5 - 2).pow(2) + (i % 5 - 2).pow(2) <= 4 { 1.0 } else { 0.0 }).collect();
    let mask = q.f32s(&[1, 1, 5, 5], &mask);
    let m = q.op("Mul", &[&x, &mask], vec![]);
    let y = q.qdq(&m, 0.025, 120);
    v.push(("Mul by a circular mask", case(q.finish(&y, 4), &[1, 6, 5, 5], "multiply (2 factors) 6 at 5x5", 0.025, 1.0)));

    let mut q = Qdq::new("per-channel factor", &[1, 6, 5, 5]);
    let x = q.qdq("x", S, Z);
    let f = q.f32s(&[1, 6, 1, 1], &noise(&[6], 25).iter().copied().collect::<Vec<_>>());
    let m = q.op("Mul", &[&f, &x], vec![]);
    let y = q.qdq(&m, 0.03, 128);
    v.push(("Mul by a per-channel factor", case(q.finish(&y, 4), &[1, 6, 5, 5], "multiply (6 factors) 6 at 5x5", 0.03, 1.0)));

    // A ResNet's residual: Add of two tensors with their own parameters, then ReLU.
    let mut q = Qdq::new("residual relu", &[1, 3, 4, 5, 6]);
    let (a, b) = (q.qdq("x", S, Z), q.qdq("x", 0.035, 100));
    let s = q.op("Add", &[&a, &b], vec![]);
    let r = q.op("Relu", &[&s], vec![]);
    let y = q.qdq(&r, 0.03, 7);
    v.push(("Add then Relu (3-D)", case(q.finish(&y, 5), &[1, 3, 4, 5, 6], "add (clamped) 3 at 4x5x6", 0.03, 1.0)));

    // Clip then Min after the add: one clamp of the output bytes.
    let mut q = Qdq::new("residual clip min", &[1, 4, 5, 5]);
    let (a, b) = (q.qdq("x", S, Z), q.qdq("x", 0.01, 140));
    let s = q.op("Add", &[&a, &b], vec![]);
    let (lo, hi, m) = (q.f32s(&[], &[-0.5]), q.f32s(&[], &[0.9]), q.f32s(&[], &[0.6]));
    let c = q.op("Clip", &[&s, &lo, &hi], vec![]);
    let c = q.op("Min", &[&c, &m], vec![]);
    let y = q.qdq(&c, 0.02, 100);
    v.push(("Add then Clip, Min", case(q.finish(&y, 4), &[1, 4, 5, 5], "add (clamped) 4 at 5x5", 0.02, 1.0)));

    // A MONAI U-Net's activation: PReLU with a slope per channel, on a volume.
    let mut q = Qdq::new("prelu", &[1, 3, 4, 5, 6]);
    let x = q.qdq("x", S, Z);
    let s = q.f32s(&[3, 1, 1, 1], &[0.25, -0.5, 1.5]);
    let p = q.op("PRelu", &[&x, &s], vec![]);
    let y = q.qdq(&p, 0.015, 90);
    v.push(("PRelu per channel (3-D)", case(q.finish(&y, 5), &[1, 3, 4, 5, 6], "table (activation) 3 at 4x5x6", 0.015, 1.0)));
    v
}

#[test]
fn integer_ops_agree_with_tracts_float_simulation() {
    for (name, c) in cases() {
        let engine = Engine::new(&c.model).unwrap_or_else(|e| panic!("{name}: {e}"));
        let labels: Vec<String> = engine.plan.steps.iter().map(|s| engine.plan.label(s)).collect();
        assert_eq!(engine.plan.counts().1, 0, "{name}: float ops in {labels:#?}");
        assert!(labels.iter().any(|l| l.starts_with(c.label)), "{name}: no step '{}' in {labels:#?}", c.label);

        let x = noise(&c.input, name.len() as u64);
        let ours = engine.run_one(x.as_slice().unwrap()).unwrap_or_else(|e| panic!("{name}: {e}")).remove(0);
        let opts = BackendOptions { kind: BackendKind::Tract, ..Default::default() };
        let tract = backend::create(&c.model, &c.input, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs: ArrayD<f32> = tract.run(x).unwrap_or_else(|e| panic!("{name}: {e}")).remove(0);
        assert_eq!(ours.shape(), theirs.shape(), "{name}");
        let d = ours.iter().zip(theirs.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / c.step;
        let differ = ours.iter().zip(theirs.iter()).filter(|(a, b)| a != b).count();
        println!("{name:<34} {:?} -> {:?}: {d:.2} steps from tract, {differ} of {} differ", c.input, ours.shape(), ours.len());
        assert!(d <= c.steps_allowed + 1e-3, "{name}: {d} steps from tract ({differ} of {} differ)", ours.len());
    }
}

/// A Concat along the batch axis makes no plan tensor ([2, C, H, W]): it stays a float
/// op (after an integer one), and the plan still gives tract's values.
#[test]
fn data_movement_that_makes_no_tensor_runs_in_float() {
    let mut q = Qdq::new("concat batch", &[1, 3, 4, 4]);
    let x = q.qdq("x", S, Z);
    let f = q.f32s(&[1, 3, 1, 1], &[0.5, -1.0, 2.0]);
    let m = q.op("Mul", &[&x, &f], vec![]);
    let (a, b) = (q.qdq(&m, S, Z), q.qdq("x", 0.03, 100));
    let c = q.op("Concat", &[&a, &b], vec![Attr::Int("axis", 0)]);
    let y = q.qdq(&c, S, Z);
    let model = q.finish(&y, 4);
    let engine = Engine::new(&model).unwrap();
    let labels: Vec<String> = engine.plan.steps.iter().map(|s| engine.plan.label(s)).collect();
    assert_eq!(engine.plan.counts().0, 1, "an integer multiply: {labels:#?}");
    assert!(labels.iter().any(|l| l.starts_with("float Concat")), "{labels:#?}");
    let x = noise(&[1, 3, 4, 4], 9);
    let ours = engine.run_one(x.as_slice().unwrap()).unwrap().remove(0);
    let tract = backend::create(&model, &[1, 3, 4, 4], &BackendOptions { kind: BackendKind::Tract, ..Default::default() }).unwrap();
    let theirs = tract.run(x).unwrap().remove(0);
    assert_eq!(ours.shape(), &[2, 3, 4, 4]);
    let d = ours.iter().zip(theirs.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d <= S * 1.001, "{} steps from tract", d / S);
}
