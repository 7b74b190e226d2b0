//! Rule: shape computations, folded at compile time for the batch being run.
//!
//! torch's exporters write a dynamic batch as arithmetic on shapes: escnn's group
//! pooling `y.view(b, c // N, N, h, w)` becomes Shape -> Gather -> Unsqueeze -> Concat
//! -> Reshape (legacy exporter, with Cast and Div on the way), the dynamo exporter
//! Shape with start/end, Slice, Concat, Range, ConstantOfShape, Expand, Where... The
//! plan is compiled for batch 1 with every other size fixed, so every shape is known
//! here: `Shape` and `Size` of any value become integer constants ([`Compiler::shape_of`]
//! reads the shape of pending integer patterns without computing them), and the float
//! nodes after them fold as constants (`float_node`), with ONNX's integer semantics
//! where their inputs are integer tensors ([`Compiler::fold`]). A Reshape whose shape
//! is then a constant is data movement again, so a u8 tensor's group pooling still
//! reaches the integer ReduceMax.
//!
//! `CastLike`, which reads only its second input's type, is here too: its constants
//! stay constants.
//!
//! What does not fold depends on the input data: [`Compiler::static_shape_inputs`]
//! refuses a node whose shape-giving input is such a value, naming both, rather than
//! planning a size the data may change.

use edgemed_onnx::{attr, pb, tensor};

use super::data_movement::{Move, MoveArg};
use super::{input, output, unsupported, Compiler, Const, Val};
use crate::error::Result;
use crate::float::{self, Binary, FloatOp, Operand};
use crate::ndarray::{ArrayD, IxDyn};

/// The inputs of an op that give a shape, sizes, indices of axes or counts: they must
/// be constants once shapes are folded, for the plan's sizes to be fixed.
fn shape_inputs(op_type: &str) -> &'static [usize] {
    match op_type {
        "Reshape" | "Expand" | "Tile" | "Squeeze" | "Unsqueeze" | "Split" | "TopK" | "OneHot" | "Upsample" => &[1],
        "ReduceMax" | "ReduceMin" | "ReduceSum" | "ReduceMean" | "ReduceProd" | "ReduceL1" | "ReduceL2" => &[1],
        "ConstantOfShape" => &[0],
        "Range" => &[0, 1, 2],
        "Slice" => &[1, 2, 3, 4],
        "Pad" | "Resize" => &[1, 2, 3],
        _ => &[],
    }
}

/// Whether input `i` of `n` is read for its values: Shape and Size read only their
/// input's shape, CastLike only its second input's type. (A conv whose shape is taken
/// still has one reader and fuses its activation.)
pub(super) fn reads_data(n: &pb::NodeProto, i: usize) -> bool {
    !(matches!(n.op_type.as_str(), "Shape" | "Size") || n.op_type == "CastLike" && i == 1)
}

/// Whether ONNX type `t` holds integers (bools included: their 0 and 1 are exact).
fn integer_type(t: i32) -> bool {
    use pb::tensor_proto::DataType as T;
    matches!(T::try_from(t), Ok(T::Int8 | T::Uint8 | T::Int16 | T::Uint16 | T::Int32 | T::Uint32 | T::Int64 | T::Uint64 | T::Bool))
}

