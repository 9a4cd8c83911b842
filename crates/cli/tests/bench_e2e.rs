//! `leakbloom bench e2e` as a user runs it: a real node process on 127.0.0.1:0, a set made
//! with `leakbloom sets create`, one-second runs in insert and check mode, one cut into
//! windows.

mod common;

use leakbloom_testkit::scratch_on_disk;

use common::{run, start_one_node, stdout_of};

/// The fields of the result line, in order.
const FIELDS: [&str; 11] = [
    "target",
    "mode",
    "batch",
    "conns",
    "consistency",
    "route",
    "keys_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "errors",
];

/// The fields `--window-seconds` adds at the end of the result line.
const WINDOW_FIELDS: [&str; 2] = ["worst_window_p99_ms", "median_window_p99_ms"];

/// Runs `bench e2e` for one second without warm-up; returns its one stdout line as
/// (field, value) pairs after checking the fields and their order.
fn bench(addr: &str, extra: &[&str]) -> Vec<(String, String)> {
    result_line(&stdout_of(&bench_args(addr, extra)), false)
}

/// The arguments of a one-second `bench e2e` run on the set `bench` without warm-up, then
/// `extra`.
fn bench_args<'a>(addr: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "bench",
        "e2e",
        "--addr",
        addr,
        "--set",
        "bench",
        "--seconds",
        "1",
        "--warmup",
        "0",
    ];
    args.extend(extra);
    args
}

/// The one line of `stdout` as (field, value) pairs, checking the fields and their order (with
/// the window fields at the end when `windows`).
fn result_line(stdout: &str, windows: bool) -> Vec<(String, String)> {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout}");
    let fields: Vec<(String, String)> = lines[0]
        .split(' ')
        .map(|field| {
            let (name, value) = field.split_once('=').expect("name=value");
            (name.to_string(), value.to_string())
        })
        .collect();
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    let expected: Vec<&str> = match windows {
        true => FIELDS.iter().chain(&WINDOW_FIELDS).copied().collect(),
        false => FIELDS.to_vec(),
    };
    assert_eq!(names, expected, "{stdout}");
    fields
}

fn value<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn bench_e2e_loads_a_node_and_refuses_what_it_must() {
    let data = scratch_on_disk();
    let (_node, addr) = start_one_node(data.path());
    let addr = addr.as_str();
    let created = run(&[
        "sets",
        "create",
        "bench",
        "--capacity",
        "1000000",
        "--fpr",
        "1e-4",
        "--addr",
        addr,
    ]);
    assert!(created.status.success(), "{created:?}");

    // Through the node's own Lookup, and routing in the client (`--direct`).
    for (mode, consistency, batch, route) in [
        ("insert", "linearizable", "256", "router"),
        ("check", "linearizable", "1024", "router"),
        ("check", "any", "1", "router"),
        ("insert", "linearizable", "256", "direct"),
        ("check", "any", "1024", "direct"),
        ("check", "linearizable", "1", "direct"),
    ] {
        let mut args = vec![
            "--mode",
            mode,
            "--consistency",
            consistency,
            "--batch",
            batch,
            "--conns",
            "2",
            "--concurrency",
            "4",
        ];
        if route == "direct" {
            args.push("--direct");
        }
        let fields = bench(addr, &args);
        assert_eq!(value(&fields, "target"), "leakbloom");
        assert_eq!(value(&fields, "route"), route);
        assert_eq!(value(&fields, "mode"), mode);
        assert_eq!(value(&fields, "batch"), batch);
        assert_eq!(value(&fields, "conns"), "2");
        assert_eq!(value(&fields, "consistency"), consistency);
        assert_eq!(value(&fields, "errors"), "0");
        let keys_per_s: f64 = value(&fields, "keys_per_s").parse().unwrap();
        assert!(keys_per_s > 0.0, "{fields:?}");
        let percentiles: Vec<f64> = ["p50_ms", "p99_ms", "p999_ms"]
            .iter()
            .map(|name| {
                let text = value(&fields, name);
                assert_eq!(text.split('.').nth(1).map(str::len), Some(3), "{text}");
                text.parse().unwrap()
            })
            .collect();
        assert!(
            0.0 < percentiles[0] && percentiles[0] <= percentiles[1],
            "{fields:?}"
        );
        assert!(percentiles[1] <= percentiles[2], "{fields:?}");
    }
    // Cut into windows: one stderr line per window, the worst and median window p99 at the end
    // of the result line.
    let output = run(&bench_args(
        addr,
        &[
            "--mode",
            "insert",
            "--batch",
            "64",
            "--window-seconds",
            "0.4",
        ],
    ));
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let windows: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("window="))
        .collect();
    // 0.4 s, 0.4 s and the last 0.2 s.
    assert_eq!(windows.len(), 3, "{stderr}");
    for (k, line) in windows.iter().enumerate() {
        let names: Vec<&str> = line
            .split(' ')
            .map(|field| field.split_once('=').expect("name=value").0)
            .collect();
        assert_eq!(
            names,
            ["window", "keys_per_s", "p50_ms", "p99_ms", "errors"],
            "{line}"
        );
        assert!(line.starts_with(&format!("window={k} ")), "{stderr}");
    }
    let fields = result_line(&String::from_utf8_lossy(&output.stdout), true);
    let worst: f64 = value(&fields, "worst_window_p99_ms").parse().unwrap();
    let median: f64 = value(&fields, "median_window_p99_ms").parse().unwrap();
    assert!(0.0 < median && median <= worst, "{fields:?}");

    // --redis expects a Redis server: a node's gRPC port answers no RESP, which fails the probe
    // at once; flags of the leakbloom run are refused beside it.
    let output = run(&["bench", "e2e", "--redis", "--addr", addr, "--seconds", "30"]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis"), "{stderr}");
    let output = run(&["bench", "e2e", "--redis", "--conns", "4", "--addr", addr]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--conns"),
        "{output:?}"
    );

    let info = run(&["sets", "get", "bench", "--addr", addr]);
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("estimated_keys="),
        "{info:?}"
    );

    // A missing set fails at once, says how to create it, and sends nothing timed.
    let output = run(&[
        "bench",
        "e2e",
        "--addr",
        addr,
        "--set",
        "nope",
        "--seconds",
        "30",
    ]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"nope\" does not exist") && stderr.contains("leakbloom sets create"),
        "{stderr}"
    );

    // Anything but loopback is refused before a connection is made.
    for addr in ["10.1.2.3:50051", "example.com:50051"] {
        let output = run(&["bench", "e2e", "--addr", addr, "--seconds", "1"]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("loopback"), "{stderr}");
    }

    // Bad arguments are named.
    for (args, message) in [
        (&["--batch", "0"][..], "--batch"),
        (&["--conns", "4", "--concurrency", "2"][..], "--concurrency"),
        (&["--seconds", "0"][..], "--seconds"),
        (&["--window-seconds", "0"][..], "--window-seconds"),
    ] {
        let mut all = vec!["bench", "e2e", "--addr", addr];
        all.extend(args);
        let output = run(&all);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
