//! The Kubernetes base in deploy/base, run without Kubernetes: the test reads the manifests,
//! checks that they agree with the node config they mount (ports, probes, peers, data path), and
//! starts real `leakbloom` processes with exactly the command, arguments and environment of the
//! StatefulSet's and the Deployment's containers: the StatefulSet's pods bootstrap a cluster, a
//! router serves it, and a pod added by `kubectl scale` (the next ordinal) joins it and is given
//! replicas. The test stands in for Kubernetes as follows.
//!
//! | in a pod (from the manifests)                   | here                                     |
//! |-------------------------------------------------|------------------------------------------|
//! | the image's `/usr/local/bin/leakbloom`          | the binary cargo built                   |
//! | the environment: the container's `env`          | the same, and nothing else               |
//! | `POD_NAME` (downward API `metadata.name`)       | `leakbloom-node-i` for node pod i        |
//! | `$(VAR)` in `args` and in `env` values          | expanded from that environment (in `env`,|
//! |                                                 | from the variables listed before it)     |
//! | ConfigMap `leakbloom-config` at /etc/leakbloom  | a directory of the pod's, holding a copy |
//! |                                                 | of deploy/base/leakbloom.toml in which   |
//! |                                                 | only the four rows below are applied     |
//! | pod network: `0.0.0.0` (the pod's own address)  | node pod i: 127.0.0.{i+2} (pods 0 to 2,  |
//! |                                                 | and pod 3, the scale-up, at 127.0.0.5);  |
//! |                                                 | the router: 127.0.1.2 (Linux routes      |
//! |                                                 | 127/8 to lo, so the manifests' fixed     |
//! |                                                 | ports stay)                              |
//! | DNS: `leakbloom-node-j.leakbloom-node` in a     | 127.0.0.{j+2}, the scale-up's j included |
//! | HOST:PORT (config, args, env values)            |                                          |
//! | the PersistentVolume at /var/lib/leakbloom      | a temporary directory per pod            |
//! | DNS: the headless Service `leakbloom-node` in a | 127.0.0.2, one of its records (the       |
//! | HOST:PORT (the router's seed, in its args; the  | router discovers the other nodes; a      |
//! | nodes' `join`, in the config)                   | joining pod may ask any live node)       |
//! | `kubectl scale statefulset/leakbloom-node`      | starting pod `replicas` (the next        |
//! | `--replicas=N+1`                                | ordinal) like the others                 |
//! | the `emptyDir` at /tmp                          | the machine's /tmp                       |
//! | the kubelet's gRPC readiness probe              | grpc.health.v1 Check of the probe's      |
//! |                                                 | service on the probe's port              |
//! | SIGTERM when the pod is deleted                 | `kill -TERM`; exit 0 within the pod's    |
//! |                                                 | terminationGracePeriodSeconds            |
//!
//! Nothing else changes. The names and ports above are read from the manifests, not assumed:
//! a change there either still runs here or fails an assertion saying what disagrees.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use leakbloom_node::Config;
use leakbloom_testkit::process::Stream;
use leakbloom_testkit::wait::blocking;
use leakbloom_testkit::{eventually, scratch_on_disk, Proc};
use serde_yaml::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/base");
const DOCKERFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/Dockerfile");

/// How long a pod may take to report SERVING: far below the startupProbe's window, which
/// allows for large data directories.
const SERVING_WITHIN: Duration = Duration::from_secs(90);

/// How long a pod added by a scale-up may take to be given replicas: a join is one catalog
/// commit, and each move a snapshot of a nearly empty shard (seconds).
const REPLICAS_WITHIN: Duration = Duration::from_secs(90);

/// The tests use the same pod IPs and ports: one at a time.
static NETWORK: Mutex<()> = Mutex::new(());

/// Node pod `ordinal`'s IP.
fn node_ip(ordinal: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(ordinal).unwrap())
}

/// The router pod's IP: apart from every node pod's.
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);

/// `path` (dot-separated keys and sequence indices) in `value`; panics naming it if absent.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    let mut here = value;
    for key in path.split('.') {
        here = match key.parse::<usize>() {
            Ok(index) => &here[index],
            Err(_) => &here[key],
        };
        assert!(!here.is_null(), "no {path} in\n{value:?}");
    }
    here
}

fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

fn int(value: &Value, path: &str) -> u64 {
    at(value, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a non-negative integer"))
}

fn seq<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    at(value, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

fn strings(value: &Value, path: &str) -> Vec<String> {
    seq(value, path)
        .iter()
        .map(|item| item.as_str().expect("a string").to_string())
        .collect()
}

/// A pod template annotation (its key has dots, which `at` splits on).
fn annotation<'a>(workload: &'a Value, key: &str) -> &'a str {
    at(workload, "spec.template.metadata.annotations")[key]
        .as_str()
        .unwrap_or_else(|| panic!("no pod annotation {key}"))
}

/// The item of `list` whose `name` is `name`.
fn named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|item| item["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("nothing named {name} in {list:?}"))
}

/// The port of an `IP:PORT`.
fn port(addr: SocketAddr) -> u64 {
    u64::from(addr.port())
}

/// deploy/base as kustomize reads it: the resources it lists and the generated ConfigMaps.
struct Base {
    resources: Vec<Value>,
    /// configMapGenerator: each ConfigMap's name and its (key, file) pairs.
    config_maps: Vec<(String, Vec<(String, PathBuf)>)>,
}

impl Base {
    fn load() -> Base {
        let dir = Path::new(BASE);
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let kustomization: Value = serde_yaml::from_str(&read("kustomization.yaml")).unwrap();
        let mut resources = Vec::new();
        for file in strings(&kustomization, "resources") {
            let content = read(&file);
            // One resource per `---`-separated document; comment-only documents are null.
            let mut document = String::new();
            for line in content.lines().chain(["---"]) {
                if line.trim_end() == "---" {
                    let resource: Value =
                        serde_yaml::from_str(&document).unwrap_or_else(|e| panic!("{file}: {e}"));
                    if !resource.is_null() {
                        resources.push(resource);
                    }
                    document.clear();
                } else {
                    document.push_str(line);
                    document.push('\n');
                }
            }
        }
        let config_maps = seq(&kustomization, "configMapGenerator")
            .iter()
            .map(|generator| {
                let files = strings(generator, "files")
                    .iter()
                    .map(|file| {
                        let (key, path) = match file.split_once('=') {
                            Some((key, path)) => (key.to_string(), path),
                            None => (file.rsplit('/').next().unwrap().to_string(), file.as_str()),
                        };
                        (key, dir.join(path))
                    })
                    .collect();
                (text(generator, "name").to_string(), files)
            })
            .collect();
        Base {
            resources,
            config_maps,
        }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .resources
            .iter()
            .filter(|r| {
                r["kind"].as_str() == Some(kind) && r["metadata"]["name"].as_str() == Some(name)
            })
            .collect();
        assert_eq!(found.len(), 1, "{kind}/{name} in deploy/base");
        found[0]
    }

    /// The one resource of `kind` whose selector (`path`) selects `labels`.
    fn selecting(&self, kind: &str, path: &str, labels: &Value) -> &Value {
        let found: Vec<&Value> = self
            .resources
            .iter()
            .filter(|r| r["kind"].as_str() == Some(kind) && selects(at(r, path), labels))
            .collect();
        assert_eq!(found.len(), 1, "one {kind} selecting {labels:?}");
        found[0]
    }

    /// The generated ConfigMap `name`'s (key, file) pairs.
    fn config_map(&self, name: &str) -> &[(String, PathBuf)] {
        &self
            .config_maps
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no configMapGenerator {name}"))
            .1
    }
}

