//! Metric sources outside the target's pods: Muster's router (one Prometheus exposition with
//! the fleet-wide value) and a Prometheus instant query.

use std::time::Duration;

use super::metrics_source::sum_metric;
use super::scrape::fetch_url;

/// Reads `name` (all series summed) from the exposition at `url`.
pub async fn read_router(url: &str, name: &str, timeout: Duration) -> Result<f64, String> {
    let text = fetch_url(url, timeout).await?;
    sum_metric(&text, name).ok_or_else(|| format!("no {name} at {url}"))
}

/// Runs an instant query against the Prometheus at `server_url`.
pub async fn query_prometheus(
    server_url: &str,
    query: &str,
    timeout: Duration,
) -> Result<f64, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        server_url.trim_end_matches('/'),
        percent_encode(query)
    );
    let body = fetch_url(&url, timeout).await?;
    parse_query_response(&body)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a `/api/v1/query` answer: a scalar, or the sum of a vector's samples. An
/// empty vector is an error, not zero: the series may simply not exist (yet).
pub fn parse_query_response(body: &str) -> Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("Prometheus answer is not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "Prometheus query failed: {}",
            v["error"].as_str().unwrap_or("unknown error")
        ));
    }
    let number = |sample: &serde_json::Value| -> Result<f64, String> {
        sample[1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("Prometheus sample {sample} is not a number"))
    };
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("scalar") => number(&data["result"]),
        Some("vector") => {
            let result = data["result"].as_array().cloned().unwrap_or_default();
            if result.is_empty() {
                return Err("Prometheus query returned no series".into());
            }
            result.iter().map(|r| number(&r["value"])).sum()
        }
        other => Err(format!(
            "Prometheus result type {other:?} is not scalar or vector"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaling::scrape::tests::serve;

    #[test]
    fn query_answers() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a"},"value":[1700000000.1,"2.5"]},
            {"metric":{"pod":"b"},"value":[1700000000.1,"1"]}]}}"#;
        assert_eq!(parse_query_response(vector), Ok(3.5));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"7"]}}"#;
        assert_eq!(parse_query_response(scalar), Ok(7.0));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_query_response(empty)
            .unwrap_err()
            .contains("no series"));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(parse_query_response(bad)
            .unwrap_err()
            .contains("parse error"));
        assert!(parse_query_response("<html>").is_err());
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"sum(x{a="b c"})"#),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29"
        );
    }

    #[tokio::test]
    async fn reads_router_and_prometheus_over_http() {
        let router = serve(
            "muster_router_inflight{model=\"m\"} 3\nmuster_router_inflight{model=\"n\"} 4\n",
            Duration::ZERO,
        )
        .await;
        let url = format!("http://{router}/metrics");
        let t = Duration::from_secs(2);
        assert_eq!(
            read_router(&url, "muster_router_inflight", t).await,
            Ok(7.0)
        );
        assert!(read_router(&url, "absent", t)
            .await
            .unwrap_err()
            .contains("no absent"));
        let prom = serve(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"5"]}}"#,
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            query_prometheus(&format!("http://{prom}/"), "up", t).await,
            Ok(5.0)
        );
        assert!(fetch_url("https://127.0.0.1:1/", t)
            .await
            .unwrap_err()
            .contains("only http"));
    }
}
