//! Set-up shared by the benches (`mod common;` in each): the `mica` binary's allocator
//! and thread settings, and the median.

/// The `mica` binary's allocator (see `src/main.rs`): with glibc's malloc the per-call
/// buffers are unmapped and faulted in again, and at 2 threads the unmaps' TLB
/// shootdowns made the attention backward slower than at 1 thread.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Applies the binary's run-time settings and returns the thread count
/// (`MICA_BENCH_THREADS`, default 1): mimalloc never purges, candle and rayon use that
/// many threads, and candle's own pool parks after 64 spins unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set (as `cli::main` does).
pub fn setup() -> usize {
    // mimalloc's `mi_option_purge_delay` (15), as in `src/main.rs`.
    // SAFETY: sets one of mimalloc's integer options; no pointer is involved.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let threads = env_usize("MICA_BENCH_THREADS", 1);
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "64");
    }
    threads
}

/// The integer in environment variable `name`, or `default` when unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
