#![no_main]
//! Cookie values are decoded strictly: only our exact encoding is an id, and it round-trips.
use libfuzzer_sys::fuzz_target;
use portcullis::domain::session::SessionId;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    if let Some(id) = SessionId::from_cookie(value) {
        assert_eq!(id.cookie_value(), value);
    }
});
