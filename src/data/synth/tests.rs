use super::probe::{pearson, probe};
use super::*;

fn small(seed: u64) -> SynthConfig {
    SynthConfig::preset(SynthSize::Small, seed)
}

fn small_n(seed: u64, n: [usize; 3]) -> SynthConfig {
    let mut c = small(seed);
    [c.n_train, c.n_valid, c.n_test] = n;
    c
}

/// Every value of a dataset as bits (NaN-safe, unlike `PartialEq`).
fn bits(ds: &Dataset) -> Vec<u32> {
    let mut out = Vec::new();
    for split in ds.splits.values() {
        for m in split.modalities() {
            out.extend(m.data.iter().map(|v| v.to_bits()));
            out.extend(m.lengths.iter().map(|&l| l as u32));
        }
        for iv in &split.intervals.as_ref().unwrap().per_modality {
            out.extend(iv.iter().map(|v| v.to_bits()));
        }
        match &split.labels {
            Labels::Sentiment(v) => out.extend(v.iter().map(|x| x.to_bits())),
            Labels::Emotion(v) => out.extend(v.iter().map(|&x| x as u32)),
        }
    }
    out
}

#[test]
fn same_seed_gives_identical_bytes() {
    let a = generate(&small_n(5, [40, 10, 10])).unwrap();
    let b = generate(&small_n(5, [40, 10, 10])).unwrap();
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(a.provenance, b.provenance);
    assert_eq!(a.splits["train"].ids, b.splits["train"].ids);
}

#[test]
fn different_seeds_differ_everywhere() {
    let a = generate(&small_n(5, [40, 10, 10])).unwrap();
    let b = generate(&small_n(6, [40, 10, 10])).unwrap();
    for name in SPLITS {
        let (sa, sb) = (&a.splits[name], &b.splits[name]);
        for (ma, mb) in sa.modalities().iter().zip(sb.modalities()) {
            assert_ne!(ma.data, mb.data, "{name}");
        }
        assert_ne!(sa.labels, sb.labels, "{name}");
    }
}

#[test]
fn samples_do_not_depend_on_split_size() {
    // One random stream per sample: a larger split starts with the smaller one's samples.
    let a = generate(&small_n(9, [7, 3, 3])).unwrap();
    let b = generate(&small_n(9, [600, 3, 3])).unwrap();
    let (ta, tb) = (&a.splits["train"].audio, &b.splits["train"].audio);
    assert_eq!(ta.data[..], tb.data[..ta.data.len()]);
    assert_eq!(a.splits["test"].vision, b.splits["test"].vision);
}

#[test]
fn signal_needs_alignment_on_small() {
    let ds = generate(&small(0)).unwrap();
    let r = probe(&ds).unwrap();
    eprintln!("small: {r:?}");
    assert!(r.aligned_r > 0.6, "{r:?}");
    assert!(r.aligned_r - r.pooled_r >= 0.3, "{r:?}");
}

#[test]
fn signal_needs_alignment_on_emotions() {
    let mut cfg = small(1);
    cfg.labels = LabelKind::Emotion;
    let ds = generate(&cfg).unwrap();
    let r = probe(&ds).unwrap();
    eprintln!("small/emotion: {r:?}");
    assert!(r.aligned_r - r.pooled_r >= 0.3, "{r:?}");
}

#[test]
fn without_bursts_pooled_text_suffices() {
    // Control: with no cross-modal modifiers the label is a sum of word polarities, which
    // pooled features read as well as the aligned probe does.
    let mut cfg = small(2);
    (cfg.p_flip, cfg.p_emphasis) = (0.0, 0.0);
    let r = probe(&generate(&cfg).unwrap()).unwrap();
    eprintln!("small/no-bursts: {r:?}");
    assert!(
        r.pooled_r > 0.6 && (r.aligned_r - r.pooled_r).abs() < 0.2,
        "{r:?}"
    );
}

