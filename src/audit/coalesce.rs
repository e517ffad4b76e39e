//! Counted summaries of repeated identical security events ([`super::AuditLog::record_coalesced`]):
//! within a window, the first event of a kind is written in full and the others are only
//! counted; one summary record with the count follows when the window ends, at a flush and at
//! shutdown. Without it, every failed driver handshake from a loop of TCP connects would cost a
//! record, and the loop would fill the disk.
//!
//! "Identical" is decided by [`RepeatKey`]: the event's action and decision, the source address
//! (an IPv6 peer by its /64, see [`AddrKey`]) and a *class* — a `&'static str` the caller picks
//! from its own fixed set (`bad_proof`, `tls`, …), never free text, so a peer cannot make every
//! event unique by varying what it sends. A different action, decision, address or class opens
//! its own window, so a burst from one address never hides another event. Only when
//! [`MAX_OPEN_WINDOWS`] windows are open at once (many addresses) do further addresses share
//! one window per action, decision and class.
//!
//! Time is passed in (`now`), so the logic is tested without sleeping.

// The writer is a plain thread outside any runtime, and repeat windows span its time and the
// recording threads' alike: one clock for both, std's (a test runtime may pause tokio's).
#![allow(clippy::disallowed_types)]

use super::{AuditEvent, Decision};
use crate::net::AddrKey;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;
use std::time::Instant;

/// Windows open at once before further source addresses share one window per kind.
pub(super) const MAX_OPEN_WINDOWS: usize = 1024;

/// What makes two events "the same" for counting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct RepeatKey {
    action: String,
    decision: Decision,
    /// `None` with `overflow` set: any address, once too many windows are open.
    source: Option<AddrKey>,
    class: &'static str,
    overflow: bool,
}

impl RepeatKey {
    pub(super) fn new(event: &AuditEvent, source: Option<IpAddr>, class: &'static str) -> Self {
        Self {
            action: event.action.clone(),
            decision: event.decision,
            source: source.map(AddrKey::of),
            class,
            overflow: false,
        }
    }

    fn overflowed(&self) -> Self {
        Self { source: None, overflow: true, ..self.clone() }
    }
}

#[derive(Debug)]
struct Window {
    /// When the window ends (its first event plus the window length).
    ends: Instant,
    /// Start of what `suppressed` counts (the window's start, or the last summary).
    since: Instant,
    suppressed: u64,
}

/// Whether [`Coalescer::offer`] wants the event written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The first of its kind in this window: write it in full.
    Write,
    /// Counted; a summary record will carry it.
    Counted,
}

/// The open windows. Lives behind a mutex shared by [`super::AuditLog`] (which offers events)
/// and the writer thread (which writes the summaries, so no summary can be lost to a full
/// queue).
#[derive(Debug)]
pub(super) struct Coalescer {
    window: Duration,
    open: HashMap<RepeatKey, Window>,
    /// Summaries waiting for the writer, oldest first.
    ready: Vec<AuditEvent>,
    /// The earliest `ends` of an open window with something counted (a hint: the writer
    /// sweeps then).
    next_due: Option<Instant>,
    /// The earliest `ends` of any open window: before then a sweep would find nothing.
    earliest_end: Option<Instant>,
}

impl Coalescer {
    pub(super) fn new(window: Duration) -> Self {
        Self { window, open: HashMap::new(), ready: Vec::new(), next_due: None, earliest_end: None }
    }

    /// Decides about one event of kind `key` at `now`.
    pub(super) fn offer(&mut self, key: RepeatKey, now: Instant) -> Verdict {
        let key = if self.open.contains_key(&key) || self.open.len() < MAX_OPEN_WINDOWS {
            key
        } else {
            // Ended windows may be what fills the table: clear them before giving up on telling
            // addresses apart (only when one has ended, so a full table of live windows costs
            // no scan per event).
            if self.earliest_end.is_some_and(|end| end <= now) {
                self.sweep(now);
            }
            if self.open.len() < MAX_OPEN_WINDOWS {
                key
            } else {
                key.overflowed()
            }
        };
        if let Some(window) = self.open.get_mut(&key) {
            if now < window.ends {
                window.suppressed += 1;
                let ends = window.ends;
                self.next_due = Some(self.next_due.map_or(ends, |due| due.min(ends)));
                return Verdict::Counted;
            }
            // The window is over: its count is written before this event opens a new one.
            if let Some(window) = self.open.remove(&key) {
                self.summarise(&key, &window, now);
            }
        }
        let ends = now + self.window;
        self.open.insert(key, Window { ends, since: now, suppressed: 0 });
        self.earliest_end = Some(self.earliest_end.map_or(ends, |end| end.min(ends)));
        Verdict::Write
    }

