//! One writer per run: a lock file beside the run directory (`OUT/mica/seed-1111.lock`
//! for the run `mica/seed-1111`), created with `O_EXCL` (atomic on local file systems and
//! NFSv3+), holding the owner's pid, host and Slurm task, and touched every
//! [`HEARTBEAT_SECS`] while the run trains. A lock is stale, and taken over, when its
//! owner is gone: a dead pid on this host, no heartbeat for [`STALE_SECS`], or the same
//! Slurm array task (a requeued task follows its killed self). Beside it live the run's
//! `.failed` record (the error of its last attempt) and `.log` (a child's output).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// Seconds between two touches of a held lock.
pub const HEARTBEAT_SECS: u64 = 20;

/// A lock untouched for this long belongs to a dead owner.
pub const STALE_SECS: u64 = 120;

/// `OUT/<id>.<ext>`: a file beside the run directory.
pub fn sidecar(out: &Path, id: &str, ext: &str) -> PathBuf {
    out.join(format!("{id}.{ext}"))
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// Start time, seconds since the epoch.
    pub started: u64,
    /// `JOBID_TASKID` of the Slurm array task (or the job id), when run by Slurm.
    pub slurm: Option<String>,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        Owner {
            pid: std::process::id(),
            host: hostname(),
            started: now_secs(),
            slurm: slurm_task(),
        }
    }

    /// `pid 12 on host-a (Slurm 345_2)`.
    pub fn describe(&self) -> String {
        match &self.slurm {
            Some(s) => format!("pid {} on {} (Slurm {s})", self.pid, self.host),
            None => format!("pid {} on {}", self.pid, self.host),
        }
    }
}

/// This machine's host name (`unknown` if it has none).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and the last byte stays 0.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The Slurm array task (`ARRAYJOB_TASK`) or job this process runs in.
pub fn slurm_task() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(j), Some(t)) => Some(format!("{j}_{t}")),
        _ => var("SLURM_JOB_ID"),
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What a lock file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// No lock file.
    Free,
    /// Held by a live owner.
    Held(Owner),
    /// Left by an owner that is gone (or unreadable: a torn write).
    Stale(Option<Owner>),
}

/// Reads the lock at `path` and judges it from this process's point of view.
pub fn state(path: &Path) -> LockState {
    let Ok(meta) = std::fs::metadata(path) else {
        return LockState::Free;
    };
    let owner: Option<Owner> = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    let Some(o) = owner else {
        // A lock is written in one small write: unreadable means torn by a crash, unless
        // it is being written right now.
        return if age > Duration::from_secs(5) {
            LockState::Stale(None)
        } else {
            LockState::Held(Owner {
                pid: 0,
                host: "?".into(),
                started: 0,
                slurm: None,
            })
        };
    };
    let me = Owner::me();
    let dead = age > Duration::from_secs(STALE_SECS)
        || (o.host == me.host && (o.pid == me.pid || !pid_alive(o.pid)))
        || (o.slurm.is_some() && o.slurm == me.slurm);
    if dead {
        LockState::Stale(Some(o))
    } else {
        LockState::Held(o)
    }
}

/// A held run lock; released (file removed) on drop, its heartbeat stopped.
pub struct RunLock {
    path: PathBuf,
    owner: Owner,
    stop: Option<mpsc::Sender<()>>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl RunLock {
    /// Takes the lock at `path` (a stale one is taken over); an error naming the owner
    /// when a live process holds it.
    pub fn acquire(path: &Path, what: &str) -> Result<RunLock> {
        let me = Owner::me();
        let text = serde_json::to_string(&me)?;
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    f.write_all(text.as_bytes())
                        .and_then(|()| f.sync_all())
                        .with_context(|| format!("{}: cannot write the lock", path.display()))?;
                    return Ok(RunLock::start(path, me));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("{}: cannot create the lock", path.display()))
                }
            }
            match state(path) {
                LockState::Free => continue,
                LockState::Held(o) => bail!(
                    "{what} is being trained by {} (lock {}): two processes never train one run; wait for it, or delete the lock if that process is gone",
                    o.describe(),
                    path.display()
                ),
                LockState::Stale(_) => take_over_stale(path)?,
            }
        }
        bail!("{}: could not take the lock (contended)", path.display())
    }

    fn start(path: &Path, owner: Owner) -> RunLock {
        let (tx, rx) = mpsc::channel::<()>();
        let p = path.to_path_buf();
        let beat = std::thread::Builder::new()
            .name("mica-lock-heartbeat".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Duration::from_secs(HEARTBEAT_SECS))
                {
                    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                }
            })
            .ok();
        RunLock {
            path: path.to_path_buf(),
            owner,
            stop: Some(tx),
            beat,
        }
    }
}

/// Moves a stale lock aside and checks that what was moved is the stale lock judged, not
/// a fresh one another process created meanwhile (that one is put back).
fn take_over_stale(path: &Path) -> Result<()> {
    let before = std::fs::read(path).unwrap_or_default();
    let aside = path.with_extension(format!("lock.stale-{}", std::process::id()));
    if std::fs::rename(path, &aside).is_err() {
        return Ok(()); // someone else moved it: try again
    }
    let moved = std::fs::read(&aside).unwrap_or_default();
    if moved != before {
        // A live lock: restore it unless yet another one appeared (then keep both out of
        // harm's way: the newest wins, this one is dropped as stale).
        let _ = std::fs::hard_link(&aside, path);
    }
    let _ = std::fs::remove_file(&aside);
    Ok(())
}

impl Drop for RunLock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(b) = self.beat.take() {
            let _ = b.join();
        }
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<Owner>(&t).ok())
            .is_some_and(|o| o == self.owner);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_lock_is_refused_and_a_dead_one_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed-1.lock");
        let held = RunLock::acquire(&p, "run x").unwrap();
        assert!(
            matches!(state(&p), LockState::Stale(_)),
            "own pid reads as stale to itself"
        );
        drop(held);
        assert_eq!(state(&p), LockState::Free);
        // A lock of a live process on this host (pid 1 exists in every container).
        let live = Owner {
            pid: 1,
            host: hostname(),
            started: 0,
            slurm: Some("999999_0".into()),
        };
        std::fs::write(&p, serde_json::to_string(&live).unwrap()).unwrap();
        let e = RunLock::acquire(&p, "run x").err().unwrap().to_string();
        assert!(e.contains("run x is being trained by pid 1 on"), "{e}");
        // A dead pid on this host.
        let dead = Owner {
            pid: u32::MAX - 7,
            ..live
        };
        std::fs::write(&p, serde_json::to_string(&dead).unwrap()).unwrap();
        assert!(matches!(state(&p), LockState::Stale(Some(_))));
        let l = RunLock::acquire(&p, "run x").unwrap();
        let now: Owner = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(now.pid, std::process::id());
        drop(l);
        assert!(!p.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left aside"
        );
    }
}
