//! `release push --sign KEY`: a release's signature made with a KMS asymmetric key (ECDSA P-256,
//! SHA-256; the private key never leaves KMS) or an ed25519 key file (PKCS#8 PEM). What is signed, and
//! how instances verify it, is `release::trust`.

use ed25519_dalek::pkcs8::DecodePrivateKey;
use p256::ecdsa::signature::Signer as _;

use crate::keys::PublicKey;
use crate::release::error::ReleaseError;
use crate::release::format::{Signature, SourceUrl, SIGNATURE_FORMAT};
use crate::release::trust::payload;

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
