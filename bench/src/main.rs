//! berth-bench: berthd side by side with containerd (issue 5).
//!
//! One entry point: `cargo run --release -p berth-bench -- all` (or a group name). It starts a fresh
//! berthd and a fresh containerd on one temp root, drives both with the same client code (berth's
//! generated gRPC clients; both daemons speak the same wire protocol), alternates A/B rounds so drift
//! hits both equally, and writes a table, `results.json`, `results.md` and `ratios.svg`.
//!
//! A benchmark, not a test: it never decides whether CI passes.
//!
//! Adding a figure: write it in the group's module under `figures/` (returning [`figures::Figure`]s)
//! and drop its row from `figures::pending`, which lists what cannot be measured yet.

mod daemon;
mod figures;
mod fixtures;
mod machine;
mod report;
mod stats;

use clap::{Parser, ValueEnum};
use daemon::{Kind, Lab};
use figures::{Figure, Outcome};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench",
    about = "Benchmark berthd against containerd, side by side (issue 5)"
)]
pub struct Opts {
    /// Groups to run (default: all)
    #[arg(value_enum)]
    groups: Vec<Group>,
    /// Smoke run: few iterations, skips the 10,000-container List (under a minute in total)
    #[arg(long)]
    quick: bool,
    /// Where results.json, results.md and ratios.svg go (default: bench/results)
    #[arg(long)]
    out: Option<PathBuf>,
    /// berthd binary (default: berthd next to this binary, i.e. target/release/berthd)
    #[arg(long)]
    berthd: Option<PathBuf>,
    /// containerd binary (Debian's 1.6)
    #[arg(long, default_value = "containerd")]
    containerd: PathBuf,
    /// containerd 2.4 binary for the pull group, its containerd-shim-runc-v2 beside it
    /// (bench/peers.sh builds both)
    #[arg(long, default_value = "/usr/local/lib/berth-bench/bin/containerd")]
    containerd2: PathBuf,
    /// ctr 2.4.2, the pull and load groups' client for berthd's pull (and containerd 2.4's)
    /// (scripts/deps-go-tools.sh)
    #[arg(long, default_value = "/usr/local/lib/berth-test/bin/ctr")]
    ctr2: PathBuf,
    /// Directory under which the temp root of both daemons is made (same filesystem for both)
    #[arg(long, default_value = "/var/tmp")]
    tmp: PathBuf,
    /// Rounds per figure (A/B pairs); default 6, or 2 with --quick
    #[arg(long)]
    rounds: Option<usize>,
    /// Keep the temp root (daemon logs, stores) instead of removing it
    #[arg(long)]
    keep: bool,
    /// Images, tasks, pull and load groups: run just the figures whose id contains one of these
    /// (comma-separated), e.g. `--only diff.apply`, `--only pull.debian,prepare_commit` or
    /// `--only run_rm,exec` (to profile one of them)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep the figures of the groups not run from the results.json already in the output dir
    /// (e.g. `tasks --merge` refreshes the tasks rows of a full run's results)
    #[arg(long)]
    merge: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Group {
    /// Every group below
    All,
    /// containers CRUD, List, durable single write
    Metadata,
    /// content Write and Read of a 100 MiB blob
    Content,
    /// daemon RSS/PSS, start-to-ready, restart-to-ready
    Footprint,
    /// images pull/import (Debian ~110 MB, busybox), diff Apply, snapshot Prepare+Commit
    Images,
    /// tasks: ctr run --rm, task Create+Start, 4-client run cycles, exec, 100 running containers
    Tasks,
    /// pull/push from a loopback registry: berthd vs containerd 2.4 and 1.6, fresh root per sample
    Pull,
    /// load: 8 clients x 500 create/start/delete cycles; a pull while 50 clients create containers
    Load,
}

impl Group {
    /// Every group, in the order a full run measures them.
    const EACH: [Group; 7] = [
        Group::Footprint,
        Group::Metadata,
        Group::Content,
        Group::Images,
        Group::Tasks,
        Group::Pull,
        Group::Load,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Group::All => "all",
            Group::Metadata => "metadata",
            Group::Content => "content",
            Group::Footprint => "footprint",
            Group::Images => "images",
            Group::Tasks => "tasks",
            Group::Pull => "pull",
            Group::Load => "load",
        }
    }
}

impl Opts {
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 2 } else { 6 }).max(1)
    }
    /// Whether `--only` lets figure `id` run.
    pub fn wants_figure(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| id.contains(o.as_str()))
    }
    fn wants(&self, g: Group) -> bool {
        self.groups.is_empty() || self.groups.contains(&Group::All) || self.groups.contains(&g)
    }
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

pub type Result<T> = std::result::Result<T, String>;

