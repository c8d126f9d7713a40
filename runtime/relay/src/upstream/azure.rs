//! Azure Database for PostgreSQL upstreams with Microsoft Entra ID authentication.
//!
//! The password is an Entra ID access token for `https://ossrdbms-aad.database.windows.net`,
//! one per database user: each db-user is an Entra principal (a user-assigned managed identity
//! or an app registration) whose object id the server maps to the role
//! (`pgaadauth_create_principal_with_oid`), and the token must carry that `oid`. The relay asks
//! for each principal's token by its client id, from the sources in the Azure SDKs' order
//! ([`dbward_cloud::azure`]), and sends it in a PasswordMessage when the server asks for a
//! cleartext password.
//!
//! - **Tokens** are cached per client id in a [`TokenCache`], refreshed ahead of `expires_on`
//!   in the background and shared by every session: no HTTP on the session path in steady
//!   state. A token the database refused is invalidated, never used again, and the client's
//!   FATAL says which object id the token carried, which the role expects, and what Azure's
//!   messages mean.
//! - **Where and whom to trust**: the host is `<server>.postgres.database.azure.com` (the
//!   compiler writes it unless the manifest gives `host`), verified `verify-full` against the
//!   public roots Azure's certificates chain to, or against `ca-file` (the frozen `tls.ca`).
//!
//! The token cache is created on the first session (it needs the runtime), from the variables
//! read when the config was loaded ([`AzureEnv`]). Tokens never reach a log or error.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use dbward_cloud::azure::{AzureEnv, AzureError, Entra, Policy, unverified_claims};
use dbward_cloud::{Secret, TokenCache};
use dbward_frozen::EntraPrincipal;

use super::UpstreamError;
use crate::protocol::backend;

/// One Azure database of a loaded config.
#[derive(Debug)]
pub struct AzureAuth {
    /// `host:port`, for messages.
    server: String,
    tenant: String,
    principals: BTreeMap<String, EntraPrincipal>,
    env: AzureEnv,
    policy: Policy,
    tokens: Mutex<Option<TokenCache<String, AzureError>>>,
}

impl AzureAuth {
    pub fn new(
        server: String,
        tenant: String,
        principals: BTreeMap<String, EntraPrincipal>,
        env: AzureEnv,
        policy: Policy,
    ) -> AzureAuth {
        AzureAuth {
            server,
            tenant,
            principals,
            env,
            policy,
            tokens: Mutex::new(None),
        }
    }

    /// The same database reading `env`, refreshing by `policy` (and with an empty cache).
    pub fn with_env(&self, env: AzureEnv, policy: Policy) -> AzureAuth {
        AzureAuth::new(
            self.server.clone(),
            self.tenant.clone(),
            self.principals.clone(),
            env,
            policy,
        )
    }

    fn tokens(&self) -> Result<TokenCache<String, AzureError>, UpstreamError> {
        let mut tokens = lock(&self.tokens);
        if let Some(tokens) = &*tokens {
            return Ok(tokens.clone());
        }
        let entra = Entra::new(self.env.clone(), &self.tenant)
            .map_err(|e| UpstreamError::Auth(format!("cannot set up the Entra ID client: {e}")))?;
        let made = entra.tokens(tokio::runtime::Handle::current(), self.policy);
        *tokens = Some(made.clone());
        Ok(made)
    }

    fn principal(&self, user: &str) -> Result<&EntraPrincipal, UpstreamError> {
        self.principals.get(user).ok_or_else(|| {
            UpstreamError::Auth(format!(
                "the database user {user:?} of {} has no Entra principal in the relay's config; \
                 give the db-user its identity in the manifest (`db-user {user} client-id=\"…\" \
                 object-id=\"…\"`) and recompile with `dbward apply`",
                self.server
            ))
        })
    }

    /// The Entra token of database user `user`, from the cache. Taken before dialling, so a
    /// cold cache never holds a server backend open while Entra answers.
    pub(super) async fn login(&self, user: &str) -> Result<Secret, UpstreamError> {
        let principal = self.principal(user)?;
        let token = self
            .tokens()?
            .get(&principal.client_id.to_lowercase())
            .await
            .map_err(|e| {
                UpstreamError::Auth(format!(
                    "cannot get an Entra ID token for database user {user:?} (client id {}): {e}",
                    principal.client_id
                ))
            })?;
        Ok(token.secret)
    }

    /// The reply to authentication request `code` for `user`: a PasswordMessage with `token`
    /// (from [`AzureAuth::login`]) when the server asks for a cleartext password.
    pub(super) fn respond(
        &self,
        code: u32,
        user: &str,
        token: &Secret,
    ) -> Result<Vec<u8>, UpstreamError> {
        if code != 3 {
            return Err(UpstreamError::Auth(format!(
                "the Azure server {} asked for authentication method {code} instead of a cleartext \
                 password; {user:?} must be an Entra principal there (created by \
                 pgaadauth_create_principal_with_oid in the setup.sql `dbward apply` writes), and \
                 the server's authentication must include Microsoft Entra",
                self.server
            )));
        }
        Ok(password_message(token.expose()))
    }

