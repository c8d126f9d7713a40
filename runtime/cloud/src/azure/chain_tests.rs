//! The credential chain against the fake Entra ID: each source, and each error path.

use super::fake::{FakeEntra, OTHER_KEY, TEST_APP_CERT, TEST_APP_KEY};
use super::*;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const APP: &str = "11111111-1111-1111-1111-111111111111";
const APP_OID: &str = "aaaaaaaa-1111-1111-1111-111111111111";
const OTHER: &str = "22222222-2222-2222-2222-222222222222";
const OTHER_OID: &str = "bbbbbbbb-2222-2222-2222-222222222222";

async fn fake() -> FakeEntra {
    let fake = FakeEntra::start(TENANT).await;
    fake.add_principal(APP, APP_OID);
    fake.add_principal(OTHER, OTHER_OID);
    fake
}

fn entra(fake: &FakeEntra, vars: &[(&str, &str)]) -> Entra {
    let mut env = fake.env();
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Entra::new(AzureEnv::from_vars(env), TENANT).unwrap()
}

fn oid(token: &Token) -> String {
    unverified_claims(token.secret.expose()).unwrap()["oid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn env_secret_applies_to_its_client_id_only() {
    let fake = fake().await;
    fake.add_secret(APP, "s3cret~value");
    fake.assign_to_vm(OTHER);
    let entra = entra(
        &fake,
        &[
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", APP),
            ("AZURE_CLIENT_SECRET", "s3cret~value"),
        ],
    );
    let token = entra.token(APP).await.unwrap();
    assert_eq!(oid(&token), APP_OID);
    assert_eq!(
        fake.token_info(token.secret.expose()).unwrap().source,
        "secret"
    );
    // Another principal falls through to managed identity.
    let other = entra.token(OTHER).await.unwrap();
    assert_eq!(
        fake.token_info(other.secret.expose()).unwrap().source,
        "imds"
    );
    assert_eq!(oid(&other), OTHER_OID);
    assert!(token.expires_at > SystemTime::now() + Duration::from_secs(3000));
}

#[tokio::test]
async fn a_wrong_secret_is_explained_and_not_shown() {
    let fake = fake().await;
    fake.add_secret(APP, "right");
    let entra = entra(
        &fake,
        &[
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", APP),
            ("AZURE_CLIENT_SECRET", "wrong-secret-value"),
        ],
    );
    let error = entra.token(APP).await.unwrap_err().to_string();
    assert!(error.contains("AADSTS7000215"), "{error}");
    assert!(
        error.contains("set AZURE_CLIENT_SECRET to the secret's value"),
        "{error}"
    );
    assert!(!error.contains("wrong-secret-value"), "{error}");
    // An unknown tenant.
    let entra2 = super::Entra::new(
        AzureEnv::from_vars(fake.env().into_iter().chain([
            ("AZURE_TENANT_ID".to_owned(), OTHER.to_owned()),
            ("AZURE_CLIENT_ID".to_owned(), APP.to_owned()),
            ("AZURE_CLIENT_SECRET".to_owned(), "right".to_owned()),
        ])),
        TENANT,
    )
    .unwrap();
    let error = entra2.token(APP).await.unwrap_err().to_string();
    assert!(
        error.contains("AADSTS90002") && error.contains("AZURE_TENANT_ID"),
        "{error}"
    );
}

#[tokio::test]
async fn env_certificate_signs_an_assertion_entra_accepts() {
    let fake = fake().await;
    fake.add_certificate(APP, TEST_APP_CERT, TEST_APP_KEY);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("app.pem");
    std::fs::write(&good, format!("{TEST_APP_CERT}{TEST_APP_KEY}")).unwrap();
    let vars = |path: &std::path::Path| {
        vec![
            ("AZURE_TENANT_ID", TENANT.to_owned()),
            ("AZURE_CLIENT_ID", APP.to_owned()),
            ("AZURE_CLIENT_CERTIFICATE_PATH", path.display().to_string()),
        ]
    };
    let with = |path: &std::path::Path| {
        let vars = vars(path);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        entra(&fake, &vars)
    };
    let token = with(&good).token(APP).await.unwrap();
    assert_eq!(
        fake.token_info(token.secret.expose()).unwrap().source,
        "certificate"
    );
    // The same certificate with another key: the signature does not verify.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, format!("{TEST_APP_CERT}{OTHER_KEY}")).unwrap();
    let error = with(&bad).token(APP).await.unwrap_err().to_string();
    assert!(
        error.contains("AADSTS700027") && error.contains("upload the certificate"),
        "{error}"
    );
    // A file without a key.
    let nokey = dir.path().join("nokey.pem");
    std::fs::write(&nokey, TEST_APP_CERT).unwrap();
    let error = with(&nokey).token(APP).await.unwrap_err().to_string();
    assert!(error.contains("no unencrypted PEM private key"), "{error}");
    assert!(!error.contains("PRIVATE KEY-----"), "{error}");
}

#[tokio::test]
async fn workload_identity_reads_the_token_file_each_time_for_any_client_id() {
    let fake = fake().await;
    fake.add_federated(APP, "k8s-sa-token-1");
    fake.add_federated(OTHER, "k8s-sa-token-1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "k8s-sa-token-1\n").unwrap();
    let path = file.display().to_string();
    let entra = entra(
        &fake,
        &[
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_FEDERATED_TOKEN_FILE", &path),
        ],
    );
    for (id, object) in [(APP, APP_OID), (OTHER, OTHER_OID)] {
        let token = entra.token(id).await.unwrap();
        assert_eq!(oid(&token), object);
        assert_eq!(
            fake.token_info(token.secret.expose()).unwrap().source,
            "federated"
        );
    }
    // Rotated to a token the apps do not trust: read again, and refused.
    std::fs::write(&file, "k8s-sa-token-2").unwrap();
    let error = entra.token(APP).await.unwrap_err().to_string();
    assert!(
        error.contains("AADSTS70021") && error.contains("federated credential"),
        "{error}"
    );
    assert!(!error.contains("k8s-sa-token"), "{error}");
}

#[tokio::test]
async fn managed_identity_by_imds_and_app_service() {
    let fake = fake().await;
    fake.assign_to_vm(APP);
    let vm = entra(&fake, &[]);
    let token = vm.token(APP).await.unwrap();
    assert_eq!(oid(&token), APP_OID);
    // Not assigned to this VM.
    let error = vm.token(OTHER).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "the managed identity {OTHER} is not assigned to this host"
        )),
        "{error}"
    );
    // App Service: the identity header is checked.
    fake.assign_to_app_service("header-secret", OTHER);
    let mut vars = fake.app_service_env("header-secret");
    vars.extend(fake.env());
    let app = Entra::new(AzureEnv::from_vars(vars), TENANT).unwrap();
    let token = app.token(OTHER).await.unwrap();
    assert_eq!(
        fake.token_info(token.secret.expose()).unwrap().source,
        "app-service"
    );
    let wrong = Entra::new(AzureEnv::from_vars(fake.app_service_env("nope")), TENANT).unwrap();
    let error = wrong.token(OTHER).await.unwrap_err().to_string();
    assert!(error.contains("HTTP 401"), "{error}");
    assert!(!error.contains("nope"), "{error}");
}

