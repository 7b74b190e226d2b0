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
    let y = run(FloatOp::Reshape(false), &[&x, &a(&[2], &[0., -1.])]);
    assert_eq!(y.shape(), &[1, 6]);
    assert!(eval(&FloatOp::Reshape(false), &[&x, &a(&[1], &[4.])]).unwrap_err().is_unsupported());
    // allowzero: the same where the shape has no 0; an empty dim is refused.
    assert_eq!(run(FloatOp::Reshape(true), &[&x, &a(&[2], &[1., -1.])]).shape(), y.shape());
    assert!(eval(&FloatOp::Reshape(true), &[&x, &a(&[2], &[0., -1.])]).unwrap_err().is_unsupported());
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
fn batch_norm_uses_the_running_statistics_per_channel() {
    let x = a(&[1, 2, 1, 2], &[1., 3., 10., 20.]);
    let p = |v: &[f32]| a(&[2], v);
    // Channel 0: (x - 1) * 2 / sqrt(4) + 0.5; channel 1: (x - 10) * 1 / sqrt(1) - 1.
    let (scale, bias, mean, var) = (p(&[2., 1.]), p(&[0.5, -1.]), p(&[1., 10.]), p(&[4., 1.]));
    let y = run(FloatOp::BatchNorm(0.0), &[&x, &scale, &bias, &mean, &var]);
    assert_eq!(flat(&y), vec![0.5, 2.5, -1., 9.]);
    assert!(eval(&FloatOp::BatchNorm(0.0), &[&x, &a(&[1], &[1.]), &bias, &mean, &var]).is_err());
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

#[test]
fn transposed_convolutions() {
    let convt = |strides: Vec<usize>, pads: Vec<usize>, dilations: Vec<usize>, output_padding: Vec<usize>, group: usize| {
        FloatOp::ConvTranspose { strides, pads, dilations, output_padding, group }
    };
    // 1-D, stride 2: y[2i + t] += x[i] w[t], 2 (3 - 1) + 2 = 6 outputs.
    let x = a(&[1, 1, 3], &[1., 2., 3.]);
    let w = a(&[1, 1, 2], &[1., 10.]);
    let y = run(convt(vec![2], vec![0, 0], vec![1], vec![0], 1), &[&x, &w]);
    assert_eq!((y.shape(), flat(&y)), (&[1, 1, 6][..], vec![1., 10., 2., 20., 3., 30.]));
    // A begin pad drops the first output; output padding adds one (the bias only).
    let y = run(convt(vec![2], vec![1, 0], vec![1], vec![0], 1), &[&x, &w]);
    assert_eq!(flat(&y), vec![10., 2., 20., 3., 30.]);
    let y = run(convt(vec![2], vec![0, 0], vec![1], vec![1], 1), &[&x, &w, &a(&[1], &[0.5])]);
    assert_eq!(flat(&y), vec![1.5, 10.5, 2.5, 20.5, 3.5, 30.5, 0.5]);
    // Dilation 2: taps at i and i + 2.
    let y = run(convt(vec![1], vec![0, 0], vec![2], vec![0], 1), &[&a(&[1, 1, 2], &[1., 2.]), &a(&[1, 1, 2], &[1., 1.])]);
    assert_eq!(flat(&y), vec![1., 2., 1., 2.]);
    // 2-D, a 2x2 kernel of ones on [[1, 2], [3, 4]]: each output sums the inputs it covers.
    let y =
        run(convt(vec![1, 1], vec![0; 4], vec![1, 1], vec![0, 0], 1), &[&a(&[1, 1, 2, 2], &[1., 2., 3., 4.]), &a(&[1, 1, 2, 2], &[1.; 4])]);
    assert_eq!((y.shape(), flat(&y)), (&[1, 1, 3, 3][..], vec![1., 3., 2., 4., 10., 6., 3., 7., 4.]));
    // Weights are [Cin, Cout, ...]: out0 = 1 ch0 + 10 ch1, out1 = 2 ch0.
    let x = a(&[1, 2, 1, 2], &[1., 2., 3., 4.]);
    let w = a(&[2, 2, 1, 1], &[1., 2., 10., 0.]);
    let y = run(convt(vec![1, 1], vec![0; 4], vec![1, 1], vec![0, 0], 1), &[&x, &w]);
    assert_eq!(flat(&y), vec![31., 42., 2., 4.]);
    // 3-D, stride 2 in depth: depth 1 becomes 2, one slice per tap.
    let y = run(
        convt(vec![2, 1, 1], vec![0; 6], vec![1; 3], vec![0; 3], 1),
        &[&a(&[1, 1, 1, 1, 2], &[1., 2.]), &a(&[1, 1, 2, 1, 1], &[1., 3.])],
    );
    assert_eq!((y.shape(), flat(&y)), (&[1, 1, 2, 1, 2][..], vec![1., 2., 3., 6.]));
    // Two groups of one channel.
    let y = run(convt(vec![1], vec![0, 0], vec![1], vec![0], 2), &[&a(&[1, 2, 2], &[1., 2., 3., 4.]), &a(&[2, 1, 1], &[2., 3.])]);
    assert_eq!(flat(&y), vec![2., 4., 9., 12.]);
    assert!(eval(&convt(vec![1], vec![0, 0], vec![1], vec![0], 1), &[&a(&[1, 2, 2], &[0.; 4]), &a(&[1, 1, 1], &[1.])]).is_err());
    assert!(eval(&convt(vec![1], vec![2, 2], vec![1], vec![0], 1), &[&a(&[1, 1, 2], &[0.; 2]), &a(&[1, 1, 1], &[1.])]).is_err());
}

#[test]
fn integer_division_comparisons_and_rounding() {
    let (p, q) = (a(&[3], &[7., -7., 6.]), a(&[3], &[2., 2., -4.]));
    assert_eq!(flat(&run(FloatOp::Binary(Binary::IntDiv), &[&p, &q])), vec![3., -3., -1.]);
    assert_eq!(flat(&run(FloatOp::Binary(Binary::Div), &[&p, &q])), vec![3.5, -3.5, -1.5]);
    let (x, two) = (a(&[3], &[1., 2., 3.]), a(&[], &[2.]));
    assert_eq!(flat(&run(FloatOp::Binary(Binary::Equal), &[&x, &two])), vec![0., 1., 0.]);
    assert_eq!(flat(&run(FloatOp::Binary(Binary::Less), &[&x, &two])), vec![1., 0., 0.]);
    assert_eq!(flat(&run(FloatOp::Binary(Binary::Greater), &[&x, &two])), vec![0., 0., 1.]);
    let x = a(&[4], &[-1.5, 1.5, 2., -0.2]);
    assert_eq!(flat(&run(FloatOp::Unary(Unary::Floor), &[&x])), vec![-2., 1., 2., -1.]);
    assert_eq!(flat(&run(FloatOp::Unary(Unary::Ceil), &[&x])), vec![-1., 2., 2., -0.]);
    // Cast to an integer truncates toward zero; to bool, anything but 0 is 1.
    let x = a(&[5], &[-1.7, 2.5, 0., f32::NAN, 3.]);
    assert_eq!(flat(&run(FloatOp::Cast(CastTo::Int), &[&x])), vec![-1., 2., 0., 0., 3.]);
    assert_eq!(flat(&run(FloatOp::Cast(CastTo::Bool), &[&x])), vec![1., 1., 0., 1., 1.]);
    assert_eq!(flat(&run(FloatOp::Cast(CastTo::Float), &[&x]))[..3], [-1.7, 2.5, 0.]);
}

#[test]
fn gather_where_range_and_shapes() {
    let x = a(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
    let g = run(FloatOp::Gather(0), &[&x, &a(&[2], &[-1., 0.])]);
    assert_eq!((g.shape(), flat(&g)), (&[2, 2][..], vec![5., 6., 1., 2.]));
    // A scalar index drops the axis; an index array's shape replaces it.
    let g = run(FloatOp::Gather(1), &[&x, &a(&[], &[1.])]);
    assert_eq!((g.shape(), flat(&g)), (&[3][..], vec![2., 4., 6.]));
    let g = run(FloatOp::Gather(-1), &[&x, &a(&[2, 1], &[1., 0.])]);
    assert_eq!((g.shape(), flat(&g)), (&[3, 2, 1][..], vec![2., 1., 4., 3., 6., 5.]));
    let shape = a(&[4], &[1., 8., 3., 3.]);
    assert_eq!(flat(&run(FloatOp::Gather(0), &[&shape, &a(&[], &[0.])])), vec![1.]);
    assert!(eval(&FloatOp::Gather(0), &[&x, &a(&[1], &[3.])]).unwrap_err().to_string().contains("out of range"));

    // Where broadcasts condition [3], x scalar and y [2, 1] to [2, 3].
    let w = run(FloatOp::Where, &[&a(&[3], &[1., 0., 1.]), &a(&[], &[7.]), &a(&[2, 1], &[10., 20.])]);
    assert_eq!((w.shape(), flat(&w)), (&[2, 3][..], vec![7., 10., 7., 7., 20., 7.]));

    let range = |s: f32, l: f32, d: f32| eval(&FloatOp::Range, &[&a(&[], &[s]), &a(&[], &[l]), &a(&[], &[d])]);
    assert_eq!(flat(&range(0., 5., 2.).unwrap()), vec![0., 2., 4.]);
    assert_eq!(flat(&range(5., 0., -2.).unwrap()), vec![5., 3., 1.]);
    assert_eq!(range(3., 3., 1.).unwrap().shape(), &[0]);
    assert_eq!(range(10., 4., 3.).unwrap().shape(), &[0]);
    assert_eq!(flat(&range(0., 1., 0.25).unwrap()), vec![0., 0.25, 0.5, 0.75]);
    assert!(range(0., 1., 0.).is_err());

    let c = run(FloatOp::ConstantOfShape(1.5), &[&a(&[2], &[2., 3.])]);
    assert_eq!((c.shape(), flat(&c)), (&[2, 3][..], vec![1.5; 6]));
    assert_eq!(run(FloatOp::ConstantOfShape(0.), &[&a(&[1], &[0.])]).shape(), &[0]);
    assert!(eval(&FloatOp::ConstantOfShape(0.), &[&a(&[1], &[-1.])]).is_err());

    // Expand broadcasts both ways: [3, 1] to [2, 1, 4] is [2, 3, 4]; to [1, 1] stays [3, 1].
    let x = a(&[3, 1], &[1., 2., 3.]);
    let e = run(FloatOp::Expand, &[&x, &a(&[3], &[2., 1., 4.])]);
    assert_eq!(e.shape(), &[2, 3, 4]);
    assert_eq!(flat(&e)[..12], [1., 1., 1., 1., 2., 2., 2., 2., 3., 3., 3., 3.]);
    assert_eq!(flat(&e)[12..], flat(&e)[..12]);
    assert_eq!(run(FloatOp::Expand, &[&x, &a(&[2], &[1., 1.])]).shape(), &[3, 1]);
    assert_eq!(run(FloatOp::Expand, &[&x, &a(&[1], &[2.])]).shape(), &[3, 2]);
    assert!(eval(&FloatOp::Expand, &[&x, &a(&[2], &[2., 1.])]).is_err());
}

#[test]
fn constant_padding() {
    let x = a(&[1, 2, 2], &[1., 2., 3., 4.]);
    // Inputs: pads [begin of axes 0, 1, 2, end of axes 0, 1, 2], then the value.
    let p = run(FloatOp::Pad { pads: None, value: 0., edge: false }, &[&x, &a(&[6], &[0., 1., 0., 0., 0., 1.]), &a(&[], &[9.])]);
    assert_eq!((p.shape(), flat(&p)), (&[1, 3, 3][..], vec![9., 9., 9., 1., 2., 9., 3., 4., 9.]));
    // Opset < 11: pads and value as attributes; an empty value input keeps the attribute's.
    let p = run(FloatOp::Pad { pads: Some(vec![0, 0, 1, 0, 0, 0]), value: -1., edge: false }, &[&x]);
    assert_eq!(flat(&p), vec![-1., 1., 2., -1., 3., 4.]);
    // Opset 18's axes input: pads only the last axis.
    let p = run(FloatOp::Pad { pads: None, value: 0., edge: false }, &[&x, &a(&[2], &[1., 1.]), &a(&[0], &[]), &a(&[1], &[-1.])]);
    assert_eq!((p.shape(), flat(&p)), (&[1, 2, 4][..], vec![0., 1., 2., 0., 0., 3., 4., 0.]));
    assert!(eval(&FloatOp::Pad { pads: None, value: 0., edge: false }, &[&x, &a(&[6], &[0., -1., 0., 0., 0., 0.])]).is_err());
}

#[test]
fn nearest_resize() {
    let x = a(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    let resize = |coordinates, nearest| FloatOp::Resize(Resize { coordinates, nearest, scales: None, scales_input: 2 });
    let empty = a(&[0], &[]);
    // Scale 2 doubles every pixel, whichever mapping (torch's asymmetric + floor, the default half pixel).
    let scales = a(&[4], &[1., 1., 2., 2.]);
    let doubled = vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.];
    let y = run(resize(Coordinates::Asymmetric, Nearest::Floor), &[&x, &empty, &scales]);
    assert_eq!((y.shape(), flat(&y)), (&[1, 1, 4, 4][..], doubled.clone()));
    assert_eq!(flat(&run(resize(Coordinates::HalfPixel, Nearest::RoundPreferFloor), &[&x, &empty, &scales])), doubled);
    // Sizes 3x3 (scale 1.5), half pixel: output 0, 1, 2 map to -1/6, 0.5, 7/6; the tie
    // at 0.5 goes down with round_prefer_floor, up with round_prefer_ceil.
    let sizes = a(&[4], &[1., 1., 3., 3.]);
    let y = run(resize(Coordinates::HalfPixel, Nearest::RoundPreferFloor), &[&x, &empty, &empty, &sizes]);
    assert_eq!(flat(&y), vec![1., 1., 2., 1., 1., 2., 3., 3., 4.]);
    let y = run(resize(Coordinates::HalfPixel, Nearest::RoundPreferCeil), &[&x, &empty, &empty, &sizes]);
    assert_eq!(flat(&y), vec![1., 2., 2., 3., 4., 4., 3., 4., 4.]);
    // Align corners: 0, 0.5, 1.
    let y = run(resize(Coordinates::AlignCorners, Nearest::RoundPreferFloor), &[&x, &empty, &empty, &sizes]);
    assert_eq!(flat(&y), vec![1., 1., 2., 1., 1., 2., 3., 3., 4.]);
    // Upsample-7: scales as an attribute.
    let up = FloatOp::Resize(Resize {
        coordinates: Coordinates::Asymmetric,
        nearest: Nearest::Floor,
        scales: Some(vec![1., 1., 1., 2.]),
        scales_input: 1,
    });
    assert_eq!(flat(&run(up, &[&x])), vec![1., 1., 2., 2., 3., 3., 4., 4.]);
    assert!(eval(&resize(Coordinates::HalfPixel, Nearest::Floor), &[&x, &empty, &a(&[2], &[2., 2.])]).is_err());
}

#[test]
fn shape_and_resampling_nodes_are_read() {
    let node = |op: &str, attrs: Vec<pb::AttributeProto>| pb::NodeProto {
        name: "n".into(),
        op_type: op.into(),
        input: vec!["i".into()],
        output: vec!["o".into()],
        attribute: attrs,
        ..Default::default()
    };
    let int = |name: &str, i: i64| pb::AttributeProto { name: name.into(), i, ..Default::default() };
    let string = |name: &str, s: &str| pb::AttributeProto { name: name.into(), s: s.as_bytes().to_vec(), ..Default::default() };
    let g = pb::GraphProto::default();
    assert!(matches!(float_op(&node("Cast", vec![int("to", 7)]), 13, &g), Ok(FloatOp::Cast(CastTo::Int))));
    assert!(matches!(float_op(&node("Cast", vec![int("to", 1)]), 13, &g), Ok(FloatOp::Cast(CastTo::Float))));
    assert!(matches!(float_op(&node("Cast", vec![int("to", 9)]), 13, &g), Ok(FloatOp::Cast(CastTo::Bool))));
    assert!(float_op(&node("Cast", vec![int("to", 8)]), 13, &g).unwrap_err().to_string().contains("Cast to type 8"));
    assert!(matches!(float_op(&node("Gather", vec![int("axis", 1)]), 13, &g), Ok(FloatOp::Gather(1))));
    assert!(matches!(float_op(&node("ConstantOfShape", vec![]), 13, &g), Ok(FloatOp::ConstantOfShape(v)) if v == 0.));
    assert!(float_op(&node("Pad", vec![string("mode", "reflect")]), 13, &g).unwrap_err().to_string().contains("reflect"));
    assert!(float_op(&node("Resize", vec![string("mode", "linear")]), 13, &g).unwrap_err().to_string().contains("linear"));
    let r =
        float_op(&node("Resize", vec![string("coordinate_transformation_mode", "asymmetric"), string("nearest_mode", "floor")]), 13, &g);
    assert!(matches!(
        r,
        Ok(FloatOp::Resize(Resize { coordinates: Coordinates::Asymmetric, nearest: Nearest::Floor, scales_input: 2, .. }))
    ));
    assert!(matches!(float_op(&node("Upsample", vec![]), 9, &g), Ok(FloatOp::Resize(Resize { scales_input: 1, .. }))));
    assert!(
        float_op(&node("ConvTranspose", vec![pb::AttributeProto { name: "output_shape".into(), ..Default::default() }]), 13, &g).is_err()
    );
    // Opset 18's reductions take their axes as input 1.
    let mut r = node("ReduceMax", vec![int("keepdims", 0)]);
    r.input.push("axes".into());
    let op = float_op(&r, 18, &g).unwrap();
    let y = eval(&op, &[&a(&[1, 2, 2], &[1., 5., 3., 2.]), &a(&[1], &[1.])]).unwrap();
    assert_eq!((y.shape(), flat(&y)), (&[1, 2][..], vec![3., 5.]));
    assert!(float_op(&node("ReduceMax", vec![int("noop_with_empty_axes", 1)]), 18, &g).is_err());
}

#[test]
fn edge_padding_repeats_the_border() {
    let x = a(&[1, 2, 2], &[1., 2., 3., 4.]);
    // One column before and two after on the last axis: [1 1 2 2 2], [3 3 4 4 4].
    let p = run(FloatOp::Pad { pads: None, value: 0., edge: true }, &[&x, &a(&[2], &[1., 2.]), &a(&[0], &[]), &a(&[1], &[-1.])]);
    assert_eq!((p.shape(), flat(&p)), (&[1, 2, 5][..], vec![1., 1., 2., 2., 2., 3., 3., 4., 4., 4.]));
    // All-zero pads (MONAI BasicUNet's up-blocks): the input unchanged.
    let p = run(FloatOp::Pad { pads: None, value: 0., edge: true }, &[&x, &a(&[6], &[0.; 6])]);
    assert_eq!(flat(&p), flat(&x));
}

#[test]
fn max_pool_takes_the_window_maximum_and_never_the_padding() {
    // 1x1x3x4, kernel 2x2 stride 2, one row of padding at the bottom: windows
    // rows {0,1} and {2, pad}.
    let x = a(&[1, 1, 3, 4], &[1., -5., 2., 0., 7., 3., -1., -2., -4., -6., -3., -8.]);
    let op = FloatOp::MaxPool { kernel: vec![2, 2], strides: vec![2, 2], pads: vec![0, 0, 1, 0] };
    let y = run(op, &[&x]);
    assert_eq!((y.shape(), flat(&y)), (&[1, 1, 2, 2][..], vec![7., 2., -4., -3.]));
    // 3-D, kernel 2 stride 2 on a 2x2x2 volume: one output, the maximum.
    let v = a(&[1, 1, 2, 2, 2], &[0., 1., 2., 3., 4., 5., 9., 6.]);
    let op = FloatOp::MaxPool { kernel: vec![2, 2, 2], strides: vec![2, 2, 2], pads: vec![0; 6] };
    assert_eq!(flat(&run(op, &[&v])), vec![9.]);
    let too_big = FloatOp::MaxPool { kernel: vec![3, 3], strides: vec![1, 1], pads: vec![0; 4] };
    assert!(eval(&too_big, &[&a(&[1, 1, 2, 2], &[0.; 4])]).unwrap_err().is_unsupported());
}

#[test]
fn slices_with_negative_steps_walk_backwards() {
    let x = a(&[6], &[0., 1., 2., 3., 4., 5.]);
    let slice = |starts: f32, ends: f32, step: f32| {
        flat(&run(FloatOp::Slice(None), &[&x, &a(&[1], &[starts]), &a(&[1], &[ends]), &a(&[1], &[0.]), &a(&[1], &[step])]))
    };
    // numpy: x[::-1], x[4:1:-2], x[-1:-7:-1] (the whole reversed), x[1:4:-1] (empty).
    assert_eq!(slice(-1., i64::MIN as f32, -1.), vec![5., 4., 3., 2., 1., 0.]);
    assert_eq!(slice(4., 1., -2.), vec![4., 2.]);
    assert_eq!(slice(-1., -7., -1.), vec![5., 4., 3., 2., 1., 0.]);
    assert_eq!(slice(1., 4., -1.), Vec::<f32>::new());
    assert!(eval(&FloatOp::Slice(None), &[&x, &a(&[1], &[0.]), &a(&[1], &[6.]), &a(&[1], &[0.]), &a(&[1], &[0.])]).is_err());
}
