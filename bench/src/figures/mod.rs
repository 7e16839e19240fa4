//! Figures: one row of the report each, measured on both daemons in the same run.
//!
//! Every measured figure keeps all samples of both daemons and one ratio berth/containerd per A/B
//! round (the two runs of a round are back to back, so slow drift cancels within a pair).

pub mod content;
pub mod footprint;
pub mod gc;
pub mod images;
pub mod load;
pub mod metadata;
pub mod pending;
pub mod pull;
pub mod tasks;

use crate::daemon::Kind;
use crate::stats::{median, summarize, Summary};
use berth::api::services::leases::v1::leases_client::LeasesClient;
use berth::api::services::leases::v1::CreateRequest as CreateLeaseRequest;
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::{Kind as SnapshotKind, ListSnapshotsRequest};
use serde::{Deserialize, Serialize};

/// Which direction is good for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Latencies, memory: ratio berth/containerd < 1 means berth is better.
    Lower,
    /// Rates: ratio berth/containerd > 1 means berth is better.
    Higher,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Measured {
        berth: Summary,
        containerd: Summary,
        /// One ratio berth/containerd per round (for rates and latencies alike: berth's value over
        /// containerd's; see `better`).
        ratio: Summary,
    },
    /// Needs a capability berthd does not have yet (or a fixture the bench does not build yet).
    NotYet {
        needs: String,
    },
    /// berthd did not serve what the figure needs (its first sample failed with `error`);
    /// the peer's samples stand alone.
    NotServed {
        error: String,
        containerd: Summary,
    },
    Skipped {
        why: String,
    },
    Failed {
        error: String,
    },
}

/// (Deserialize: `--merge` reads the figures of an earlier results.json back.)
#[derive(Debug, Serialize, Deserialize)]
pub struct Figure {
    pub group: String,
    pub id: String,
    pub title: String,
    pub unit: String,
    pub better: Better,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A target for the ratio berth/containerd set by an issue: at most this for `Better::Lower`
    /// figures, at least this for `Better::Higher` ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

impl Figure {
    pub fn new(
        group: &'static str,
        id: impl Into<String>,
        title: impl Into<String>,
        unit: &'static str,
        better: Better,
    ) -> Figure {
        Figure {
            group: group.to_string(),
            id: id.into(),
            title: title.into(),
            unit: unit.to_string(),
            better,
            outcome: Outcome::Skipped {
                why: "not run".into(),
            },
            note: None,
            target: None,
        }
    }

    pub fn target(mut self, ratio: f64) -> Figure {
        self.target = Some(ratio);
        self
    }

    /// "target <= 0.80x: met" / "target >= 2.00x: MISSED", for measured figures with a target.
    pub fn target_text(&self) -> Option<String> {
        let (t, r) = (self.target?, self.ratio()?);
        let (op, met) = match self.better {
            Better::Lower => ("<=", r <= t),
            Better::Higher => (">=", r >= t),
        };
        Some(format!(
            "target {op} {t:.2}: {}",
            if met { "met" } else { "MISSED" }
        ))
    }

    pub fn with(mut self, outcome: Outcome) -> Figure {
        self.outcome = outcome;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = Some(note.into());
        self
    }

    /// Whether this figure belongs to group `g` (failed whole-group rows are named e.g.
    /// "footprint (idle)").
    pub fn in_group(&self, g: &str) -> bool {
        self.group == g || self.group.starts_with(&format!("{g} "))
    }

    /// The headline ratio (median of the per-round ratios), if measured.
    pub fn ratio(&self) -> Option<f64> {
        match &self.outcome {
            Outcome::Measured { ratio, .. } if ratio.median.is_finite() => Some(ratio.median),
            _ => None,
        }
    }
}

/// Samples of both daemons for one figure, collected round by round.
#[derive(Default)]
pub struct Samples {
    berth: Vec<f64>,
    containerd: Vec<f64>,
    ratios: Vec<f64>,
}

impl Samples {
    /// One round: the samples each daemon produced in it; the round's ratio is of their medians.
    pub fn round(&mut self, berth: &[f64], containerd: &[f64]) {
        self.berth.extend_from_slice(berth);
        self.containerd.extend_from_slice(containerd);
        let (b, c) = (median(berth), median(containerd));
        if b.is_finite() && c.is_finite() && c != 0.0 {
            self.ratios.push(b / c);
        }
    }

    /// Convenience for figures that collect `[berth, containerd]` per round.
    pub fn round_by_kind(&mut self, per_kind: &[Vec<f64>; 2]) {
        self.round(&per_kind[0], &per_kind[1]);
    }

    pub fn outcome(&self) -> Outcome {
        Outcome::Measured {
            berth: summarize(&self.berth),
            containerd: summarize(&self.containerd),
            ratio: summarize(&self.ratios),
        }
    }
}

/// Maps a failed call of `kind`'s daemon to the bench's error text.
pub fn rpc_error(kind: Kind, what: &str) -> impl Fn(tonic::Status) -> String + '_ {
    move |s| format!("{}: {what}: {:?}: {}", kind.name(), s.code(), s.message())
}

/// Create lease `id` in `ns`.
pub async fn create_lease(
    ch: tonic::transport::Channel,
    kind: Kind,
    ns: &str,
    id: &str,
) -> crate::Result<()> {
    LeasesClient::new(ch)
        .create(berth::with_namespace(
            ns,
            CreateLeaseRequest {
                id: id.into(),
                labels: Default::default(),
            },
        ))
        .await
        .map_err(rpc_error(kind, "Leases.Create"))?;
    Ok(())
}

/// Index of a daemon in `[berth, containerd]` pairs.
pub fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Berth => 0,
        Kind::Containerd | Kind::Containerd2 => 1,
    }
}

/// Names of the overlayfs snapshots of `kind` in namespace `ns` (Snapshots.List, streamed).
pub async fn snapshot_names(
    ch: tonic::transport::Channel,
    ns: &str,
    kind: SnapshotKind,
) -> std::result::Result<Vec<String>, tonic::Status> {
    let mut stream = SnapshotsClient::new(ch)
        .list(berth::with_namespace(
            ns,
            ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                filters: vec![],
            },
        ))
        .await?
        .into_inner();
    let mut names = Vec::new();
    while let Some(m) = stream.message().await? {
        names.extend(
            m.info
                .into_iter()
                .filter(|i| i.kind == kind as i32)
                .map(|i| i.name),
        );
    }
    Ok(names)
}
