//! The `Node` service: node facts and power.

use super::authz::Caller;
use super::NodeContext;
use crate::init::power::PowerAction;
use crate::pb::{self, node_server::Node};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The longest a client may ask workloads to be given at Shutdown or Reboot: a power
/// action is never held off for longer.
pub const MAX_GRACE_MS: u32 = 300_000;

pub struct NodeApi {
    pub ctx: Arc<NodeContext>,
}

impl NodeApi {
    fn request_power(&self, action: PowerAction, grace_ms: u32) -> Result<Response<pb::ShutdownResponse>, Status> {
        if action == PowerAction::Reboot && !self.ctx.pid1 {
            return Err(Status::failed_precondition(
                "auraed runs as a daemon here, not as PID 1: it will not reboot the host (use Shutdown to stop the daemon)",
            ));
        }
        if grace_ms > MAX_GRACE_MS {
            return Err(Status::invalid_argument(format!(
                "grace_period_millis: {grace_ms} is above the limit {MAX_GRACE_MS} (5 minutes)"
            )));
        }
        let action = if self.ctx.pid1 { action } else { PowerAction::Exit };
        self.ctx.set_grace(grace_ms);
        self.ctx
            .power
            .send(action)
            .map_err(|_| Status::unavailable("auraed is already shutting down"))?;
        tracing::info!("{action:?} requested over the API");
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}

#[tonic::async_trait]
impl Node for NodeApi {
    async fn info(&self, req: Request<pb::NodeInfoRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        let caller = Caller::of(&req);
        // The mTLS peer: the parent that delivered a forwarded call, else the caller.
        let peer = caller
            .map(|c| c.via.clone().unwrap_or_else(|| c.id.clone()))
            .unwrap_or_default();
        Ok(Response::new(self.ctx.node_info(peer, caller)))
    }

    async fn shutdown(&self, req: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownResponse>, Status> {
        self.request_power(PowerAction::PowerOff, req.get_ref().grace_period_millis)
    }

    async fn reboot(&self, req: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownResponse>, Status> {
        self.request_power(PowerAction::Reboot, req.get_ref().grace_period_millis)
    }

    async fn renew_identity(
        &self,
        req: Request<pb::RenewIdentityRequest>,
    ) -> Result<Response<pb::RenewIdentityResponse>, Status> {
        Caller::parent_only(&req, &self.ctx.auth, "renew this node's identity")?;
        let r = req.into_inner();
        let renewed = renew::check(&self.ctx, &r)?;
        renew::install(&self.ctx, &r)?;
        Ok(Response::new(pb::RenewIdentityResponse {
            not_after_unix_seconds: renewed,
        }))
    }
}

/// Checking and installing a renewed identity.
mod renew {
    use super::NodeContext;
    use crate::pb;
    use tonic::Status;

    fn bad(field: &str, why: impl std::fmt::Display) -> Status {
        Status::invalid_argument(format!("{field}: {why}"))
    }

    /// The new SVID must carry this node's own ID and the spawn CA `<ID>/spawn-ca`, each
    /// issued by a CA entitled to (so a parent cannot rename its child, nor hand it a CA
    /// for someone else's subtree). Returns the SVID's expiry (unix seconds).
    pub fn check(ctx: &NodeContext, r: &pb::RenewIdentityRequest) -> Result<u64, Status> {
        let own = |pem: &str, want: &str, field: &str| -> Result<u64, Status> {
            let id = crate::pki::spiffe_id_of_pem(pem).ok_or_else(|| bad(field, "no certificate with a SPIFFE ID"))?;
            if id != want {
                return Err(bad(field, format!("carries {id}, not this node's {want}")));
            }
            let chain = crate::pki::chain_der(pem);
            let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
            ctx.auth.check_chain(&refs).map_err(|why| bad(field, why))?;
            let until = chain.first().and_then(|d| crate::pki::not_after_of_der(d));
            Ok(until.map_or(0, super::super::unix))
        };
        let not_after = own(&r.svid_pem, &ctx.spiffe_id, "svid_pem")?;
        if !r.spawn_ca_pem.is_empty() {
            own(&r.spawn_ca_pem, &format!("{}/spawn-ca", ctx.spiffe_id), "spawn_ca_pem")?;
        }
        Ok(not_after)
    }

    /// Writes the files (each pair via a temporary name, then renamed) and swaps the live
    /// certificate; a key that does not match its certificate changes nothing.
    pub fn install(ctx: &NodeContext, r: &pb::RenewIdentityRequest) -> Result<(), Status> {
        let identity = ctx
            .identity
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this node serves no renewable identity"))?;
        // Validate the keys before anything is written: a spawn-CA key that is not its
        // certificate's would sign children's SVIDs nobody can verify.
        crate::pki::tls::key_matches(&r.svid_pem, &r.svid_key_pem).map_err(|e| bad("svid_key_pem", e))?;
        if !r.spawn_ca_pem.is_empty() {
            crate::pki::tls::key_matches(&r.spawn_ca_pem, &r.spawn_ca_key_pem)
                .map_err(|e| bad("spawn_ca_key_pem", format!("{e}; it must be the key of spawn_ca_pem")))?;
        }
        if let Some(dir) = &ctx.pki_dir {
            let mut pairs = vec![("server", &r.svid_pem, &r.svid_key_pem)];
            if !r.spawn_ca_pem.is_empty() {
                pairs.push(("spawn-ca", &r.spawn_ca_pem, &r.spawn_ca_key_pem));
            }
            for (stem, cert, key) in pairs {
                let m = crate::pki::Minted {
                    cert_pem: cert.clone(),
                    key_pem: key.clone(),
                };
                crate::pki::replace_pair(dir, stem, &m).map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        identity
            .replace(&r.svid_pem, &r.svid_key_pem)
            .map_err(|e| bad("svid_key_pem", e))?;
        tracing::info!("identity renewed by the parent");
        Ok(())
    }
}
