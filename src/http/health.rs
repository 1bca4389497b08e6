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
    if !node.key_checked() {
        return HttpResponse::ServiceUnavailable().json(
            serde_json::json!({ "status": "store unavailable", "detail": "master key not checked yet" }),
        );
    }
    match node.stores.chat.ping().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "store unavailable", "detail": e.to_string() })),
    }
}

pub async fn metrics(node: NodeData) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(node.metrics.render())
}
