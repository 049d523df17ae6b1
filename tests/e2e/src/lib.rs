//! Tests against the local control plane.