#[tokio::test]
async fn no_credentials_lists_every_source_tried() {
    // IMDS on a loopback port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let entra = Entra::new(
        AzureEnv::from_vars([("AZURE_POD_IDENTITY_AUTHORITY_HOST", dead.as_str())]),
        TENANT,
    )
    .unwrap();
    let error = entra.token(APP).await.unwrap_err().to_string();
    for part in [
        "no Azure credentials for the Entra principal with client id",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "IMDS",
    ] {
        assert!(error.contains(part), "{part} missing: {error}");
    }
    let error = entra.token("not-a-guid").await.unwrap_err().to_string();
    assert!(error.contains("is not a client id"), "{error}");
}

#[tokio::test]
async fn tokens_are_cached_per_principal() {
    let fake = fake().await;
    fake.assign_to_vm(APP);
    fake.assign_to_vm(OTHER);
    let entra = entra(&fake, &[]);
    let cache = entra.tokens(Handle::current(), Policy::default());
    let a = cache.get(&APP.to_owned()).await.unwrap();
    assert_eq!(cache.get(&APP.to_owned()).await.unwrap(), a);
    let b = cache.get(&OTHER.to_owned()).await.unwrap();
    assert_ne!(a, b);
    assert_eq!((fake.count(APP), fake.count(OTHER)), (1, 1));
    assert!(format!("{a:?} {cache:?}").find("eyJ").is_none());
    // Tokens fit in what PAM passes on.
    assert!(a.secret.expose().len() < 511, "{}", a.secret.expose().len());
}
