//! DescribeCluster (key 60), versions 0-2: the brokers, the controller and the
//! cluster id from the catalog. On a one-node broker, this broker is all of
//! them; in a cluster, every registered broker, and the metadata group's
//! leader as the controller.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{HandlerError, RequestContext, str_bytes};

/// `endpoint_type` 1: brokers (2, controllers, is not served: KIP-919).
const ENDPOINT_BROKERS: i8 = 1;

pub async fn handle(
    ctx: &RequestContext,
    req: DescribeClusterRequest,
) -> Result<DescribeClusterResponse, HandlerError> {
    if !super::metadata::settled(&ctx.shard) {
        return Err(HandlerError::NotReady(
            "not caught up with the cluster metadata yet",
        ));
    }
    let config = &ctx.shard.config;
    let catalog = ctx.shard.catalog();
    let resp = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(catalog.cluster_id.clone()))
        .with_controller_id(BrokerId(config.node_id));
    if ctx.version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return Ok(resp
            .with_endpoint_type(req.endpoint_type)
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("only broker endpoints are served"))));
    }
    if ctx.shard.is_cluster() {
        let view = super::metadata::ClusterView::gather(&ctx.shard, &catalog).await?;
        let brokers = catalog
            .brokers
            .values()
            .map(|b| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.id))
                    .with_host(str_bytes(b.host.clone()))
                    .with_port(b.port)
            })
            .collect();
        return Ok(resp
            .with_controller_id(BrokerId(view.controller))
            .with_brokers(brokers));
    }
    let (host, port) = config
        .advertised()
        .expect("advertised listener validated at start");
    Ok(resp.with_brokers(vec![
        DescribeClusterBroker::default()
            .with_broker_id(BrokerId(config.node_id))
            .with_host(str_bytes(host))
            .with_port(port),
    ]))
}
