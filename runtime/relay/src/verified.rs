//! Certificate chains that passed verification, remembered so that the next session presenting
//! the very same bytes does not verify them again.
//!
//! Every session verifies two chains: the client's (against the users' CA) and the upstream
//! server's (against the server CA, for the server name). A person's psql, a connection pool or
//! a CI job presents the same certificate over and over, and verifying it again is an ECDSA
//! signature check each time — a tenth of the relay's CPU per session.
//!
//! **Why this is safe.** Chain verification is a function of the certificate bytes, the trust
//! anchors, the name asked for and the time. The key here is a SHA-256 of everything but the
//! time and the anchors (length-prefixed, so two different chains cannot be spelled alike); the
//! anchors are fixed for the life of the cache, which is rebuilt with the TLS configs on every
//! config load; and an entry is never used at or after the earliest `notAfter` in its chain, so
//! a certificate that expires is verified again (and refused). Only successes are remembered.
//! What is *not* cached is the handshake signature (CertificateVerify), which proves that the
//! peer holds the key: it is checked on every handshake, so copying a certificate gains nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};

/// How long a verified chain is remembered at most. Nothing but time changes the answer (see
/// the module comment); this only lets go of certificates that stopped being presented.
pub const TTL: Duration = Duration::from_secs(600);

/// Chains remembered at most; when full, expired entries go first, then everything.
pub const CAPACITY: usize = 8192;

/// What identifies a chain and what it was verified for.
pub type ChainKey = [u8; 32];

/// The key of `end_entity` + `intermediates`, verified for `context` (the server name, or
/// nothing for client certificates).
pub fn chain_key(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    context: &[u8],
) -> ChainKey {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |bytes: &[u8]| {
        digest.update(&(bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    };
    part(context);
    part(end_entity.as_ref());
    for certificate in intermediates {
        part(certificate.as_ref());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.finish().as_ref());
    key
}

/// The earliest `notAfter` of a chain (seconds since the epoch), or `None` if a certificate
/// cannot be parsed (then nothing is remembered).
pub fn chain_not_after(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<u64> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        })
        .try_fold(u64::MAX, |earliest, not_after| {
            Some(earliest.min(not_after?))
        })
}

#[derive(Debug)]
struct Entry<T> {
    value: T,
    /// Seconds since the epoch from which the entry must not be used.
    until: u64,
}

/// Verified chains and what their verification produced (the identity, or nothing).
#[derive(Debug)]
pub struct VerifiedChains<T> {
    entries: Mutex<HashMap<ChainKey, Entry<T>>>,
}

