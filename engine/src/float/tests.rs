//! The interpreter on small arrays whose results are worked out by hand (the
//! one-node graphs in tests/tests/int8_float_ops.rs check it against tract).

use super::*;
use crate::ndarray::{ArrayD, IxDyn};

fn a(shape: &[usize], v: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
}

fn run(op: FloatOp, args: &[&ArrayD<f32>]) -> ArrayD<f32> {
    eval(&op, args).unwrap()
}

fn flat(x: &ArrayD<f32>) -> Vec<f32> {
    x.iter().copied().collect()
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let x = a(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let row = a(&[3], &[10., 20., 30.]);
    let y = run(FloatOp::Binary(Binary::Add), &[&x, &row]);
    assert_eq!((y.shape(), flat(&y)), (&[2, 3][..], vec![11., 22., 33., 14., 25., 36.]));
    let col = a(&[2, 1], &[2., -1.]);
    let y = run(FloatOp::Binary(Binary::Mul), &[&x, &col]);
    assert_eq!(flat(&y), vec![2., 4., 6., -4., -5., -6.]);
    // [1, 2, 2, 2] by [1, 1, 2, 2]: the per-pixel factor repeats over channels.
    let x = a(&[1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let m = a(&[1, 1, 2, 2], &[1., 0., 0., 1.]);
    assert_eq!(flat(&run(FloatOp::Binary(Binary::Mul), &[&x, &m])), vec![1., 0., 0., 4., 5., 0., 0., 8.]);
    let y = run(FloatOp::Binary(Binary::Max), &[&x, &a(&[], &[4.5])]);
    assert_eq!(flat(&y), vec![4.5, 4.5, 4.5, 4.5, 5., 6., 7., 8.]);
    let err = eval(&FloatOp::Binary(Binary::Sub), &[&a(&[2], &[1., 2.]), &a(&[3], &[1., 2., 3.])]).unwrap_err();
    assert!(err.is_unsupported() && err.to_string().contains("do not broadcast"), "{err}");
}

#[test]
fn activations() {
    let x = a(&[4], &[-2., -0.5, 0., 3.]);
    assert_eq!(flat(&run(FloatOp::Relu, &[&x])), vec![0., 0., 0., 3.]);
    assert_eq!(flat(&run(FloatOp::LeakyRelu(0.5), &[&x])), vec![-1., -0.25, 0., 3.]);
    assert_eq!(flat(&run(FloatOp::Clip, &[&x, &a(&[], &[-1.]), &a(&[], &[1.])])), vec![-1., -0.5, 0., 1.]);
    assert_eq!(flat(&run(FloatOp::Clip, &[&x])), flat(&x));
    assert_eq!(flat(&run(FloatOp::Sigmoid, &[&a(&[1], &[0.])])), vec![0.5]);
    // PRelu: a slope per channel.
    let x = a(&[1, 2, 1, 2], &[-1., 1., -2., 2.]);
    let slope = a(&[2, 1, 1], &[0.1, 3.]);
    assert_eq!(flat(&run(FloatOp::PRelu, &[&x, &slope])), vec![-0.1, 1., -6., 2.]);
}

#[test]
fn quantisation_rounds_half_to_even_and_saturates() {
    let x = a(&[6], &[0.25, 0.75, 1.25, -0.25, 100., -100.]);
    let (s, z) = (a(&[], &[0.5]), a(&[], &[10.]));
    // x / s = 0.5, 1.5, 2.5, -0.5 -> 0, 2, 2, -0 (+10), then saturation.
    let q = run(FloatOp::Quantize { lo: 0., hi: 255., axis: 1 }, &[&x, &s, &z]);
    assert_eq!(flat(&q), vec![10., 12., 12., 10., 210., 0.]);
    let back = run(FloatOp::Dequantize { axis: 1 }, &[&q, &s, &z]);
    assert_eq!(flat(&back), vec![0., 1., 1., 0., 100., -5.]);
    // Per channel (axis 1) with int8 saturation.
    let x = a(&[1, 2, 2], &[1., 2., 1., 2.]);
    let (s, z) = (a(&[2], &[0.5, 0.01]), a(&[2], &[0., 0.]));
    let q = run(FloatOp::Quantize { lo: -128., hi: 127., axis: 1 }, &[&x, &s, &z]);
    assert_eq!(flat(&q), vec![2., 4., 100., 127.]);
    assert_eq!(flat(&run(FloatOp::Dequantize { axis: 1 }, &[&q, &s, &z])), vec![1., 2., 1., 1.27]);
}

#[test]
fn data_movement() {
    let x = a(&[1, 2, 3], &[0., 1., 2., 3., 4., 5.]);
    let y = run(FloatOp::Reshape, &[&x, &a(&[2], &[0., -1.])]);
    assert_eq!(y.shape(), &[1, 6]);
    assert!(eval(&FloatOp::Reshape, &[&x, &a(&[1], &[4.])]).unwrap_err().is_unsupported());
    assert_eq!(run(FloatOp::Flatten(2), &[&x]).shape(), &[2, 3]);
    let t = run(FloatOp::Transpose(Some(vec![0, 2, 1])), &[&x]);
    assert_eq!((t.shape(), flat(&t)), (&[1, 3, 2][..], vec![0., 3., 1., 4., 2., 5.]));
    assert_eq!(run(FloatOp::Transpose(None), &[&x]).shape(), &[3, 2, 1]);
    assert!(eval(&FloatOp::Transpose(Some(vec![0, 0, 1])), &[&x]).is_err());
    let c = run(FloatOp::Concat(-1), &[&x, &x]);
    assert_eq!((c.shape(), flat(&c)[..6].to_vec()), (&[1, 2, 6][..], vec![0., 1., 2., 0., 1., 2.]));
    // Slice from inputs: starts, ends, axes, steps; a negative start counts from the end.
    let s = run(FloatOp::Slice(None), &[&x, &a(&[1], &[-3.]), &a(&[1], &[100.]), &a(&[1], &[2.]), &a(&[1], &[2.])]);
    assert_eq!((s.shape(), flat(&s)), (&[1, 2, 2][..], vec![0., 2., 3., 5.]));
    let s = run(FloatOp::Slice(Some((vec![1], vec![2], vec![1]))), &[&x]);
    assert_eq!(flat(&s), vec![3., 4., 5.]);
    assert!(eval(&FloatOp::Slice(None), &[&x, &a(&[1], &[0.]), &a(&[1], &[1.]), &a(&[1], &[0.]), &a(&[1], &[0.])]).is_err());
    let sq = run(FloatOp::Squeeze(Some(vec![0]), true), &[&x]);
    assert_eq!(sq.shape(), &[2, 3]);
    let un = run(FloatOp::Squeeze(None, false), &[&sq, &a(&[2], &[0., -1.])]);
    assert_eq!(un.shape(), &[1, 2, 3, 1]);
    assert!(eval(&FloatOp::Squeeze(Some(vec![1]), true), &[&x]).is_err());
}

#[test]
fn reductions() {
    let x = a(&[1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let m = run(FloatOp::GlobalPool(Reduce::Mean), &[&x]);
    assert_eq!((m.shape(), flat(&m)), (&[1, 2, 1, 1][..], vec![2.5, 6.5]));
    assert_eq!(flat(&run(FloatOp::GlobalPool(Reduce::Max), &[&x])), vec![4., 8.]);
    let r = run(FloatOp::Reduce(Reduce::Sum, Some(vec![1]), false), &[&x]);
    assert_eq!((r.shape(), flat(&r)), (&[1, 2, 2][..], vec![6., 8., 10., 12.]));
    let r = run(FloatOp::Reduce(Reduce::Min, None, true), &[&x]);
    assert_eq!((r.shape(), flat(&r)), (&[1, 1, 1, 1][..], vec![1.]));
    assert!(eval(&FloatOp::Reduce(Reduce::Max, Some(vec![4]), true), &[&x]).is_err());
    let sm = run(FloatOp::Softmax(-1), &[&a(&[1, 2], &[0., std::f32::consts::LN_2])]);
    assert!((flat(&sm)[0] - 1. / 3.).abs() < 1e-6 && (flat(&sm)[1] - 2. / 3.).abs() < 1e-6);
}

#[test]
fn instance_norm_normalises_each_plane() {
    let x = a(&[1, 2, 1, 4], &[1., 2., 3., 4., 10., 10., 10., 10.]);
    let y = run(FloatOp::InstanceNorm(0.0), &[&x, &a(&[2], &[2., 1.]), &a(&[2], &[0., 5.])]);
    // Plane 0: mean 2.5, variance 1.25. Plane 1 is constant: checked below with eps > 0.
    let inv = 1.0 / 1.25f32.sqrt();
    for (got, want) in flat(&y)[..4].iter().zip([-1.5 * inv * 2., -0.5 * inv * 2., 0.5 * inv * 2., 1.5 * inv * 2.]) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    let y = run(FloatOp::InstanceNorm(1e-5), &[&x, &a(&[2], &[2., 1.]), &a(&[2], &[0., 5.])]);
    assert_eq!(flat(&y)[4..], [5., 5., 5., 5.]);
    assert!(eval(&FloatOp::InstanceNorm(1e-5), &[&x, &a(&[1], &[1.]), &a(&[2], &[0., 0.])]).is_err());
}

#[test]
fn products() {
    let x = a(&[1, 2], &[1., 2.]);
    let w = a(&[3, 2], &[1., 0., 0., 1., 1., 1.]);
    let y = run(FloatOp::Gemm { alpha: 2., beta: 0.5, trans_a: false, trans_b: true }, &[&x, &w, &a(&[3], &[2., 4., 6.])]);
    assert_eq!(flat(&y), vec![3., 6., 9.]);
    let y = run(FloatOp::MatMul, &[&x, &a(&[2, 1], &[3., 4.])]);
    assert_eq!(flat(&y), vec![11.]);
    assert!(eval(&FloatOp::MatMul, &[&x, &w]).is_err());
}

#[test]
fn convolutions() {
    let conv =
        |strides: Vec<usize>, pads: Vec<usize>, dilations: Vec<usize>, group: usize| FloatOp::Conv { strides, pads, dilations, group };
    // 1-D: [1, 2, 3] * [1, -1] with one zero of padding each side: 0-1, 1-2, 2-3, 3-0.
    let x = a(&[1, 1, 3], &[1., 2., 3.]);
    let w = a(&[1, 1, 2], &[1., -1.]);
    let y = run(conv(vec![1], vec![1, 1], vec![1], 1), &[&x, &w, &a(&[1], &[10.])]);
    assert_eq!(flat(&y), vec![9., 9., 9., 13.]);
    // Dilation 2 and stride 2 on 5 values: taps at i and i + 2.
    let x = a(&[1, 1, 5], &[1., 2., 3., 4., 5.]);
    let y = run(conv(vec![2], vec![0, 0], vec![2], 1), &[&x, &w]);
    assert_eq!(flat(&y), vec![-2., -2.]);
    // 2-D grouped (2 groups of one channel each): each channel by its own 1x1 weight.
    let x = a(&[1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let w = a(&[2, 1, 1, 1], &[2., -1.]);
    let y = run(conv(vec![1, 1], vec![0; 4], vec![1, 1], 2), &[&x, &w]);
    assert_eq!(flat(&y), vec![2., 4., 6., 8., -5., -6., -7., -8.]);
    // A 2x2 kernel summing a 3x3 input: each output is the sum of a window.
    let x = a(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let y = run(conv(vec![1, 1], vec![0; 4], vec![1, 1], 1), &[&x, &a(&[1, 1, 2, 2], &[1.; 4])]);
    assert_eq!(flat(&y), vec![12., 16., 24., 28.]);
    let err = eval(&conv(vec![1, 1], vec![0; 4], vec![1, 1], 3), &[&x, &a(&[1, 1, 2, 2], &[1.; 4])]).unwrap_err();
    assert!(err.is_unsupported(), "{err}");
    assert!(eval(&conv(vec![1, 1], vec![0; 4], vec![1, 1], 1), &[&x, &a(&[1, 1, 4, 4], &[1.; 16])]).is_err());
}

#[test]
fn nodes_are_read_or_refused_by_name() {
    let node = |op: &str, inputs: usize| pb::NodeProto {
        name: "n".into(),
        op_type: op.into(),
        input: (0..inputs).map(|i| format!("i{i}")).collect(),
        output: vec!["o".into()],
        ..Default::default()
    };
    let g = pb::GraphProto::default();
    assert!(matches!(float_op(&node("Min", 2), 13, &g), Ok(FloatOp::Binary(Binary::Min))));
    assert!(matches!(float_op(&node("Softmax", 1), 11, &g), Ok(FloatOp::Softmax(1))));
    assert!(matches!(float_op(&node("Softmax", 1), 13, &g), Ok(FloatOp::Softmax(-1))));
    for (op, opset) in [("Min", 13), ("Clip", 6), ("NonMaxSuppression", 13)] {
        let n = node(op, if op == "Min" { 3 } else { 1 });
        let err = float_op(&n, opset, &g).unwrap_err();
        assert!(err.is_unsupported(), "{op}: {err}");
    }
    let mut two_out = node("Split", 1);
    two_out.output.push("o2".into());
    assert!(float_op(&two_out, 13, &g).unwrap_err().to_string().contains("several outputs"));
    assert!(all_finite(&[1.0, -2.0]) && !all_finite(&[1.0, f32::NAN]) && !all_finite(&[f32::INFINITY]));
}
