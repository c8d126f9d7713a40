//! The Google client against the local fake Google servers (`dbward_cloud::gcp::fake`), which
//! check what Google checks: real HTTP on real sockets, real RS256 signatures.

use std::time::{Duration, Instant, SystemTime};

use dbward_cloud::gcp::fake::{FakeGoogle, OTHER_TEST_KEY};
use dbward_cloud::gcp::{
    Gcp, GcpEnv, GcpError, InstanceName, IpType, Policy, SQLSERVICE_LOGIN, service_account_email,
};
use dbward_cloud::http::Http;
use tokio::runtime::Handle;

const RELAY: &str = "dbward-relay@acme-prod.iam.gserviceaccount.com";
const READER: &str = "ledger-reader@acme-prod.iam";
const WRITER: &str = "ledger-writer@acme-prod.iam";
const ADMIN: &str = "ledger-admin@acme-prod.iam";

/// A fake where the relay may impersonate the three database accounts.
async fn fake() -> FakeGoogle {
    let fake = FakeGoogle::start().await;
    fake.add_account(RELAY);
    for user in [READER, WRITER, ADMIN] {
        let email = service_account_email(user);
        fake.add_account(&email);
        fake.allow_impersonation(RELAY, &email);
    }
    fake.allow_sql_client(RELAY);
    fake
}

/// The fake's variables plus `extra`.
fn env(fake: &FakeGoogle, extra: &[(&str, &str)]) -> GcpEnv {
    let mut vars = fake.env();
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    GcpEnv::from_vars(vars)
}

/// A `GOOGLE_APPLICATION_CREDENTIALS` file holding `text`.
fn credentials_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("credentials.json");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn client(env: GcpEnv) -> Gcp {
    Gcp::new(env, Handle::current()).unwrap()
}

/// Checks the login token the fake issued for `db_user`.
fn assert_login_token(fake: &FakeGoogle, token: &str, db_user: &str) {
    let issued = fake.token_info(token).expect("a token the fake issued");
    assert_eq!(issued.principal, service_account_email(db_user));
    assert_eq!(issued.scopes, [SQLSERVICE_LOGIN]);
    assert!(issued.expires_at > SystemTime::now() + Duration::from_secs(3000));
}

/// No secret (token, key, assertion, subject token) in `text`.
fn assert_no_secret(text: &str) {
    for secret in ["ya29.", "PRIVATE KEY", "eyJ", "subject-token-"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn a_service_account_key_signs_a_jwt_then_impersonates_each_database_user() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let key = credentials_file(&dir, &fake.key_file(RELAY));
    let gcp = client(env(&fake, &[("GOOGLE_APPLICATION_CREDENTIALS", &key)]));
    let logins = gcp.login_tokens(Handle::current(), Policy::default());
    for user in [READER, WRITER] {
        let token = logins.get(&service_account_email(user)).await.unwrap();
        assert_login_token(&fake, token.secret.expose(), user);
        assert_no_secret(&format!("{token:?} {gcp:?} {logins:?}"));
    }
    // One JWT exchange for the relay's own token, one impersonation per account; then the cache.
    logins.get(&service_account_email(READER)).await.unwrap();
    assert_eq!(fake.count("oauth"), 1);
    assert_eq!(
        fake.count(&format!("impersonate:{}", service_account_email(READER))),
        1
    );
    assert_eq!(
        fake.count("metadata"),
        0,
        "the key file comes before the metadata server"
    );
}

#[tokio::test]
async fn google_refuses_a_jwt_signed_with_another_key_or_for_another_audience() {
    let fake = fake().await;
    fake.key_file(RELAY); // registers the relay's real public key
    let dir = tempfile::tempdir().unwrap();
    let forged = credentials_file(
        &dir,
        &fake.key_file_signed_with(RELAY, OTHER_TEST_KEY, false),
    );
    let error = client(env(&fake, &[("GOOGLE_APPLICATION_CREDENTIALS", &forged)]))
        .own_token()
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, GcpError::CredentialsFile { .. }),
        "{error:?}"
    );
    assert!(message.contains("Invalid JWT Signature"), "{message}");
    assert_no_secret(&format!("{message} {error:?}"));

    // The right key, but an assertion whose `aud` is not the endpoint that receives it.
    let key = credentials_file(&dir, &fake.key_file(RELAY));
    let elsewhere = fake.url().replace("127.0.0.1", "localhost") + "/token";
    let message = client(env(
        &fake,
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", &key),
            ("DBWARD_GCP_OAUTH_TOKEN_URL", &elsewhere),
        ],
    ))
    .own_token()
    .await
    .unwrap_err()
    .to_string();
    assert!(message.contains("(aud)"), "{message}");
    assert_eq!(fake.count("oauth"), 0);
}

