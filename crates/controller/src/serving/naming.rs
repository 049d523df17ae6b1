//! Names of everything a ModelServing owns. Stable names are the controller's memory: a group,
//! role instance or pod is identified by its name alone, so a restarted controller finds them.

/// ServingGroup (and its PodGroup) name: `<ms>-<group>`.
pub fn group_name(ms: &str, group: i32) -> String {
    format!("{ms}-{group}")
}

/// Role instance id: `<role>-<roleIndex>`.
pub fn role_id(role: &str, role_index: i32) -> String {
    format!("{role}-{role_index}")
}

/// Pod name: `<ms>-<group>-<role>-<roleIndex>-<podIndex>`; pod 0 is the entry pod.
pub fn pod_name(ms: &str, group: i32, role: &str, role_index: i32, pod_index: i32) -> String {
    format!("{ms}-{group}-{role}-{role_index}-{pod_index}")
}

/// Headless Service of a role instance: the entry pod's name, so `ENTRY_ADDRESS` resolves.
pub fn service_name(ms: &str, group: i32, role: &str, role_index: i32) -> String {
    pod_name(ms, group, role, role_index, 0)
}

/// ControllerRevision name: `<ms>-<revision hash>`.
pub fn revision_name(ms: &str, revision: &str) -> String {
    format!("{ms}-{revision}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_scheme() {
        assert_eq!(group_name("llama", 3), "llama-3");
        assert_eq!(pod_name("llama", 3, "prefill", 1, 0), "llama-3-prefill-1-0");
        assert_eq!(service_name("llama", 0, "decode", 2), "llama-0-decode-2-0");
        assert_eq!(role_id("decode", 2), "decode-2");
        assert_eq!(revision_name("llama", "5f9c"), "llama-5f9c");
    }
}