/// Checks padding, lengths, intervals and labels of every split.
fn check_structure(ds: &Dataset, cfg: &SynthConfig) {
    for (name, split) in &ds.splits {
        let n = split.len();
        let iv = split
            .intervals
            .as_ref()
            .expect("synthetic data has intervals");
        for (m, md) in split.modalities().into_iter().enumerate() {
            assert_eq!(
                (md.n, md.t, md.d),
                (n, cfg.lengths[m], cfg.dims[m]),
                "{name} {m}"
            );
            assert_eq!(md.data.len(), n * md.t * md.d);
            // Lengths agree with MulT's leading-zero-frame rule.
            let derived = Modality::from_left_padded(md.data.clone(), n, md.t, md.d);
            assert_eq!(derived.lengths, md.lengths, "{name} {m}");
            assert_eq!(iv.per_modality[m].len(), n * md.t * 2);
            for i in 0..n {
                let len = md.lengths[i];
                assert!(len >= 1 && len <= md.t);
                let pad = md.t - len;
                let s = md.sample(i);
                assert!(
                    s[..pad * md.d].iter().all(|&x| x == 0.0),
                    "padding not zero"
                );
                for f in s[pad * md.d..].chunks_exact(md.d) {
                    assert!(
                        f[0] != 0.0,
                        "{name} {m} {i}: real frame with channel 0 == 0"
                    );
                    assert!(f.iter().all(|x| x.is_finite()));
                }
                let ivs = sample_intervals(&iv.per_modality[m], n, i);
                assert!(ivs[..pad].iter().all(|p| p[0].is_nan() && p[1].is_nan()));
                let real = &ivs[pad..];
                assert!(
                    real.iter().all(|p| p[0] >= 0.0 && p[0] < p[1]),
                    "{name} {m}"
                );
                assert!(
                    real.windows(2).all(|w| w[0][1] <= w[1][0]),
                    "{name} {m} {i}: intervals not increasing"
                );
                if m > 0 {
                    // Frames tile their stream: each starts where the previous one ends.
                    assert!(real.windows(2).all(|w| w[0][1] == w[1][0]));
                }
            }
        }
        match &split.labels {
            Labels::Sentiment(v) => {
                assert!(v.iter().all(|x| (-3.0..=3.0).contains(x)));
                if n >= 20 {
                    let rms = (v.iter().map(|x| x * x).sum::<f32>() / n as f32).sqrt();
                    assert!(rms > 0.5, "labels barely vary: rms {rms}");
                }
            }
            Labels::Emotion(v) => {
                assert_eq!(v.len(), 4 * n);
                assert!(v.chunks_exact(4).all(|e| e.iter().sum::<u8>() == 1));
            }
        }
        assert_eq!(split.ids.as_ref().map(Vec::len), Some(n));
    }
}

#[test]
fn structure_of_small() {
    let cfg = small_n(3, [200, 20, 20]);
    check_structure(&generate(&cfg).unwrap(), &cfg);
}

#[test]
fn structure_of_every_preset_with_few_samples() {
    for size in [
        SynthSize::Small,
        SynthSize::Mosi,
        SynthSize::Mosei,
        SynthSize::Iemocap,
    ] {
        let mut cfg = SynthConfig::preset(size, 4);
        [cfg.n_train, cfg.n_valid, cfg.n_test] = [6, 2, 2];
        let ds = generate(&cfg).unwrap();
        check_structure(&ds, &cfg);
        let kind = match ds.splits["train"].labels {
            Labels::Sentiment(_) => LabelKind::Sentiment,
            Labels::Emotion(_) => LabelKind::Emotion,
        };
        assert_eq!(kind, cfg.labels);
    }
}

#[test]
fn presets_match_the_real_benchmarks() {
    let p = |s| SynthConfig::preset(s, 0);
    let m = p(SynthSize::Mosi);
    assert_eq!((m.lengths, m.dims), ([50, 375, 500], [300, 5, 20]));
    assert_eq!(m.split_sizes(), [1284, 229, 686]);
    let m = p(SynthSize::Mosei);
    assert_eq!((m.lengths, m.dims), ([50, 500, 500], [300, 74, 35]));
    assert_eq!(m.split_sizes(), [16265, 1869, 4643]);
    let m = p(SynthSize::Iemocap);
    assert_eq!((m.lengths, m.dims), ([20, 400, 500], [300, 74, 35]));
    assert_eq!(
        (m.split_sizes(), m.labels),
        ([2717, 798, 938], LabelKind::Emotion)
    );
    for s in [
        SynthSize::Small,
        SynthSize::Mosi,
        SynthSize::Mosei,
        SynthSize::Iemocap,
    ] {
        p(s).validate().unwrap();
        assert_eq!(SynthSize::from_name(s.name()), Some(s));
    }
}