/// Whether every label of `selector` is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_mapping().expect("matchLabels");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod template's only container.
fn container(workload: &Value) -> &Value {
    let containers = seq(workload, "spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

/// A container port's number by its name.
fn container_port(container: &Value, name: &str) -> u64 {
    int(named(seq(container, "ports"), name), "containerPort")
}

/// The gRPC port and service of one of the container's probes.
fn grpc_probe(container: &Value, probe: &str) -> (u64, String) {
    let grpc = at(container, &format!("{probe}.grpc"));
    let service = grpc["service"].as_str().unwrap_or("").to_string();
    (int(grpc, "port"), service)
}

/// The container's environment as Kubernetes sets it for pod `pod_name`.
fn container_env(container: &Value, pod_name: &str) -> Vec<(String, String)> {
    assert!(
        container["envFrom"].is_null(),
        "the test stands in for `env` only"
    );
    let Some(env) = container["env"].as_sequence() else {
        return Vec::new();
    };
    let mut set: Vec<(String, String)> = Vec::new();
    for var in env {
        let value = match var["value"].as_str() {
            Some(value) => expand(value, &set),
            None => match text(var, "valueFrom.fieldRef.fieldPath") {
                "metadata.name" => pod_name.to_string(),
                other => {
                    panic!("the test stands in for fieldRef metadata.name only, not {other}")
                }
            },
        };
        set.push((text(var, "name").to_string(), value));
    }
    set
}

/// `text` with each `$(VAR)` of `env` replaced by its value; asserts that none is left
/// (Kubernetes would pass on a reference to a variable it does not know, or one set later, as
/// it is).
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut expanded = text.to_string();
    for (name, value) in env {
        expanded = expanded.replace(&format!("$({name})"), value);
    }
    assert!(
        !expanded.contains("$("),
        "{text}: refers to a variable the container does not set before it"
    );
    expanded
}

/// `command` and `args` with `$(VAR)` expanded from `env`, the way Kubernetes does, and the
/// image's binary replaced by the one cargo built.
fn command_line(container: &Value, env: &[(String, String)]) -> Vec<String> {
    let command = strings(container, "command");
    assert_eq!(command, ["/usr/local/bin/leakbloom"], "the image's binary");
    let dockerfile = std::fs::read_to_string(DOCKERFILE).expect("deploy/Dockerfile");
    assert!(
        dockerfile.contains(&command[0]),
        "deploy/Dockerfile does not install {}",
        command[0]
    );
    let mut line = vec![common::BIN.to_string()];
    for arg in strings(container, "args") {
        line.push(expand(&arg, env));
    }
    line
}

/// The value following `flag` (as `--flag VALUE` or `--flag=VALUE`) in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let prefix = format!("{flag}=");
    args.iter()
        .enumerate()
        .find_map(|(i, arg)| {
            if arg == flag {
                args.get(i + 1).map(String::as_str)
            } else {
                arg.strip_prefix(&prefix)
            }
        })
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
}

/// Cluster DNS as the test stands in for it: host names to pod IPs.
struct Dns(Vec<(String, Ipv4Addr)>);

impl Dns {
    /// Replaces each `HOST:` in `text` where HOST is a whole known name.
    fn resolve(&self, text: &str) -> String {
        let mut names: Vec<&(String, Ipv4Addr)> = self.0.iter().collect();
        names.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        let mut out = text.to_string();
        for (name, ip) in names {
            let needle = format!("{name}:");
            let mut result = String::new();
            let mut rest = out.as_str();
            while let Some(at) = rest.find(&needle) {
                let before = rest[..at].chars().next_back();
                let whole =
                    !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                result.push_str(&rest[..at]);
                result.push_str(&if whole {
                    format!("{ip}:")
                } else {
                    needle.clone()
                });
                rest = &rest[at + needle.len()..];
            }
            result.push_str(rest);
            out = result;
        }
        out
    }
}

/// The node StatefulSet and what goes with it, checked for agreement.
struct Nodes {
    statefulset: Value,
    /// The name of the headless Service (the StatefulSet's serviceName).
    service: String,
    replicas: usize,
    /// The node config file as the ConfigMap holds it, and where the pod sees it.
    config_text: String,
    config_dir: String,
    config_key: String,
    /// Where the PersistentVolume is mounted.
    data_path: String,
    /// Service name of the readiness probe's gRPC health check.
    health_service: String,
    metrics_path: String,
    grace: Duration,
}