    /// Closes every window that ended by `now`, queueing summaries for those that counted
    /// something.
    pub(super) fn sweep(&mut self, now: Instant) {
        let ended: Vec<RepeatKey> = self.open.iter().filter(|(_, w)| w.ends <= now).map(|(k, _)| k.clone()).collect();
        for key in ended {
            if let Some(window) = self.open.remove(&key) {
                self.summarise(&key, &window, now);
            }
        }
        self.next_due = self.open.values().filter(|w| w.suppressed > 0).map(|w| w.ends).min();
        self.earliest_end = self.open.values().map(|w| w.ends).min();
    }

    /// Queues summaries for everything counted so far, windows ended or not (a flush, or
    /// shutdown). Open windows stay open and keep counting from zero.
    pub(super) fn summarise_all(&mut self, now: Instant) {
        self.sweep(now);
        let counted: Vec<RepeatKey> =
            self.open.iter().filter(|(_, w)| w.suppressed > 0).map(|(k, _)| k.clone()).collect();
        for key in counted {
            if let Some(window) = self.open.get_mut(&key) {
                self.ready.push(summary(&key, window, now));
                window.suppressed = 0;
                window.since = now;
            }
        }
        self.next_due = None;
    }

    /// Summaries waiting to be written, oldest first.
    pub(super) fn take_ready(&mut self) -> Vec<AuditEvent> {
        std::mem::take(&mut self.ready)
    }

    /// When the writer should next sweep, if anything is counted.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    fn summarise(&mut self, key: &RepeatKey, window: &Window, now: Instant) {
        if window.suppressed > 0 {
            self.ready.push(summary(key, window, now));
        }
    }
}