#[tokio::test]
async fn the_metadata_server_comes_last_and_needs_its_header() {
    let fake = fake().await;
    fake.attach_to_metadata(RELAY);
    let gcp = client(env(&fake, &[]));
    let token = gcp
        .login_tokens(Handle::current(), Policy::default())
        .get(&service_account_email(READER))
        .await
        .unwrap();
    assert_login_token(&fake, token.secret.expose(), READER);
    assert_eq!(fake.count("metadata"), 1);
    // What the fake checks: without `Metadata-Flavor: Google`, no token.
    let url = format!(
        "{}/computeMetadata/v1/instance/service-accounts/default/token",
        fake.url()
    );
    let answer = Http::new()
        .unwrap()
        .send(dbward_cloud::http::Call::new(hyper::Method::GET, &url))
        .await
        .unwrap();
    assert_eq!(answer.status, 403);
}

#[tokio::test]
async fn workload_identity_federation_exchanges_the_subject_token_at_sts() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("subject-token");
    std::fs::write(&subject, "subject-token-from-kubernetes\n").unwrap();
    let audience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/k8s/providers/cluster";
    let principal = "principal://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/k8s/subject/relay";
    let file = fake.federate(
        audience,
        "subject-token-from-kubernetes",
        principal,
        subject.to_str().unwrap(),
        Some(RELAY),
    );
    let path = credentials_file(&dir, &file);
    let gcp = client(env(&fake, &[("GOOGLE_APPLICATION_CREDENTIALS", &path)]));

    // The federated principal may not yet act as the relay's service account.
    let error = gcp.own_token().await.unwrap_err().to_string();
    assert!(error.contains("roles/iam.workloadIdentityUser"), "{error}");
    assert_no_secret(&error);

    fake.allow_impersonation(principal, RELAY);
    let token = gcp
        .login_tokens(Handle::current(), Policy::default())
        .get(&service_account_email(WRITER))
        .await
        .unwrap();
    assert_login_token(&fake, token.secret.expose(), WRITER);
    assert_eq!(fake.count("sts"), 2);
    assert_eq!(fake.count(&format!("impersonate:{RELAY}")), 1);

    // A subject token STS does not accept.
    std::fs::write(&subject, "subject-token-stale").unwrap();
    let fresh = client(env(&fake, &[("GOOGLE_APPLICATION_CREDENTIALS", &path)]));
    let error = fresh.own_token().await.unwrap_err().to_string();
    assert!(
        error.contains("subject token could not be verified"),
        "{error}"
    );
    assert_no_secret(&error);
}

#[tokio::test]
async fn without_credentials_the_error_lists_what_was_tried() {
    let error = client(GcpEnv::from_vars([("GCE_METADATA_HOST", "127.0.0.1:1")]))
        .own_token()
        .await
        .unwrap_err();
    assert!(matches!(error, GcpError::NoCredentials { .. }), "{error:?}");
    let message = error.to_string();
    for part in [
        "no Google credentials found",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "metadata server 127.0.0.1:1",
        "GCE_METADATA_HOST",
    ] {
        assert!(message.contains(part), "{part} missing from: {message}");
    }
    // A file that is set but broken is named, and the chain stops there.
    let dir = tempfile::tempdir().unwrap();
    let user = credentials_file(
        &dir,
        r#"{"type":"authorized_user","refresh_token":"1//secret"}"#,
    );
    let message = client(GcpEnv::from_vars([(
        "GOOGLE_APPLICATION_CREDENTIALS",
        user.as_str(),
    )]))
    .own_token()
    .await
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("user credentials") && message.contains(&user),
        "{message}"
    );
    assert!(!message.contains("1//secret"), "{message}");
}

