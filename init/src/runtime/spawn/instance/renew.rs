//! An instance's identity, renewed at half-life: the parent mints a new SVID and spawn CA
//! for the child and hands them over with RenewIdentity; a failure is retried.

use super::*;
use crate::runtime::launcher::ChildLink;
use crate::runtime::spawn::child::RenewRefused;

/// When the child's SVID in `pki` expires.
pub(super) fn svid_expiry(pki: &crate::runtime::spawn::image::ChildPki) -> Option<std::time::SystemTime> {
    crate::pki::first_der(&pki.server.cert_pem).and_then(|d| crate::pki::not_after_of_der(&d))
}

/// When to renew a certificate that expires at `not_after`: at half its remaining life.
pub(super) fn half_life(not_after: Option<std::time::SystemTime>) -> Duration {
    not_after
        .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        .map_or(Duration::from_secs(1), |left| (left / 2).max(Duration::from_secs(1)))
}

/// Renews the child's SVID and spawn CA at half their life, over the parent's channel,
/// for as long as the child is in the table. A failed renewal is retried after a tenth of
/// the SVID's lifetime; the child keeps serving its old certificate until it expires.
pub(super) async fn renew_at_half_life(
    inst: std::sync::Weak<Instance>,
    id: SpawnIdentity,
    children: Arc<dyn ChildLink>,
    first: Duration,
) {
    let mut next = first;
    loop {
        tokio::time::sleep(next).await;
        let Some(i) = inst.upgrade() else { return };
        if i.body.ended() || i.stop_requested.load(Ordering::Relaxed) {
            return;
        }
        let retry = (i.svid_ttl / 10).max(Duration::from_secs(1));
        next = match renew(&i, &id, children.as_ref()).await {
            Ok(not_after) => half_life(not_after),
            Err(e) => {
                tracing::warn!("instance {}: renewing its identity: {e}; retrying in {retry:?}", i.name);
                retry
            }
        };
    }
}

/// Why a child's identity was not renewed (renewal retries).
#[derive(Debug, thiserror::Error)]
pub(super) enum RenewError {
    #[error("the child has no IPv4 address")]
    NoIpv4,
    #[error("{0}")]
    Mint(crate::runtime::spawn::SpawnError),
    #[error("{0}")]
    Child(RenewRefused),
}

pub(super) async fn renew(
    i: &Instance,
    id: &SpawnIdentity,
    children: &dyn ChildLink,
) -> std::result::Result<Option<std::time::SystemTime>, RenewError> {
    let ip = match i.address.ip() {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => return Err(RenewError::NoIpv4),
    };
    let pki = id
        .mint_child(i.name.as_str(), ip, i.svid_ttl)
        .map_err(RenewError::Mint)?;
    i.record_issued(&pki);
    let req = crate::pb::RenewIdentityRequest {
        svid_pem: pki.server.cert_pem.clone(),
        svid_key_pem: pki.server.key_pem.clone(),
        spawn_ca_pem: pki.spawn_ca.cert_pem.clone(),
        spawn_ca_key_pem: pki.spawn_ca.key_pem.clone(),
    };
    let bound = (i.svid_ttl / 4).max(Duration::from_secs(5));
    children
        .renew_identity(&i.channel, req, bound)
        .await
        .map_err(RenewError::Child)?;
    tracing::info!("instance {}: identity renewed", i.name);
    Ok(svid_expiry(&pki))
}
