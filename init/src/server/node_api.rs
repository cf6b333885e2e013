//! The `Node` service: node facts and power.

use super::NodeContext;
use crate::init::power::PowerAction;
use crate::pb::{self, node_server::Node};
use std::sync::Arc;
use tonic::{Request, Response, Status};

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
        let peer = crate::pki::tls::peer_spiffe_id(&req);
        Ok(Response::new(self.ctx.node_info(peer, super::authz::Caller::of(&req))))
    }

    async fn shutdown(&self, req: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownResponse>, Status> {
        self.request_power(PowerAction::PowerOff, req.get_ref().grace_period_millis)
    }

    async fn reboot(&self, req: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownResponse>, Status> {
        self.request_power(PowerAction::Reboot, req.get_ref().grace_period_millis)
    }
}
