//! The relay's config loader: `Config::from_json` on arbitrary UTF-8.
//!
//! Random bytes almost never carry the right checksum, so text that deserializes is also
//! sealed with its own checksum and loaded again, which reaches the checks after the
//! checksum (the access table's order).
//! Invariants: no panic; a loaded config round-trips through `to_json` and finds every entry
//! of its access table.

#![no_main]

use std::path::Path;

use dbward_frozen::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/dbward/frozen.json");
    if let Ok(config) = Config::from_json(path, text) {
        check_loaded(&config);
    }
    // The same content, sealed: everything past the checksum check.
    if let Ok(mut config) = serde_json::from_str::<Config>(text) {
        config.seal();
        if let Ok(config) = Config::from_json(path, &config.to_json()) {
            check_loaded(&config);
        }
    }
});

fn check_loaded(config: &Config) {
    let again = Config::from_json(Path::new("again.json"), &config.to_json());
    assert_eq!(again.as_ref().ok(), Some(config), "{again:?}");
    for entry in &config.access {
        let found = config.access_for(&entry.identity, &entry.database);
        assert_eq!(found, Some(entry));
    }
}
