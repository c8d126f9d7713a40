//! Mutual-TLS upstreams: the relay's client certificate is the whole authentication.
//!
//! PostgreSQL maps the certificate's CN to the requested user through `pg_ident.conf` and
//! answers AuthenticationOk straight away. Any request for a password means the server's
//! `pg_hba.conf` is not the one `dbward apply` generated, so the session is refused with a
//! message saying so rather than with a password nobody has.

use super::UpstreamError;

/// The reply to an authentication request other than AuthenticationOk: there is none.
pub(super) fn respond(code: u32, address: &str) -> Result<Vec<u8>, UpstreamError> {
    let method = match code {
        3 => "a cleartext password",
        5 => "an MD5 password",
        10 => "SCRAM (SASL)",
        7 | 8 => "GSSAPI",
        9 => "SSPI",
        _ => "an unknown method",
    };
    Err(UpstreamError::Auth(format!(
        "the server at {address} asked for {method} instead of accepting the relay's \
         certificate; install the pg_hba.conf that `dbward apply` generated (hostssl … cert \
         map=dbward) and reload PostgreSQL"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_request_is_refused_with_the_fix() {
        for (code, method) in [(3, "cleartext"), (5, "MD5"), (10, "SCRAM"), (99, "unknown")] {
            let message = respond(code, "db:5432").unwrap_err().to_string();
            assert!(message.contains(method), "{message}");
            assert!(
                message.contains("db:5432") && message.contains("pg_hba.conf"),
                "{message}"
            );
        }
    }
}
