//! The compiler's front end: `dbward::check` on arbitrary UTF-8, then the diagnostics
//! rendered as the CLI renders them (text and JSON).
//!
//! Invariants: no panic; a model exists exactly when no diagnostic is an error; every
//! diagnostic has a code and a message, and an ordered span.

#![no_main]

use dbward::diag;
use dbward::source::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source::new("fuzz.kdl", text);
    let checked = dbward::check(&source);
    assert_eq!(checked.model.is_some(), !checked.has_errors());
    for d in &checked.diagnostics {
        assert!(!d.code.is_empty() && !d.message.is_empty(), "{d:?}");
        for label in &d.labels {
            assert!(label.span.start <= label.span.end, "{d:?}");
        }
    }
    let _ = diag::render(&source, &checked.diagnostics, 100, false);
    let _ = diag::to_json(&source, &checked.diagnostics);
});
