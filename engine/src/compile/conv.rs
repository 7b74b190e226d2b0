//! Rule: `Conv(DQ(x), DQ(w int8), bias)` and `ConvTranspose` on a u8 tensor: a pending
//! conv (2-D dense, depthwise or grouped, 3-D, transposed) with its weights packed for the
//! kernels; activations after it narrow its bounds ([`super::activation`]); the
//! `QuantizeLinear` after them makes it one fused op: int32 accumulation,
//! requantisation, the activation as a clamp in the quantised domain (exact:
//! quantisation is monotone). A float op reading it gets it dequantised instead.

use edgemed_onnx::{attr, pb};

use super::{input, invalid, Compiler, Val};
use crate::error::Result;
use crate::kernels::{
    self, ConvGeometry, DepthwiseWeights, GroupedWeights, Isa, Narrow3, PackedWeights, Padded3, Requant, Rows2, ROWS2_PITCH,
};
use crate::plan::{channel_value, ConvKind, ConvLayout, ConvOp, FloatConv, Geometry3, Op, QTensor, Step};
use crate::subpixel::{self, SubPixel};

impl Compiler<'_> {
    /// A Conv or ConvTranspose on a u8 tensor with int8 weights: a pending conv.
    pub(super) fn conv(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let transposed = n.op_type == "ConvTranspose";
        let inp = |i: usize| input(n, i);
        let Some(src) = self.int_of(inp(0)) else { return Ok(false) };
        let Some(w) = self.konst(inp(1)) else { return Ok(false) };
        let Some((wq, wscale, waxis)) = w.int8.clone() else { return Ok(false) };
        let xs = self.shapes[src].clone();
        let x = self.tensors[src];
        let rank = xs.len();
        // Per-channel weight scales run along the output channels: axis 0 of a Conv's
        // weights, axis 1 of a ConvTranspose's.
        let out_axis = if transposed { 1 } else { 0 };
        if !(4..=5).contains(&rank) || w.shape.len() != rank || (wscale.len() > 1 && waxis != out_axis) {
            return Ok(false);
        }
        if attr::ints(n, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1))
            || n.attribute.iter().any(|a| a.name == "auto_pad" && !a.s.is_empty() && a.s != b"NOTSET")
            || n.attribute.iter().any(|a| a.name == "output_shape")
        {
            return Ok(false);
        }
        let sp = rank - 2;
        let kernel: Vec<usize> = w.shape[2..].to_vec();
        let group = attr::int_opt(n, "group").unwrap_or(1) as usize;
        let strides: Vec<usize> = attr::ints(n, "strides").unwrap_or(vec![1; sp]).iter().map(|&v| v.max(0) as usize).collect();
        let pads = attr::ints(n, "pads").unwrap_or(vec![0; 2 * sp]);
        let out_pad = attr::ints(n, "output_padding").unwrap_or(vec![0; sp]);
        if strides.len() != sp || strides.contains(&0) || pads.len() != 2 * sp || pads.iter().any(|&p| p < 0) || out_pad.len() != sp {
            return Ok(false);
        }
        let pads: Vec<usize> = pads.iter().map(|&p| p as usize).collect();
        let (cout, cin_g) = if transposed { (w.shape[1], w.shape[0]) } else { (w.shape[0], w.shape[1]) };
        let bias = match n.input.get(2).filter(|b| !b.is_empty()) {
            None => vec![0.0; cout],
            Some(b) => match self.konst(b) {
                Some(c) if c.data.len() == cout => c.data,
                _ => return Ok(false),
            },
        };
        // A conv's channels must split into its groups (ConvTranspose keeps its
        // own checks: only group 1 is integer).
        if !transposed && (group == 0 || group.checked_mul(cin_g) != Some(x.c) || !cout.is_multiple_of(group)) {
            return Err(invalid(format!(
                "{}: {} input and {cout} output channels do not split into {group} groups with weights {:?}",
                n.name, x.c, w.shape
            )));
        }
        let depthwise = !transposed && sp == 2 && group == x.c && group == cout && cin_g == 1 && group > 1;
        // Any other 2-D grouping (cin_g inputs, cout / group outputs per group); 3-D
        // grouped convs stay on the float path.
        let grouped = !transposed && sp == 2 && group > 1 && !depthwise;
        if !(depthwise || grouped || group == 1 && cin_g == x.c) {
            return Ok(false);
        }
        let sw = |c: usize| channel_value(&wscale, c);
        let mult: Vec<f32> = (0..cout).map(|c| x.scale * sw(c)).collect();
        let taps: usize = kernel.iter().product();
        let zp = x.zp as i32;
        // Spatial sizes lifted to 3 axes (a 2-D conv has depth 1).
        let lift = |v: &[usize], fill: usize| -> [usize; 3] {
            let mut o = [fill; 3];
            o[3 - v.len()..].copy_from_slice(v);
            o
        };
        let input = lift(&xs[2..], 1);
        if input.contains(&0) {
            return Err(invalid(format!("{}: empty input {xs:?}", n.name)));
        }
        let (k3, s3) = (lift(&kernel, 1), lift(&strides, 1));
        let (pb, pe) = (lift(&pads[..sp], 0), lift(&pads[sp..], 0));
        let mut output = [1usize; 3];
        for a in 0..3 {
            output[a] = if transposed {
                let full = (input[a] - 1) * s3[a] + k3[a] + lift(&out_pad.iter().map(|&v| v.max(0) as usize).collect::<Vec<_>>(), 0)[a];
                match full.checked_sub(pb[a] + pe[a]) {
                    Some(o) if o > 0 => o,
                    _ => return Err(invalid(format!("{}: padding larger than the output", n.name))),
                }
            } else {
                match (input[a] + pb[a] + pe[a]).checked_sub(k3[a]) {
                    Some(d) => d / s3[a] + 1,
                    None => return Err(invalid(format!("{}: kernel larger than the padded input", n.name))),
                }
            };
        }
        let mut shape = vec![1, cout];
        shape.extend_from_slice(&output[3 - sp..]);
        let out_pixels: usize = output.iter().product();
        let in_pixels: usize = input.iter().product();
        let pointwise_on = |pixels: usize, cin: usize| ConvGeometry::new(1, pixels, cin, 1, 1, [1, 1], [0; 4]).expect("1x1 fits");
        // A 2-D conv's geometry on the channels-last input (depth 1).
        let geometry_2d = || {
            let (st, pd) = ([strides[0], strides[1]], [pads[0], pads[1], pads[2], pads[3]]);
            ConvGeometry::new(input[1], input[2], x.c, kernel[0], kernel[1], st, pd)
                .ok_or_else(|| invalid(format!("{}: kernel larger than the padded input", n.name)))
        };
        let (layout, kind, offset, macs) = if transposed {
            let g = Geometry3 { input, cin: x.c, kernel: k3, stride: s3, pads: pb, output };
            let macs = (in_pixels * x.c * cout * taps) as u64;
            // The sub-pixel form: a dense conv on the input and a shuffle, no scatter.
            let sub = subpixel::sub_conv(&g, cout, &wq).and_then(|sc| {
                let (inner, pw) = dense_layout(self.isa, &sc.g, sc.pads_after, sc.cout, &sc.weights, sp == 2)?;
                let inner_macs = (sc.g.output.iter().product::<usize>() * sc.cout * sc.g.taps() * x.c) as u64;
                let offset = pw.sums().iter().map(|s| s * zp).collect();
                Some((SubPixel { g, cout, sub: sc.g.output, inner, inner_macs, offset }, pw))
            });
            if let Some((sp, pw)) = sub {
                (ConvLayout::SubPixel(Box::new(sp)), ConvKind::Dense(pw), vec![0; cout], macs)
            } else {
                // Columns [tap][cout] of [cin] weights: w is [cin][cout][taps].
                let mut rows = vec![0i8; taps * cout * x.c];
                let mut col_offset = vec![0i32; taps * cout];
                for t in 0..taps {
                    for co in 0..cout {
                        for ci in 0..x.c {
                            let v = wq[(ci * cout + co) * taps + t];
                            rows[(t * cout + co) * x.c + ci] = v;
                            col_offset[t * cout + co] += zp * v as i32;
                        }
                    }
                }
                let layout = ConvLayout::Transposed { g, cols: pointwise_on(in_pixels, x.c), col_offset };
                (layout, ConvKind::Dense(PackedWeights::new(self.isa, rows, taps * cout, 1, x.c)), vec![0; cout], macs)
            }
        } else if depthwise {
            let g = geometry_2d()?;
            let kind = ConvKind::Depthwise(DepthwiseWeights::new(self.isa, &wq, cout, [g.kh, g.kw]));
            (ConvLayout::Direct(g), kind, vec![0; cout], (out_pixels * cout * taps) as u64)
        } else if grouped {
            let g = geometry_2d()?;
            let kind = ConvKind::Grouped(GroupedWeights::new(self.isa, &wq, cout, cin_g, cout / group, kernel[0], kernel[1]));
            // Zero-point corrected in the kernels, as depthwise.
            (ConvLayout::Direct(g), kind, vec![0; cout], (out_pixels * cout * taps * cin_g) as u64)
        } else {
            let k = taps * x.c;
            let g = Geometry3 { input, cin: x.c, kernel: k3, stride: s3, pads: pb, output };
            let (layout, pw) = dense_layout(self.isa, &g, pe, cout, &wq, sp == 2)
                .ok_or_else(|| invalid(format!("{}: kernel larger than the padded input", n.name)))?;
            let offset = pw.sums().iter().map(|s| s * zp).collect();
            (layout, ConvKind::Dense(pw), offset, (out_pixels * cout * k) as u64)
        };
        let conv = FloatConv {
            src,
            layout,
            kind,
            offset,
            mult,
            bias,
            lo: vec![f32::NEG_INFINITY; cout],
            hi: vec![f32::INFINITY; cout],
            shape,
            name: n.name.clone(),
            macs,
        };
        self.vals.insert(super::output(n), Val::PendingConv { conv: Box::new(conv) });
        Ok(true)
    }

    /// The pending conv `p` quantised with (s, z): one fused integer op.
    pub(super) fn quantized_conv(&mut self, p: FloatConv, s: f32, z: u8) -> usize {
        let t = QTensor::of_shape(&p.shape, s, z).expect("conv outputs are [1, C, ...]");
        let dst = self.new_tensor(t, p.shape.clone());
        let q = |v: f32| kernels::quantize_u8(v, s, z);
        let requant = Requant {
            offset: p.offset,
            mult: p.mult.iter().map(|m| m / s).collect(),
            bias: p.bias.iter().map(|b| b / s).collect(),
            out_zp: z as f32,
            lo: p.lo.iter().map(|&v| if v == f32::NEG_INFINITY { 0 } else { q(v) }).collect(),
            hi: p.hi.iter().map(|&v| if v == f32::INFINITY { 255 } else { q(v) }).collect(),
        };
        let op = ConvOp { src: p.src, dst, layout: p.layout, kind: p.kind, requant, name: p.name, macs: p.macs };
        self.steps.push(Step::Int(Op::Conv(Box::new(op))));
        dst
    }
}

