//! `torch.optim.lr_scheduler.ReduceLROnPlateau` (mode min, relative threshold), stepped
//! once per epoch on the validation loss, as MulT does.

use serde::{Deserialize, Serialize};

/// Scheduler state (saved with the last checkpoint so a resumed run continues exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceLrOnPlateau {
    /// Multiplicative decay.
    pub factor: f64,
    /// Epochs without improvement tolerated before decaying.
    pub patience: usize,
    /// Relative improvement threshold (PyTorch default 1e-4).
    pub threshold: f64,
    /// Best value seen (`inf` at start; JSON `null`).
    pub best: Option<f64>,
    /// Epochs since the last improvement.
    pub num_bad_epochs: usize,
}

impl ReduceLrOnPlateau {
    /// A fresh scheduler.
    pub fn new(factor: f64, patience: usize) -> Self {
        ReduceLrOnPlateau {
            factor,
            patience,
            threshold: 1e-4,
            best: None,
            num_bad_epochs: 0,
        }
    }

    /// Feeds one validation loss; returns the new learning rate.
    pub fn step(&mut self, metric: f64, lr: f64) -> f64 {
        let better = match self.best {
            None => true,
            Some(b) => metric < b * (1.0 - self.threshold),
        };
        if better {
            self.best = Some(metric);
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.num_bad_epochs > self.patience {
            self.num_bad_epochs = 0;
            let new_lr = lr * self.factor;
            if lr - new_lr > 1e-8 {
                return new_lr;
            }
        }
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decays_after_patience_bad_epochs() {
        let mut s = ReduceLrOnPlateau::new(0.1, 2);
        let mut lr = 1e-3;
        for v in [1.0, 0.9, 0.95, 0.95] {
            lr = s.step(v, lr);
        }
        assert_eq!(lr, 1e-3); // two bad epochs: not yet
        lr = s.step(0.9, lr); // 0.9 is not < 0.9 * (1 - 1e-4): third bad epoch
        assert!((lr - 1e-4).abs() < 1e-12);
        assert_eq!(s.num_bad_epochs, 0);
        lr = s.step(0.5, lr);
        assert!((lr - 1e-4).abs() < 1e-12);
    }
}
