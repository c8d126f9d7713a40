//! Reading whole messages (during startup) and spotting queries in a relayed byte stream.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::backend::frame_header;

/// Reads whole regular messages from a stream during the startup phase. Bytes read past the
/// last message returned stay in [`FrameReader::leftover`], so nothing is lost when the caller
/// switches to relaying raw bytes.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

/// One message: its type byte and the whole frame (header included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Vec<u8>,
}

impl Frame {
    /// The body, after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

impl FrameReader {
    /// The next message, or `Ok(None)` at a clean end of stream. Messages larger than `max`
    /// bytes are an error: during startup no legitimate message comes close.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        max: usize,
    ) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.take(max)? {
                return Ok(Some(frame));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + 4096, 0);
            let n = reader.read(&mut self.buf[len..]).await?;
            self.buf.truncate(len + n);
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// The next whole message among the bytes already read, without reading: `Ok(None)` when
    /// more bytes are needed. [`FrameReader::next`] is this plus reading; the pure half is
    /// public so that it can be fuzzed with [`FrameReader::push`].
    pub fn take(&mut self, max: usize) -> io::Result<Option<Frame>> {
        let pending = &self.buf[self.start..];
        match frame_header(pending) {
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            Ok(Some((_, size))) if size > max => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message of {size} bytes exceeds the startup limit of {max}"),
            )),
            Ok(Some((tag, size))) if pending.len() >= size => {
                let bytes = pending[..size].to_vec();
                self.start += size;
                Ok(Some(Frame { tag, bytes }))
            }
            _ => Ok(None),
        }
    }

    /// Appends bytes as if they had been read from the stream (for callers that do their own
    /// reading, and for the fuzz targets).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes read but not yet returned as messages.
    pub fn leftover(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Which frontend message carried a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// `Q`, simple query.
    Query,
    /// `P`, Parse of the extended protocol.
    Parse,
}

/// The longest query text kept for the audit log; longer ones are cut.
pub const MAX_AUDITED_QUERY: usize = 64 * 1024;

/// Follows message boundaries in the client-to-server byte stream and hands the SQL text of
/// every Query and Parse message to a callback. It only reads: the bytes are relayed as they
/// came, and only the text of Q/P messages is copied (up to [`MAX_AUDITED_QUERY`]).
#[derive(Debug, Default)]
pub struct QueryScanner {
    /// Header bytes collected so far when a header straddles two reads.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    remaining: usize,
    /// The current message's kind and the body bytes kept, when it is a Q or P.
    capture: Option<(QueryKind, Vec<u8>)>,
    /// Set when the stream stopped making sense (a length below 4); scanning stops.
    lost: bool,
}

impl QueryScanner {
    /// Feeds the next chunk of the stream.
    pub fn feed(&mut self, mut data: &[u8], mut on_query: impl FnMut(QueryKind, &[u8])) {
        while !data.is_empty() && !self.lost {
            if self.remaining == 0 && self.capture.is_none() {
                // Collect a header.
                let take = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len < 5 {
                    return;
                }
                self.header_len = 0;
                let h = self.header;
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
                if len < 4 {
                    self.lost = true;
                    return;
                }
                self.remaining = len as usize - 4;
                let kind = match h[0] {
                    b'Q' => Some(QueryKind::Query),
                    b'P' => Some(QueryKind::Parse),
                    _ => None,
                };
                self.capture = kind.map(|k| (k, Vec::new()));
            }
            let take = self.remaining.min(data.len());
            if let Some((_, kept)) = &mut self.capture {
                let room = (MAX_AUDITED_QUERY + 1024).saturating_sub(kept.len());
                kept.extend_from_slice(&data[..take.min(room)]);
            }
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0
                && let Some((kind, body)) = self.capture.take()
            {
                on_query(kind, query_text(kind, &body));
            }
        }
    }
}

/// Follows message boundaries in a relayed byte stream by their headers alone: for each message
/// it reports the type byte and the first body byte (`None` for an empty body), and skips the
/// rest by its length. Nothing is copied or allocated; a header split across reads is collected
/// in six bytes of state. A length below 4 (garbage) stops the walk for good.
#[derive(Debug, Default)]
pub struct FrameWalker {
    /// Type byte, length and first body byte collected so far of a header split across reads.
    head: [u8; 6],
    have: usize,
    /// Bytes of the current message still to skip.
    skip: usize,
    lost: bool,
}

