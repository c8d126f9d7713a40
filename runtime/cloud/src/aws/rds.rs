//! The RDS IAM auth token: a SigV4 *presigned* `GET https://HOST:PORT/?Action=connect
//! &DBUser=USER` for the service `rds-db` in the database's region, valid for 15 minutes,
//! without its `https://` prefix, signed with the `aws-sigv4` crate. The caller passes the
//! signing time: AWS's time as [`super::ClockSkew`] has learned it.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;

use super::credentials::Credentials;

/// How long RDS accepts a token (its maximum).
pub const TOKEN_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// The RDS auth token for `user` at `endpoint` (`host:port`) in `region`, signed at `time`.
pub fn auth_token(
    endpoint: &str,
    region: &str,
    user: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<String, String> {
    let url = format!(
        "https://{endpoint}/?Action=connect&DBUser={}",
        percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC)
    );
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        credentials.expiry,
        "dbward-relay",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_VALIDITY);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| format!("cannot sign the RDS auth token: {e}"))?
        .into();
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| format!("cannot sign the RDS auth token for {endpoint}: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("cannot sign the RDS auth token for {endpoint}: {e}"))?
        .into_parts();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(&url)
        .body(())
        .map_err(|e| format!("invalid RDS endpoint {endpoint}: {e}"))?;
    instructions.apply_to_request_http1x(&mut request);
    let signed = request.uri().to_string();
    Ok(signed
        .strip_prefix("https://")
        .unwrap_or(&signed)
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
            expiry: None,
            source: "test",
        }
    }

    #[test]
    fn the_token_is_a_presigned_connect_url() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = auth_token(
            "db.example.com:5432",
            "eu-west-1",
            "app user",
            &credentials(None),
            time,
        )
        .unwrap();
        assert!(
            token.starts_with("db.example.com:5432/?Action=connect&DBUser=app%20user&"),
            "{token}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Frds-db%2Faws4_request",
            "X-Amz-Date=20231114T221320Z",
            "X-Amz-Expires=900",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=",
        ] {
            assert!(token.contains(part), "{part} missing from {token}");
        }
        assert!(!token.contains("wJalrXUtnFEMI"));
        // Deterministic for a fixed time; any input change changes the signature.
        let again = auth_token(
            "db.example.com:5432",
            "eu-west-1",
            "app user",
            &credentials(None),
            time,
        )
        .unwrap();
        assert_eq!(token, again);
        let other = auth_token(
            "db.example.com:5432",
            "eu-west-2",
            "app user",
            &credentials(None),
            time,
        )
        .unwrap();
        assert_ne!(token, other);
    }

    #[test]
    fn a_session_token_is_signed_into_the_url() {
        let token = auth_token(
            "h:5432",
            "us-east-1",
            "u",
            &credentials(Some("sess/token")),
            SystemTime::now(),
        )
        .unwrap();
        assert!(
            token.contains("X-Amz-Security-Token=sess%2Ftoken"),
            "{token}"
        );
    }
}
