//! The /etc/hosts and /etc/resolv.conf a container gets. hosts: docker's fixed lines, the
//! container's own addresses with its hostname and aliases, then every other container on a
//! network it shares (so containers reach each other by name). resolv.conf: the host's, minus
//! loopback nameservers (unreachable from the container's netns); when none is left, docker's
//! fallback of Google's public resolvers. DNS settings from the caller (the CRI's DNSConfig)
//! replace the host's.

use std::net::IpAddr;

/// One container's entries: its addresses and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub ip: IpAddr,
    pub names: Vec<String>,
}

const HEADER: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

pub fn hosts_file(own: &[HostEntry], peers: &[HostEntry]) -> String {
    let mut out = String::from(HEADER);
    for e in own.iter().chain(peers) {
        if e.names.is_empty() {
            continue;
        }
        out.push_str(&format!("{}\t{}\n", e.ip, e.names.join(" ")));
    }
    out
}

/// DNS settings that replace the host's (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsConfig {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub searches: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Docker's fallback when the host has only loopback resolvers.
const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// The host's resolv.conf: systemd-resolved's upstream list when the stub (127.0.0.53) is what
/// /etc/resolv.conf names, as docker does.
pub fn host_resolv_conf() -> String {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if etc.contains("127.0.0.53") {
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    etc
}

pub fn resolv_conf(host: &str, dns: Option<&DnsConfig>) -> String {
    let mut nameservers = Vec::new();
    let mut search: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut other = Vec::new();
    for line in host.lines() {
        let trimmed = line.trim();
        let mut words = trimmed.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next() {
                    let loopback = ip
                        .split('%')
                        .next()
                        .and_then(|ip| ip.parse::<IpAddr>().ok())
                        .is_some_and(|ip| ip.is_loopback());
                    if !loopback {
                        nameservers.push(ip.to_string());
                    }
                }
            }
            Some("search") | Some("domain") => search = words.map(str::to_string).collect(),
            Some("options") => options.extend(words.map(str::to_string)),
            Some(w) if !w.starts_with('#') && !w.starts_with(';') => {
                other.push(trimmed.to_string())
            }
            _ => {}
        }
    }
    if let Some(dns) = dns {
        if !dns.servers.is_empty() {
            nameservers = dns.servers.clone();
        }
        if !dns.searches.is_empty() {
            search = dns.searches.clone();
        }
        if !dns.options.is_empty() {
            options = dns.options.clone();
        }
    }
    if nameservers.is_empty() {
        nameservers = FALLBACK_NAMESERVERS.iter().map(|s| s.to_string()).collect();
    }
    let mut out = String::new();
    for ns in &nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    for line in other {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_dropped() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.53\nsearch example.org\noptions edns0\n";
        assert_eq!(
            resolv_conf(host, None),
            "nameserver 192.0.2.53\nsearch example.org\noptions edns0\n"
        );
    }

    #[test]
    fn only_loopback_falls_back_to_public_resolvers() {
        let out = resolv_conf("nameserver 127.0.0.1\n", None);
        assert_eq!(out, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }

    #[test]
    fn caller_dns_replaces_the_hosts() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf("nameserver 192.0.2.53\nsearch x\n", Some(&dns)),
            "nameserver 10.96.0.10\nsearch svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_lists_own_names_then_peers() {
        let own = [HostEntry {
            ip: "10.4.0.2".parse().unwrap(),
            names: vec!["web".into()],
        }];
        let peers = [HostEntry {
            ip: "10.4.0.3".parse().unwrap(),
            names: vec!["db".into(), "db.local".into()],
        }];
        let text = hosts_file(&own, &peers);
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("10.4.0.2\tweb\n10.4.0.3\tdb db.local\n"));
    }
}
