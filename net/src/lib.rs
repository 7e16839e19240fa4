//! berth's container networking, shared by berthd's task path and the CRI: CNI plugins run as
//! the CNI spec says (`plugin`), named networks stored as config lists (`networks`), named
//! network namespaces (`netns`), the host's per-network iptables rules (`host_rules`), and
//! attachments of containers to networks (`attach`), each
//! recorded before anything is done for it so that a restarted daemon can undo the attachments
//! of containers that died while it was down. Also the /etc/hosts and /etc/resolv.conf each
//! attached container gets (`hosts`).
//!
//! Everything here is synchronous and blocking (plugins are processes, netns work is system
//! calls): async callers run it off their executor's workers. No gRPC, no berthd types; errors
//! convert into berth-errdefs.

pub mod attach;
pub mod cidr;
pub mod conflist;
pub mod error;
pub mod host_rules;
pub mod hosts;
pub mod netns;
pub mod netns_pool;
pub mod networks;
pub mod plugin;
pub mod result;

pub use attach::{
    AttachOptions, Attachment, AttachmentKey, CleanupReport, Net, NetConfig, NetworkAttachment,
    PortMapping, UsernsMaps,
};
pub use cidr::Subnet;
pub use error::{Error, Result};
pub use hosts::DnsConfig;
pub use networks::{CreateOptions, DefaultNetwork, Network};
pub use result::CniResult;

/// The spec version of the configs berth writes: the newest Debian's plugins (1.1) speak.
pub const CNI_VERSION: &str = "1.0.0";
