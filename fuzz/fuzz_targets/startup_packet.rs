//! A client's first packet as the relay reads it: `Startup::parse` on arbitrary bytes, then
//! the parameters decoded the way the session does (the `options` split).
//!
//! Invariants: no panic; an accepted packet fits in the input and in `MAX_STARTUP_LEN`, and
//! a StartupMessage re-encodes to exactly the bytes it was parsed from; a prefix of an
//! accepted packet is incomplete, never something else; the options split keeps only words
//! of the input.

#![no_main]

use dbward_relay::protocol::options::{self, DATABASE_OPTION};
use dbward_relay::protocol::startup::MAX_STARTUP_LEN;
use dbward_relay::protocol::{Startup, StartupMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = Startup::parse(data);
    let Ok(Some((startup, used))) = parsed else {
        return;
    };
    assert!(used <= data.len() && used <= MAX_STARTUP_LEN && used >= 8);
    // Every proper prefix of the packet is incomplete: the parser never decides early.
    for cut in [0, 3, 4, 7, used / 2, used - 1] {
        assert_eq!(
            Startup::parse(&data[..cut]),
            Ok(None),
            "prefix of {cut} bytes"
        );
    }
    if let Startup::Startup(message) = startup {
        assert_eq!(message.encode(), &data[..used], "re-encoding differs");
        session_decoding(message);
    }
});

/// What the session does with the parameters: find `dbward.database` in `options` (a second
/// one is refused), and encode the message it forwards from what it kept.
fn session_decoding(message: StartupMessage) {
    let Some(raw) = message.get("options").map(str::to_owned) else {
        return;
    };
    let Ok(split) = options::split(&raw) else {
        return;
    };
    for word in split.rest.split(' ').filter(|w| !w.is_empty()) {
        assert!(raw.contains(word), "{word:?} is not from {raw:?}");
    }
    // A database can only come from a word that spells the setting (escapes aside).
    if !raw
        .replace('\\', "")
        .to_ascii_lowercase()
        .contains(DATABASE_OPTION)
    {
        assert_eq!(split.database, None);
    }
    // The forwarded message (options without the relay's setting) encodes and parses back to
    // itself.
    let mut params: Vec<(String, String)> = message
        .params
        .into_iter()
        .filter(|(name, _)| name != "options")
        .collect();
    if !split.rest.is_empty() {
        params.push(("options".to_owned(), split.rest));
    }
    let forwarded = StartupMessage {
        version: message.version,
        params,
    };
    let encoded = forwarded.encode();
    if encoded.len() <= MAX_STARTUP_LEN {
        let again = Startup::parse(&encoded);
        assert_eq!(again, Ok(Some((Startup::Startup(forwarded), encoded.len()))));
    }
}
