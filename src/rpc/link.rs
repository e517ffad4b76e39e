//! The sending half of an authenticated driver connection ([`DriverLink`]) and the bound on
//! what may wait in it: a driver that does not read its messages loses its connection, the
//! gateway does not lose its memory.
//!
//! Why a bound and why closing: user code runs inside the driver, so it can stop the driver's
//! reader and still send. Every `statement_result` it sends makes the gateway queue an `ack`
//! (even for an unknown id, so that a real driver can forget a duplicate), and a peer that
//! never reads would make that queue grow until the gateway runs out of memory. Waiting for
//! room is no answer either: [`DriverLink::send`] is called under a session's lock, so it must
//! never block. So a message that does not fit closes the connection instead. The driver
//! redials, and what it had not had acknowledged it sends again (docs/driver-protocol.md), so
//! an honest driver loses nothing but the requests in flight (completion, add-file), whose
//! callers get an error at once.

use super::protocol::ToDriver;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How much may wait to be written to one driver connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages waiting at once.
    pub messages: usize,
    /// Bytes those messages hold in memory, at most (see [`queued_cost`]).
    pub bytes: usize,
}

impl QueueLimits {
    /// Messages that may wait for one driver. The gateway sends one `execute` at a time and an
    /// `ack` per result the driver sent; a resync after a reconnect (every unacknowledged
    /// result, at most the statements a session keeps) stays far below this.
    pub const MESSAGES: usize = 4096;

    /// The limits of a server whose frames may hold `max_frame_bytes`: the largest message
    /// fits into an empty queue, so a big statement always reaches its driver.
    pub fn for_frames(max_frame_bytes: usize) -> Self {
        Self { messages: Self::MESSAGES, bytes: max_frame_bytes.max(64 * 1024) }
    }
}

impl Default for QueueLimits {
    /// The limits for the default frame size (64 MiB).
    fn default() -> Self {
        Self::for_frames(64 * 1024 * 1024)
    }
}

/// How a driver connection reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// The TCP port (`rpc.bind`): cluster-mode drivers, and local ones whose socket path
    /// would be too long.
    Tcp,
    /// The session's own Unix socket (local and client deploy mode).
    Unix,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Unix => "its Unix socket",
        })
    }
}

/// The sending half of an authenticated driver connection. Clones share one queue.
#[derive(Debug, Clone)]
pub struct DriverLink {
    /// Distinguishes this connection from a later one of the same session.
    pub conn_id: u64,
    transport: Transport,
    tx: mpsc::UnboundedSender<ToDriver>,
    queue: Arc<Backlog>,
}

/// What waits in one connection's queue, and the signal that it overflowed.
#[derive(Debug)]
struct Backlog {
    limits: QueueLimits,
    held: Mutex<Held>,
    /// Cancelled when a message did not fit: the connection's task closes the connection.
    overflow: CancellationToken,
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    messages: usize,
    bytes: usize,
}

impl Backlog {
    fn new(limits: QueueLimits) -> Arc<Self> {
        Arc::new(Self { limits, held: Mutex::new(Held::default()), overflow: CancellationToken::new() })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Every update is one small arithmetic step: a poisoned lock still holds good numbers.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes room for a message of `cost` bytes, or marks the queue overflowed.
    fn admit(&self, cost: usize) -> bool {
        let mut held = self.held();
        let fits = held.messages < self.limits.messages && held.bytes.saturating_add(cost) <= self.limits.bytes;
        if fits {
            held.messages += 1;
            held.bytes += cost;
        } else {
            drop(held);
            self.overflow.cancel();
        }
        fits
    }

    fn release(&self, cost: usize) {
        let mut held = self.held();
        held.messages = held.messages.saturating_sub(1);
        held.bytes = held.bytes.saturating_sub(cost);
    }
}

/// What a queued message holds in memory: the message itself and its strings. Deterministic,
/// so the writer gives back exactly what the sender took.
fn queued_cost(msg: &ToDriver) -> usize {
    let strings = match msg {
        ToDriver::Challenge { server_nonce } => server_nonce.len(),
        ToDriver::Ok { mac } => mac.len(),
        ToDriver::Execute { kind, code, .. } | ToDriver::Complete { kind, code, .. } => kind.len() + code.len(),
        ToDriver::AddFile { what, uri, .. } => what.len() + uri.len(),
        ToDriver::Cancel { .. } | ToDriver::Ack { .. } | ToDriver::Ping | ToDriver::Shutdown => 0,
    };
    std::mem::size_of::<ToDriver>() + strings
}

impl DriverLink {
    /// Queues a message without ever waiting; false when the connection is gone or closing.
    /// A message that does not fit in [`QueueLimits`] closes the connection: the driver is
    /// not reading what it is sent.
    pub fn send(&self, msg: ToDriver) -> bool {
        if self.queue.overflow.is_cancelled() {
            return false;
        }
        let cost = queued_cost(&msg);
        if !self.queue.admit(cost) {
            return false;
        }
        if self.tx.send(msg).is_err() {
            self.queue.release(cost);
            return false;
        }
        true
    }

