//! The CTC op against PyTorch's `ctc_loss` (fixtures of scripts/make_ctc_fixtures.py),
//! against brute-force enumeration of alignments, and against finite differences.

use super::*;
use candle_core::{Device, Var};

fn fixtures() -> serde_json::Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ctc/ctc_cases.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| match x.as_str() {
            Some("inf") => f64::INFINITY,
            _ => x.as_f64().unwrap(),
        })
        .collect()
}

/// Largest absolute and relative (to `max(1, |want|)`) errors.
fn errs(got: &[f64], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let mut abs = 0f64;
    let mut rel = 0f64;
    for (g, w) in got.iter().zip(want) {
        if w.is_infinite() {
            assert_eq!(g, w);
            continue;
        }
        let e = (g - w).abs();
        abs = abs.max(e);
        rel = rel.max(e / w.abs().max(1.0));
    }
    (abs, rel)
}

#[test]
fn matches_pytorch_values_and_logit_gradients() {
    let fx = fixtures();
    let dev = Device::Cpu;
    let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dim = |k: &str| case[k].as_u64().unwrap() as usize;
        let (t, b, c) = (dim("T"), dim("B"), dim("C"));
        let logits: Vec<f32> = f64s(&case["logits"]).iter().map(|x| *x as f32).collect();
        let var = Var::from_tensor(&Tensor::from_vec(logits, (t, b, c), &dev).unwrap()).unwrap();
        let lp = candle_nn::ops::log_softmax(var.as_tensor(), 2)
            .unwrap()
            .transpose(0, 1)
            .unwrap();
        let targets: Vec<Vec<u32>> = case["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|tg| f64s(tg).iter().map(|x| *x as u32).collect())
            .collect();
        let lens: Vec<usize> = f64s(&case["input_lengths"])
            .iter()
            .map(|x| *x as usize)
            .collect();
        let nll = ctc_loss(
            &lp,
            &targets,
            &vec![0; b],
            &lens,
            dim("blank"),
            case["zero_infinity"].as_bool().unwrap(),
        )
        .unwrap();
        let got: Vec<f64> = nll.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        let (a, r) = errs(&got, &f64s(&case["nll"]));
        assert!(r < 1e-5, "{name}: nll {got:?} vs {:?}", case["nll"]);
        worst_abs = worst_abs.max(a);
        worst_rel = worst_rel.max(r);
        let w: Vec<f32> = f64s(&case["weights"]).iter().map(|x| *x as f32).collect();
        let w = Tensor::from_vec(w, b, &dev).unwrap();
        let grads = (nll * w).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        let (a, r) = errs(&g, &f64s(&case["grad_logits"]));
        assert!(a < 1e-5, "{name}: gradient error {a}");
        worst_abs = worst_abs.max(a);
        worst_rel = worst_rel.max(r);
    }
    eprintln!("ctc vs PyTorch: max abs error {worst_abs:.3e}, max rel error {worst_rel:.3e}");
}

/// All label paths of length `n` over `c` classes that collapse to `target`.
fn brute_force_nll(lp: &[f64], n: usize, c: usize, target: &[usize], blank: usize) -> f64 {
    let mut total = 0f64;
    let mut path = vec![0usize; n];
    loop {
        let mut collapsed = Vec::new();
        let mut prev = None;
        for &k in &path {
            if Some(k) != prev && k != blank {
                collapsed.push(k);
            }
            prev = Some(k);
        }
        if collapsed == target {
            total += path
                .iter()
                .enumerate()
                .map(|(t, &k)| lp[t * c + k])
                .sum::<f64>()
                .exp();
        }
        // Next path (odometer).
        let mut i = 0;
        loop {
            if i == n {
                return -total.ln();
            }
            path[i] += 1;
            if path[i] < c {
                break;
            }
            path[i] = 0;
            i += 1;
        }
    }
}

/// A normalised `[n, c]` log-probability table from a seed.
fn table(n: usize, c: usize, seed: u64) -> Vec<f64> {
    let mut out = Vec::with_capacity(n * c);
    for t in 0..n {
        let row: Vec<f64> = (0..c)
            .map(|k| (((t * 31 + k * 17) as u64 * 2654435761 + seed) % 1000) as f64 / 400.0)
            .collect();
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        out.extend(row.iter().map(|x| x - lse));
    }
    out
}

