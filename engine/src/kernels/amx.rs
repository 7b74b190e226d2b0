//! AMX-INT8 kernels (x86-64 with `amx-tile` and `amx-int8`: Intel Sapphire Rapids and
//! later): dense convolutions as tile products. One `tdpbusd` multiplies a tile of 16
//! pixels x 64 u8 inputs by a tile of 64 s8 inputs x 16 channels (quadruples of inputs
//! per channel, as `vpdpbusd` reads them) into 16 x 16 int32 sums: 16384
//! multiply-adds, against 1024 for one 512-bit `vpdpbusd`. The products and their sums
//! are exact integers, so the sums are the scalar reference's, and the requantisation
//! is [`avx512`]'s: the same bits.
//!
//! The tile registers are invisible to the compiler (Rust's AMX intrinsics are
//! unstable, so the instructions are inline assembly): [`dense`] configures them
//! (`ldtilecfg`) on the calling thread at its start, touches them only in its own
//! `asm!` blocks, and releases them (`tilerelease`) before it returns. Linux lends a
//! process the tile state only when asked (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which
//! [`available`] asks once, for every thread of the process.
//!
//! Layout: the weights are [`super::weights::pack_quads`]'s quadruples with each kernel
//! row padded to a whole number of 64-input tiles ([`row_pitch`]), zero past the row;
//! so an A tile may read up to 63 bytes past a kernel row (the next pixel's bytes, or
//! the gathered copy's stale bytes): they meet zero weights.

use std::arch::asm;
use std::arch::x86_64::*;

use super::avx512::{
    block_mask, block_requant, requantize_store4_from, requantize_store_channels64_from, BlockRequant, DenseOut, TileShape, Walk,
};
use super::{Isa, PackedWeights, CBLOCK};

/// Pixels (rows) of an A tile and of a C tile.
const ROWS: usize = 16;
/// Bytes of one tile row: 64 u8 inputs of A, 16 quadruples of B, 16 int32 of C.
const ROW_BYTES: usize = 64;
/// How many 64-input chunks ahead a 2-block step prefetches its weight tiles.
const PREFETCH_CHUNKS: usize = 2;

/// Whether this CPU has AMX-INT8 and the OS lends this process the tile state (asked
/// here; the answer is the process's, so call it once: [`Isa::available`] does).
pub fn available() -> bool {
    // SAFETY: CPUID leaf 7 exists on the AVX-512 CPUs this is asked on (the caller
    // checks AVX-512 first), and reading it has no other effect. (The intrinsic is
    // safe in newer Rust; the block keeps older compilers happy.)
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let (tile, int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
    tile && int8 && os_lends_tiles()
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: 0 where Linux grants the
/// process the tile data state (kernels from 5.16 on).
#[cfg(target_os = "linux")]
fn os_lends_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this request only changes which extended states the kernel saves for the
    // process; it reads no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Elsewhere the tile state is not requested, so the tiles are not used.
#[cfg(not(target_os = "linux"))]
fn os_lends_tiles() -> bool {
    false
}

/// Bytes a kernel row of `row_len` inputs takes in the tile layout: whole tiles of 64.
pub fn row_pitch(row_len: usize) -> usize {
    row_len.div_ceil(ROW_BYTES) * ROW_BYTES
}

/// Whether a dense conv of `pixels` outputs, `row_pixels` to an output row, on `w`
/// runs on tiles (else on the VNNI kernel, whose quadruples AMX engines pack too).
/// Tiles pay a fixed cost per call and per 32-pixel step (configuration, 16-row loads
/// of every weight tile, a store and reload of the sums), pad each kernel row to 64
/// inputs, and copy the pixels of output rows shorter than a tile; so they lose on small
/// convs, on short kernel rows and on short output rows. Measured on an Intel core
/// (`conv_speed`, MobileNetV2 and U-Net profiles), VNNI against tiles: a 3-channel first
/// conv (3 rows of 9 inputs) 136 against 170 us; 8 -> 48 pointwise convs slower at any
/// size; MobileNetV2 x0.25's 12x12 and 6x6 layers (55-124 K MACs) 1.3-2x slower; a
/// U-Net's sub-pixel conv 8 -> 2x8 at 16³ (4 rows of 16 inputs) 106 against 120 us and
/// its 3x3x3 conv 16 -> 32 at 4³ (rows of 4 outputs) 9.9 against 11.3. Pointwise convs
/// of 16 inputs or more and 0.5 M MACs or more win: 16 -> 96 at 112x112 231 -> 203 us,
/// 576 -> 96 at 14x14 42 -> 15.
pub(super) fn worth_tiles(pixels: usize, row_pixels: usize, w: &PackedWeights) -> bool {
    const MIN_MACS: usize = 512 * 1024;
    let rows_fit = if w.kernel_rows == 1 { w.row_len >= 16 } else { w.row_len >= 32 && row_pixels >= ROWS };
    pixels >= ROWS && rows_fit && pixels * w.k * w.cout >= MIN_MACS
}

/// The tile configuration (palette 1): tiles 0-3 the C sums, 4-5 the A pixels, 6-7
/// the B weights, each 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn all_full() -> TileConfig {
        let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..8 {
            c.colsb[t] = ROW_BYTES as u16;
            c.rows[t] = ROWS as u8;
        }
        c
    }
}