    /// How the driver connected.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether the connection is gone, or closing because its queue overflowed.
    pub fn is_closed(&self) -> bool {
        self.queue.overflow.is_cancelled() || self.tx.is_closed()
    }

    /// Whether the queue overflowed (the connection is being closed for it).
    pub fn overflowed(&self) -> bool {
        self.queue.overflow.is_cancelled()
    }

    /// Messages and bytes waiting to be written now.
    pub fn queued(&self) -> (usize, usize) {
        let held = *self.queue.held();
        (held.messages, held.bytes)
    }

    /// A link whose messages go to `tx`, with the default [`QueueLimits`] (tests). The test's
    /// receiver gives no room back, so at most [`QueueLimits::MESSAGES`] messages can be sent
    /// over its life; more mark it overflowed, as a driver that does not read would.
    pub fn for_test(conn_id: u64, tx: mpsc::UnboundedSender<ToDriver>) -> Self {
        Self { conn_id, transport: Transport::Tcp, tx, queue: Backlog::new(QueueLimits::default()) }
    }
}

/// The receiving half of a connection's queue, read by its writer.
#[derive(Debug)]
pub(super) struct Outbox {
    rx: mpsc::UnboundedReceiver<ToDriver>,
    queue: Arc<Backlog>,
}

impl Outbox {
    /// The next message to write; None when every link was dropped (the session let go of the
    /// connection, or a newer one replaced it).
    pub(super) async fn recv(&mut self) -> Option<ToDriver> {
        let msg = self.rx.recv().await?;
        self.queue.release(queued_cost(&msg));
        Some(msg)
    }

    /// Completes when a message did not fit: the connection must close.
    pub(super) fn overflowed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.queue.overflow.clone().cancelled_owned()
    }

    /// The limits this queue was created with.
    pub(super) fn limits(&self) -> QueueLimits {
        self.queue.limits
    }
}

/// A new connection's queue: the link the session sends through, the outbox its writer reads.
pub(super) fn channel(conn_id: u64, transport: Transport, limits: QueueLimits) -> (DriverLink, Outbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Backlog::new(limits);
    (DriverLink { conn_id, transport, tx, queue: queue.clone() }, Outbox { rx, queue })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_to_a_driver_that_does_not_read_is_bounded_and_closes_the_link() {
        let limits = QueueLimits { messages: 100, bytes: 1 << 20 };
        let (link, outbox) = channel(1, Transport::Tcp, limits);
        let overflowed = outbox.overflowed();
        let mut accepted = 0;
        // Deny: a hundred thousand acks to a peer that never reads.
        for id in 0..100_000 {
            if link.send(ToDriver::Ack { id }) {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 100, "only what fits is queued");
        assert_eq!(link.queued().0, 100);
        assert_eq!(outbox.rx.len(), 100, "the queue itself stays bounded");
        assert!(link.is_closed() && link.overflowed(), "the connection is marked for closing");
        assert!(futures_util::FutureExt::now_or_never(overflowed).is_some(), "its writer is told at once");
        // Once overflowed, nothing more is taken, not even a message that would fit again.
        assert!(!link.clone().send(ToDriver::Ping));
    }

    #[test]
    fn bytes_are_bounded_too_and_a_reading_driver_gets_its_room_back() {
        let limits = QueueLimits { messages: 1000, bytes: 4 * 1024 };
        let (link, mut outbox) = channel(1, Transport::Unix, limits);
        let big = || ToDriver::Execute { id: 1, kind: "pyspark".into(), code: "x".repeat(1500) };
        // Allow: what fits, and again and again as long as the writer takes it away.
        for _ in 0..50 {
            assert!(link.send(big()));
            assert!(link.send(big()));
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                outbox.recv().await.unwrap();
                outbox.recv().await.unwrap();
            });
            assert_eq!(link.queued(), (0, 0), "the writer gives back exactly what was taken");
        }
        assert!(!link.is_closed());
        // Deny: three large messages do not fit in 4 KiB.
        assert!(link.send(big()) && link.send(big()));
        assert!(!link.send(big()));
        assert!(link.overflowed());
        assert!(link.queued().1 <= limits.bytes);
        assert_eq!(link.transport(), Transport::Unix);
    }

    #[test]
    fn the_largest_frame_fits_an_empty_queue() {
        let limits = QueueLimits::for_frames(10 * 1024 * 1024);
        let (link, _outbox) = channel(1, Transport::Tcp, limits);
        let code = "x".repeat(10 * 1024 * 1024 - 4096);
        assert!(link.send(ToDriver::Execute { id: 0, kind: "pyspark".into(), code }));
    }

    #[test]
    fn a_closed_connection_refuses_without_counting() {
        let (link, outbox) = channel(1, Transport::Tcp, QueueLimits::default());
        drop(outbox);
        assert!(!link.send(ToDriver::Ping));
        assert_eq!(link.queued(), (0, 0));
        assert!(link.is_closed() && !link.overflowed());
    }
}
