//! A small f32 GEMM for the linear layers' products (forward `x Wᵀ`, backward `dy W` and
//! `dyᵀ x`), whose shapes candle's CPU matmul handles poorly: many rows (`B·T`, thousands)
//! against few features (tens to hundreds). On stable Rust candle's `gemm` crate runs its
//! AVX2 microkernel even on AVX-512 CPUs; the kernel here uses the full-width registers.
//!
//! Design:
//! - Everything is `C[m, n] = A[m, k] · B[k, n]`: `B` row-major (row stride `ld`), `A`
//!   read through a row and a column stride, so `A` can be a transposed view
//!   ([`matmul_at`] reads `dyᵀ` in place). `W` of the forward is transposed once per
//!   call (it is tiny).
//! - The output is cut into tiles of up to [`MR`] = 6 rows × 3 vectors of 16 columns
//!   (48), the columns of a row spread evenly over the tiles; the last vector of a row is
//!   masked (`n = 40` is one tile of 32 + 8 columns). A tile's accumulators live in
//!   registers: per reduction step the kernel loads one row of `B` (≤ 3 vectors) and
//!   broadcasts one element of `A` per output row, so 6 × 3 accumulators + 3 + 6 = 27 of
//!   the 32 zmm registers are live (8 rows would need 35: LLVM then spills and shuffles
//!   accumulators, and the kernel runs at half speed).
//! - Long reductions (`dyᵀ x` sums over every row) run in blocks of [`KC`] steps so the
//!   block of `B` stays in L2; a later block reloads the tile from `C` and carries on.
//! - Threads split the output rows only. Where the reduction fits one block (the forward
//!   and `dy W`) an epilogue (the layer's bias and activation, [`matmul_bt_then`]) runs on
//!   every [`MR`] rows as soon as they are done, while they are in L1; on one thread those
//!   rows are finished in a small buffer and appended to `C`, which is never zero-filled.
//!
//! Every output element is therefore one f32 chain `c = a_p · b_p + c` over
//! `p = 0, 1, …, k−1` in order, starting from 0 (fused multiply-adds in the AVX-512 and
//! AVX2 builds, which agree bit for bit; separate roundings in the portable one): the
//! result does not depend on the tiling, the blocking or the thread count. It is not
//! bit-identical to candle's matmul, which sums in a different order.
//!
//! The AVX-512 kernel is written with intrinsics; the portable and AVX2 builds share a
//! plain-loop kernel (auto-vectorised, 15–25 GFLOP/s: a reference and a fallback, slower
//! than candle's matmul) and are picked through [`super::simd`].

use super::par::{for_chunks, threads_for, zeros};
use super::simd::Simd;

/// Most output rows of a tile (the row tail gets a narrower kernel).
pub const MR: usize = 6;
/// f32 lanes of a vector (one zmm).
const LANES: usize = 16;
/// Most vectors of output columns in a tile.
const NV: usize = 3;
/// Reduction steps per block: a block of `B` (≤ `KC` rows of ≤ 320 columns, 480 KiB)
/// stays in L2 while every tile of the block runs over it.
pub const KC: usize = 384;

/// Whether the linear layers should use these kernels at `level` rather than candle's
/// matmul: only with AVX-512, where they run at about twice candle's speed; below it
/// candle's AVX2 microkernel is several times faster than the plain-loop builds
/// (`cargo bench --bench gemm` compares them).
pub fn preferred(level: Simd) -> bool {
    level == Simd::Avx512
}

/// `C = A · B` for row-major `a` `[m, k]` and `b` `[k, n]`: returns `C` `[m, n]`.
pub fn matmul(level: Simd, a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "matmul: A is not [{m}, {k}]");
    assert_eq!(b.len(), k * n, "matmul: B is not [{k}, {n}]");
    let a = MatA {
        data: a,
        rs: k,
        cs: 1,
    };
    gemm(level, a, MatB { data: b, ld: n }, (m, k, n), &|_, _| {})
}

