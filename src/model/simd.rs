//! Which SIMD build of mica's hand-written CPU kernels runs (fused attention, PEA, MMD).
//!
//! The kernels are written once as plain loops over 16-lane arrays and compiled three
//! times: portable (the crate's target, SSE2 on x86-64), AVX2 + FMA, and AVX-512
//! (F, DQ, VL, BW: 16 f32 lanes, and 64-bit multiplies for the dropout hash). The best
//! level the CPU supports is picked at run time; `MICA_SIMD=portable|avx2|avx512`
//! lowers it (for benchmarks; a level the CPU lacks falls back to the best it has).
//! Every level computes the same function; results agree to rounding (FMA contraction
//! differs), which the tests check.

use std::cell::Cell;
use std::sync::OnceLock;

/// A SIMD build of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// The crate's compile target, no FMA.
    Portable,
    /// AVX2 + FMA (x86-64).
    Avx2,
    /// AVX-512 F/DQ/VL/BW + FMA (x86-64).
    Avx512,
}

impl Simd {
    /// Lower-case name (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable => "portable",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// Whether this CPU can run `level`.
pub fn supported(level: Simd) -> bool {
    match level {
        Simd::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => {
            supported(Simd::Avx2)
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("popcnt")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// The best level this CPU supports.
pub fn best() -> Simd {
    [Simd::Avx512, Simd::Avx2]
        .into_iter()
        .find(|&l| supported(l))
        .unwrap_or(Simd::Portable)
}

fn from_env() -> Simd {
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let var = std::env::var("MICA_SIMD").ok();
        let want = match var.as_deref() {
            None | Some("") | Some("avx512") => Simd::Avx512,
            Some("portable") => Simd::Portable,
            Some("avx2") => Simd::Avx2,
            Some(other) => {
                eprintln!(
                    "warning: MICA_SIMD={other:?} is not one of portable, avx2, avx512; using {}",
                    best().name()
                );
                Simd::Avx512
            }
        };
        let level = want.min(best());
        if want != Simd::Avx512 && level != want {
            eprintln!(
                "warning: MICA_SIMD={} is not supported by this CPU; using {}",
                want.name(),
                level.name()
            );
        }
        level
    })
}

thread_local! {
    static OVERRIDE: Cell<Option<Simd>> = const { Cell::new(None) };
}

/// The level kernels launched from this thread use: the [`with_simd`] override, else
/// `MICA_SIMD` capped by [`best`]. Callers read it once and hand it to their worker
/// threads.
pub fn current() -> Simd {
    OVERRIDE.with(|o| o.get()).unwrap_or_else(from_env)
}

/// Runs `f` with kernels launched from this thread at `level` (capped by [`best`]).
pub fn with_simd<R>(level: Simd, f: impl FnOnce() -> R) -> R {
    let before = OVERRIDE.with(|o| o.replace(Some(level.min(best()))));
    let r = f();
    OVERRIDE.with(|o| o.set(before));
    r
}

/// `Σ a_j b_j` accumulated in 16 independent lanes, so that it vectorises (inlined into
/// the `#[target_feature]` builds of the callers).
#[inline(always)]
pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let mut ca = a.chunks_exact(L);
    let mut cb = b.chunks_exact(L);
    for (x, y) in ca.by_ref().zip(cb.by_ref()) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Calls `$path::$name::<FMA>(args)` in the build for `$level`: `$path::avx512::$name`,
/// `$path::avx2::$name` (both `#[target_feature]` wrappers) or the portable generic.
macro_rules! simd_dispatch {
    ($level:expr, $path:path, $name:ident ( $($arg:expr),* $(,)? )) => {{
        use $path as kernels_path;
        match $level {
            #[cfg(target_arch = "x86_64")]
            $crate::model::simd::Simd::Avx512 => {
                // SAFETY: `Simd::Avx512` is only ever selected when `supported` found the
                // features the wrapper enables.
                unsafe { kernels_path::avx512::$name($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            $crate::model::simd::Simd::Avx2 => {
                // SAFETY: as above, for AVX2 + FMA.
                unsafe { kernels_path::avx2::$name($($arg),*) }
            }
            _ => kernels_path::$name::<false>($($arg),*),
        }
    }};
}
pub(crate) use simd_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_is_capped_and_restored() {
        let outer = current();
        let got = with_simd(Simd::Avx512, current);
        assert_eq!(got, best());
        assert_eq!(with_simd(Simd::Portable, current), Simd::Portable);
        assert_eq!(current(), outer);
        assert!(supported(Simd::Portable));
    }
}
