//! Who may sign what. mTLS (webpki) proves a peer's chain reaches the root CA; this module
//! adds the rule that makes a compromised child harmless: **a CA below the root signs only
//! inside its own subtree.** A spawn CA `X/spawn-ca` may sign `X/instance/NAME` (an
//! instance's SVID) and `X/instance/NAME/spawn-ca` (that instance's own spawn CA), nothing
//! else. Client IDs (`/client/…`) and node IDs (`/node/NAME`) can thus only come from the
//! root key, which never enters an image.
//!
//! URI name constraints would say the same inside the certificates, but webpki rejects every
//! URI SAN under a URI-constrained CA, so the rule is checked here, on the chain the peer
//! presented: a path of verified signatures from the leaf to the root in which every step
//! obeys it. Each certificate on it must carry exactly one URI SAN (a SPIFFE ID).

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// How deep a chain may be: root, node spawn CA, one CA per nesting level, the leaf.
const MAX_CHAIN: usize = super::MAX_NESTING + 3;

/// Why a presented chain is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
    #[error("unreadable subjectAltName: {0}")]
    UnreadableSan(String),
    #[error("no subjectAltName (no SPIFFE ID)")]
    NoSan,
    #[error("no URI SAN (no SPIFFE ID)")]
    NoUri,
    #[error("its URI SAN is not a SPIFFE ID")]
    NotSpiffe,
    #[error("{0} URI SANs; a SPIFFE certificate has exactly one")]
    ManyUris(usize),
    #[error("no certificate")]
    Empty,
    #[error("no SPIFFE ID")]
    NoLeafId,
    #[error(
        "{0} is not signed by the root CA or by a spawn CA whose subtree holds it \
         (a spawned node's CA signs only its own instances)"
    )]
    NotRooted(String),
    #[error("a certificate in it was revoked")]
    Revoked,
    #[error("this node has no root CA to check certificates against")]
    NoRoot,
}

/// The single SPIFFE ID of `cert`, or why it has none.
fn sole_spiffe_id<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, ChainError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| ChainError::UnreadableSan(e.to_string()))?
        .ok_or(ChainError::NoSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] if one.starts_with("spiffe://") => Ok(one),
        [] => Err(ChainError::NoUri),
        [_] => Err(ChainError::NotSpiffe),
        _ => Err(ChainError::ManyUris(uris.len())),
    }
}

/// May the CA `issuer_id` sign `subject_id`? Only inside its own subtree.
pub fn may_sign(issuer_id: &str, subject_id: &str) -> bool {
    let Some(owner) = issuer_id.strip_suffix("/spawn-ca") else {
        return false;
    };
    let Some(rest) = subject_id
        .strip_prefix(owner)
        .and_then(|r| r.strip_prefix("/instance/"))
    else {
        return false;
    };
    let name = rest.strip_suffix("/spawn-ca").unwrap_or(rest);
    !name.is_empty() && !name.contains('/')
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, ChainError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| ChainError::Unparsable(e.to_string()))
}

/// Checks that `presented` (the peer's chain as sent, leaf first) holds a path of verified
/// signatures from the leaf to `root_der` in which each CA below the root signs only inside
/// its own subtree. The error says why not.
pub fn check(presented: &[&[u8]], root_der: &[u8]) -> Result<(), ChainError> {
    let root = parse(root_der)?;
    let Some((leaf, rest)) = presented.split_first() else {
        return Err(ChainError::Empty);
    };
    let leaf = parse(leaf)?;
    // Junk among the extras is ignored: only a path that verifies counts.
    let pool: Vec<X509Certificate<'_>> = rest.iter().filter_map(|d| parse(d).ok()).collect();
    let leaf_id = sole_spiffe_id(&leaf)?;
    if reaches_root(&leaf, leaf_id, &pool, &root, 0) {
        Ok(())
    } else {
        Err(ChainError::NotRooted(leaf_id.to_owned()))
    }
}

