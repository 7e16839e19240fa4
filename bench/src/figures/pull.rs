//! Pull figures (issue 12, "Fast, and measured"): berthd, containerd 2.4 (built from its Go module
//! by `bench/peers.sh`) and Debian's containerd 1.6 side by side in one run, from Debian's
//! docker-registry on loopback:
//!
//! - `ctr images pull --plain-http` of the Debian image (~110 MB, two layers) and of the 12-layer
//!   image (~3.6 MB, one whiteout): ctr 2.4.2 (its default path, the Transfer service) against
//!   berthd and containerd 2.4, Debian's ctr 1.6 (a client-side pull) against containerd 1.6;
//! - two such pulls of the Debian image at once (wall time until both are done);
//! - `ctr images push --plain-http` of the Debian image to a fresh repository per sample (the
//!   image imported beforehand, outside the clock, with `--no-unpack`);
//! - beside issue 12's figures, the two single pulls again with ctr 2.4.2's `--local` (the
//!   client-driven pull, no Transfer) against berthd and containerd 2.4: berthd's pull as it is
//!   without the Transfer service.
//!
//! Every sample runs on a daemon started for it alone on a fresh root (outside the clock), so no
//! blob, snapshot or connection of an earlier sample helps. A round takes one sample per daemon,
//! in an order that rotates from round to round; the ratios are per round, berthd over each peer.
//!
//! A daemon whose first sample of a figure fails is not asked again for it: for berthd (which
//! answers Transfer with Unimplemented until it has the service) the figure records "not served"
//! with the error and the peers' figures stand alone; a failing peer fails the figure.
//!
//! The roots are kept until the end of the group (unless the disk runs low): removing an unpacked
//! Debian image (~10,000 files) right before the next unpack makes ext4 without a journal scan its
//! recently deleted inodes on every create (see the images module) — an artifact of the bench.
//! Then they are removed in the background ([`crate::daemon::remove_in_background`]).

use super::{snapshot_names, Better, Figure, Outcome};
use crate::daemon::{Daemon, Kind, Lab};
use crate::fixtures::{self, Image, Registry};
use crate::stats::{median, summarize};
use crate::{Opts, Result};
use berth::api::services::snapshots::v1::Kind as SnapshotKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const G: &str = "pull";
/// Every sample's namespace (each daemon is fresh, so one name serves all).
pub(super) const NS: &str = "bench-pull";
/// Issue 12's targets: berthd at most 0.5x containerd 2.4 and 0.35x containerd 1.6 for the Debian
/// image, at most 0.4x containerd 2.4 for the many-layer image.
const DEBIAN_VS_24: f64 = 0.5;
const DEBIAN_VS_16: f64 = 0.35;
const LAYERS_VS_24: f64 = 0.4;
/// Below this much free space on the temp root's filesystem, the oldest sample roots go early.
const MIN_FREE: u64 = 8 << 30;
/// A sample that takes longer than this is a hung daemon or registry, not a figure.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The daemons in round 0's order; round r starts r places further.
const KINDS: [Kind; 3] = [Kind::Berth, Kind::Containerd2, Kind::Containerd];
/// The peers, in the order of the figures (berthd / peer).
const PEERS: [Kind; 2] = [Kind::Containerd2, Kind::Containerd];

fn rotation(round: usize) -> [Kind; 3] {
    let mut k = KINDS;
    k.rotate_left(round % KINDS.len());
    k
}

fn index(kind: Kind) -> usize {
    match kind {
        Kind::Berth => 0,
        Kind::Containerd2 => 1,
        Kind::Containerd => 2,
    }
}

fn peer_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Containerd2 => "containerd 2.4",
        Kind::Containerd => "containerd 1.6",
        Kind::Berth => "berthd",
    }
}

fn peer_id(kind: Kind) -> &'static str {
    match kind {
        Kind::Containerd2 => "vs-2.4",
        Kind::Containerd => "vs-1.6",
        Kind::Berth => "berthd",
    }
}

pub(super) fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and touches no memory of ours.
    unsafe { libc::sync() }
}

