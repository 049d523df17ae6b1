//! The kustomize install (`config/`, `config/deploy/monitoring`) renders and hangs together:
//! Services select the Deployments' pods and name ports that exist, ServiceMonitors select those
//! Services, the engine PodMonitor selects the pods the controller labels (and the demo's
//! engines name the port it scrapes), every binding points at a role and ServiceAccount that
//! exist, every Deployment runs as one of them. The apiserver itself validates the same render
//! in the demo smoke test (`hack/check-deploy-manifests.sh`); this test needs only `kubectl`.

use std::process::Command;

use muster_api::labels;
use muster_e2e::repo_root;
use serde::Deserialize;
use serde_json::Value;

/// `kubectl kustomize <dir>` as a list of objects.
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new(std::env::var("MUSTER_KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("kustomize")
        .arg(repo_root().join(dir))
        .output()
        .expect("kubectl (with its built-in kustomize) is needed");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

/// True if every key/value of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn container_port_names(pod_spec: &Value) -> Vec<String> {
    pod_spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_install_renders_and_its_objects_fit_together() {
    let all = render("config");
    let deployments = of_kind(&all, "Deployment");
    let services = of_kind(&all, "Service");
    let accounts: Vec<&str> = of_kind(&all, "ServiceAccount")
        .into_iter()
        .map(name)
        .collect();
    assert_eq!(
        of_kind(&all, "CustomResourceDefinition").len(),
        4,
        "the 4 CRDs of config/crd"
    );
    let mut names: Vec<&str> = deployments.iter().map(|d| name(d)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "muster-controller",
            "muster-router",
            "muster-topology-extender"
        ]
    );

    for d in &deployments {
        let spec = &d["spec"]["template"]["spec"];
        let sa = spec["serviceAccountName"].as_str().unwrap_or("");
        assert!(
            accounts.contains(&sa),
            "{} runs as {sa:?}, not a ServiceAccount of the install",
            name(d)
        );
        assert_eq!(d["metadata"]["namespace"], "muster-system", "{}", name(d));
        assert!(
            selects(
                &d["spec"]["selector"]["matchLabels"],
                &d["spec"]["template"]["metadata"]["labels"]
            ),
            "{}: selector does not match its own pods",
            name(d)
        );
        for c in spec["containers"].as_array().unwrap() {
            assert_eq!(
                c["securityContext"]["readOnlyRootFilesystem"],
                true,
                "{}",
                name(d)
            );
            for probe in ["livenessProbe", "readinessProbe"] {
                let port = c[probe]["httpGet"]["port"].as_str().unwrap_or("");
                assert!(
                    container_port_names(spec).iter().any(|p| p == port),
                    "{}: {probe} uses port {port:?}, which no container names",
                    name(d)
                );
            }
        }
    }
    for s in &services {
        let target = deployments
            .iter()
            .find(|d| {
                selects(
                    &s["spec"]["selector"],
                    &d["spec"]["template"]["metadata"]["labels"],
                )
            })
            .unwrap_or_else(|| panic!("Service {} selects no Deployment's pods", name(s)));
        let ports = container_port_names(&target["spec"]["template"]["spec"]);
        for p in s["spec"]["ports"].as_array().unwrap() {
            let tp = p["targetPort"].as_str().unwrap_or("");
            assert!(
                ports.iter().any(|x| x == tp),
                "Service {} targets port {tp:?}; {} names {ports:?}",
                name(s),
                name(target)
            );
        }
    }

    // Bindings point at roles and ServiceAccounts that exist, in the install's namespace.
    let roles: Vec<(String, &str)> = of_kind(&all, "ClusterRole")
        .into_iter()
        .map(|r| ("ClusterRole".to_string(), name(r)))
        .chain(
            of_kind(&all, "Role")
                .into_iter()
                .map(|r| ("Role".to_string(), name(r))),
        )
        .collect();
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for b in of_kind(&all, kind) {
            let role_ref = (
                b["roleRef"]["kind"].as_str().unwrap_or("").to_string(),
                b["roleRef"]["name"].as_str().unwrap_or(""),
            );
            assert!(
                roles.contains(&role_ref),
                "{kind} {} refers to missing {role_ref:?}",
                name(b)
            );
            for s in b["subjects"].as_array().unwrap() {
                assert_eq!(s["kind"], "ServiceAccount");
                assert!(accounts.contains(&s["name"].as_str().unwrap_or("")));
                assert_eq!(s["namespace"], "muster-system", "{kind} {}", name(b));
            }
        }
    }

    // Prometheus Operator objects select what exists.
    let monitoring = render("config/deploy/monitoring");
    let monitors = of_kind(&monitoring, "ServiceMonitor");
    assert_eq!(monitors.len(), 2, "controller and router");
    for m in monitors {
        let svc = services
            .iter()
            .find(|s| {
                selects(
                    &m["spec"]["selector"]["matchLabels"],
                    &s["metadata"]["labels"],
                )
            })
            .unwrap_or_else(|| panic!("ServiceMonitor {} selects no Service", name(m)));
        for e in m["spec"]["endpoints"].as_array().unwrap() {
            let port = e["port"].as_str().unwrap();
            assert!(
                svc["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port),
                "ServiceMonitor {} scrapes port {port:?}, not a port of Service {}",
                name(m),
                name(svc)
            );
        }
    }
    let pod_monitor = of_kind(&monitoring, "PodMonitor")[0];
    let sel = &pod_monitor["spec"]["selector"]["matchExpressions"][0];
    assert_eq!(sel["key"], labels::MODEL_SERVING_NAME);
    assert_eq!(sel["operator"], "Exists");
    let port = pod_monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    let demo = render_file("config/demo/llama-2p2d.yaml");
    let serving = demo
        .iter()
        .find(|o| o["kind"] == "ModelServing")
        .expect("the demo's ModelServing");
    for role in serving["spec"]["template"]["roles"].as_array().unwrap() {
        assert!(
            container_port_names(&role["entryTemplate"]["spec"]).contains(&port.to_string()),
            "the demo's {} pods do not name the port {port:?} the engine PodMonitor scrapes",
            role["name"]
        );
    }
    assert_eq!(of_kind(&monitoring, "PrometheusRule").len(), 1);
}

fn render_file(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}
