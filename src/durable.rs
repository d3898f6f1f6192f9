//! Files that survive crashes and mistakes: the ONE atomic write (temporary file, fsync of
//! the file, rename, fsync of the directory), durable renames, capped reads of small files,
//! the ONE output-path guard (an output must never be an input just read), and the
//! test-only fault switch that kills the process at a named write step.
//!
//! Fault switch (for crash-consistency tests only): `MICA_FAULT_AT=STEP:N` makes the
//! process exit at once (code [`FAULT_EXIT_CODE`], nothing cleaned up) the N-th time it
//! reaches the write step named STEP; `MICA_FAULT_TRACE=FILE` appends the name of every
//! step reached to FILE, one per line. Step names are `write:NAME` (a temporary file fully
//! written, not yet renamed), `rename:NAME` (renamed into place, directory not yet
//! synced) and the checkpoint steps of `train::checkpoint`.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Exit code of a process stopped by `MICA_FAULT_AT`.
pub const FAULT_EXIT_CODE: i32 = 86;

/// Cap on config-like files (TOML / JSON configs, manifests, run state): 16 MiB.
pub const SMALL_FILE_CAP: u64 = 16 << 20;

/// Cap on prediction CSVs read by `mica metrics`: 256 MiB (MOSEI's test set takes 0.2 MB).
pub const CSV_CAP: u64 = 256 << 20;

/// Cap on a safetensors header: 100 MiB.
pub const SAFETENSORS_HEADER_CAP: u64 = 100 << 20;

struct FaultSwitch {
    at: Option<(String, u64)>,
    trace: Option<PathBuf>,
    counts: Mutex<HashMap<String, u64>>,
}

fn switch() -> &'static FaultSwitch {
    static S: OnceLock<FaultSwitch> = OnceLock::new();
    S.get_or_init(|| {
        let at = std::env::var("MICA_FAULT_AT").ok().and_then(|v| {
            let (name, n) = v.rsplit_once(':')?;
            Some((name.to_string(), n.parse().ok()?))
        });
        FaultSwitch {
            at,
            trace: std::env::var_os("MICA_FAULT_TRACE").map(PathBuf::from),
            counts: Mutex::new(HashMap::new()),
        }
    })
}

/// A named write step: records it for `MICA_FAULT_TRACE` and exits the process abruptly
/// when `MICA_FAULT_AT` names this step and occurrence. A no-op otherwise.
pub fn fault_point(step: &str) {
    let s = switch();
    if s.at.is_none() && s.trace.is_none() {
        return;
    }
    let n = {
        let mut counts = s.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(step.to_string()).or_insert(0);
        *c += 1;
        *c
    };
    if let Some(path) = &s.trace {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{step}");
        }
    }
    if s.at
        .as_ref()
        .is_some_and(|(name, k)| name == step && *k == n)
    {
        std::process::exit(FAULT_EXIT_CODE);
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "file".to_string(), |n| n.to_string_lossy().into_owned())
}

/// The temporary sibling a write of `path` goes through: `.NAME.tmp-PID`.
pub fn tmp_sibling(path: &Path) -> PathBuf {
    path.with_file_name(format!(".{}.tmp-{}", file_name(path), std::process::id()))
}

/// True for the leftovers of an interrupted write of this module (`.NAME.tmp-PID`) or of
/// a checkpoint swap (`.NAME.tmp`, `.NAME.old`): never user data.
pub fn is_leftover(name: &str) -> bool {
    name.starts_with('.')
        && (name.contains(".tmp-") || name.ends_with(".tmp") || name.ends_with(".old"))
}

