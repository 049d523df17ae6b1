//! OpenAI-style error responses: `{"error":{"message","type","param","code"}}`.
//!
//! Every way a request can fail maps to one precise status here, so a client mistake is never
//! reported as a 500 and an upstream failure is never disguised as a client mistake.

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::proxy::body::RouterBody;

/// A request the router answers itself, with an OpenAI-compatible error body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message naming the field or value at fault.
    pub message: String,
    /// OpenAI error `type`.
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<&'static str>,
    /// Machine-readable code.
    pub code: &'static str,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            message,
            kind,
            param: None,
            code,
        }
    }

    /// 400: the body is not the JSON the endpoint expects.
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message.into(),
        );
        e.param = param;
        e
    }

    /// 401: a configured API key is missing or wrong.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "Missing or invalid API key: send `Authorization: Bearer <key>`.".into(),
        )
    }

    /// 401 with the reason credentials were refused.
    pub fn authentication_failed(message: String) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
        )
    }

    /// 403: the caller's allow list does not include this model.
    pub fn model_not_allowed(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "model_not_allowed",
            format!("Your credentials do not allow the model `{model}`."),
        );
        e.param = Some("model");
        e
    }

    /// 429: a token rate limit is exhausted (the message says which and for how long).
    pub fn rate_limited(message: String) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "tokens",
            "rate_limit_exceeded",
            message,
        )
    }

    /// 503: a global rate limit cannot be checked (Redis unreachable, fail-closed mode).
    pub fn rate_limit_unavailable(model: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "rate_limit_unavailable",
            format!("The global rate limit of model `{model}` cannot be checked right now (its Redis is unreachable); retry shortly."),
        )
    }

    /// 429: the fair queue of a server is full.
    pub fn queue_full(server: &str, depth: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "queue_full",
            format!("ModelServer {server} is saturated and {depth} requests are already queued; retry later."),
        )
    }

    /// 429: a request waited the whole queue timeout without getting an endpoint slot.
    pub fn queue_timeout(
        server: &str,
        timeout: std::time::Duration,
        priority: crate::policy::identity::Priority,
    ) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "queue_timeout",
            format!("ModelServer {server} stayed saturated: the request waited {timeout:?} in the {priority}-priority fair queue without a free slot; retry later."),
        )
    }

    /// 404: no ModelRoute serves this model name.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{model}` does not exist."),
        );
        e.param = Some("model");
        e
    }

    /// 404: a route exists for the model but none of its rules matched this request.
    pub fn no_rule_matched(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "route_not_found",
            format!("No ModelRoute rule for model `{model}` matches this request's headers, path or body."),
        );
        e.param = Some("model");
        e
    }

    /// 404: an unknown path.
    pub fn unknown_path(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown request URL: {method} {path}."),
        )
    }

    /// 405: a known path with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("Method {method} is not allowed on {path}."),
        )
    }

    /// 408: the client did not finish sending its body in time.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            "The request body was not received in time.".into(),
        )
    }

    /// 413: the body exceeds the router's limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body exceeds the router's limit of {limit} bytes."),
        )
    }

    /// 429: the router's own concurrency limit is reached.
    pub fn overloaded(limit: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!("The router is at its limit of {limit} concurrent requests; retry later."),
        )
    }

    /// 503: nothing can serve the request right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "no_healthy_upstream",
            message.into(),
        )
    }

    /// 503: a disaggregated request waited its whole queue timeout for a prefill slot on its
    /// decoder (`maxPrefillPerDecode` legs were in flight the whole time).
    pub fn prefill_queue_timeout(decoder: &str, limit: u32, waited: std::time::Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "prefill_queue_timeout",
            format!("Decode endpoint {decoder} kept {limit} prefills in flight (maxPrefillPerDecode) for {waited:?}; no prefill slot freed up. Retry later."),
        )
    }

    /// 502: an engine answered something the router cannot use.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "bad_upstream_response",
            message.into(),
        )
    }

    /// 503 while the router drains or has not loaded its configuration yet.
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "router_not_ready",
            message.into(),
        )
    }

    /// 504: the engine did not answer within the per-try timeout.
    pub fn upstream_timeout(endpoint: &str, timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "upstream_timeout",
            format!("The engine at {endpoint} sent no response headers within {timeout:?}."),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        Bytes::from(error_json(&self.message, self.kind, self.param, self.code))
    }

    /// The whole HTTP response.
    pub fn into_response(self) -> Response<RouterBody> {
        let mut r = Response::new(RouterBody::full(self.body()));
        *r.status_mut() = self.status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}

/// The error object as JSON text (also used for SSE error events).
pub fn error_json(message: &str, kind: &str, param: Option<&str>, code: &str) -> String {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_openai_shape() {
        let e = ApiError::model_not_found("gpt-x");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-x"));
    }
}
