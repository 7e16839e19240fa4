//! User-namespace id maps, in the form containerd's snapshot labels, the mount options and the
//! daemon's `[userns]` exports carry them (`container:host:length[,…]`): shared by the
//! snapshotter (idmapped layers), berthd (the remap config) and the client (remapped containers).

use berth_errdefs::{Error, Result};

/// containerd's snapshot label: the uid mapping (`container:host:length`, comma-separated ranges)
/// the snapshot's lowers are shown with.
pub const UIDMAP_LABEL: &str = "containerd.io/snapshot/uidmapping";
/// The gid counterpart of [`UIDMAP_LABEL`].
pub const GIDMAP_LABEL: &str = "containerd.io/snapshot/gidmapping";

/// One range of a user namespace's id map: container ids `container..container+length` are host
/// ids `host..host+length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub length: u32,
}

impl IdRange {
    /// The range, when it is not empty and ends within u32 on both sides (what the kernel
    /// takes in a uid_map or gid_map line).
    pub fn new(container: u32, host: u32, length: u32) -> Option<IdRange> {
        (length > 0
            && container.checked_add(length).is_some()
            && host.checked_add(length).is_some())
        .then_some(IdRange {
            container,
            host,
            length,
        })
    }
}

/// An id map: one or more [`IdRange`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap(pub Vec<IdRange>);

impl IdMap {
    /// Parses `container:host:length[,…]`, the labels' and the mount options' form.
    pub fn parse(s: &str) -> Result<IdMap> {
        let bad = || {
            Error::invalid(format!(
                "invalid id mapping {s:?} (want container:host:length)"
            ))
        };
        let ranges = s
            .split(',')
            .map(|r| {
                let mut it = r.split(':').map(|n| n.trim().parse::<u32>());
                match (it.next(), it.next(), it.next(), it.next()) {
                    (Some(Ok(container)), Some(Ok(host)), Some(Ok(length)), None) => {
                        IdRange::new(container, host, length).ok_or_else(bad)
                    }
                    _ => Err(bad()),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(IdMap(ranges))
    }

    /// The host id of container id `id`, if the map holds it.
    pub fn host_id(&self, id: u32) -> Option<u32> {
        self.0.iter().find_map(|r| {
            id.checked_sub(r.container)
                .filter(|off| *off < r.length)
                .map(|off| r.host + off)
        })
    }

    /// The container id of host id `id`, if the map holds it.
    pub fn container_id(&self, id: u32) -> Option<u32> {
        self.0.iter().find_map(|r| {
            id.checked_sub(r.host)
                .filter(|off| *off < r.length)
                .map(|off| r.container + off)
        })
    }

    /// The `/proc/PID/uid_map` form.
    pub fn proc_form(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("{} {} {}\n", r.container, r.host, r.length))
            .collect()
    }
}

/// The uid and gid maps an OCI runtime spec gives its user namespace (`linux.uidMappings` and
/// `gidMappings`, entries `{containerID, hostID, size}`); `None` unless both are there and not
/// empty, an error for an entry that is not a valid range.
pub fn spec_maps(spec: &serde_json::Value) -> Result<Option<(IdMap, IdMap)>> {
    let map = |key: &str| -> Result<Option<IdMap>> {
        let Some(entries) = spec
            .pointer(&format!("/linux/{key}"))
            .and_then(serde_json::Value::as_array)
            .filter(|a| !a.is_empty())
        else {
            return Ok(None);
        };
        let ranges = entries
            .iter()
            .map(|e| {
                let field = |k: &str| e[k].as_u64().and_then(|v| u32::try_from(v).ok());
                match (field("containerID"), field("hostID"), field("size")) {
                    (Some(c), Some(h), Some(n)) => IdRange::new(c, h, n),
                    _ => None,
                }
                .ok_or_else(|| Error::invalid(format!("invalid {key} entry {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(IdMap(ranges)))
    };
    Ok(match (map("uidMappings")?, map("gidMappings")?) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => None,
    })
}

impl std::fmt::Display for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("{}:{}:{}", r.container, r.host, r.length))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse_and_translate() {
        let m = IdMap::parse("0:100000:65536").expect("parses");
        assert_eq!(m.host_id(0), Some(100000));
        assert_eq!(m.host_id(65535), Some(165535));
        assert_eq!(m.host_id(65536), None);
        assert_eq!(m.container_id(100001), Some(1));
        assert_eq!(m.to_string(), "0:100000:65536");
        let two = IdMap::parse("0:1000:1,1:100000:100").expect("parses");
        assert_eq!(two.host_id(1), Some(100000));
        assert_eq!(two.proc_form(), "0 1000 1\n1 100000 100\n");
        for bad in ["", "0:1", "0:1:0", "a:b:c", "0:1:2:3", "4294967295:0:2"] {
            assert!(IdMap::parse(bad).is_err(), "{bad:?} must not parse");
        }
    }
}
