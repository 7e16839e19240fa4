//! What the clients were told: for every key, the state its last acknowledged call left it in, and
//! the state its last unanswered call (if any) would leave it in. After the restart a key must be
//! in one of the two.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// A key of the ledger: the kind of object, its namespace and its name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Namespace(String),
    Container(String, String),
    Blob(String, String),
    Lease(String, String),
    Snapshot(String, String),
    Image(String, String),
}

/// What a key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Gone,
    Namespace {
        labels: BTreeMap<String, String>,
    },
    Container {
        labels: BTreeMap<String, String>,
    },
    Blob {
        size: i64,
    },
    Lease,
    Snapshot {
        committed: bool,
        parent: String,
    },
    Image {
        target: String,
    },
    /// A container whatever its labels: the state of one whose `ctr run --rm` got no answer
    /// (ctr writes the labels).
    AnyContainer,
}

#[derive(Default, Clone, Debug)]
pub struct Entry {
    /// The state the last acknowledged call left (Gone when none was).
    pub acked: Option<State>,
    /// The state a call without an answer would have left.
    pub pending: Option<State>,
}

impl Entry {
    pub fn acked(&self) -> State {
        self.acked.clone().unwrap_or(State::Gone)
    }
    /// Whether `seen` is a state the key may be in after the crash.
    pub fn allows(&self, seen: &State) -> bool {
        *seen == self.acked()
            || self.pending.as_ref() == Some(seen)
            || (self.pending == Some(State::AnyContainer)
                && matches!(seen, State::Container { .. }))
    }
}

#[derive(Default)]
pub struct Ledger {
    entries: Mutex<HashMap<Key, Entry>>,
    acks: Mutex<usize>,
}

impl Ledger {
    /// A call is about to be sent that would leave `key` in `state`.
    pub fn begin(&self, key: &Key, state: State) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.entry(key.clone()).or_default().pending = Some(state);
    }

    /// The call was acknowledged.
    pub fn ack(&self, key: &Key) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = e.entry(key.clone()).or_default();
        if let Some(s) = entry.pending.take() {
            entry.acked = Some(s);
        }
        *self.acks.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    /// The call failed with an answer from a live daemon: nothing changed.
    pub fn refused(&self, key: &Key) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = e.get_mut(key) {
            entry.pending = None;
        }
    }

    pub fn snapshot(&self) -> Vec<(Key, Entry)> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = e.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Acknowledged calls, and keys left with an unanswered call.
    pub fn counts(&self) -> (usize, usize) {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let unsure = e.values().filter(|v| v.pending.is_some()).count();
        (*self.acks.lock().unwrap_or_else(|p| p.into_inner()), unsure)
    }
}