    /// The database refused `token` for `user` with the ErrorResponse `frame` (SQLSTATE class
    /// 28): the token is invalidated, the refusal logged, and the frame returned for the
    /// client with a hint saying what Azure's messages mean for this role.
    pub(super) fn rejected(&self, user: &str, token: &Secret, frame: &[u8]) -> Vec<u8> {
        let body = frame.get(5..).unwrap_or_default();
        let Some(principal) = self.principals.get(user) else {
            return frame.to_vec();
        };
        if let Some(tokens) = &*lock(&self.tokens) {
            tokens.invalidate(&principal.client_id.to_lowercase(), token);
        }
        // The token's claims are not secret; they say whose it was.
        let claims = unverified_claims(token.expose());
        let claim = |name: &str| {
            claims
                .as_ref()
                .and_then(|c| c.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let carried = match claim("oid") {
            Some(oid)
                if principal
                    .object_id
                    .as_deref()
                    .is_some_and(|mapped| !oid.eq_ignore_ascii_case(mapped)) =>
            {
                format!(
                    "The token of client id {} carried object id {oid}, but the role is mapped \
                     to object id {}: the db-user's client-id and object-id name different \
                     identities; fix them in the manifest. ",
                    principal.client_id,
                    principal.object_id.as_deref().unwrap_or_default()
                )
            }
            Some(oid) if principal.object_id.is_none() => format!(
                "The token of client id {} carried object id {oid}; the manifest gives no \
                 object-id for this principal, so the server must map \"{user}\" to that one. ",
                principal.client_id
            ),
            Some(oid) => format!(
                "The token of client id {} carried object id {oid}, the one the manifest maps \
                 to the role. ",
                principal.client_id
            ),
            None => String::new(),
        };
        let hint = format!(
            "The database refused the Entra ID token for role \"{user}\"; the token is dropped \
             and the next session gets a new one. {carried}\"oid mismatch\" means the server maps \
             \"{user}\" to another object id than {object}: recreate it with \
             pgaadauth_create_principal_with_oid('{user}', '{object}', 'service', false, false) \
             (setup.sql does). \"An error occurred while validating the access token\" means \
             the token is not for this server: check that the identity is in tenant {tenant} \
             (the server's) and that Microsoft Entra authentication is enabled on {server}.",
            object = principal.object_id.as_deref().unwrap_or("the identity's"),
            tenant = self.tenant,
            server = self.server,
        );
        tracing::warn!(
            upstream = %self.server,
            user,
            client_id = %principal.client_id,
            code = backend::error_code(body).as_deref().unwrap_or("-"),
            message = %backend::error_message(body),
            "the database refused the Entra ID token. {hint}"
        );
        backend::with_hint(body, &hint)
    }
}

fn password_message(password: &str) -> Vec<u8> {
    let len = 4 + password.len() + 1;
    let mut out = Vec::with_capacity(1 + len);
    out.push(b'p');
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(password.as_bytes());
    out.push(0);
    out
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AzureAuth {
        let mut principals = BTreeMap::new();
        principals.insert(
            "reporting".to_owned(),
            EntraPrincipal {
                client_id: "11111111-1111-1111-1111-111111111111".into(),
                object_id: Some("aaaaaaaa-1111-1111-1111-111111111111".into()),
            },
        );
        AzureAuth::new(
            "srv.postgres.database.azure.com:5432".into(),
            "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            principals,
            AzureEnv::default(),
            Policy::default(),
        )
    }

    #[tokio::test]
    async fn a_user_without_a_principal_is_refused_before_any_token() {
        let error = auth().login("other").await.unwrap_err().to_string();
        assert!(error.contains("has no Entra principal"), "{error}");
        assert!(error.contains("db-user other client-id="), "{error}");
    }

    #[test]
    fn a_refused_token_names_the_object_ids_and_never_itself() {
        // {"oid":"bbbbbbbb-2222-2222-2222-222222222222"}
        let payload = "eyJvaWQiOiJiYmJiYmJiYi0yMjIyLTIyMjItMjIyMi0yMjIyMjIyMjIyMjIifQ";
        let token = Secret::new(format!("eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln"));
        let server = backend::fatal("28000", "oid mismatch", None);
        let frame = auth().rejected("reporting", &token, &server);
        let fields = backend::error_fields(&frame[5..]);
        let hint = &fields.iter().find(|(k, _)| *k == b'H').unwrap().1;
        for part in [
            "carried object id bbbbbbbb-2222-2222-2222-222222222222",
            "mapped to object id aaaaaaaa-1111-1111-1111-111111111111",
            "pgaadauth_create_principal_with_oid('reporting'",
            "tenant 72f988bf-86f1-41af-91ab-2d7cd011db47",
        ] {
            assert!(hint.contains(part), "{part} missing from {hint}");
        }
        assert!(!hint.contains(token.expose()), "{hint}");
        assert!(auth().respond(10, "reporting", &token).is_err());
    }
}
