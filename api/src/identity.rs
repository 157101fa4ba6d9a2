//! Who a host is, provably.
//!
//! Every host keeps a random secret in its data directory, and its host-id
//! is derived from it (a keyed BLAKE3 of the secret, cut to 16 bytes). A
//! call that names a host carries the secret in its metadata, and the
//! scheduler derives the id from it and compares: nobody can act as a host
//! without its secret, and nothing has to be remembered to check it, so a
//! restarted scheduler checks as well as one that ran all along.
//!
//! Until the control plane runs over TLS the secret crosses the network in
//! the clear, like a bearer token; mTLS (see `transport`) will later make
//! the channel itself prove the identity, and callers will not change.

use tonic::Status;
use tonic::metadata::MetadataValue;

/// The metadata key that carries the host secret.
pub const SECRET_KEY: &str = "dffs-host-secret";
/// Domain separation for deriving host-ids.
const CONTEXT: &str = "dffs 2026 host-id from host secret";

/// A host's secret and the id derived from it.
#[derive(Clone)]
pub struct HostIdentity {
    id: String,
    secret: [u8; 32],
}

/// Why a stored secret was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid host secret: expected 64 hex characters")]
pub struct BadSecret;

impl HostIdentity {
    pub fn generate() -> HostIdentity {
        // rand's thread generator is a CSPRNG seeded from the OS.
        HostIdentity::from_secret(rand::random())
    }

    pub fn from_secret(secret: [u8; 32]) -> HostIdentity {
        HostIdentity {
            id: host_id_of(&secret),
            secret,
        }
    }

    /// Reads a secret as written by [`HostIdentity::secret_hex`].
    pub fn from_hex(text: &str) -> Result<HostIdentity, BadSecret> {
        let mut secret = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| BadSecret)?;
        Ok(HostIdentity::from_secret(secret))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn secret_hex(&self) -> String {
        hex::encode(self.secret)
    }

    /// Makes `request` prove it comes from this host.
    pub fn sign<T>(&self, request: &mut tonic::Request<T>) {
        if let Ok(value) = MetadataValue::try_from(self.secret_hex()) {
            request.metadata_mut().insert(SECRET_KEY, value);
        }
    }
}

impl std::fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The host-id that belongs to `secret`.
pub fn host_id_of(secret: &[u8; 32]) -> String {
    let derived = blake3::derive_key(CONTEXT, secret);
    hex::encode(&derived[..16])
}

/// Whether `text` has the form of a host-id (32 lower-case hex characters).
pub fn is_host_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks that `request` was sent by `host_id`: it carries the secret the
/// id is derived from. The refusal names the host but never the secret.
pub fn verify<T>(request: &tonic::Request<T>, host_id: &str) -> Result<(), Status> {
    let proven = request
        .metadata()
        .get(SECRET_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|text| HostIdentity::from_hex(text).ok())
        .is_some_and(|identity| identity.id == host_id);
    if proven {
        return Ok(());
    }
    let shown: String = host_id.chars().take(64).collect();
    Err(crate::error::status(
        crate::error::ErrorKind::Denied,
        format!("the request names host '{shown}' but does not carry that host's secret"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_proves_its_host_and_no_other() {
        let me = HostIdentity::generate();
        let other = HostIdentity::generate();
        assert!(is_host_id(me.id()));
        assert_ne!(me.id(), other.id());
        let mut request = tonic::Request::new(());
        me.sign(&mut request);
        assert!(verify(&request, me.id()).is_ok());
        let err = verify(&request, other.id()).unwrap_err();
        assert!(err.message().contains(other.id()), "{}", err.message());
        assert!(!err.message().contains(&me.secret_hex()));
        assert!(
            verify(&tonic::Request::new(()), me.id()).is_err(),
            "unsigned"
        );
    }

    #[test]
    fn a_stored_secret_gives_back_the_same_id() {
        let me = HostIdentity::generate();
        let again = HostIdentity::from_hex(&me.secret_hex()).unwrap();
        assert_eq!(again.id(), me.id());
        assert!(HostIdentity::from_hex("zz").is_err());
        assert!(!format!("{me:?}").contains(&me.secret_hex()));
    }
}