impl Nodes {
    /// Reads the node StatefulSet, its Services, PodDisruptionBudget and config, asserting that
    /// they agree with each other.
    fn load(base: &Base) -> Nodes {
        let sts = base.get("StatefulSet", "leakbloom-node").clone();
        let service = text(&sts, "spec.serviceName").to_string();
        let replicas = int(&sts, "spec.replicas") as usize;
        assert_eq!(
            text(&sts, "spec.podManagementPolicy"),
            "Parallel",
            "a new cluster's nodes must start together"
        );
        let labels = at(&sts, "spec.template.metadata.labels");
        assert!(
            selects(at(&sts, "spec.selector.matchLabels"), labels),
            "the StatefulSet selects its pods"
        );
        let pdb = base.selecting("PodDisruptionBudget", "spec.selector.matchLabels", labels);
        assert_eq!(int(pdb, "spec.maxUnavailable"), 1);

        let headless = base.get("Service", &service);
        assert_eq!(
            text(headless, "spec.clusterIP"),
            "None",
            "{service} is headless"
        );
        assert_eq!(
            at(headless, "spec.publishNotReadyAddresses").as_bool(),
            Some(true),
            "peers must resolve before they are ready"
        );
        assert!(
            selects(at(headless, "spec.selector"), labels),
            "{service} selects the node pods"
        );

        let node = container(&sts);
        let volumes = seq(&sts, "spec.template.spec.volumes");
        let mounts = seq(node, "volumeMounts");
        let mount_of = |volume: &str| text(named(mounts, volume), "mountPath").to_string();
        // The ConfigMap volume and the file in it that --config names.
        let config_volume = volumes
            .iter()
            .find(|v| !v["configMap"].is_null())
            .expect("a ConfigMap volume");
        let files = base.config_map(text(config_volume, "configMap.name"));
        assert_eq!(files.len(), 1, "one file in the node ConfigMap");
        let (config_key, config_file) = &files[0];
        let config_dir = mount_of(text(config_volume, "name"));
        let args = strings(node, "args");
        assert_eq!(
            flag(&args, "--config"),
            format!("{config_dir}/{config_key}")
        );
        let config_text = std::fs::read_to_string(config_file).unwrap();
        let config = Config::from_toml(&config_text, "deploy/base/leakbloom.toml").unwrap();

        // Ports: the config's addresses, the container's ports, the probes, the Service.
        let metrics = config.metrics_listen.expect("metrics_listen is set");
        for addr in [config.listen, config.peer_listen, metrics] {
            assert!(
                addr.ip().is_unspecified(),
                "{addr}: a pod listens on 0.0.0.0"
            );
        }
        let ports = [
            ("grpc", port(config.listen)),
            ("peer", port(config.peer_listen)),
            ("metrics", port(metrics)),
        ];
        for (name, number) in ports {
            assert_eq!(container_port(node, name), number, "container port {name}");
            let service_port = named(seq(headless, "spec.ports"), name);
            assert_eq!(int(service_port, "port"), number, "{service} port {name}");
            assert_eq!(text(service_port, "targetPort"), name);
        }
        assert_eq!(
            seq(headless, "spec.ports").len(),
            ports.len(),
            "{service} ports"
        );
        assert_eq!(seq(node, "ports").len(), ports.len(), "container ports");
        // The NetworkPolicy lets only node pods reach the peer port, and names real ports.
        let policy = base.selecting("NetworkPolicy", "spec.podSelector.matchLabels", labels);
        for rule in seq(policy, "spec.ingress") {
            for allowed in seq(rule, "ports") {
                let name = text(allowed, "port");
                container_port(node, name);
                if name == "peer" {
                    let from = seq(rule, "from");
                    assert_eq!(from.len(), 1, "the peer port is for node pods only");
                    assert!(selects(at(&from[0], "podSelector.matchLabels"), labels));
                }
            }
        }
        let (ready_port, health_service) = grpc_probe(node, "readinessProbe");
        assert_eq!(
            ready_port,
            port(config.listen),
            "readiness probe port = listen port"
        );
        for probe in ["startupProbe", "livenessProbe"] {
            assert_eq!(
                grpc_probe(node, probe).0,
                port(config.listen),
                "{probe} port"
            );
        }
        assert_eq!(
            annotation(&sts, "prometheus.io/port"),
            port(metrics).to_string()
        );

        // The peers (the nodes that bootstrap): the first pods, built from the ordinals, on the
        // peer port; every later pod joins through the headless Service on the client port.
        let pod_host = |j: usize| format!("{}-{j}.{service}", text(&sts, "metadata.name"));
        let bootstrap = config.peers.len();
        let peers: BTreeMap<u64, String> = (0..bootstrap)
            .map(|j| {
                let address = format!("{}:{}", pod_host(j), config.peer_listen.port());
                (j as u64 + 1, address)
            })
            .collect();
        assert_eq!(config.peers, peers, "peers = the StatefulSet's first pods");
        assert!(replicas >= bootstrap, "every pod in peers exists");
        assert_eq!(config.replication, Some(bootstrap as u32));
        let join = format!("{service}:{}", config.listen.port());
        assert_eq!(config.join.as_deref(), Some(join.as_str()), "join");
        // A pod that joins is not in peers: it advertises its own name under the Service.
        assert_eq!(config.advertise, None, "advertise is set per pod");
        assert_eq!(config.peer_advertise, None, "peer_advertise is set per pod");
        let later = replicas;
        let env = container_env(node, &format!("{}-{later}", text(&sts, "metadata.name")));
        let var = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let advertised = [
            ("LEAKBLOOM_ADVERTISE", config.listen.port()),
            ("LEAKBLOOM_PEER_ADVERTISE", config.peer_listen.port()),
        ];
        for (name, number) in advertised {
            assert_eq!(
                var(name),
                Some(format!("{}:{number}", pod_host(later)).as_str())
            );
        }

        // The data directory is the PersistentVolume.
        let claim = &seq(&sts, "spec.volumeClaimTemplates")[0];
        let data_path = mount_of(text(claim, "metadata.name"));
        assert_eq!(config.data_dir, PathBuf::from(&data_path));

        Nodes {
            service,
            replicas,
            config_dir,
            config_key: config_key.clone(),
            data_path,
            health_service,
            metrics_path: annotation(&sts, "prometheus.io/path").to_string(),
            grace: Duration::from_secs(int(
                &sts,
                "spec.template.spec.terminationGracePeriodSeconds",
            )),
            config_text,
            statefulset: sts,
        }
    }