impl Compiler<'_> {
    /// `Shape` (with opset 15's `start` and `end`) and `Size` of a value whose shape the
    /// compiler knows: an integer constant. Never declines: a Shape the interpreter
    /// cannot run either is refused here with its reason.
    pub(super) fn shape(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let shape = self.shape_of(input(n, 0)).map_err(|e| unsupported(format!("{} ({}): {e}", n.name, n.op_type)))?;
        let dims: Vec<f32> = shape.iter().map(|&d| d as f32).collect();
        let c = if n.op_type == "Size" {
            Const { shape: vec![], data: vec![dims.iter().product()], int8: None, integer: true }
        } else {
            // Negative bounds count from the end; both are clamped to [0, rank].
            let rank = dims.len() as i64;
            let bound = |name: &str, default: i64| {
                let v = attr::int(n, name, default);
                (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize
            };
            let (start, end) = (bound("start", 0), bound("end", rank));
            let data = dims[start..end.max(start)].to_vec();
            Const { shape: vec![data.len()], data, int8: None, integer: true }
        };
        self.vals.insert(output(n), Val::Const(c));
        Ok(true)
    }

    /// `CastLike(x, like)`: x in like's type, which is all that is read of like (the
    /// dynamo exporter casts every Clip bound and fill value like the tensor it meets).
    /// A constant stays a constant (truncated where like is an integer tensor), so a
    /// Clip's bounds still fuse into its conv; a value is passed on as `Identity` does.
    pub(super) fn cast_like(&mut self, n: &pb::NodeProto) -> Result<bool> {
        let (x, out) = (input(n, 0), output(n));
        let integer = self.is_integer(input(n, 1));
        if let Some(mut c) = self.konst(x) {
            if integer && !c.integer {
                c.data = float::eval(
                    &FloatOp::Cast(float::CastTo::Int),
                    &[&ArrayD::from_shape_vec(IxDyn(&c.shape), c.data).map_err(|e| unsupported(format!("{}: {e}", n.name)))?],
                )?
                .iter()
                .copied()
                .collect();
                c.int8 = None;
            }
            c.integer = integer;
            self.vals.insert(out, Val::Const(c));
            return Ok(true);
        }
        if integer {
            let f = self.float_of(x)?;
            let d = self.push_float(FloatOp::Cast(float::CastTo::Int), vec![Operand::Value(f)], &n.name)?;
            self.vals.insert(out, Val::Float(d));
            return Ok(true);
        }
        self.identity(n)
    }

    /// The NC... shape of value `name` at batch 1, without computing it: pending convs,
    /// tables, moves and pools keep their integer form.
    pub(super) fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        let pooled = |mut s: Vec<usize>| {
            s.iter_mut().skip(2).for_each(|d| *d = 1);
            s
        };
        Ok(match self.vals.get(name) {
            Some(Val::Const(c)) => c.shape.clone(),
            Some(Val::Int(t)) => self.shapes[*t].clone(),
            Some(Val::Float(f)) => self.float_shapes[*f].clone(),
            Some(Val::PendingConv { conv }) | Some(Val::PendingConvNorm { conv, .. }) => conv.shape.clone(),
            // Tables, adds of two equal shapes, products by a factor that broadcasts
            // to the tensor, and normalisations keep their source's shape.
            Some(
                Val::PendingMap { src, .. } | Val::PendingAdd { a: src, .. } | Val::PendingMul { src, .. } | Val::PendingNorm { src, .. },
            ) => self.shapes[*src].clone(),
            Some(Val::PendingMeanPool { src }) => pooled(self.shapes[*src].clone()),
            Some(Val::PendingMove(m) | Val::QuantizedMove(m)) => self.move_zeros(m)?.shape().to_vec(),
            Some(Val::PendingMax { m, op }) => {
                let z = self.move_zeros(m)?;
                float::eval(op, &[&z])?.shape().to_vec()
            }
            None => match self.inits.get(name) {
                Some(t) => t.dims.iter().map(|&d| d.max(0) as usize).collect(),
                None => return Err(unsupported(format!("the shape of {name:?} is not known when compiling"))),
            },
        })
    }

    /// Data movement `m` run on zeros of its sources' shapes (only its shape is read).
    fn move_zeros(&self, m: &Move) -> Result<ArrayD<f32>> {
        match m {
            Move::Tensor(t) => Ok(ArrayD::zeros(IxDyn(&self.shapes[*t]))),
            Move::Op { op, args, name } => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(match a {
                        MoveArg::Const(c) => c.clone(),
                        MoveArg::Move(m) => self.move_zeros(m)?,
                    });
                }
                float::eval(op, &vals.iter().collect::<Vec<_>>()).map_err(|e| unsupported(format!("{name}: {e}")))
            }
        }
    }

    /// Whether `name` is an integer-typed constant (a folded shape, an int64 initializer
    /// or Constant): the ops folding it follow ONNX's integer semantics.
    pub(super) fn is_integer(&self, name: &str) -> bool {
        match self.vals.get(name) {
            Some(Val::Const(c)) => c.integer,
            Some(_) => false,
            None => self.inits.get(name).is_some_and(|t| integer_type(t.data_type)),
        }
    }

    /// Refuses float node `n` when an input that gives a shape (Reshape's, Expand's,
    /// Slice's bounds...) is not a constant: it was computed from the input data, and
    /// the plan's sizes are fixed when it is compiled.
    pub(super) fn static_shape_inputs(&self, n: &pb::NodeProto) -> Result<()> {
        for &i in shape_inputs(&n.op_type) {
            let name = input(n, i);
            if !name.is_empty() && self.konst(name).is_none() {
                return Err(unsupported(format!(
                    "{} ({}): input {i} ({name}) depends on the input data, not only on shapes, so the output's size \
                     is not known when compiling",
                    n.name, n.op_type
                )));
            }
        }
        Ok(())
    }

    /// Float node `n` on constants `args` (in input order), folded: ONNX's integer
    /// semantics where its inputs are integer tensors (Div truncates), and the result
    /// remembers whether it is one.
    pub(super) fn fold(&self, n: &pb::NodeProto, op: FloatOp, args: &[&ArrayD<f32>]) -> Result<Const> {
        let int: Vec<bool> = n.input.iter().map(|i| !i.is_empty() && self.is_integer(i)).collect();
        let first = int.first().copied().unwrap_or(false);
        let op = match op {
            FloatOp::Binary(Binary::Div) if first && int.get(1) == Some(&true) => FloatOp::Binary(Binary::IntDiv),
            op => op,
        };
        let integer = match &op {
            FloatOp::Cast(to) => *to != float::CastTo::Float,
            FloatOp::Binary(Binary::Equal | Binary::Less | Binary::Greater) => true,
            FloatOp::Where => int.get(1) == Some(&true),
            FloatOp::ConstantOfShape(_) => attr::attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .and_then(|t| tensor::decode(t).ok())
                .is_some_and(|d| integer_type(d.data_type as i32)),
            // The output has the type of the (first) data input: arithmetic, Range,
            // Gather, Reshape, Concat, Slice, Squeeze, Expand, Pad...
            _ => first,
        };
        let v = float::eval(&op, args).map_err(|e| unsupported(format!("{}: {e}", n.name)))?;
        Ok(Const { shape: v.shape().to_vec(), data: v.iter().copied().collect(), int8: None, integer })
    }
}
