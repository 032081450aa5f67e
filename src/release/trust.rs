//! Signed releases (docs/signing.md): who wrote a release, not only that its bytes match its manifest.
//!
//! What is signed is one short text naming the release id, the source it is published to and the
//! manifest's sha256, so that a signature is good for that release at that prefix only. A publisher
//! signs it (`publish::sign`) with a KMS asymmetric key or an ed25519 key file; instances verify offline
//! here, with the public keys they trust.

use super::error::ReleaseError;
use super::format::{Pointer, Signature, SourceUrl, SIGNATURE_FORMAT, SIGNATURE_LIMIT};
use super::store::Store;
pub use crate::keys::{trusted_keys, PublicKey};

/// The bytes that are signed for release `id` of `source` with a manifest of `manifest_sha256`.
pub fn payload(source: &SourceUrl, id: &str, manifest_sha256: &str) -> Vec<u8> {
    format!(
        "{SIGNATURE_FORMAT}\nsource: {source}\nrelease: {id}\nmanifest_sha256: {manifest_sha256}\n"
    )
    .into_bytes()
}

/// What an instance holds releases to.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub keys: Vec<PublicKey>,
    pub required: bool,
}

impl Trust {
    /// The pointer's release is signed for this source by a trusted key; or unsigned and no signature
    /// is required. Any refusal names the release and why, in one sentence.
    pub fn check(&self, source: &SourceUrl, pointer: &Pointer) -> Result<(), ReleaseError> {
        let Some(signature) = &pointer.signature else {
            if self.required {
                return Err(ReleaseError::Unsigned {
                    release: pointer.release.clone(),
                    source_url: source.to_string(),
                });
            }
            return Ok(());
        };
        if self.keys.is_empty() {
            return Ok(());
        }
        match verify(
            &self.keys,
            source,
            &pointer.release,
            &pointer.manifest_sha256,
            signature,
        ) {
            Ok(()) => Ok(()),
            Err(why) => Err(ReleaseError::Untrusted {
                release: pointer.release.clone(),
                source_url: source.to_string(),
                why,
            }),
        }
    }
}

/// Checks `signature` over release `id` of `source` against `keys`.
pub fn verify(
    keys: &[PublicKey],
    source: &SourceUrl,
    id: &str,
    manifest_sha256: &str,
    signature: &Signature,
) -> Result<(), String> {
    if signature.format != SIGNATURE_FORMAT {
        return Err(format!(
            "its signature's format is '{}', not {SIGNATURE_FORMAT}",
            super::format::quote(&signature.format)
        ));
    }
    let Some(key) = keys.iter().find(|k| k.id() == signature.key_id) else {
        return Err(format!(
            "it is signed by key {} ({}), which is not among the {} trusted keys ([release] trusted_keys); a release signed by a removed key cannot be installed or rolled back to",
            super::format::quote(&signature.key_id),
            super::format::quote(&signature.signer),
            keys.len()
        ));
    };
    if key.algorithm() != signature.algorithm {
        return Err(format!(
            "its signature claims {} for a {} key",
            super::format::quote(&signature.algorithm),
            key.algorithm()
        ));
    }
    let bytes = aws_smithy_types::base64::decode(&signature.value)
        .map_err(|_| "its signature is not base64".to_string())?;
    if key.verify(&payload(source, id, manifest_sha256), &bytes) {
        Ok(())
    } else {
        Err(format!(
            "its signature does not verify with key {} for this release at {source} (a bad signature, or one made for another release or prefix)",
            signature.key_id
        ))
    }
}

/// `releases/<id>/manifest.sig`, if the release was signed.
pub async fn read_signature(store: &Store, id: &str) -> Result<Option<Signature>, ReleaseError> {
    let key = store.source.signature_key(id);
    let Some((bytes, _)) = store.get_small(&key, SIGNATURE_LIMIT).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ReleaseError::Failed(format!("{} is not a signature ({e})", store.url(&key))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::publish::sign::SigningKey;
    use ed25519_dalek::pkcs8::EncodePublicKey;

    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAmotvN1IVHYROch82Ft8N9ZH1JNMjEGFXP17QV7zRJU\n-----END PRIVATE KEY-----\n";

    fn source(text: &str) -> SourceUrl {
        SourceUrl::parse(text).unwrap()
    }

    fn pointer(id: &str, signature: Option<Signature>) -> Pointer {
        Pointer {
            format: super::super::format::POINTER_FORMAT.into(),
            release: id.into(),
            manifest_sha256: "a".repeat(64),
            time: String::new(),
            who: String::new(),
            message: String::new(),
            delta: None,
            signature,
            rollback_of: None,
        }
    }

    async fn signed(src: &SourceUrl, id: &str) -> (PublicKey, Signature) {
        let key = match SigningKey::from_pem(ED_PRIVATE, "test") {
            Ok(key) => key,
            Err(e) => panic!("{e}"),
        };
        let public = match &key {
            SigningKey::File { key, .. } => PublicKey::Ed25519(key.verifying_key()),
            SigningKey::Kms { .. } => unreachable!(),
        };
        let sig = key
            .sign(None, &payload(src, id, &"a".repeat(64)))
            .await
            .unwrap();
        (public, sig)
    }

    #[tokio::test]
    async fn a_signature_holds_for_its_release_and_prefix_only() {
        let src = source("s3://bucket-a/app");
        let id = "20261127T101010Z-abcdef";
        let (public, sig) = signed(&src, id).await;
        let trust = Trust {
            keys: vec![public.clone()],
            required: true,
        };
        trust.check(&src, &pointer(id, Some(sig.clone()))).unwrap();
        let other_id = "20261127T101011Z-abcdef";
        for (where_, id) in [(source("s3://bucket-a/other"), id), (src.clone(), other_id)] {
            let err = trust
                .check(&where_, &pointer(id, Some(sig.clone())))
                .unwrap_err()
                .to_string();
            assert!(err.contains("does not verify"), "{err}");
        }
        let unsigned = trust
            .check(&src, &pointer(id, None))
            .unwrap_err()
            .to_string();
        assert!(unsigned.contains("not signed"), "{unsigned}");
        let stranger = Trust {
            keys: vec![],
            required: false,
        };
        stranger.check(&src, &pointer(id, None)).unwrap();
    }

    #[tokio::test]
    async fn an_unknown_key_or_a_tampered_signature_is_refused() {
        let src = source("s3://bucket-a/app");
        let id = "20261127T101010Z-abcdef";
        let (public, mut sig) = signed(&src, id).await;
        let mut bytes = aws_smithy_types::base64::decode(&sig.value).unwrap();
        bytes[0] ^= 1;
        sig.value = aws_smithy_types::base64::encode(&bytes);
        let err = verify(&[public], &src, id, &"a".repeat(64), &sig).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        let err = verify(&[], &src, id, &"a".repeat(64), &sig).unwrap_err();
        assert!(err.contains("not among the 0 trusted keys"), "{err}");
    }

    #[test]
    fn public_keys_are_ed25519_or_p256_pem_and_named_by_their_spki_hash() {
        let key = match SigningKey::from_pem(ED_PRIVATE, "test") {
            Ok(SigningKey::File { key, .. }) => key,
            _ => panic!("parse"),
        };
        let pem = key
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let public = PublicKey::from_pem(&pem).unwrap();
        assert!(public.id().starts_with("sha256:"));
        assert_eq!(public.id().len(), 7 + 64);
        assert!(PublicKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
        let err = trusted_keys(&["/nonexistent/key.pem".into()]).unwrap_err();
        assert!(err.contains("/nonexistent/key.pem"), "{err}");
    }
}