/// Free bytes on the filesystem of `p` (None if statvfs fails).
fn free_bytes(p: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(p.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

enum Op<'a> {
    /// `copies` pulls of the image at once; with `local`, ctr 2.4.2 pulls through the client
    /// (`--local`: fetch into the content store, unpack with Diff/Snapshots) instead of Transfer.
    Pull {
        img: &'a Image,
        reference: String,
        copies: usize,
        local: bool,
    },
    /// Import the archive (untimed), then push it to a fresh repository.
    Push { img: &'a Image },
}

struct Spec<'a> {
    id: &'static str,
    title: String,
    op: Op<'a>,
    /// Targets for berthd / containerd 2.4 and berthd / containerd 1.6.
    targets: [Option<f64>; 2],
}

/// The programs of the group and the state shared by its samples.
struct Bench<'a> {
    opts: &'a Opts,
    berthd: PathBuf,
    containerd2: PathBuf,
    shim_dir: PathBuf,
    ctr2: PathBuf,
    registry: &'a Registry,
    base: PathBuf,
    next: usize,
    /// Sample roots still on disk, oldest first.
    roots: Vec<PathBuf>,
    /// Roots removed early for lack of space (said in the notes).
    removed_early: usize,
}

impl Bench<'_> {
    fn ctr_for(&self, kind: Kind) -> PathBuf {
        match kind {
            Kind::Berth | Kind::Containerd2 => self.ctr2.clone(),
            Kind::Containerd => PathBuf::from("ctr"),
        }
    }

    fn make_room(&mut self) {
        while free_bytes(&self.base).is_some_and(|f| f < MIN_FREE) && !self.roots.is_empty() {
            let old = self.roots.remove(0);
            let _ = std::fs::remove_dir_all(&old);
            self.removed_early += 1;
        }
    }

    /// A daemon of `kind` started on a fresh root of its own (a short name: the sockets are in it).
    async fn fresh(&mut self, kind: Kind) -> Result<Daemon> {
        self.make_room();
        self.next += 1;
        let tag = match kind {
            Kind::Berth => "berthd-",
            Kind::Containerd2 => "c24-",
            Kind::Containerd => "c16-",
        };
        let dir = self.base.join(format!("{tag}{}", self.next));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        self.roots.push(dir.clone());
        let mut d = match kind {
            Kind::Berth => Daemon::berthd(&self.berthd, &dir)?,
            Kind::Containerd2 => Daemon::containerd2(&self.containerd2, &dir, &self.shim_dir)?,
            Kind::Containerd => Daemon::containerd(&self.opts.containerd, &dir)?,
        };
        d.start().await?;
        Ok(d)
    }

    /// One sample of `op` on a fresh daemon of `kind`: seconds.
    async fn sample(&mut self, kind: Kind, spec: &Spec<'_>) -> Result<f64> {
        let mut d = self.fresh(kind).await?;
        let r = self.timed(&d, kind, &spec.op).await;
        d.stop();
        r
    }

    async fn timed(&mut self, d: &Daemon, kind: Kind, op: &Op<'_>) -> Result<f64> {
        let ctr = self.ctr_for(kind);
        match op {
            Op::Pull {
                img,
                reference,
                copies,
                local,
            } => {
                let mut args = vec!["images", "pull", "--plain-http"];
                if *local && kind != Kind::Containerd {
                    args.push("--local");
                }
                args.push(reference);
                sync_disks();
                let t = Instant::now();
                // All started before any is waited for: they run at once; the clock stops when
                // the last is done.
                let children = (0..*copies)
                    .map(|_| spawn_ctr(&ctr, d, &args))
                    .collect::<Result<Vec<_>>>()?;
                for child in children {
                    finish_ctr(child, d, &args).await?;
                }
                let dt = t.elapsed().as_secs_f64();
                // Outside the clock: the pull really unpacked (one committed snapshot per layer).
                let ch = d.connect().await?;
                let n = snapshot_names(ch, NS, SnapshotKind::Committed)
                    .await
                    .map_err(|s| format!("{}: Snapshots.List: {}", kind.name(), s.message()))?
                    .len();
                if n < img.layers.len() {
                    return Err(format!(
                        "{}: {n} committed snapshots after the pull, expected {} (one per layer)",
                        kind.name(),
                        img.layers.len()
                    ));
                }
                Ok(dt)
            }
            Op::Push { img } => {
                let local = format!("docker.io/bench/{}:v1", img.short);
                let archive = img.archive.to_string_lossy().into_owned();
                let mut import = vec!["images", "import", "--no-unpack"];
                if kind != Kind::Containerd {
                    // Setup only: through the client, so a daemon without Transfer can push.
                    import.push("--local");
                }
                import.extend([
                    "--base-name",
                    &local[..local.len() - ":v1".len()],
                    archive.as_str(),
                ]);
                run_ctr(&ctr, d, &import).await?;
                self.next += 1;
                let repo = format!("bench/push-{}-{}", kind.name(), self.next);
                let remote = format!("{}/{repo}:v1", self.registry.addr);
                sync_disks();
                let t = Instant::now();
                run_ctr(
                    &ctr,
                    d,
                    &["images", "push", "--plain-http", &remote, &local],
                )
                .await?;
                let dt = t.elapsed().as_secs_f64();
                if !self.registry.has_manifest(&repo, "v1") {
                    return Err(format!(
                        "{}: push returned, but the registry has no manifest {repo}:v1",
                        kind.name()
                    ));
                }
                Ok(dt)
            }
        }
    }

    /// The figure pair (berthd / containerd 2.4, berthd / containerd 1.6) of one spec.
    async fn figure(&mut self, spec: &Spec<'_>) -> Vec<Figure> {
        let (t0, removed_before) = (Instant::now(), self.removed_early);
        // Per round, per daemon (KINDS order): the sample, if taken.
        let mut rounds: Vec<[Option<f64>; 3]> = Vec::new();
        let mut errors: [Option<String>; 3] = Default::default();
        for round in 0..self.opts.rounds() {
            let mut row = [None; 3];
            for kind in rotation(round) {
                let i = index(kind);
                if errors[i].is_some() {
                    continue;
                }
                match self.sample(kind, spec).await {
                    Ok(s) => row[i] = Some(s),
                    Err(e) => {
                        eprintln!("[pull] {} on {}: {e}", spec.id, kind.name());
                        errors[i] = Some(e);
                    }
                }
            }
            rounds.push(row);
        }
        eprintln!(
            "[pull] {}: {} rounds in {:.1} s",
            spec.id,
            rounds.len(),
            t0.elapsed().as_secs_f64()
        );
        let samples = |i: usize| -> Vec<f64> { rounds.iter().filter_map(|r| r[i]).collect() };
        let how = match &spec.op {
            Op::Pull { img, copies, local, .. } => format!(
                "{}{}; fresh root per sample; ctr 2.4.2 ({}) against berthd and containerd 2.4, ctr 1.6 against containerd 1.6",
                if *copies > 1 { format!("{copies} concurrent `ctr images pull --plain-http`, wall time until all are done; ") } else { "`ctr images pull --plain-http`; ".into() },
                img.describe(),
                if *local { "`--local`: the client fetches into the content store and unpacks through Diff/Snapshots, no Transfer" } else { "Transfer" }
            ),
            Op::Push { img } => format!(
                "`ctr images push --plain-http` to a fresh repository per sample; {}; imported beforehand with `--no-unpack` (outside the clock); fresh root per sample; ctr 2.4.2 (Transfer) against berthd and containerd 2.4, ctr 1.6 against containerd 1.6",
                img.describe()
            ),
        };
        let removed = self.removed_early - removed_before;
        let how = if removed > 0 {
            format!("{how}; {removed} older sample roots were removed before samples of this figure for lack of disk space (see the module doc: it may slow the unpacks that follow)")
        } else {
            how
        };
        let mut figs = Vec::new();
        for (p, peer) in PEERS.into_iter().enumerate() {
            let pi = index(peer);
            let outcome = if let Some(e) = &errors[pi] {
                Outcome::Failed {
                    error: format!("{}: {e}", peer_label(peer)),
                }
            } else if let Some(e) = &errors[0] {
                Outcome::NotServed {
                    error: e.clone(),
                    containerd: summarize(&samples(pi)),
                }
            } else {
                let ratios: Vec<f64> = rounds
                    .iter()
                    .filter_map(|r| Some(r[0]? / r[pi]?))
                    .filter(|x| x.is_finite())
                    .collect();
                Outcome::Measured {
                    berth: summarize(&samples(0)),
                    containerd: summarize(&samples(pi)),
                    ratio: summarize(&ratios),
                }
            };
            let mut f = Figure::new(
                G,
                format!("{}.{}", spec.id, peer_id(peer)),
                format!("{}: berthd vs {}", spec.title, peer_label(peer)),
                "s",
                Better::Lower,
            )
            .with(outcome)
            .note(how.clone());
            if let Some(t) = spec.targets[p] {
                f = f.target(t);
                f.note = f.note.map(|n| format!("{n}; target: issue 12"));
            }
            figs.push(f);
        }
        // containerd 2.4 against 1.6 (same run, same fixture): how the peers compare.
        let ratios: Vec<f64> = rounds.iter().filter_map(|r| Some(r[1]? / r[2]?)).collect();
        if errors[1].is_none() && errors[2].is_none() {
            eprintln!(
                "[pull] {}: containerd 2.4 median {:.2} s, containerd 1.6 median {:.2} s, 2.4/1.6 {:.2}",
                spec.id,
                median(&samples(1)),
                median(&samples(2)),
                median(&ratios)
            );
        }
        figs
    }
}

