//! Every bad proxy.toml gets its own message. Each fixture in tests/fixtures/config/bad names
//! the text it must produce in `# expect:` lines; `check-config` must fail with all of it.

use std::path::Path;
use std::process::Command;

use crate::harness::BINARY;

fn check_config(path: &Path) -> (bool, String) {
    let output = Command::new(BINARY).arg("--config").arg(path).arg("check-config").output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn every_bad_fixture_fails_with_its_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expectations: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect:")).map(str::trim).collect();
        assert!(!expectations.is_empty(), "{} has no `# expect:` line", path.display());
        let (ok, stderr) = check_config(&path);
        assert!(!ok, "{} was accepted", path.display());
        for expected in expectations {
            assert!(stderr.contains(expected), "{}: expected {expected:?} in:\n{stderr}", path.display());
        }
        checked += 1;
    }
    // A glob that silently matched nothing would make this test pass vacuously.
    assert!(checked >= 15, "only {checked} fixtures found in {}", dir.display());
}

#[test]
fn the_example_proxy_toml_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let (ok, stderr) = check_config(&example);
    assert!(ok, "proxy.toml: {stderr}");
}

#[test]
fn a_missing_config_file_says_so() {
    let (ok, stderr) = check_config(Path::new("/nonexistent/proxy.toml"));
    assert!(!ok);
    assert!(stderr.contains("cannot read /nonexistent/proxy.toml"), "{stderr}");
}