    fn pod_name(&self, ordinal: usize) -> String {
        format!("{}-{ordinal}", text(&self.statefulset, "metadata.name"))
    }

    /// Pod and Service names to pod IPs: the StatefulSet's pods and the next one (a scale-up).
    fn dns(&self) -> Dns {
        let mut names: Vec<(String, Ipv4Addr)> = (0..=self.replicas)
            .map(|j| (format!("{}.{}", self.pod_name(j), self.service), node_ip(j)))
            .collect();
        names.push((self.service.clone(), node_ip(0)));
        Dns(names)
    }

    /// Starts node pod `ordinal` with its files in `dir`.
    fn start(&self, ordinal: usize, dir: &Path) -> Pod {
        let name = self.pod_name(ordinal);
        let ip = node_ip(ordinal);
        let config_dir = dir.join("config");
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let pod_network = |text: &str| self.dns().resolve(text).replace("0.0.0.0", &ip.to_string());
        let config =
            pod_network(&self.config_text).replace(&self.data_path, data_dir.to_str().unwrap());
        let parsed = Config::from_toml(&config, "the pod's copy").unwrap();
        assert_eq!(parsed.listen.ip(), ip);
        for peer in parsed.peers.values() {
            peer.parse::<SocketAddr>()
                .unwrap_or_else(|_| panic!("{peer}: a name the test does not resolve"));
        }
        std::fs::write(config_dir.join(&self.config_key), config).unwrap();

        let node = container(&self.statefulset);
        let env: Vec<(String, String)> = container_env(node, &name)
            .into_iter()
            .map(|(var, value)| (var, pod_network(&value)))
            .collect();
        let args: Vec<String> = command_line(node, &env)
            .into_iter()
            .map(|arg| pod_network(&arg).replace(&self.config_dir, config_dir.to_str().unwrap()))
            .collect();
        Pod::start(
            name,
            parsed.listen,
            parsed.metrics_listen.unwrap(),
            &args,
            &env,
        )
    }

