//! Sliding-window inference with MONAI's `sliding_window_inference` semantics
//! (MONAI 1.6.1; the rules and the source lines they come from are in
//! tests/fixtures/unet/MONAI_SEMANTICS.txt):
//!
//! - dimensions smaller than the ROI are padded with a constant, the odd voxel at
//!   the end (`lo = diff / 2`, `hi = diff - lo`);
//! - the scan interval is `max(trunc(roi * (1 - overlap)), 1)`, or `roi` where the
//!   ROI equals the (padded) image;
//! - per dimension the starts are `k * interval`, the last one clamped flush with the
//!   end; windows are visited in C order (first dimension slowest);
//! - each prediction is weighted by an importance map (ones, or a separable gaussian
//!   with sigma = sigma_scale * roi, clamped below at max(min, 1e-3)), summed, and
//!   divided by the summed weights, all in float32 and in window order, so the result
//!   equals MONAI's to float rounding.
//!
//! Unlike MONAI the output is not held whole: windows are visited first-dimension
//! slowest, so once every window starting at a given first-axis position has been
//! added, the rows before the next start are final. They are divided, cropped and
//! handed to a sink, and only a slab of about roi + interval rows is ever kept.

use crate::error::{Error, Result};
use crate::ndarray::{ArrayD, ArrayViewD, Axis, Dimension, IxDyn, Slice};

/// How overlapping window predictions are blended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Blend {
    Constant,
    Gaussian { sigma_scale: f32 },
}

