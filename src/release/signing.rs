//! Signed releases (docs/signing.md): who wrote a release, not only that its bytes match its manifest.
//!
//! What is signed is one short text naming the release id, the source it is published to and the
//! manifest's sha256, so that a signature is good for that release at that prefix only. A publisher
//! signs it with a KMS asymmetric key (ECDSA P-256, SHA-256; the private key never leaves KMS) or an
//! ed25519 key file (PKCS#8 PEM); instances verify offline with public keys (SPKI PEM).

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use p256::ecdsa::signature::{Signer as _, Verifier as _};

use super::error::ReleaseError;
use super::format::{sha256_hex, Pointer, Signature, SourceUrl, SIGNATURE_FORMAT, SIGNATURE_LIMIT};
use super::store::Store;

/// KMS's name for what it signs with; also the name in a signature.
pub const ECDSA: &str = "ECDSA_SHA_256";
pub const ED25519: &str = "ED25519";

/// The bytes that are signed for release `id` of `source` with a manifest of `manifest_sha256`.
pub fn payload(source: &SourceUrl, id: &str, manifest_sha256: &str) -> Vec<u8> {
    format!(
        "{SIGNATURE_FORMAT}\nsource: {source}\nrelease: {id}\nmanifest_sha256: {manifest_sha256}\n"
    )
    .into_bytes()
}

/// A public key an instance trusts.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Ecdsa(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// An SPKI public key (what `openssl pkey -pubout` and KMS's GetPublicKey give): P-256 or ed25519.
    pub fn from_der(der: &[u8]) -> Result<PublicKey, String> {
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::Ed25519(key));
        }
        p256::ecdsa::VerifyingKey::from_public_key_der(der)
            .map(PublicKey::Ecdsa)
            .map_err(|_| {
                "not an ed25519 or ECDSA P-256 public key (SubjectPublicKeyInfo)".to_string()
            })
    }

    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::Ed25519(key));
        }
        p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey::Ecdsa)
            .map_err(|_| {
                "not an ed25519 or ECDSA P-256 public key in PEM (\"-----BEGIN PUBLIC KEY-----\", what `openssl pkey -pubout` writes)"
                    .to_string()
            })
    }

    fn der(&self) -> Vec<u8> {
        let doc = match self {
            PublicKey::Ecdsa(key) => p256::pkcs8::EncodePublicKey::to_public_key_der(key),
            PublicKey::Ed25519(key) => key.to_public_key_der(),
        };
        doc.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// `sha256:<hex>` of the SPKI DER.
    pub fn id(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.der()))
    }

    fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Ecdsa(_) => ECDSA,
            PublicKey::Ed25519(_) => ED25519,
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Ecdsa(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
            PublicKey::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok()),
        }
    }
}

