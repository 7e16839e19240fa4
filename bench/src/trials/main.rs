//! berth-trials: crash trials for berthd (issue 15, part 2).
//!
//! Each trial starts a real berthd on a throwaway root, drives it from several concurrent clients
//! with a random mix of writes (namespaces, containers created / updated / deleted, content
//! written and committed, leases, snapshots prepared and committed under a lease, images), and
//! records every call in a ledger: what each key must be if the call was acknowledged, and what it
//! may be if the call got no answer. At a random moment — a random delay, or the instant a client
//! sends the COMMIT of a content write (mid-flush) — berthd is killed with SIGKILL, started again
//! on the same root, and checked:
//!
//! - every acknowledged effect is there (and every acknowledged delete is gone);
//! - nothing that was never asked for appears (every name the API lists is in the ledger);
//! - every committed blob reads back whole and hashes to its digest; every image's target is in
//!   the content store; every snapshot's parent exists;
//! - the daemon starts every time.
//!
//! A benchmark, not a test: `cargo run --release -p berth-bench --bin berth-trials -- --trials
//! 1000`. bench/tests/trials_smoke.rs runs three trials in CI.

mod dead_tasks;
mod ledger;
mod verify;
mod workload;

use berth_testkit::berthd::Daemon;
use clap::Parser;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, String>;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "berth-trials",
    about = "Kill -9 berthd under a mixed workload, restart it, check every acknowledged write"
)]
pub struct Opts {
    /// Number of trials
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Concurrent clients per trial
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seed of the trials' random choices (default: from the clock); printed, to replay a failure
    #[arg(long)]
    seed: Option<u64>,
    /// Longest delay before the kill, in milliseconds (the shortest is 20)
    #[arg(long, default_value_t = 1500)]
    max_kill_ms: u64,
    /// berthd binary (default: berthd next to this binary)
    #[arg(long)]
    berthd: Option<PathBuf>,
    /// Stop at the first failed trial and keep its root (its path is printed)
    #[arg(long)]
    stop_on_failure: bool,
    /// Instead of crash trials: time berthd's start to ready on a state dir holding this many
    /// dead tasks "from before a reboot" (bundles whose shims are gone), `--trials` times
    #[arg(long, default_value_t = 0)]
    pub dead_tasks: usize,
    /// Check the checker: while berthd is down, delete one committed blob file behind its back;
    /// every trial that had one must then fail
    #[arg(long)]
    sabotage: bool,
}

/// Small, seedable, dependency-free randomness (xorshift64*).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// How the kill moment of a trial is chosen.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// After a random delay.
    Delay(Duration),
    /// After the delay, the moment a client sends the COMMIT of a content write (the blob is
    /// being flushed and renamed into place; or 2 s later if none comes).
    MidCommit(Duration),
}

