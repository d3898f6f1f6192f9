//! `mica report`: one Markdown page gathering what the other commands left in some
//! directories — run metrics with their loss curves, ablation tables (`ablation.md`),
//! alignment analyses (`analysis.md`), sweep plots (`sweep.png`) and any other PNG
//! (attention maps) — with links relative to the report file.

use super::ablation::{flatten_json, fmt_metric, is_sentiment, main_metrics};
use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// How deep [`scan`] descends below a given directory.
pub const MAX_DEPTH: usize = 8;

/// What [`scan`] found in one directory tree (paths absolute or as given, sorted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    /// Directories holding a `metrics.json` (finished training runs).
    pub runs: Vec<PathBuf>,
    /// `ablation.md` files.
    pub ablations: Vec<PathBuf>,
    /// `analysis.md` files.
    pub analyses: Vec<PathBuf>,
    /// `sweep.png` files.
    pub sweeps: Vec<PathBuf>,
    /// Every other PNG except loss curves (attention maps, ...).
    pub images: Vec<PathBuf>,
}

/// Walks `dir` (at most [`MAX_DEPTH`] levels, entries sorted by name).
pub fn scan(dir: &Path) -> Result<Found> {
    let mut f = Found::default();
    walk(dir, 0, &mut f).with_context(|| format!("reading {}", dir.display()))?;
    Ok(f)
}

fn walk(dir: &Path, depth: usize, f: &mut Found) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if depth < MAX_DEPTH {
                walk(&p, depth + 1, f)?;
            }
            continue;
        }
        match name {
            "metrics.json" => f.runs.push(dir.to_path_buf()),
            "ablation.md" => f.ablations.push(p),
            "analysis.md" => f.analyses.push(p),
            "sweep.png" => f.sweeps.push(p),
            "loss.png" => {}
            n if n.ends_with(".png") => f.images.push(p),
            _ => {}
        }
    }
    Ok(())
}

