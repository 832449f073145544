//! Signed policies: ed25519 signatures over the exact policy text.
//!
//! `clearance policy keygen` makes a key pair; `clearance policy sign` and
//! `clearance policy publish --key` sign the text; the signature and the
//! signer's key id travel in record headers ([`SIGNATURE_HEADER`],
//! [`KEY_ID_HEADER`]). An engine whose `policy.trusted_keys` lists public
//! keys accepts only a policy whose text verifies under one of them
//! ([`TrustedKeys::verify`]); with no trusted key configured, signatures
//! are not required (and not checked).
//!
//! Key formats (text files, one line): a signing key is the base64 of its
//! 32-byte seed; a public key is the base64 of its 32 bytes. A key id is
//! `ed25519:` and the first 16 hex digits of the SHA-256 of the public key.
//! No I/O.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Record header carrying the base64 signature of the policy text.
pub const SIGNATURE_HEADER: &str = "clearance-signature";
/// Record header carrying the signer's key id.
pub const KEY_ID_HEADER: &str = "clearance-key-id";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A key or signature that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {message}")]
pub struct KeyError {
    /// What was being read.
    pub what: String,
    /// What is wrong with it.
    pub message: String,
}

fn key_error(what: &str, message: impl Into<String>) -> KeyError {
    KeyError {
        what: what.to_string(),
        message: message.into(),
    }
}

/// Why a published policy's signature was not accepted. The previous policy
/// stays active.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No signature header, while trusted keys are configured.
    #[error(
        "unsigned: trusted keys are configured and the record carries no {SIGNATURE_HEADER} header"
    )]
    Unsigned,
    /// Signed by a key that is not trusted.
    #[error("signed by key {0}, which is not in policy.trusted_keys")]
    UntrustedKey(String),
    /// The signature does not verify: the text was changed after signing,
    /// or the signature is not the key's.
    #[error("signature by key {0} does not verify: the text is not the one signed")]
    BadSignature(String),
    /// The headers cannot be read.
    #[error("malformed signature headers: {0}")]
    Malformed(String),
}

impl Rejection {
    /// Stable label for the rejection metric.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::UntrustedKey(_) => "untrusted_key",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::Malformed(_) => "malformed",
        }
    }
}

/// The key id of a public key: `ed25519:<16 hex digits of its SHA-256>`.
pub fn key_id(public: &VerifyingKey) -> String {
    let d = super::digest_bytes(public.as_bytes());
    format!("ed25519:{}", &d[..16])
}

/// A new key pair: (signing key file text, public key text, key id).
pub fn generate() -> (String, String, String) {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let public = key.verifying_key();
    (
        B64.encode(key.to_bytes()),
        B64.encode(public.as_bytes()),
        key_id(&public),
    )
}

/// A signing key, read from its file text (base64 of the 32-byte seed).
pub struct PolicySigner {
    key: SigningKey,
}

impl std::fmt::Debug for PolicySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "PolicySigner({})", self.key_id())
    }
}

