//! Figures issue 5 asks for that cannot be measured yet, shown as "not yet measurable (needs …)" rows
//! so the table is complete. Each row names what it waits for; berthd is probed at run time, and a
//! row whose services berthd now answers says so (then the figure is due: implement it in its group's
//! module and drop it from here).

use super::{Better, Figure, Outcome};
use crate::daemon::Daemon;
use crate::Group;
use berth::api::services::diff::v1::diff_client::DiffClient;
use berth::api::services::diff::v1::ApplyRequest;
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::ListSnapshotsRequest;
use berth::with_namespace;

/// The berthd services later figures need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    Snapshots,
    Diff,
}

impl Cap {
    fn name(self) -> &'static str {
        match self {
            Cap::Snapshots => "snapshots",
            Cap::Diff => "diff",
        }
    }
}

/// Which of [`Cap`] berthd answers (anything but Unimplemented counts as served).
#[derive(Default, Debug)]
pub struct Caps(Vec<Cap>);

pub async fn probe(berthd: &Daemon) -> Caps {
    let Ok(ch) = berthd.connect().await else {
        return Caps::default();
    };
    let served = |r: Result<(), tonic::Status>| !matches!(r, Err(s) if s.code() == tonic::Code::Unimplemented);
    let mut caps = Vec::new();
    let snap = SnapshotsClient::new(ch.clone())
        .list(with_namespace(
            "bench",
            ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                filters: vec![],
            },
        ))
        .await
        .map(drop);
    if served(snap) {
        caps.push(Cap::Snapshots);
    }
    let diff = DiffClient::new(ch)
        .apply(with_namespace("bench", ApplyRequest::default()))
        .await
        .map(drop);
    if served(diff) {
        caps.push(Cap::Diff);
    }
    Caps(caps)
}

struct Pending {
    group: Group,
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    better: Better,
    /// berthd services it waits for.
    caps: &'static [Cap],
    /// Everything else it waits for (fixtures, client features).
    also: &'static str,
}

const PENDING: &[Pending] = &[Pending {
    group: Group::Images,
    id: "berth.pull",
    title: "berth pull (berthd) vs ctr images pull (containerd)",
    unit: "s",
    better: Better::Lower,
    caps: &[Cap::Snapshots, Cap::Diff],
    also: "berth's own pull",
}];

/// The not-yet-measurable rows of one group.
pub fn rows(group: Group, caps: &Caps) -> Vec<Figure> {
    PENDING
        .iter()
        .filter(|p| p.group == group)
        .map(|p| {
            let missing: Vec<&str> = p
                .caps
                .iter()
                .filter(|c| !caps.0.contains(c))
                .map(|c| c.name())
                .collect();
            let mut needs = Vec::new();
            if !missing.is_empty() {
                needs.push(format!("berthd {}", missing.join(" + ")));
            }
            if !p.also.is_empty() {
                needs.push(p.also.to_string());
            }
            if missing.is_empty() {
                needs.push("berthd now serves what it needs: the bench figure is due".into());
            }
            Figure::new(group.name(), p.id, p.title, p.unit, p.better).with(Outcome::NotYet {
                needs: needs.join("; "),
            })
        })
        .collect()
}
