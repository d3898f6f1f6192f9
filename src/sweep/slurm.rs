//! The Slurm executor: a job-array script (one run per array task, each task
//! `mica run-task OUT --id ID`), an aggregation script submitted with
//! `--dependency=afterok:<array>`, and their submission with `sbatch --parsable`.
//! Tasks are requeueable: a task killed by preemption or `scontrol requeue` comes back
//! and resumes its run from the last checkpoint (its lock names the same array task).

use anyhow::{bail, ensure, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Resources and options of the submitted jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmOptions {
    /// `--cpus-per-task` (also each run's `--threads`).
    pub cpus: usize,
    /// `--mem` (e.g. `4G`).
    pub mem: Option<String>,
    /// `--time` (e.g. `01:00:00`).
    pub time: Option<String>,
    /// `--partition`.
    pub partition: Option<String>,
    /// At most this many array tasks at once (`%M`).
    pub max_running: Option<usize>,
    /// Free-form `#SBATCH` lines (e.g. `--account=abc`, `--qos=short`).
    pub extra: Vec<String>,
}

/// A word safe inside single quotes for bash.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=,:@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Refuses option values that would break out of an `#SBATCH` line.
fn check_opt(flag: &str, v: &str) -> Result<()> {
    ensure!(
        !v.contains('\n') && !v.contains('\r') && !v.trim().is_empty(),
        "{flag} `{}`: expected one non-empty line",
        v.escape_debug()
    );
    Ok(())
}

impl SlurmOptions {
    /// Checks the values (one line each, cpus ≥ 1, max_running ≥ 1).
    pub fn check(&self) -> Result<()> {
        ensure!(self.cpus >= 1, "--slurm-cpus 0: give 1 or more");
        ensure!(self.max_running != Some(0), "--jobs 0: give 1 or more");
        for (flag, v) in [
            ("--slurm-mem", &self.mem),
            ("--slurm-time", &self.time),
            ("--slurm-partition", &self.partition),
        ] {
            if let Some(v) = v {
                check_opt(flag, v)?;
            }
        }
        for v in &self.extra {
            check_opt("--slurm-opt", v)?;
            ensure!(
                v.starts_with('-'),
                "--slurm-opt `{v}`: expected an sbatch option such as --account=NAME"
            );
        }
        Ok(())
    }

    fn resource_lines(&self, s: &mut String, cpus: usize) {
        let _ = writeln!(s, "#SBATCH --cpus-per-task={cpus}");
        if let Some(m) = &self.mem {
            let _ = writeln!(s, "#SBATCH --mem={m}");
        }
        if let Some(t) = &self.time {
            let _ = writeln!(s, "#SBATCH --time={t}");
        }
        if let Some(p) = &self.partition {
            let _ = writeln!(s, "#SBATCH --partition={p}");
        }
        for x in &self.extra {
            let _ = writeln!(s, "#SBATCH {x}");
        }
    }
}

/// The job-array script: task `i` trains run `ids[i]` of the plan in `out` with the
/// `mica` binary `exe`. `name` is the job name (e.g. `mica-ablate`).
pub fn array_script(
    exe: &Path,
    out: &Path,
    name: &str,
    ids: &[String],
    o: &SlurmOptions,
) -> String {
    let mut s = String::new();
    let logs = out.join("slurm").join("logs");
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(
        s,
        "# Written by mica: one run of {} per array task.",
        out.display()
    );
    let _ = writeln!(s, "#SBATCH --job-name={name}");
    let throttle = o.max_running.map(|m| format!("%{m}")).unwrap_or_default();
    let _ = writeln!(
        s,
        "#SBATCH --array=0-{}{throttle}",
        ids.len().saturating_sub(1)
    );
    o.resource_lines(&mut s, o.cpus);
    let _ = writeln!(s, "#SBATCH --requeue");
    let _ = writeln!(s, "#SBATCH --open-mode=append");
    let _ = writeln!(s, "#SBATCH --output={}/%A_%a.out", logs.display());
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(s, "IDS=(");
    for id in ids {
        let _ = writeln!(s, "  {}", shell_quote(id));
    }
    let _ = writeln!(s, ")");
    let _ = writeln!(
        s,
        "exec {} --threads \"${{SLURM_CPUS_PER_TASK:-{}}}\" run-task {} --id \"${{IDS[$SLURM_ARRAY_TASK_ID]}}\" --quiet",
        shell_quote(&exe.display().to_string()),
        o.cpus,
        shell_quote(&out.display().to_string())
    );
    s
}

/// The aggregation script: `mica KIND --aggregate OUT` once every array task succeeded.
pub fn aggregate_script(
    exe: &Path,
    out: &Path,
    kind: &str,
    name: &str,
    o: &SlurmOptions,
) -> String {
    let mut s = String::new();
    let logs = out.join("slurm").join("logs");
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(
        s,
        "# Written by mica: tables and plots of {} once its runs are done.",
        out.display()
    );
    let _ = writeln!(s, "#SBATCH --job-name={name}-aggregate");
    let agg = SlurmOptions {
        max_running: None,
        ..o.clone()
    };
    agg.resource_lines(&mut s, 1);
    // A failed array task makes `afterok` unsatisfiable: end this job then, not wait.
    let _ = writeln!(s, "#SBATCH --kill-on-invalid-dep=yes");
    let _ = writeln!(s, "#SBATCH --output={}/aggregate_%j.out", logs.display());
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(
        s,
        "exec {} {kind} --aggregate {}",
        shell_quote(&exe.display().to_string()),
        shell_quote(&out.display().to_string())
    );
    s
}

/// The job id in `sbatch --parsable`'s answer (`123` or `123;cluster`).
pub fn parse_job_id(stdout: &str) -> Result<String> {
    let id = stdout.trim().split(';').next().unwrap_or("").trim();
    ensure!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()),
        "sbatch answered `{}`, expected a job id",
        stdout.trim()
    );
    Ok(id.to_string())
}