async fn run(opts: Opts) -> Result<()> {
    let started = Instant::now();
    // The documented way to run it, with this run's arguments.
    let command = std::iter::once("cargo run --release -p berth-bench --".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let berthd = match &opts.berthd {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary: {e}"))?
            .with_file_name("berthd"),
    };
    if !berthd.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p berthd` or pass --berthd",
            berthd.display()
        ));
    }
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));

    let previous = if opts.merge {
        report::load_previous(&out)?
    } else {
        None
    };

    daemon::install_signal_handler();
    let lab = Lab::start(&berthd, &opts.containerd, &opts.tmp, opts.keep).await?;
    let machine = machine::describe(lab.root());
    let mut versions = machine::versions(&lab).await;
    if opts.wants(Group::Pull) || opts.wants(Group::Load) {
        machine::pull_peer_versions(&mut versions, &opts.containerd2, &opts.ctr2);
    }
    report::print_header(&machine, &versions, &opts, &command);

    let mut figs: Vec<Figure> = Vec::new();
    let mut lab = lab;
    if opts.wants(Group::Footprint) {
        figs.extend(group(
            "footprint (idle)",
            figures::footprint::at_start(&lab).await,
        ));
    }
    let mut stored = 0;
    if opts.wants(Group::Metadata) {
        let (f, n) = match figures::metadata::run(&lab, &opts).await {
            Ok((f, n)) => (Ok(f), n),
            Err(e) => (Err(e), 0),
        };
        figs.extend(group("metadata", f));
        stored = n;
    }
    if opts.wants(Group::Content) {
        figs.extend(group("content", figures::content::run(&lab, &opts).await));
    }
    if opts.wants(Group::Footprint) {
        figs.extend(group(
            "footprint (after load)",
            figures::footprint::after_load(&mut lab, &opts, stored, opts.wants(Group::Content))
                .await,
        ));
    }
    if opts.wants(Group::Images) {
        figs.extend(group("images", figures::images::run(&lab, &opts).await));
    }
    if opts.wants(Group::Tasks) {
        figs.extend(group("tasks", figures::tasks::run(&mut lab, &opts).await));
    }
    if opts.wants(Group::Pull) {
        figs.extend(group(
            "pull",
            figures::pull::run(&lab, &opts, &berthd).await,
        ));
    }
    if opts.wants(Group::Load) {
        figs.extend(group(
            "load",
            figures::load::run(&lab, &opts, &berthd).await,
        ));
    }
    let (mut figs, carried_over) = carry_over(&opts, previous, figs);
    let carried: Vec<&str> = carried_over
        .iter()
        .flat_map(|c| c.groups.iter().map(String::as_str))
        .collect();
    let caps = figures::pending::probe(lab.daemon(Kind::Berth)).await;
    for g in [
        Group::Metadata,
        Group::Content,
        Group::Images,
        Group::Tasks,
        Group::Footprint,
    ] {
        if opts.wants(g) || carried.contains(&g.name()) {
            figs.extend(figures::pending::rows(g, &caps));
        }
    }
    lab.stop();
    drop(lab);

    let elapsed = started.elapsed();
    let date = machine::now_utc();
    report::print_table(&figs);
    let rep = report::Report {
        date,
        command,
        quick: opts.quick,
        rounds: opts.rounds(),
        elapsed_s: elapsed.as_secs_f64(),
        machine,
        versions,
        carried_over,
        figures: figs,
    };
    report::write_all(&rep, &out)?;
    eprintln!(
        "\nresults: {}/results.json, results.md, ratios.svg  (total {:.1} s)",
        out.display(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// `--merge`: the figures of the groups this run did not measure, from the earlier results (their
/// "not yet measurable" rows are left out: they are made afresh), then this run's figures.
fn carry_over(
    opts: &Opts,
    previous: Option<report::Previous>,
    figs: Vec<Figure>,
) -> (Vec<Figure>, Vec<report::Carried>) {
    let Some(prev) = previous else {
        return (figs, vec![]);
    };
    let group_of = |f: &Figure| Group::EACH.into_iter().find(|g| f.in_group(g.name()));
    let mut kept = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    for f in prev.figures {
        match group_of(&f) {
            Some(g) if !opts.wants(g) && !matches!(f.outcome, Outcome::NotYet { .. }) => {
                if !groups.contains(&g) {
                    groups.push(g);
                }
                kept.push(f);
            }
            _ => {}
        }
    }
    // Groups the earlier results had carried over themselves keep their own origin.
    let mut carried: Vec<report::Carried> = prev
        .carried_over
        .into_iter()
        .filter_map(|mut c| {
            c.groups
                .retain(|n| groups.iter().any(|g| g.name() == n.as_str()));
            (!c.groups.is_empty()).then_some(c)
        })
        .collect();
    let older: Vec<String> = carried.iter().flat_map(|c| c.groups.clone()).collect();
    let own: Vec<String> = groups
        .iter()
        .map(|g| g.name().to_string())
        .filter(|n| !older.contains(n))
        .collect();
    if !own.is_empty() {
        carried.insert(
            0,
            report::Carried {
                groups: own,
                date: prev.date,
                command: prev.command,
            },
        );
    }
    if !carried.is_empty() {
        eprintln!(
            "--merge: carried over {} figures ({})",
            kept.len(),
            carried
                .iter()
                .map(|c| format!("{} from {}", c.groups.join(", "), c.date))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    kept.extend(figs);
    (kept, carried)
}

/// A group that failed as a whole still shows up in the table, as one failed row.
fn group(name: &'static str, r: Result<Vec<Figure>>) -> Vec<Figure> {
    match r {
        Ok(f) => f,
        Err(e) => {
            eprintln!("[{name}] failed: {e}");
            vec![Figure::new(
                name,
                "failed",
                format!("{name} group"),
                "",
                figures::Better::Lower,
            )
            .with(Outcome::Failed { error: e })]
        }
    }
}
