//! Byte ops without arithmetic, on any ISA: the max over groups of bytes (a group
//! pooling over each field's rotations) and bytes mapped through 256-entry tables (a
//! multiplication by a constant, such as a circular mask), the tables made by the
//! compiler. Plain loops the compiler vectorises; the layouts that let them copy,
//! fill or read in place are found once, at compile time.

/// Where the groups of a group pooling (the plan's `GatherMax`) lie in its source.
#[derive(Debug, Clone, PartialEq)]
pub enum MaxGroups {
    /// Group j is src bytes j group..(j + 1) group: a group pooling over the rotations
    /// of escnn's fields, N consecutive channels, stays contiguous channels last.
    Contiguous,
    /// Group j is src bytes `index[j group..(j + 1) group]`.
    Indexed(Vec<u32>),
}

/// Which table of a multiplication by a constant (the plan's `Multiply`) each byte
/// goes through, and what each table is.
#[derive(Debug, Clone)]
pub struct Factors {
    /// The table of each pixel (`per_pixel`: a factor the same across channels, as a
    /// spatial mask's), else of each byte.
    pub select: Vec<u8>,
    pub per_pixel: bool,
    /// What table k does to a byte: found once, so that a mask's pixels copy or fill.
    pub maps: Vec<ByteMap>,
}

/// What a 256-entry table does to bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ByteMap {
    /// table[v] = v: a copy.
    Same,
    /// table[v] = b for every v: a fill.
    Fill(u8),
    /// Anything else: a lookup per byte.
    Table,
}

impl ByteMap {
    /// What `table` (256 entries) does.
    pub fn of(table: &[u8]) -> ByteMap {
        if table.iter().enumerate().all(|(v, &t)| t as usize == v) {
            ByteMap::Same
        } else if table.iter().all(|&t| t == table[0]) {
            ByteMap::Fill(table[0])
        } else {
            ByteMap::Table
        }
    }
}

/// out[j] = max of group j of `x` ([`MaxGroups`]), through `table` where given (the
/// output's own quantisation: the max commutes with a monotone map).
pub fn max_groups(x: &[u8], group: usize, groups: &MaxGroups, table: Option<&[u8]>, out: &mut [u8]) {
    assert!(group > 0);
    match groups {
        MaxGroups::Contiguous => {
            assert!(x.len() >= out.len() * group, "fewer source bytes than groups");
            match group {
                4 => max_of::<4>(x, out),
                8 => max_of::<8>(x, out),
                16 => max_of::<16>(x, out),
                _ => out.iter_mut().zip(x.chunks_exact(group)).for_each(|(o, g)| *o = g.iter().fold(0, |m, &v| m.max(v))),
            }
        }
        MaxGroups::Indexed(index) => {
            assert!(index.len() >= out.len() * group, "fewer indices than groups");
            for (o, g) in out.iter_mut().zip(index.chunks_exact(group)) {
                *o = g.iter().fold(0u8, |m, &i| m.max(x[i as usize]));
            }
        }
    }
    if let Some(t) = table {
        let t: &[u8; 256] = t.try_into().expect("a 256-entry table");
        out.iter_mut().for_each(|o| *o = t[*o as usize]);
    }
}

/// Groups of `G` bytes, G a multiple of 4: each 4 bytes read as one little-endian u32
/// and its bytes' max taken in 32-bit lanes (shifts, masks, `max`), so that the loop
/// vectorises without byte shuffles (as bytes of a stride-4 group, it ran about 3
/// cycles an output: a C4 model's 4000 outputs took 3.7 us with their table, as
/// words 1.4-1.5).
fn max_of<const G: usize>(x: &[u8], out: &mut [u8]) {
    const { assert!(G.is_multiple_of(4)) };
    let max4 = |w: u32| (w & 0xff).max((w >> 8) & 0xff).max(((w >> 16) & 0xff).max(w >> 24));
    for (o, g) in out.iter_mut().zip(x.chunks_exact(G)) {
        let m = g.chunks_exact(4).fold(0, |m, q| m.max(max4(u32::from_le_bytes(q.try_into().expect("four bytes")))));
        *o = m as u8;
    }
}

