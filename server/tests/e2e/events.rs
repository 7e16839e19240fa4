//! A running `ctr events` and its parsed lines, for the tests that watch what berthd publishes.

use crate::harness::Daemon;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long an expected event may take to show up.
const PATIENCE: Duration = Duration::from_secs(15);

/// One line of `ctr events`: `DATE TIME ZONE-OFFSET ZONE NAMESPACE TOPIC JSON`.
#[derive(Debug, Clone)]
pub struct EventLine {
    pub namespace: String,
    pub topic: String,
    pub body: serde_json::Value,
    pub line: String,
}

impl EventLine {
    pub fn parse(line: &str) -> EventLine {
        // e.g. `2024-01-01 10:00:00.123 +0000 UTC ns /namespaces/create {"name":"x"}`
        let mut parts = line.splitn(7, ' ');
        let namespace = parts.nth(4).unwrap_or_default().to_string();
        let topic = parts.next().unwrap_or_default().to_string();
        let body = parts
            .next()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(serde_json::Value::Null);
        EventLine {
            namespace,
            topic,
            body,
            line: line.to_string(),
        }
    }

    /// A task event of `container` under `topic` in namespace `ns`.
    pub fn is(&self, ns: &str, topic: &str, container: &str) -> bool {
        self.namespace == ns && self.topic == topic && self.body["container_id"] == container
    }
}

/// A running `ctr events`, subscribed; killed on drop.
pub struct Events {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, in arrival order (the subscription check's excepted).
    pub seen: Vec<EventLine>,
}

impl Events {
    /// Start `ctr events` (the daemon's ctr) and return once it is subscribed: subscription is asynchronous, so
    /// namespaces are created until one of them is seen.
    pub fn start(d: &Daemon) -> Events {
        let mut child = d
            .ctr_command("default", &["events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ctr events");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ev = Events {
            child,
            lines,
            seen: vec![],
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 1.. {
            let name = format!("events-sync-{i}");
            d.ctr("default", &["namespaces", "create", &name]);
            let wait_until = Instant::now() + Duration::from_millis(300);
            while let Ok(line) = ev
                .lines
                .recv_timeout(wait_until.saturating_duration_since(Instant::now()))
            {
                if EventLine::parse(&line).topic == "/namespaces/create" {
                    return ev;
                }
            }
            assert!(
                Instant::now() < deadline,
                "ctr events did not subscribe within 10s"
            );
        }
        unreachable!("the loop returns or panics")
    }

    /// Wait until an event satisfies `pred`; returns its index in `seen` (arrival order).
    pub fn expect(&mut self, what: &str, pred: impl Fn(&EventLine) -> bool) -> usize {
        if let Some(i) = self.seen.iter().position(&pred) {
            return i;
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(EventLine::parse(&line));
                    if pred(self.seen.last().expect("just pushed")) {
                        return self.seen.len() - 1;
                    }
                }
                Err(_) => panic!(
                    "no event {what} within {PATIENCE:?}; ctr events printed:\n{}",
                    self.seen
                        .iter()
                        .map(|e| e.line.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// As `expect`, returning the event itself.
    pub fn expect_event(&mut self, what: &str, pred: impl Fn(&EventLine) -> bool) -> &EventLine {
        let i = self.expect(what, pred);
        &self.seen[i]
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