impl std::str::FromStr for Blend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Blend::Constant),
            "gaussian" => Ok(Blend::Gaussian { sigma_scale: 0.125 }),
            _ => Err(Error::Invalid(format!("unknown blend mode {s:?}: expected constant or gaussian"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// Window size per spatial dimension.
    pub roi: Vec<usize>,
    /// Fraction of a window shared with the next one, in [0, 1).
    pub overlap: f64,
    pub blend: Blend,
    /// Value of the padding added where the image is smaller than the window.
    pub pad_value: f32,
}

/// Where the windows go for one image size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub image: Vec<usize>,
    /// Padding before and after, per dimension.
    pub pad: Vec<(usize, usize)>,
    pub padded: Vec<usize>,
    pub interval: Vec<usize>,
    /// Window starts per dimension (padded coordinates), in visiting order.
    pub starts: Vec<Vec<usize>>,
}

impl Plan {
    pub fn num_windows(&self) -> usize {
        self.starts.iter().map(Vec::len).product()
    }
}

impl SlidingWindow {
    pub fn new(roi: Vec<usize>, overlap: f64, blend: Blend) -> Result<Self> {
        if roi.is_empty() || roi.contains(&0) {
            return Err(Error::Invalid(format!("window size {roi:?}: every dimension must be at least 1")));
        }
        if !(0.0..1.0).contains(&overlap) {
            return Err(Error::Invalid(format!("overlap {overlap}: must be in [0, 1)")));
        }
        if let Blend::Gaussian { sigma_scale } = blend {
            if !(sigma_scale > 0.0 && sigma_scale.is_finite()) {
                return Err(Error::Invalid(format!("gaussian sigma scale {sigma_scale}: must be positive")));
            }
        }
        Ok(SlidingWindow { roi, overlap, blend, pad_value: 0.0 })
    }

    /// MONAI's padding, scan interval and window starts for an image of `image` voxels.
    pub fn plan(&self, image: &[usize]) -> Result<Plan> {
        if image.len() != self.roi.len() {
            return Err(Error::Invalid(format!(
                "window {:?} has {} dimensions, the image {:?} has {}",
                self.roi,
                self.roi.len(),
                image,
                image.len()
            )));
        }
        if image.contains(&0) {
            return Err(Error::Invalid(format!("image size {image:?} has an empty dimension")));
        }
        let pad: Vec<(usize, usize)> = image
            .iter()
            .zip(&self.roi)
            .map(|(&n, &r)| {
                let diff = r.saturating_sub(n);
                (diff / 2, diff - diff / 2)
            })
            .collect();
        let padded: Vec<usize> = image.iter().zip(&self.roi).map(|(&n, &r)| n.max(r)).collect();
        let interval: Vec<usize> = padded
            .iter()
            .zip(&self.roi)
            .map(|(&n, &r)| if r == n { r } else { ((r as f64 * (1.0 - self.overlap)) as usize).max(1) })
            .collect();
        let starts = padded
            .iter()
            .zip(&self.roi)
            .zip(&interval)
            .map(|((&n, &r), &i)| {
                // 1 + the first d with d * i + r >= n; starts clamped to n - r.
                let count = if r >= n { 1 } else { (n - r).div_ceil(i) + 1 };
                (0..count).map(|k| (k * i).min(n - r)).collect()
            })
            .collect();
        Ok(Plan { image: image.to_vec(), pad, padded, interval, starts })
    }

    /// The weight of every window voxel (shape = roi).
    pub fn importance_map(&self) -> ArrayD<f32> {
        match self.blend {
            Blend::Constant => ArrayD::ones(IxDyn(&self.roi)),
            Blend::Gaussian { sigma_scale } => {
                let factors: Vec<Vec<f32>> = self
                    .roi
                    .iter()
                    .map(|&r| {
                        let sigma = r as f64 * sigma_scale as f64;
                        let denom = (-2.0 * sigma * sigma) as f32;
                        (0..r)
                            .map(|i| {
                                let x = -((r as f32 - 1.0) / 2.0) + i as f32;
                                (x * x / denom).exp()
                            })
                            .collect()
                    })
                    .collect();
                // Outer product, built one dimension at a time as MONAI does.
                let mut map = ArrayD::from_shape_vec(IxDyn(&[self.roi[0]]), factors[0].clone()).expect("1-D");
                for f in &factors[1..] {
                    let mut shape = map.shape().to_vec();
                    shape.push(f.len());
                    let prev = map;
                    map = ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
                        let ix = ix.slice();
                        prev[IxDyn(&ix[..ix.len() - 1])] * f[ix[ix.len() - 1]]
                    });
                }
                let floor = map.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
                map.mapv_inplace(|w| w.max(floor));
                map
            }
        }
    }

    /// Runs `predict` over every window of `input` (`[channels, spatial...]`) and hands
    /// the blended output, `[out_channels, rows, rest...]` in image coordinates, to
    /// `sink` slab by slab along the first spatial axis (`sink(first_row, slab)`);
    /// `progress(done, total)` is called after each window.
    ///
    /// `predict` takes `[1, channels, roi...]` and must return `[1, out_channels, roi...]`.
    pub fn run_streaming(
        &self,
        input: ArrayViewD<f32>,
        mut predict: impl FnMut(ArrayD<f32>) -> Result<ArrayD<f32>>,
        sink: impl FnMut(usize, ArrayViewD<f32>) -> Result<()>,
        progress: impl FnMut(usize, usize),
    ) -> Result<()> {
        let (plan, weights) = self.prepare(&input)?;
        let mut windows =
            |starts: Vec<Vec<usize>>| starts.iter().map(|start| self.weighted(&input, &plan, &weights, start, &mut predict)).collect();
        self.stream(&plan, &weights, 1, &mut windows, sink, progress)
    }

    /// [`run_streaming`](Self::run_streaming) with `threads` windows side by side (one
    /// on the calling thread, the others on helper threads kept for the whole volume),
    /// each extracted, predicted, checked and weighted on its thread, then blended in
    /// window order: the same sums in the same order, so the same bits as one window at
    /// a time. For a network whose ops are too small to split well over threads (a 3-D
    /// U-Net's 32³ window: 1.2x on two threads), whole windows side by side are what
    /// keeps the cores busy.
    pub fn run_streaming_side_by_side(
        &self,
        input: ArrayViewD<f32>,
        threads: usize,
        predict: impl Fn(ArrayD<f32>) -> Result<ArrayD<f32>> + Sync,
        sink: impl FnMut(usize, ArrayViewD<f32>) -> Result<()>,
        progress: impl FnMut(usize, usize),
    ) -> Result<()> {
        if threads <= 1 {
            return self.run_streaming(input, predict, sink, progress);
        }
        let (plan, weights) = self.prepare(&input)?;
        let window = |start: Vec<usize>| self.weighted(&input, &plan, &weights, &start, &predict);
        crate::parallel::with_helpers(threads - 1, window, |helpers| {
            let group = helpers.threads();
            self.stream(&plan, &weights, group, &mut |starts| helpers.map(starts), sink, progress)
        })
    }

    /// The plan of `input`'s windows and the importance map, after checking its rank.
    fn prepare(&self, input: &ArrayViewD<f32>) -> Result<(Plan, ArrayD<f32>)> {
        let nd = self.roi.len();
        if input.ndim() != nd + 1 {
            return Err(Error::Invalid(format!(
                "sliding window over {nd} dimensions needs a [channels, {nd} spatial] input, got shape {:?}",
                input.shape()
            )));
        }
        Ok((self.plan(&input.shape()[1..])?, self.importance_map()))
    }

    /// The window at `start` predicted, checked (shape, finite values) and weighted by
    /// the importance map: `[out_channels, roi...]`, ready to be added.
    fn weighted(
        &self,
        input: &ArrayViewD<f32>,
        plan: &Plan,
        weights: &ArrayD<f32>,
        start: &[usize],
        predict: impl FnOnce(ArrayD<f32>) -> Result<ArrayD<f32>>,
    ) -> Result<ArrayD<f32>> {
        let pred = predict(self.extract(input, plan, start))?;
        if pred.ndim() != self.roi.len() + 2 || pred.shape()[0] != 1 || pred.shape()[2..] != self.roi[..] {
            let channels = pred.shape().get(1).copied().unwrap_or(0);
            return Err(Error::WrongShape { got: pred.shape().to_vec(), expected: [&[1, channels][..], &self.roi].concat() });
        }
        if pred.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: format!("model output for the window at {start:?}") });
        }
        let mut pred = pred.index_axis_move(Axis(0), 0);
        for mut c in pred.outer_iter_mut() {
            c *= weights;
        }
        Ok(pred)
    }

    /// Every window of `plan` in groups of up to `group` (consecutive windows of one
    /// first-axis start), each group's weighted predictions by `windows` (in window
    /// order, [`SlidingWindow::weighted`]), blended in window order, finished slabs to `sink`.
    fn stream(
        &self,
        plan: &Plan,
        weights: &ArrayD<f32>,
        group: usize,
        windows: &mut dyn FnMut(Vec<Vec<usize>>) -> Vec<Result<ArrayD<f32>>>,
        mut sink: impl FnMut(usize, ArrayViewD<f32>) -> Result<()>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<()> {
        let total = plan.num_windows();
        let rest: Vec<usize> = plan.padded[1..].to_vec();
        // Accumulators in padded coordinates for rows [base, base + rows).
        let mut base = 0usize;
        let mut acc: Option<ArrayD<f32>> = None; // [out_channels, rows, rest...]
        let mut count = ArrayD::<f32>::zeros(IxDyn(&[&[0usize][..], &rest].concat()));
        let mut done = 0;
        let starts0 = plan.starts[0].clone();
        let inner: Vec<Vec<usize>> = cartesian(&plan.starts[1..]);
        for (k, &s0) in starts0.iter().enumerate() {
            // Grow the slab to cover this group's windows.
            let need = s0 + self.roi[0] - base;
            if count.shape()[0] < need {
                let extra = need - count.shape()[0];
                count = grow_rows(count, 0, extra);
                acc = acc.map(|a| grow_rows(a, 1, extra));
            }
            for tails in inner.chunks(group.max(1)) {
                let starts: Vec<Vec<usize>> = tails.iter().map(|tail| std::iter::once(s0).chain(tail.iter().copied()).collect()).collect();
                let preds = windows(starts.clone());
                if preds.len() != starts.len() {
                    return Err(Error::Invalid(format!("{} predictions for {} windows", preds.len(), starts.len())));
                }
                for (start, pred) in starts.iter().zip(preds) {
                    let pred = pred?;
                    let channels = pred.shape()[0];
                    let acc_ref = acc.get_or_insert_with(|| ArrayD::zeros(IxDyn(&[&[channels, count.shape()[0]][..], &rest].concat())));
                    if acc_ref.shape()[0] != channels {
                        return Err(Error::Invalid(format!(
                            "the model returned {channels} channels for one window and {} for another",
                            acc_ref.shape()[0]
                        )));
                    }
                    let region = |d: usize| {
                        let lo = if d == 0 { s0 - base } else { start[d] };
                        Slice::from(lo..lo + self.roi[d])
                    };
                    let mut target = acc_ref.slice_each_axis_mut(|ax| if ax.axis.0 == 0 { Slice::from(..) } else { region(ax.axis.0 - 1) });
                    target += &pred;
                    let mut cnt = count.slice_each_axis_mut(|ax| region(ax.axis.0));
                    cnt += weights;
                    done += 1;
                    progress(done, total);
                }
            }
            // Rows before the next group's start are final.
            let next = starts0.get(k + 1).copied().unwrap_or(plan.padded[0]);
            let ready = next - base;
            if ready > 0 {
                let a = acc.take().expect("at least one window ran");
                let out = &a.slice_axis(Axis(1), Slice::from(..ready)) / &count.slice_axis(Axis(0), Slice::from(..ready));
                self.emit(plan, base, out.view(), &mut sink)?;
                acc = Some(a.slice_axis(Axis(1), Slice::from(ready..)).to_owned());
                count = count.slice_axis(Axis(0), Slice::from(ready..)).to_owned();
                base = next;
            }
        }
        Ok(())
    }

    /// [`run_streaming`](Self::run_streaming), collecting the whole output `[out_channels, spatial...]`.
    pub fn run(&self, input: ArrayViewD<f32>, predict: impl FnMut(ArrayD<f32>) -> Result<ArrayD<f32>>) -> Result<ArrayD<f32>> {
        let image = input.shape()[1..].to_vec();
        let mut out: Option<ArrayD<f32>> = None;
        self.run_streaming(
            input,
            predict,
            |row, slab| {
                let o = out.get_or_insert_with(|| ArrayD::zeros(IxDyn(&[&[slab.shape()[0]][..], &image].concat())));
                o.slice_axis_mut(Axis(1), Slice::from(row..row + slab.shape()[1])).assign(&slab);
                Ok(())
            },
            |_, _| {},
        )?;
        Ok(out.expect("a plan has at least one window"))
    }

    /// The window at `start` (padded coordinates) as `[1, channels, roi...]`, padding included.
    fn extract(&self, input: &ArrayViewD<f32>, plan: &Plan, start: &[usize]) -> ArrayD<f32> {
        let channels = input.shape()[0];
        let shape: Vec<usize> = [&[1usize, channels][..], &self.roi].concat();
        let mut w = ArrayD::from_elem(IxDyn(&shape), self.pad_value);
        // Intersection of the window with the image, in padded coordinates.
        let lo: Vec<usize> = (0..start.len()).map(|d| start[d].max(plan.pad[d].0)).collect();
        let hi: Vec<usize> = (0..start.len()).map(|d| (start[d] + self.roi[d]).min(plan.pad[d].0 + plan.image[d])).collect();
        let src = input.slice_each_axis(|ax| match ax.axis.0 {
            0 => Slice::from(..),
            d => Slice::from(lo[d - 1] - plan.pad[d - 1].0..hi[d - 1] - plan.pad[d - 1].0),
        });
        let mut w0 = w.index_axis_mut(Axis(0), 0);
        let mut dst = w0.slice_each_axis_mut(|ax| match ax.axis.0 {
            0 => Slice::from(..),
            d => Slice::from(lo[d - 1] - start[d - 1]..hi[d - 1] - start[d - 1]),
        });
        dst.assign(&src);
        w
    }

    /// Crops a finished slab (padded rows `base..`) to image coordinates and hands it on.
    fn emit(
        &self,
        plan: &Plan,
        base: usize,
        out: ArrayViewD<f32>,
        sink: &mut impl FnMut(usize, ArrayViewD<f32>) -> Result<()>,
    ) -> Result<()> {
        let rows = out.shape()[1];
        let (lo0, n0) = (plan.pad[0].0, plan.image[0]);
        let first = base.max(lo0);
        let last = (base + rows).min(lo0 + n0);
        if first >= last {
            return Ok(());
        }
        let cropped = out.slice_each_axis(|ax| match ax.axis.0 {
            0 => Slice::from(..),
            1 => Slice::from(first - base..last - base),
            d => Slice::from(plan.pad[d - 1].0..plan.pad[d - 1].0 + plan.image[d - 1]),
        });
        sink(first - lo0, cropped)
    }
}

