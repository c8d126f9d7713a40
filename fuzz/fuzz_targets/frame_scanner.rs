//! The post-startup scanner that spots queries in the client's byte stream for the audit log:
//! `QueryScanner::feed` on arbitrary bytes in arbitrary chunkings.
//!
//! The first two bytes of the input seed the chunk sizes; the rest is the stream.
//! Invariants: no panic; every query text is within `MAX_AUDITED_QUERY` and has no NUL; the
//! queries seen do not depend on how the stream was cut into reads.

#![no_main]

use dbward_relay::protocol::frames::{MAX_AUDITED_QUERY, QueryKind, QueryScanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let whole = scan(stream, std::iter::repeat(usize::MAX));
    // Chunk sizes from a small generator seeded by the first two bytes: sizes 1 to 64,
    // with 1-byte reads frequent (headers split at every offset).
    let mut state = u32::from(a) << 8 | u32::from(b) | 1;
    let sizes = std::iter::from_fn(move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        Some(if state % 4 == 0 {
            1
        } else {
            1 + (state >> 8) as usize % 64
        })
    });
    let chunked = scan(stream, sizes);
    assert_eq!(whole, chunked, "the queries depend on the chunking");
    assert_eq!(whole, scan(stream, std::iter::repeat(1)), "byte by byte");
});

fn scan(stream: &[u8], sizes: impl Iterator<Item = usize>) -> Vec<(QueryKind, Vec<u8>)> {
    let mut scanner = QueryScanner::default();
    let mut seen = Vec::new();
    let mut rest = stream;
    for size in sizes {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        scanner.feed(piece, |kind, sql| {
            assert!(sql.len() <= MAX_AUDITED_QUERY);
            assert!(!sql.contains(&0));
            seen.push((kind, sql.to_vec()));
        });
        rest = tail;
    }
    seen
}
