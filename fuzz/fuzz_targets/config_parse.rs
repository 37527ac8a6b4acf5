#![no_main]
//! Any proxy.toml text yields a Config or a list of problems, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = portcullis::fuzzing::parse_config(text, std::path::Path::new("/tmp/proxy.toml"));
});
