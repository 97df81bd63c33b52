//! `completions` and `man`.

use crate::harness::{run_rtask, stderr_text, stdout_text};

#[test]
fn completions_print_scripts() {
    let dir = tempfile::tempdir().expect("create temporary directory");

    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = run_rtask(dir.path(), &["completions", shell]);

        assert!(output.status.success(), "{shell}: {}", stderr_text(&output));
        let script = stdout_text(&output);
        assert!(script.contains("rtask"), "{shell} script: {script}");
        assert!(script.contains("add-key"), "{shell} script: {script}");
    }
}

#[test]
fn man_prints_roff_page() {
    let dir = tempfile::tempdir().expect("create temporary directory");

    let output = run_rtask(dir.path(), &["man"]);

    assert!(output.status.success(), "{}", stderr_text(&output));
    let page = stdout_text(&output);
    assert!(page.contains(".TH"), "man page: {page}");
    assert!(page.contains("rtask"), "man page: {page}");
}
