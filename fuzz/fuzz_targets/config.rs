//! The config loader on arbitrary text: a config or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match meshbroker::Config::from_toml(text, std::path::Path::new("fuzz.toml")) {
        Ok(config) => assert!(config.validate(std::path::Path::new("fuzz.toml")).is_ok()),
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml")),
    }
});
