//! The network-namespace harness itself: pods reach each other over the fabric, processes run
//! as other uids, iptables REDIRECT with an owner match works inside a pod, and nothing is
//! left behind. Needs root; fails (never skips) without it.

use meshpilot_tests::netns::{Fabric, Pod, list_namespaces};
use serde_json::{Value, json};
use std::time::Duration;

const ECHO_SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
const MESH_CLIENT: &str = env!("CARGO_BIN_EXE_mesh-client");
const APP_USER: (u32, u32) = (1000, 1000);
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

fn mesh_client(pod: &Pod, user: Option<(u32, u32)>, args: &[&str]) -> Value {
    let mut argv = vec![MESH_CLIENT];
    argv.extend_from_slice(args);
    let stdout = pod
        .run_ok(&argv, user, RUN_TIMEOUT)
        .expect("mesh-client runs");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad summary {stdout:?}: {e}"))
}

#[test]
fn pods_talk_over_the_fabric_and_everything_is_removed() {
    let fabric = Fabric::new("mps").unwrap();
    let run_prefix = fabric.run_prefix();
    {
        let backend = fabric.add_pod("backend", "10.244.1.11/16").unwrap();
        // A narrower prefix: reaching the backend goes through the fabric's gateway.
        let client = fabric.add_pod("client", "10.244.2.20/24").unwrap();
        let mut server = backend
            .spawn(
                &[ECHO_SERVER, "--listen", "0.0.0.0:9080", "--body", "v1"],
                Some((1337, 1337)),
            )
            .unwrap();
        server
            .wait_for_output("listening on", Duration::from_secs(10))
            .unwrap();

        let summary = mesh_client(
            &client,
            Some(APP_USER),
            &[
                "--url",
                "http://10.244.1.11:9080/",
                "--requests",
                "20",
                "--timeout-ms",
                "2000",
            ],
        );
        assert_eq!(
            summary["counts"],
            json!({"v1": 20}),
            "{summary}\n{}",
            server.logs()
        );
        assert_eq!(summary["errors"], 0, "{summary}");
        assert_eq!(summary["statuses"], json!({"200": 20}), "{summary}");

        let headers = mesh_client(
            &client,
            Some(APP_USER),
            &[
                "--url",
                "http://reviews:9080/headers",
                "--connect",
                "10.244.1.11:9080",
                "--header",
                "x-test: yes",
            ],
        );
        let (body, _) = headers["counts"]
            .as_object()
            .and_then(|c| c.iter().next())
            .expect("one response");
        let echoed: Value = serde_json::from_str(body).unwrap();
        assert_eq!(echoed["headers"]["host"], "reviews:9080", "{echoed}");
        assert_eq!(echoed["headers"]["x-test"], "yes", "{echoed}");

        // The server really runs as the uid it was given.
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            uid_line.split_whitespace().collect::<Vec<_>>(),
            ["Uid:", "1337", "1337", "1337", "1337"]
        );
        assert!(
            fabric
                .namespaces()
                .iter()
                .all(|ns| ns.starts_with(&run_prefix)),
            "{:?}",
            fabric.namespaces()
        );
        assert_eq!(
            list_namespaces()
                .unwrap()
                .iter()
                .filter(|ns| ns.starts_with(&run_prefix))
                .count(),
            3
        );
    }
    drop(fabric);
    let left: Vec<String> = list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|ns| ns.starts_with(&run_prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn iptables_redirect_with_owner_match_works_in_a_pod() {
    let fabric = Fabric::new("mps").unwrap();
    let pod = fabric.add_pod("client", "10.244.1.20/16").unwrap();
    let mut server = pod
        .spawn(
            &[
                ECHO_SERVER,
                "--listen",
                "127.0.0.1:15001",
                "--body",
                "redirected",
            ],
            None,
        )
        .unwrap();
    server
        .wait_for_output("listening on", Duration::from_secs(10))
        .unwrap();
    let tool = pod
        .iptables_restore(
            "*nat\n\
             :PREROUTING ACCEPT [0:0]\n\
             :INPUT ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n\
             -A OUTPUT -d 10.96.0.1/32 -p tcp --dport 80 -m owner --uid-owner 1000 \
             -j REDIRECT --to-ports 15001\n\
             COMMIT\n",
        )
        .unwrap();
    eprintln!("iptables rules loaded with {tool}");

    // The app's uid is redirected to the local listener...
    let redirected = mesh_client(
        &pod,
        Some(APP_USER),
        &["--url", "http://10.96.0.1/", "--requests", "5"],
    );
    assert_eq!(
        redirected["counts"],
        json!({"redirected": 5}),
        "{redirected}"
    );

    // ...other uids are not, and the unrouted ClusterIP fails fast.
    let direct = mesh_client(
        &pod,
        Some((1001, 1001)),
        &[
            "--url",
            "http://10.96.0.1/",
            "--requests",
            "2",
            "--timeout-ms",
            "1000",
        ],
    );
    assert_eq!(direct["errors"], 2, "{direct}");
    assert_eq!(direct["counts"], json!({}), "{direct}");

    // Until mode sees the body at once.
    let until = mesh_client(
        &pod,
        Some(APP_USER),
        &[
            "--url",
            "http://10.96.0.1/",
            "--until-body",
            "redirected",
            "--max-wait-ms",
            "2000",
        ],
    );
    assert_eq!(until["matched"], true, "{until}");
    server.stop(Duration::from_secs(2)).unwrap();
}
