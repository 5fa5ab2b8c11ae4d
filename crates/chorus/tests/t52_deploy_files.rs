//! The deployment files parse and have the structure operators rely on: compose runs 3 nodes
//! and 2 edges with Prometheus and Grafana wired to the repository's config, the Kubernetes
//! manifests have PVCs, probes on /healthz and /readyz, resources and PodDisruptionBudgets,
//! and the dashboard is provisioned against the configured data source. (Neither Docker nor
//! a Kubernetes API server runs here, so this is what can be checked without them.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::deploy;
use serde_norway::Value as Yaml;

fn strings(value: &Yaml) -> Vec<String> {
    value.as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

/// The value after `flag` in a command line.
fn flag<'a>(command: &'a [String], flag: &str) -> &'a str {
    let at =
        command.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} in {command:?}"));
    &command[at + 1]
}

#[test]
fn compose_runs_three_nodes_two_edges_prometheus_and_grafana() {
    let compose = deploy::yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    let service = |name: &str| &compose["services"][name];
    let mut peers = Vec::new();
    for id in 1..=3 {
        let node = service(&format!("node{id}"));
        let command = strings(&node["command"]);
        assert_eq!(command[0], "node");
        assert_eq!(flag(&command, "--id"), id.to_string());
        // A node's own --peers entry is the address its peers reach it at.
        assert!(flag(&command, "--peers").contains(&format!("{id}=node{id}:7000")));
        assert_eq!(flag(&command, "--listen"), "0.0.0.0:8080");
        peers.push(flag(&command, "--peers").to_owned());
        let volumes = strings(&node["volumes"]);
        assert_eq!(volumes, [format!("node{id}-data:/data")], "each node keeps its own volume");
        assert!(compose["volumes"].get(format!("node{id}-data")).is_some());
    }
    assert!(peers.iter().all(|p| p == "1=node1:7000,2=node2:7000,3=node3:7000"), "{peers:?}");
    for id in 1..=2 {
        let command = strings(&service(&format!("edge{id}"))["command"]);
        assert_eq!(command[0], "edge");
        assert_eq!(flag(&command, "--nodes"), "node1:7000,node2:7000,node3:7000");
    }
    let chorus: Vec<_> = services
        .iter()
        .filter(|(name, _)| {
            name.as_str().is_some_and(|n| n.starts_with("node") || n.starts_with("edge"))
        })
        .collect();
    assert_eq!(chorus.len(), 5, "3 nodes and 2 edges");
    for (name, svc) in &chorus {
        assert_eq!(svc["build"]["dockerfile"], "deploy/Dockerfile", "{name:?}");
        for secret in ["CHORUS_JWT_SECRET", "CHORUS_API_KEY"] {
            assert!(svc["environment"].get(secret).is_some(), "{name:?} lacks {secret}");
        }
    }
    assert!(deploy::path("Dockerfile").is_file());

    // Prometheus gets the repository's config and rules; its targets are the compose services.
    let prometheus = strings(&service("prometheus")["volumes"]);
    assert!(prometheus.contains(&"./prometheus.yml:/etc/prometheus/prometheus.yml:ro".to_owned()));
    assert!(prometheus.contains(&"./alerts.yml:/etc/prometheus/alerts.yml:ro".to_owned()));
    let config = deploy::yaml("prometheus.yml");
    assert_eq!(strings(&config["rule_files"]), ["alerts.yml"]);
    for job in config["scrape_configs"].as_sequence().unwrap() {
        for target in strings(&job["static_configs"][0]["targets"]) {
            let (host, port) = target.split_once(':').unwrap();
            assert!(services.get(host).is_some(), "target {target} is a compose service");
            assert_eq!(port, "8080", "metrics are on the HTTP port");
        }
    }

    // Grafana gets the provisioning and the dashboard directory it points at.
    let grafana = strings(&service("grafana")["volumes"]);
    assert!(grafana.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro".to_owned()));
    assert!(grafana.contains(&"./grafana/dashboards:/var/lib/grafana/dashboards:ro".to_owned()));
    let provider = deploy::yaml("grafana/provisioning/dashboards/chorus.yml");
    assert_eq!(provider["providers"][0]["options"]["path"], "/var/lib/grafana/dashboards");
}

fn find<'a>(documents: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

/// Probes on /healthz (liveness) and /readyz (readiness), and resource requests.
fn assert_probes_and_resources(container: &Yaml, what: &str) {
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{what}");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{what}");
    assert!(container["resources"]["requests"]["cpu"].as_str().is_some(), "{what}");
    assert!(container["resources"]["requests"]["memory"].as_str().is_some(), "{what}");
    let env: Vec<&str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"CHORUS_JWT_SECRET") && env.contains(&"CHORUS_API_KEY"), "{what}");
}