/// A dense conv's layout and weights packed for `isa`: `g` (padding `pads_after` after
/// each axis) on the channels-last input, `wq` its int8 weights as ONNX stores them
/// ([cout][cin][kd][kh][kw]), `two_d` for a 2-D conv (depth 1). `None` where the kernel
/// is larger than the padded input.
fn dense_layout(
    isa: Isa,
    g: &Geometry3,
    pads_after: [usize; 3],
    cout: usize,
    wq: &[i8],
    two_d: bool,
) -> Option<(ConvLayout, PackedWeights)> {
    let (cin, taps) = (g.cin, g.taps());
    // [cout][cin][taps...] -> rows [cout][taps...][cin], the im2row (and channels-last) order.
    let k = taps * cin;
    let mut rows = vec![0i8; cout * k];
    for c in 0..cout {
        for ci in 0..cin {
            for t in 0..taps {
                rows[c * k + t * cin + ci] = wq[(c * cin + ci) * taps + t];
            }
        }
    }
    let [_, kh, kw] = g.kernel;
    let pixels: usize = g.input.iter().product();
    // AVX2, few input and output channels: pixels (voxels) in lanes, read in place from
    // the padded input (a 2-D conv as a 3-D one of depth 1; the packed rows only carry
    // cout and k for the plan).
    let lanes_fit = isa == Isa::Avx2 && Padded3::lanes_apply(g, cout);
    let lanes = |rows| (ConvLayout::Padded(Box::new(Padded3::with_lanes(*g, cout, wq))), PackedWeights::new(isa, rows, cout, 1, k));
    Some(if two_d {
        let pads = [g.pads[1], g.pads[2], pads_after[1], pads_after[2]];
        let cg = ConvGeometry::new(g.input[1], g.input[2], cin, kh, kw, [g.stride[1], g.stride[2]], pads)?;
        // Gathered rows first: where both apply (16 outputs of a 3-channel 3x3 kernel
        // at stride 2, the equivariant MobileNetV2's first conv), AVX2's product on
        // gathered rows beat pixels in lanes (3 -> 16 at 47x47 on a Zen 3 core, per-op
        // profiles of the C4 model, 3 alternations: 61-80 -> 37-45 us).
        if Rows2::applies(isa, &cg, cout) {
            let r = Rows2 { g: cg };
            let pw = PackedWeights::new(isa, r.pad_weights(&rows, cout), cout, 1, ROWS2_PITCH);
            (ConvLayout::Rows(Box::new(r)), pw)
        } else if lanes_fit {
            lanes(rows)
        } else {
            (ConvLayout::Direct(cg), PackedWeights::new(isa, rows, cout, kh, kw * cin))
        }
    } else if taps == 1 && g.stride == [1; 3] && g.pads == [0; 3] && pads_after == [0; 3] {
        let cg = ConvGeometry::new(1, pixels, cin, 1, 1, [1, 1], [0; 4])?;
        (ConvLayout::Direct(cg), PackedWeights::new(isa, rows, cout, 1, k))
    } else {
        if isa.has_avx512_vnni() && Narrow3::applies(cout, g.kernel, g.stride) {
            (ConvLayout::Narrow(Box::new(Narrow3::new(*g, cout, wq))), PackedWeights::new(isa, rows, cout, 1, k))
        } else if isa.has_avx512_vnni() {
            // Read in place: kd kh kernel rows of kw cin bytes.
            (ConvLayout::Padded(Box::new(Padded3::new(*g))), PackedWeights::new(isa, rows, cout, g.kernel[0] * kh, kw * cin))
        } else if lanes_fit {
            lanes(rows)
        } else {
            let plane = ConvGeometry::new(1, g.output[1] * g.output[2], k, 1, 1, [1, 1], [0; 4])?;
            (ConvLayout::Planes { g: *g, plane }, PackedWeights::new(isa, rows, cout, 1, k))
        }
    })
}