/// `target` relative to the directory `base` (both absolute, or both relative to the
/// same directory), e.g. `../runs/a/loss.png`.
pub fn relative_path(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<Component> = target.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// A Markdown link target (angle brackets when the path has spaces).
fn link(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    if s.contains(' ') {
        format!("<{s}>")
    } else {
        s
    }
}

/// Demotes Markdown headings by `levels` (so embedded tables nest under the report's).
pub fn demote_headings(md: &str, levels: usize) -> String {
    let extra = "#".repeat(levels);
    md.lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{extra}{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One table line of a run (named by its path under `root`): link, variant, seed, best
/// epoch, main metrics, loss curve.
fn run_line(run: &Path, root: &Path, base: &Path) -> Result<(String, String)> {
    let path = run.join("metrics.json");
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: bad JSON", path.display()))?;
    let test = flatten_json(&v["test"]);
    let main = main_metrics(is_sentiment(&test));
    let header = format!(
        "| run | variant | seed | best epoch | {} | loss |",
        main.iter().map(|m| m.label).collect::<Vec<_>>().join(" | ")
    );
    let cells: Vec<String> = main
        .iter()
        .map(|m| {
            test.get(m.key)
                .map_or("–".into(), |x| fmt_metric(*x, m.percent))
        })
        .collect();
    let loss = run.join("loss.png");
    let loss = if loss.is_file() {
        format!("[loss.png]({})", link(&relative_path(&loss, base)))
    } else {
        "–".into()
    };
    let show = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        other => other.to_string(),
    };
    let line = format!(
        "| [{}]({}) | {} | {} | {} | {} | {loss} |",
        relative_path(run, root).display(),
        link(&relative_path(run, base)),
        show("variant"),
        show("seed"),
        show("best_epoch"),
        cells.join(" | ")
    );
    Ok((header, line))
}

/// Renders the report of `dirs` for a report file inside directory `base` (links are
/// relative to `base`; pass absolute paths for both, or paths relative to one place).
pub fn render_report(dirs: &[PathBuf], base: &Path) -> Result<String> {
    let mut s = String::from("# mica report\n");
    for dir in dirs {
        let f = scan(dir)?;
        let _ = writeln!(s, "\n## {}\n", relative_path(dir, base).display());
        let empty = f.runs.is_empty()
            && f.ablations.is_empty()
            && f.analyses.is_empty()
            && f.sweeps.is_empty()
            && f.images.is_empty();
        if empty {
            let _ = writeln!(
                s,
                "Nothing found (no metrics.json, ablation.md, analysis.md or PNG)."
            );
            continue;
        }
        for (title, files) in [
            ("Ablation", &f.ablations),
            ("Alignment analysis", &f.analyses),
        ] {
            for p in files {
                let md = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                let rel = relative_path(p, base);
                let _ = writeln!(
                    s,
                    "### {title} ([{}]({}))\n\n{}\n",
                    rel.display(),
                    link(&rel),
                    demote_headings(md.trim(), 2)
                );
            }
        }
        for p in &f.sweeps {
            let rel = relative_path(p, base);
            let _ = writeln!(
                s,
                "### Sweep ({})\n\n![sweep]({})\n",
                rel.display(),
                link(&rel)
            );
            let csv = p.with_file_name("sweep.csv");
            if csv.is_file() {
                let _ = writeln!(
                    s,
                    "Data: [sweep.csv]({})\n",
                    link(&relative_path(&csv, base))
                );
            }
        }
        if !f.images.is_empty() {
            let _ = writeln!(s, "### Figures\n");
            for p in &f.images {
                let name = p
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().to_string());
                let _ = writeln!(s, "![{name}]({})\n", link(&relative_path(p, base)));
            }
        }
        if !f.runs.is_empty() {
            let _ = writeln!(s, "### Runs ({})\n", f.runs.len());
            let mut header_done = None;
            for run in &f.runs {
                let (header, line) = run_line(run, dir, base)?;
                if header_done.as_ref() != Some(&header) {
                    let cols = header.matches('|').count() - 1;
                    let _ = writeln!(s, "\n{header}\n|{}", "---|".repeat(cols));
                    header_done = Some(header);
                }
                let _ = writeln!(s, "{line}");
            }
            if f.runs.len() == 1 {
                let loss = f.runs[0].join("loss.png");
                if loss.is_file() {
                    let _ = writeln!(s, "\n![loss curves]({})", link(&relative_path(&loss, base)));
                }
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let r = relative_path(Path::new("/a/b/c/x.png"), Path::new("/a/d"));
        assert_eq!(r, PathBuf::from("../b/c/x.png"));
        let r = relative_path(Path::new("/a/b/x.png"), Path::new("/a/b"));
        assert_eq!(r, PathBuf::from("x.png"));
        assert_eq!(
            relative_path(Path::new("/a"), Path::new("/a")),
            PathBuf::from(".")
        );
    }

    #[test]
    fn headings_are_demoted() {
        assert_eq!(
            demote_headings("## T\ntext\n### U", 2),
            "#### T\ntext\n##### U"
        );
    }

    #[test]
    fn scan_and_render_a_small_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("exp");
        let run = root.join("mica/seed-1");
        std::fs::create_dir_all(&run).unwrap();
        let metrics = serde_json::json!({
            "variant": "mica", "seed": 1, "best_epoch": 3,
            "test": {"mult": {"acc_2": 0.75, "f1": 0.7, "mae": 0.9, "corr": 0.5, "mult_acc_7": 0.3}}
        });
        std::fs::write(run.join("metrics.json"), metrics.to_string()).unwrap();
        std::fs::write(run.join("loss.png"), b"png").unwrap();
        std::fs::write(root.join("ablation.md"), "## Table 5\n\n| a |\n").unwrap();
        std::fs::write(root.join("attn.png"), b"png").unwrap();
        let f = scan(&root).unwrap();
        assert_eq!(f.runs, vec![run.clone()]);
        assert_eq!(f.images.len(), 1);
        let md = render_report(std::slice::from_ref(&root), dir.path()).unwrap();
        assert!(md.contains("#### Table 5"), "{md}");
        assert!(md.contains("(exp/mica/seed-1/loss.png)"), "{md}");
        assert!(md.contains("![attn.png](exp/attn.png)"), "{md}");
        assert!(md.contains("| 75.0 |"), "{md}");
        assert!(
            md.contains("| [mica/seed-1](exp/mica/seed-1) | mica | 1 | 3 |"),
            "{md}"
        );
    }
}
