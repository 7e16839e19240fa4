//! The host's iptables rules for berth's own bridge networks, one set per network rather than
//! per container, as docker keeps them: outbound masquerade, forwarding to and from the bridge,
//! and isolation from the other networks. The bridge plugin's `ipMasq` and the firewall plugin
//! do the same with a chain and rules per container, about 35 `iptables` processes per
//! `run --rm`; a network's rules are instead ensured once per berthd process (at its first
//! attachment) and removed with the network.
//!
//! The rules live in berth's own chains, jumped to from the top of FORWARD and POSTROUTING:
//!
//! ```text
//! nat     BERTH-POSTROUTING   -s SUBNET ! -o BRIDGE -j MASQUERADE
//! filter  BERTH-ISOLATION-1   -i BRIDGE ! -o BRIDGE -j BERTH-ISOLATION-2
//! filter  BERTH-ISOLATION-2   -o BRIDGE -j DROP
//! filter  BERTH-FORWARD       -o BRIDGE -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//!                             -o BRIDGE -m conntrack --ctstate DNAT -j ACCEPT   (published ports)
//!                             -i BRIDGE -j ACCEPT
//! ```
//!
//! Traffic from one berth network to another passes stage 1 (it leaves its own bridge) and is
//! dropped by stage 2 (it enters another's); FORWARD's isolation jump comes before the accepting
//! one. Rules are found by the bridge they name, so several daemons on one host (each with its
//! own networks) share the chains and never touch each other's rules.

use std::fs::OpenOptions;
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};

use crate::cidr::Subnet;
use crate::error::{Error, Result};

const NAT_CHAIN: &str = "BERTH-POSTROUTING";
const ISOLATION_1: &str = "BERTH-ISOLATION-1";
const ISOLATION_2: &str = "BERTH-ISOLATION-2";
const FORWARD_CHAIN: &str = "BERTH-FORWARD";

/// The firewall plugin's chains, which networks berth created before it kept its own rules
/// still have rules in (its `same-bridge` policy never removes them).
const LEGACY_FILTER_CHAINS: [&str; 2] = ["CNI-ISOLATION-STAGE-1", "CNI-ISOLATION-STAGE-2"];

/// Serialises rule changes between berth daemons on one host: a check and an insert of the
/// same jump by two of them would otherwise leave it twice.
const HOST_LOCK: &str = "/run/berth-host-rules.lock";

fn host_lock() -> Result<Flock<std::fs::File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(HOST_LOCK)
        .map_err(|e| Error::io(format!("open {HOST_LOCK}"), e))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::sys(format!("lock {HOST_LOCK}"), e))
}

fn iptables(table: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .args(["-w", "-t", table])
        .args(args)
        .output()
        .map_err(|e| Error::io("run iptables (install iptables)", e))
}

fn must(table: &str, args: &[&str]) -> Result<()> {
    let out = iptables(table, args)?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "iptables -t {table} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// `iptables -C`: whether the rule is there.
fn present(table: &str, chain: &str, rule: &[&str]) -> Result<bool> {
    let mut args = vec!["-C", chain];
    args.extend_from_slice(rule);
    Ok(iptables(table, &args)?.status.success())
}

fn ensure_chain(table: &str, chain: &str) -> Result<()> {
    if iptables(table, &["-n", "-L", chain])?.status.success() {
        return Ok(());
    }
    must(table, &["-N", chain])
}

/// Jumps from the top of `builtin` to `chains`, in this order, unless all are there already.
fn ensure_jumps(table: &str, builtin: &str, chains: &[&str]) -> Result<()> {
    let mut all = true;
    for chain in chains {
        all &= present(table, builtin, &["-j", chain])?;
    }
    if all {
        return Ok(());
    }
    for chain in chains {
        while present(table, builtin, &["-j", chain])? {
            must(table, &["-D", builtin, "-j", chain])?;
        }
    }
    for chain in chains.iter().rev() {
        must(table, &["-I", builtin, "1", "-j", chain])?;
    }
    Ok(())
}

fn ensure_rule(table: &str, chain: &str, rule: &[&str]) -> Result<()> {
    if present(table, chain, rule)? {
        return Ok(());
    }
    let mut args = vec!["-A", chain];
    args.extend_from_slice(rule);
    must(table, &args)
}

/// Puts the rules of the network on `bridge` (addresses from `subnets`) in place; what is
/// there already is left as it is.
pub fn ensure(bridge: &str, subnets: &[Subnet]) -> Result<()> {
    let _lock = host_lock()?;
    ensure_chain("nat", NAT_CHAIN)?;
    ensure_jumps("nat", "POSTROUTING", &[NAT_CHAIN])?;
    for subnet in subnets {
        let subnet = subnet.to_string();
        ensure_rule(
            "nat",
            NAT_CHAIN,
            &["-s", &subnet, "!", "-o", bridge, "-j", "MASQUERADE"],
        )?;
    }
    for chain in [ISOLATION_1, ISOLATION_2, FORWARD_CHAIN] {
        ensure_chain("filter", chain)?;
    }
    ensure_jumps("filter", "FORWARD", &[ISOLATION_1, FORWARD_CHAIN])?;
    let filter: [(&str, &[&str]); 5] = [
        (
            ISOLATION_1,
            &["-i", bridge, "!", "-o", bridge, "-j", ISOLATION_2],
        ),
        (ISOLATION_2, &["-o", bridge, "-j", "DROP"]),
        (
            FORWARD_CHAIN,
            &[
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        ),
        (
            FORWARD_CHAIN,
            &[
                "-o",
                bridge,
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "ACCEPT",
            ],
        ),
        (FORWARD_CHAIN, &["-i", bridge, "-j", "ACCEPT"]),
    ];
    for (chain, rule) in filter {
        ensure_rule("filter", chain, rule)?;
    }
    Ok(())
}

/// Removes every rule naming `bridge` (as `-i` or `-o`) from berth's chains and from the
/// firewall plugin's isolation chains; chains that do not exist are skipped.
pub fn remove(bridge: &str) -> Result<()> {
    let _lock = host_lock()?;
    let chains = [
        ("nat", NAT_CHAIN),
        ("filter", ISOLATION_1),
        ("filter", ISOLATION_2),
        ("filter", FORWARD_CHAIN),
        ("filter", LEGACY_FILTER_CHAINS[0]),
        ("filter", LEGACY_FILTER_CHAINS[1]),
    ];
    for (table, chain) in chains {
        let out = iptables(table, &["-S", chain])?;
        if !out.status.success() {
            continue; // no such chain: nothing of this bridge can be in it
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let words = split_rule(line);
            let names_bridge = words
                .windows(2)
                .any(|w| matches!(w[0].as_str(), "-i" | "-o") && w[1] == bridge);
            if words.first().map(String::as_str) != Some("-A") || !names_bridge {
                continue;
            }
            let mut args = vec!["-D"];
            args.extend(words.iter().skip(1).map(String::as_str));
            must(table, &args)?;
        }
    }
    Ok(())
}

/// Splits an `iptables -S` line into arguments; `-S` double-quotes words with spaces.
pub(crate) fn split_rule(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_split_with_quotes() {
        let rule = r#"-A CNI-ISOLATION-STAGE-2 -o br-1 -m comment --comment "CNI firewall plugin rules" -j DROP"#;
        assert_eq!(
            split_rule(rule),
            vec![
                "-A",
                "CNI-ISOLATION-STAGE-2",
                "-o",
                "br-1",
                "-m",
                "comment",
                "--comment",
                "CNI firewall plugin rules",
                "-j",
                "DROP"
            ]
        );
    }
}
