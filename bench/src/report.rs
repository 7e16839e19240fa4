//! Output: header and table on the terminal, results.json, results.md (the table for
//! docs/performance.md) and ratios.svg.

use crate::figures::{Better, Figure, Outcome};
use crate::machine::{Machine, Versions};
use crate::stats::Summary;
use crate::{Opts, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub quick: bool,
    pub rounds: usize,
    pub elapsed_s: f64,
    pub machine: Machine,
    pub versions: Versions,
    /// With `--merge`: where the figures of the groups this run did not measure come from.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub carried_over: Vec<Carried>,
    pub figures: Vec<Figure>,
}

/// Figures of some groups taken over from an earlier run (`--merge`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Carried {
    pub groups: Vec<String>,
    pub date: String,
    pub command: String,
}

/// What `--merge` reads back from an earlier results.json.
#[derive(Deserialize)]
pub struct Previous {
    pub date: String,
    pub command: String,
    #[serde(default)]
    pub carried_over: Vec<Carried>,
    pub figures: Vec<Figure>,
}

/// The results.json in `out`, if there is one.
pub fn load_previous(out: &Path) -> Result<Option<Previous>> {
    let p = out.join("results.json");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("read {}: {e}", p.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("--merge: cannot read {}: {e}", p.display()))
}

pub fn print_header(m: &Machine, v: &Versions, opts: &Opts, command: &str) {
    println!("berth-bench: berthd vs containerd, side by side");
    println!("  command     {command}");
    println!(
        "  mode        {} ({} A/B rounds per figure, alternating which daemon goes first)",
        if opts.quick { "quick" } else { "full" },
        opts.rounds()
    );
    for (k, val) in machine_lines(m, v) {
        println!("  {k:<11} {val}");
    }
    let load1: f64 = m
        .load_at_start
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    if load1 > 0.5 {
        println!("  WARNING     the machine is busy (load {load1:.2}): figures will be noisy");
    }
    println!();
}

fn machine_lines(m: &Machine, v: &Versions) -> Vec<(&'static str, String)> {
    vec![
        (
            "machine",
            format!("{} cores ({}), {} RAM", m.cores, m.cpu, m.memory),
        ),
        ("os/kernel", format!("{}, kernel {}", m.os, m.kernel)),
        ("cgroups", m.cgroup.clone()),
        ("disk", format!("{} — temp root {}", m.disk, m.temp_root)),
        (
            "load",
            format!("{} (1/5/15 min, at start)", m.load_at_start),
        ),
        ("berthd", v.berthd.clone()),
        ("containerd", v.containerd.clone()),
        ("runc", v.runc.clone()),
        ("ctr", v.ctr.clone()),
    ]
    .into_iter()
    .chain(v.containerd2.clone().map(|c| ("containerd 2", c)))
    .chain(v.ctr2.clone().map(|c| ("ctr 2", c)))
    .collect()
}

/// 3 significant digits, no exponent.
fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// (median, tail at 90, tail at 99): for rates the tail is the slow side (p10, p1).
fn cols(s: &Summary, better: Better) -> [String; 3] {
    match better {
        Better::Lower => [num(s.median), num(s.p90), num(s.p99)],
        Better::Higher => [num(s.median), num(s.p10), num(s.p1)],
    }
}

/// "berth 2.1x better" / "1.3x worse" / "same (±3%)".
pub fn verdict(ratio: f64, better: Better) -> String {
    let gain = match better {
        Better::Lower => 1.0 / ratio,
        Better::Higher => ratio,
    };
    if (gain - 1.0).abs() < 0.03 {
        "about the same".into()
    } else if gain > 1.0 {
        format!("berth {gain:.2}x better")
    } else {
        format!("berth {:.2}x worse", 1.0 / gain)
    }
}

fn status_text(o: &Outcome) -> String {
    match o {
        Outcome::Measured { .. } => String::new(),
        Outcome::NotYet { needs } => format!("not yet measurable (needs {needs})"),
        Outcome::NotServed { error, .. } => format!("berthd not served ({error})"),
        Outcome::Skipped { why } => format!("skipped: {why}"),
        Outcome::Failed { error } => format!("FAILED: {error}"),
    }
}

pub fn print_table(figs: &[Figure]) {
    let w = figs
        .iter()
        .map(|f| f.title.chars().count())
        .max()
        .unwrap_or(10)
        .max(10);
    println!();
    println!(
        "{:<9} {:<w$} {:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>6}  verdict",
        "group", "figure", "unit", "berthd", "p90", "p99", "contd", "p90", "p99", "b/c"
    );
    println!("{}", "-".repeat(w + 100));
    for f in figs {
        match &f.outcome {
            Outcome::Measured {
                berth, containerd, ..
            } => {
                let [b0, b1, b2] = cols(berth, f.better);
                let [c0, c1, c2] = cols(containerd, f.better);
                let r = f.ratio();
                println!(
                    "{:<9} {:<w$} {:>6} | {b0:>8} {b1:>8} {b2:>8} | {c0:>8} {c1:>8} {c2:>8} | {:>6}  {}{}{}",
                    f.group,
                    f.title,
                    f.unit,
                    r.map(num).unwrap_or_else(|| "-".into()),
                    r.map(|r| verdict(r, f.better)).unwrap_or_default(),
                    if f.better == Better::Higher { " (higher is better)" } else { "" },
                    f.target_text().map(|t| format!("; {t}")).unwrap_or_default(),
                );
            }
            Outcome::NotServed { error, containerd } => {
                let [c0, c1, c2] = cols(containerd, f.better);
                println!(
                    "{:<9} {:<w$} {:>6} | {:>26} | {c0:>8} {c1:>8} {c2:>8} | {:>6}  {error}",
                    f.group, f.title, f.unit, "not served", "-"
                );
            }
            o => println!(
                "{:<9} {:<w$} {:>6} | {}",
                f.group,
                f.title,
                f.unit,
                status_text(o)
            ),
        }
    }
    println!();
    println!("median / p90 / p99 per daemon (over all samples of all rounds); b/c = median over rounds of");
    println!("berthd's value / containerd's value in the same A/B round. Latencies and memory: lower is better,");
    println!("b/c < 1 means berth is faster/smaller. Rates (ops/s, MiB/s): higher is better, b/c > 1 means berth");
    println!("is faster, and the p90/p99 columns show the slow tail (10th/1st percentile).");
}