/// out = x through the tables of `f` (`tables`: 256 entries per factor); `c` bytes a
/// pixel. Per pixel, a table that is the identity copies the pixel and a constant one
/// fills it (a mask's inside and outside).
pub fn map_bytes(x: &[u8], c: usize, tables: &[u8], f: &Factors, out: &mut [u8]) {
    assert!(x.len() >= out.len() && tables.len() >= f.maps.len() * 256);
    let table = |k: u8| -> &[u8; 256] { tables[k as usize * 256..][..256].try_into().expect("256 entries") };
    if f.per_pixel {
        assert!(c > 0 && f.select.len() * c >= out.len());
        for ((o, v), &k) in out.chunks_mut(c).zip(x.chunks(c)).zip(&f.select) {
            match f.maps[k as usize] {
                ByteMap::Same => o.copy_from_slice(&v[..o.len()]),
                ByteMap::Fill(b) => o.fill(b),
                ByteMap::Table => {
                    let t = table(k);
                    o.iter_mut().zip(v).for_each(|(o, &v)| *o = t[v as usize]);
                }
            }
        }
    } else {
        assert!(f.select.len() >= out.len());
        for ((o, &v), &k) in out.iter_mut().zip(x).zip(&f.select) {
            *o = tables[k as usize * 256 + v as usize];
        }
    }
}