#[test]
fn config_round_trips_through_json() {
    let c = small(11);
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<SynthConfig>(&json).unwrap(), c);
    assert!(provenance(&c).contains(&json));
}

#[test]
fn invalid_configs_are_refused() {
    let mut c = small(0);
    c.warp = 0.95;
    assert!(generate(&c).is_err());
    let mut c = small(0);
    c.lengths[AUDIO] = 4; // a 0.25 s clip at 16 Hz cannot hold three words
    assert!(c.validate().unwrap_err().to_string().contains("lengths"));
    let mut c = small(0);
    c.audio_hz = [20.0, 10.0];
    assert!(c.validate().is_err());
}

/// Column means and standard deviations of the real frames of one modality.
fn column_stats(m: &Modality) -> (Vec<f64>, Vec<f64>) {
    let mut rows = Vec::new();
    for i in 0..m.n {
        let s = m.sample(i);
        rows.extend(
            s[(m.t - m.lengths[i]) * m.d..]
                .chunks_exact(m.d)
                .map(|r| r.to_vec()),
        );
    }
    let n = rows.len() as f64;
    let mean: Vec<f64> = (0..m.d)
        .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / n)
        .collect();
    let sd = (0..m.d)
        .map(|j| {
            (rows
                .iter()
                .map(|r| (r[j] as f64 - mean[j]).powi(2))
                .sum::<f64>()
                / n)
                .sqrt()
        })
        .collect();
    (mean, sd)
}

#[test]
fn discrepancy_knob_controls_heterogeneity() {
    let mut cfg = small_n(8, [300, 2, 2]);
    cfg.discrepancy = 0.0;
    let flat = generate(&cfg).unwrap();
    for m in flat.splits["train"].modalities() {
        let (mean, sd) = column_stats(m);
        assert!(mean.iter().all(|x| x.abs() < 0.6), "{mean:?}");
        assert!(sd.iter().all(|s| (0.6..2.0).contains(s)), "{sd:?}");
    }
    cfg.discrepancy = 1.0;
    let het = generate(&cfg).unwrap();
    let [_, (ma, sa), (mv, sv)] = het.splits["train"].modalities().map(column_stats);
    let spread = |sd: &[f64]| {
        let live: Vec<f64> = sd.iter().copied().filter(|&s| s > 0.0).collect();
        live.iter().cloned().fold(0.0, f64::max) / live.iter().cloned().fold(f64::MAX, f64::min)
    };
    assert!(spread(&sa) > 5.0, "audio scales {sa:?}");
    assert!(
        sa.iter().chain(&sv).any(|&s| s == 0.0),
        "no constant column"
    );
    let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        (mean_of(&ma) - mean_of(&mv)).abs() > 1.0,
        "{ma:?} vs {mv:?}"
    );
}

/// Durations of the real frames of modality `m` of sample `i`.
fn frame_durations(split: &Split, m: usize, i: usize) -> Vec<f32> {
    let iv = split.intervals.as_ref().unwrap();
    sample_intervals(&iv.per_modality[m], split.len(), i)
        .into_iter()
        .filter(|p| !p[0].is_nan())
        .map(|p| p[1] - p[0])
        .collect()
}