    /// Starts every node pod and waits until each reports SERVING, as the readiness probe
    /// would see it.
    fn start_all(&self, dir: &Path, runtime: &tokio::runtime::Runtime) -> Vec<Pod> {
        let pods: Vec<Pod> = (0..self.replicas)
            .map(|i| self.start(i, &dir.join(self.pod_name(i))))
            .collect();
        for pod in &pods {
            runtime.block_on(pod.wait_serving(&self.health_service));
        }
        pods
    }
}

/// A pod's process (its stderr lines, the logs, kept; SIGKILLed on drop if still running)
/// and where it serves.
struct Pod {
    proc: Proc,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Pod {
    /// Runs `line` (the binary and its arguments) with `env` as its whole environment.
    fn start(
        name: String,
        addr: SocketAddr,
        metrics: SocketAddr,
        line: &[String],
        env: &[(String, String)],
    ) -> Pod {
        eprintln!("{name}: {env:?} {}", line.join(" "));
        let mut command = Command::new(&line[0]);
        command
            .args(&line[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)));
        Pod {
            proc: Proc::spawn(name, command, Stream::Stderr),
            addr,
            metrics,
        }
    }

    fn name(&self) -> &str {
        self.proc.name()
    }

    /// Waits until grpc.health.v1 says SERVING for `service` ("" is the server as a whole).
    async fn wait_serving(&self, service: &str) {
        let what = format!("{} reports SERVING", self.name());
        eventually(what, SERVING_WITHIN, async || {
            if let Some(status) = self.proc.exited() {
                panic!("{} exited ({status}):\n{}", self.name(), self.proc.log());
            }
            match health(self.addr, service).await {
                Some(ServingStatus::Serving) => Ok(()),
                status => Err(format!("{status:?}; its log:\n{}", self.proc.log())),
            }
        })
        .await;
    }

    /// What Kubernetes does to a deleted pod: SIGTERM, then the grace period. Asserts a clean
    /// exit within it, and that every log line was JSON (`--log-format json`).
    fn terminate(self, grace: Duration) {
        let name = self.name().to_string();
        let (status, lines) = self.proc.terminate(grace);
        let log = lines.join("\n");
        assert!(
            status.success(),
            "{name} exited {status} after SIGTERM:\n{log}"
        );
        assert!(!lines.is_empty(), "{name} logged nothing");
        for line in &lines {
            let entry: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|_| panic!("{name}: a log line that is not JSON: {line}"));
            assert!(entry.is_object(), "{line}");
        }
        assert!(log.contains("shutting down"), "{name}:\n{log}");
    }
}

/// grpc.health.v1 Check of `service` at `addr`, as the kubelet's gRPC probe does it; None when
/// there is no answer.
async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// `GET path` over plain HTTP/1.1; returns the body after asserting a 200.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {addr}{path}: {head}");
    body.to_string()
}

fn addr(pod: &Pod) -> String {
    pod.addr.to_string()
}

/// `leakbloom sets create leak` (the set every test uses) at `addr`; its output.
fn create_set(addr: &str) -> String {
    common::stdout_of(&[
        "sets",
        "create",
        "leak",
        "--capacity",
        "100000",
        "--fpr",
        "1e-4",
        "--addr",
        addr,
    ])
}

/// `leakbloom insert` of `emails` into the set `leak` at `addr`; its output.
fn insert(addr: &str, emails: &[&str]) -> String {
    let mut args = vec!["insert", "--addr", addr, "--set", "leak", "--kind", "email"];
    args.extend_from_slice(emails);
    common::stdout_of(&args)
}

/// `leakbloom check` of `emails` at `addr`; its output.
fn check(addr: &str, emails: &[&str]) -> String {
    let mut args = vec!["check", "--addr", addr, "--kind", "email"];
    args.extend_from_slice(emails);
    common::stdout_of(&args)
}

