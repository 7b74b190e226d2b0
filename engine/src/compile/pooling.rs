//! Rule: pooling of u8 tensors. `GlobalAveragePool` is an exact integer sum per
//! channel, rounded once by the scale and once by the mean. `ReduceMax` (a group
//! pooling over each field's rotations, after data movement that groups them) is the
//! max of bytes: dequantisation is monotone, so the max commutes with it.

use edgemed_onnx::pb;

use super::data_movement::Move;
use super::{input, output, Compiler, Val};
use crate::error::Result;
use crate::float::{self, FloatOp};
use crate::ndarray::IxDyn;
use crate::plan::{MaxGroups, Op, QTensor, Step};

impl Compiler<'_> {
    pub(super) fn global_average_pool(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        match self.int_of(inp(0)) {
            Some(src) if self.float_views.contains(inp(0)) && self.shapes[src].len() >= 3 => {
                self.vals.insert(out, Val::PendingMeanPool { src });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The mean over the spatial axes of tensor `src`, quantised with (s, z).
    pub(super) fn mean_pool(&mut self, src: usize, s: f32, z: u8) -> usize {
        let mut shape = self.shapes[src].clone();
        shape[2..].iter_mut().for_each(|d| *d = 1);
        let dst = self.new_tensor(QTensor { h: 1, w: 1, scale: s, zp: z, ..self.tensors[src] }, shape);
        self.steps.push(Step::Int(Op::MeanPool { src, dst }));
        dst
    }

    pub(super) fn reduce_max(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (out, inp) = (output(n), |i: usize| input(n, i));
        let Ok(op) = float::float_op(n, self.opset, self.graph) else { return Ok(false) };
        if !matches!(op, FloatOp::Reduce(float::Reduce::Max, ..)) {
            return Ok(false);
        }
        // Opset 18's axes input, read as the attribute (it must be a constant).
        let op = match op {
            FloatOp::Reduce(kind, None, keepdims) if !inp(1).is_empty() => match self.konst(inp(1)) {
                Some(c) => FloatOp::Reduce(kind, Some(c.data.iter().map(|&v| v as i64).collect()), keepdims),
                None => return Ok(false),
            },
            op => op,
        };
        let Some(m) = self.move_of(inp(0)) else { return Ok(false) };
        // Axes are resolved against the input's rank when the indices are built.
        self.vals.insert(out, Val::PendingMax { m: Box::new(m), op });
        Ok(true)
    }

    /// ReduceMax `op` of `m` quantised with (s, z), or None (several sources, indices
    /// too large for f32, axes out of range, a result that is no tensor of the plan).
    pub(super) fn gather_max(&mut self, m: &Move, op: &FloatOp, s: f32, z: u8) -> Result<Option<usize>> {
        let FloatOp::Reduce(float::Reduce::Max, axes, keepdims) = op else { unreachable!("a ReduceMax") };
        let mut srcs = Vec::new();
        m.tensors(&mut srcs);
        let [src] = srcs[..] else { return Ok(None) };
        let st = self.tensors[src];
        if st.len() >= 1 << 24 {
            return Ok(None);
        }
        let idx = self.move_indices(m, &srcs, &[0])?;
        // Reduced axes last: each output element's group is then contiguous, in the
        // output's order (with or without keepdims).
        let rank = idx.ndim();
        let axes: Vec<usize> = match axes {
            None => (0..rank).collect(),
            Some(a) => a.iter().map(|&v| if v < 0 { v + rank as i64 } else { v } as usize).collect(),
        };
        if axes.iter().any(|&a| a >= rank) {
            return Ok(None);
        }
        let axes = &axes[..];
        let kept: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
        let order: Vec<usize> = kept.iter().chain(axes).copied().collect();
        let group: usize = axes.iter().map(|&a| idx.shape()[a]).product();
        let shape: Vec<usize> = match *keepdims {
            true => (0..rank).map(|a| if axes.contains(&a) { 1 } else { idx.shape()[a] }).collect(),
            false => kept.iter().map(|&a| idx.shape()[a]).collect(),
        };
        let grouped = idx.permuted_axes(IxDyn(&order)).as_standard_layout().into_owned();
        let grouped = grouped.as_slice().expect("standard layout");
        let Some(t) = QTensor::of_shape(&shape, s, z) else { return Ok(None) };
        let (c, pixels) = (t.c, t.h * t.w);
        let mut index = Vec::with_capacity(t.len() * group);
        for p in 0..pixels {
            for ch in 0..c {
                let nc = ch * pixels + p;
                index.extend(grouped[nc * group..(nc + 1) * group].iter().map(|&v| v as u32));
            }
        }
        let table = st.requant_table(s, z);
        // Each field's rotations side by side (escnn's layout, channels last): read in
        // place, without the index.
        let index = if index.iter().enumerate().all(|(i, &v)| v as usize == i) && index.len() == st.len() {
            MaxGroups::Contiguous
        } else {
            MaxGroups::Indexed(index)
        };
        let dst = self.new_tensor(t, shape);
        self.steps.push(Step::Int(Op::GatherMax { src, dst, group, index, table }));
        Ok(Some(dst))
    }
}
