//! The CLI's output.

use std::process::Command;

use crate::harness::*;

fn policy_diff(old: &std::path::Path, new: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clearance"))
        .args(["policy", "diff"])
        .arg(old)
        .arg(new)
        .output()
        .expect("run the clearance binary");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `clearance policy diff` ends its output with one newline, with and
/// without differences.
#[test]
fn policy_diff_output_ends_with_a_newline() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/example.toml");
    let dir = std::env::temp_dir().join(unique("clearance-diff"));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(example).unwrap();
    let bumped = text.replacen("version = \"2026.12.1\"", "version = \"2026.12.2\"", 1);
    assert_ne!(text, bumped, "the example's version line was found");
    let new = dir.join("new.toml");
    std::fs::write(&new, bumped).unwrap();

    let same = policy_diff(example.as_ref(), example.as_ref());
    let changed = policy_diff(example.as_ref(), &new);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(same, "no differences\n");
    assert!(
        changed.contains("policy.version: 2026.12.1 -> 2026.12.2"),
        "{changed:?}"
    );
    assert!(
        changed.ends_with('\n') && !changed.ends_with("\n\n"),
        "one trailing newline: {changed:?}"
    );
}