#[test]
fn statefulset_pods_form_a_cluster() {
    let _network = NETWORK.lock().unwrap_or_else(|e| e.into_inner());
    let base = Base::load();
    let nodes = Nodes::load(&base);
    let dir = scratch_on_disk();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pods = nodes.start_all(dir.path(), &runtime);
    let (first, last) = (&pods[0], &pods[pods.len() - 1]);

    let created = create_set(&addr(first));
    assert!(created.starts_with("leak\tcapacity=100000"), "{created}");
    let inserted = insert(&addr(first), &["alice@example.com", "bob@example.org"]);
    assert_eq!(inserted, "inserted 2 of 2 identifiers into leak\n");
    let checked = check(
        &addr(last),
        &["alice@example.com", "bob@example.org", "carol@example.net"],
    );
    assert_eq!(
        checked,
        "alice@example.com\tleak\nbob@example.org\tleak\ncarol@example.net\t-\n"
    );

    // Every pod's metrics port answers where the scrape annotations say, and every node holds
    // the set.
    for pod in &pods {
        let body = http_get(pod.metrics, &nodes.metrics_path);
        assert!(
            body.contains("leakbloom_set_capacity{set=\"leak\"} 100000"),
            "{}: {body}",
            pod.name()
        );
    }
    assert!(
        http_get(first.metrics, &nodes.metrics_path).contains("leakbloom_keys_inserted_total 2")
    );
    assert!(http_get(last.metrics, &nodes.metrics_path).contains("leakbloom_keys_checked_total 3"));

    for pod in pods {
        pod.terminate(nodes.grace);
    }
}

/// One node as `leakbloom nodes list --json` shows it.
#[derive(Debug)]
struct Listed {
    id: u64,
    address: String,
    state: String,
    replicas: u64,
}

/// `leakbloom nodes list --json --addr addr`.
fn nodes_list(addr: &str) -> Vec<Listed> {
    let listed = common::stdout_of(&["nodes", "list", "--json", "--addr", addr]);
    let json: serde_json::Value = serde_json::from_str(&listed).expect("nodes list --json");
    json.as_array()
        .expect("a list of nodes")
        .iter()
        .map(|node| Listed {
            id: node["id"].as_u64().expect("an id"),
            address: node["address"].as_str().expect("an address").to_string(),
            state: node["state"].as_str().expect("a state").to_string(),
            replicas: node["replicas"].as_u64().expect("a replica count"),
        })
        .collect()
}

#[test]
fn a_pod_added_by_scaling_up_joins_and_takes_replicas() {
    let _network = NETWORK.lock().unwrap_or_else(|e| e.into_inner());
    let base = Base::load();
    let nodes = Nodes::load(&base);
    let dir = scratch_on_disk();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut pods = nodes.start_all(dir.path(), &runtime);
    let first = addr(&pods[0]);
    create_set(&first);
    insert(&first, &["alice@example.com"]);

    // `kubectl scale statefulset/leakbloom-node --replicas=N+1`: the next ordinal starts with
    // the same command, config and environment as the others.
    let ordinal = nodes.replicas;
    let added = nodes.start(ordinal, &dir.path().join(nodes.pod_name(ordinal)));
    runtime.block_on(added.wait_serving(&nodes.health_service));
    let id = ordinal as u64 + 1;
    let expected = (nodes.replicas + 1) as u64;
    let what = format!("node {id} active with replicas, {expected} nodes active");
    blocking::eventually(what, REPLICAS_WITHIN, || {
        let listed = nodes_list(&first);
        let active = listed.iter().filter(|n| n.state == "active").count() as u64;
        match listed.iter().find(|n| n.id == id) {
            Some(joined)
                if active == expected && joined.state == "active" && joined.replicas > 0 =>
            {
                // It registered the address it advertises (its name under the Service).
                assert_eq!(
                    joined.address,
                    addr(&added),
                    "node {id}'s advertised address"
                );
                Ok(())
            }
            _ => Err(format!("{listed:?}; its log:\n{}", added.proc.log())),
        }
    });
    // It answers through the cluster like the others.
    let checked = check(&addr(&added), &["alice@example.com", "carol@example.net"]);
    assert_eq!(checked, "alice@example.com\tleak\ncarol@example.net\t-\n");

    pods.push(added);
    for pod in pods {
        pod.terminate(nodes.grace);
    }
}