fn reaches_root(
    cert: &X509Certificate<'_>,
    id: &str,
    pool: &[X509Certificate<'_>],
    root: &X509Certificate<'_>,
    depth: usize,
) -> bool {
    if depth > MAX_CHAIN {
        return false;
    }
    if cert.issuer() == root.subject() && cert.verify_signature(Some(root.public_key())).is_ok() {
        return true;
    }
    pool.iter().any(|ca| {
        ca.is_ca()
            && ca.subject() == cert.issuer()
            && sole_spiffe_id(ca).is_ok_and(|ca_id| {
                may_sign(ca_id, id)
                    && cert.verify_signature(Some(ca.public_key())).is_ok()
                    && reaches_root(ca, ca_id, pool, root, depth + 1)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{mint_ca, mint_intermediate, mint_leaf, mint_svid, LeafKind, Minted};
    use std::time::Duration;

    const H: Duration = Duration::from_secs(3600);

    fn check_pem(chain: &str, root: &Minted) -> Result<(), ChainError> {
        let c = crate::pki::chain_der(chain);
        let refs: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
        check(&refs, &crate::pki::chain_der(&root.cert_pem)[0])
    }

    /// root → node spawn CA → c1 SVID and c1's spawn CA (as a node's `mint_child` does).
    struct Tree {
        root: Minted,
        c1: Minted,
        c1_ca: Minted,
    }

    fn tree() -> Tree {
        let root = mint_ca("t.test").unwrap();
        let node_ca = mint_intermediate(&root, "spiffe://t.test/node/n/spawn-ca", "n", H).unwrap();
        let mut c1 = mint_svid(&node_ca, "spiffe://t.test/node/n/instance/c1", "c1", &[], &[], H).unwrap();
        c1.cert_pem.push_str(&node_ca.cert_pem);
        let mut c1_ca = mint_intermediate(&node_ca, "spiffe://t.test/node/n/instance/c1/spawn-ca", "c1", H).unwrap();
        c1_ca.cert_pem.push_str(&node_ca.cert_pem);
        Tree { root, c1, c1_ca }
    }

    /// What a compromised c1 can make with its own spawn CA, chain attached.
    fn forged(t: &Tree, id: &str) -> String {
        let m = mint_svid(&t.c1_ca, id, "x", &[], &[], H).unwrap();
        format!("{}{}", m.cert_pem, t.c1_ca.cert_pem)
    }

    #[test]
    fn the_subtree_rule() {
        let ca = "spiffe://d/node/n/instance/c1/spawn-ca";
        assert!(may_sign(ca, "spiffe://d/node/n/instance/c1/instance/g1"));
        assert!(may_sign(ca, "spiffe://d/node/n/instance/c1/instance/g1/spawn-ca"));
        for no in [
            "spiffe://d/client/admin",
            "spiffe://d/node/n",
            "spiffe://d/node/n/instance/c1",
            "spiffe://d/node/n/instance/c2",
            "spiffe://d/node/n/instance/c1/instance/g1/instance/h1",
            "spiffe://d/node/n/instance/c1/instance/",
            "spiffe://d/node/n/instance/c10/instance/g1",
        ] {
            assert!(!may_sign(ca, no), "{no}");
        }
        assert!(!may_sign(
            "spiffe://d/client/admin",
            "spiffe://d/client/admin/instance/x"
        ));
    }

    #[test]
    fn real_chains_pass() {
        let t = tree();
        check_pem(&t.c1.cert_pem, &t.root).unwrap();
        check_pem(&forged(&t, "spiffe://t.test/node/n/instance/c1/instance/g1"), &t.root).unwrap();
        let client = mint_leaf(&t.root, "spiffe://t.test/client/admin", "a", LeafKind::Client, 1).unwrap();
        check_pem(&client.cert_pem, &t.root).unwrap();
    }

    #[test]
    fn a_child_cannot_mint_a_client_its_parent_or_a_sibling() {
        let t = tree();
        for id in [
            "spiffe://t.test/client/admin",
            "spiffe://t.test/node/n",
            "spiffe://t.test/node/n/instance/c2",
            "spiffe://t.test/node/other",
        ] {
            let e = check_pem(&forged(&t, id), &t.root).unwrap_err().to_string();
            assert!(e.starts_with(id) && e.contains("subtree"), "{id}: {e}");
        }
    }

    #[test]
    fn a_chain_that_only_looks_right_fails() {
        let t = tree();
        // An impostor CA with the node CA's name and ID but its own key.
        let impostor_root = mint_ca("t.test").unwrap();
        let fake_node_ca = mint_intermediate(&impostor_root, "spiffe://t.test/node/n/spawn-ca", "n", H).unwrap();
        let m = mint_svid(&fake_node_ca, "spiffe://t.test/node/n/instance/c2", "c2", &[], &[], H).unwrap();
        let chain = format!("{}{}{}", m.cert_pem, fake_node_ca.cert_pem, t.c1.cert_pem);
        assert!(check_pem(&chain, &t.root).is_err());
        // A leaf with no SPIFFE ID, or two.
        let e = check_pem(&mint_ca("t.test").unwrap().cert_pem, &t.root)
            .unwrap_err()
            .to_string();
        assert!(!e.is_empty());
    }
}
