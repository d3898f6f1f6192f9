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

/// Vectorisable `exp` for `x ≤ ~88`: Cephes' `expf` (round-to-nearest range reduction by
/// `ln 2` in two parts, degree-6 polynomial, exponent by bit assembly). Inputs below
/// `-87.3` (where `f32::exp` gives a subnormal or 0) return `~1.2e-38`, which is
/// negligible against the softmax sums (≥ 1) it is added to.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    exp_generic::<false>(x)
}

/// `a·b + c`: one fused multiply-add in the FMA builds (`F`), two roundings otherwise.
#[inline(always)]
pub(crate) fn fmadd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// [`exp_approx`] with FMA contraction (`F`, the AVX2/AVX-512 builds) or without.
#[inline(always)]
pub(crate) fn exp_generic<const F: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer, which then sits in the low mantissa
    // bits (`bits = 0x4B40_0000 + n`), so no float-to-int conversion is needed (those
    // saturate in Rust and would keep the loop from vectorising).
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.336_55 { -87.336_55 } else { x };
    let x = if x > 88.37 { 88.37 } else { x };
    let t = fmadd::<F>(x, LOG2E, ROUND);
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = fmadd::<F>(-n, C2, fmadd::<F>(-n, C1, x));
    let mut p = 1.987_569_1e-4f32;
    p = fmadd::<F>(p, r, 1.398_2e-3);
    p = fmadd::<F>(p, r, 8.333_452e-3);
    p = fmadd::<F>(p, r, 4.166_579_6e-2);
    p = fmadd::<F>(p, r, 1.666_666_5e-1);
    p = fmadd::<F>(p, r, 0.5); // Cephes: 5.0000001201e-1, which is 0.5 in f32.
    let y = fmadd::<F>(p, r * r, r) + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    y * scale
}

/// AVX-512 mask of lanes `0..n` of a 16-lane chunk (`n ≥ 16`: all).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn lanes_below(n: usize) -> std::arch::x86_64::__mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as std::arch::x86_64::__mmask16
    }
}

/// Calls `$path::$name::<FMA>(args)` in the build for `$level`: `$path::avx512::$name`,
/// `$path::avx2::$name` (both `#[target_feature]` wrappers) or the portable generic.
macro_rules! simd_dispatch {
    ($level:expr, $path:path, $name:ident ( $($arg:expr),* $(,)? )) => {{
        use $path as kernels_path;
        match $level {
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::simd::Simd::Avx512 => {
                // SAFETY: `Simd::Avx512` is only ever selected when `supported` found the
                // features the wrapper enables.
                unsafe { kernels_path::avx512::$name($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::simd::Simd::Avx2 => {
                // SAFETY: as above, for AVX2 + FMA.
                unsafe { kernels_path::avx2::$name($($arg),*) }
            }
            _ => kernels_path::$name::<false>($($arg),*),
        }
    }};
}
pub(crate) use simd_dispatch;

/// The `#[target_feature]` builds of a kernel module, written once: for each ISA named
/// (`avx2`: AVX2 + FMA; `avx512`: AVX-512 F/DQ/VL/BW + AVX2 + FMA — the only place these
/// feature strings are spelled for the generic kernels), a module of that name holding
/// each listed function compiled with the ISA's features. Each function is a wrapper whose
/// body calls the generic kernel (usually with FMA, `::<true>`); [`simd_dispatch`] picks
/// the build at run time.
///
/// ```text
/// simd_builds!(avx2, avx512; {
///     /// [`super::rows`] in this build.
///     pub fn rows(s: &Sweep, grad: &mut [f32]) -> f64 { super::rows::<true>(s, grad) }
/// });
/// ```
macro_rules! simd_builds {
    (@fns $f:literal;) => {};
    (@fns $f:literal;
        $(#[$m:meta])*
        pub fn $name:ident $(<const $c:ident : $ct:ty>)? ( $($a:ident : $t:ty),* $(,)? )
            $(-> $r:ty)? $body:block
        $($rest:tt)*
    ) => {
        $(#[$m])*
        #[target_feature(enable = $f)]
        pub fn $name $(<const $c: $ct>)? ($($a: $t),*) $(-> $r)? $body
        $crate::kernels::simd::simd_builds!(@fns $f; $($rest)*);
    };
    (@module avx2 { $($fns:tt)* }) => {
        /// The AVX2 + FMA build.
        #[cfg(target_arch = "x86_64")]
        pub mod avx2 {
            #[allow(unused_imports)]
            use super::*;
            $crate::kernels::simd::simd_builds!(@fns "avx2,fma"; $($fns)*);
        }
    };
    (@module avx512 { $($fns:tt)* }) => {
        /// The AVX-512 build.
        #[cfg(target_arch = "x86_64")]
        pub mod avx512 {
            #[allow(unused_imports)]
            use super::*;
            $crate::kernels::simd::simd_builds!(
                @fns "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"; $($fns)*
            );
        }
    };
    ($($isa:ident),+ ; $fns:tt) => {
        $($crate::kernels::simd::simd_builds!(@module $isa $fns);)+
    };
}
pub(crate) use simd_builds;

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
