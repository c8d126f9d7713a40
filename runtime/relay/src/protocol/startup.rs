//! The first packet of a connection: SSLRequest, GSSENCRequest, CancelRequest or a
//! StartupMessage, all framed as `int32 length` + `int32 code` + body.

use nom::bytes::complete::{tag, take_until};
use nom::number::complete::be_u32;
use nom::sequence::terminated;
use nom::{IResult, Parser};

use super::ClientKey;

/// Startup packets longer than this are refused, like PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0, the only version PostgreSQL 13–17 and libpq speak by default.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// The first packet of a connection (also the first one inside TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// SSLRequest: the client wants TLS.
    Ssl,
    /// GSSENCRequest: the client asks for GSSAPI encryption, which the relay declines.
    GssEnc,
    /// CancelRequest with the key the relay issued.
    Cancel(ClientKey),
    /// A StartupMessage.
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and parameters, in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// `major << 16 | minor`.
    pub version: u32,
    pub params: Vec<(String, String)>,
}

/// Why a first packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("startup packet length {0} is invalid (must be 8 to {MAX_STARTUP_LEN} bytes)")]
    Length(u32),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    Version { major: u32, minor: u32 },
    #[error("invalid {0} packet")]
    Malformed(&'static str),
    #[error("startup parameters must be valid UTF-8")]
    NotUtf8,
    /// PostgreSQL takes the last of two values and a naive reader the first: a parameter given
    /// twice could make the relay decide on one value while the server uses another.
    #[error("startup parameter \"{0}\" is given more than once")]
    Duplicate(String),
}

impl StartupError {
    /// What the client is told, as PostgreSQL would tell it: the SQLSTATE of a FATAL
    /// ErrorResponse, or `None` where PostgreSQL closes without a word (a length it cannot trust
    /// says nothing about the protocol the client speaks).
    pub fn sqlstate(&self) -> Option<&'static str> {
        match self {
            StartupError::Length(_) => None,
            StartupError::Version { .. } => Some(super::backend::FEATURE_NOT_SUPPORTED),
            StartupError::Malformed(_) | StartupError::NotUtf8 | StartupError::Duplicate(_) => {
                Some(super::backend::PROTOCOL_VIOLATION)
            }
        }
    }
}

impl Startup {
    /// Parses one first packet from the start of `input`. Returns the packet and the bytes it
    /// used, `Ok(None)` when more input is needed, or an error for anything invalid — including
    /// a length over [`MAX_STARTUP_LEN`] as soon as the length is known.
    pub fn parse(input: &[u8]) -> Result<Option<(Startup, usize)>, StartupError> {
        let Some(len_bytes) = input.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        if !(8..=MAX_STARTUP_LEN as u32).contains(&len) {
            return Err(StartupError::Length(len));
        }
        let len = len as usize;
        let Some(packet) = input.get(4..len) else {
            return Ok(None);
        };
        let (body, code) = be_u32::<_, nom::error::Error<&[u8]>>(packet)
            .map_err(|_| StartupError::Length(len as u32))?;
        // The special requests are "versions" 1234.5678 to 1234.5680; one with the wrong size
        // is no request PostgreSQL knows, and is refused like any other unknown version.
        let unknown = || StartupError::Version {
            major: code >> 16,
            minor: code & 0xffff,
        };
        let startup = match code {
            SSL_REQUEST if body.is_empty() => Startup::Ssl,
            GSSENC_REQUEST if body.is_empty() => Startup::GssEnc,
            CANCEL_REQUEST => Startup::Cancel(parse_cancel(body).ok_or_else(unknown)?),
            version if version >> 16 == 3 => Startup::Startup(StartupMessage {
                version,
                params: parse_params(body)?,
            }),
            _ => return Err(unknown()),
        };
        Ok(Some((startup, len)))
    }
}

fn parse_cancel(body: &[u8]) -> Option<ClientKey> {
    let parsed: IResult<&[u8], (u32, u32)> = (be_u32, be_u32).parse(body);
    match parsed {
        Ok((&[], (pid, secret))) => Some(ClientKey { pid, secret }),
        _ => None,
    }
}

fn cstr(input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(take_until(&b"\0"[..]), tag(&b"\0"[..])).parse(input)
}

