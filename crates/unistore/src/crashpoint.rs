//! Crash points for tests: `UNISTORE_CRASHPOINT=<name>` makes the process
//! SIGKILL itself when it reaches [`hit`]`(name)`, so tests can kill an
//! operation at a precise stage and check what a real crash leaves behind.
//! Without the variable, [`hit`] does nothing.

/// SIGKILLs this process if `UNISTORE_CRASHPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var_os("UNISTORE_CRASHPOINT").is_some_and(|v| v == name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