#[tokio::test]
async fn refused_impersonation_names_the_role_and_unknown_accounts_say_so() {
    let fake = fake().await;
    fake.attach_to_metadata(RELAY);
    let stranger = "payroll@acme-prod.iam.gserviceaccount.com";
    fake.add_account(stranger);
    let gcp = client(env(&fake, &[]));
    let error = gcp
        .generate_access_token(stranger, &[SQLSERVICE_LOGIN])
        .await
        .unwrap_err();
    assert!(
        matches!(error, GcpError::ImpersonationDenied { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("roles/iam.serviceAccountTokenCreator") && message.contains(stranger),
        "{message}"
    );
    let message = gcp
        .generate_access_token(
            "ghost@acme-prod.iam.gserviceaccount.com",
            &[SQLSERVICE_LOGIN],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("does not exist"), "{message}");
    let message = gcp
        .generate_access_token("../evil", &[SQLSERVICE_LOGIN])
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("not a service account email"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_sessions_make_one_fetch_per_account() {
    let fake = fake().await;
    fake.attach_to_metadata(RELAY);
    fake.set_delay(Duration::from_millis(200));
    let gcp = client(env(&fake, &[]));
    let logins = gcp.login_tokens(Handle::current(), Policy::default());
    let users = [READER, WRITER, ADMIN];
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let logins = logins.clone();
            let user = users[i % 3];
            tokio::spawn(async move { (user, logins.get(&service_account_email(user)).await) })
        })
        .collect();
    for task in tasks {
        let (user, token) = task.await.unwrap();
        assert_login_token(&fake, token.unwrap().secret.expose(), user);
    }
    for user in users {
        assert_eq!(
            fake.count(&format!("impersonate:{}", service_account_email(user))),
            1,
            "{user}"
        );
    }
    assert_eq!(fake.count("metadata"), 1);
    assert_eq!(logins.fetches(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_ahead_of_expiry_and_no_caller_waits_or_fails() {
    let fake = fake().await;
    fake.attach_to_metadata(RELAY);
    fake.set_token_lifetime(Duration::from_secs(3));
    let policy = Policy {
        refresh_before: Duration::from_secs(2),
        min_remaining: Duration::from_millis(500),
        retry_after: Duration::from_millis(200),
    };
    let gcp = Gcp::with(
        env(&fake, &[]),
        Handle::current(),
        Http::new().unwrap(),
        policy,
    );
    let logins = gcp.login_tokens(Handle::current(), policy);
    let account = service_account_email(READER);
    logins.get(&account).await.unwrap();
    let started = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(7) {
        let asked = Instant::now();
        let token = logins.get(&account).await.expect("no caller fails");
        assert!(
            asked.elapsed() < Duration::from_millis(50),
            "a caller waited {:?}",
            asked.elapsed()
        );
        let issued = fake.token_info(token.secret.expose()).unwrap();
        assert!(
            issued.expires_at > SystemTime::now() + Duration::from_millis(400),
            "a token about to expire was handed out"
        );
        seen.insert(token.secret.expose().to_owned());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three-second tokens over seven seconds: several generations, all fetched in the background.
    assert!(seen.len() >= 4, "only {} tokens", seen.len());
}

#[tokio::test]
async fn a_token_the_database_refused_is_replaced() {
    let fake = fake().await;
    fake.attach_to_metadata(RELAY);
    let gcp = client(env(&fake, &[]));
    let logins = gcp.login_tokens(Handle::current(), Policy::default());
    let account = service_account_email(READER);
    let refused = logins.get(&account).await.unwrap();
    logins.invalidate(&account, &refused.secret);
    let next = logins.get(&account).await.unwrap();
    assert_ne!(next.secret, refused.secret);
    assert_login_token(&fake, next.secret.expose(), READER);
}

fn ledger() -> InstanceName {
    InstanceName::parse("acme-prod:us-central1:ledger").unwrap()
}

#[tokio::test]
async fn connect_settings_give_addresses_and_the_server_ca() {
    let fake = fake().await;
    fake.attach_to_metadata(RELAY);
    fake.add_instance(
        &ledger(),
        serde_json::json!({
            "kind": "sql#connectSettings",
            "serverCaCert": { "kind": "sql#sslCert", "cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" },
            "ipAddresses": [
                { "type": "PRIMARY", "ipAddress": "34.1.2.3" },
                { "type": "PRIVATE", "ipAddress": "10.0.0.5" },
                { "type": "OUTGOING", "ipAddress": "34.9.9.9" }
            ],
            "dnsName": "abc123.us-central1.sql.goog.",
            "pscEnabled": true,
            "region": "us-central1",
            "databaseVersion": "POSTGRES_15",
            "backendType": "SECOND_GEN"
        }),
    );
    let gcp = client(env(&fake, &[]));
    let settings = gcp.connect_settings(&ledger()).await.unwrap();
    assert!(settings.server_ca_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        settings.address(IpType::Public).as_deref(),
        Some("34.1.2.3")
    );
    assert_eq!(
        settings.address(IpType::Private).as_deref(),
        Some("10.0.0.5")
    );
    assert_eq!(
        settings.address(IpType::Psc).as_deref(),
        Some("abc123.us-central1.sql.goog")
    );
    assert_eq!(
        settings.dns_name.as_deref(),
        Some("abc123.us-central1.sql.goog")
    );

    let wrong_region = InstanceName::parse("acme-prod:europe-west1:ledger").unwrap();
    let message = gcp
        .connect_settings(&wrong_region)
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("is in region us-central1"), "{message}");

    let missing = InstanceName::parse("acme-prod:us-central1:nope").unwrap();
    let error = gcp.connect_settings(&missing).await.unwrap_err();
    assert!(
        matches!(error, GcpError::InstanceNotFound { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("acme-prod:us-central1:nope not found"),
        "{error}"
    );

    // Login tokens and ephemeral certificates: the certificate never outlives the token.
    fake.set_token_lifetime(Duration::from_secs(600));
    let login = gcp
        .generate_access_token(&service_account_email(READER), &[SQLSERVICE_LOGIN])
        .await
        .unwrap();
    let key = dbward_cloud::gcp::ClientKey::generate().unwrap();
    let cert = gcp
        .generate_ephemeral_cert(&ledger(), key.public_pem(), Some(&login.secret))
        .await
        .unwrap();
    assert!(cert.cert_pem.contains("BEGIN CERTIFICATE"));
    // Not an RSA public key: refused, as Cloud SQL Admin does.
    let error = gcp
        .generate_ephemeral_cert(
            &ledger(),
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n",
            Some(&login.secret),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("RSA public key"), "{error}");
    assert!(cert.expires_at.unwrap() <= login.expires_at + Duration::from_secs(1));
}

#[tokio::test]
async fn without_cloud_sql_client_the_error_names_the_role() {
    let fake = FakeGoogle::start().await;
    fake.attach_to_metadata(RELAY);
    let error = client(env(&fake, &[]))
        .connect_settings(&ledger())
        .await
        .unwrap_err();
    assert!(
        matches!(error, GcpError::InstanceDenied { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("roles/cloudsql.client"),
        "{error}"
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_background_refresh_is_logged_without_any_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime: the refresher logs on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let fake = fake().await;
    fake.attach_to_metadata(RELAY);
    fake.set_token_lifetime(Duration::from_secs(2));
    let policy = Policy {
        refresh_before: Duration::from_secs(1),
        min_remaining: Duration::from_millis(200),
        retry_after: Duration::from_millis(200),
    };
    let gcp = Gcp::with(
        env(&fake, &[]),
        Handle::current(),
        Http::new().unwrap(),
        policy,
    );
    let logins = gcp.login_tokens(Handle::current(), policy);
    let account = service_account_email(READER);
    let token = logins.get(&account).await.unwrap();
    fake.revoke_impersonation(RELAY, &account);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The old token is still handed out while it has time left; then the error comes through.
    let later = logins.get(&account).await;
    let error = later.unwrap_err().to_string();
    assert!(
        error.contains("roles/iam.serviceAccountTokenCreator"),
        "{error}"
    );
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("background refresh failed"), "{log}");
    assert!(!log.contains(token.secret.expose()), "{log}");
    assert_no_secret(&log);
}
