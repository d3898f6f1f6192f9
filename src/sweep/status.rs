//! The state of every planned run, read from the run directories and the files beside
//! them, whichever executor ran them: done (`metrics.json`), running (a live lock),
//! failed (a `.failed` record: the last error line), interrupted (a started run, no
//! owner: resumes where its last checkpoint left it) or pending.

use super::lock::{self, LockState};
use super::manifest::{Manifest, RunEntry};
use std::fmt::Write as _;
use std::path::Path;

/// Where one run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Not started.
    Pending,
    /// A live process holds the run's lock.
    Running {
        /// Who (pid, host, Slurm task).
        owner: String,
        /// Epochs finished so far.
        epochs_done: usize,
    },
    /// Finished: `metrics.json` is there.
    Done,
    /// The last attempt failed with this error (last line).
    Failed(String),
    /// Started and stopped without finishing or an error (killed): resumable.
    Interrupted {
        /// Epochs finished (the last checkpoint).
        epochs_done: usize,
    },
}

impl RunState {
    /// The state's word: pending, running, done, failed, interrupted.
    pub fn word(&self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running { .. } => "running",
            RunState::Done => "done",
            RunState::Failed(_) => "failed",
            RunState::Interrupted { .. } => "interrupted",
        }
    }
}

/// The last non-empty line of a text (an error's final cause).
pub fn last_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// The state of `entry` of the plan in `out`.
pub fn run_state(out: &Path, entry: &RunEntry) -> RunState {
    let dir = Manifest::run_dir(out, entry);
    if dir.join("metrics.json").is_file() {
        return RunState::Done;
    }
    let epochs_done = crate::train::trainer::epochs_done(&dir).unwrap_or(0);
    if let LockState::Held(o) = lock::state(&lock::sidecar(out, &entry.id, "lock")) {
        return RunState::Running {
            owner: o.describe(),
            epochs_done,
        };
    }
    if let Ok(t) = std::fs::read_to_string(lock::sidecar(out, &entry.id, "failed")) {
        return RunState::Failed(last_line(&t));
    }
    if dir.join("config.json").is_file() {
        return RunState::Interrupted { epochs_done };
    }
    RunState::Pending
}

/// Every run's state, in manifest order.
pub fn states(out: &Path, m: &Manifest) -> Vec<(String, RunState)> {
    m.runs
        .iter()
        .map(|r| (r.id.clone(), run_state(out, r)))
        .collect()
}

/// The status table: one line per run (id, state, detail) and a count per state.
pub fn render(m: &Manifest, states: &[(String, RunState)]) -> String {
    let width = states
        .iter()
        .map(|(id, _)| id.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let mut s = String::new();
    let _ = writeln!(s, "{:<width$}  {:<11}  detail", "run", "state");
    for ((id, st), entry) in states.iter().zip(&m.runs) {
        let epochs = entry.config.train.epochs;
        let detail = match st {
            RunState::Pending | RunState::Done => String::new(),
            RunState::Running { owner, epochs_done } => {
                format!("epoch {epochs_done}/{epochs} done, {owner}")
            }
            RunState::Failed(e) => e.clone(),
            RunState::Interrupted { epochs_done } => {
                format!("stopped after epoch {epochs_done}/{epochs}: resumes when run again")
            }
        };
        let line = format!("{id:<width$}  {:<11}  {detail}", st.word());
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let mut counts = Vec::new();
    for w in ["done", "running", "failed", "interrupted", "pending"] {
        let n = states.iter().filter(|(_, st)| st.word() == w).count();
        if n > 0 {
            counts.push(format!("{n} {w}"));
        }
    }
    let _ = writeln!(s, "{} runs: {}", states.len(), counts.join(", "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_line_is_the_cause() {
        assert_eq!(last_line("error: a\n  caused by: b\n\n"), "caused by: b");
        assert_eq!(last_line(""), "");
    }
}