/// Where an A tile's rows lie: kernel row i, tile column c of pixel t at
/// `base + off[i] + 64 c + t stride`.
#[derive(Clone, Copy)]
struct Rows {
    base: *const u8,
    stride: usize,
    /// In the input (the tile's pixels read in place) or in the gathered copy.
    gathered: bool,
}

/// A dense conv of `pixels` outputs (output p's kernel rows from x[walk's offset..]) on
/// tiles: 32 pixels by 32 channels at a time (C tiles 0-3), the sums requantised into
/// `out` (or stored as int32). Sixteen pixels in one output row whose reads stay inside
/// `x` are read in place (one A row a pixel, at the walk's stride); the others (row
/// ends, the last pixels) are copied first, kernel row after kernel row at the pitch,
/// into a gathered tile. Only the `row_len` bytes of each kernel row are read from `x`
/// for a gathered pixel, so `x` needs no slack.
///
/// The C tiles start from each block's -offset (a tile load whose 16 rows all read the
/// block's one row of [`BlockRequant::start`]), so the sums come out as acc - offset
/// and the requantisation is [`requantize_store4_from`]'s, without the subtraction;
/// `bounded`: [`super::avx512::dense_bounded`] holds (or the output is int32).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI and AMX-INT8 with the tile state granted
/// ([`available`]). (The slices are checked here.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dense(x: &[u8], pixels: usize, walk: Walk, shape: TileShape, w: &PackedWeights, out: DenseOut, bounded: bool) {
    // SAFETY: the caller's obligations, passed on; `bounded` is what its name says.
    unsafe {
        if bounded {
            dense_with::<true>(x, pixels, walk, shape, w, out)
        } else {
            dense_with::<false>(x, pixels, walk, shape, w, out)
        }
    }
}

