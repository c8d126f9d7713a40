//! systemd's readiness protocol (`sd_notify(3)`): tells the service manager when the relay is
//! ready, reloading and stopping, so `Type=notify-reload` units know when `systemctl start` and
//! `systemctl reload` have finished.
//!
//! When `$NOTIFY_SOCKET` is set, each state change is one datagram of `KEY=value` lines sent to
//! that Unix socket: a path, or an abstract name written `@name`. Without it every call is a
//! no-op. Only [`crate::ops::serve`] calls this, at startup, reload and drain: never a session.
//!
//! Why not the `sd-notify` crate: its 0.5 connects to `$NOTIFY_SOCKET` as a file path, so an
//! abstract socket (`@…`, which sd_notify(3) defines and some service managers hand out) fails;
//! the whole protocol is one `send` on a Unix datagram socket, done here with std in a few lines
//! and without `unsafe` (`CLOCK_MONOTONIC` comes from rustix).

use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where to send state changes: `None` when the relay was not started by a service manager.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`. A value that is not a usable socket address is logged and
    /// ignored: the relay serves either way, and the unit's start timeout will say it never
    /// became ready.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        // Non-blocking: a manager that stops reading must never stall the signal loop.
        let socket = UnixDatagram::unbound().and_then(|socket| {
            socket.set_nonblocking(true)?;
            Ok(socket)
        });
        match address(value.as_encoded_bytes()).and_then(|addr| Ok((socket?, addr))) {
            Ok(target) => Notifier {
                target: Some(target),
            },
            Err(error) => {
                tracing::warn!(
                    socket = %value.to_string_lossy(),
                    %error,
                    "NOTIFY_SOCKET is not a usable unix socket; the service manager will not \
                     hear that the relay is ready"
                );
                Notifier { target: None }
            }
        }
    }

    /// `READY=1`, with the relay's pid (so the manager follows the right process) and a status.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nMAINPID={}\nSTATUS={}\n",
            std::process::id(),
            one_line(status)
        ));
    }

    /// `RELOADING=1` with the `CLOCK_MONOTONIC` time, as `Type=notify-reload` requires; a
    /// [`Notifier::ready`] must follow when the reload has finished, whatever its outcome.
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config\n"
        ));
    }

    /// `STOPPING=1`: the drain has started.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)));
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), addr) {
            // Not fatal: the relay serves whether or not the manager listens.
            tracing::warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
}

/// `$NOTIFY_SOCKET` as a socket address: `@name` is Linux's abstract namespace, anything else
/// an absolute path (sd_notify(3) accepts nothing else).
fn address(value: &[u8]) -> io::Result<SocketAddr> {
    match value {
        [b'@', name @ ..] => abstract_address(name),
        [b'/', ..] => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(value)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "expected an absolute path or @abstract-name",
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt as _;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt as _;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

/// A status is one line of the message: newlines would start new (bogus) assignments.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(
            address(b"/run/systemd/notify")
                .unwrap()
                .as_pathname()
                .is_some()
        );
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = address(b"@dbward/notify").unwrap();
            assert_eq!(addr.as_abstract_name(), Some(&b"dbward/notify"[..]));
        }
        for bad in [&b""[..], b"relative/path", b"notify"] {
            let error = address(bad).unwrap_err();
            assert!(error.to_string().contains("absolute path"), "{error}");
        }
    }

    #[test]
    fn a_status_stays_on_one_line() {
        assert_eq!(one_line("refused:\nbad file\r"), "refused: bad file ");
    }
}
