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
//! With `--tasks` one more client drives berthd through Debian's `ctr` (image import and pulls
//! with unpack from a loopback registry, `ctr run --rm` cycles), and after every trial a
//! collection runs and the disk is checked for anything unreferenced and the host for leaked
//! mounts, shims, container processes and cgroups (`tasks.rs`); `--kill-shims` kills random
//! shims instead of berthd.
//!
//! A benchmark, not a test: `cargo run --release -p berth-bench --bin berth-trials -- --trials
//! 1000`. bench/tests/trials_smoke.rs runs three trials in CI.

mod dead_tasks;
mod ledger;
mod tasks;
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
    /// Add the ctr client (image import and pulls with unpack, `ctr run --rm` cycles) and, after
    /// each trial, the collection and the check for unreferenced files and leaks
    #[arg(long)]
    tasks: bool,
    /// Kill random shims (SIGKILL) of a running berthd instead of berthd itself (implies --tasks;
    /// only the ctr client runs)
    #[arg(long)]
    kill_shims: bool,
    /// With --tasks: no registry, no pulls
    #[arg(long)]
    no_pull: bool,
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
    let with_tasks = opts.tasks || opts.kill_shims;
    let work = match tempfile::Builder::new().prefix("berth-trials-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("berth-trials: temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fixture = if with_tasks {
        match tasks::fixture(work.path(), !opts.no_pull) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("berth-trials: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
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
        let out = rt.block_on(trial(&mut daemon, &opts, trng, kill_at, fixture.as_ref()));
        if with_tasks {
            // Whatever a failed check left on the host goes before the next trial.
            daemon.kill9();
            tasks::force_clean(daemon.dir.path(), &tasks::namespace());
        }
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
    if with_tasks {
        tasks::remove_cgroups(&tasks::namespace());
    }
    drop(fixture);
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

async fn trial(
    daemon: &mut Daemon,
    opts: &Opts,
    mut rng: Rng,
    kill_at: KillAt,
    fixture: Option<&tasks::Fixture>,
) -> TrialOutcome {
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
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ns = tasks::namespace();
    let mut clients = vec![];
    // By client, in `clients`' order: what it is waiting on.
    let mut doings: Vec<(String, Arc<std::sync::Mutex<String>>)> = Vec::new();
    let imported = Arc::new(tokio::sync::Notify::new());
    if let Some(f) = fixture {
        let c = tasks::CtrClient {
            socket: daemon.socket.clone(),
            ch: channel.clone(),
            ns: ns.clone(),
            ledger: ledger.clone(),
            rng: Rng::new(rng.next_u64()),
            killed: killed.clone(),
            stop: stop.clone(),
            archive: f.archive.clone(),
            target: f.target.clone(),
            pull: f.registry.as_ref().map(|r| r.reference.clone()),
            imported: imported.clone(),
            doing: Arc::default(),
            daemon_killed: !opts.kill_shims,
        };
        doings.push(("the ctr client".to_string(), c.doing.clone()));
        clients.push(tokio::spawn(c.run()));
        let _ = tokio::time::timeout(Duration::from_secs(30), imported.notified()).await;
    }
    // With --kill-shims the daemon stays up: the API clients would never stop.
    let api_clients = if opts.kill_shims { 0 } else { opts.clients };
    for k in 0..api_clients {
        let w = workload::Client::new(
            k,
            channel.clone(),
            ledger.clone(),
            Rng::new(rng.next_u64()),
            commit_sent.clone(),
            arm.clone(),
            killed.clone(),
        );
        doings.push((format!("API client {k}"), w.doing()));
        clients.push(tokio::spawn(w.run()));
    }
    if opts.kill_shims {
        return shim_trial(
            daemon, &ledger, rng, kill_at, clients, killed, stop, fixture,
        )
        .await;
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
    for (mut c, (who, doing)) in clients.into_iter().zip(doings) {
        match tokio::time::timeout(Duration::from_secs(30), &mut c).await {
            Ok(Ok(errs)) => failures.extend(errs),
            Ok(Err(e)) => failures.push(format!("client panicked: {e}")),
            Err(_) => {
                let read = || doing.lock().map(|d| d.clone()).unwrap_or_default();
                let waiting = read();
                // A hung ctr (Go) prints every goroutine's stack on SIGQUIT and exits; its
                // stderr then lands in `doing`.
                for pid in tasks::processes_naming(daemon.dir.path()) {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if cmdline.starts_with(b"ctr\0") {
                        let _ = tasks::signal(pid, libc::SIGQUIT);
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut c).await;
                let mut after = read();
                after.truncate(8000);
                failures.push(format!(
                    "{who} did not stop within 30 s of the kill (waiting on: {waiting}); after SIGQUIT to its ctr: {after}"
                ))
            }
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
            Ok(ch) => {
                let unledgered = fixture.map(|_| ns.as_str());
                failures.extend(verify::verify(ch.clone(), &ledger, unledgered).await);
                if let Some(f) = fixture {
                    failures.extend(
                        tasks::collect_and_check(
                            ch,
                            daemon.dir.path(),
                            &daemon.root(),
                            &daemon.socket,
                            &ns,
                            &f.chain_id,
                            &ledger,
                        )
                        .await,
                    );
                }
            }
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

/// A `--kill-shims` trial: the ctr client runs; after the delay random shims of the daemon are
/// SIGKILLed for a while; then the daemon must still serve (a fresh `ctr run --rm` works), keep
/// every acknowledged effect, and clean up after the killed tasks without leaks.
#[allow(clippy::too_many_arguments)]
async fn shim_trial(
    daemon: &mut Daemon,
    ledger: &Arc<ledger::Ledger>,
    mut rng: Rng,
    kill_at: KillAt,
    clients: Vec<tokio::task::JoinHandle<Vec<String>>>,
    killed: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    fixture: Option<&tasks::Fixture>,
) -> TrialOutcome {
    use std::sync::atomic::Ordering;
    let mut failures = vec![];
    let (KillAt::Delay(d) | KillAt::MidCommit(d)) = kill_at;
    // Give the import (and the first runs) time: shims exist only once tasks do.
    tokio::time::sleep(d + Duration::from_millis(500)).await;
    let mut kills = 0;
    let window = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < window {
        killed.store(true, Ordering::SeqCst);
        if tasks::kill_a_shim(daemon.dir.path(), &mut rng).is_some() {
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(50, 300))).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        match tokio::time::timeout(Duration::from_secs(60), c).await {
            Ok(Ok(errs)) => failures.extend(errs),
            Ok(Err(e)) => failures.push(format!("client panicked: {e}")),
            Err(_) => failures.push("the ctr client did not stop within 60 s".into()),
        }
    }
    let ns = tasks::namespace();
    // The daemon serves on: a new container runs.
    let out = tokio::process::Command::new("ctr")
        .arg("-a")
        .arg(&daemon.socket)
        .args([
            "-n",
            &ns,
            "run",
            "--rm",
            tasks::IMAGE,
            "after-kills",
            "true",
        ])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => failures.push(format!(
            "after {kills} shim kills, ctr run fails: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => failures.push(format!("run ctr: {e}")),
    }
    match berth::connect(&daemon.socket).await {
        Ok(ch) => {
            failures.extend(verify::verify(ch.clone(), ledger, Some(&ns)).await);
            if let Some(f) = fixture {
                failures.extend(
                    tasks::collect_and_check(
                        ch,
                        daemon.dir.path(),
                        &daemon.root(),
                        &daemon.socket,
                        &ns,
                        &f.chain_id,
                        ledger,
                    )
                    .await,
                );
            }
        }
        Err(e) => failures.push(format!("connect after the shim kills: {e}")),
    }
    let (acked, unsure) = ledger.counts();
    if kills == 0 {
        println!("    (no shim was alive to kill in this trial)");
    }
    TrialOutcome {
        acked,
        unsure,
        failures,
    }
}