/// Appends `extra` zero rows along `axis`.
fn grow_rows(a: ArrayD<f32>, axis: usize, extra: usize) -> ArrayD<f32> {
    let mut shape = a.shape().to_vec();
    shape[axis] += extra;
    let mut out = ArrayD::zeros(IxDyn(&shape));
    out.slice_axis_mut(Axis(axis), Slice::from(..a.shape()[axis])).assign(&a);
    out
}

/// Every combination of one entry per list, last list fastest (numpy meshgrid "ij" order).
fn cartesian(lists: &[Vec<usize>]) -> Vec<Vec<usize>> {
    lists.iter().fold(vec![vec![]], |acc, list| {
        acc.iter().flat_map(|prefix| list.iter().map(move |&x| [prefix.as_slice(), &[x]].concat())).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_model_returns_the_input() {
        // Any blending of an identity model is the identity, windows overlapping or not.
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 11, 7, 5]), |ix| (ix[0] * 1000 + ix[1] * 100 + ix[2] * 10 + ix[3]) as f32);
        for blend in [Blend::Constant, Blend::Gaussian { sigma_scale: 0.125 }] {
            for overlap in [0.0, 0.25, 0.6] {
                let sw = SlidingWindow::new(vec![4, 8, 3], overlap, blend).unwrap();
                let y = sw.run(x.view(), Ok).unwrap();
                let err = (&y - &x).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(err < 1e-3, "{blend:?} {overlap}: {err}");
            }
        }
    }

    /// Windows predicted side by side are blended in window order: the slabs, their
    /// rows and the progress are those of one window at a time, bit for bit, for any
    /// thread count (groups that do not divide the windows included); an error in any
    /// window of a group stops the run.
    #[test]
    fn windows_side_by_side_give_the_same_bits_as_one_at_a_time() {
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 13, 9, 6]), |ix| ((ix[1] * 7 + ix[2] * 3 + ix[3]) % 11) as f32 * 0.37 - 1.5);
        // Depends on the whole window (its sum), so a window blended at another's place
        // or with another's prediction changes the result.
        let predict = |w: ArrayD<f32>| -> Result<ArrayD<f32>> {
            let s = w.sum();
            Ok(w.mapv(|v| (v * 1.7 + s).sin() + v / 3.0))
        };
        let collect = |threads: usize, fail_at: Option<usize>| {
            let sw = SlidingWindow::new(vec![5, 4, 4], 0.4, Blend::Gaussian { sigma_scale: 0.125 }).unwrap();
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let (mut slabs, mut ticks) = (Vec::new(), Vec::new());
            let r = sw.run_streaming_side_by_side(
                x.view(),
                threads,
                |w| {
                    let k = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if Some(k) == fail_at {
                        return Err(Error::Invalid("window failed".into()));
                    }
                    predict(w)
                },
                |row, slab| {
                    slabs.push((row, slab.to_owned()));
                    Ok(())
                },
                |done, total| ticks.push((done, total)),
            );
            (r.map(|_| ()), slabs, ticks)
        };
        let (r, one, ticks) = collect(1, None);
        r.unwrap();
        assert!(ticks.len() > 20 && one.len() > 1, "{} windows, {} slabs", ticks.len(), one.len());
        for threads in [2, 3, 5] {
            let (r, slabs, t) = collect(threads, None);
            r.unwrap();
            assert_eq!(t, ticks, "{threads} threads: progress");
            assert_eq!(slabs.len(), one.len());
            for ((r0, a), (r1, b)) in one.iter().zip(&slabs) {
                assert_eq!(r0, r1);
                let same = a.iter().zip(b.iter()).all(|(u, v)| u.to_bits() == v.to_bits());
                assert!(same && a.shape() == b.shape(), "{threads} threads: slab at row {r0} differs");
            }
            let (r, _, _) = collect(threads, Some(4));
            assert!(matches!(r, Err(Error::Invalid(ref m)) if m.contains("window failed")), "{threads} threads: {r:?}");
        }
    }

    #[test]
    fn plan_pads_small_dims_and_clamps_the_last_start() {
        let sw = SlidingWindow::new(vec![32, 32, 32], 0.25, Blend::Constant).unwrap();
        let p = sw.plan(&[45, 38, 28]).unwrap();
        assert_eq!(p.pad, vec![(0, 0), (0, 0), (2, 2)]);
        assert_eq!(p.padded, vec![45, 38, 32]);
        assert_eq!(p.interval, vec![24, 24, 32]);
        assert_eq!(p.starts, vec![vec![0, 13], vec![0, 6], vec![0]]);
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(SlidingWindow::new(vec![0, 4], 0.5, Blend::Constant).is_err());
        assert!(SlidingWindow::new(vec![4, 4], 1.0, Blend::Constant).is_err());
        let sw = SlidingWindow::new(vec![4, 4], 0.5, Blend::Constant).unwrap();
        assert!(sw.plan(&[4, 4, 4]).is_err());
        let x = ArrayD::<f32>::zeros(IxDyn(&[1, 6, 6]));
        let wrong =
            sw.run(x.view(), |w| Ok(w.slice_each_axis(|ax| if ax.axis.0 == 3 { Slice::from(..2) } else { Slice::from(..) }).to_owned()));
        assert!(matches!(wrong, Err(Error::WrongShape { .. })), "{wrong:?}");
        let nan = sw.run(x.view(), |w| Ok(w.mapv(|_| f32::NAN)));
        assert!(matches!(nan, Err(Error::NonFinite { .. })), "{nan:?}");
    }
}
