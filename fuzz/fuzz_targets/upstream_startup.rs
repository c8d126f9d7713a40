//! The upstream's startup and authentication messages as the relay reads them: the bytes a
//! server sends after the StartupMessage, cut into whole messages by `FrameReader` (fed in
//! arbitrary chunks) and read by the `Handshake` state machine that `upstream::connect`
//! drives.
//!
//! The first byte of the input seeds the chunk sizes; the rest is the server's stream.
//! Invariants: no panic; every message returned is whole and within the startup limit;
//! authentication requests never carry code 0; the greeting is whole ParameterStatus and
//! NoticeResponse messages and ends with ReadyForQuery; an ErrorResponse is relayed as the
//! exact frame received.

#![no_main]

use dbward_relay::protocol::backend::frame_header;
use dbward_relay::protocol::frames::FrameReader;
use dbward_relay::upstream::handshake::{Handshake, HandshakeError, MAX_STARTUP_MESSAGE, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut reader = FrameReader::default();
    let mut handshake = Handshake::default();
    let mut rest = stream;
    let mut chunk = usize::from(seed % 32) + 1;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(chunk.min(rest.len()));
        rest = tail;
        chunk = chunk % 31 + 1;
        reader.push(piece);
        loop {
            let frame = match reader.take(MAX_STARTUP_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(_) => break,
            };
            assert!(frame.bytes.len() <= MAX_STARTUP_MESSAGE && frame.bytes.len() >= 5);
            assert_eq!(
                frame_header(&frame.bytes),
                Ok(Some((frame.tag, frame.bytes.len())))
            );
            let bytes = frame.bytes.clone();
            match handshake.on_message(frame) {
                Ok(Step::Continue) => {}
                Ok(Step::Authenticate(code)) => assert_ne!(code, 0),
                Ok(Step::Ready(greeting)) => {
                    assert_eq!(greeting.ready, bytes);
                    check_greeting(&greeting.messages);
                    return;
                }
                Err(HandshakeError::Refused { frame, .. }) => {
                    assert_eq!(frame, bytes);
                    return;
                }
                Err(HandshakeError::Protocol(reason)) => {
                    assert!(!reason.is_empty());
                    return;
                }
            }
        }
    }
});

/// The greeting is a run of whole `S` and `N` messages.
fn check_greeting(mut messages: &[u8]) {
    while !messages.is_empty() {
        let Ok(Some((tag, size))) = frame_header(messages) else {
            panic!("the greeting has a broken message");
        };
        assert!(tag == b'S' || tag == b'N', "tag {tag} in the greeting");
        assert!(size <= messages.len());
        messages = &messages[size..];
    }
}
