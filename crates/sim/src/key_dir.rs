//! A simulator's key directory (`gateway-sim --keys-dir`): each gateway keeps the keys it
//! signs with, the merchant's public key it checks requests against, and any shared
//! secret there, so that a restarted simulator keeps trusting and being trusted by the
//! clients configured from its `client.env`. What is missing is made and written, readable
//! by its owner only; an error names the file, never its content.

use std::path::{Path, PathBuf};

use super::SimError;
use order_closer_gateway::rsa::{RsaPrivateKey, RsaPublicKey};

/// One gateway's key directory.
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// The directory `dir`, created when missing.
    pub fn open(dir: &Path) -> Result<Self, SimError> {
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, &e))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The merchant's key pair as the simulator knows it: the public key from `public`,
    /// with the path of `private` when that file is there too. When `public` is missing a
    /// pair is made and both are written (the merchant's client reads `private`).
    pub fn merchant_pair(
        &self,
        public: &str,
        private: &str,
    ) -> Result<(RsaPublicKey, Option<PathBuf>), SimError> {
        let public_path = self.path(public);
        let private_path = self.path(private);
        if public_path.exists() {
            let key =
                RsaPublicKey::parse(&self.read(public)?).map_err(|e| fail(&public_path, &e))?;
            Ok((key, private_path.exists().then_some(private_path)))
        } else {
            let key = RsaPrivateKey::generate()?;
            self.write(private, &key.to_pkcs8_pem())?;
            self.write(public, &key.public_key().to_spki_pem())?;
            Ok((key.public_key().clone(), Some(private_path)))
        }
    }

    /// The simulator's own signing key from `private` (made and written when missing),
    /// its public half written to `public` for clients.
    pub fn signing_key(&self, private: &str, public: &str) -> Result<RsaPrivateKey, SimError> {
        let private_path = self.path(private);
        let key = if private_path.exists() {
            RsaPrivateKey::parse(&self.read(private)?).map_err(|e| fail(&private_path, &e))?
        } else {
            let key = RsaPrivateKey::generate()?;
            self.write(private, &key.to_pkcs8_pem())?;
            key
        };
        self.write(public, &key.public_key().to_spki_pem())?;
        Ok(key)
    }

    /// A shared secret from `name` (trimmed), or `make()` written there when missing.
    pub fn secret(&self, name: &str, make: impl FnOnce() -> String) -> Result<String, SimError> {
        if self.path(name).exists() {
            Ok(self.read(name)?.trim().to_owned())
        } else {
            let secret = make();
            self.write(name, &secret)?;
            Ok(secret)
        }
    }

    fn read(&self, name: &str) -> Result<String, SimError> {
        let path = self.path(name);
        order_closer_core::files::read_capped_text(&path, order_closer_core::files::MAX_KEY_BYTES)
            .map_err(|e| fail(&path, &e))
    }

    /// Writes `name`, readable by its owner only.
    fn write(&self, name: &str, text: &str) -> Result<(), SimError> {
        let path = self.path(name);
        std::fs::write(&path, text).map_err(|e| fail(&path, &e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail(&path, &e))?;
        }
        Ok(())
    }
}

/// The error naming `path`.
pub fn fail(path: &Path, e: &dyn std::fmt::Display) -> SimError {
    SimError::Keys(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_made_once_is_read_back_the_next_time() {
        let dir = std::env::temp_dir().join(format!("oc-keydir-{}", std::process::id()));
        let keys = KeyDir::open(&dir).unwrap();
        let (public, private) = keys.merchant_pair("m_pub.pem", "m_priv.pem").unwrap();
        assert!(private.is_some());
        let signing = keys.signing_key("s_priv.pem", "s_pub.pem").unwrap();
        let secret = keys.secret("secret", || "abc".into()).unwrap();

        let again = KeyDir::open(&dir).unwrap();
        let (public2, _) = again.merchant_pair("m_pub.pem", "m_priv.pem").unwrap();
        assert_eq!(public2.to_spki_pem(), public.to_spki_pem());
        let signing2 = again.signing_key("s_priv.pem", "s_pub.pem").unwrap();
        assert_eq!(
            signing2.public_key().to_spki_pem(),
            signing.public_key().to_spki_pem()
        );
        assert_eq!(again.secret("secret", || "other".into()).unwrap(), secret);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("m_priv.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // A file that is not a key is named, its content never shown.
        std::fs::write(dir.join("m_pub.pem"), "SeCrEt-not-a-key").unwrap();
        let e = again
            .merchant_pair("m_pub.pem", "m_priv.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("m_pub.pem"), "{e}");
        assert!(!e.contains("SeCrEt"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
