//! The deployment files under `deploy/` agree with the binary: they parse,
//! name the same image, port, probes and environment variables, and every
//! metric the dashboard and the alerts use exists on a live node.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types, unreachable_pub)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value as Yaml;
use support::{Node, Redis};

const IMAGE: &str = "roomcast:0.1.0";

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    let mut value: Yaml = serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
    value.apply_merge().unwrap();
    value
}

/// Every `roomcast_*` name in `text`, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("roomcast_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_' || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(base.to_owned());
        i = end;
    }
    names
}

/// The environment variables `roomcast serve` reads, from its help.
fn binary_env() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut env: BTreeSet<String> =
        help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next()).map(str::to_owned).collect();
    env.insert("RUST_LOG".into());
    env
}

fn env_names(env: &Yaml) -> Vec<String> {
    match env {
        Yaml::Mapping(map) => map.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect(),
        Yaml::Sequence(items) => items.iter().filter_map(|e| e["name"].as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_exists() {
    let redis = Redis::start();
    let node = Node::redis(&redis, &[]);
    let rendered = reqwest::get(node.http("/metrics")).await.unwrap().text().await.unwrap();
    let exported: BTreeSet<String> =
        rendered.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).flat_map(metric_names).collect();
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana/roomcast.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let alerts = yaml("deploy/prometheus/alerts.yaml");
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            assert!(rule["alert"].as_str().is_some(), "{rule:?}");
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() > 15, "the dashboard and alerts have expressions");
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}\n{rendered}");
    for name in ["roomcast_delivery_delay_seconds", "roomcast_store_command_seconds", "roomcast_reader_lag_seconds"] {
        assert!(rendered.contains(&format!("{name}_bucket")), "{name} is a histogram");
    }
}

#[test]
fn compose_kubernetes_and_docker_agree_with_the_binary() {
    let env = binary_env();
    assert!(env.contains("REDIS_URL") && env.contains("ROOMCAST_LISTEN"), "{env:?}");
    let unknown = |names: Vec<String>, file: &str| {
        let bad: Vec<String> = names.into_iter().filter(|n| !env.contains(n)).collect();
        assert!(bad.is_empty(), "{file} sets variables the binary does not read: {bad:?}");
    };

    // The image.
    let dockerfile = read("deploy/docker/Dockerfile");
    assert!(dockerfile.contains("EXPOSE 8080"));
    assert!(dockerfile.contains("/healthz"), "HEALTHCHECK on /healthz");
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    let docker_env: Vec<String> = dockerfile
        .split("ENV ")
        .skip(1)
        .flat_map(|block| {
            let block = block.split("\nEXPOSE").next().unwrap_or("");
            block.split_whitespace().filter_map(|w| w.split_once('=').map(|(k, _)| k.to_owned())).collect::<Vec<_>>()
        })
        .collect();
    unknown(docker_env, "Dockerfile");

    // Compose: Redis, three nodes, nginx with the tested config.
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    for name in ["redis", "node1", "node2", "node3", "nginx"] {
        assert!(services.contains_key(name), "compose has {name}");
    }
    for node in ["node1", "node2", "node3"] {
        let service = &compose["services"][node];
        assert_eq!(service["image"].as_str(), Some(IMAGE));
        assert_eq!(service["build"]["dockerfile"].as_str(), Some("deploy/docker/Dockerfile"));
        assert_eq!(service["environment"]["ROOMCAST_LISTEN"].as_str(), Some("0.0.0.0:8080"));
        unknown(env_names(&service["environment"]), "compose.yaml");
        let check = format!("{:?}", service["healthcheck"]["test"]);
        assert!(check.contains("/readyz"), "{check}");
    }
    let volumes = format!("{:?}", compose["services"]["nginx"]["volumes"]);
    assert!(volumes.contains("./nginx/roomcast.conf"), "nginx uses deploy/nginx/roomcast.conf");

    // Kubernetes.
    let deployment = yaml("deploy/k8s/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"].as_str(), Some(IMAGE));
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(8080));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    let k8s_env = env_names(&container["env"]);
    unknown(k8s_env.clone(), "deployment.yaml");
    let env_value = |name: &str| {
        container["env"].as_sequence().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone())
    };
    let grace: u64 = env_value("ROOMCAST_SHUTDOWN_GRACE").unwrap().as_str().unwrap().parse().unwrap();
    let pre_stop = format!("{:?}", container["lifecycle"]["preStop"]);
    assert!(pre_stop.contains("sleep"), "a preStop pause: {pre_stop}");
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination > grace + 5,
        "terminationGracePeriodSeconds {termination} must outlast the grace {grace} + preStop"
    );
    let secret_keys: Vec<String> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["valueFrom"]["secretKeyRef"]["key"].as_str().map(str::to_owned))
        .collect();
    let secret = yaml("deploy/k8s/secret.yaml");
    for key in &secret_keys {
        assert!(secret["stringData"][key.as_str()].as_str().is_some(), "the Secret holds {key}");
    }
    assert!(secret_keys.contains(&"jwt-secret".to_owned()), "the JWT secret comes from a Secret");
    let service = yaml("deploy/k8s/service.yaml");
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(8080));
    let pdb = yaml("deploy/k8s/pdb.yaml");
    assert_eq!(pdb["kind"].as_str(), Some("PodDisruptionBudget"));
    let hpa = yaml("deploy/k8s/hpa.yaml");
    assert_eq!(hpa["spec"]["metrics"][0]["pods"]["metric"]["name"].as_str(), Some("roomcast_connections"));
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    assert_eq!(kustomization["resources"].as_sequence().unwrap().len(), 5);
}
