//! Who a child is and who may call it: its SVID and its own spawn CA, minted by this
//! node's spawn CA, and its policy, derived from this node's.

use super::image::ChildPki;
use super::SpawnError;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// What a node needs to spawn: its PKI directory (ca.crt, server.*, spawn-ca.*), its own
/// SPIFFE ID, under which children are named, and its policy, from which theirs derive.
#[derive(Debug, Clone)]
pub struct SpawnIdentity {
    pub pki_dir: PathBuf,
    pub spiffe_id: String,
    pub policy: crate::pki::policy::Policy,
    /// This node's certificate (renewed in place), presented to its children.
    pub identity: std::sync::Arc<crate::pki::tls::LiveIdentity>,
    /// The root CA (PEM) children are verified against.
    pub root_pem: String,
    /// Where the certificates of freed children go (authorization refuses them).
    pub revoked: std::sync::Arc<crate::pki::revoked::Revoked>,
}

impl SpawnIdentity {
    /// `<this node's ID>/instance/<name>`.
    pub fn child_id(&self, name: &str) -> String {
        format!("{}/instance/{name}", self.spiffe_id)
    }

    /// Mints the child `name` (SPIFFE ID `child_id`, reachable at `ip`) an SVID valid for
    /// `ttl`, and a spawn CA of its own for grandchildren; both chain to this node's spawn CA.
    pub fn mint_child(&self, name: &str, ip: Ipv4Addr, ttl: Duration) -> Result<ChildPki, SpawnError> {
        let spiffe_id = self.child_id(name);
        let spawn_ca = crate::pki::read_pair(&self.pki_dir, "spawn-ca")?;
        let ca_path = self.pki_dir.join("ca.crt");
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(SpawnError::io("read", ca_path))?;
        let name = name.to_owned();
        let mut server = crate::pki::mint_svid(
            &spawn_ca,
            &spiffe_id,
            &name,
            std::slice::from_ref(&name),
            &[ip.into()],
            ttl,
        )?;
        server.cert_pem.push_str(&spawn_ca.cert_pem);
        let mut child_ca = crate::pki::mint_intermediate(
            &spawn_ca,
            &format!("{spiffe_id}/spawn-ca"),
            &format!("Aurae spawn CA ({name})"),
            ttl,
        )?;
        child_ca.cert_pem.push_str(&spawn_ca.cert_pem);
        Ok(ChildPki {
            ca_pem,
            server,
            spawn_ca: child_ca,
            policy: self.policy.for_child(&self.spiffe_id).render(),
        })
    }
}

/// A node `spiffe://t.test/node/n` with a root CA and a spawn CA under it written to `dir`,
/// as `auraed pki` makes them (tests only); also the two CAs.
#[cfg(test)]
pub(crate) fn test_spawn_identity(
    dir: &std::path::Path,
    policy: crate::pki::policy::Policy,
) -> (SpawnIdentity, crate::pki::Minted, crate::pki::Minted) {
    let ca = crate::pki::mint_ca("t.test").unwrap();
    let spawn_ca = crate::pki::mint_intermediate(
        &ca,
        "spiffe://t.test/node/n/spawn-ca",
        "spawn",
        Duration::from_secs(3600),
    )
    .unwrap();
    crate::pki::write_pair(dir, "ca", &ca).unwrap();
    crate::pki::write_pair(dir, "spawn-ca", &spawn_ca).unwrap();
    let leaf = crate::pki::mint_leaf(&ca, "spiffe://t.test/node/n", "n", crate::pki::LeafKind::Client, 1).unwrap();
    let id = SpawnIdentity {
        pki_dir: dir.to_owned(),
        spiffe_id: "spiffe://t.test/node/n".into(),
        identity: std::sync::Arc::new(crate::pki::tls::LiveIdentity::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap()),
        root_pem: ca.cert_pem.clone(),
        revoked: Default::default(),
        policy,
    };
    (id, ca, spawn_ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_named_under_its_parent_and_its_svid_chains_to_the_spawn_ca() {
        let d = tempfile::tempdir().unwrap();
        let policy = crate::pki::policy::Policy::parse(
            "[[allow]]\nid = \"spiffe://t.test/client/admin\"\nrole = \"admin\"\n",
            "p",
        )
        .unwrap();
        let (id, ca, spawn_ca) = test_spawn_identity(d.path(), policy);
        let pki = id
            .mint_child("c1", Ipv4Addr::new(10, 254, 0, 254), Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            crate::pki::spiffe_id_of_pem(&pki.server.cert_pem).as_deref(),
            Some("spiffe://t.test/node/n/instance/c1")
        );
        assert!(
            pki.server.cert_pem.ends_with(&spawn_ca.cert_pem),
            "the chain up to the root"
        );
        assert_eq!(pki.ca_pem, ca.cert_pem);
        let policy = crate::pki::policy::Policy::parse(&pki.policy, "child").unwrap();
        assert_eq!(policy.parent.as_deref(), Some("spiffe://t.test/node/n"));
        assert_eq!(
            policy.role_of("spiffe://t.test/client/admin"),
            Some(crate::pki::policy::Role::Admin)
        );
    }

    #[test]
    fn a_node_without_a_spawn_ca_says_which_file_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let (mut id, _, _) = test_spawn_identity(d.path(), Default::default());
        std::fs::remove_file(d.path().join("spawn-ca.key")).unwrap();
        id.root_pem = String::new();
        let Err(e) = id.mint_child("c1", Ipv4Addr::LOCALHOST, Duration::from_secs(60)) else {
            panic!("minted without a spawn CA")
        };
        assert!(matches!(e, SpawnError::Identity(_)), "{e:?}");
        assert!(e.to_string().contains("spawn-ca"), "{e}");
    }
}