/// [`matmul`] on the calling thread only, for callers that already run one task per
/// thread (no nested split of a few output rows over threads).
pub fn matmul_serial(level: Simd, a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "matmul: A is not [{m}, {k}]");
    assert_eq!(b.len(), k * n, "matmul: B is not [{k}, {n}]");
    let mut c = vec![0f32; m * n];
    if m * n > 0 && k > 0 {
        let a = MatA {
            data: a,
            rs: k,
            cs: 1,
        };
        kernels::block(
            level,
            a,
            MatB { data: b, ld: n },
            &mut c,
            Shape { rows: m, k, n },
        );
    }
    c
}

/// `C = X · Wᵀ` for row-major `x` `[m, k]` and `w` `[n, k]` (a linear layer's forward):
/// returns `C` `[m, n]`. `W` is transposed into a `[k, n]` copy first.
pub fn matmul_bt(level: Simd, x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    matmul_bt_then(level, x, w, (m, k, n), |_, _| {})
}

/// [`matmul_bt`] (`(m, k, n)` its sizes) followed by `epilogue(first_row, rows)` on every
/// block of whole rows of `C` (row-major, from row `first_row` on), each block still in
/// cache from the products: a linear layer's bias and activation without another pass over
/// memory. The blocks cover `C` once, in any order, and split differently with the thread
/// count: `epilogue` should act on each element independently.
pub fn matmul_bt_then(
    level: Simd,
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "matmul_bt: X is not [{m}, {k}]");
    assert_eq!(w.len(), n * k, "matmul_bt: W is not [{n}, {k}]");
    let a = MatA {
        data: x,
        rs: k,
        cs: 1,
    };
    let wt = transpose(w, n, k);
    gemm(level, a, MatB { data: &wt, ld: n }, (m, k, n), &epilogue)
}

/// `C = Gᵀ · X` for row-major `g` `[rows, n]` and `x` `[rows, k]` (a linear layer's weight
/// gradient `dyᵀ x`): returns `C` `[n, k]`, each element summed over the rows in order.
pub fn matmul_at(level: Simd, g: &[f32], x: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
    assert_eq!(g.len(), rows * n, "matmul_at: G is not [{rows}, {n}]");
    assert_eq!(x.len(), rows * k, "matmul_at: X is not [{rows}, {k}]");
    // `A = Gᵀ` `[n, rows]`: element (i, p) is g[p, i].
    let a = MatA {
        data: g,
        rs: 1,
        cs: n,
    };
    gemm(level, a, MatB { data: x, ld: k }, (n, rows, k), &|_, _| {})
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for (r, row) in v.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (c, x) in row.iter().enumerate() {
            t[c * rows + r] = *x;
        }
    }
    t
}

/// The left operand: element (i, p) at `data[i·rs + p·cs]`.
#[derive(Debug, Clone, Copy)]
struct MatA<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> MatA<'a> {
    /// The operand from row `i` on.
    fn rows_from(self, i: usize) -> MatA<'a> {
        MatA {
            data: &self.data[(i * self.rs).min(self.data.len())..],
            ..self
        }
    }
}

/// The right operand: row-major, element (p, j) at `data[p·ld + j]`.
#[derive(Debug, Clone, Copy)]
struct MatB<'a> {
    data: &'a [f32],
    ld: usize,
}

/// `epilogue(first_row, rows)` on a block of whole rows of `C`.
type Epilogue<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// `C = A · B` (`[m, k]` · `[k, n]`) then `epilogue` on blocks of its rows, split over the
/// output rows.
fn gemm(
    level: Simd,
    a: MatA,
    b: MatB,
    (m, k, n): (usize, usize, usize),
    epilogue: Epilogue,
) -> Vec<f32> {
    if m * n == 0 || k == 0 {
        let mut c = vec![0f32; m * n];
        if n > 0 {
            epilogue(0, &mut c);
        }
        return c;
    }
    let threads = threads_for(m * k + k * n + m * n);
    if threads <= 1 && k <= KC {
        return gemm_appending(level, a, b, Shape { rows: m, k, n }, epilogue);
    }
    let mut c = zeros(threads, m * n);
    for_chunks(threads, &mut c, n, |r0, c| {
        let rows = c.len() / n;
        if k <= KC {
            // [`MR`] rows at a time, so that the epilogue finds them in cache.
            for (i, blk) in (r0..).step_by(MR).zip(c.chunks_mut(MR * n)) {
                let rows = blk.len() / n;
                kernels::block(level, a.rows_from(i), b, blk, Shape { rows, k, n });
                epilogue(i, blk);
            }
        } else {
            kernels::block(level, a.rows_from(r0), b, c, Shape { rows, k, n });
            epilogue(r0, c);
        }
    });
    c
}

