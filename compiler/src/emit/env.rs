//! The emit environment: everything impure an emitter needs (clock, key generation, the files
//! that exist now), gathered in one value so emitters stay pure and tests can pin it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use time::OffsetDateTime;

/// The directory under `--out` where `apply` keeps its own records (never an artifact).
pub const STATE_DIR: &str = ".dbward";

/// Prefix of the temporary files `apply` creates next to their targets; `read_dir` skips them
/// so a crashed apply never shows up as an artifact.
pub const TEMP_PREFIX: &str = ".dbward-tmp-";

/// Failures reading the output directory.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("cannot read {path}: {source}; check that the output directory is readable")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not valid UTF-8; rename it or move it out of the output directory")]
    NonUtf8Path { path: PathBuf },
    /// A private key that group or others may read or write, refused the way ssh refuses one.
    #[error(
        "private key {0} is accessible by group or others (mode {1:04o}); run `chmod 600 {0}` \
         (and replace the key if someone else may have copied it)",
        .path.display(),
        .mode
    )]
    KeyMode { path: PathBuf, mode: u32 },
}

/// Whether a file under `--out` holds a private key (every key dbward writes ends in `.key`).
pub fn is_private_key(path: &str) -> bool {
    path.ends_with(".key")
}

/// Refuses a private key whose permission bits let group or others in: like ssh, dbward does
/// not use a key that may have been read by someone else, and says how to fix the mode.
pub fn check_key_mode(path: &Path, mode: u32) -> Result<(), EnvError> {
    if mode & 0o077 != 0 {
        return Err(EnvError::KeyMode {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Reads a private key file after checking its mode ([`check_key_mode`]).
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, EnvError> {
    let read_err = |source| EnvError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    check_key_mode(path, meta.permissions().mode())?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes).map_err(read_err)?;
    Ok(bytes)
}

/// Failures generating a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate an ECDSA P-256 key: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("pinned test key {index} is not a PKCS#8 ECDSA P-256 key: {source}")]
    Pinned {
        index: usize,
        #[source]
        source: rcgen::Error,
    },
}

/// Where new private keys come from.
pub enum KeySource {
    /// Fresh random ECDSA P-256 keys (production).
    Random,
    /// PEM (PKCS#8) ECDSA P-256 keys handed out in order, wrapping around: lets tests pin key
    /// material. Signatures stay randomized (ECDSA), so pinning keys does not pin certificates.
    Pinned(Vec<String>),
}

/// Never prints pinned keys.
impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Random => f.write_str("Random"),
            KeySource::Pinned(keys) => write!(f, "Pinned({} keys, sensitive)", keys.len()),
        }
    }
}

/// One file currently under `--out`.
#[derive(Clone, PartialEq, Eq)]
pub struct ExistingFile {
    pub bytes: Vec<u8>,
    /// Unix permission bits (`0o777` mask).
    pub mode: u32,
}

/// Never prints content: it may be a private key, and `{:?}` ends up in logs and panics.
impl std::fmt::Debug for ExistingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExistingFile")
            .field("len", &self.bytes.len())
            .field("mode", &format_args!("{:04o}", self.mode))
            .finish()
    }
}

/// Everything impure an emitter may use.
#[derive(Debug)]
pub struct Env {
    /// The instant certificates are issued at and renewal windows are measured from.
    pub now: OffsetDateTime,
    /// Regular files currently under `--out`, by `/`-separated relative path (without
    /// `.dbward/` and without temp files). Emitters keep certificates from here byte for byte.
    pub existing: BTreeMap<String, ExistingFile>,
    pub keys: KeySource,
    /// Next index into a pinned key list.
    next_pinned: AtomicUsize,
}

impl Env {
    /// An environment with an explicit clock, existing files and key source.
    pub fn new(
        now: OffsetDateTime,
        existing: BTreeMap<String, ExistingFile>,
        keys: KeySource,
    ) -> Env {
        Env {
            now,
            existing,
            keys,
            next_pinned: AtomicUsize::new(0),
        }
    }

    /// The production environment for an output directory: the current time, random keys and
    /// every file under `out` (a missing directory is an empty one).
    pub fn read_dir(out: &Path) -> Result<Env, EnvError> {
        Ok(Env::new(
            OffsetDateTime::now_utc(),
            read_tree(out)?,
            KeySource::Random,
        ))
    }

    /// A test environment: pinned clock, the given existing files (mode taken as 0644 for
    /// `.crt`-like files and 0600 for `.key`) and random keys.
    pub fn for_tests(now: OffsetDateTime, existing: BTreeMap<String, Vec<u8>>) -> Env {
        let existing = existing
            .into_iter()
            .map(|(path, bytes)| {
                let mode = if path.ends_with(".key") { 0o600 } else { 0o644 };
                (path, ExistingFile { bytes, mode })
            })
            .collect();
        Env::new(now, existing, KeySource::Random)
    }

