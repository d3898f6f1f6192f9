//! `train_with`'s hook: progress after every batch and epoch, and a stop that keeps the
//! last checkpoint and resumes to the same result as an uninterrupted run.

use mica::config::{Config, Preset, Task, Variant};
use mica::data::synth::{generate, SynthConfig, SynthSize};
use mica::train::trainer::{train, train_with, Progress, Stopped, TrainOptions};
use std::ops::ControlFlow;
use std::path::Path;

fn tiny() -> (Config, mica::data::Dataset) {
    let mut sc = SynthConfig::preset(SynthSize::Small, 3);
    (sc.n_train, sc.n_valid, sc.n_test) = (12, 6, 6);
    let ds = generate(&sc).unwrap();
    let mut cfg = Config::preset(
        Preset::SynthSmall,
        Variant::Mica,
        Task::Mosi,
        sc.dims,
        sc.lengths,
    );
    cfg.model.d = 8;
    cfg.model.num_heads = 2;
    cfg.model.layers = 1;
    cfg.align.mmd_max_samples = 32;
    cfg.train.batch_size = 5;
    cfg.train.epochs = 3;
    (cfg, ds)
}

fn opts(out: &Path, resume: bool) -> TrainOptions {
    TrainOptions {
        out: out.to_path_buf(),
        resume,
        stop_after_epochs: None,
        verbose: false,
        data_source: None,
    }
}

#[test]
fn hook_sees_every_batch_and_epoch_and_stops_cleanly() {
    let (cfg, ds) = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let straight = train(&cfg, &ds, &opts(&tmp.path().join("straight"), false)).unwrap();

    // Stop in the middle of epoch 2: epoch 1's checkpoint stays.
    let run = tmp.path().join("stopped");
    let mut seen = Vec::new();
    let err = train_with(&cfg, &ds, &opts(&run, false), &mut |p| {
        seen.push(p.clone());
        match p {
            Progress::Batch { epoch: 2, .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    })
    .unwrap_err();
    let stopped = err.downcast_ref::<Stopped>().expect("a Stopped error");
    assert_eq!(stopped.epochs_done, 1);
    assert!(stopped.message.contains("--resume"), "{}", stopped.message);
    // 12 samples in batches of 5: 5, 10, 12 in epoch 1, then the epoch, then 5 in epoch 2.
    let samples: Vec<(usize, usize)> = seen
        .iter()
        .filter_map(|p| match p {
            Progress::Batch { epoch, samples, .. } => Some((*epoch, *samples)),
            Progress::Epoch { .. } => None,
        })
        .collect();
    assert_eq!(samples, vec![(1, 5), (1, 10), (1, 12), (2, 5)]);
    match &seen[3] {
        Progress::Epoch { epochs, log } => {
            assert_eq!((*epochs, log.epoch), (3, 1));
            assert_eq!(log.train_loss, straight.history[0].train_loss);
        }
        other => panic!("expected the end of epoch 1, got {other:?}"),
    }
    assert!(run.join("last").join("checkpoint.json").is_file());
    assert!(!run.join("metrics.json").exists());

    // Resumed, it ends where the uninterrupted run ended.
    let resumed = train(&cfg, &ds, &opts(&run, true)).unwrap();
    let losses = |h: &[mica::train::trainer::EpochLog]| {
        h.iter()
            .map(|e| (e.epoch, e.train_loss, e.valid_loss, e.lr))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&resumed.history), losses(&straight.history));
    assert_eq!(resumed.test, straight.test);
}
