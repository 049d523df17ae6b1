//! Muster's API: the CRD types users apply, mirror types for the Volcano objects Muster
//! manages, and the label/annotation names every component shares.
//!
//! Validation lives in the schema itself (OpenAPI bounds and CEL `x-kubernetes-validations`),
//! so the API server rejects a bad object with a message that names the field, before any
//! controller sees it.

// kube's `printcolumn(...)` attributes repeat `type_ = ...` legitimately; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod autoscaling;
pub mod crd;
pub mod labels;
pub mod networking;
pub mod reference;
pub mod serving;
pub mod volcano;

pub use autoscaling::{AutoscalingPolicy, AutoscalingPolicySpec, AutoscalingPolicyStatus};
pub use networking::{ModelRoute, ModelRouteSpec, ModelServer, ModelServerSpec};
pub use serving::{ModelServing, ModelServingSpec, ModelServingStatus};