/// `[release] trusted_keys`: each entry an inline PEM or a path to one.
pub fn trusted_keys(entries: &[String]) -> Result<Vec<PublicKey>, String> {
    entries
        .iter()
        .map(|entry| {
            let (what, pem) = if entry.trim_start().starts_with("-----BEGIN") {
                ("an inline key".to_string(), entry.clone())
            } else {
                let text = std::fs::read_to_string(Path::new(entry))
                    .map_err(|e| format!("trusted key {entry}: {e}"))?;
                (entry.clone(), text)
            };
            PublicKey::from_pem(&pem).map_err(|why| format!("trusted key {what}: {why}"))
        })
        .collect()
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
        let refuse = |why: String| {
            Err(ReleaseError::Failed(format!(
                "refusing release {} from {source}: {why}; current is untouched",
                pointer.release
            )))
        };
        let Some(signature) = &pointer.signature else {
            if self.required {
                return refuse("it is not signed, and [release] require_signature is on (push it with `embark release push --sign KEY`)".into());
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
            Err(why) => refuse(why),
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

/// What `release push --sign KEY` signs with.
pub enum SigningKey {
    File {
        key: Box<ed25519_dalek::SigningKey>,
        name: String,
    },
    Kms {
        key_id: String,
    },
}

impl SigningKey {
    /// `kms:alias/NAME`, `kms:<key id or ARN>`, an `arn:…:kms:…` ARN, or a path to an ed25519 private
    /// key (PKCS#8 PEM, what `openssl genpkey -algorithm ed25519` writes).
    pub fn parse(text: &str) -> Result<SigningKey, ReleaseError> {
        if let Some(key_id) = text.strip_prefix("kms:") {
            if key_id.is_empty() {
                return Err(ReleaseError::Usage(
                    "--sign kms: needs a key: kms:alias/NAME or kms:<key ARN>".into(),
                ));
            }
            return Ok(SigningKey::Kms {
                key_id: key_id.to_string(),
            });
        }
        if text.starts_with("arn:") && text.contains(":kms:") {
            return Ok(SigningKey::Kms {
                key_id: text.to_string(),
            });
        }
        let pem = std::fs::read_to_string(text).map_err(|e| {
            ReleaseError::Usage(format!(
                "--sign {text}: {e} (a KMS key is written kms:alias/NAME or kms:<key ARN>)"
            ))
        })?;
        SigningKey::from_pem(&pem, text)
    }

    /// An ed25519 private key in PKCS#8 PEM; `name` says where it came from.
    pub fn from_pem(pem: &str, name: &str) -> Result<SigningKey, ReleaseError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|_| {
            ReleaseError::Usage(format!(
                "--sign {name}: not an ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519` writes one)"
            ))
        })?;
        Ok(SigningKey::File {
            key: Box::new(key),
            name: name.to_string(),
        })
    }

    /// Signs `message`; the KMS key's public key is fetched to name it, and the signature is checked
    /// with it before it is published.
    pub async fn sign(
        &self,
        kms: Option<&aws_sdk_kms::Client>,
        message: &[u8],
    ) -> Result<Signature, ReleaseError> {
        match self {
            SigningKey::File { key, name } => {
                let public = PublicKey::Ed25519(key.verifying_key());
                let value: ed25519_dalek::Signature = key.sign(message);
                Ok(signature(&public, &value.to_bytes(), name))
            }
            SigningKey::Kms { key_id } => {
                let kms = kms.ok_or_else(|| {
                    ReleaseError::Failed("no KMS client for a KMS signing key".into())
                })?;
                kms_sign(kms, key_id, message).await
            }
        }
    }
}

/// A signing key and, for a KMS key, the client that reaches it.
pub struct Signer {
    pub key: SigningKey,
    pub kms: Option<aws_sdk_kms::Client>,
}

impl Signer {
    /// The signature of release `id` of `source` whose manifest has `manifest_sha256`.
    pub async fn sign(
        &self,
        source: &SourceUrl,
        id: &str,
        manifest_sha256: &str,
    ) -> Result<Signature, ReleaseError> {
        self.key
            .sign(self.kms.as_ref(), &payload(source, id, manifest_sha256))
            .await
    }
}

fn signature(public: &PublicKey, value: &[u8], signer: &str) -> Signature {
    Signature {
        format: SIGNATURE_FORMAT.into(),
        key_id: public.id(),
        algorithm: public.algorithm().into(),
        value: aws_smithy_types::base64::encode(value),
        signer: signer.to_string(),
    }
}

async fn kms_sign(
    kms: &aws_sdk_kms::Client,
    key_id: &str,
    message: &[u8],
) -> Result<Signature, ReleaseError> {
    use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
    let public = kms
        .get_public_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|err| {
            ReleaseError::Aws(
                crate::aws::AwsError::new("kms:GetPublicKey", &err).on(format!("for {key_id}")),
            )
        })?;
    let der = public.public_key().map(|b| b.as_ref()).unwrap_or_default();
    let key = match PublicKey::from_der(der) {
        Ok(key @ PublicKey::Ecdsa(_)) => key,
        _ => {
            return Err(ReleaseError::Usage(format!(
                "KMS key {key_id} is not an ECC_NIST_P256 signing key (create it with --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY)"
            )))
        }
    };
    // RAW: KMS hashes the message with SHA-256 and signs it, as ECDSA P-256/SHA-256 is verified.
    let signed = kms
        .sign()
        .key_id(key_id)
        .message(aws_smithy_types::Blob::new(message.to_vec()))
        .message_type(MessageType::Raw)
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .map_err(|err| {
            ReleaseError::Aws(
                crate::aws::AwsError::new("kms:Sign", &err).on(format!("for {key_id}")),
            )
        })?;
    let value = signed.signature().map(|b| b.as_ref()).unwrap_or_default();
    if !key.verify(message, value) {
        return Err(ReleaseError::Failed(format!(
            "KMS key {key_id} returned a signature that does not verify with its own public key; nothing was published"
        )));
    }
    let signer = public.key_id().unwrap_or(key_id).to_string();
    Ok(signature(&key, value, &signer))
}

/// What a pointer to release `id` would say: its manifest's sha256 and its signature (for `release
/// verify ID`).
pub async fn pointer_for(store: &Store, id: &str) -> Result<Pointer, ReleaseError> {
    super::format::check_id(id).map_err(|r| ReleaseError::Usage(r.0))?;
    let key = store.source.manifest_key(id);
    let (bytes, _) = store
        .get_small(&key, super::store::MANIFEST_LIMIT)
        .await?
        .ok_or_else(|| {
            ReleaseError::Usage(format!(
                "there is no release {id} at {} (see `embark release list`)",
                store.source
            ))
        })?;
    Ok(Pointer {
        format: super::format::POINTER_FORMAT.into(),
        release: id.to_string(),
        manifest_sha256: sha256_hex(&bytes),
        time: String::new(),
        who: String::new(),
        message: String::new(),
        delta: None,
        signature: read(store, id).await?,
    })
}

/// The manifest the pointer names, fetched, checked against its sha256 and every rule of a pull; its
/// number of files.
pub async fn signed_manifest(store: &Store, pointer: &Pointer) -> Result<u64, ReleaseError> {
    let key = store.source.manifest_key(&pointer.release);
    let bytes = store
        .get_small(&key, super::store::MANIFEST_LIMIT)
        .await?
        .map(|(bytes, _)| bytes)
        .unwrap_or_default();
    if sha256_hex(&bytes) != pointer.manifest_sha256 {
        return Err(ReleaseError::Failed(format!(
            "{} is missing or not the manifest that was signed",
            store.url(&key)
        )));
    }
    let manifest: super::format::Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        ReleaseError::Failed(format!("{} is not a valid manifest ({e})", store.url(&key)))
    })?;
    manifest.validate().map_err(|r| {
        ReleaseError::Failed(format!("the manifest of {}: {}", pointer.release, r.0))
    })?;
    Ok(manifest.files)
}

/// `releases/<id>/manifest.sig`, if the release was signed.
pub async fn read(store: &Store, id: &str) -> Result<Option<Signature>, ReleaseError> {
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