#[test]
fn asynchrony_knobs_shape_the_frame_grid() {
    let mut cfg = small_n(12, [30, 2, 2]);
    (cfg.jitter, cfg.warp, cfg.max_offset_s) = (0.0, 0.0, 0.0);
    let sync = generate(&cfg).unwrap();
    let sync_train = &sync.splits["train"];
    for i in 0..30 {
        let d = frame_durations(sync_train, AUDIO, i);
        let (lo, hi) = d
            .iter()
            .fold((f32::MAX, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(hi - lo < 1e-4, "uniform grid expected, got {lo}..{hi}");
        let ivs = sample_intervals(
            &sync_train.intervals.as_ref().unwrap().per_modality[2],
            30,
            i,
        );
        let first = ivs.iter().find(|p| !p[0].is_nan()).unwrap();
        assert_eq!(first[0], 0.0, "no offset expected");
    }
    let asyncd = generate(&small_n(12, [30, 2, 2])).unwrap();
    let varied = (0..30)
        .filter(|&i| {
            let d = frame_durations(&asyncd.splits["train"], AUDIO, i);
            let (lo, hi) = d
                .iter()
                .fold((f32::MAX, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
            hi > 1.2 * lo
        })
        .count();
    assert!(
        varied >= 25,
        "only {varied}/30 samples have a non-uniform grid"
    );
}

#[test]
fn word_lengths_and_positions_are_not_proportional() {
    // Asynchrony: the audio frame co-occurring with the k-th word is not at a fixed ratio of
    // positions; measure the spread of (audio index / text index) over words.
    let ds = generate(&small_n(13, [100, 2, 2])).unwrap();
    let split = &ds.splits["train"];
    let iv = split.intervals.as_ref().unwrap();
    let mut ratios = Vec::new();
    for i in 0..split.len() {
        let (pl, pa) = (
            split.text.t - split.text.lengths[i],
            split.audio.t - split.audio.lengths[i],
        );
        for (k, srcs) in cooccur(iv, split.len(), TEXT, AUDIO, i)
            .iter()
            .enumerate()
            .skip(pl)
        {
            if let Some(&j) = srcs.first() {
                ratios.push(((j - pa) as f64 + 0.5) / ((k - pl) as f64 + 0.5));
            }
        }
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let cv = (ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / ratios.len() as f64).sqrt()
        / mean;
    assert!(cv > 0.2, "co-occurrence too regular: cv {cv}");
}

#[test]
fn cooccur_matches_brute_force_overlap() {
    let ds = generate(&small_n(14, [20, 2, 2])).unwrap();
    let split = &ds.splits["train"];
    let iv = split.intervals.as_ref().unwrap();
    let n = split.len();
    for (tgt, src) in [(0, 1), (0, 2), (1, 2), (2, 0), (1, 0)] {
        for i in 0..n {
            let got = cooccur(iv, n, tgt, src, i);
            let t_iv = sample_intervals(&iv.per_modality[tgt], n, i);
            let s_iv = sample_intervals(&iv.per_modality[src], n, i);
            assert_eq!(got.len(), t_iv.len());
            for (k, t) in t_iv.iter().enumerate() {
                let want: Vec<usize> = (0..s_iv.len())
                    .filter(|&j| !t[0].is_nan() && !s_iv[j][0].is_nan() && overlaps(s_iv[j], *t))
                    .collect();
                assert_eq!(got[k], want, "{tgt}->{src} sample {i} step {k}");
            }
        }
    }
}

#[test]
fn dataset_by_name_knows_the_four_presets() {
    let ds = dataset_by_name("synth-small", 3).unwrap();
    assert_eq!(ds.format, "synth");
    assert_eq!(ds.splits["valid"].len(), 400);
    assert_eq!(ds.splits["train"].text.d, 16);
    let err = dataset_by_name("synth-huge", 0).unwrap_err().to_string();
    assert!(err.contains("synth-small"), "{err}");
    assert!(dataset_by_name("mosi", 0).is_err());
}

#[test]
fn warp_is_monotone_and_fixes_the_ends() {
    for a in [-0.8f32, -0.3, 0.0, 0.5, 0.8] {
        for k in [1.0, 2.0, 3.0] {
            assert!(warp01(0.0, a, k).abs() < 1e-6 && (warp01(1.0, a, k) - 1.0).abs() < 1e-6);
            let xs: Vec<f32> = (0..=100).map(|j| warp01(j as f32 / 100.0, a, k)).collect();
            assert!(xs.windows(2).all(|w| w[1] > w[0]), "a={a} k={k}");
        }
    }
}

#[test]
fn emotion_rule_is_one_hot() {
    assert_eq!(emotion_of(1.0, false), [0, 1, 0, 0]);
    assert_eq!(emotion_of(0.2, true), [1, 0, 0, 0]);
    assert_eq!(emotion_of(-1.0, false), [0, 0, 1, 0]);
    assert_eq!(emotion_of(-1.0, true), [0, 0, 0, 1]);
}

#[test]
fn pearson_is_correct_on_known_series() {
    let a = [1.0, 2.0, 3.0, 4.0];
    assert!((pearson(&a, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
    assert!((pearson(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    assert_eq!(pearson(&a, &[1.0; 4]), 0.0);
}
