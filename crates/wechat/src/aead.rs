//! The encrypted `resource` of a WeChat Pay notification: AEAD_AES_256_GCM with the
//! merchant's 32-byte APIv3 key, the resource's 12-character `nonce` (its UTF-8 bytes) and
//! its `associated_data` (possibly empty) as additional data; `ciphertext` is base64 of
//! the ciphertext followed by the 16-byte tag. On `aws-lc-rs`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretSlice};
use thiserror::Error;

/// The APIv3 key's length.
pub const KEY_LEN: usize = 32;

/// Why a resource could not be opened. Never carries key or plaintext.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AeadError {
    /// The key is not 32 bytes.
    #[error("the APIv3 key must be {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    /// The nonce is not 12 bytes.
    #[error("the nonce must be {NONCE_LEN} bytes, got {0}")]
    NonceLength(usize),
    /// The ciphertext is not base64.
    #[error("the ciphertext is not base64")]
    NotBase64,
    /// The tag does not verify: another key, or the ciphertext, nonce or associated data
    /// was changed.
    #[error("the resource does not decrypt with the APIv3 key (tampered, or another key)")]
    Tampered,
    /// The plaintext is not UTF-8.
    #[error("the decrypted resource is not UTF-8")]
    NotUtf8,
}

/// The APIv3 key.
#[derive(Clone)]
pub struct ApiV3Key(SecretSlice<u8>);

impl std::fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiV3Key(..)")
    }
}

impl ApiV3Key {
    /// The key from its 32 characters (as the merchant platform shows it).
    pub fn new(text: &str) -> Result<Self, AeadError> {
        let bytes = text.trim().as_bytes();
        if bytes.len() != KEY_LEN {
            return Err(AeadError::KeyLength(bytes.len()));
        }
        Ok(Self(SecretSlice::from(bytes.to_vec())))
    }

    fn key(&self) -> Result<LessSafeKey, AeadError> {
        UnboundKey::new(&AES_256_GCM, self.0.expose_secret())
            .map(LessSafeKey::new)
            .map_err(|_| AeadError::KeyLength(self.0.expose_secret().len()))
    }

    /// Opens a resource.
    pub fn decrypt(
        &self,
        ciphertext_b64: &str,
        nonce: &str,
        associated_data: &str,
    ) -> Result<String, AeadError> {
        let nonce = Nonce::try_assume_unique_for_key(nonce.as_bytes())
            .map_err(|_| AeadError::NonceLength(nonce.len()))?;
        let mut in_out = STANDARD
            .decode(ciphertext_b64.trim())
            .map_err(|_| AeadError::NotBase64)?;
        let plain = self
            .key()?
            .open_in_place(nonce, Aad::from(associated_data.as_bytes()), &mut in_out)
            .map_err(|_| AeadError::Tampered)?;
        String::from_utf8(plain.to_vec()).map_err(|_| AeadError::NotUtf8)
    }

    /// Seals a resource (the simulator's side): base64 of ciphertext and tag.
    pub fn encrypt(
        &self,
        plaintext: &str,
        nonce: &str,
        associated_data: &str,
    ) -> Result<String, AeadError> {
        let nonce = Nonce::try_assume_unique_for_key(nonce.as_bytes())
            .map_err(|_| AeadError::NonceLength(nonce.len()))?;
        let mut in_out = plaintext.as_bytes().to_vec();
        self.key()?
            .seal_in_place_append_tag(nonce, Aad::from(associated_data.as_bytes()), &mut in_out)
            .map_err(|_| AeadError::Tampered)?;
        Ok(STANDARD.encode(in_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdefghijklmnopqrstuv";

    #[test]
    fn a_sealed_resource_opens_and_any_change_is_refused() {
        let key = ApiV3Key::new(KEY).unwrap();
        let sealed = key
            .encrypt("{\"a\":1}", "fdasflkja484", "transaction")
            .unwrap();
        assert_eq!(
            key.decrypt(&sealed, "fdasflkja484", "transaction").unwrap(),
            "{\"a\":1}"
        );
        let empty_aad = key.encrypt("x", "fdasflkja484", "").unwrap();
        assert_eq!(key.decrypt(&empty_aad, "fdasflkja484", "").unwrap(), "x");
        assert_eq!(
            key.decrypt(&sealed, "fdasflkja485", "transaction"),
            Err(AeadError::Tampered)
        );
        assert_eq!(
            key.decrypt(&sealed, "fdasflkja484", "refund"),
            Err(AeadError::Tampered)
        );
        let mut bytes = STANDARD.decode(&sealed).unwrap();
        bytes[0] ^= 1;
        assert_eq!(
            key.decrypt(&STANDARD.encode(bytes), "fdasflkja484", "transaction"),
            Err(AeadError::Tampered)
        );
        let other = ApiV3Key::new("vutsrqponmlkjihgfedcba9876543210").unwrap();
        assert_eq!(
            other.decrypt(&sealed, "fdasflkja484", "transaction"),
            Err(AeadError::Tampered)
        );
        assert_eq!(
            key.decrypt("%%", "fdasflkja484", ""),
            Err(AeadError::NotBase64)
        );
        assert_eq!(
            key.decrypt(&sealed, "short", ""),
            Err(AeadError::NonceLength(5))
        );
        assert_eq!(ApiV3Key::new("short").unwrap_err(), AeadError::KeyLength(5));
        assert_eq!(format!("{key:?}"), "ApiV3Key(..)");
    }
}
