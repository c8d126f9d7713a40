//! The upstream's side of startup as the relay reads it, with no I/O: authentication
//! requests until AuthenticationOk, then ParameterStatus/NoticeResponse and BackendKeyData
//! until ReadyForQuery. [`super::connect`] feeds it the messages it reads and does the
//! writing; the fuzz target `upstream_startup` feeds it arbitrary bytes.

use crate::protocol::BackendKey;
use crate::protocol::backend::{self, tag};
use crate::protocol::frames::Frame;

/// The largest message accepted from an upstream during startup.
pub const MAX_STARTUP_MESSAGE: usize = 64 * 1024;

/// Where the upstream's startup is, and what it has said so far.
#[derive(Debug, Default)]
pub struct Handshake {
    /// Set once AuthenticationOk arrived; the greeting phase follows.
    authenticated: bool,
    backend_key: Option<BackendKey>,
    /// ParameterStatus and NoticeResponse frames of the greeting phase, whole and in order.
    greeting: Vec<u8>,
}

/// What the relay does after one upstream message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: read the next message.
    Continue,
    /// The upstream asked for authentication with this method code (never 0, which is
    /// AuthenticationOk); the caller answers it or gives up.
    Authenticate(u32),
    /// ReadyForQuery ended startup.
    Ready(Greeting),
}

/// What the upstream sent from AuthenticationOk to ReadyForQuery.
#[derive(Debug, PartialEq, Eq)]
pub struct Greeting {
    /// The upstream backend's cancel key (absent if the server sent none).
    pub backend_key: Option<BackendKey>,
    /// ParameterStatus and NoticeResponse messages, whole and in order, for the client.
    pub messages: Vec<u8>,
    /// The ReadyForQuery message.
    pub ready: Vec<u8>,
}

/// Why the upstream's startup failed.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// An ErrorResponse: the frame (relayed to the client as is) and its message.
    Refused { frame: Vec<u8>, message: String },
    /// A message that has no place here, or a malformed one.
    Protocol(String),
}

impl Handshake {
    /// Takes the next whole message from the upstream.
    pub fn on_message(&mut self, frame: Frame) -> Result<Step, HandshakeError> {
        let protocol = |reason: &str| Err(HandshakeError::Protocol(reason.to_owned()));
        if frame.tag == tag::ERROR_RESPONSE {
            let message = backend::error_message(frame.body());
            return Err(HandshakeError::Refused {
                frame: frame.bytes,
                message,
            });
        }
        if !self.authenticated {
            return match frame.tag {
                tag::AUTHENTICATION => match frame.body().get(..4) {
                    None => protocol("short authentication message"),
                    Some([0, 0, 0, 0]) => {
                        self.authenticated = true;
                        Ok(Step::Continue)
                    }
                    Some(b) => Ok(Step::Authenticate(u32::from_be_bytes([
                        b[0], b[1], b[2], b[3],
                    ]))),
                },
                tag::NEGOTIATE_PROTOCOL_VERSION | tag::NOTICE_RESPONSE => Ok(Step::Continue),
                other => Err(HandshakeError::Protocol(format!(
                    "unexpected message {:?} during authentication",
                    other as char
                ))),
            };
        }
        match frame.tag {
            tag::PARAMETER_STATUS | tag::NOTICE_RESPONSE => {
                self.greeting.extend_from_slice(&frame.bytes);
                Ok(Step::Continue)
            }
            tag::BACKEND_KEY_DATA => match *frame.body() {
                [p0, p1, p2, p3, s0, s1, s2, s3] => {
                    self.backend_key = Some(BackendKey {
                        pid: u32::from_be_bytes([p0, p1, p2, p3]),
                        secret: u32::from_be_bytes([s0, s1, s2, s3]),
                    });
                    Ok(Step::Continue)
                }
                _ => protocol("invalid BackendKeyData"),
            },
            tag::READY_FOR_QUERY => Ok(Step::Ready(Greeting {
                backend_key: self.backend_key,
                messages: std::mem::take(&mut self.greeting),
                ready: frame.bytes,
            })),
            other => Err(HandshakeError::Protocol(format!(
                "unexpected message {:?} during startup",
                other as char
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Frame {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        bytes.extend_from_slice(body);
        Frame { tag, bytes }
    }

    #[test]
    fn a_normal_startup() {
        let mut handshake = Handshake::default();
        let mut step = |f| handshake.on_message(f);
        assert_eq!(step(frame(b'R', &[0, 0, 0, 3])), Ok(Step::Authenticate(3)));
        assert_eq!(step(frame(b'R', &[0, 0, 0, 0])), Ok(Step::Continue));
        let status = frame(b'S', b"server_version\x0015\0");
        assert_eq!(step(status.clone()), Ok(Step::Continue));
        assert_eq!(
            step(frame(b'K', &[0, 0, 0, 7, 0, 0, 0, 9])),
            Ok(Step::Continue)
        );
        assert_eq!(
            step(frame(b'Z', b"I")),
            Ok(Step::Ready(Greeting {
                backend_key: Some(BackendKey { pid: 7, secret: 9 }),
                messages: status.bytes,
                ready: frame(b'Z', b"I").bytes,
            }))
        );
    }

    #[test]
    fn malformed_and_misplaced_messages() {
        let first = |f| Handshake::default().on_message(f);
        let protocol = |m: &str| Err(HandshakeError::Protocol(m.to_owned()));
        assert_eq!(
            first(frame(b'R', &[0, 0])),
            protocol("short authentication message")
        );
        assert_eq!(
            first(frame(b'Z', b"I")),
            protocol("unexpected message 'Z' during authentication")
        );
        let refused = frame(b'E', b"SFATAL\0Mno\0\0");
        assert_eq!(
            first(refused.clone()),
            Err(HandshakeError::Refused {
                frame: refused.bytes,
                message: "no".into()
            })
        );
        let mut after_ok = Handshake::default();
        after_ok.on_message(frame(b'R', &[0; 4])).unwrap();
        assert_eq!(
            after_ok.on_message(frame(b'K', &[0; 7])),
            protocol("invalid BackendKeyData")
        );
        assert_eq!(
            after_ok.on_message(frame(b'R', &[0; 4])),
            protocol("unexpected message 'R' during startup")
        );
    }
}
