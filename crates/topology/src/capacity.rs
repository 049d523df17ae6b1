//! Resource amounts (GPUs, CPU, memory) read from Nodes and Pods.
//!
//! Only the three resources tier choice needs are tracked. Amounts are integers in the unit the
//! scheduler compares: whole GPUs, CPU millicores, memory bytes.

use std::collections::BTreeMap;
use std::ops::{Add, Sub};

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use muster_api::labels::NVIDIA_GPU;

/// An amount of the resources Muster places by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Whole `nvidia.com/gpu` devices.
    pub gpu: i64,
    /// CPU in millicores.
    pub cpu_milli: i64,
    /// Memory in bytes.
    pub memory: i64,
}

impl Resources {
    /// GPUs only (CPU and memory zero, i.e. "not constrained").
    pub fn gpus(gpu: i64) -> Self {
        Resources {
            gpu,
            ..Default::default()
        }
    }

    /// Every component clamped at zero: an overcommitted node has nothing free, it does not
    /// owe capacity to its neighbours.
    pub fn clamp_zero(self) -> Self {
        Resources {
            gpu: self.gpu.max(0),
            cpu_milli: self.cpu_milli.max(0),
            memory: self.memory.max(0),
        }
    }

    /// Whether `self` covers `demand` in every resource.
    pub fn covers(&self, demand: &Resources) -> bool {
        self.gpu >= demand.gpu && self.cpu_milli >= demand.cpu_milli && self.memory >= demand.memory
    }

    /// Multiply every component by `n`, saturating (memory bytes × pods can get large).
    pub fn times(self, n: i64) -> Self {
        Resources {
            gpu: self.gpu.saturating_mul(n),
            cpu_milli: self.cpu_milli.saturating_mul(n),
            memory: self.memory.saturating_mul(n),
        }
    }

    /// How many pods of shape `per_pod` fit into `self`. Resources the pod does not request
    /// (zero) do not limit the count; a pod requesting nothing fits without bound.
    pub fn fit_count(&self, per_pod: &Resources) -> i64 {
        let mut n = i64::MAX;
        for (have, want) in [
            (self.gpu, per_pod.gpu),
            (self.cpu_milli, per_pod.cpu_milli),
            (self.memory, per_pod.memory),
        ] {
            if want > 0 {
                n = n.min(have.max(0) / want);
            }
        }
        n
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Resources {
            gpu: self.gpu + o.gpu,
            cpu_milli: self.cpu_milli + o.cpu_milli,
            memory: self.memory + o.memory,
        }
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(self, o: Resources) -> Resources {
        Resources {
            gpu: self.gpu - o.gpu,
            cpu_milli: self.cpu_milli - o.cpu_milli,
            memory: self.memory - o.memory,
        }
    }
}

/// Parse a Kubernetes quantity (`"8"`, `"500m"`, `"16Gi"`, `"1.5"`, `"2e3"`) into a float in base
/// units. Returns `None` for anything unparseable; callers treat that as zero, because a
/// malformed allocatable must not crash placement.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    // "1e3" / "1E3": decimal exponent, not the exa suffix "E" followed by nothing.
    if let Some(exp) = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E').filter(|s| !s.is_empty()))
    {
        let base: f64 = num.parse().ok()?;
        let exp: i32 = exp.parse().ok()?;
        return Some(base * 10f64.powi(exp));
    }
    let base: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(base * mult)
}

fn from_map(map: &BTreeMap<String, Quantity>) -> Resources {
    let get = |k: &str| map.get(k).and_then(|q| parse_quantity(&q.0)).unwrap_or(0.0);
    Resources {
        // GPUs are whole devices; a fractional value is a misconfiguration, round down.
        gpu: get(NVIDIA_GPU).floor() as i64,
        cpu_milli: (get("cpu") * 1000.0).ceil() as i64,
        memory: get("memory").ceil() as i64,
    }
}

/// Allocatable resources of a Node (`status.allocatable`).
pub fn node_allocatable(node: &Node) -> Resources {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .map(from_map)
        .unwrap_or_default()
}

/// Whether new pods may land on the node (not cordoned).
pub fn node_schedulable(node: &Node) -> bool {
    !node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn container_requests(r: Option<&ResourceRequirements>) -> Resources {
    let Some(r) = r else {
        return Resources::default();
    };
    let req = r.requests.as_ref().map(from_map).unwrap_or_default();
    let lim = r.limits.as_ref().map(from_map).unwrap_or_default();
    // The API server defaults requests to limits when only limits are set (always the case
    // for extended resources like GPUs); do the same for objects that skipped defaulting.
    let pick = |req: i64, lim: i64| if req > 0 { req } else { lim };
    Resources {
        gpu: pick(req.gpu, lim.gpu),
        cpu_milli: pick(req.cpu_milli, lim.cpu_milli),
        memory: pick(req.memory, lim.memory),
    }
}

/// Effective requests of a pod, as the scheduler counts them: the sum over containers, at
/// least the largest init container, plus pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    pod.spec.as_ref().map(pod_spec_requests).unwrap_or_default()
}

/// Effective requests of a pod spec (see [`pod_requests`]); used for templates.
pub fn pod_spec_requests(spec: &PodSpec) -> Resources {
    let sum = spec
        .containers
        .iter()
        .map(|c| container_requests(c.resources.as_ref()))
        .fold(Resources::default(), |a, b| a + b);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_requests(c.resources.as_ref()))
        .fold(Resources::default(), |a, b| Resources {
            gpu: a.gpu.max(b.gpu),
            cpu_milli: a.cpu_milli.max(b.cpu_milli),
            memory: a.memory.max(b.memory),
        });
    let overhead = spec.overhead.as_ref().map(from_map).unwrap_or_default();
    Resources {
        gpu: sum.gpu.max(init.gpu),
        cpu_milli: sum.cpu_milli.max(init.cpu_milli),
        memory: sum.memory.max(init.memory),
    } + overhead
}

/// The node a pod holds resources on: bound (`spec.nodeName`) and not finished.
pub fn pod_bound_node(pod: &Pod) -> Option<String> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return None;
    }
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("8"), Some(8.0));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("16Gi"), Some(16.0 * 1024f64.powi(3)));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("1E"), Some(1e18));
        assert_eq!(parse_quantity("1.5k"), Some(1500.0));
        assert_eq!(parse_quantity("ten"), None);
        assert_eq!(parse_quantity("5Zi"), None);
    }

    #[test]
    fn fit_count_ignores_unrequested_resources_and_clamps() {
        let free = Resources {
            gpu: 8,
            cpu_milli: 3000,
            memory: 0,
        };
        assert_eq!(free.fit_count(&Resources::gpus(2)), 4);
        let shape = Resources {
            gpu: 2,
            cpu_milli: 1000,
            memory: 0,
        };
        assert_eq!(free.fit_count(&shape), 3, "CPU limits to 3 pods");
        assert_eq!(Resources::gpus(-3).fit_count(&Resources::gpus(1)), 0);
    }
}