/// A PodDisruptionBudget whose selector matches the workload's pods.
fn assert_pdb_covers(documents: &[Yaml], pod_labels: &Yaml, what: &str) {
    let covering = find(documents, "PodDisruptionBudget")
        .into_iter()
        .filter(|pdb| &pdb["spec"]["selector"]["matchLabels"] == pod_labels)
        .count();
    assert_eq!(covering, 1, "{what} has one PodDisruptionBudget");
}

#[test]
fn kubernetes_nodes_are_a_statefulset_with_volumes_probes_and_a_budget() {
    let documents = deploy::yaml_documents("k8s/nodes.yaml");
    let sets = find(&documents, "StatefulSet");
    assert_eq!(sets.len(), 1);
    let spec = &sets[0]["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["podManagementPolicy"], "Parallel", "nodes need each other to get ready");
    let claims = spec["volumeClaimTemplates"].as_sequence().unwrap();
    assert_eq!(claims.len(), 1);
    let claim = claims[0]["metadata"]["name"].as_str().unwrap();
    let container = &spec["template"]["spec"]["containers"][0];
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == claim && m["mountPath"] == "/data"));
    assert_probes_and_resources(container, "node");
    let script = container["args"][0].as_str().unwrap();
    assert!(script.contains("chorus node") && script.contains("--data /data"), "{script}");

    let headless = find(&documents, "Service");
    assert_eq!(headless.len(), 1);
    assert_eq!(headless[0]["spec"]["clusterIP"], "None");
    assert_eq!(headless[0]["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(spec["serviceName"], headless[0]["metadata"]["name"]);
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], pod_labels);
    assert_eq!(&headless[0]["spec"]["selector"], pod_labels);
    assert_pdb_covers(&documents, pod_labels, "the nodes");
    assert_eq!(spec["template"]["metadata"]["annotations"]["prometheus.io/path"], "/metrics");
}

#[test]
fn kubernetes_edges_are_a_deployment_with_probes_a_service_and_a_budget() {
    let documents = deploy::yaml_documents("k8s/edges.yaml");
    let deployments = find(&documents, "Deployment");
    assert_eq!(deployments.len(), 1);
    let spec = &deployments[0]["spec"];
    assert_eq!(spec["replicas"], 2);
    let container = &spec["template"]["spec"]["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args[0], "edge");
    assert_eq!(flag(&args, "--listen"), "0.0.0.0:8080");
    assert_probes_and_resources(container, "edge");
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], pod_labels);
    let services = find(&documents, "Service");
    assert_eq!(services.len(), 1);
    assert_eq!(&services[0]["spec"]["selector"], pod_labels);
    assert_pdb_covers(&documents, pod_labels, "the edges");

    let kustomization = deploy::yaml("k8s/kustomization.yaml");
    assert_eq!(strings(&kustomization["resources"]), ["nodes.yaml", "edges.yaml"]);
    // The in-cluster scrape config keeps the job names the rules and the dashboard use.
    let scrape = deploy::yaml("k8s/prometheus-scrape.yml");
    let jobs: Vec<&str> = scrape["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["chorus-node", "chorus-edge"]);
}

#[test]
fn dashboard_panels_query_the_provisioned_data_source() {
    let dashboard = deploy::dashboard();
    let datasource = deploy::yaml("grafana/provisioning/datasources/prometheus.yml");
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel ids are unique");
        assert!(panel["gridPos"]["w"].as_u64().is_some());
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has a query", panel["title"]);
        queries += targets.len();
    }
    assert!(queries >= 30, "the dashboard answers more than one question");
    assert_eq!(dashboard["uid"], "chorus-overview");
}
