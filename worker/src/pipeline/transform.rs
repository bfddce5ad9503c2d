//! Column transforms for personal data: `mask` keeps a value's shape, `tokenize` replaces it by
//! a keyed hash so it can still be joined on but not read.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Letters and digits become `*`; separators and `+` stay: `+1-296-605-8486` → `+*-***-***-****`.
pub fn mask(value: &str) -> String {
    value.chars().map(|c| if c.is_alphanumeric() { '*' } else { c }).collect()
}

/// `mask` of an owned value, in place when it is ASCII (the usual phone number or card).
pub fn mask_owned(value: String) -> String {
    if !value.is_ascii() {
        return mask(&value);
    }
    let mut bytes = value.into_bytes();
    for b in &mut bytes {
        if b.is_ascii_alphanumeric() {
            *b = b'*';
        }
    }
    String::from_utf8(bytes).expect("ascii stays ascii")
}

/// The HMAC-SHA256 key of `tokenize`. Read from the environment, never from a file; its
/// `Debug` output does not show it. Holds the keyed state, so each token costs only the hash of
/// the value.
#[derive(Clone)]
pub struct TokenKey(Hmac<Sha256>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenKeyError {
    #[error("environment variable {0} (the tokenize key) is not set")]
    Missing(String),
    #[error("environment variable {0} (the tokenize key) must hold at least 16 bytes")]
    TooShort(String),
}

impl TokenKey {
    pub fn from_env(var: &str) -> Result<Self, TokenKeyError> {
        let value = std::env::var(var).map_err(|_| TokenKeyError::Missing(var.to_owned()))?;
        Self::new(value.into_bytes()).ok_or_else(|| TokenKeyError::TooShort(var.to_owned()))
    }

    /// `None` when the key is shorter than 16 bytes.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= 16).then(|| Self(Hmac::<Sha256>::new_from_slice(&bytes).expect("hmac takes any key length")))
    }

    /// Lowercase hex of HMAC-SHA256(key, value).
    pub fn tokenize(&self, value: &str) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.0.clone();
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut hex = [0u8; 64];
        for (pair, b) in hex.chunks_exact_mut(2).zip(digest) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        std::str::from_utf8(&hex).expect("hex digits").to_owned()
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_separators_and_plus() {
        assert_eq!(mask("+1-296-605-8486"), "+*-***-***-****");
        assert_eq!(mask("(555) 010 0199"), "(***) *** ****");
        assert_eq!(mask(""), "");
        for v in ["+1-296-605-8486", "(555) 010 0199", "Zoë 42", ""] {
            assert_eq!(mask_owned(v.to_owned()), mask(v));
        }
    }

    #[test]
    fn tokenize_is_keyed_hmac_sha256() {
        // Checked against an independent implementation:
        // (python3 -c "import hmac,hashlib;print(hmac.new(b'0123456789abcdef',b'a@b.c',hashlib.sha256).hexdigest())").
        let key = TokenKey::new(b"0123456789abcdef".to_vec()).unwrap();
        assert_eq!(key.tokenize("a@b.c"), "c8b9adc27ca0fc812e2cca09aab792e34c9d8d2fce3408abb47cb633bbb5e77f");
        assert_ne!(key.tokenize("a@b.c"), TokenKey::new(b"fedcba9876543210".to_vec()).unwrap().tokenize("a@b.c"));
        // A key longer than SHA-256's 64-byte block (HMAC hashes it first), a value in UTF-8,
        // an empty value: hmac.new(b'k' * 100, 'zoë@exämple.com'.encode(), hashlib.sha256) and
        // hmac.new(b'cluster-test-tokenize-key-0123456789', b'', hashlib.sha256).
        let long = TokenKey::new(vec![b'k'; 100]).unwrap();
        assert_eq!(
            long.tokenize("zoë@exämple.com"),
            "029008ea7f1143f273b8bc3fec519e734b6b69ed88b24ce3bf241682ccff70b6"
        );
        let key36 = TokenKey::new(b"cluster-test-tokenize-key-0123456789".to_vec()).unwrap();
        assert_eq!(key36.tokenize(""), "6c29832ae3c7fb2d6f5e3b0c8dcb09f78ced2e402a1a5039cb45dbb76fcc7748");
        assert_eq!(format!("{key:?}"), "TokenKey(<redacted>)");
        assert!(TokenKey::new(b"short".to_vec()).is_none());
    }
}