impl<T> Default for VerifiedChains<T> {
    fn default() -> Self {
        VerifiedChains {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> VerifiedChains<T> {
    /// What verifying the chain of `key` produced, if it was verified and is still valid `now`.
    pub fn get(&self, key: &ChainKey, now: UnixTime) -> Option<T> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|entry| now.as_secs() < entry.until)
            .map(|entry| entry.value.clone())
    }

    /// Remembers a chain verified at `now` whose earliest `notAfter` is `not_after`.
    pub fn insert(&self, key: ChainKey, value: T, not_after: u64, now: UnixTime) {
        let until = not_after.min(now.as_secs().saturating_add(TTL.as_secs()));
        if until <= now.as_secs() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, entry| now.as_secs() < entry.until);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, Entry { value, until });
    }

    /// Returns the remembered result for the chain, or runs `verify` and remembers what it
    /// returns when it succeeds.
    pub fn get_or_verify<E>(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        context: &[u8],
        now: UnixTime,
        verify: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let key = chain_key(end_entity, intermediates, context);
        if let Some(value) = self.get(&key, now) {
            return Ok(value);
        }
        let value = verify()?;
        if let Some(not_after) = chain_not_after(end_entity, intermediates) {
            self.insert(key, value.clone(), not_after, now);
        }
        Ok(value)
    }

    /// How many chains are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn certificate(cn: &str, not_after: (i32, u8, u8)) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    /// 2030-01-01T00:00:00Z.
    const JAN_2030: u64 = 1_893_456_000;

    #[test]
    fn a_chain_is_verified_once_then_remembered_until_the_ttl() {
        let cache = VerifiedChains::default();
        let cert = certificate("alice", (2031, 1, 1));
        let calls = Cell::new(0);
        let verify = || {
            calls.set(calls.get() + 1);
            Ok::<_, ()>("alice".to_owned())
        };
        let now = at(JAN_2030);
        assert_eq!(
            cache.get_or_verify(&cert, &[], b"", now, verify),
            Ok("alice".into())
        );
        assert_eq!(
            cache.get_or_verify(&cert, &[], b"", now, verify),
            Ok("alice".into())
        );
        assert_eq!(
            calls.get(),
            1,
            "the second session reuses the first verification"
        );
        let later = at(JAN_2030 + TTL.as_secs());
        cache.get_or_verify(&cert, &[], b"", later, verify).unwrap();
        assert_eq!(calls.get(), 2, "verified again once the TTL passed");
    }

    #[test]
    fn failures_are_never_remembered() {
        let cache = VerifiedChains::<String>::default();
        let cert = certificate("mallory", (2031, 1, 1));
        let calls = Cell::new(0);
        let refuse = || {
            calls.set(calls.get() + 1);
            Err("unknown issuer")
        };
        let now = at(JAN_2030);
        assert!(cache.get_or_verify(&cert, &[], b"", now, refuse).is_err());
        assert!(cache.get_or_verify(&cert, &[], b"", now, refuse).is_err());
        assert_eq!(calls.get(), 2);
        assert!(cache.is_empty());
    }

    #[test]
    fn an_entry_ends_when_the_chain_expires() {
        let cache = VerifiedChains::default();
        // Expires 2030-01-01T00:00:00Z, 10 seconds after the first verification.
        let cert = certificate("bob", (2030, 1, 1));
        let calls = Cell::new(0);
        let verify = || {
            calls.set(calls.get() + 1);
            Ok::<_, ()>(())
        };
        cache
            .get_or_verify(&cert, &[], b"", at(JAN_2030 - 10), verify)
            .unwrap();
        cache
            .get_or_verify(&cert, &[], b"", at(JAN_2030 - 1), verify)
            .unwrap();
        assert_eq!(calls.get(), 1);
        let refuse = || Err::<(), _>("expired");
        assert_eq!(
            cache.get_or_verify(&cert, &[], b"", at(JAN_2030), refuse),
            Err("expired"),
            "at notAfter the chain is verified again"
        );
        // An intermediate that expires first bounds the entry too.
        let early = certificate("intermediate", (2029, 12, 31));
        let until = chain_not_after(&cert, &[early]).unwrap();
        assert_eq!(until, JAN_2030 - 86_400);
    }

    #[test]
    fn other_bytes_or_another_name_are_another_chain() {
        let alice = certificate("alice", (2031, 1, 1));
        let bob = certificate("bob", (2031, 1, 1));
        let keys = [
            chain_key(&alice, &[], b""),
            chain_key(&bob, &[], b""),
            chain_key(&alice, &[], b"db.example.com"),
            chain_key(&alice, std::slice::from_ref(&bob), b""),
            chain_key(&alice, &[], b"db.example.co"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Length prefixes: moving bytes from the name into the certificate is not the same key.
        let split = CertificateDer::from(b"bc".to_vec());
        let joined = CertificateDer::from(b"c".to_vec());
        assert_ne!(chain_key(&split, &[], b"a"), chain_key(&joined, &[], b"ab"));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = VerifiedChains::default();
        let now = at(JAN_2030);
        for i in 0..(CAPACITY as u64 + 10) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&i.to_be_bytes());
            cache.insert(key, (), JAN_2030 + 3600, now);
        }
        assert!(cache.len() <= CAPACITY);
    }
}
