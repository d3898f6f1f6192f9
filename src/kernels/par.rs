//! Splitting the row-wise and pointwise CPU custom ops over candle's threads.
//!
//! Every split here is over OUTPUT elements: each element is still computed by exactly
//! the arithmetic of the serial loop, by one thread, so results do not depend on the
//! thread count. Reductions over rows (column sums) are split over COLUMNS, each column
//! still summed over the rows in order: bit-identical too.
//!
//! Small tensors (under [`MIN_SPLIT`] elements) stay on the calling thread: a
//! hand-off to the pool costs microseconds and wakes its workers.

use candle_core::utils::get_num_threads;
use rayon::prelude::*;

/// Runs `f` on every item on the current rayon pool (the `mica` binary runs its job inside
/// one; candle's matmul uses the same pool, its elementwise ops their own): no thread
/// spawned.
fn run<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    items.into_par_iter().for_each(f);
}

/// Fewest elements for which an op splits its work.
pub(crate) const MIN_SPLIT: usize = 1 << 16;

#[cfg(test)]
thread_local! {
    static OVERRIDE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every op called from this thread using `threads` threads whatever the
/// size of its tensors (tests: the split paths on small shapes, 1 vs 2 threads).
#[cfg(test)]
pub(crate) fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let old = OVERRIDE.with(|c| c.replace(Some(threads)));
    let r = f();
    OVERRIDE.with(|c| c.set(old));
    r
}

/// Threads for an op over `n` elements: candle's thread count, 1 under [`MIN_SPLIT`].
pub(crate) fn threads_for(n: usize) -> usize {
    #[cfg(test)]
    if let Some(t) = OVERRIDE.with(|c| c.get()) {
        return t;
    }
    if n < MIN_SPLIT {
        1
    } else {
        get_num_threads()
    }
}

/// Rows per chunk when `units` units are split over `threads` threads (0: no split).
fn per_chunk(threads: usize, units: usize) -> usize {
    if threads <= 1 || units <= 1 {
        0
    } else {
        units.div_ceil(threads.min(units))
    }
}

/// Runs `f(first_unit, chunk)` over `out` cut into chunks of whole `unit`-element units
/// (rows), one per thread; `f(0, out)` on this thread when `threads` ≤ 1.
pub(crate) fn for_chunks<T: Send>(
    threads: usize,
    out: &mut [T],
    unit: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let units = out.len().checked_div(unit).unwrap_or(0);
    let per = per_chunk(threads, units);
    if per == 0 {
        f(0, out);
        return;
    }
    let items: Vec<_> = out
        .chunks_mut(per * unit)
        .enumerate()
        .map(|(i, c)| (i * per, c))
        .collect();
    run(items, |(u0, c)| f(u0, c));
}

/// [`for_chunks`] over two outputs cut at the same units (`unit_a`, `unit_b` elements per
/// unit in each): `f(first_unit, chunk_a, chunk_b)`.
pub(crate) fn for_chunks2<A: Send, B: Send>(
    threads: usize,
    a: &mut [A],
    unit_a: usize,
    b: &mut [B],
    unit_b: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    let units = a.len().checked_div(unit_a).unwrap_or(0);
    let per = per_chunk(threads, units);
    if per == 0 || unit_b == 0 {
        f(0, a, b);
        return;
    }
    let items: Vec<_> = a
        .chunks_mut(per * unit_a)
        .zip(b.chunks_mut(per * unit_b))
        .enumerate()
        .map(|(i, (ca, cb))| (i * per, ca, cb))
        .collect();
    run(items, |(u0, ca, cb)| f(u0, ca, cb));
}

/// `n` zeros, written by `threads` threads when more than one (rayon's pool): a large
/// buffer about to be filled in parallel is not first cleared by one thread alone.
pub(crate) fn zeros(threads: usize, n: usize) -> Vec<f32> {
    if threads <= 1 {
        return vec![0f32; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0f32, n));
    v
}

/// A new `n`-element buffer, `f(first, chunk)` filling each chunk of it (split over
/// threads for large `n`): `f` gets flat offsets (unit 1).
pub(crate) fn fill(n: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    fill_rows(n, 1, f)
}

/// A new `n`-element buffer of `unit`-element rows, `f(first_row, chunk)` filling each
/// chunk of whole rows (split over threads for large `n`).
pub(crate) fn fill_rows(
    n: usize,
    unit: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = vec![0f32; n];
    for_chunks(threads_for(n), &mut out, unit, f);
    out
}

/// Column sums of the row-major `[rows, e]` values `v(row, c)` read by `f` over a column
/// range: `acc` `[e]` split into column ranges, each filled by `f(first_col, acc_chunk)`,
/// which must add the rows in order. `n` (the elements read) picks the thread count.
pub(crate) fn col_reduce(
    n: usize,
    e: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut acc = vec![0f32; e];
    for_chunks(threads_for(n), &mut acc, 1, f);
    acc
}

/// Runs `f` on every item, spread over `threads` contiguous groups (every task of one call
/// costs the same) run on the current rayon pool (the one candle's matmul uses too), so no
/// thread is spawned.
pub(crate) fn for_each_task<T: Send>(threads: usize, items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    let threads = threads.max(1).min(items.len());
    if threads <= 1 {
        items.into_iter().for_each(f);
        return;
    }
    let per = items.len().div_ceil(threads);
    let mut groups: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    groups
        .into_par_iter()
        .for_each(|g| g.into_iter().for_each(&f));
}

/// `[rows, cols]` row-major to `[cols, rows]`.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_unit_once_in_order() {
        for threads in 1..5 {
            for (units, unit) in [(0, 3), (1, 3), (2, 3), (7, 3), (10, 1), (5, 0)] {
                let mut out = vec![usize::MAX; units * unit.max(1)];
                for_chunks(threads, &mut out, unit, |u0, c| {
                    for (i, v) in c.iter_mut().enumerate() {
                        *v = u0 * unit.max(1) + i;
                    }
                });
                let want: Vec<usize> = (0..out.len()).collect();
                assert_eq!(out, want, "threads {threads} units {units} unit {unit}");
            }
        }
        let (mut a, mut b) = (vec![0usize; 14], vec![0usize; 7]);
        for_chunks2(3, &mut a, 2, &mut b, 1, |u0, ca, cb| {
            for (i, v) in ca.iter_mut().enumerate() {
                *v = u0 * 2 + i;
            }
            for (i, v) in cb.iter_mut().enumerate() {
                *v = u0 + i;
            }
        });
        assert_eq!(a, (0..14).collect::<Vec<_>>());
        assert_eq!(b, (0..7).collect::<Vec<_>>());
    }
}
