//! Single-use tokens that stand for one streaming request until a client redeems them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::{AttachRequest, ExecRequest, PortForwardRequest, StreamError};

#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

pub(crate) struct TokenCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        TokenCache {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn insert(&self, req: Pending) -> Result<String, StreamError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)
            .map_err(|e| StreamError::Internal(format!("random token: {e}")))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries only count against the bound until someone needs the room.
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, deadline)| *deadline > now);
        }
        if entries.len() >= self.capacity {
            return Err(StreamError::ResourceExhausted);
        }
        entries.insert(token.clone(), (req, now + self.ttl));
        Ok(token)
    }

    /// Removes the token whatever happens next, so a URL works at most once.
    pub(crate) fn consume(&self, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (req, deadline) = entries.remove(token)?;
        (deadline > Instant::now()).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
        })
    }

    #[test]
    fn single_use_bounded_and_expiring() {
        let cache = TokenCache::new(Duration::from_millis(50), 2);
        let a = cache.insert(pf()).unwrap();
        let b = cache.insert(pf()).unwrap();
        assert_ne!(a, b);
        assert!(matches!(
            cache.insert(pf()),
            Err(StreamError::ResourceExhausted)
        ));
        assert!(cache.consume(&a).is_some());
        assert!(cache.consume(&a).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.consume(&b).is_none());
        cache.insert(pf()).unwrap();
        cache.insert(pf()).unwrap();
    }
}