    /// The bytes of an existing file, if any.
    pub fn existing_bytes(&self, path: &str) -> Option<&[u8]> {
        self.existing.get(path).map(|f| f.bytes.as_slice())
    }

    /// A new ECDSA P-256 key pair.
    pub fn generate_key(&self) -> Result<KeyPair, KeyError> {
        match &self.keys {
            KeySource::Random => {
                KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(KeyError::Generate)
            }
            KeySource::Pinned(pems) if !pems.is_empty() => {
                let index = self.next_pinned.fetch_add(1, Ordering::Relaxed) % pems.len();
                KeyPair::from_pem(&pems[index]).map_err(|source| KeyError::Pinned { index, source })
            }
            // An empty pin list cannot pin anything; fall back to randomness rather than fail.
            KeySource::Pinned(_) => {
                KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(KeyError::Generate)
            }
        }
    }
}

/// Reads every regular file under `root` into memory, keyed by relative `/`-separated path.
/// Skips `.dbward/` (apply's records) and apply's temp files. Symlinks are not followed: an
/// artifact path that is a symlink is reported as absent, and apply replaces the link itself.
pub fn read_tree(root: &Path) -> Result<BTreeMap<String, ExistingFile>, EnvError> {
    let mut files = BTreeMap::new();
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(source) => {
            return Err(EnvError::Read {
                path: root.to_path_buf(),
                source,
            });
        }
        Ok(_) => {}
    }
    walk(root, root, &mut files)?;
    Ok(files)
}

fn walk(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, ExistingFile>,
) -> Result<(), EnvError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EnvError::Read { path, source }
    };
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(EnvError::NonUtf8Path { path });
        };
        if (dir == root && name == STATE_DIR) || name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let meta = entry.metadata().map_err(read_err(&path))?;
        if meta.is_dir() {
            walk(root, &path, files)?;
        } else if meta.is_file() {
            let relative = relative_path(root, &path)?;
            // Keys are reused (the CAs sign with them), so a key others could read is refused
            // before it is used, not just rewritten with a better mode.
            if is_private_key(&relative) {
                check_key_mode(&path, meta.permissions().mode())?;
            }
            let bytes = fs::read(&path).map_err(read_err(&path))?;
            files.insert(
                relative,
                ExistingFile {
                    bytes,
                    mode: meta.permissions().mode() & 0o777,
                },
            );
        }
    }
    Ok(())
}

/// `path` relative to `root`, `/`-separated.
fn relative_path(root: &Path, path: &Path) -> Result<String, EnvError> {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let mut parts = Vec::new();
    for part in relative.components() {
        match part.as_os_str().to_str() {
            Some(s) => parts.push(s),
            None => {
                return Err(EnvError::NonUtf8Path {
                    path: path.to_path_buf(),
                });
            }
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_tree_skips_state_and_temp_files_and_records_modes() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("ca")).unwrap();
        fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        fs::write(dir.path().join("ca/users-ca.key"), b"k").unwrap();
        fs::set_permissions(
            dir.path().join("ca/users-ca.key"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::write(dir.path().join(STATE_DIR).join("state.json"), b"{}").unwrap();
        fs::write(dir.path().join("ca").join(format!("{TEMP_PREFIX}x")), b"t").unwrap();
        let files = read_tree(dir.path()).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["ca/users-ca.key"]);
        assert_eq!(files["ca/users-ca.key"].mode, 0o600);
    }

    #[test]
    fn keys_that_group_or_others_may_read_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("ca")).unwrap();
        let key = dir.path().join("ca/users-ca.key");
        fs::write(&key, b"k").unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let error = read_tree(dir.path()).unwrap_err().to_string();
            assert!(error.contains(&format!("mode {mode:04o}")), "{error}");
            assert!(
                error.contains(&format!("chmod 600 {}", key.display())),
                "{error}"
            );
            assert!(read_private_key(&key).is_err());
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_private_key(&key).unwrap(), b"k");
        // Certificates may be world-readable.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(dir.path().join("ca/users-ca.crt"), b"c").unwrap();
        fs::set_permissions(
            dir.path().join("ca/users-ca.crt"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert_eq!(read_tree(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn read_tree_of_a_missing_directory_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_tree(&dir.path().join("nope")).unwrap().is_empty());
    }

    #[test]
    fn pinned_keys_cycle() {
        let a = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let env = Env::new(
            OffsetDateTime::UNIX_EPOCH,
            BTreeMap::new(),
            KeySource::Pinned(vec![a.serialize_pem()]),
        );
        assert_eq!(
            env.generate_key().unwrap().public_key_raw(),
            a.public_key_raw()
        );
        assert_eq!(
            env.generate_key().unwrap().public_key_raw(),
            a.public_key_raw()
        );
    }
}
