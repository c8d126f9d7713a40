//! A socket reader that reads large chunks while a bulk transfer streams and holds no buffer
//! while the session is quiet.
//!
//! rustls pulls TLS records from the socket at most 4 KiB per read, so a 50 MB result relayed
//! through two TLS connections would cost tens of thousands of `recvfrom` calls. Under TLS the
//! relay therefore puts a [`ReadAhead`]: small reads pass straight through (query/response
//! traffic never allocates); after reads that fill the caller's buffer twice in a row (a bulk
//! stream), it switches to reading [`CHUNK`] bytes per system call into its own buffer, and it
//! frees that buffer as soon as the socket has nothing more to give, so an idle session keeps
//! no read-ahead memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per system call during a bulk transfer.
pub const CHUNK: usize = 64 * 1024;

/// Consecutive full small reads that switch to bulk mode.
const FULL_READS_FOR_BULK: u8 = 2;

/// Wraps a socket; see the module documentation. Writes pass through unchanged.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Empty unless in bulk mode; then `CHUNK` bytes, of which `start..end` are unread.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Reads in a row that filled the caller's buffer.
    full_reads: u8,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            full_reads: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether a read-ahead buffer is held now (for tests).
    pub fn holds_buffer(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Copies buffered bytes to `out`.
    fn drain_into(&mut self, out: &mut ReadBuf<'_>) {
        let n = (self.end - self.start).min(out.remaining());
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            this.drain_into(out);
            return Poll::Ready(Ok(()));
        }
        if !this.buf.is_empty() {
            // Bulk mode: one large read, then serve the caller from it.
            let mut chunk = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Pending => {
                    // The socket is drained: the burst is over (or pausing). Hold nothing
                    // while waiting; a new burst re-enters bulk mode after two full reads.
                    this.buf = Vec::new();
                    this.full_reads = 0;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = chunk.filled().len();
                    this.start = 0;
                    this.end = n;
                    if n == 0 {
                        this.buf = Vec::new();
                        return Poll::Ready(Ok(()));
                    }
                    this.drain_into(out);
                    return Poll::Ready(Ok(()));
                }
            }
        }
        // Pass-through mode.
        let wanted = out.remaining();
        let before = out.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
        let got = out.filled().len() - before;
        if got > 0 && got == wanted {
            this.full_reads = this.full_reads.saturating_add(1);
            if this.full_reads >= FULL_READS_FOR_BULK {
                this.buf = vec![0; CHUNK];
                this.start = 0;
                this.end = 0;
            }
        } else {
            this.full_reads = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every byte arrives in order through any mix of small and bulk reads, bulk mode is used
    /// for a large stream, and no buffer is held once the stream is idle.
    #[tokio::test]
    async fn streams_exactly_and_frees_when_idle() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        let mut reader = ReadAhead::new(reader);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let send = async {
            for piece in data.chunks(100_000) {
                writer.write_all(piece).await.unwrap();
            }
        };
        let mut got = Vec::with_capacity(data.len());
        let mut used_bulk = false;
        let receive = async {
            let mut small = [0u8; 4096];
            while got.len() < data.len() {
                let n = reader.read(&mut small).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&small[..n]);
                used_bulk |= reader.holds_buffer();
            }
        };
        tokio::join!(send, receive);
        assert!(got == data, "bytes changed or reordered");
        assert!(used_bulk, "a 1 MB stream should switch to bulk reads");
        // Idle: the next read waits, and while it waits no buffer is held.
        let mut one = [0u8; 1];
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), reader.read(&mut one)).await;
        assert!(waiting.is_err(), "nothing was sent");
        assert!(
            !reader.holds_buffer(),
            "an idle reader holds its read-ahead buffer"
        );
        writer.write_all(b"x").await.unwrap();
        assert_eq!(reader.read(&mut one).await.unwrap(), 1);
        assert_eq!(&one, b"x");
        drop(writer);
        assert_eq!(
            reader.read(&mut one).await.unwrap(),
            0,
            "end of stream passes through"
        );
    }
}
