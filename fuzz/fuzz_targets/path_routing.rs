#![no_main]
//! Path normalisation is total and canonical; anything that normalises into the reserved prefix
//! is never sent to the gate.
use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::{Route, normalize, route};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let normal = normalize(path);
    assert!(normal.starts_with('/') && !normal.contains("//"));
    if normal.starts_with("/.portcullis/") {
        assert!(matches!(route(path), Route::Own(_)));
    }
});
