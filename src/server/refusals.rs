//! Requests that hyper or h2 refuse before the gateway's service runs, put into the audit
//! trail all the same: the audit layer never sees them, so the listener records them.
//!
//! - HTTP/1: hyper answers a head it cannot parse or that is over its ceilings (400, 414, 431)
//!   and then ends the connection with a parse error; [`h1_refusal`] turns that error into a
//!   record (remote address, status, hyper's fixed description — never request data).
//! - h2: h2 answers a header list over its ceiling (431) or malformed request headers, and
//!   refuses streams beyond the concurrency limit, without any error reaching us. So the
//!   listener counts the streams the client opens ([`StreamCounter`] reads the frame headers
//!   going by) against the requests the service receives; [`H2Tally`] records the difference
//!   when the connection ends (exact then, whereas mid-connection a stream may still be on its
//!   way to the service).
//!
//! The limits themselves are enforced inside the audit layer (`crate::http::limits`), below
//! these ceilings, so only heads far over them take this path.

use crate::audit::{AuditEvent, AuditLog};
use crate::audit_slots::Decision;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The audit action of a request refused before routing (its method and path are not known,
/// or not trusted, at that point).
const ACTION_H1: &str = "(request refused by the HTTP/1 parser)";
const ACTION_H2: &str = "(requests refused by the HTTP/2 layer)";

/// The record for an HTTP/1 connection that ended with `error`, when hyper refused a request
/// (answered 400, 414 or 431 itself); `None` for other ends (client gone, timeouts).
pub(super) fn h1_refusal(peer: SocketAddr, error: &(dyn std::error::Error + 'static)) -> Option<AuditEvent> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if !error.is_parse() {
        return None;
    }
    // hyper's descriptions are fixed texts ("message head is too large", "URI too long",
    // "invalid HTTP header parsed", …), never the request's bytes.
    let description = error.to_string();
    let status = if error.is_parse_too_large() {
        if description.contains("URI") {
            414
        } else {
            431
        }
    } else {
        400
    };
    Some(
        AuditEvent::request(ACTION_H1, Decision::for_status(status))
            .remote_addr(peer)
            .status(status)
            .reason(format!("refused before reaching the gateway: {description}")),
    )
}

/// Counts, on an h2 connection, the streams the client opens and the requests the service
/// receives; when dropped (the connection ended, or its task was cancelled) it records the
/// streams that never became requests.
#[derive(Debug)]
pub(super) struct H2Tally {
    audit: Arc<AuditLog>,
    peer: SocketAddr,
    header_list_ceiling: u32,
    /// Streams the client opened (from [`StreamCounter`]).
    pub(super) opened: Arc<AtomicU64>,
    /// Requests handed to the service.
    pub(super) served: Arc<AtomicU64>,
}

impl H2Tally {
    pub(super) fn new(audit: Arc<AuditLog>, peer: SocketAddr, header_list_ceiling: u32) -> Self {
        Self { audit, peer, header_list_ceiling, opened: Arc::default(), served: Arc::default() }
    }
}

impl Drop for H2Tally {
    fn drop(&mut self) {
        let refused = self.opened.load(Ordering::SeqCst).saturating_sub(self.served.load(Ordering::SeqCst));
        if refused == 0 {
            return;
        }
        self.audit.record(AuditEvent::request(ACTION_H2, Decision::Error).remote_addr(self.peer).reason(format!(
            "{refused} HTTP/2 request(s) on this connection were answered by the HTTP/2 layer itself and never \
             reached the gateway: a header list over {} bytes (431), malformed request headers, or more \
             concurrent streams than allowed",
            self.header_list_ceiling
        )));
    }
}

/// The connection as hyper reads it, with (on h2) a count of the streams the client opens: a
/// HEADERS frame on a client stream id above every earlier one opens a stream. Only frame
/// headers are looked at, never a payload.
#[derive(Debug)]
pub(super) struct StreamCounter<S> {
    inner: S,
    scan: Option<FrameScan>,
}

impl<S> StreamCounter<S> {
    /// Counts into `opened` when the connection is h2; passes bytes through either way.
    pub(super) fn new(inner: S, h2: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, scan: h2.map(FrameScan::new) }
    }
}

/// Where the reader stands in the h2 byte stream.
#[derive(Debug)]
struct FrameScan {
    /// Bytes still to pass over: the connection preface, then each frame's payload.
    skip: usize,
    header: [u8; FRAME_HEADER_LEN],
    filled: usize,
    last_client_stream: u32,
    opened: Arc<AtomicU64>,
}

const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const H2_PREFACE_LEN: usize = 24;

impl FrameScan {
    fn new(opened: Arc<AtomicU64>) -> Self {
        Self { skip: H2_PREFACE_LEN, header: [0; FRAME_HEADER_LEN], filled: 0, last_client_stream: 0, opened }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled < FRAME_HEADER_LEN {
                continue;
            }
            self.filled = 0;
            let [l0, l1, l2, kind, _flags, s0, s1, s2, s3] = self.header;
            let length = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            let stream = u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]);
            // Client streams are odd and only ever increase; a HEADERS frame on an older one
            // is trailers (or an error h2 deals with).
            if kind == FRAME_HEADERS && stream % 2 == 1 && stream > self.last_client_stream {
                self.last_client_stream = stream;
                self.opened.fetch_add(1, Ordering::SeqCst);
            }
            self.skip = length;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StreamCounter<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(scan)) = (&poll, this.scan.as_mut()) {
            scan.feed(&buf.filled()[before..]);
        }
        poll
    }
}

super::forward_async_write!(StreamCounter);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn opened_by(chunks: &[&[u8]]) -> u64 {
        let opened = Arc::new(AtomicU64::new(0));
        let mut scan = FrameScan::new(opened.clone());
        for chunk in chunks {
            scan.feed(chunk);
        }
        opened.load(Ordering::SeqCst)
    }

    #[test]
    fn new_client_streams_are_counted_whatever_the_read_boundaries() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0; 6])); // SETTINGS
        bytes.extend(frame(0x1, 0x4, 1, &[0x82; 40])); // HEADERS, stream 1
        bytes.extend(frame(0x0, 0x1, 1, b"body")); // DATA
        bytes.extend(frame(0x1, 0x5, 1, &[0x88; 3])); // trailers on stream 1: not a new stream
        bytes.extend(frame(0x1, 0x0, 3, &[0x01; 20000])); // HEADERS, stream 3, continued:
        bytes.extend(frame(0x9, 0x4, 3, &[0x01; 100])); // CONTINUATION
        bytes.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        bytes.extend(frame(0x1, 0x5, 5, &[0x82])); // HEADERS, stream 5
        bytes.extend(frame(0x1, 0x5, 2, &[0x82])); // an even (server) id: not a client stream
        assert_eq!(opened_by(&[&bytes]), 3);
        // Byte by byte, and in uneven chunks, the count is the same.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(opened_by(&singles), 3);
        let uneven: Vec<&[u8]> = bytes.chunks(7).collect();
        assert_eq!(opened_by(&uneven), 3);
        // Payload bytes that look like a HEADERS frame header are not read as one.
        let mut tricky = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        tricky.extend(frame(0x0, 0, 1, &frame(0x1, 0x5, 7, &[]))); // DATA carrying "a frame"
        assert_eq!(opened_by(&[&tricky]), 0);
    }

    #[test]
    fn only_parse_errors_are_refusals() {
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let io = std::io::Error::other("reset");
        assert!(h1_refusal(peer, &io).is_none());
    }
}
