//! Crash points for tests: `UNISTORE_CRASHPOINT=<name>` makes the process
//! SIGKILL itself when it reaches [`hit`]`(name)`, so tests can kill an
//! operation at a precise stage and check what a real crash leaves behind.
//! Without the variable, [`hit`] does nothing. `panic:<name>` panics there
//! instead, to test that a panic (ours or a library's) reaches the user as
//! one error line, after the unwinding has run the cleanup guards.

/// SIGKILLs this process if `UNISTORE_CRASHPOINT` names this point (panics
/// if it says `panic:<name>`).
pub fn hit(name: &str) {
    if std::env::var("UNISTORE_CRASHPOINT").is_ok_and(|v| v.strip_prefix("panic:") == Some(name)) {
        panic!("test panic at crash point {name}");
    }
    if std::env::var_os("UNISTORE_CRASHPOINT").is_some_and(|v| v == name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