/// [`dense`], `BOUNDED` as [`requantize_store4_from`]'s.
///
/// # Safety
/// As [`dense`]; with `BOUNDED`, [`super::avx512::dense_bounded`] must hold for a u8
/// output.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dense_with<const BOUNDED: bool>(x: &[u8], pixels: usize, mut walk: Walk, shape: TileShape, w: &PackedWeights, out: DenseOut) {
    let cout = w.cout;
    let TileShape { kd, kh, plane_stride, row_stride } = shape;
    let kr = kd * kh;
    assert!(w.isa == Isa::Avx512Amx && w.kernel_rows == kr);
    let (row_len, pitch) = (w.row_len, row_pitch(w.row_len));
    let (chunks, blocks) = (pitch / ROW_BYTES, cout.div_ceil(CBLOCK));
    assert!(w.tiles.len() >= blocks * kr * pitch * CBLOCK, "weights packed without the AMX tiles");
    if pixels == 0 || cout == 0 {
        return;
    }
    // The call's vectors, taken from the thread's and given back at the end.
    let mut kept = KEPT.take();
    // Kernel row i of a pixel: in the input, and in a gathered tile.
    let mut in_place = std::mem::take(&mut kept.in_place);
    in_place.clear();
    in_place.extend((0..kr).map(|i| i / kh * plane_stride + i % kh * row_stride));
    let mut gathered = std::mem::take(&mut kept.gathered);
    gathered.clear();
    gathered.extend((0..kr).map(|i| i * pitch));
    let last_row = in_place[kr - 1];
    // Offsets grow with the output index: the last pixel reads farthest.
    assert!(x.len() >= walk.offset_after(pixels - 1) + last_row + row_len, "input shorter than its pixels' kernel rows");
    // The clamps per channel (`emit_quad` takes 64 at once): u8 outputs only.
    let (mut u8_lo, mut u8_hi): (&[u8], &[u8]) = (&[], &[]);
    let mut params = std::mem::take(&mut kept.params);
    params.clear();
    let (u8_out, i32_out): (*mut u8, *mut i32) = match out {
        DenseOut::U8(r, o) => {
            assert!(o.len() >= pixels * cout && r.covers(cout));
            (u8_lo, u8_hi) = (&r.lo[..cout], &r.hi[..cout]);
            // SAFETY: AVX-512 is the caller's obligation; `r` covers the `cout`
            // channels of the blocks (checked).
            params.extend((0..blocks).map(|b| unsafe { block_requant(r, b * CBLOCK, (cout - b * CBLOCK).min(CBLOCK)) }));
            (o.as_mut_ptr(), std::ptr::null_mut())
        }
        DenseOut::I32(o) => {
            assert!(o.len() >= pixels * cout);
            params.extend((0..blocks).map(|b| block_mask((cout - b * CBLOCK).min(CBLOCK))));
            (std::ptr::null_mut(), o.as_mut_ptr())
        }
    };
    // Block b's C tile start: one row of 16 int32, read 16 times (a zero row stride).
    let mut starts = std::mem::take(&mut kept.starts);
    starts.clear();
    starts.extend(params.iter().map(|q| {
        let mut row = Row64([0; CBLOCK]);
        // SAFETY: AVX-512 is the caller's obligation; an unaligned store into the
        // 64 bytes of `row`.
        unsafe { _mm512_storeu_si512(row.0.as_mut_ptr() as *mut _, q.start()) };
        row
    }));
    // The one-chunk path's units of blocks (first, count): groups of four whole blocks
    // where the output is u8 (taken out a pixel's 64 channels at a time), then single
    // blocks.
    let quads = if u8_out.is_null() || kr * chunks != 1 { 0 } else { cout / (4 * CBLOCK) };
    let mut units = std::mem::take(&mut kept.units);
    units.clear();
    units.extend((0..quads).map(|g| (4 * g, 4)).chain((4 * quads..blocks).map(|b| (b, 1))));
    // Two gathered A tiles (ROWS pixels of kr rows at the pitch each).
    let tile_bytes = ROWS * kr * pitch;
    // Allocated at the first gathered tile (most parts of a pointwise conv gather none);
    // never reallocated after, so tiles keep pointing into it.
    let mut copy: Vec<u8> = Vec::new();
    let mut sums = SumTiles([[0; ROWS * CBLOCK]; 16]);
    let config = TileConfig::all_full();
    let xp = x.as_ptr();
    // SAFETY: AMX with the tile state granted is the caller's obligation; the
    // configuration is a valid palette-1 one (8 tiles of 16 x 64 bytes), 64-byte aligned.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack, readonly)) };
    let mut p = 0;
    while p < pixels {
        // The A tiles of pixels p..p + 16 and p + 16..p + 32 (a missing second one
        // repeats the first: its sums are computed, not stored).
        let mut a = [Rows { base: xp, stride: 0, gathered: false }; 2];
        for t in 0..2 {
            let first = p + t * ROWS;
            if first >= pixels {
                a[t] = a[0];
                break;
            }
            let n = (pixels - first).min(ROWS);
            let reach = walk.base + (ROWS - 1) * walk.step[2] + last_row + pitch;
            if n == ROWS && walk.pos[2] + ROWS <= walk.size[2] && reach <= x.len() {
                // SAFETY: the tile's rows start at walk.base + t step <= reach - pitch,
                // inside `x` (checked just above).
                a[t] = Rows { base: unsafe { xp.add(walk.base) }, stride: walk.step[2], gathered: false };
                for _ in 0..ROWS {
                    walk.advance();
                }
            } else {
                if copy.is_empty() {
                    copy = vec![0u8; 2 * tile_bytes];
                }
                let tile = &mut copy[t * tile_bytes..(t + 1) * tile_bytes];
                for px in 0..n {
                    for (&from, &to) in in_place.iter().zip(&gathered) {
                        let from = walk.base + from;
                        // Inside `x`: the assertion on the last pixel covers every pixel.
                        let (src, dst) = (&x[from..from + row_len], &mut tile[px * kr * pitch + to..][..row_len]);
                        if row_len <= 64 {
                            // Short rows (a first conv's 9 bytes) without a call to memcpy.
                            let m: __mmask64 = u64::MAX >> (64 - row_len);
                            // SAFETY: the masked load and store touch the row_len bytes of
                            // `src` and `dst` (slices of that length) only.
                            unsafe {
                                _mm512_mask_storeu_epi8(
                                    dst.as_mut_ptr() as *mut i8,
                                    m,
                                    _mm512_maskz_loadu_epi8(m, src.as_ptr() as *const i8),
                                )
                            };
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                    walk.advance();
                }
                a[t] = Rows { base: tile.as_ptr(), stride: kr * pitch, gathered: true };
            }
        }
        // Block blk's sums of A tile t (C tile `tile` of `sums`) out: requantised or int32.
        // SAFETY: AVX-512 is the caller's obligation; the rows stored are pixels below
        // `pixels`, channels of block blk below `cout` (its mask), inside the output
        // (checked above); the loads are aligned rows of `sums`.
        let emit = |sums: &SumTiles, tile: usize, t: usize, blk: usize| unsafe {
            // In registers for the 16 rows (see `requantize_store`).
            let q = params[blk];
            let row_sums = |row: usize| _mm512_load_si512(sums.0[tile][row * CBLOCK..].as_ptr() as *const _);
            let first = p + t * ROWS;
            let rows = pixels.saturating_sub(first).min(ROWS);
            if i32_out.is_null() {
                // Four rows (pixels) at a time; rows past `pixels` are computed, not stored.
                for row in (0..rows).step_by(4) {
                    let acc = [row_sums(row), row_sums(row + 1), row_sums(row + 2), row_sums(row + 3)];
                    requantize_store4_from::<BOUNDED>(&acc, &q, u8_out.add((first + row) * cout + blk * CBLOCK), cout, (rows - row).min(4));
                }
            } else {
                for row in 0..rows {
                    _mm512_mask_storeu_epi32(i32_out.add((first + row) * cout + blk * CBLOCK), q.mask, row_sums(row));
                }
            }
        };
        // Four whole blocks' sums of pixel `row` of A tile t (tiles set + 2j + t, block
        // b0 + j) out: one pixel's 64 channels at a time.
        // SAFETY: as `emit`; blocks b0..b0 + 4 are whole (`units`), so each pixel's 64
        // bytes from channel 16 b0 are inside the output and `lo`/`hi` (checked above).
        let emit_quad = |sums: &SumTiles, set: usize, t: usize, b0: usize| unsafe {
            let q = [params[b0], params[b0 + 1], params[b0 + 2], params[b0 + 3]];
            let bounds = (&u8_lo[b0 * CBLOCK..b0 * CBLOCK + 64], &u8_hi[b0 * CBLOCK..b0 * CBLOCK + 64]);
            let bounds = (_mm512_loadu_si512(bounds.0.as_ptr() as *const _), _mm512_loadu_si512(bounds.1.as_ptr() as *const _));
            let first = p + t * ROWS;
            let rows = pixels.saturating_sub(first).min(ROWS);
            for row in 0..rows {
                let sum = |j: usize| _mm512_load_si512(sums.0[set + 2 * j + t][row * CBLOCK..].as_ptr() as *const _);
                let out = u8_out.add((first + row) * cout + b0 * CBLOCK);
                requantize_store_channels64_from::<BOUNDED>(&[sum(0), sum(1), sum(2), sum(3)], &q, bounds, out);
            }
        };
        // Pixels p + 16.. are past the end: A tile 5 (a copy of tile 4) is not
        // multiplied. (It was, its sums unstored: a 14x14 map is 6 steps of 32 pixels
        // and one of 4, a 28x28 one 24 steps and one of 16.)
        let one_tile = p + ROWS >= pixels;
        if kr * chunks == 1 {
            // One tile of inputs (K <= 64, a MobileNet's expansions): the A tiles stay
            // in tmm4-5 for every block; blocks alternate between two sets of B and C
            // tiles (tmm6, tmm0-1 and tmm7, tmm2-3). The blocks go in units (four whole
            // blocks for a u8 output, taken out a pixel's 64 channels at a time, else
            // one), and unit u's sums are taken out after unit u + 1's products are
            // issued, so that the tile unit works while the vector units requantise
            // (tile registers are not renamed: one set would serialise them).
            // SAFETY: AMX is configured above; the A rows are 64 bytes from each
            // pixel's start, inside `x` (in place: `reach`) or `copy`; B tiles are block
            // b's 16 quadruples x 16 channels inside `tiles` (checked); the C tiles load
            // block b's start row (64 bytes of `starts[b]`, every tile row at stride 0)
            // and go to `sums` (2 sets x 4 blocks x 2 tiles of 16 rows of 64 bytes).
            unsafe {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa0}*1]",
                    "tileloadd tmm5, [{a1} + {sa1}*1]",
                    a0 = in(reg) a[0].base,
                    sa0 = in(reg) a[0].stride,
                    a1 = in(reg) a[1].base,
                    sa1 = in(reg) a[1].stride,
                    options(nostack, readonly),
                );
                // (An index loop: u runs one past the units, to take the last one out.)
                #[allow(clippy::needless_range_loop)]
                for u in 0..=units.len() {
                    if u < units.len() {
                        let (b0, n) = units[u];
                        for b in b0..b0 + n {
                            let wb = w.tiles.as_ptr().add(b * pitch * CBLOCK);
                            let c = sums.0.as_mut_ptr().add(8 * (u % 2) + 2 * (b - b0));
                            // Block b's weights into B tile `w`, its sums (from its start
                            // row) with A tiles 4 and 5 into C tiles `c0` and `c1`, stored
                            // at `c`.
                            macro_rules! block {
                                ($w:literal, $c0:literal, $c1:literal) => {
                                    asm!(
                                        concat!("tileloadd ", $w, ", [{w} + {s}*1]"),
                                        concat!("tileloadd ", $c0, ", [{o} + {z}*1]"),
                                        concat!("tileloadd ", $c1, ", [{o} + {z}*1]"),
                                        concat!("tdpbusd ", $c0, ", tmm4, ", $w),
                                        concat!("tdpbusd ", $c1, ", tmm5, ", $w),
                                        concat!("tilestored [{c0} + {s}*1], ", $c0),
                                        concat!("tilestored [{c1} + {s}*1], ", $c1),
                                        w = in(reg) wb,
                                        o = in(reg) starts[b].0.as_ptr(),
                                        z = in(reg) 0usize,
                                        c0 = in(reg) c,
                                        c1 = in(reg) c.add(1),
                                        s = in(reg) ROW_BYTES,
                                        options(nostack),
                                    )
                                };
                            }
                            // The same with A tile 4 alone (the last step's second
                            // tile is past the pixels): half the products.
                            macro_rules! half_block {
                                ($w:literal, $c0:literal) => {
                                    asm!(
                                        concat!("tileloadd ", $w, ", [{w} + {s}*1]"),
                                        concat!("tileloadd ", $c0, ", [{o} + {z}*1]"),
                                        concat!("tdpbusd ", $c0, ", tmm4, ", $w),
                                        concat!("tilestored [{c0} + {s}*1], ", $c0),
                                        w = in(reg) wb,
                                        o = in(reg) starts[b].0.as_ptr(),
                                        z = in(reg) 0usize,
                                        c0 = in(reg) c,
                                        s = in(reg) ROW_BYTES,
                                        options(nostack),
                                    )
                                };
                            }
                            match (b % 2 == 0, one_tile) {
                                (true, false) => block!("tmm6", "tmm0", "tmm1"),
                                (false, false) => block!("tmm7", "tmm2", "tmm3"),
                                (true, true) => half_block!("tmm6", "tmm0"),
                                (false, true) => half_block!("tmm7", "tmm2"),
                            }
                        }
                    }
                    if u > 0 {
                        let (b0, n) = units[u - 1];
                        let set = 8 * ((u - 1) % 2);
                        if n == 4 {
                            emit_quad(&sums, set, 0, b0);
                            emit_quad(&sums, set, 1, b0);
                        } else {
                            emit(&sums, set, 0, b0);
                            emit(&sums, set + 1, 1, b0);
                        }
                    }
                }
            }
            p += 2 * ROWS;
            continue;
        }
        let wb = |blk: usize, i: usize, c: usize| (blk * kr + i) * pitch * CBLOCK + c * ROW_BYTES * CBLOCK;
        // The weight tiles PREFETCH_CHUNKS steps ahead of block pair b / 2's kernel row
        // i, chunk c, in the order the products take them: on into the next kernel row
        // and the next block pair. (Within a kernel row only, the first tiles of each
        // were not prefetched, and convs of 160 inputs, 3 chunks, got one prefetch a
        // row. Across them: MobileNetV2 at 224 1.6% faster, its 14x14 and 7x7 convs of
        // more than 64 inputs 11% and 5%, per-op profiles; 4 steps ahead the same, 8
        // slower.)
        let steps_per_pair = kr * chunks;
        let all_steps = blocks.div_ceil(2) * steps_per_pair;
        let prefetch_ahead = |b: usize, i: usize, c: usize| {
            let j = (b / 2 * kr + i) * chunks + c + PREFETCH_CHUNKS;
            if j < all_steps {
                let (pair, rest) = (j / steps_per_pair, j % steps_per_pair);
                for blk in [2 * pair, (2 * pair + 1).min(blocks - 1)] {
                    // SAFETY: block blk < blocks, kernel row rest / chunks < kr, chunk
                    // rest % chunks < chunks: a tile inside `tiles` (checked above).
                    // Prefetches do not fault anyway.
                    let next = unsafe { w.tiles.as_ptr().add(wb(blk, rest / chunks, rest % chunks)) };
                    for line in 0..ROWS {
                        // SAFETY: as above, 16 rows of 64 bytes of that tile.
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(next.add(line * ROW_BYTES)) };
                    }
                }
            }
        };
        let mut b = 0;
        while b < blocks {
            // Blocks b and b + 1 (a missing second one repeats the first, unstored).
            let b1 = (b + 1).min(blocks - 1);
            // SAFETY: AMX is configured above. A rows: pixel t's kernel row i, columns
            // 64c..64c + 64 < pitch; in place those end at most at `reach` <= x.len(),
            // gathered inside `copy` (tile_bytes per tile). B tiles: block blk's kernel
            // row i, quadruples 16c..16c + 16 < pitch / 4, inside `tiles` (checked);
            // the prefetched ones likewise, for chunks c + PREFETCH_CHUNKS < chunks.
            // The C tiles load the start rows of blocks b and b1 < blocks (64 bytes of
            // `starts`, stride 0) and are stored into `sums` (4 x 16 rows of 64 bytes).
            unsafe {
                // C0, C2: block b's start; C1, C3: block b1's.
                asm!(
                    "tileloadd tmm0, [{o0} + {z}*1]",
                    "tileloadd tmm1, [{o1} + {z}*1]",
                    "tileloadd tmm2, [{o0} + {z}*1]",
                    "tileloadd tmm3, [{o1} + {z}*1]",
                    o0 = in(reg) starts[b].0.as_ptr(),
                    o1 = in(reg) starts[b1].0.as_ptr(),
                    z = in(reg) 0usize,
                    options(nostack, readonly),
                );
                for i in 0..kr {
                    let off = |r: &Rows| if r.gathered { gathered[i] } else { in_place[i] };
                    if one_tile {
                        // A loop of its own, not a branch in the one below: merged, the
                        // compiled hot loop changed, 576 -> 96 at 14x14 12% slower and
                        // 960 -> 160 at 7x7 15% faster (`conv_speed`, 4 alternating runs).
                        for c in 0..chunks {
                            // As below with A tile 4 alone (C0 and C1 only).
                            prefetch_ahead(b, i, c);
                            asm!(
                                "tileloadd tmm4, [{a0} + {sa0}*1]",
                                "tileloadd tmm6, [{b0} + {sb}*1]",
                                "tileloadd tmm7, [{b1} + {sb}*1]",
                                "tdpbusd tmm0, tmm4, tmm6",
                                "tdpbusd tmm1, tmm4, tmm7",
                                a0 = in(reg) a[0].base.add(off(&a[0]) + c * ROW_BYTES),
                                sa0 = in(reg) a[0].stride,
                                b0 = in(reg) w.tiles.as_ptr().add(wb(b, i, c)),
                                b1 = in(reg) w.tiles.as_ptr().add(wb(b1, i, c)),
                                sb = in(reg) ROW_BYTES,
                                options(nostack, readonly),
                            );
                        }
                        continue;
                    }
                    for c in 0..chunks {
                        // The weight tiles PREFETCH_CHUNKS chunks ahead into L1 now.
                        // Without it each tile load waited on L2: MobileNetV2's 7x7 and
                        // 14x14 pointwise convs took 13-20% longer with their weights in L2
                        // (the kernel alone, in a loop). (Prefetching the A tiles measured
                        // no better.)
                        prefetch_ahead(b, i, c);
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa0}*1]",
                            "tileloadd tmm5, [{a1} + {sa1}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbusd tmm0, tmm4, tmm6",
                            "tdpbusd tmm1, tmm4, tmm7",
                            "tdpbusd tmm2, tmm5, tmm6",
                            "tdpbusd tmm3, tmm5, tmm7",
                            a0 = in(reg) a[0].base.add(off(&a[0]) + c * ROW_BYTES),
                            sa0 = in(reg) a[0].stride,
                            a1 = in(reg) a[1].base.add(off(&a[1]) + c * ROW_BYTES),
                            sa1 = in(reg) a[1].stride,
                            b0 = in(reg) w.tiles.as_ptr().add(wb(b, i, c)),
                            b1 = in(reg) w.tiles.as_ptr().add(wb(b1, i, c)),
                            sb = in(reg) ROW_BYTES,
                            options(nostack, readonly),
                        );
                    }
                }
                let s = sums.0.as_mut_ptr();
                if one_tile {
                    asm!(
                        "tilestored [{c0} + {s}*1], tmm0",
                        "tilestored [{c1} + {s}*1], tmm1",
                        c0 = in(reg) s.add(0),
                        c1 = in(reg) s.add(1),
                        s = in(reg) ROW_BYTES,
                        options(nostack),
                    );
                } else {
                    asm!(
                        "tilestored [{c0} + {s}*1], tmm0",
                        "tilestored [{c1} + {s}*1], tmm1",
                        "tilestored [{c2} + {s}*1], tmm2",
                        "tilestored [{c3} + {s}*1], tmm3",
                        c0 = in(reg) s.add(0),
                        c1 = in(reg) s.add(1),
                        c2 = in(reg) s.add(2),
                        c3 = in(reg) s.add(3),
                        s = in(reg) ROW_BYTES,
                        options(nostack),
                    );
                }
            }
            // C0, C2: block b of A tiles 0 and 1; C1, C3: block b1 (only when another).
            // (With one tile, tile 1's emits store no row: its pixels are past the end.)
            emit(&sums, 0, 0, b);
            emit(&sums, 2, 1, b);
            if b1 != b {
                emit(&sums, 1, 0, b1);
                emit(&sums, 3, 1, b1);
            }
            b += 2;
        }
        p += 2 * ROWS;
    }
    // SAFETY: releases the tile state configured above (no operands).
    unsafe { asm!("tilerelease", options(nomem, nostack)) };
    KEPT.set(Kept { in_place, gathered, params, starts, units });
}

/// The vectors a [`dense_with`] call fills, kept by each thread between its calls:
/// allocated anew (64-byte aligned for the parameters: `posix_memalign`), with their
/// frees, they took about 2% of MobileNetV2's time on one thread (`perf`), a call each
/// for each of its 36 convs on tiles.
#[derive(Default)]
struct Kept {
    in_place: Vec<usize>,
    gathered: Vec<usize>,
    params: Vec<BlockRequant>,
    starts: Vec<Row64>,
    units: Vec<(usize, usize)>,
}

thread_local! {
    static KEPT: std::cell::Cell<Kept> = std::cell::Cell::new(Kept::default());
}

/// One C tile row: a block's 16 int32 start values.
#[repr(C, align(64))]
struct Row64([i32; CBLOCK]);

/// C tiles' int32 sums, 64-byte aligned for the row loads: two sets of four blocks'
/// two tiles (the one-chunk path; the general path uses the first four tiles).
#[repr(C, align(64))]
struct SumTiles([[i32; ROWS * CBLOCK]; 16]);