impl FrameWalker {
    /// Feeds the next chunk of the stream, calling `on_message(type, first body byte)` once per
    /// message as soon as its header (and first body byte) has passed.
    pub fn feed(&mut self, mut data: &[u8], mut on_message: impl FnMut(u8, Option<u8>)) {
        loop {
            if self.skip > 0 {
                if data.len() <= self.skip {
                    self.skip -= data.len();
                    return;
                }
                data = &data[self.skip..];
                self.skip = 0;
            }
            if data.is_empty() || self.lost {
                return;
            }
            if self.have == 0
                && let Some(head) = data.get(..6)
            {
                // The common case: the whole header is in this chunk.
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
                if len < 4 {
                    self.lost = true;
                    return;
                }
                on_message(head[0], (len > 4).then_some(head[5]));
                let total = 1 + len as usize;
                if data.len() >= total {
                    data = &data[total..];
                } else {
                    self.skip = total - data.len();
                    return;
                }
                continue;
            }
            // A header split across chunks (or a chunk shorter than a header): byte by byte.
            self.head[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have < 5 {
                continue;
            }
            let h = self.head;
            let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
            if len < 4 {
                self.lost = true;
                return;
            }
            if len == 4 {
                on_message(h[0], None);
                self.have = 0;
            } else if self.have == 6 {
                on_message(h[0], Some(h[5]));
                self.have = 0;
                self.skip = len as usize - 5;
            }
        }
    }
}

/// The SQL of a Q body (`query\0`) or a P body (`name\0query\0…`), cut at the limit.
fn query_text(kind: QueryKind, body: &[u8]) -> &[u8] {
    let body = match kind {
        QueryKind::Query => body,
        QueryKind::Parse => match body.iter().position(|b| *b == 0) {
            Some(end) => &body[end + 1..],
            None => &[],
        },
    };
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    &body[..end.min(MAX_AUDITED_QUERY)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Feeds `stream` in chunks of every size from 1 to its length and checks that the
    /// queries seen are always `expected`.
    fn check(stream: &[u8], expected: &[(QueryKind, &str)]) {
        for chunk in 1..=stream.len() {
            let mut scanner = QueryScanner::default();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                scanner.feed(piece, |kind, sql| {
                    seen.push((kind, String::from_utf8_lossy(sql).into_owned()))
                });
            }
            let seen: Vec<(QueryKind, &str)> = seen.iter().map(|(k, s)| (*k, s.as_str())).collect();
            assert_eq!(seen, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn finds_queries_across_any_split() {
        let mut stream = message(b'Q', b"select 1\0");
        stream.extend(message(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17"));
        stream.extend(message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x06secret\0\0"));
        stream.extend(message(b'S', b""));
        stream.extend(message(b'X', b""));
        check(
            &stream,
            &[
                (QueryKind::Query, "select 1"),
                (QueryKind::Parse, "select $1"),
            ],
        );
    }

    #[test]
    fn random_streams_never_panic() {
        let mut next = crate::protocol::xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let len = (next() % 200) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut scanner = QueryScanner::default();
            for piece in data.chunks(1 + (next() % 17) as usize) {
                scanner.feed(piece, |_, sql| assert!(sql.len() <= MAX_AUDITED_QUERY));
            }
        }
    }

    /// Walks `stream` in chunks of every size and checks the messages reported.
    fn walk(stream: &[u8], expected: &[(u8, Option<u8>)]) {
        for chunk in 1..=stream.len() {
            let mut walker = FrameWalker::default();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                walker.feed(piece, |tag, first| seen.push((tag, first)));
            }
            assert_eq!(seen, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn the_walker_reports_every_message_across_any_split() {
        let mut stream = message(b'T', b"\0\x01col\0");
        stream.extend(message(b'D', &[0; 40]));
        stream.extend(message(b'C', b"SELECT 1\0"));
        stream.extend(message(b'Z', b"T"));
        stream.extend(message(b'1', b""));
        stream.extend(message(b'Z', b"I"));
        walk(
            &stream,
            &[
                (b'T', Some(0)),
                (b'D', Some(0)),
                (b'C', Some(b'S')),
                (b'Z', Some(b'T')),
                (b'1', None),
                (b'Z', Some(b'I')),
            ],
        );
        // Garbage stops the walk; nothing after it is reported, nothing panics.
        let mut bad = message(b'Z', b"I");
        bad.extend(b"Z\0\0\0\x02Z\0\0\0\x05I");
        walk(&bad, &[(b'Z', Some(b'I'))]);
    }

    #[test]
    fn the_walker_never_panics_on_random_streams() {
        let mut next = crate::protocol::xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (next() % 200) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut walker = FrameWalker::default();
            for piece in data.chunks(1 + (next() % 17) as usize) {
                walker.feed(piece, |_, _| {});
            }
        }
    }

    #[tokio::test]
    async fn frame_reader_keeps_leftovers() {
        let mut stream = message(b'R', &[0, 0, 0, 0]);
        stream.extend(message(b'Z', b"I"));
        stream.extend(b"Nxx");
        let mut reader = FrameReader::default();
        let mut input = &stream[..];
        let first = reader.next(&mut input, 1024).await.unwrap().unwrap();
        assert_eq!(first.tag, b'R');
        let second = reader.next(&mut input, 1024).await.unwrap().unwrap();
        assert_eq!((second.tag, second.body()), (b'Z', &b"I"[..]));
        assert_eq!(reader.leftover(), b"Nxx");
        assert!(
            reader.next(&mut input, 1024).await.is_err(),
            "truncated message"
        );
    }
}
