//! `/healthz` (the process answers), `/readyz` (the store can write, the master key matched
//! it, and the node is not draining) and `/metrics` (Prometheus text).

use super::NodeData;
use actix_web::HttpResponse;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(node: NodeData) -> HttpResponse {
    if node.is_draining() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "draining" }));
    }
    match node.stores.chat.ping().await {
        // The store answers, but the master key's check against it has not run yet.
        Ok(()) if !node.key_checked() => HttpResponse::ServiceUnavailable().json(
            serde_json::json!({ "status": "starting", "detail": "checking the master key against the store" }),
        ),
        Ok(()) if !node.cluster_ready() => HttpResponse::ServiceUnavailable().json(
            serde_json::json!({ "status": "starting", "detail": "no view of the cluster yet (is Redis reachable?)" }),
        ),
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "store unavailable", "detail": e.to_string() })),
    }
}

pub async fn metrics(node: NodeData) -> HttpResponse {
    let mut text = node.metrics.render();
    if let Some(peers) = &node.peers {
        crate::telemetry::render_peers(&mut text, &peers.stats());
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}
