//! The float ops of edgemed's INT8 engine (`runtime/src/int8/float.rs`: what runs
//! between integer ops, e.g. a U-Net's instance normalisation and PReLU, a GLOW
//! decoder's slices, transposes and exp) against tract on one-node graphs with
//! random inputs: same shapes, values within 1e-5 of the output's largest magnitude.
//! The whole-model tests (int8_models.rs) check them against ONNX Runtime as well.

use edgemed_engine::float;
use edgemed_onnx::builder::{Attr, GraphBuilder, D};
use edgemed_runtime::backend::{self, BackendKind, BackendOptions};
use edgemed_runtime::model::OnnxModel;
use edgemed_runtime::ndarray::{ArrayD, IxDyn};
use prost::Message;

use crate::common;
use common::noise;

const SYMS: [&str; 6] = ["o0", "o1", "o2", "o3", "o4", "o5"];

struct Case {
    name: &'static str,
    op: &'static str,
    x: ArrayD<f32>,
    /// Initializers after the input: float or int64 (shapes, axes, slice bounds).
    consts: Vec<(Vec<usize>, Const)>,
    attrs: Vec<Attr>,
    out_rank: usize,
}

enum Const {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

fn case(name: &'static str, op: &'static str, shape: &[usize], out_rank: usize) -> Case {
    Case { name, op, x: noise(shape, name.len() as u64 + 7), consts: vec![], attrs: vec![], out_rank }
}

fn f32s(shape: &[usize], seed: u64) -> (Vec<usize>, Const) {
    (shape.to_vec(), Const::F32(noise(shape, seed).into_raw_vec_and_offset().0))
}

fn i64s(v: &[i64]) -> (Vec<usize>, Const) {
    (vec![v.len()], Const::I64(v.to_vec()))
}

fn cases() -> Vec<Case> {
    let positive = |c: Case| Case { x: c.x.mapv(|v| v.abs() + 0.1), ..c };
    vec![
        Case {
            consts: vec![f32s(&[4], 1), f32s(&[4], 2)],
            attrs: vec![Attr::Float("epsilon", 1e-5)],
            ..case("instance norm 3-D", "InstanceNormalization", &[1, 4, 5, 6, 7], 5)
        },
        Case { consts: vec![f32s(&[3], 3), f32s(&[3], 4)], ..case("instance norm 2-D", "InstanceNormalization", &[1, 3, 9, 8], 4) },
        Case { consts: vec![f32s(&[4, 1, 1], 5)], ..case("prelu per channel", "PRelu", &[1, 4, 5, 6], 4) },
        Case { consts: vec![f32s(&[1], 6)], ..case("prelu shared", "PRelu", &[1, 4, 5, 6], 4) },
        Case { attrs: vec![Attr::Float("alpha", 0.2)], ..case("leaky relu", "LeakyRelu", &[1, 4, 5, 6], 4) },
        Case { consts: vec![i64s(&[1, -4]), i64s(&[100, 5]), i64s(&[1, 2]), i64s(&[2, 1])], ..case("slice", "Slice", &[1, 8, 6, 5], 4) },
        Case { consts: vec![i64s(&[0]), i64s(&[2048]), i64s(&[1])], ..case("slice of a latent", "Slice", &[1, 4096], 2) },
        Case { attrs: vec![Attr::Ints("perm", vec![0, 2, 3, 1])], ..case("transpose", "Transpose", &[1, 3, 4, 5], 4) },
        Case {
            attrs: vec![Attr::Ints("perm", vec![0, 1, 3, 5, 7, 2, 4, 6])],
            ..case("transpose (3-D squeeze)", "Transpose", &[1, 2, 2, 3, 2, 3, 2, 3], 8)
        },
        Case { consts: vec![f32s(&[1, 3, 6, 5], 7)], attrs: vec![Attr::Int("axis", 1)], ..case("concat", "Concat", &[1, 2, 6, 5], 4) },
        Case { consts: vec![i64s(&[1, 8, 2, 3, 4])], ..case("reshape", "Reshape", &[1, 2, 4, 4, 6], 5) },
        Case { consts: vec![i64s(&[0, 2])], ..case("unsqueeze", "Unsqueeze", &[3, 4], 4) },
        Case { consts: vec![i64s(&[2])], ..case("squeeze", "Squeeze", &[2, 3, 1, 4], 3) },
        case("exp", "Exp", &[1, 4, 5], 3),
        positive(case("log", "Log", &[1, 4, 5], 3)),
        positive(case("sqrt", "Sqrt", &[1, 4, 5], 3)),
        case("neg", "Neg", &[1, 4, 5], 3),
        case("abs", "Abs", &[1, 4, 5], 3),
        case("tanh", "Tanh", &[1, 4, 5], 3),
        case("sigmoid", "Sigmoid", &[1, 4, 5], 3),
        Case { consts: vec![f32s(&[1, 4, 1], 8)], ..case("div broadcast", "Div", &[1, 4, 5], 3) },
        Case { consts: vec![f32s(&[5], 9)], ..case("sub broadcast", "Sub", &[1, 4, 5], 3) },
        Case {
            consts: vec![f32s(&[6, 2, 3, 3], 10), f32s(&[6], 11)],
            attrs: vec![
                Attr::Int("group", 2),
                Attr::Ints("strides", vec![2, 1]),
                Attr::Ints("pads", vec![1, 0, 2, 1]),
                Attr::Ints("dilations", vec![1, 2]),
            ],
            ..case("conv 2-D grouped", "Conv", &[1, 4, 9, 8], 4)
        },
        Case {
            consts: vec![f32s(&[3, 2, 3, 2, 3], 12)],
            attrs: vec![Attr::Ints("strides", vec![1, 2, 1]), Attr::Ints("pads", vec![1, 0, 1, 1, 1, 0])],
            ..case("conv 3-D", "Conv", &[1, 2, 5, 6, 7], 5)
        },
        Case { consts: vec![f32s(&[2, 3, 3], 13), f32s(&[2], 14)], ..case("conv 1-D", "Conv", &[1, 3, 10], 3) },
    ]
}

#[test]
fn float_ops_agree_with_tract() {
    for Case { name, op, x, consts, attrs, out_rank } in cases() {
        let mut g = GraphBuilder::new(name);
        let xdims: Vec<D> = x.shape().iter().map(|&d| D::N(d as i64)).collect();
        g.input_f32("x", &xdims);
        let mut names = vec!["x".to_string()];
        let mut args = vec![x.clone()];
        for (i, (shape, v)) in consts.iter().enumerate() {
            let name = format!("c{i}");
            match v {
                Const::F32(d) => {
                    g.init_f32(&name, shape, d);
                    args.push(ArrayD::from_shape_vec(IxDyn(shape), d.clone()).unwrap());
                }
                Const::I64(d) => {
                    g.init_i64(&name, shape, d);
                    args.push(ArrayD::from_shape_vec(IxDyn(shape), d.iter().map(|&v| v as f32).collect()).unwrap());
                }
            }
            names.push(name);
        }
        let inputs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        g.node(op, "y", &inputs, attrs);
        let odims: Vec<D> = SYMS.iter().chain(["o6", "o7"].iter()).take(out_rank).map(|s| D::Sym(s)).collect();
        g.output_f32("y", &odims);
        let proto = g.into_model("float-op-test", &[]);
        let graph = proto.graph.as_ref().unwrap();

        let float_op = float::float_op(&graph.node[0], 13, graph).unwrap_or_else(|e| panic!("{}: {e}", name));
        let refs: Vec<&ArrayD<f32>> = args.iter().collect();
        let ours = float::eval(&float_op, &refs).unwrap_or_else(|e| panic!("{}: {e}", name));

        let model = OnnxModel::from_bytes(format!("{}.onnx", name), &proto.encode_to_vec()).unwrap();
        let opts = BackendOptions { kind: BackendKind::Tract, ..Default::default() };
        let tract = backend::create(&model, x.shape(), &opts).unwrap_or_else(|e| panic!("{}: {e}", name));
        let theirs = tract.run(x.clone()).unwrap_or_else(|e| panic!("{}: {e}", name)).remove(0);

        assert_eq!(ours.shape(), theirs.shape(), "{}", name);
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let d = ours.iter().zip(theirs.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("{:<24} {:?} -> {:?}: max |edgemed - tract| = {d:.2e} (outputs up to {scale:.2})", name, x.shape(), ours.shape());
        assert!(d <= 1e-5 * scale, "{}: {d}", name);
    }
}
