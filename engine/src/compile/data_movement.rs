//! Rule: data movement (`Concat`, `Reshape`, `Transpose`, `Slice`, `Flatten`,
//! `Squeeze`, `Unsqueeze`, nearest `Resize` / `Upsample`) of u8 tensors' views
//! becomes byte copies, found by running the ops on index arrays at load time with the
//! float interpreter (so no op needs index arithmetic of its own). A chain re-quantised
//! with its own parameters between ops (a pixel shuffle's Reshape, Transpose, Reshape
//! through rank-8 values) is one copy. Sources with other parameters go through a
//! 256-entry table (the same dequantise-then-quantise a float op would do, so exact).

use edgemed_onnx::pb;

use super::{output, unsupported, Compiler, Val};
use crate::error::Result;
use crate::float::{self, FloatOp, Operand};
use crate::ndarray::{ArrayD, IxDyn};
use crate::plan::{Copies, GatherOp, GatherRun, Op, QTensor, Step};

/// Ops that only move values: on u8 tensors they are byte copies (a U-Net's Concat, a
/// pixel shuffle's Reshape/Transpose, a flow's Slice, a classifier's Flatten).
/// Nearest-neighbour Resize and Upsample only repeat values too (another mode is
/// not read by the interpreter, and the rule declines).
pub(super) const DATA_MOVEMENT: &[&str] =
    &["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Concat", "Resize", "Upsample"];

/// A tree of data-movement ops whose leaves are u8 tensors.
#[derive(Debug, Clone)]
pub(super) enum Move {
    Tensor(usize),
    Op { op: FloatOp, args: Vec<MoveArg>, name: String },
}

#[derive(Debug, Clone)]
pub(super) enum MoveArg {
    Move(Move),
    /// A shape, starts and ends, axes.
    Const(ArrayD<f32>),
}

impl Move {
    /// The tensors it reads, each once, in first-read order.
    pub(super) fn tensors(&self, out: &mut Vec<usize>) {
        match self {
            Move::Tensor(t) if !out.contains(t) => out.push(*t),
            Move::Tensor(_) => {}
            Move::Op { args, .. } => args.iter().for_each(|a| {
                if let MoveArg::Move(m) = a {
                    m.tensors(out)
                }
            }),
        }
    }

    pub(super) fn names(&self) -> Vec<&'static str> {
        match self {
            Move::Tensor(_) => vec![],
            Move::Op { op, args, .. } => {
                let mut v: Vec<&'static str> =
                    args.iter().filter_map(|a| if let MoveArg::Move(m) = a { Some(m.names()) } else { None }).flatten().collect();
                v.push(op.name());
                v
            }
        }
    }
}