pub fn markdown(rep: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} with `{}` ({} mode, {} A/B rounds per figure, {:.0} s in total).\n",
        rep.date,
        rep.command,
        if rep.quick { "quick" } else { "full" },
        rep.rounds,
        rep.elapsed_s
    );
    for c in &rep.carried_over {
        let _ = writeln!(
            s,
            "Figures of the {} group(s) are carried over from the run of {} with `{}` (`--merge`).\n",
            c.groups.join(", "),
            c.date,
            c.command
        );
    }
    for (k, v) in machine_lines(&rep.machine, &rep.versions) {
        let _ = writeln!(s, "- **{k}**: {v}");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "| group | figure | unit | berthd median | p90 | p99 | containerd median | p90 | p99 | berth/containerd | verdict |");
    let _ = writeln!(s, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|");
    for f in &rep.figures {
        match &f.outcome {
            Outcome::Measured {
                berth, containerd, ..
            } => {
                let [b0, b1, b2] = cols(berth, f.better);
                let [c0, c1, c2] = cols(containerd, f.better);
                let r = f.ratio();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {b0} | {b1} | {b2} | {c0} | {c1} | {c2} | {} | {} |",
                    f.group,
                    f.title,
                    f.unit,
                    r.map(num).unwrap_or_else(|| "-".into()),
                    r.map(|r| verdict(r, f.better)).unwrap_or_default()
                        + &f.target_text()
                            .map(|t| format!("; {t}"))
                            .unwrap_or_default()
                );
            }
            Outcome::NotServed { error, containerd } => {
                let [c0, c1, c2] = cols(containerd, f.better);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | not served | | | {c0} | {c1} | {c2} | - | {} |",
                    f.group,
                    f.title,
                    f.unit,
                    error.replace('|', "\\|")
                );
            }
            o => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | | | | | | | |",
                    f.group,
                    f.title,
                    f.unit,
                    status_text(o)
                );
            }
        }
    }
    let _ = writeln!(s, "\nRates (ops/s, MiB/s): higher is better, berth/containerd > 1 means berth is faster, and the p90/p99 columns are the slow tail (10th/1st percentile). Everything else: lower is better, berth/containerd < 1 means berth is faster or smaller.");
    s
}

pub fn write_all(rep: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(rep).map_err(|e| e.to_string())?;
    let write = |name: &str, data: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, data).map_err(|e| format!("write {}: {e}", p.display()))
    };
    write("results.json", json.as_bytes())?;
    write("results.md", markdown(rep).as_bytes())?;
    plot(rep, &out.join("ratios.svg"))
}

/// Horizontal bars of berth/containerd per measured figure, on a log axis around 1: green where
/// berth is better, red where it is worse.
fn plot(rep: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let rows: Vec<(&Figure, f64)> = rep
        .figures
        .iter()
        .filter_map(|f| f.ratio().filter(|r| *r > 0.0).map(|r| (f, r)))
        .rev() // the y axis grows upwards: the table's first row ends up on top
        .collect();
    let n = rows.len().max(1);
    let (lo, hi) = rows.iter().fold((0.5f64, 2.0f64), |(lo, hi), (_, r)| {
        (lo.min(*r), hi.max(*r))
    });
    let (lo, hi) = (lo / 1.25, hi * 1.25);
    let height = 120 + 26 * n as u32;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    {
        let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let title = format!(
            "berthd / containerd, same run ({}); green: berth better, red: worse",
            rep.date
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(470)
            .build_cartesian_2d((lo / 1.15..hi * 1.15).log_scale(), (0..n).into_segmented())
            .map_err(|e| err(&e))?;
        let labels: Vec<String> = rows
            .iter()
            .map(|(f, _)| {
                format!(
                    "{} [{}, {}]",
                    f.title,
                    f.unit,
                    if f.better == Better::Lower {
                        "lower better"
                    } else {
                        "higher better"
                    }
                )
            })
            .collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_style(("sans-serif", 12))
            .x_desc("berthd / containerd (log scale)")
            .x_labels(12)
            .x_label_formatter(&|x| format!("{x:.2}"))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, (f, r))| {
                let better = match f.better {
                    Better::Lower => *r <= 1.0,
                    Better::Higher => *r >= 1.0,
                };
                let color = if better {
                    RGBColor(46, 160, 67)
                } else {
                    RGBColor(215, 58, 73)
                };
                let mut bar = Rectangle::new(
                    [
                        (1.0, SegmentValue::Exact(i)),
                        (*r, SegmentValue::Exact(i + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, (_, r))| {
                // The value sits just past the bar's end, on the side the bar grows to.
                let (h, x) = if *r < 1.0 {
                    (HPos::Right, r / 1.02)
                } else {
                    (HPos::Left, r * 1.02)
                };
                let style = ("sans-serif", 11)
                    .into_text_style(&root)
                    .pos(Pos::new(h, VPos::Center));
                Text::new(format!("{r:.2}"), (x, SegmentValue::CenterOf(i)), style)
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(())
}