/// `name\0value\0 … \0`, each name at most once.
fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let malformed = || StartupError::Malformed("StartupMessage");
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| StartupError::NotUtf8);
    let mut params: Vec<(String, String)> = Vec::new();
    let mut names = std::collections::HashSet::new();
    loop {
        let (rest, name) = cstr(body).map_err(|_| malformed())?;
        if name.is_empty() {
            return if rest.is_empty() {
                Ok(params)
            } else {
                Err(malformed())
            };
        }
        let (rest, value) = cstr(rest).map_err(|_| malformed())?;
        if !names.insert(name) {
            return Err(StartupError::Duplicate(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        params.push((text(name)?, text(value)?));
        body = rest;
    }
}

impl StartupMessage {
    /// The value of a parameter, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.version.to_be_bytes());
        for (name, value) in &self.params {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out.push(0);
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }
}

/// The wire form of an SSLRequest.
pub fn ssl_request() -> [u8; 8] {
    let mut out = [0; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

/// The wire form of a CancelRequest for an upstream backend.
pub fn cancel_request(key: super::BackendKey) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out[8..12].copy_from_slice(&key.pid.to_be_bytes());
    out[12..].copy_from_slice(&key.secret.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input` and compares the outcome's debug form with `expected`.
    fn check(input: &[u8], expected: &str) {
        let actual = match Startup::parse(input) {
            Ok(Some((startup, used))) => format!("{startup:?} used={used}"),
            Ok(None) => "incomplete".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(actual, expected, "input: {input:?}");
    }

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut out = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn first_packets() {
        check(&ssl_request(), "Ssl used=8");
        check(&packet(GSSENC_REQUEST, b""), "GssEnc used=8");
        check(
            &cancel_request(crate::protocol::BackendKey { pid: 7, secret: 9 }),
            "Cancel(ClientKey { pid: 7, secret: 9 }) used=16",
        );
        check(
            &packet(PROTOCOL_3_0, b"user\0app\0database\0orders\0\0"),
            "Startup(StartupMessage { version: 196608, params: [(\"user\", \"app\"), \
             (\"database\", \"orders\")] }) used=34",
        );
        // Trailing bytes belong to the caller (who decides whether they are a violation).
        let mut two = ssl_request().to_vec();
        two.extend_from_slice(b"\x16\x03");
        check(&two, "Ssl used=8");
    }

    #[test]
    fn incomplete_and_invalid_packets() {
        check(b"", "incomplete");
        check(&[0, 0, 0], "incomplete");
        check(&ssl_request()[..7], "incomplete");
        check(
            &[0, 0, 0, 4],
            "error: startup packet length 4 is invalid (must be 8 to 10000 bytes)",
        );
        check(
            &[0, 0, 0x27, 0x11],
            "error: startup packet length 10001 is invalid (must be 8 to 10000 bytes)",
        );
        check(
            &packet(SSL_REQUEST, b"x"),
            "error: unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0",
        );
        check(
            &packet(CANCEL_REQUEST, b"1234"),
            "error: unsupported frontend protocol 1234.5678: server supports 3.0 to 3.0",
        );
        check(
            &packet(4 << 16, b"user\0app\0\0"),
            "error: unsupported frontend protocol 4.0: server supports 3.0 to 3.0",
        );
        check(
            &packet(2 << 16, b""),
            "error: unsupported frontend protocol 2.0: server supports 3.0 to 3.0",
        );
        check(
            &packet((1234 << 16) | 5678, b""),
            "error: unsupported frontend protocol 1234.5678: server supports 3.0 to 3.0",
        );
        // A parameter given twice, whatever it is: PostgreSQL would use the last value.
        check(
            &packet(PROTOCOL_3_0, b"user\0app\0database\0shop\0user\0root\0\0"),
            "error: startup parameter \"user\" is given more than once",
        );
        check(
            &packet(
                PROTOCOL_3_0,
                b"application_name\0a\0application_name\0b\0\0",
            ),
            "error: startup parameter \"application_name\" is given more than once",
        );
        check(
            &packet(PROTOCOL_3_0, b"user\0app"),
            "error: invalid StartupMessage packet",
        );
        check(
            &packet(PROTOCOL_3_0, b"user\0app\0\0x"),
            "error: invalid StartupMessage packet",
        );
        check(
            &packet(PROTOCOL_3_0, b"user\0\xff\0\0"),
            "error: startup parameters must be valid UTF-8",
        );
    }

    #[test]
    fn startup_round_trips() {
        let message = StartupMessage {
            version: PROTOCOL_3_0,
            params: vec![
                ("user".into(), "app".into()),
                ("options".into(), "-c a=b".into()),
            ],
        };
        let encoded = message.encode();
        let (parsed, used) = Startup::parse(&encoded).unwrap().unwrap();
        assert_eq!(used, encoded.len());
        assert_eq!(parsed, Startup::Startup(message));
    }

    /// Property: no input makes the parser panic, and whatever it accepts fits in the input
    /// and in the length limit. Inputs come from a fixed-seed xorshift generator, biased
    /// towards plausible lengths and codes so that deep paths are reached.
    #[test]
    fn random_input_never_panics() {
        let mut next = crate::protocol::xorshift(0x9e37_79b9_7f4a_7c15);
        let codes = [
            SSL_REQUEST,
            GSSENC_REQUEST,
            CANCEL_REQUEST,
            PROTOCOL_3_0,
            0x0003_0002,
        ];
        for _ in 0..200_000 {
            let len = (next() % 64) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 8 && next().is_multiple_of(2) {
                let claimed = (next() % (len as u64 + 4)) as u32;
                input[..4].copy_from_slice(&claimed.to_be_bytes());
                let code = codes[(next() % codes.len() as u64) as usize];
                input[4..8].copy_from_slice(&code.to_be_bytes());
            }
            if let Ok(Some((_, used))) = Startup::parse(&input) {
                assert!(used <= input.len() && used <= MAX_STARTUP_LEN);
            }
        }
    }
}
