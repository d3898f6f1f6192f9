//! The local executor: `jobs` runs at a time on this machine, each a child process
//! `mica --threads T run-task OUT --id ID --quiet` (its output appended to `OUT/<id>.log`),
//! the machine's threads divided between them.

use super::lock;
use super::status::last_line;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How one child ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEnd {
    /// The run id.
    pub id: String,
    /// Success.
    pub ok: bool,
    /// The last line of the child's log (its error, or its summary).
    pub last_line: String,
    /// Wall seconds.
    pub seconds: f64,
}

/// Threads each of `jobs` concurrent runs gets out of `total`: an even share, at least 1.
pub fn threads_per_job(total: usize, jobs: usize) -> usize {
    (total / jobs.max(1)).max(1)
}

/// The child command that trains run `id` of the plan in `out`.
pub fn task_command(exe: &Path, out: &Path, id: &str, threads: usize) -> Command {
    let mut c = Command::new(exe);
    c.arg("--threads")
        .arg(threads.to_string())
        .arg("run-task")
        .arg(out)
        .arg("--id")
        .arg(id)
        .arg("--quiet")
        // The parent's thread settings (set from its own --threads) must not win.
        .env("CANDLE_NUM_THREADS", threads.to_string())
        .env("RAYON_NUM_THREADS", threads.to_string());
    c
}

/// Runs `ids` of the plan in `out`, `jobs` at a time with `threads` each; `on_end` is
/// called as each finishes (in finishing order). Every run is attempted; the ends are
/// returned in finishing order.
pub fn run_pool(
    exe: &Path,
    out: &Path,
    ids: &[String],
    jobs: usize,
    threads: usize,
    mut on_end: impl FnMut(&TaskEnd),
) -> Result<Vec<TaskEnd>> {
    let mut queue = ids.iter();
    let mut running: Vec<(String, Child, Instant, PathBuf)> = Vec::new();
    let mut ends = Vec::new();
    loop {
        while running.len() < jobs.max(1) {
            let Some(id) = queue.next() else { break };
            let log = lock::sidecar(out, id, "log");
            if let Some(p) = log.parent() {
                std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("{}: cannot open the run's log", log.display()))?;
            let child = task_command(exe, out, id, threads)
                .stdin(Stdio::null())
                .stdout(f.try_clone()?)
                .stderr(f)
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            running.push((id.clone(), child, Instant::now(), log));
        }
        if running.is_empty() {
            break;
        }
        let mut i = 0;
        let mut any = false;
        while i < running.len() {
            if let Some(st) = running[i].1.try_wait()? {
                let (id, _, t, log) = running.swap_remove(i);
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let mut line = last_line(&text);
                if !st.success() && !line.starts_with("error") {
                    line = match st.code() {
                        Some(c) => format!("exited with code {c} (killed?); last output: {line}"),
                        None => format!("killed by a signal; last output: {line}"),
                    };
                }
                let end = TaskEnd {
                    id,
                    ok: st.success(),
                    last_line: line,
                    seconds: t.elapsed().as_secs_f64(),
                };
                on_end(&end);
                ends.push(end);
                any = true;
            } else {
                i += 1;
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_shared_out() {
        assert_eq!(threads_per_job(16, 4), 4);
        assert_eq!(threads_per_job(2, 4), 1);
        assert_eq!(threads_per_job(7, 2), 3);
        assert_eq!(threads_per_job(8, 0), 8);
    }
}