/// `C = A · B` on this thread for reductions of one block (`k` ≤ [`KC`]) without
/// zero-filling `C`: [`MR`] rows at a time are finished in a scratch buffer, `epilogue`
/// runs on them there, and they are appended to `C`.
fn gemm_appending(level: Simd, a: MatA, b: MatB, s: Shape, epilogue: Epilogue) -> Vec<f32> {
    let (m, n) = (s.rows, s.n);
    let mut c = Vec::with_capacity(m * n);
    let mut buf = vec![0f32; MR * n];
    for i0 in (0..m).step_by(MR) {
        let rows = MR.min(m - i0);
        let blk = &mut buf[..rows * n];
        kernels::block(level, a.rows_from(i0), b, blk, Shape { rows, ..s });
        epilogue(i0, blk);
        c.extend_from_slice(blk);
    }
    c
}

/// The extent of one [`kernels::block`] call: `C` `[rows, n]`, reductions of length `k`.
#[derive(Debug, Clone, Copy)]
struct Shape {
    rows: usize,
    k: usize,
    n: usize,
}

/// One microkernel call: output rows `i0..i0 + rows`, columns `j0..j0 + cols` (`vecs`
/// vectors, the last one possibly partial), reduction steps `p0..p1`, started from zero
/// (`fresh`) or from the values in `C`.
#[derive(Debug, Clone, Copy)]
struct Tile {
    i0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
    vecs: usize,
    p0: usize,
    p1: usize,
    fresh: bool,
}

impl Tile {
    /// Panics unless the tile has `R` rows and `V` vectors and every element it touches
    /// lies inside `a`, `b` and `c` (`c` with row stride `ldc`). The kernels' raw loads and
    /// stores rely on it.
    fn check<const R: usize, const V: usize>(&self, a: MatA, b: MatB, c: &[f32], ldc: usize) {
        assert!(self.rows == R && self.vecs == V && R > 0 && V > 0);
        assert!(self.cols > LANES * (V - 1) && self.cols <= LANES * V);
        assert!(self.p0 < self.p1);
        let (i1, p1) = (self.i0 + R - 1, self.p1 - 1);
        assert!(i1 * a.rs + p1 * a.cs < a.data.len(), "gemm: A too short");
        assert!(
            p1 * b.ld + self.j0 + self.cols <= b.data.len(),
            "gemm: B too short"
        );
        assert!(
            i1 * ldc + self.j0 + self.cols <= c.len(),
            "gemm: C too short"
        );
    }
}

/// Runs `tile` over the tiles of `C` `[rows, n]` in the order: reduction blocks, row
/// tiles, column tiles. The columns of a row go to `⌈n/48⌉` tiles of whole vectors as
/// even as possible (`n = 80`: 48 + 32, `n = 160`: 48 + 48 + 32 + 32).
#[inline(always)]
fn for_each_tile(s: Shape, mut tile: impl FnMut(Tile)) {
    let vecs = s.n.div_ceil(LANES);
    let panels = vecs.div_ceil(NV);
    for p0 in (0..s.k).step_by(KC) {
        let p1 = (p0 + KC).min(s.k);
        for i0 in (0..s.rows).step_by(MR) {
            let rows = MR.min(s.rows - i0);
            let mut j0 = 0;
            for q in 0..panels {
                let v = vecs / panels + usize::from(q < vecs % panels);
                let cols = (v * LANES).min(s.n - j0);
                tile(Tile {
                    i0,
                    rows,
                    j0,
                    cols,
                    vecs: v,
                    p0,
                    p1,
                    fresh: p0 == 0,
                });
                j0 += cols;
            }
        }
    }
}

