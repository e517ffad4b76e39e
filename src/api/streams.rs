//! Caps on the responses that hold a blocking thread while the client reads them (a batch's
//! whole log, streamed from its file): a client that stops reading keeps its thread until the
//! request timeout, so without a cap one user opening many such streams would take tokio's
//! blocking pool — and with it every file read of everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Streams one user may read at once.
pub const MAX_PER_USER: usize = 4;

/// Streams the gateway serves at once (of tokio's 512 blocking threads).
pub const MAX_TOTAL: usize = 32;

/// Open streams, in all and per user.
#[derive(Debug, Default)]
pub struct LogStreams(Mutex<(usize, HashMap<String, usize>)>);

/// One open stream; dropping it (when the reader is done) frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<LogStreams>,
    user: String,
}

impl LogStreams {
    /// A slot for `user`, unless they or the gateway already have as many as allowed.
    pub fn enter(self: &Arc<Self>, user: &str) -> Option<StreamSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.1.get(user).copied().unwrap_or(0);
        if open.0 >= MAX_TOTAL || mine >= MAX_PER_USER {
            return None;
        }
        open.0 += 1;
        open.1.insert(user.to_string(), mine + 1);
        Some(StreamSlot { streams: self.clone(), user: user.to_string() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.0.lock().unwrap_or_else(PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(mine) = open.1.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                open.1.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_user_and_in_all() {
        let streams = Arc::new(LogStreams::default());
        let bobs: Vec<_> = (0..MAX_PER_USER).map(|_| streams.enter("bob").unwrap()).collect();
        assert!(streams.enter("bob").is_none(), "bob has his share");
        let alice = streams.enter("alice").expect("alice is not affected");
        drop(bobs);
        assert!(streams.enter("bob").is_some(), "slots come back");
        drop(alice);
        let many: Vec<_> = (0..MAX_TOTAL).map(|i| streams.enter(&format!("u{i}")).unwrap()).collect();
        assert!(streams.enter("carol").is_none(), "the gateway has its total");
        drop(many);
        assert!(streams.0.lock().unwrap().1.is_empty());
    }
}
