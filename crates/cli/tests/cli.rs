//! The `leakbloom` binary as a user runs it: real processes, real sockets, stdout and exit codes.

mod common;

use leakbloom_testkit::process::Stream;
use leakbloom_testkit::{scratch_on_disk, Proc};

use common::{address_after, leakbloom, run, start_one_node, stdout_of};

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ident/testdata/vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn hash_matches_the_published_vectors() {
    let vectors = vectors();
    let pepper_text = vectors["pepper"]["utf8"].as_str().unwrap();
    let dir = scratch_on_disk();
    let pepper_file = dir.path().join("pepper");
    std::fs::write(&pepper_file, format!("{pepper_text}\n")).unwrap();
    let mut checked = 0;
    for case in vectors["cases"].as_array().unwrap().iter().step_by(5) {
        let mut args = vec!["hash", "--kind", case["kind"].as_str().unwrap()];
        if let Some(region) = case["region"].as_str() {
            args.extend(["--region", region]);
        }
        let input = case["input"].as_str().unwrap();
        let canonical = case["canonical"].as_str().unwrap();
        let mut plain = args.clone();
        plain.push(input);
        let expected = format!("{canonical}\t{}\n", case["sha256"].as_str().unwrap());
        assert_eq!(stdout_of(&plain), expected, "{case}");
        args.extend(["--pepper-file", pepper_file.to_str().unwrap(), input]);
        let expected = format!("{canonical}\t{}\n", case["hmac_sha256"].as_str().unwrap());
        assert_eq!(stdout_of(&args), expected, "{case}");
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn invalid_identifiers_are_named_by_position_and_fail() {
    let output = run(&["hash", "--kind", "email", "no-at-sign"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("argument 1"), "{stderr}");
    assert!(
        !stderr.contains("no-at-sign"),
        "the identifier leaked into the message: {stderr}"
    );

    let output = run(&[
        "check",
        "--addr",
        "127.0.0.1:1",
        "--kind",
        "phone",
        "+442079460000",
        "12",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("argument 2"), "{stderr}");
}

#[test]
fn node_serves_sets_insert_and_check() {
    let data = scratch_on_disk();
    let (_node, addr) = start_one_node(data.path());
    let addr = addr.as_str();

    let created = stdout_of(&[
        "sets",
        "create",
        "leak",
        "--capacity",
        "10000",
        "--fpr",
        "1e-4",
        "--addr",
        addr,
    ]);
    assert!(
        created.starts_with("leak\tcapacity=10000 fpr=1e-4 hashing=sha256"),
        "{created}"
    );
    let inserted = stdout_of(&[
        "insert",
        "--addr",
        addr,
        "--set",
        "leak",
        "--kind",
        "email",
        "Alice@Example.com",
        " bob@example.org ",
    ]);
    assert_eq!(inserted, "inserted 2 of 2 identifiers into leak\n");

    let dir = scratch_on_disk();
    let file = dir.path().join("phones.txt");
    std::fs::write(&file, "+44 20 7946 0000\n\n020 7946 0001\n").unwrap();
    let inserted = stdout_of(&[
        "insert",
        "--addr",
        addr,
        "--set",
        "leak",
        "--kind",
        "phone",
        "--region",
        "GB",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(inserted, "inserted 2 of 2 identifiers into leak\n");

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "+44 20 7946 0000\nnot a phone\n").unwrap();
    let output = run(&[
        "insert",
        "--addr",
        addr,
        "--set",
        "leak",
        "--kind",
        "phone",
        "--file",
        bad.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 2"));

    let checked = stdout_of(&[
        "check",
        "--addr",
        addr,
        "--kind",
        "email",
        "alice@example.com",
        "carol@example.net",
    ]);
    assert_eq!(checked, "alice@example.com\tleak\ncarol@example.net\t-\n");
    let checked = stdout_of(&[
        "check",
        "--addr",
        addr,
        "--set",
        "leak",
        "--kind",
        "phone",
        "--region",
        "GB",
        "02079460001",
    ]);
    assert_eq!(checked, "02079460001\tleak\n");

    let listed = stdout_of(&["sets", "list", "--addr", addr]);
    assert!(listed.starts_with("leak\t"), "{listed}");
    assert!(listed.contains("estimated_keys=4 "), "{listed}");
    let output = run(&["sets", "get", "nope", "--addr", addr]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    assert_eq!(
        stdout_of(&["sets", "drop", "leak", "--addr", addr]),
        "dropped leak\n"
    );
}

#[test]
fn dev_serves_a_demo_set() {
    let data = scratch_on_disk();
    // `dev` says where its router serves on stdout.
    let dev = leakbloom(&[
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--node-listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--demo-identifiers",
        "2000",
    ]);
    let dev = Proc::spawn("leakbloom dev", dev, Stream::Stdout);
    let addr = address_after(&dev.wait_for_line("router on "), "router on ");
    let addr = addr.as_str();
    let checked = stdout_of(&[
        "check",
        "--addr",
        addr,
        "--kind",
        "email",
        "demo-user-42@example.com",
        "someone@example.com",
    ]);
    assert_eq!(
        checked,
        "demo-user-42@example.com\tdemo\nsomeone@example.com\t-\n"
    );
}

#[test]
fn bench_filter_prints_one_line_per_engine() {
    let out = stdout_of(&["bench", "filter", "--keys", "20000", "--fpr", "1e-3"]);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("engine=")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, engine) in lines.iter().zip(["leakbloom", "bloomfilter"]) {
        assert!(
            line.starts_with(&format!(
                "engine={engine} keys=20000 fpr=1e-3 bits_per_key="
            )),
            "{line}"
        );
        for field in ["insert_per_s=", "lookup_per_s=", "measured_fpr="] {
            assert!(line.contains(field), "{line}");
        }
    }
}