/// Calls `$f::<R, V>$args` for the tile shape `($rows, $vecs)`, R in 1..=6 (MR), V in
/// 1..=3 (NV).
macro_rules! by_tile_shape {
    ($rows:expr, $vecs:expr, $f:ident $args:tt) => {
        by_tile_shape!(@rows $rows, $vecs, $f $args; 1 2 3 4 5 6)
    };
    (@rows $rows:expr, $vecs:expr, $f:ident $args:tt; $($r:literal)*) => {
        match ($rows, $vecs) {
            $(
                ($r, 1) => $f::<$r, 1> $args,
                ($r, 2) => $f::<$r, 2> $args,
                ($r, 3) => $f::<$r, 3> $args,
            )*
            (r, v) => unreachable!("no {r} x {v} tile kernel"),
        }
    };
}

const _: () = assert!(
    MR == 6 && NV == 3,
    "by_tile_shape! instantiates 1..=6 x 1..=3"
);

mod kernels {
    use super::{for_each_tile, MatA, MatB, Shape, Simd, Tile, LANES};
    use crate::kernels::simd::fmadd;

    /// `C = A · B` on one chunk of output rows, in the build for `level`.
    pub(super) fn block(level: Simd, a: MatA, b: MatB, c: &mut [f32], s: Shape) {
        match level {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                // SAFETY: `Simd::Avx512` is only selected when the CPU has AVX-512F
                // (`simd::supported`).
                unsafe { avx512::block(a, b, c, s) }
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                // SAFETY: as above, for AVX2 + FMA.
                unsafe { avx2::block(a, b, c, s) }
            }
            _ => block_generic(a, b, c, s),
        }
    }

    /// The plain-loop build, separate roundings (the crate's target features).
    fn block_generic(a: MatA, b: MatB, c: &mut [f32], s: Shape) {
        for_each_tile(s, |t| {
            by_tile_shape!(t.rows, t.vecs, tile_plain(t, a, b, c, s.n))
        });
    }

    /// [`tile_generic`] with separate roundings.
    fn tile_plain<const R: usize, const V: usize>(
        t: Tile,
        a: MatA,
        b: MatB,
        c: &mut [f32],
        ldc: usize,
    ) {
        tile_generic::<false, R, V>(t, a, b, c, ldc)
    }

    /// One `R` × `V`-vector tile with plain loops over 16-lane arrays (the partial last
    /// vector zero-padded, its padding never stored).
    #[inline(always)]
    fn tile_generic<const F: bool, const R: usize, const V: usize>(
        t: Tile,
        a: MatA,
        b: MatB,
        c: &mut [f32],
        ldc: usize,
    ) {
        t.check::<R, V>(a, b, c, ldc);
        let mut acc = [[[0f32; LANES]; V]; R];
        if !t.fresh {
            for (i, acc) in acc.iter_mut().enumerate() {
                let row = &c[(t.i0 + i) * ldc + t.j0..][..t.cols];
                for (d, x) in acc.iter_mut().flatten().zip(row) {
                    *d = *x;
                }
            }
        }
        for p in t.p0..t.p1 {
            let mut bv = [[0f32; LANES]; V];
            for (d, x) in bv
                .iter_mut()
                .flatten()
                .zip(&b.data[p * b.ld + t.j0..][..t.cols])
            {
                *d = *x;
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = a.data[(t.i0 + i) * a.rs + p * a.cs];
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    for l in 0..LANES {
                        acc[l] = fmadd::<F>(av, bv[l], acc[l]);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let row = &mut c[(t.i0 + i) * ldc + t.j0..][..t.cols];
            for (d, x) in row.iter_mut().zip(acc.iter().flatten()) {
                *d = *x;
            }
        }
    }

    /// The plain-loop kernel compiled with AVX2 + FMA.
    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use super::super::for_each_tile;
        use super::{MatA, MatB, Shape, Tile};

        /// Every tile of `C = A · B` on one chunk of output rows.
        #[target_feature(enable = "avx2,fma")]
        pub(super) fn block(a: MatA, b: MatB, c: &mut [f32], s: Shape) {
            for_each_tile(s, |t| by_tile_shape!(t.rows, t.vecs, tile(t, a, b, c, s.n)));
        }

        /// [`super::tile_generic`] with fused multiply-adds, AVX2 + FMA enabled.
        #[inline(never)]
        #[target_feature(enable = "avx2,fma")]
        fn tile<const R: usize, const V: usize>(
            t: Tile,
            a: MatA,
            b: MatB,
            c: &mut [f32],
            ldc: usize,
        ) {
            super::tile_generic::<true, R, V>(t, a, b, c, ldc)
        }
    }

    /// The AVX-512 kernel, with intrinsics.
    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use super::super::for_each_tile;
        use super::{MatA, MatB, Shape, Tile, LANES};
        use std::arch::x86_64::{
            __m512, __mmask16, _mm512_broadcastss_ps, _mm512_fmadd_ps, _mm512_mask_storeu_ps,
            _mm512_maskz_loadu_ps, _mm512_setzero_ps, _mm_load_ss,
        };

        /// Every tile of `C = A · B` on one chunk of output rows.
        #[target_feature(enable = "avx512f")]
        pub(super) fn block(a: MatA, b: MatB, c: &mut [f32], s: Shape) {
            for_each_tile(s, |t| by_tile_shape!(t.rows, t.vecs, tile(t, a, b, c, s.n)));
        }

        /// One `R` × `V`-vector tile: `R·V` accumulators in zmm registers; per reduction
        /// step `V` loads of a row of `B` (the last one masked to the tile's columns) and
        /// `R` broadcasts from `A`.
        // Not inlined: each shape gets its own function, its registers allocated for its
        // loop alone.
        #[inline(never)]
        #[target_feature(enable = "avx512f")]
        fn tile<const R: usize, const V: usize>(
            t: Tile,
            a: MatA,
            b: MatB,
            c: &mut [f32],
            ldc: usize,
        ) {
            t.check::<R, V>(a, b, c, ldc);
            // Lanes of the last vector inside the tile: 1..=16.
            let tail = t.cols - LANES * (V - 1);
            let last = ((1u32 << tail) - 1) as __mmask16;
            let mask = |v: usize| if v + 1 == V { last } else { !0 };
            let (ap, bp, cp) = (a.data.as_ptr(), b.data.as_ptr(), c.as_mut_ptr());
            let mut acc: [[__m512; V]; R] = [[_mm512_setzero_ps(); V]; R];
            if !t.fresh {
                for (i, acc) in acc.iter_mut().enumerate() {
                    for (v, acc) in acc.iter_mut().enumerate() {
                        let at = (t.i0 + i) * ldc + t.j0 + v * LANES;
                        // SAFETY: `check` put the tile's columns of row `i0 + i` inside `c`;
                        // masked-off lanes are not read.
                        *acc = unsafe { _mm512_maskz_loadu_ps(mask(v), cp.add(at)) };
                    }
                }
            }
            for p in t.p0..t.p1 {
                let mut bv: [__m512; V] = [_mm512_setzero_ps(); V];
                for (v, bv) in bv.iter_mut().enumerate() {
                    let at = p * b.ld + t.j0 + v * LANES;
                    // SAFETY: `check` put the tile's columns of row `p` of B inside `b`.
                    *bv = unsafe { _mm512_maskz_loadu_ps(mask(v), bp.add(at)) };
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let at = (t.i0 + i) * a.rs + p * a.cs;
                    // SAFETY: `check` put element (i0 + i, p) of A inside `a`.
                    let av = _mm512_broadcastss_ps(unsafe { _mm_load_ss(ap.add(at)) });
                    for (acc, bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm512_fmadd_ps(av, *bv, *acc);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    let at = (t.i0 + i) * ldc + t.j0 + v * LANES;
                    // SAFETY: as for the loads; masked-off lanes are not written.
                    unsafe { _mm512_mask_storeu_ps(cp.add(at), mask(v), *acc) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::par::with_threads;
    use crate::kernels::simd::supported;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The sizes every product is tried on: 1, a few, the model widths and one over them
    /// (a masked tail), 80 (two tiles), 160.
    const SIZES: [usize; 6] = [1, 5, 40, 41, 80, 160];

    fn levels() -> Vec<Simd> {
        [Simd::Portable, Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|&l| supported(l))
            .collect()
    }

    fn rand_vec(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect()
    }

    /// `C = A·B` with A(i, p) = `a[i·rs + p·cs]` and row-major `b` `[k, n]`, as the
    /// documented chain: `c = a_p·b_p + c` for p = 0, 1, … from 0, one rounding per step
    /// (`fused`) or two.
    #[allow(clippy::too_many_arguments)]
    fn chain(
        a: &[f32],
        rs: usize,
        cs: usize,
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        fused: bool,
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f32;
                for p in 0..k {
                    let (x, y) = (a[i * rs + p * cs], b[p * n + j]);
                    s = if fused { x.mul_add(y, s) } else { x * y + s };
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    /// `C = A·B` as [`chain`] lays out its operands, in f64, each element with the sum of
    /// the magnitudes of its products (the scale of its rounding error).
    fn exact(
        a: &[f32],
        rs: usize,
        cs: usize,
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<(f64, f64)> {
        let mut c = vec![(0f64, 0f64); m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let t = a[i * rs + p * cs] as f64 * b[p * n + j] as f64;
                    c[i * n + j].0 += t;
                    c[i * n + j].1 += t.abs();
                }
            }
        }
        c
    }

    /// The three products at `level` for `x` `[m, k]`, `w` `[n, k]`, `g` `[m, n]`, each with
    /// its chain reference and its exact value: `(what, got, chain, exact)`.
    #[allow(clippy::type_complexity)]
    fn products(
        level: Simd,
        (m, k, n): (usize, usize, usize),
        rng: &mut ChaCha8Rng,
    ) -> Vec<(&'static str, Vec<f32>, Vec<f32>, Vec<(f64, f64)>)> {
        let (x, w, g) = (
            rand_vec(m * k, rng),
            rand_vec(n * k, rng),
            rand_vec(m * n, rng),
        );
        let fused = level != Simd::Portable;
        let wt = transpose(&w, n, k);
        vec![
            (
                "x Wt",
                matmul_bt(level, &x, &w, m, k, n),
                chain(&x, k, 1, &wt, m, k, n, fused),
                exact(&x, k, 1, &wt, m, k, n),
            ),
            (
                "dy W",
                matmul(level, &g, &w, m, n, k),
                chain(&g, n, 1, &w, m, n, k, fused),
                exact(&g, n, 1, &w, m, n, k),
            ),
            (
                "dyt x",
                matmul_at(level, &g, &x, m, n, k),
                chain(&g, 1, n, &x, n, m, k, fused),
                exact(&g, 1, n, &x, n, m, k),
            ),
        ]
    }

    /// Largest |got − exact| relative to the largest sum of |products| (f32 sums of `k`
    /// products are off by up to about `k·2⁻²⁴` of it, typically by `√k·2⁻²⁴`).
    fn rel_err(got: &[f32], exact: &[(f64, f64)]) -> f64 {
        let scale = exact.iter().fold(f64::MIN_POSITIVE, |s, x| s.max(x.1));
        let err = got
            .iter()
            .zip(exact)
            .fold(0f64, |e, (g, x)| e.max((*g as f64 - x.0).abs()));
        err / scale
    }

    #[test]
    fn every_build_computes_the_documented_chain_and_is_close_to_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for level in levels() {
            for m in [1, 7, 33] {
                for k in SIZES {
                    for n in SIZES {
                        for (what, got, chain, exact) in products(level, (m, k, n), &mut rng) {
                            let at = format!("{what} at {} for m {m} k {k} n {n}", level.name());
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&got), bits(&chain), "{at}");
                            let e = rel_err(&got, &exact);
                            assert!(e <= 1e-6, "{at}: relative error {e}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn long_reductions_carry_on_across_blocks() {
        // `dyᵀ x` over more rows than a reduction block: later blocks reload the tiles.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (rows, n, k) = (2 * KC + 17, 9, 41);
        for level in levels() {
            let (g, x) = (rand_vec(rows * n, &mut rng), rand_vec(rows * k, &mut rng));
            let got = matmul_at(level, &g, &x, rows, n, k);
            let want = chain(&g, 1, n, &x, n, rows, k, level != Simd::Portable);
            assert_eq!(got, want, "{}", level.name());
            let e = rel_err(&got, &exact(&g, 1, n, &x, n, rows, k));
            assert!(e <= 1e-6, "{}: relative error {e}", level.name());
        }
    }

    #[test]
    fn the_serial_matmul_is_the_same_chain() {
        // Short and long reductions (past a block), rows not a multiple of a tile.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for (m, k, n) in [(6, 500, 375), (11, KC + 9, 40), (16, 40, 100), (1, 3, 1)] {
            let (a, b) = (rand_vec(m * k, &mut rng), rand_vec(k * n, &mut rng));
            for level in levels() {
                let got = matmul_serial(level, &a, &b, m, k, n);
                assert_eq!(got, matmul(level, &a, &b, m, k, n), "{}", level.name());
                let want = chain(&a, k, 1, &b, m, k, n, level != Simd::Portable);
                assert_eq!(got, want, "{} m {m} k {k} n {n}", level.name());
            }
        }
    }

    #[test]
    fn avx_builds_agree_bit_for_bit() {
        if !supported(Simd::Avx512) {
            return;
        }
        for seed in 0..3 {
            let shape = (37, 80, 41);
            let a = products(Simd::Avx2, shape, &mut ChaCha8Rng::seed_from_u64(seed));
            let b = products(Simd::Avx512, shape, &mut ChaCha8Rng::seed_from_u64(seed));
            for (a, b) in a.iter().zip(&b) {
                assert_eq!(a.1, b.1, "{}", a.0);
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (m, k, n) = (203, 41, 80);
        let (x, w, g) = (
            rand_vec(m * k, &mut rng),
            rand_vec(n * k, &mut rng),
            rand_vec(m * n, &mut rng),
        );
        let long = 2 * KC + 5;
        let (long_x, long_g) = (rand_vec(long * k, &mut rng), rand_vec(long * n, &mut rng));
        for level in levels() {
            let run = |threads| {
                with_threads(threads, || {
                    [
                        matmul_bt(level, &x, &w, m, k, n),
                        matmul(level, &g, &w, m, n, k),
                        matmul_at(level, &g, &x, m, n, k),
                        // Over more rows than a reduction block.
                        matmul_at(level, &long_g, &long_x, long, n, k),
                    ]
                })
            };
            let one = run(1);
            assert_eq!(one, run(2), "{}: 2 threads", level.name());
            assert_eq!(one, run(3), "{}: 3 threads", level.name());
        }
    }

    #[test]
    fn the_epilogue_sees_every_row_once_with_its_index() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (m, k, n) = (45, 7, 41);
        let (x, w) = (rand_vec(m * k, &mut rng), rand_vec(n * k, &mut rng));
        // Adds the flat index of each element, so a block at the wrong row shows.
        let tag = |r0: usize, rows: &mut [f32]| {
            for (i, v) in (r0 * n..).zip(rows.iter_mut()) {
                *v += i as f32;
            }
        };
        for level in levels() {
            let mut want = matmul_bt(level, &x, &w, m, k, n);
            tag(0, &mut want);
            for threads in 1..4 {
                let got = with_threads(threads, || matmul_bt_then(level, &x, &w, (m, k, n), tag));
                assert_eq!(got, want, "{} on {threads} threads", level.name());
            }
        }
    }

    #[test]
    fn empty_shapes() {
        for level in levels() {
            assert_eq!(matmul(level, &[], &[], 0, 3, 0), Vec::<f32>::new());
            assert_eq!(matmul(level, &[], &[], 2, 0, 3), vec![0f32; 6]);
            assert_eq!(matmul_at(level, &[], &[], 0, 2, 3), vec![0f32; 6]);
            assert_eq!(
                matmul_bt(level, &[1.0, 2.0], &[], 2, 1, 0),
                Vec::<f32>::new()
            );
        }
    }
}