impl Compiler<'_> {
    /// A data-movement node whose data inputs are u8 tensors' views (or pending moves
    /// of them) and whose other inputs are constants: a pending move. Ok(false): a float op.
    /// A move (a residual's crop) of a pending conv + instance norm whose result only a
    /// QuantizeLinear reads: the norm is quantised first with that QuantizeLinear's
    /// parameters (moving values and quantising them commute), so the move copies bytes.
    fn quantize_before_move(&mut self, n: &pb::NodeProto) {
        let (src, out) = (super::input(n, 0), output(n));
        if self.uses.get(src) != Some(&1) || self.uses.get(out.as_str()) != Some(&1) {
            return;
        }
        let Some(Val::PendingConvNorm { .. }) = self.vals.get(src) else { return };
        let Some(q) = self.graph.node.iter().find(|m| m.input.first() == Some(&out)) else { return };
        let Some((s, z)) = (q.op_type == "QuantizeLinear").then(|| self.qparams(q)).flatten() else { return };
        let Some(Val::PendingConvNorm { conv, scale, bias, eps, steps }) = self.vals.get(src).cloned() else { return };
        if let Some(t) = self.quantized_conv_norm(*conv, scale, bias, eps, &steps, s, z) {
            self.vals.insert(src.to_string(), Val::Int(t));
            self.float_views.insert(src.to_string());
        }
    }

    pub(super) fn data_movement(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let Ok(op) = float::float_op(n, self.opset, self.graph) else { return Ok(false) };
        if n.op_type != "Concat" {
            self.quantize_before_move(n);
        }
        let data_inputs = if n.op_type == "Concat" { n.input.len() } else { 1 };
        let mut args = Vec::with_capacity(n.input.len());
        for (i, name) in n.input.iter().enumerate() {
            args.push(if i < data_inputs {
                match self.move_of(name) {
                    Some(m) => MoveArg::Move(m),
                    None => return Ok(false),
                }
            } else if name.is_empty() {
                MoveArg::Const(ArrayD::zeros(IxDyn(&[0])))
            } else {
                match self.konst(name) {
                    Some(c) => {
                        MoveArg::Const(ArrayD::from_shape_vec(IxDyn(&c.shape), c.data).map_err(|e| unsupported(format!("{name}: {e}")))?)
                    }
                    None => return Ok(false),
                }
            });
        }
        self.vals.insert(output(n), Val::PendingMove(Box::new(Move::Op { op, args, name: n.name.clone() })));
        Ok(true)
    }

    /// Runs `m` on index arrays: each element of the result says which byte of which
    /// source tensor it is (channels-last offsets after each tensor's base).
    pub(super) fn move_indices(&self, m: &Move, srcs: &[usize], bases: &[usize]) -> Result<ArrayD<f32>> {
        match m {
            Move::Tensor(t) => {
                let k = srcs.iter().position(|s| s == t).expect("listed by Move::tensors");
                let (c, pixels) = (self.tensors[*t].c, self.tensors[*t].h * self.tensors[*t].w);
                // NC... order: element (ch, p) is byte p * c + ch of the channels-last tensor.
                let v: Vec<f32> = (0..c).flat_map(|ch| (0..pixels).map(move |p| (bases[k] + p * c + ch) as f32)).collect();
                Ok(ArrayD::from_shape_vec(IxDyn(&self.shapes[*t]), v).expect("sized"))
            }
            Move::Op { op, args, name } => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(match a {
                        MoveArg::Const(c) => c.clone(),
                        MoveArg::Move(m) => self.move_indices(m, srcs, bases)?,
                    });
                }
                float::eval(op, &vals.iter().collect::<Vec<_>>()).map_err(|e| unsupported(format!("{name}: {e}")))
            }
        }
    }

    /// Data movement `m` quantised with (s, z): byte copies into a new tensor. None
    /// where the result is no tensor of the plan, or too large for exact f32 indices.
    pub(super) fn gather(&mut self, m: &Move, s: f32, z: u8) -> Result<Option<usize>> {
        let mut srcs = Vec::new();
        m.tensors(&mut srcs);
        let mut bases = Vec::with_capacity(srcs.len());
        let mut total = 0usize;
        for &t in &srcs {
            bases.push(total);
            total += self.tensors[t].len();
        }
        // Every index below 2^24 is an exact f32.
        if total >= 1 << 24 {
            return Ok(None);
        }
        let idx = self.move_indices(m, &srcs, &bases)?;
        let shape = idx.shape().to_vec();
        let Some(t) = QTensor::of_shape(&shape, s, z) else { return Ok(None) };
        let idx = idx.as_standard_layout();
        let idx = idx.as_slice().expect("standard layout");
        let (c, pixels) = (t.c, t.h * t.w);
        // The runs, and the same runs not merged across pixels (a channel concat's form).
        let (mut runs, mut pixel_runs): (Vec<GatherRun>, Vec<GatherRun>) = (Vec::new(), Vec::new());
        for p in 0..pixels {
            for ch in 0..c {
                let g = idx[ch * pixels + p] as usize;
                let k = bases.partition_point(|&b| b <= g) - 1;
                let from = (g - bases[k]) as u32;
                for (list, merge) in [(&mut runs, true), (&mut pixel_runs, ch > 0)] {
                    match list.last_mut() {
                        Some(r) if merge && r.src == k as u32 && r.from + r.len == from => r.len += 1,
                        _ => list.push(GatherRun { src: k as u32, from, len: 1 }),
                    }
                }
            }
        }
        let tables = srcs.iter().map(|&src| self.tensors[src].requant_table(s, z)).collect();
        // A run costs a call to memcpy: short runs go by pixel (a channel concat) or byte
        // by byte.
        let short = runs.len() * 16 > t.len();
        let concat = if short { channel_concat(&pixel_runs, pixels) } else { None };
        let copies = if let Some(parts) = concat {
            Copies::Channels(parts)
        } else if short {
            let mut bytes = vec![Vec::new(); srcs.len()];
            let mut o = 0u32;
            for r in &runs {
                bytes[r.src as usize].extend((0..r.len).map(|i| (o + i, r.from + i)));
                o += r.len;
            }
            Copies::Bytes(bytes)
        } else {
            Copies::Runs(runs)
        };
        let dst = self.new_tensor(t, shape);
        let what = m.names().join("+");
        self.steps.push(Step::Int(Op::Gather(Box::new(GatherOp { srcs, dst, copies, tables, what }))));
        Ok(Some(dst))
    }

    /// A data input of a node as data movement: a u8 tensor's view or a pending move.
    pub(super) fn move_of(&self, name: &str) -> Option<Move> {
        match self.vals.get(name) {
            Some(Val::Int(t)) if self.float_views.contains(name) => Some(Move::Tensor(*t)),
            Some(Val::PendingMove(m)) => Some((**m).clone()),
            _ => None,
        }
    }

    /// Data movement `m` run as float ops on dequantised tensors (for a float op that reads it).
    pub(super) fn move_to_float(&mut self, m: &Move) -> Result<usize> {
        match m {
            Move::Tensor(t) => Ok(self.dequantised(*t)),
            Move::Op { op, args, name } => {
                let mut inputs = Vec::with_capacity(args.len());
                for a in args {
                    inputs.push(match a {
                        MoveArg::Const(c) => Operand::Const(c.clone()),
                        MoveArg::Move(m) => Operand::Value(self.move_to_float(m)?),
                    });
                }
                self.push_float(op.clone(), inputs, name)
            }
        }
    }
}

/// The (source, channels) of each pixel when `runs` (merged within pixels only) are a
/// channel concat of whole tensors: pixel p is, for each part j in turn, channels
/// p c_j .. (p + 1) c_j of its source (every pixel's runs alike).
fn channel_concat(runs: &[GatherRun], pixels: usize) -> Option<Vec<(u32, u32)>> {
    if pixels == 0 || !runs.len().is_multiple_of(pixels) {
        return None;
    }
    let per = runs.len() / pixels;
    let parts: Vec<(u32, u32)> = runs[..per].iter().map(|r| (r.src, r.len)).collect();
    let regular = runs
        .chunks_exact(per)
        .enumerate()
        .all(|(p, px)| px.iter().zip(&parts).all(|(r, &(src, len))| r.src == src && r.len == len && r.from as usize == p * len as usize));
    regular.then_some(parts)
}