struct TrialOutcome {
    acked: usize,
    unsure: usize,
    failures: Vec<String>,
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let berthd = opts.berthd.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("berthd")))
            .unwrap_or_else(|| PathBuf::from("berthd"))
    });
    if !berthd.is_file() {
        eprintln!(
            "berth-trials: no berthd at {} (build it, or pass --berthd)",
            berthd.display()
        );
        return ExitCode::FAILURE;
    }
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!(
        "berth-trials: {} trials, {} clients each, seed {seed}, berthd {}",
        opts.trials,
        opts.clients,
        berthd.display()
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-trials: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if opts.dead_tasks > 0 {
        return dead_tasks::run(&berthd, &opts, &rt);
    }
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let (mut failed, mut acked, mut unsure) = (0usize, 0usize, 0usize);
    for n in 0..opts.trials {
        let trial_seed = rng.next_u64();
        let mut trng = Rng::new(trial_seed);
        let delay = Duration::from_millis(trng.range(20, opts.max_kill_ms.max(21)));
        let kill_at = match trng.range(0, 3) {
            0 => KillAt::MidCommit(delay),
            _ => KillAt::Delay(delay),
        };
        let t = Instant::now();
        let mut daemon = match std::panic::catch_unwind(|| Daemon::start_binary(&berthd, "")) {
            Ok(d) => d,
            Err(_) => {
                println!("trial {n}: berthd did not start on a fresh root");
                failed += 1;
                continue;
            }
        };
        let out = rt.block_on(trial(&mut daemon, &opts, trng, kill_at));
        acked += out.acked;
        unsure += out.unsure;
        let ms = t.elapsed().as_millis();
        if out.failures.is_empty() {
            println!(
                "trial {n}: ok ({kill_at:?}, {} acknowledged, {} unanswered, {ms} ms)",
                out.acked, out.unsure
            );
        } else {
            failed += 1;
            println!(
                "trial {n}: FAILED (seed {trial_seed}, {kill_at:?}, {} acknowledged, {ms} ms)",
                out.acked
            );
            for f in out.failures.iter().take(20) {
                println!("    {f}");
            }
            if opts.stop_on_failure {
                // The daemon's temp dir goes with it: copy it (root, state, log) for a look.
                daemon.kill9();
                let kept = std::env::temp_dir().join(format!("berth-trials-failed-{trial_seed}"));
                let copied = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(daemon.dir.path())
                    .arg(&kept)
                    .status()
                    .is_ok_and(|s| s.success());
                if copied {
                    println!("root, state and log kept at {}", kept.display());
                }
                break;
            }
        }
        // Dropping the daemon kills it and removes its root; nothing of a trial is mounted
        // (snapshots are only prepared, never mounted), so nothing else needs undoing.
        drop(daemon);
    }
    println!(
        "berth-trials: {} trials, {failed} failed, {acked} acknowledged operations checked ({unsure} unanswered), {:.1} s",
        opts.trials,
        t0.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn trial(daemon: &mut Daemon, opts: &Opts, mut rng: Rng, kill_at: KillAt) -> TrialOutcome {
    let ledger = Arc::new(ledger::Ledger::default());
    let mut failures = vec![];
    let channel = match berth::connect(&daemon.socket).await {
        Ok(c) => c,
        Err(e) => {
            return TrialOutcome {
                acked: 0,
                unsure: 0,
                failures: vec![format!("connect: {e}")],
            }
        }
    };
    let commit_sent = Arc::new(tokio::sync::Notify::new());
    let arm = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = vec![];
    for k in 0..opts.clients {
        let w = workload::Client::new(
            k,
            channel.clone(),
            ledger.clone(),
            Rng::new(rng.next_u64()),
            commit_sent.clone(),
            arm.clone(),
            killed.clone(),
        );
        clients.push(tokio::spawn(w.run()));
    }
    match kill_at {
        KillAt::Delay(d) => tokio::time::sleep(d).await,
        KillAt::MidCommit(d) => {
            tokio::time::sleep(d).await;
            arm.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = tokio::time::timeout(Duration::from_secs(2), commit_sent.notified()).await;
        }
    }
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    daemon.kill9();
    for c in clients {
        match tokio::time::timeout(Duration::from_secs(30), c).await {
            Ok(Ok(errs)) => failures.extend(errs),
            Ok(Err(e)) => failures.push(format!("client panicked: {e}")),
            Err(_) => failures.push("a client did not stop within 30 s of the kill".into()),
        }
    }
    drop(channel);
    if opts.sabotage {
        let blobs = daemon.root().join("content/blobs/sha256");
        if let Some(Ok(e)) = std::fs::read_dir(blobs).ok().and_then(|mut d| d.next()) {
            let _ = std::fs::remove_file(e.path());
            println!("    sabotage: removed {}", e.path().display());
        }
    }
    let restarted = std::panic::catch_unwind(AssertUnwindSafe(|| daemon.spawn())).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    });
    if let Err(e) = restarted {
        failures.push(format!("berthd did not restart: {e}"));
    } else {
        match berth::connect(&daemon.socket).await {
            Ok(ch) => failures.extend(verify::verify(ch, &ledger).await),
            Err(e) => failures.push(format!("connect after restart: {e}")),
        }
    }
    let (acked, unsure) = ledger.counts();
    TrialOutcome {
        acked,
        unsure,
        failures,
    }
}
