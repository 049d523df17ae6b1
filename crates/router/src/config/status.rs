//! ModelServer and ModelRoute status from compile reports. Pure: the previous status comes in
//! so a condition keeps its `lastTransitionTime` while its status is unchanged, and the writer
//! can skip a patch that would change nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use muster_api::labels::conditions::{ACCEPTED, READY};
use muster_api::networking::{ModelRouteStatus, ModelServerStatus};

use super::{RouteReport, ServerReport, Verdict};

fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    type_: &str,
    verdict: &Verdict,
    ok_reason: &str,
    ok_message: String,
    now: &Time,
) -> Condition {
    let (status, reason, message) = match verdict {
        Ok(()) => ("True", ok_reason.to_string(), ok_message),
        Err((reason, message)) => ("False", reason.clone(), message.clone()),
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason,
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// Status of a ModelServer.
pub fn server_status(
    report: &ServerReport,
    previous: Option<&ModelServerStatus>,
    now: &Time,
) -> ModelServerStatus {
    let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let ready: Verdict = if report.ready > 0 {
        Ok(())
    } else if report.total == 0 {
        Err((
            "NoEndpoints".into(),
            "the workload selector matches no pods".into(),
        ))
    } else {
        Err((
            "NoReadyEndpoints".into(),
            format!("none of the {} selected pods is Ready", report.total),
        ))
    };
    ModelServerStatus {
        observed_generation: report.generation,
        total_endpoints: report.total,
        ready_endpoints: report.ready,
        prefill_endpoints: report.prefill,
        decode_endpoints: report.decode,
        conditions: vec![
            condition(
                prev,
                report.generation,
                ACCEPTED,
                &report.accepted,
                "Accepted",
                "the router serves this ModelServer".into(),
                now,
            ),
            condition(
                prev,
                report.generation,
                READY,
                &ready,
                "EndpointsReady",
                format!(
                    "{} of {} selected pods are Ready",
                    report.ready, report.total
                ),
                now,
            ),
        ],
    }
}

/// Status of a ModelRoute.
pub fn route_status(
    report: &RouteReport,
    previous: Option<&ModelRouteStatus>,
    now: &Time,
) -> ModelRouteStatus {
    let prev = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    ModelRouteStatus {
        observed_generation: report.generation,
        conditions: vec![
            condition(
                prev,
                report.generation,
                ACCEPTED,
                &report.accepted,
                "Accepted",
                "the router serves this ModelRoute".into(),
                now,
            ),
            condition(
                prev,
                report.generation,
                READY,
                &report.ready,
                "TargetsResolved",
                "every target ModelServer exists".into(),
                now,
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ObjectKey;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn counts_and_conditions_follow_the_report() {
        let mut report = ServerReport {
            key: ObjectKey::new("ns", "llama"),
            generation: Some(3),
            accepted: Ok(()),
            total: 3,
            ready: 0,
            prefill: 0,
            decode: 0,
        };
        let s1 = server_status(&report, None, &time(100));
        assert_eq!((s1.total_endpoints, s1.ready_endpoints), (3, 0));
        let ready = s1.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoReadyEndpoints")
        );

        report.ready = 2;
        let s2 = server_status(&report, Some(&s1), &time(200));
        let ready = s2.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(
            ready.last_transition_time,
            time(200),
            "flipped, so the time moves"
        );
        let accepted = s2.conditions.iter().find(|c| c.type_ == ACCEPTED).unwrap();
        assert_eq!(
            accepted.last_transition_time,
            time(100),
            "unchanged, so the time stays"
        );
        assert_eq!(accepted.observed_generation, Some(3));
    }

    #[test]
    fn route_conditions_carry_reasons() {
        let report = RouteReport {
            key: ObjectKey::new("ns", "r"),
            generation: Some(1),
            accepted: Err(("Shadowed".into(), "older route".into())),
            ready: Err(("ModelServerNotFound".into(), "x missing".into())),
        };
        let s = route_status(&report, None, &time(5));
        let reasons: Vec<(&str, &str)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [(ACCEPTED, "Shadowed"), (READY, "ModelServerNotFound")]
        );
    }
}