/// Runs `sbatch --parsable [extra..] script` and returns the job id.
pub fn sbatch(script: &Path, extra: &[String]) -> Result<String> {
    let o = Command::new("sbatch")
        .arg("--parsable")
        .args(extra)
        .arg(script)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run sbatch ({e}): is this a Slurm login node? Use --dry-run to only write {}",
                script.display()
            )
        })?;
    if !o.status.success() {
        bail!(
            "sbatch {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    parse_job_id(&String::from_utf8_lossy(&o.stdout))
}

/// Where the scripts go: `OUT/slurm/{array.sh,aggregate.sh}` (logs in `OUT/slurm/logs/`).
pub fn script_paths(out: &Path) -> (PathBuf, PathBuf) {
    let d = out.join("slurm");
    (d.join("array.sh"), d.join("aggregate.sh"))
}

/// Writes both scripts (executable) and, unless `dry_run`, submits them: the array, then
/// the aggregation with `--dependency=afterok:<array>`. Returns the job ids.
pub fn write_and_submit(
    out: &Path,
    array: &str,
    aggregate: &str,
    dry_run: bool,
) -> Result<Option<(String, String)>> {
    let (a, g) = script_paths(out);
    let logs = out.join("slurm").join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    for (p, text) in [(&a, array), (&g, aggregate)] {
        crate::durable::write_atomic(p, text.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("{}: cannot make executable", p.display()))?;
        }
    }
    if dry_run {
        return Ok(None);
    }
    let array_id = sbatch(&a, &[])?;
    let agg_id = sbatch(&g, &[format!("--dependency=afterok:{array_id}")]).with_context(|| {
        format!("the array job {array_id} was submitted, its aggregation was not")
    })?;
    Ok(Some((array_id, agg_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_job_ids() {
        assert_eq!(shell_quote("/a/b-c.d"), "/a/b-c.d");
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
        assert_eq!(parse_job_id("123;cl\n").unwrap(), "123");
        assert!(parse_job_id("Submitted batch job 5").is_err());
        let o = SlurmOptions {
            cpus: 1,
            mem: Some("4G\n#SBATCH --x".into()),
            ..Default::default()
        };
        assert!(o.check().unwrap_err().to_string().contains("--slurm-mem"));
    }
}
