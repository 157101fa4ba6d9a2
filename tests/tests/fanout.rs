//! The fan-out testbed in miniature: 4 emulated hosts in network
//! namespaces on 100 Mbit/s links, every scenario, every digest right, and
//! the origin serving the file about once for dffs.

use std::process::Command;

#[test]
fn four_hosts_get_the_file_and_the_origin_serves_it_once() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let bins = tests::bin("peerd").parent().unwrap().to_path_buf();
    let out = Command::new("python3")
        .arg(root.join("bench/fanout/fanout.py"))
        .args([
            "--n",
            "4",
            "--size-mib",
            "16",
            "--scenarios",
            "dfget,dffs,curl",
        ])
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .expect("run bench/fanout/fanout.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fanout failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("fanout "))
        .collect();
    assert_eq!(lines.len(), 3, "one line per scenario:\n{stdout}");
    for line in lines {
        let field = |key: &str| -> String {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key} in '{line}'"))
                .to_string()
        };
        assert_eq!(field("verified"), "4/4", "{line}");
        let copies: f64 = field("origin_copies").parse().unwrap();
        if field("scenario") == "curl" {
            assert!(copies >= 3.9, "curl fetches one copy per host: {line}");
        } else {
            assert!(
                copies <= 1.1,
                "the origin must serve the file about once: {line}"
            );
        }
    }
}
