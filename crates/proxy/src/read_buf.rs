//! Reads into a connection's growable read buffer, for the lean HTTP/1.1 server and client.

use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// Reads go into at least this much free buffer space.
const MIN_READ: usize = 1024;

/// Reads what `stream` has into `buf` (`Ready(Ok(0))` at end of file), first giving a buffer
/// with less than 1 KiB free `grow` bytes more; the old allocation lives on in whatever still
/// shares it (header values, body chunks). Through `poll_read`, which clears the socket's
/// readiness after a short read, so the next wait needs no system call to learn that nothing
/// more has arrived.
pub(crate) fn poll_fill(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    grow: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(grow);
    }
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}
