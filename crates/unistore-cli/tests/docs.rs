//! The man pages and completions come from the clap definitions: one page
//! per visible command, each naming its options; completion scripts for
//! the usual shells. No root needed.

mod common;

use common::*;

#[test]
fn man_pages_cover_every_command() {
    let td = tempfile::tempdir().unwrap();
    run_ok(unistore().args(["internals", "man"]).arg(td.path()));
    let page = |n: &str| {
        std::fs::read_to_string(td.path().join(format!("{n}.8")))
            .unwrap_or_else(|e| panic!("no page {n}.8: {e}"))
    };
    for (name, must) in [
        ("unistore", "\\-\\-sysroot"),
        (
            "unistore-install-to-filesystem",
            "\\-\\-root\\-mount\\-spec",
        ),
        ("unistore-status", "\\-\\-json"),
        ("unistore-upgrade", "\\-\\-check"),
        ("unistore-switch", "SYNOPSIS"),
        ("unistore-rollback", "SYNOPSIS"),
        ("unistore-image-set-unified", "\\-\\-enabled\\-with\\-copy"),
        ("unistore-image-list", "SYNOPSIS"),
        ("unistore-internals-fsck-images", "\\-\\-repair"),
        ("unistore-internals-gc", "\\-\\-dry\\-run"),
        ("unistore-internals-finalize-staged", "SYNOPSIS"),
    ] {
        let p = page(name);
        assert!(p.starts_with(".ie") || p.contains(".TH"), "{name}: {p}");
        assert!(p.contains(".TH"), "{name} has no title");
        assert!(p.contains(must), "{name}.8 does not mention {must}");
    }
    // Hidden helpers get no page.
    assert!(!td.path().join("unistore-internals-man.8").exists());
    let synopsis = page("unistore-install-to-filesystem");
    assert!(
        synopsis.contains("unistore install to\\-filesystem"),
        "the synopsis names the full command"
    );
}

#[test]
fn completions_for_the_usual_shells() {
    for (shell, needle) in [
        ("bash", "complete -F _unistore"),
        ("zsh", "#compdef unistore"),
        ("fish", "complete -c unistore"),
    ] {
        let out = run_ok(unistore().args(["internals", "completions", shell]));
        assert!(out.contains(needle), "{shell}: {out}");
        assert!(out.contains("set-unified"), "{shell} completes subcommands");
    }
    run_fails(
        unistore().args(["internals", "completions", "tcsh"]),
        "invalid value",
    );
}
