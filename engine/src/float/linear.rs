//! Products: Gemm and MatMul on matrices, and a direct float convolution (1-D to 3-D,
//! grouped, dilated) for convs a QDQ graph leaves in float. Sums run in a fixed
//! order without fused multiply-adds, so x86-64, aarch64 and armv7 agree bit for bit.

use crate::error::Result;
use crate::ndarray::{ArrayD, IxDyn};

use super::elementwise::zip_broadcast;
use super::unsupported;

/// y = alpha op(a) op(b) + beta c (c broadcast, absent or empty: no term).
pub(super) fn gemm(
    x: &ArrayD<f32>,
    b: &ArrayD<f32>,
    c: Option<&ArrayD<f32>>,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
) -> Result<ArrayD<f32>> {
    let a = if trans_a { x.t().to_owned() } else { x.clone() };
    let b = if trans_b { b.t().to_owned() } else { b.clone() };
    let mut y = matmul2(&a, &b)?;
    if alpha != 1.0 {
        y.mapv_inplace(|v| v * alpha);
    }
    match c.filter(|c| !c.is_empty()) {
        Some(c) => zip_broadcast(&y, c, |v, c| v + beta * c),
        None => Ok(y),
    }
}

/// acc[m][n] = Σ_k a[m][k] b[k][n], in k order (no fused multiply-add).
pub(super) fn matmul2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[0] {
        return Err(unsupported(format!("matrix product of {sa:?} and {sb:?}")));
    }
    let (m, k, n) = (sa[0], sa[1], sb[1]);
    let mut out = ArrayD::zeros(IxDyn(&[m, n]));
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for kk in 0..k {
                s += a[[i, kk]] * b[[kk, j]];
            }
            out[[i, j]] = s;
        }
    }
    Ok(out)
}

/// A direct float convolution, 1-D to 3-D (as 3-D with unit depth/height), for convs a
/// QDQ graph leaves in float. Sums in a fixed order, without fused multiply-adds.
pub(super) fn conv(
    x: &ArrayD<f32>,
    w: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    group: usize,
) -> Result<ArrayD<f32>> {
    let r = x.ndim();
    if !(3..=5).contains(&r) || w.ndim() != r || x.shape()[0] != 1 {
        return Err(unsupported(format!("float Conv of {:?} with weights {:?}", x.shape(), w.shape())));
    }
    let sp = r - 2;
    let get = |v: &[usize], i: usize, d: usize| v.get(i).copied().unwrap_or(d);
    // Spatial sizes padded to 3 axes in front.
    let lift = |s: &[usize]| -> [usize; 3] {
        let mut o = [1; 3];
        o[3 - s.len()..].copy_from_slice(s);
        o
    };
    let (cin, cout) = (x.shape()[1], w.shape()[0]);
    let cin_g = w.shape()[1];
    if group == 0 || cin != cin_g * group || cout % group != 0 || bias.is_some_and(|b| b.len() != cout) {
        return Err(unsupported(format!("float Conv: {cin} input channels, weights {:?}, group {group}", w.shape())));
    }
    let inp = lift(&x.shape()[2..]);
    let k = lift(&w.shape()[2..]);
    let (mut st, mut pb, mut pe, mut dl) = ([1; 3], [0; 3], [0; 3], [1; 3]);
    for i in 0..sp {
        let a = 3 - sp + i;
        st[a] = get(strides, i, 1).max(1);
        dl[a] = get(dilations, i, 1).max(1);
        pb[a] = get(pads, i, 0);
        pe[a] = get(pads, i + sp, 0);
    }
    let mut out = [1usize; 3];
    for a in 0..3 {
        let span = dl[a] * (k[a] - 1) + 1;
        let padded = inp[a] + pb[a] + pe[a];
        if padded < span {
            return Err(unsupported("float Conv: kernel larger than the padded input"));
        }
        out[a] = (padded - span) / st[a] + 1;
    }
    let (xs, ws) = (x.as_standard_layout(), w.as_standard_layout());
    let (xd, wd) = (xs.as_slice().expect("standard"), ws.as_slice().expect("standard"));
    let cout_g = cout / group;
    let kvol = k[0] * k[1] * k[2];
    let ivol = inp[0] * inp[1] * inp[2];
    let ovol = out[0] * out[1] * out[2];
    let mut y = vec![0f32; cout * ovol];
    for oc in 0..cout {
        let g = oc / cout_g;
        let b = bias.map_or(0.0, |b| b.as_slice().map_or_else(|| b.iter().nth(oc).copied().unwrap_or(0.0), |s| s[oc]));
        for oz in 0..out[0] {
            for oy in 0..out[1] {
                for ox in 0..out[2] {
                    let mut s = 0f32;
                    for ic in 0..cin_g {
                        let xc = &xd[(g * cin_g + ic) * ivol..][..ivol];
                        let wk = &wd[(oc * cin_g + ic) * kvol..][..kvol];
                        for a in 0..k[0] {
                            let iz = (oz * st[0] + a * dl[0]) as isize - pb[0] as isize;
                            if iz < 0 || iz >= inp[0] as isize {
                                continue;
                            }
                            for bb in 0..k[1] {
                                let iy = (oy * st[1] + bb * dl[1]) as isize - pb[1] as isize;
                                if iy < 0 || iy >= inp[1] as isize {
                                    continue;
                                }
                                for cc in 0..k[2] {
                                    let ix = (ox * st[2] + cc * dl[2]) as isize - pb[2] as isize;
                                    if ix < 0 || ix >= inp[2] as isize {
                                        continue;
                                    }
                                    s += xc[(iz as usize * inp[1] + iy as usize) * inp[2] + ix as usize] * wk[(a * k[1] + bb) * k[2] + cc];
                                }
                            }
                        }
                    }
                    y[(oc * out[0] + oz) * out[1] * out[2] + oy * out[2] + ox] = s + b;
                }
            }
        }
    }
    let mut shape = vec![1, cout];
    shape.extend_from_slice(&out[3 - sp..]);
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), y).expect("sized"))
}

