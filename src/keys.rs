//! Public keys embark trusts (`[release] trusted_keys`): ed25519 or ECDSA P-256, in SPKI PEM or DER,
//! named by the sha256 of their SPKI DER. Parsing them is checked when the configuration is read;
//! what they are trusted for is `release::trust`.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest, Sha256};

/// KMS's name for what it signs with; also the name in a signature.
pub const ECDSA: &str = "ECDSA_SHA_256";
pub const ED25519: &str = "ED25519";

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
        format!("sha256:{}", hex::encode(Sha256::digest(self.der())))
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Ecdsa(_) => ECDSA,
            PublicKey::Ed25519(_) => ED25519,
        }
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
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
