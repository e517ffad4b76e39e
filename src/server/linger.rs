//! Lingering close: when hyper is done with a connection (an answer sent before the request's
//! body was read — a 413 —, or the connection closed for any reason), the client may still be
//! sending. Closing a socket with unread bytes makes the kernel reset the connection, and a
//! client that sends its whole body before it reads (python-requests, so Livy's and sparkmagic's
//! clients, curl over HTTP/1.1) then sees the reset instead of the answer. So the connection's
//! task takes the stream back from hyper and reads and drops what still comes, within bounds,
//! before it closes (as nginx's `lingering_close` does).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long a closing connection is read from at most, in all.
const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// How long a closing connection may send nothing before it is closed.
const LINGER_IDLE: Duration = Duration::from_secs(2);

/// The stream as hyper holds it: when hyper drops it, it goes back to the connection's task.
pub(super) struct HandBack<S> {
    inner: Option<S>,
    back: Option<oneshot::Sender<S>>,
}

impl<S> HandBack<S> {
    /// `inner` for hyper, and where the task gets it back once hyper has dropped it.
    pub(super) fn new(inner: S) -> (Self, oneshot::Receiver<S>) {
        let (tx, rx) = oneshot::channel();
        (Self { inner: Some(inner), back: Some(tx) }, rx)
    }

    /// The stream; it is gone only once the wrapper is dropped, so never while hyper polls.
    fn inner(&mut self) -> std::io::Result<Pin<&mut S>>
    where
        S: Unpin,
    {
        self.inner.as_mut().map(Pin::new).ok_or_else(|| std::io::Error::other("the connection was handed back"))
    }
}

/// `$call` on the stream, or the error of a stream already handed back.
macro_rules! on_inner {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.inner() {
            Ok($stream) => $call,
            Err(e) => Poll::Ready(Err(e)),
        }
    };
}

impl<S> Drop for HandBack<S> {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            let _ = back.send(inner);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HandBack<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        on_inner!(self, s => s.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HandBack<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        on_inner!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_inner!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_inner!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        on_inner!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(S::is_write_vectored)
    }
}

/// Once hyper is done with a connection: its lingering close, if hyper has dropped the stream
/// (an upgraded connection still holds it and closes it itself).
pub(super) fn after<S>(mut back: oneshot::Receiver<S>) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = back.try_recv().ok()?;
    Some(Box::pin(linger(stream)))
}

/// Ends our side of `stream`, then reads and drops what the client still sends until it
/// closes, sends nothing for [`LINGER_IDLE`], or [`LINGER_TOTAL`] has passed.
pub(super) async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let _ = tokio::time::timeout(LINGER_IDLE, stream.shutdown()).await;
    let deadline = Instant::now() + LINGER_TOTAL;
    let mut sink = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match tokio::time::timeout(left.min(LINGER_IDLE), stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}