fn summary(key: &RepeatKey, window: &Window, now: Instant) -> AuditEvent {
    let n = window.suppressed;
    // The span the count covers: from the window's start (or the previous summary) to its end,
    // or to now when summarised early. Rounded up, so it is never reported shorter than it was.
    let end = now.min(window.ends);
    let secs = end.saturating_duration_since(window.since).as_millis().div_ceil(1000).max(1);
    let from = match (&key.source, key.overflow) {
        (Some(source), _) => format!(" from {source}"),
        (None, true) => " from addresses beyond the number tracked one by one".to_string(),
        (None, false) => String::new(),
    };
    let mut event = AuditEvent::security(key.action.clone(), key.decision).reason(format!(
        "{n} more {} event(s) of kind `{}`{from} within {secs}s, counted instead of written one by one \
         (an earlier one of the same kind was written in full)",
        key.action, key.class
    ));
    event.repeated = Some(n);
    if let Some(source) = &key.source {
        event.remote_addr = Some(source.to_string());
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(reason: &str) -> AuditEvent {
        AuditEvent::security("rpc_auth_failed", Decision::Deny).reason(reason)
    }

    fn key(addr: &str, class: &'static str) -> RepeatKey {
        RepeatKey::new(&failure("x"), Some(addr.parse().unwrap()), class)
    }

    #[test]
    fn repeats_in_a_window_are_counted_and_summarised_when_it_ends() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(60));
        assert_eq!(c.offer(key("192.0.2.1", "bad_proof"), t0), Verdict::Write);
        for i in 1..=99 {
            assert_eq!(c.offer(key("192.0.2.1", "bad_proof"), t0 + Duration::from_millis(i)), Verdict::Counted);
        }
        assert_eq!(c.next_due(), Some(t0 + Duration::from_secs(60)));
        c.sweep(t0 + Duration::from_secs(59));
        assert!(c.take_ready().is_empty(), "not before the window ends");
        c.sweep(t0 + Duration::from_secs(60));
        let ready = c.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].repeated, Some(99));
        assert_eq!(ready[0].remote_addr.as_deref(), Some("192.0.2.1"));
        assert!(ready[0].reason.as_deref().unwrap().contains("99 more rpc_auth_failed"), "{ready:?}");
        // After the window, the next one is written in full again.
        assert_eq!(c.offer(key("192.0.2.1", "bad_proof"), t0 + Duration::from_secs(61)), Verdict::Write);
        assert_eq!(c.next_due(), None, "nothing counted in the new window yet");
    }

    #[test]
    fn a_burst_from_one_address_hides_no_other_event() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(60));
        assert_eq!(c.offer(key("192.0.2.1", "bad_proof"), t0), Verdict::Write);
        assert_eq!(c.offer(key("192.0.2.1", "bad_proof"), t0), Verdict::Counted);
        // Another address, another class, another action, another decision: each in full.
        assert_eq!(c.offer(key("192.0.2.2", "bad_proof"), t0), Verdict::Write);
        assert_eq!(c.offer(key("192.0.2.1", "tls"), t0), Verdict::Write);
        let other = AuditEvent::security("rpc_connection_refused", Decision::Deny);
        assert_eq!(
            c.offer(RepeatKey::new(&other, Some("192.0.2.1".parse().unwrap()), "bad_proof"), t0),
            Verdict::Write
        );
        let allowed = AuditEvent::security("rpc_auth_failed", Decision::Info);
        assert_eq!(
            c.offer(RepeatKey::new(&allowed, Some("192.0.2.1".parse().unwrap()), "bad_proof"), t0),
            Verdict::Write
        );
        // The same IPv6 /64 is the same source.
        assert_eq!(c.offer(key("2001:db8:0:1::1", "tls"), t0), Verdict::Write);
        assert_eq!(c.offer(key("2001:db8:0:1::2", "tls"), t0), Verdict::Counted);
    }

    #[test]
    fn a_new_occurrence_after_the_window_writes_the_old_count_first() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(10));
        c.offer(key("192.0.2.1", "tls"), t0);
        c.offer(key("192.0.2.1", "tls"), t0 + Duration::from_secs(1));
        c.offer(key("192.0.2.1", "tls"), t0 + Duration::from_secs(2));
        // No sweep ran; the next occurrence closes the old window.
        assert_eq!(c.offer(key("192.0.2.1", "tls"), t0 + Duration::from_secs(30)), Verdict::Write);
        let ready = c.take_ready();
        assert_eq!(ready.iter().map(|e| e.repeated).collect::<Vec<_>>(), vec![Some(2)]);
    }

    #[test]
    fn a_flush_writes_every_count_and_keeps_counting() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(60));
        for addr in ["192.0.2.1", "192.0.2.2"] {
            for _ in 0..3 {
                c.offer(key(addr, "tls"), t0);
            }
        }
        c.offer(key("192.0.2.3", "tls"), t0); // nothing counted: no summary
        c.summarise_all(t0 + Duration::from_secs(1));
        let mut counts: Vec<_> = c.take_ready().iter().map(|e| (e.remote_addr.clone().unwrap(), e.repeated)).collect();
        counts.sort();
        assert_eq!(counts, vec![("192.0.2.1".into(), Some(2)), ("192.0.2.2".into(), Some(2))]);
        // Still the same window: further repeats are counted from zero.
        assert_eq!(c.offer(key("192.0.2.1", "tls"), t0 + Duration::from_secs(2)), Verdict::Counted);
        c.summarise_all(t0 + Duration::from_secs(3));
        assert_eq!(c.take_ready().iter().map(|e| e.repeated).collect::<Vec<_>>(), vec![Some(1)]);
    }

    #[test]
    fn too_many_addresses_share_one_window_per_kind_and_are_still_counted() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(60));
        let addr = |i: usize| format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
        for i in 0..MAX_OPEN_WINDOWS {
            assert_eq!(c.offer(key(&addr(i), "tls"), t0), Verdict::Write);
        }
        // Beyond the table: the first is written, the rest counted together.
        assert_eq!(c.offer(key(&addr(MAX_OPEN_WINDOWS), "tls"), t0), Verdict::Write);
        for i in 1..=50 {
            assert_eq!(c.offer(key(&addr(MAX_OPEN_WINDOWS + i), "tls"), t0), Verdict::Counted);
        }
        // Known addresses keep their own windows.
        assert_eq!(c.offer(key(&addr(0), "tls"), t0), Verdict::Counted);
        c.summarise_all(t0);
        let ready = c.take_ready();
        let shared = ready.iter().find(|e| e.remote_addr.is_none()).unwrap();
        assert_eq!(shared.repeated, Some(50));
        assert!(shared.reason.as_deref().unwrap().contains("beyond the number tracked"), "{shared:?}");
        // Ended windows free the table for addresses of their own again.
        assert_eq!(c.offer(key("192.0.2.200", "tls"), t0 + Duration::from_secs(61)), Verdict::Write);
        assert!(c.open.keys().any(|k| k.source.is_some_and(|s| s.to_string() == "192.0.2.200")));
    }
}
