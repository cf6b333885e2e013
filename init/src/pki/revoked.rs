//! Certificates a node refuses before they expire: every certificate it issued to an
//! instance it has freed (each generation of its SVID and spawn CA). A chain that holds one
//! is refused, so nothing the freed instance signed is accepted either. Entries go once the
//! certificate has expired, when webpki refuses it on its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Default)]
pub struct Revoked {
    /// DER → its expiry.
    certs: Mutex<HashMap<Vec<u8>, SystemTime>>,
}

impl Revoked {
    /// Refuses these certificates (DER) from now on.
    pub fn revoke(&self, ders: impl IntoIterator<Item = Vec<u8>>) {
        let Ok(mut m) = self.certs.lock() else { return };
        let now = SystemTime::now();
        m.retain(|_, until| *until > now);
        for der in ders {
            let until = super::not_after_of_der(&der).unwrap_or(SystemTime::UNIX_EPOCH);
            if until > now {
                m.insert(der, until);
            }
        }
    }

    /// Whether any certificate of `chain` is revoked.
    pub fn any(&self, chain: &[&[u8]]) -> bool {
        self.certs
            .lock()
            .map(|m| !m.is_empty() && chain.iter().any(|c| m.contains_key(*c)))
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_certificate_is_refused_in_any_position_of_a_chain() {
        let ca = crate::pki::mint_ca("t.test").unwrap();
        let leaf =
            crate::pki::mint_leaf(&ca, "spiffe://t.test/client/a", "a", crate::pki::LeafKind::Client, 1).unwrap();
        let ca_der = crate::pki::first_der(&ca.cert_pem).unwrap();
        let leaf_der = crate::pki::first_der(&leaf.cert_pem).unwrap();
        let r = Revoked::default();
        assert!(!r.any(&[&leaf_der, &ca_der]));
        r.revoke([ca_der.clone()]);
        assert!(r.any(&[&leaf_der, &ca_der]));
        assert!(!r.any(&[&leaf_der]));
        assert_eq!(r.certs.lock().unwrap().len(), 1);
    }
}