#[test]
fn forward_matches_enumeration_of_alignments() {
    for (target, n, blank) in [
        (vec![1usize, 2], 4usize, 0usize),
        (vec![1, 1], 4, 0),
        (vec![], 3, 2),
        (vec![0, 1, 0], 5, 2),
    ] {
        let c = 3;
        let lp = table(n, c, 7 + n as u64);
        let f = |t: usize, k: usize| lp[t * c + k];
        let ext = extended(&target.iter().map(|x| *x as u32).collect::<Vec<_>>(), blank);
        let (_, nll) = forward_one(&f, n, &ext, blank);
        let want = brute_force_nll(&lp, n, c, &target, blank);
        assert!((nll - want).abs() < 1e-10, "{target:?}: {nll} vs {want}");
    }
    // Too short a window: impossible.
    let lp = table(2, 3, 1);
    let f = |t: usize, k: usize| lp[t * 3 + k];
    let (_, nll) = forward_one(&f, 2, &extended(&[1, 1], 0), 0);
    assert_eq!(nll, f64::INFINITY);
}

#[test]
fn gradient_matches_finite_differences_in_f64() {
    // The exact derivative w.r.t. the (free) log-probabilities, not through a softmax.
    let (n, c, blank) = (6, 4, 0);
    let target = [1u32, 3, 3];
    let ext = extended(&target, blank);
    let lp = table(n, c, 3);
    let f = |t: usize, k: usize| lp[t * c + k];
    let g = grad_one(&f, n, &ext, blank, c).unwrap();
    let eps = 1e-6;
    for i in 0..n * c {
        let at = |d: f64| {
            let mut v = lp.clone();
            v[i] += d;
            let f = |t: usize, k: usize| v[t * c + k];
            forward_one(&f, n, &ext, blank).1
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!((fd - g[i]).abs() < 1e-6, "[{i}]: {} vs {fd}", g[i]);
    }
}

#[test]
fn op_with_windows_matches_finite_differences() {
    // Left-padded windows (start > 0) through the candle op, f32 central differences.
    let dev = Device::Cpu;
    let (b, t, c) = (2, 5, 4);
    let raw: Vec<f32> = (0..b * t * c)
        .map(|k| ((k * 7 % 13) as f32 - 6.0) / 5.0)
        .collect();
    let var = Var::from_tensor(&Tensor::from_vec(raw, (b, t, c), &dev).unwrap()).unwrap();
    let targets = vec![vec![1u32, 2], vec![3]];
    let (starts, lens) = (vec![1, 3], vec![4, 2]);
    let loss = |x: &Tensor| -> Tensor {
        let lp = candle_nn::ops::log_softmax(x, 2).unwrap();
        let nll = ctc_loss(&lp, &targets, &starts, &lens, 0, false).unwrap();
        (nll * Tensor::new(&[1.0f32, -0.6], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(var.as_tensor()).backward().unwrap();
    let g: Vec<f32> = grads
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base = var.as_tensor().copy().unwrap();
    let v0: Vec<f32> = base.flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-2f32;
    for i in 0..v0.len() {
        let at = |d: f32| {
            let mut v = v0.clone();
            v[i] += d;
            let x = Tensor::from_vec(v, (b, t, c), &dev).unwrap();
            loss(&x).to_scalar::<f32>().unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() < 2e-3 * (1.0 + fd.abs()),
            "[{i}]: {} vs {fd}",
            g[i]
        );
    }
    // Frames outside the windows get no gradient.
    assert!(g[..c].iter().all(|x| *x == 0.0));
    assert!(g[t * c..t * c + 3 * c].iter().all(|x| *x == 0.0));
}

#[test]
fn bad_arguments_are_errors() {
    let dev = Device::Cpu;
    let lp = Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap();
    let e = ctc_loss(&lp, &[vec![0]], &[0], &[3], 0, false).unwrap_err();
    assert!(e.to_string().contains("blank"), "{e}");
    let e = ctc_loss(&lp, &[vec![1]], &[1], &[3], 0, false).unwrap_err();
    assert!(e.to_string().contains("window"), "{e}");
    let e = ctc_loss(&lp, &[vec![9]], &[0], &[3], 0, false).unwrap_err();
    assert!(e.to_string().contains("not a class"), "{e}");
    assert!(ctc_loss(&lp, &[vec![1], vec![1]], &[0], &[3], 0, false).is_err());
}
