#![no_main]
//! The return-URL validator never returns anything but a path on the public origin.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(candidate) = std::str::from_utf8(data) else { return };
    let text = "upstream = \"http://127.0.0.1:1\"\npublic_url = \"https://app.example.com\"\ndata_dir = \"/tmp\"\n";
    let public = portcullis::fuzzing::parse_config(text, std::path::Path::new("/tmp/proxy.toml")).unwrap().public_url;
    if let Some(path) = portcullis::fuzzing::validate_return_url(candidate, &public) {
        assert!(path.starts_with('/') && !path.starts_with("//"));
        assert_eq!(public.url().join(&path).unwrap().origin(), public.url().origin());
    }
});