/// True for a leftover temporary ([`is_leftover`] but not a `.NAME.old`, which may be the
/// only complete copy of a checkpoint): safe to delete.
fn is_tmp_leftover(name: &str) -> bool {
    is_leftover(name) && !name.ends_with(".old")
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory, so that renames and creations inside it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("{}: cannot sync directory", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Renames `from` to `to` and fsyncs the directory (or directories) holding them.
pub fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
    sync_dir(parent_of(to))?;
    if parent_of(from) != parent_of(to) {
        sync_dir(parent_of(from))?;
    }
    Ok(())
}

/// Writes `path` atomically: `fill` writes the content into a temporary sibling, which is
/// fsynced and renamed over `path`, then the directory is fsynced. Readers see the old
/// content or the new one, never a part; on error the temporary file is removed.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = tmp_sibling(path);
    let written = (|| -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        fill(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    fault_point(&format!("write:{}", file_name(path)));
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot move {} into place", path.display()));
    }
    fault_point(&format!("rename:{}", file_name(path)));
    sync_dir(parent_of(path))
}

/// Finishes an atomic write whose content another writer put in `tmp` (from
/// [`tmp_sibling`]): fsyncs it, renames it over `path` and fsyncs the directory; on error
/// `tmp` is removed.
pub fn commit_tmp(tmp: &Path, path: &Path) -> Result<()> {
    let r = File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    fault_point(&format!("rename:{}", file_name(path)));
    sync_dir(parent_of(path))
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Reads at most `cap` bytes of `path` (a file or a pipe); more is an error naming the
/// file, what it was read as, and the cap. Devices (`/dev/zero`) are refused at once.
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("{}: cannot read file", path.display()))?;
    if let Ok(meta) = f.metadata() {
        if meta.is_dir() {
            bail!("{}: is a directory, expected a {what} file", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            if t.is_char_device() || t.is_block_device() {
                bail!("{}: is a device, expected a {what} file", path.display());
            }
        }
        if meta.is_file() && meta.len() > cap {
            bail!(
                "{}: {} bytes, more than the {} allowed for a {what}",
                path.display(),
                meta.len(),
                human_bytes(cap)
            );
        }
    }
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("{}: cannot read {what}", path.display()))?;
    if buf.len() as u64 > cap {
        bail!(
            "{}: more than the {} allowed for a {what}",
            path.display(),
            human_bytes(cap)
        );
    }
    Ok(buf)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_string_capped(path: &Path, cap: u64, what: &str) -> Result<String> {
    String::from_utf8(read_capped(path, cap, what)?)
        .map_err(|e| anyhow::anyhow!("{}: {what} is not UTF-8 text: {e}", path.display()))
}

/// `n` bytes for people: `16 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The absolute, symlink-free form of `path`, also for a file that does not exist yet
/// (its directory resolved, its name appended).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let parent = parent_of(path).canonicalize().ok()?;
    Some(parent.join(path.file_name()?))
}

/// The output-path guard: refuses an output (`flag`, e.g. `--out`) that would overwrite
/// one of `inputs` (files or directories the command read), or a directory that holds
/// them. The error names both paths.
pub fn ensure_not_input(out: &Path, flag: &str, inputs: &[PathBuf]) -> Result<()> {
    let Some(o) = resolved(out) else {
        return Ok(());
    };
    for input in inputs {
        let Some(i) = resolved(input) else { continue };
        if i == o || i.starts_with(&o) {
            bail!(
                "{flag} {} would overwrite the input {} read by this command: choose another path",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// True when `dir` is missing, or a directory with nothing in it but the leftovers of
/// interrupted writes ([`is_leftover`]).
pub fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("{}: cannot list", dir.display())),
        Ok(entries) => {
            for e in entries {
                let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
                if !is_leftover(&e.file_name().to_string_lossy()) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Removes the temporaries of interrupted writes (`.NAME.tmp-PID`, `.NAME.tmp`) directly
/// inside `dir`.
pub fn remove_leftovers(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if is_tmp_leftover(&e.file_name().to_string_lossy()) {
            let p = e.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.with_context(|| format!("removing the leftover {}", p.display()))?;
        }
    }
    Ok(())
}

/// sha256 of a byte slice, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn capped_reads_stop_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        assert_eq!(read_capped(&p, 100, "config").unwrap().len(), 100);
        let e = read_capped(&p, 99, "config").unwrap_err().to_string();
        assert!(
            e.contains("c.toml: 100 bytes, more than the 99 bytes allowed for a config"),
            "{e}"
        );
        #[cfg(unix)]
        {
            let e = read_capped(Path::new("/dev/zero"), 1 << 20, "config")
                .unwrap_err()
                .to_string();
            assert_eq!(e, "/dev/zero: is a device, expected a config file");
        }
    }

    #[test]
    fn outputs_that_are_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ckpt");
        std::fs::create_dir(&ck).unwrap();
        std::fs::write(ck.join("model.safetensors"), b"w").unwrap();
        let inputs = vec![ck.join("model.safetensors")];
        let e = ensure_not_input(&ck.join("model.safetensors"), "--out", &inputs)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--out ") && e.contains("would overwrite the input"),
            "{e}"
        );
        // The directory holding an input is refused too; a new file beside it is fine.
        assert!(ensure_not_input(&ck, "--out", &inputs).is_err());
        ensure_not_input(&ck.join("preds.csv"), "--out", &inputs).unwrap();
    }

    #[test]
    fn leftovers_do_not_make_a_directory_non_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_empty_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join(".config.json.tmp-12"), b"").unwrap();
        std::fs::create_dir(dir.path().join(".last.tmp")).unwrap();
        std::fs::create_dir(dir.path().join(".best.old")).unwrap();
        assert!(is_empty_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        assert!(!is_empty_dir(dir.path()).unwrap());
        remove_leftovers(dir.path()).unwrap();
        // Temporaries go; a checkpoint's `.old` twin (maybe the only copy) stays.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(dir.path().join(".best.old").is_dir());
    }
}
