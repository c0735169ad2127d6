//! `meshpilot iptables` with istio-init's exact arguments: the dry run prints the reference
//! nat table, and a real run installs it (checked inside a throwaway network namespace).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// istio-init's injected arguments, word for word: the ones the E2E applies.
const INJECTED_FLAGS: [&str; 16] = meshpilot_tests::canary::IPTABLES_ARGS;

const GOLDEN: &str = include_str!("../../agent/tests/golden/iptables-default.txt");

fn meshpilot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshpilot"))
        .args(args)
        .output()
        .expect("run meshpilot")
}

#[test]
fn dry_run_with_injected_flags_prints_the_reference_table() {
    let mut args = vec!["iptables"];
    args.extend(INJECTED_FLAGS);
    args.push("--dry-run");
    let out = meshpilot(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), GOLDEN);
}

#[test]
fn long_flags_match_short_ones() {
    let out = meshpilot(&[
        "iptables",
        "--envoy-port=15001",
        "--inbound-capture-port=15006",
        "--proxy-uid=1337",
        "--proxy-gid=1337",
        "--inbound-interception-mode=REDIRECT",
        "--istio-service-cidr=*",
        "--istio-service-exclude-cidr=",
        "--istio-inbound-ports=*",
        "--istio-local-exclude-ports=15090,15021,15020",
        "--istio-local-outbound-ports-exclude=",
        "-n",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), GOLDEN);
}

#[test]
fn bad_values_and_unknown_flags_are_usage_errors() {
    for (args, message) in [
        (vec!["-k", "eth0"], "unexpected argument '-k'"),
        (vec!["-m", "TPROXY"], "TPROXY is not supported"),
        (vec!["-p", "0"], "invalid port \"0\""),
        (
            vec!["-i", "10.0.0.0/33"],
            "invalid IP range \"10.0.0.0/33\"",
        ),
        (vec!["-x", "*"], "cannot exclude outbound ranges"),
        (vec!["-u", ""], "at least one proxy user id"),
    ] {
        let mut full = vec!["iptables", "--dry-run"];
        full.extend(&args);
        let out = meshpilot(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A network namespace deleted when the test ends, pass or fail.
struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    fn create() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("meshpilot-iptables-{}-{nanos}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        NetnsGuard { name }
    }

    fn exec(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("start command");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn installs_the_rules_in_a_network_namespace() {
    let missing: Vec<&str> = ["iptables-restore", "iptables-save", "ip"]
        .into_iter()
        .filter(|p| program(p).is_none())
        .collect();
    assert!(
        missing.is_empty() && effective_uid() == Some(0),
        "this test installs real iptables rules in a throwaway network namespace, so it needs \
         root and the iptables and iproute2 packages (missing: {missing:?}, uid {:?}): run it \
         as root after `apt-get install -y iptables iproute2` (`cargo xtask install` does this)",
        effective_uid()
    );
    let netns = NetnsGuard::create();
    let meshpilot = Path::new(env!("CARGO_BIN_EXE_meshpilot"));
    run_ok(netns.exec(meshpilot).arg("iptables").args(INJECTED_FLAGS));
    let saved = run_ok(netns.exec(Path::new("iptables-save")).args(["-t", "nat"]));
    let without_comments: String = saved
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        without_comments, GOLDEN,
        "iptables-save -t nat after applying"
    );

    // Without CAP_NET_ADMIN the command refuses with a clear message instead.
    let setpriv = program("setpriv").expect("setpriv (util-linux) drops privileges for this check");
    let out = netns
        .exec(&setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(meshpilot)
        .arg("iptables")
        .args(INJECTED_FLAGS)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs root (CAP_NET_ADMIN)"), "{stderr}");
}
