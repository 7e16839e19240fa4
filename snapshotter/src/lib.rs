//! berth-snapshotter: copy-on-write filesystem snapshots for container root filesystems.
//!
//! This crate knows nothing of gRPC or of the metadata store. The overlayfs and native
//! implementations and their conformance suite arrive with the snapshots issue; what is here is the
//! vocabulary they share with berthd.

use std::collections::HashMap;
use std::time::SystemTime;

/// containerd's snapshot kinds; the numbers are the wire values of `containerd.snapshots.v1.Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A read-only view of a committed snapshot.
    View = 1,
    /// A writable snapshot being prepared (a container's rootfs, or a layer being unpacked).
    Active = 2,
    /// An immutable snapshot that can be a parent.
    Committed = 3,
}

impl Kind {
    pub fn from_wire(v: i32) -> Option<Kind> {
        match v {
            1 => Some(Kind::View),
            2 => Some(Kind::Active),
            3 => Some(Kind::Committed),
            _ => None,
        }
    }
}

/// What a snapshotter knows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The key of an active or view snapshot, or the name of a committed one.
    pub name: String,
    /// The committed snapshot this one is based on; empty for a base layer.
    pub parent: String,
    pub kind: Kind,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Disk usage of one snapshot (its own layer, not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_wire_values() {
        for k in [Kind::View, Kind::Active, Kind::Committed] {
            assert_eq!(Kind::from_wire(k as i32), Some(k));
        }
        assert_eq!(Kind::from_wire(0), None);
        assert_eq!(Kind::from_wire(4), None);
    }
}