/// A transposed convolution's attributes, each per spatial axis (absent: 1 or 0).
pub(super) struct TransposedGeometry<'a> {
    pub strides: &'a [usize],
    pub pads: &'a [usize],
    pub dilations: &'a [usize],
    pub output_padding: &'a [usize],
    pub group: usize,
}

/// A direct float transposed convolution, 1-D to 3-D (lifted to 3-D like [`conv`]):
/// each input element scatters into the outputs its taps reach, input channels and
/// taps in a fixed order, so the sums are the same on every machine. Output size per
/// axis: stride (in - 1) + output_padding + dilation (k - 1) + 1 - pads.
pub(super) fn conv_transpose(
    x: &ArrayD<f32>,
    w: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    g: &TransposedGeometry<'_>,
) -> Result<ArrayD<f32>> {
    let r = x.ndim();
    if !(3..=5).contains(&r) || w.ndim() != r || x.shape()[0] != 1 {
        return Err(unsupported(format!("float ConvTranspose of {:?} with weights {:?}", x.shape(), w.shape())));
    }
    let sp = r - 2;
    let group = g.group;
    let (cin, cout_g) = (x.shape()[1], w.shape()[1]);
    let cout = cout_g * group;
    if group == 0 || w.shape()[0] != cin || cin % group != 0 || bias.is_some_and(|b| b.len() != cout) {
        return Err(unsupported(format!("float ConvTranspose: {cin} input channels, weights {:?}, group {group}", w.shape())));
    }
    let get = |v: &[usize], i: usize, d: usize| v.get(i).copied().unwrap_or(d);
    let lift = |s: &[usize]| -> [usize; 3] {
        let mut o = [1; 3];
        o[3 - s.len()..].copy_from_slice(s);
        o
    };
    let inp = lift(&x.shape()[2..]);
    let k = lift(&w.shape()[2..]);
    let (mut st, mut pb, mut pe, mut dl, mut op) = ([1; 3], [0; 3], [0; 3], [1; 3], [0; 3]);
    for i in 0..sp {
        let a = 3 - sp + i;
        st[a] = get(g.strides, i, 1).max(1);
        dl[a] = get(g.dilations, i, 1).max(1);
        pb[a] = get(g.pads, i, 0);
        pe[a] = get(g.pads, i + sp, 0);
        op[a] = get(g.output_padding, i, 0);
    }
    let mut out = [1usize; 3];
    for a in 0..3 {
        let full = st[a] * (inp[a] - 1) + op[a] + dl[a] * (k[a] - 1) + 1;
        out[a] = full
            .checked_sub(pb[a] + pe[a])
            .filter(|&o| o > 0)
            .ok_or_else(|| unsupported("float ConvTranspose: pads larger than the output"))?;
    }
    let (xs, ws) = (x.as_standard_layout(), w.as_standard_layout());
    let (xd, wd) = (xs.as_slice().expect("standard"), ws.as_slice().expect("standard"));
    let cin_g = cin / group;
    let kvol = k[0] * k[1] * k[2];
    let ivol = inp[0] * inp[1] * inp[2];
    let ovol = out[0] * out[1] * out[2];
    let mut y = vec![0f32; cout * ovol];
    // Output coordinate of input position i and tap t on axis a, if inside the output.
    let at = |a: usize, i: usize, t: usize| -> Option<usize> {
        let o = (i * st[a] + t * dl[a]).checked_sub(pb[a])?;
        (o < out[a]).then_some(o)
    };
    for ic in 0..cin {
        let gi = ic / cin_g;
        let xc = &xd[ic * ivol..][..ivol];
        for ocl in 0..cout_g {
            let oc = gi * cout_g + ocl;
            let wk = &wd[(ic * cout_g + ocl) * kvol..][..kvol];
            let yc = &mut y[oc * ovol..][..ovol];
            for iz in 0..inp[0] {
                for iy in 0..inp[1] {
                    for ix in 0..inp[2] {
                        let v = xc[(iz * inp[1] + iy) * inp[2] + ix];
                        for a in 0..k[0] {
                            let Some(oz) = at(0, iz, a) else { continue };
                            for b in 0..k[1] {
                                let Some(oy) = at(1, iy, b) else { continue };
                                for c in 0..k[2] {
                                    let Some(ox) = at(2, ix, c) else { continue };
                                    yc[(oz * out[1] + oy) * out[2] + ox] += v * wk[(a * k[1] + b) * k[2] + c];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(b) = bias {
        for (oc, &bv) in b.iter().enumerate() {
            y[oc * ovol..][..ovol].iter_mut().for_each(|v| *v += bv);
        }
    }
    let mut shape = vec![1, cout];
    shape.extend_from_slice(&out[3 - sp..]);
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), y).expect("sized"))
}