impl PolicySigner {
    /// Read a signing key file's text.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| key_error("signing key", format!("not base64: {e}")))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            key_error(
                "signing key",
                format!("{} bytes, expected a 32-byte ed25519 seed", b.len()),
            )
        })?;
        Ok(PolicySigner {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// This key's id.
    pub fn key_id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    /// Sign a policy text: (key id, base64 signature).
    pub fn sign(&self, text: &[u8]) -> (String, String) {
        (self.key_id(), B64.encode(self.key.sign(text).to_bytes()))
    }
}

/// The public keys an engine accepts policies from.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustedKeys {
    /// Parse public keys (base64 of 32 bytes each). Every invalid entry is
    /// reported.
    pub fn parse(list: &[String]) -> Result<Self, Vec<KeyError>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for (i, text) in list.iter().enumerate() {
            let what = format!("policy.trusted_keys[{i}]");
            let parsed = B64
                .decode(text.trim())
                .map_err(|e| key_error(&what, format!("not base64: {e}")))
                .and_then(|b| {
                    <[u8; 32]>::try_from(b)
                        .map_err(|b| key_error(&what, format!("{} bytes, expected 32", b.len())))
                })
                .and_then(|b| {
                    VerifyingKey::from_bytes(&b)
                        .map_err(|e| key_error(&what, format!("not an ed25519 key: {e}")))
                });
            match parsed {
                Ok(k) => keys.push((key_id(&k), k)),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(TrustedKeys { keys })
        } else {
            Err(errors)
        }
    }

    /// Whether any key is trusted (then every policy must be signed).
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The ids of the trusted keys.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Verify a policy text against its signature headers. `Ok(None)` when
    /// no key is trusted (nothing is required); `Ok(Some(key id))` when a
    /// trusted key signed exactly this text.
    pub fn verify(
        &self,
        text: &[u8],
        key_id: Option<&[u8]>,
        signature: Option<&[u8]>,
    ) -> Result<Option<String>, Rejection> {
        if !self.required() {
            return Ok(None);
        }
        let Some(signature) = signature else {
            return Err(Rejection::Unsigned);
        };
        let id = key_id
            .map(|k| String::from_utf8_lossy(k).trim().to_string())
            .ok_or_else(|| Rejection::Malformed(format!("no {KEY_ID_HEADER} header")))?;
        let Some((_, key)) = self.keys.iter().find(|(k, _)| *k == id) else {
            return Err(Rejection::UntrustedKey(id));
        };
        let bytes = B64
            .decode(String::from_utf8_lossy(signature).trim())
            .map_err(|e| Rejection::Malformed(format!("signature not base64: {e}")))?;
        let sig = Signature::from_slice(&bytes)
            .map_err(|e| Rejection::Malformed(format!("not an ed25519 signature: {e}")))?;
        key.verify(text, &sig)
            .map_err(|_| Rejection::BadSignature(id.clone()))?;
        Ok(Some(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> (PolicySigner, String) {
        let (secret, public, id) = generate();
        let s = PolicySigner::from_text(&secret).unwrap();
        assert_eq!(s.key_id(), id);
        assert!(
            !format!("{s:?}").contains(&secret),
            "the secret is never printed"
        );
        (s, public)
    }

    #[test]
    fn only_a_trusted_key_over_the_exact_text_verifies() {
        let (a, pa) = signer();
        let (b, pb) = signer();
        let (c, _) = signer();
        let trusted = TrustedKeys::parse(&[pa, pb]).unwrap();
        let text = b"[policy]\nid = \"x\"\n";
        for s in [&a, &b] {
            let (id, sig) = s.sign(text);
            assert_eq!(
                trusted.verify(text, Some(id.as_bytes()), Some(sig.as_bytes())),
                Ok(Some(id.clone()))
            );
            // The text changed after signing.
            assert_eq!(
                trusted.verify(
                    b"[policy]\nid = \"y\"\n",
                    Some(id.as_bytes()),
                    Some(sig.as_bytes())
                ),
                Err(Rejection::BadSignature(id))
            );
        }
        let (id, sig) = c.sign(text);
        assert_eq!(
            trusted.verify(text, Some(id.as_bytes()), Some(sig.as_bytes())),
            Err(Rejection::UntrustedKey(id))
        );
        assert_eq!(trusted.verify(text, None, None), Err(Rejection::Unsigned));
        // A's signature presented under B's id does not verify.
        let (_, sig_a) = a.sign(text);
        let id_b = b.key_id();
        assert_eq!(
            trusted.verify(text, Some(id_b.as_bytes()), Some(sig_a.as_bytes())),
            Err(Rejection::BadSignature(id_b))
        );
        assert!(matches!(
            trusted.verify(text, Some(a.key_id().as_bytes()), Some(b"%%%")),
            Err(Rejection::Malformed(_))
        ));
        // No trusted key: nothing is required.
        assert_eq!(TrustedKeys::default().verify(text, None, None), Ok(None));
    }

    #[test]
    fn bad_keys_are_all_reported() {
        let errs = TrustedKeys::parse(&["%%".into(), "AAAA".into()]).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0]
            .to_string()
            .starts_with("policy.trusted_keys[0]: not base64"));
        assert!(errs[1].to_string().contains("3 bytes, expected 32"));
        assert!(PolicySigner::from_text("AAAA").is_err());
    }
}
