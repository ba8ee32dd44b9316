//! Closed standard output: what every binary of the workspace does when the reader of
//! its output goes away (`ehi search … | head -2`).
//!
//! Rust ignores `SIGPIPE`, so a write to a closed pipe fails with `EPIPE`; `println!`
//! then panics ("failed printing to stdout: Broken pipe") and the process exits 101.
//! Restoring the default `SIGPIPE` action is not an option for processes that also
//! talk HTTP: a vectored write to a socket whose peer left would kill them.
//! Instead, [`exit_quietly_on_closed_pipe`] makes that one panic a quiet exit 0, and
//! [`quiet`] turns an error caused by a closed stdout into success at a binary's edge.

use std::io;
use std::sync::Once;

/// Makes the panic of `print!`/`println!` on a closed stdout end the process with
/// status 0 and nothing on stderr; every other panic is reported as before. Call it
/// first thing in `main`; calling it again does nothing.
pub fn exit_quietly_on_closed_pipe() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            if message.is_some_and(is_closed_stdout_panic) {
                std::process::exit(0);
            }
            previous(info);
        }));
    });
}

/// Whether `message` is the panic of a print macro whose stdout was closed.
fn is_closed_stdout_panic(message: &str) -> bool {
    let broken_pipe = io::Error::from_raw_os_error(nix::libc::EPIPE).to_string();
    message.starts_with("failed printing to stdout") && message.ends_with(&broken_pipe)
}

/// Whether `error` (or anything in its chain) is a write to a closed pipe.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `result`, with an error caused by a closed pipe turned into success: the reader
/// left, so there is nobody to tell.
pub fn quiet<T: Default>(result: anyhow::Result<T>) -> anyhow::Result<T> {
    match result {
        Err(e) if is_closed_pipe(&e) => Ok(T::default()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_print_panic_of_a_closed_stdout() {
        let broken = io::Error::from(io::ErrorKind::BrokenPipe);
        let os = io::Error::from_raw_os_error(nix::libc::EPIPE);
        assert!(is_closed_stdout_panic(&format!(
            "failed printing to stdout: {os}"
        )));
        assert!(!is_closed_stdout_panic(&format!(
            "failed printing to stderr: {os}"
        )));
        assert!(!is_closed_stdout_panic(
            "failed printing to stdout: No space left"
        ));
        assert!(is_closed_pipe(
            &anyhow::Error::from(broken).context("writing the blob")
        ));
        assert!(!is_closed_pipe(&anyhow::anyhow!("Broken pipe")));
        assert!(
            quiet(Err::<(), _>(
                io::Error::from(io::ErrorKind::BrokenPipe).into()
            ))
            .is_ok()
        );
        assert!(quiet(Err::<(), _>(anyhow::anyhow!("other"))).is_err());
    }
}