#[test]
fn router_deployment_serves_the_cluster() {
    let _network = NETWORK.lock().unwrap_or_else(|e| e.into_inner());
    let base = Base::load();
    let nodes = Nodes::load(&base);

    // The router Deployment, its Service (what clients use) and the seed it is given.
    let deployment = base.get("Deployment", "leakbloom-router");
    let router = container(deployment);
    let labels = at(deployment, "spec.template.metadata.labels");
    assert!(selects(at(deployment, "spec.selector.matchLabels"), labels));
    let service = base.get("Service", "leakbloom");
    assert!(selects(at(service, "spec.selector"), labels));
    let service_port = named(seq(service, "spec.ports"), "grpc");
    let args = strings(router, "args");
    let listen: SocketAddr = flag(&args, "--listen").parse().unwrap();
    let metrics: SocketAddr = flag(&args, "--metrics-listen").parse().unwrap();
    assert!(listen.ip().is_unspecified() && metrics.ip().is_unspecified());
    assert_eq!(int(service_port, "port"), port(listen));
    assert_eq!(
        container_port(router, text(service_port, "targetPort")),
        port(listen)
    );
    assert_eq!(container_port(router, "metrics"), port(metrics));
    let (ready_port, ready_service) = grpc_probe(router, "readinessProbe");
    assert_eq!(ready_port, port(listen));
    assert_eq!(grpc_probe(router, "livenessProbe").0, port(listen));
    let hpa = base.get("HorizontalPodAutoscaler", "leakbloom-router");
    assert_eq!(text(hpa, "spec.scaleTargetRef.name"), "leakbloom-router");
    assert!(int(hpa, "spec.minReplicas") >= 2);
    // The seed is the nodes' headless Service on their client port.
    let headless = base.get("Service", &nodes.service);
    let grpc_port = int(named(seq(headless, "spec.ports"), "grpc"), "port");
    assert_eq!(
        flag(&args, "--nodes"),
        format!("{}:{grpc_port}", nodes.service)
    );

    let dir = scratch_on_disk();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pods = nodes.start_all(dir.path(), &runtime);
    create_set(&addr(&pods[0]));

    let env = container_env(router, "leakbloom-router-0");
    let line: Vec<String> = command_line(router, &env)
        .iter()
        .map(|arg| {
            let arg = nodes.dns().resolve(arg);
            arg.replace("0.0.0.0", &ROUTER_IP.to_string())
        })
        .collect();
    let router_pod = Pod::start(
        "leakbloom-router".to_string(),
        SocketAddr::from((ROUTER_IP, listen.port())),
        SocketAddr::from((ROUTER_IP, metrics.port())),
        &line,
        &env,
    );
    runtime.block_on(router_pod.wait_serving(&ready_service));
    let through = addr(&router_pod);

    let inserted = insert(&through, &["alice@example.com"]);
    assert_eq!(inserted, "inserted 1 of 1 identifiers into leak\n");
    insert(&addr(&pods[1]), &["bob@example.org"]);
    for target in [&through, &addr(&pods[2])] {
        let checked = check(
            target,
            &["alice@example.com", "bob@example.org", "carol@example.net"],
        );
        assert_eq!(
            checked, "alice@example.com\tleak\nbob@example.org\tleak\ncarol@example.net\t-\n",
            "through {target}"
        );
    }
    assert_eq!(
        annotation(deployment, "prometheus.io/port"),
        metrics.port().to_string()
    );
    let body = http_get(
        router_pod.metrics,
        annotation(deployment, "prometheus.io/path"),
    );
    assert!(body.contains("leakbloom_router_"), "{body}");

    let grace = Duration::from_secs(int(
        deployment,
        "spec.template.spec.terminationGracePeriodSeconds",
    ));
    router_pod.terminate(grace);
    for pod in pods {
        pod.terminate(nodes.grace);
    }
}