/// Start `ctr --address SOCK --namespace NS ARGS...` (killed if dropped before it is done).
pub(super) fn spawn_ctr(ctr: &Path, d: &Daemon, args: &[&str]) -> Result<tokio::process::Child> {
    tokio::process::Command::new(ctr)
        .arg("--address")
        .arg(&d.socket)
        .arg("--namespace")
        .arg(NS)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("run {}: {e}", ctr.display()))
}

/// Wait for a ctr started by [`spawn_ctr`] (bounded by SAMPLE_TIMEOUT); its stderr's tail if it
/// failed.
pub(super) async fn finish_ctr(
    child: tokio::process::Child,
    d: &Daemon,
    args: &[&str],
) -> Result<()> {
    let out = tokio::time::timeout(SAMPLE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{}: ctr {} did not finish in {} s",
                d.kind.name(),
                args.join(" "),
                SAMPLE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("wait for ctr: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!(
            "{}: ctr {} failed ({}): {}",
            d.kind.name(),
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok(())
}

async fn run_ctr(ctr: &Path, d: &Daemon, args: &[&str]) -> Result<()> {
    finish_ctr(spawn_ctr(ctr, d, args)?, d, args).await
}

/// The programs the group needs, with a clear error for a missing one.
fn check_programs(opts: &Opts) -> Result<()> {
    for (p, how) in [
        (
            &opts.containerd2,
            "run bench/peers.sh or pass --containerd2",
        ),
        (&opts.ctr2, "run scripts/deps-go-tools.sh or pass --ctr2"),
    ] {
        if !p.exists() {
            return Err(format!("{} not found: {how}", p.display()));
        }
    }
    Ok(())
}

pub async fn run(lab: &Lab, opts: &Opts, berthd: &Path) -> Result<Vec<Figure>> {
    check_programs(opts)?;
    let shim_dir = opts
        .containerd2
        .parent()
        .ok_or("--containerd2 has no parent directory")?
        .to_path_buf();
    let (debian, layers) = tokio::task::block_in_place(|| {
        Ok::<_, String>((fixtures::debian()?, fixtures::layers12()?))
    })?;
    eprintln!("[pull] {}", debian.describe());
    eprintln!("[pull] {}", layers.describe());
    let base = lab.root().join("pull");
    let mut registry = Registry::start(&base.join("registry"))?;
    let (debian_ref, layers_ref) = tokio::task::block_in_place(|| {
        Ok::<_, String>((
            registry.push(&debian, "bench/debian")?,
            registry.push(&layers, "bench/layers12")?,
        ))
    })?;
    let debian_title = format!(
        "Debian image (~{:.0} MB, {} layers)",
        debian.compressed_size() as f64 / 1e6,
        debian.layers.len()
    );
    let layers_title = format!(
        "{}-layer image (~{:.1} MB)",
        layers.layers.len(),
        layers.compressed_size() as f64 / 1e6
    );
    let specs = [
        Spec {
            id: "pull.debian",
            title: format!("ctr images pull, {debian_title}"),
            op: Op::Pull {
                img: &debian,
                reference: debian_ref.clone(),
                copies: 1,
                local: false,
            },
            targets: [Some(DEBIAN_VS_24), Some(DEBIAN_VS_16)],
        },
        Spec {
            id: "pull.layers12",
            title: format!("ctr images pull, {layers_title}"),
            op: Op::Pull {
                img: &layers,
                reference: layers_ref.clone(),
                copies: 1,
                local: false,
            },
            targets: [Some(LAYERS_VS_24), None],
        },
        Spec {
            id: "pull.debian.concurrent2",
            title: format!("2 concurrent ctr images pull, {debian_title}"),
            op: Op::Pull {
                img: &debian,
                reference: debian_ref.clone(),
                copies: 2,
                local: false,
            },
            targets: [None, None],
        },
        // Not issue 12's figures: berthd's pull as it is without Transfer, against containerd
        // 2.4's on the same client path (1.6's ctr pulls that way anyway).
        Spec {
            id: "pull.debian.local",
            title: format!("ctr images pull --local, {debian_title}"),
            op: Op::Pull {
                img: &debian,
                reference: debian_ref,
                copies: 1,
                local: true,
            },
            targets: [None, None],
        },
        Spec {
            id: "pull.layers12.local",
            title: format!("ctr images pull --local, {layers_title}"),
            op: Op::Pull {
                img: &layers,
                reference: layers_ref,
                copies: 1,
                local: true,
            },
            targets: [None, None],
        },
        Spec {
            id: "push.debian",
            title: format!("ctr images push, {debian_title}"),
            op: Op::Push { img: &debian },
            targets: [None, None],
        },
    ];
    let mut bench = Bench {
        opts,
        berthd: berthd.to_path_buf(),
        containerd2: opts.containerd2.clone(),
        shim_dir,
        ctr2: opts.ctr2.clone(),
        registry: &registry,
        base: base.clone(),
        next: 0,
        roots: Vec::new(),
        removed_early: 0,
    };
    // Warm-up, not measured: each daemon's and ctr's binaries into the page cache (the registry's
    // blobs are there already: skopeo has just written them).
    let warm = Spec {
        id: "warmup",
        title: String::new(),
        op: Op::Pull {
            img: &layers,
            reference: specs[1].op_reference(),
            copies: 1,
            local: false,
        },
        targets: [None, None],
    };
    for kind in KINDS {
        if let Err(e) = bench.sample(kind, &warm).await {
            eprintln!("[pull] warm-up on {}: {e}", kind.name());
        }
    }
    let mut figs = Vec::new();
    for spec in specs.iter().filter(|s| opts.wants_figure(s.id)) {
        figs.extend(bench.figure(spec).await);
    }
    drop(bench);
    registry.stop();
    // Removing a run's unpacked images takes minutes on a busy disk (over 100,000 files): the
    // group's dir leaves the temp root by a rename and goes in the background, at idle I/O
    // priority, rather than on the bench's clock.
    crate::daemon::remove_in_background(&base);
    Ok(figs)
}

impl Spec<'_> {
    fn op_reference(&self) -> String {
        match &self.op {
            Op::Pull { reference, .. } => reference.clone(),
            Op::Push { .. } => String::new(),
        }
    }
}
