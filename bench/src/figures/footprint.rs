//! Footprint figures (issue 5, item 5), the parts without running containers: daemon RSS and PSS
//! idle after start and after the load of the other groups, start-to-ready on a fresh root, and
//! restart-to-ready after kill -9 with whatever the store holds by then. The figures with 100
//! running containers (daemon and shim memory, restart-to-ready) are the tasks group's
//! (`tasks.rs`), which starts the containers.

use super::{slot, Better, Figure, Samples};
use crate::daemon::{order, Kind, Lab};
use crate::{Opts, Result};
use std::time::Duration;

const G: &str = "footprint";

/// (VmRSS, Pss) of a process in MiB, from /proc/PID/status and /proc/PID/smaps_rollup.
pub fn memory(pid: u32) -> Result<(f64, f64)> {
    let field = |file: &str, key: &str| -> Result<f64> {
        let path = format!("/proc/{pid}/{file}");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .ok_or_else(|| format!("no {key} in {path}"))
    };
    Ok((field("status", "VmRSS:")?, field("smaps_rollup", "Pss:")?))
}

/// Five readings 100 ms apart per daemon, after `settle`.
async fn memory_figures(lab: &Lab, when: &str, id: &str, settle: Duration) -> Result<Vec<Figure>> {
    tokio::time::sleep(settle).await;
    let (mut rss, mut pss) = (Samples::default(), Samples::default());
    for round in 0..5 {
        let (mut r, mut p): ([Vec<f64>; 2], [Vec<f64>; 2]) = Default::default();
        for kind in order(round) {
            let pid = lab
                .daemon(kind)
                .pid()
                .ok_or_else(|| format!("{} is not running", kind.name()))?;
            let (a, b) = memory(pid)?;
            r[slot(kind)].push(a);
            p[slot(kind)].push(b);
        }
        rss.round_by_kind(&r);
        pss.round_by_kind(&p);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(vec![
        Figure::new(
            G,
            format!("rss.{id}"),
            format!("daemon RSS, {when}"),
            "MiB",
            Better::Lower,
        )
        .with(rss.outcome()),
        Figure::new(
            G,
            format!("pss.{id}"),
            format!("daemon PSS, {when}"),
            "MiB",
            Better::Lower,
        )
        .with(pss.outcome()),
    ])
}

/// Right after the lab started: start-to-ready and idle memory.
pub async fn at_start(lab: &Lab) -> Result<Vec<Figure>> {
    let mut ready = Samples::default();
    ready.round(
        &[lab.daemon(Kind::Berth).ready_after.as_secs_f64() * 1e3],
        &[lab.daemon(Kind::Containerd).ready_after.as_secs_f64() * 1e3],
    );
    let mut figs = vec![Figure::new(
        G,
        "start_to_ready.fresh",
        "start-to-ready, fresh root (spawn to first Version answer)",
        "ms",
        Better::Lower,
    )
    .with(ready.outcome())
    .note("one start per daemon")];
    figs.extend(memory_figures(lab, "idle after start", "idle", Duration::from_secs(2)).await?);
    Ok(figs)
}

/// After the other groups: memory with their data loaded, then restart-to-ready after kill -9.
pub async fn after_load(
    lab: &mut Lab,
    opts: &Opts,
    stored: usize,
    content_ran: bool,
) -> Result<Vec<Figure>> {
    let runs = match (stored > 0, content_ran) {
        (true, true) => "metadata and content runs",
        (true, false) => "metadata runs",
        (false, true) => "content runs",
        (false, false) => "start (nothing ran)",
    };
    let when = if stored > 0 {
        format!(
            "idle after the {runs} ({} containers stored)",
            super::metadata::thousands(stored)
        )
    } else {
        format!("idle after the {runs}")
    };
    let mut figs = memory_figures(lab, &when, "after_load", Duration::from_secs(2)).await?;
    let reps = if opts.quick { 1 } else { 4 };
    let mut restart = Samples::default();
    for rep in 0..reps {
        let mut per: [Vec<f64>; 2] = Default::default();
        for kind in order(rep) {
            let d = lab.daemon_mut(kind);
            d.kill9();
            let t = d.start().await?;
            per[slot(kind)].push(t.as_secs_f64() * 1e3);
        }
        restart.round_by_kind(&per);
    }
    eprintln!("[footprint] restart-to-ready after kill -9: {reps} reps");
    figs.push(
        Figure::new(
            G,
            "restart_to_ready.kill9",
            format!(
                "restart-to-ready after kill -9 ({} containers stored, no tasks)",
                super::metadata::thousands(stored)
            ),
            "ms",
            Better::Lower,
        )
        .with(restart.outcome()),
    );
    Ok(figs)
}
