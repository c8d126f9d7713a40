//! Which replica this relay process is, when several serve the same frozen config.
//!
//! The id comes from `--replica-id` (or `DBWARD_RELAY_REPLICA_ID`), else the host name — on
//! Kubernetes the pod's name, under systemd the machine's. It is written into every audit event
//! (`"replica"`) and the startup log line, so the audit files of a fleet can be merged and each
//! event still says which relay wrote it. It decides nothing: replicas share no state.

use std::fmt;
use std::sync::Arc;

/// The longest id accepted: a DNS name's limit, so any host name fits.
pub const MAX_LEN: usize = 253;

/// A validated replica id: 1 to [`MAX_LEN`] bytes of visible ASCII (letters, digits,
/// punctuation; no spaces or control characters), so it is safe in JSON, logs and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaId(Arc<str>);

/// Why a replica id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaIdError {
    #[error("the replica id is empty; pass --replica-id (e.g. the host or pod name)")]
    Empty,
    #[error(
        "the replica id is {len} bytes long; use at most {MAX_LEN} (e.g. the host or pod name)"
    )]
    TooLong { len: usize },
    #[error(
        "the replica id {shown:?} has a character that is not visible ASCII at byte {at}; use \
         letters, digits and punctuation only, without spaces (e.g. relay-a)"
    )]
    Invisible { shown: String, at: usize },
    #[error(
        "cannot read the host name for the replica id ({0}); pass --replica-id or set \
         DBWARD_RELAY_REPLICA_ID"
    )]
    NoHostName(String),
}

impl ReplicaId {
    /// Validates an id given by the operator.
    pub fn parse(id: &str) -> Result<ReplicaId, ReplicaIdError> {
        if id.is_empty() {
            return Err(ReplicaIdError::Empty);
        }
        if id.len() > MAX_LEN {
            return Err(ReplicaIdError::TooLong { len: id.len() });
        }
        if let Some(at) = id.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(ReplicaIdError::Invisible {
                // Debug-escaped, so a control character cannot reach a terminal raw.
                shown: id.chars().take(64).collect(),
                at,
            });
        }
        Ok(ReplicaId(Arc::from(id)))
    }

    /// An id written in the code (a placeholder where no event is written).
    pub(crate) fn literal(id: &'static str) -> ReplicaId {
        debug_assert!(ReplicaId::parse(id).is_ok(), "{id:?}");
        ReplicaId(Arc::from(id))
    }

    /// The host name (`uname -n`) as the id: the default when none is given.
    pub fn from_host() -> Result<ReplicaId, ReplicaIdError> {
        let uname = rustix::system::uname();
        let name = uname
            .nodename()
            .to_str()
            .map_err(|_| ReplicaIdError::NoHostName("it is not UTF-8".into()))?;
        ReplicaId::parse(name).map_err(|error| match error {
            ReplicaIdError::Empty => ReplicaIdError::NoHostName("it is empty".into()),
            other => ReplicaIdError::NoHostName(other.to_string()),
        })
    }

    /// The id given (`--replica-id`), else the host name.
    pub fn given_or_host(given: Option<ReplicaId>) -> Result<ReplicaId, ReplicaIdError> {
        given.map_or_else(ReplicaId::from_host, Ok)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ReplicaId {
    type Err = ReplicaIdError;

    fn from_str(id: &str) -> Result<ReplicaId, ReplicaIdError> {
        ReplicaId::parse(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_and_pod_names() {
        for id in [
            "relay-a",
            "dbward-relay-7d9f8c6b5-x2k4q",
            "db1.example.com",
            "a",
        ] {
            assert_eq!(ReplicaId::parse(id).unwrap().as_str(), id);
        }
        assert!(ReplicaId::parse(&"a".repeat(MAX_LEN)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_invisible_ids_saying_what_to_do() {
        assert_eq!(ReplicaId::parse(""), Err(ReplicaIdError::Empty));
        assert_eq!(
            ReplicaId::parse(&"a".repeat(MAX_LEN + 1)),
            Err(ReplicaIdError::TooLong { len: MAX_LEN + 1 })
        );
        for (id, at) in [
            ("relay a", 5),
            ("relay\n", 5),
            ("\u{1b}[31m", 0),
            ("rélay", 1),
        ] {
            let error = ReplicaId::parse(id).unwrap_err();
            assert!(
                matches!(error, ReplicaIdError::Invisible { at: got, .. } if got == at),
                "{id:?}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains("letters, digits"), "{message}");
            assert!(
                !message.contains('\u{1b}') && !message.contains('\n'),
                "{message:?}"
            );
        }
    }

    #[test]
    fn the_host_name_is_the_default() {
        let host = ReplicaId::given_or_host(None).unwrap();
        assert!(!host.as_str().is_empty());
        let given = ReplicaId::parse("relay-b").unwrap();
        assert_eq!(ReplicaId::given_or_host(Some(given.clone())), Ok(given));
    }
}
