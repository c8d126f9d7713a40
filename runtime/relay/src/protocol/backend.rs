//! Server messages the relay writes itself, and the header every regular message starts with.

use super::ClientKey;

/// SQLSTATE `28000` invalid_authorization_specification: every access refusal.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE `08P01` protocol_violation.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE `0A000` feature_not_supported: an unsupported protocol version or connection kind.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE `08006` connection_failure: the upstream could not be reached.
pub const CONNECTION_FAILURE: &str = "08006";
/// SQLSTATE `55006` object_in_use: the person's other sessions hold other rights.
pub const OBJECT_IN_USE: &str = "55006";
/// SQLSTATE `08004` sqlserver_rejected_establishment_of_sqlconnection: the person's database
/// user could not be provisioned.
pub const PROVISION_FAILED: &str = "08004";
/// SQLSTATE `53300` too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// SQLSTATE `57P05` idle_session_timeout.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// `admin_shutdown`: what `pg_terminate_backend` sends; the relay ends revoked sessions with it.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// SQLSTATE `25P03` idle_in_transaction_session_timeout.
pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";

/// Message type bytes of the backend messages the relay looks at.
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Header of a regular message: a type byte and an `int32` length that counts itself.
/// Returns the type and the whole frame's size, `Ok(None)` when fewer than 5 bytes are there.
pub fn frame_header(input: &[u8]) -> Result<Option<(u8, usize)>, InvalidLength> {
    let Some(header) = input.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(InvalidLength(len));
    }
    Ok(Some((header[0], 1 + len as usize)))
}

/// A message length below 4, which no valid message has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid message length {0}")]
pub struct InvalidLength(pub u32);

/// A FATAL ErrorResponse with a SQLSTATE, a message and an optional hint.
pub fn fatal(code: &str, message: &str, hint: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + message.len() + hint.map_or(0, str::len));
    out.push(tag::ERROR_RESPONSE);
    out.extend_from_slice(&[0; 4]);
    let mut field = |kind: u8, value: &str| {
        out.push(kind);
        // A NUL inside a field would end it early; names from clients are replaced.
        out.extend(value.bytes().map(|b| if b == 0 { b'?' } else { b }));
        out.push(0);
    };
    field(b'S', "FATAL");
    field(b'V', "FATAL");
    field(b'C', code);
    field(b'M', message);
    if let Some(hint) = hint {
        field(b'H', hint);
    }
    out.push(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

/// AuthenticationOk.
pub const AUTHENTICATION_OK: [u8; 9] = [tag::AUTHENTICATION, 0, 0, 0, 8, 0, 0, 0, 0];

/// BackendKeyData carrying a relay-issued key.
pub fn backend_key_data(key: ClientKey) -> [u8; 13] {
    let mut out = [0; 13];
    out[0] = tag::BACKEND_KEY_DATA;
    out[1..5].copy_from_slice(&12u32.to_be_bytes());
    out[5..9].copy_from_slice(&key.pid.to_be_bytes());
    out[9..].copy_from_slice(&key.secret.to_be_bytes());
    out
}

/// The fields of an ErrorResponse or NoticeResponse body, for logs (never relayed decoded).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

/// The message of an ErrorResponse body (field `M`), for logs.
pub fn error_message(body: &[u8]) -> String {
    error_fields(body)
        .into_iter()
        .find(|(kind, _)| *kind == b'M')
        .map(|(_, m)| m)
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// The SQLSTATE of an ErrorResponse body (field `C`).
pub fn error_code(body: &[u8]) -> Option<String> {
    error_fields(body)
        .into_iter()
        .find(|(kind, _)| *kind == b'C')
        .map(|(_, c)| c)
}

/// The ErrorResponse whose body is `body` (a server's), with `hint` as its hint: every other
/// field kept byte for byte, in order; a hint of its own replaced.
pub fn with_hint(body: &[u8], hint: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len() + hint.len());
    out.push(tag::ERROR_RESPONSE);
    out.extend_from_slice(&[0; 4]);
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        if field[0] != b'H' {
            out.extend_from_slice(field);
            out.push(0);
        }
    }
    out.push(b'H');
    out.extend(hint.bytes().map(|b| if b == 0 { b'?' } else { b }));
    out.push(0);
    out.push(0);
    let len = u32::try_from(out.len() - 1).unwrap_or(u32::MAX);
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_is_a_well_formed_error_response() {
        let bytes = fatal(INVALID_AUTHORIZATION, "no\0way", Some("ask"));
        let (kind, size) = frame_header(&bytes).unwrap().unwrap();
        assert_eq!((kind, size), (b'E', bytes.len()));
        assert_eq!(
            error_fields(&bytes[5..]),
            vec![
                (b'S', "FATAL".to_owned()),
                (b'V', "FATAL".to_owned()),
                (b'C', "28000".to_owned()),
                (b'M', "no?way".to_owned()),
                (b'H', "ask".to_owned()),
            ]
        );
        assert_eq!(error_message(&bytes[5..]), "no?way");
        assert_eq!(error_code(&bytes[5..]).as_deref(), Some("28000"));
    }

    #[test]
    fn a_hint_is_added_to_a_server_error() {
        let server = fatal("28P01", "PAM authentication failed", Some("old"));
        let bytes = with_hint(&server[5..], "check the clock");
        let (kind, size) = frame_header(&bytes).unwrap().unwrap();
        assert_eq!((kind, size), (b'E', bytes.len()));
        assert_eq!(
            error_fields(&bytes[5..]),
            vec![
                (b'S', "FATAL".to_owned()),
                (b'V', "FATAL".to_owned()),
                (b'C', "28P01".to_owned()),
                (b'M', "PAM authentication failed".to_owned()),
                (b'H', "check the clock".to_owned()),
            ]
        );
        // Garbage in, a well-formed frame out.
        let bytes = with_hint(b"\0\0xyz", "h");
        assert_eq!(frame_header(&bytes).unwrap().unwrap().1, bytes.len());
        assert_eq!(*bytes.last().unwrap(), 0);
    }

    #[test]
    fn frame_headers() {
        assert_eq!(frame_header(b"Z\0\0\0"), Ok(None));
        assert_eq!(frame_header(b"Z\0\0\0\x05I"), Ok(Some((b'Z', 6))));
        assert_eq!(frame_header(b"Z\0\0\0\x03"), Err(InvalidLength(3)));
    }
}