/// Channels `at..at + w` of each `c`-byte pixel of `out` from the `w`-byte pixels of
/// `src` (a channel concat), each byte mapped through `table` when given (a source on
/// another grid). The common widths are compile-time constants, so that a pixel's
/// bytes move as one load and store rather than a copy call: a U-Net's 4 + 4-channel
/// concat at 16^3 took 21 us that way.
pub fn copy_channels(src: &[u8], w: usize, table: Option<&[u8; 256]>, out: &mut [u8], c: usize, at: usize) {
    // Inlined with `w` a constant at the common widths below.
    #[inline(always)]
    fn pixels(src: &[u8], w: usize, table: Option<&[u8; 256]>, out: &mut [u8], c: usize, at: usize) {
        let dst = out.chunks_exact_mut(c).map(|o| &mut o[at..at + w]);
        match table {
            None => dst.zip(src.chunks_exact(w)).for_each(|(d, v)| d.copy_from_slice(v)),
            Some(t) => dst.zip(src.chunks_exact(w)).for_each(|(d, v)| d.iter_mut().zip(v).for_each(|(d, &v)| *d = t[v as usize])),
        }
    }
    assert!(w > 0 && at + w <= c && src.len() / w >= out.len() / c, "{w} channels at {at} of {c}");
    match w {
        1 => pixels(src, 1, table, out, c, at),
        2 => pixels(src, 2, table, out, c, at),
        3 => pixels(src, 3, table, out, c, at),
        4 => pixels(src, 4, table, out, c, at),
        8 => pixels(src, 8, table, out, c, at),
        16 => pixels(src, 16, table, out, c, at),
        _ => pixels(src, w, table, out, c, at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testgen::Lcg;

    /// Each width (the constant ones and the others) puts every source pixel's bytes,
    /// through the table when given, at its channels of the destination pixel, and
    /// leaves the other channels alone.
    #[test]
    fn copied_channels_land_at_their_offset() {
        let mut s = Lcg::new(33);
        for _ in 0..300 {
            let w = 1 + s.below(18);
            let (at, rest) = (s.below(5), s.below(5));
            let c = at + w + rest;
            let n = s.below(40);
            let src: Vec<u8> = (0..n * w).map(|_| s.u8()).collect();
            let table: Option<[u8; 256]> = s.coin().then(|| std::array::from_fn(|_| s.u8()));
            let mut out = vec![0xa5u8; n * c];
            copy_channels(&src, w, table.as_ref(), &mut out, c, at);
            for p in 0..n {
                for ch in 0..c {
                    let want = if (at..at + w).contains(&ch) {
                        let v = src[p * w + ch - at];
                        table.map_or(v, |t| t[v as usize])
                    } else {
                        0xa5
                    };
                    assert_eq!(out[p * c + ch], want, "pixel {p} channel {ch}: {w} channels at {at} of {c}");
                }
            }
        }
    }

    /// Contiguous groups read in place give what the same groups through an index
    /// give, for every group width (the word-wise widths 4, 8 and 16 and the others),
    /// with and without the output's table.
    #[test]
    fn contiguous_groups_equal_their_index() {
        let mut s = Lcg::new(21);
        for round in 0..200 {
            let group = 1 + s.below(20);
            let n = s.below(70);
            // Bytes near 255 and 0 too: the max must not wrap or lose the top byte.
            let x: Vec<u8> =
                (0..n * group + s.below(3)).map(|_| if s.coin() { s.u8() } else { s.pick(&[0, 1, 127, 128, 254, 255]) }).collect();
            let table: Option<Vec<u8>> = s.coin().then(|| (0..256).map(|_| s.u8()).collect());
            let index = MaxGroups::Indexed((0..(n * group) as u32).collect());
            let (mut a, mut b) = (vec![7u8; n], vec![9u8; n]);
            max_groups(&x, group, &MaxGroups::Contiguous, table.as_deref(), &mut a);
            max_groups(&x, group, &index, table.as_deref(), &mut b);
            assert_eq!(a, b, "round {round}: group {group}, {n} outputs");
            // And the max itself, unmapped.
            if table.is_none() {
                let expect: Vec<u8> = x.chunks_exact(group).take(n).map(|g| *g.iter().max().unwrap()).collect();
                assert_eq!(a, expect, "round {round}: group {group}");
            }
        }
    }

    /// A factor per pixel (copies, fills and lookups mixed) gives what the same
    /// factors given per byte give.
    #[test]
    fn tables_per_pixel_equal_tables_per_byte() {
        let mut s = Lcg::new(22);
        for round in 0..100 {
            let (c, pixels, k) = (1 + s.below(40), s.below(30), 1 + s.below(4));
            let tables: Vec<u8> = (0..k)
                .flat_map(|_| match s.below(3) {
                    0 => (0..=255u8).collect::<Vec<u8>>(),
                    1 => vec![s.u8(); 256],
                    _ => (0..256).map(|_| s.u8()).collect(),
                })
                .collect();
            let maps: Vec<ByteMap> = tables.chunks_exact(256).map(ByteMap::of).collect();
            let select: Vec<u8> = (0..pixels).map(|_| s.below(k) as u8).collect();
            let x: Vec<u8> = (0..pixels * c).map(|_| s.u8()).collect();
            let per_pixel = Factors { select: select.clone(), per_pixel: true, maps: maps.clone() };
            let per_byte = Factors { select: select.iter().flat_map(|&k| std::iter::repeat_n(k, c)).collect(), per_pixel: false, maps };
            let (mut a, mut b) = (vec![0u8; pixels * c], vec![1u8; pixels * c]);
            map_bytes(&x, c, &tables, &per_pixel, &mut a);
            map_bytes(&x, c, &tables, &per_byte, &mut b);
            assert_eq!(a, b, "round {round}: {c} channels, {pixels} pixels, {k} tables");
            let direct: Vec<u8> = x.iter().enumerate().map(|(j, &v)| tables[select[j / c] as usize * 256 + v as usize]).collect();
            assert_eq!(b, direct, "round {round}");
        }
    }

    #[test]
    fn byte_maps_are_found() {
        let same: Vec<u8> = (0..=255).collect();
        assert_eq!(ByteMap::of(&same), ByteMap::Same);
        assert_eq!(ByteMap::of(&[3; 256]), ByteMap::Fill(3));
        let mut almost = same.clone();
        almost[200] = 201;
        assert_eq!(ByteMap::of(&almost), ByteMap::Table);
        let mut fill = vec![3u8; 256];
        fill[255] = 4;
        assert_eq!(ByteMap::of(&fill), ByteMap::Table);
    }
}
