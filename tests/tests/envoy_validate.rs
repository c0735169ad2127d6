//! Real Envoy 1.40 accepts every config meshpilot generates: each golden case (and the example
//! mesh) is wrapped in a static bootstrap and run through `envoy --mode validate`.

use anyhow::{Context, Result};
use meshpilot_tests::{
    envoy_binary, envoy_validate, golden_cases, load_case, load_mesh, validation_bootstrap,
    workspace_root,
};
use meshpilot_translate::{build_proxy_config, dump::to_json};

#[test]
fn envoy_accepts_every_golden_config() -> Result<()> {
    let envoy = envoy_binary()?;
    let work = tempfile::tempdir()?;
    let mut dirs = golden_cases()?;
    dirs.push(workspace_root().join("deploy/examples"));
    for dir in dirs {
        let case = if dir.ends_with("examples") {
            example_case(&dir)?
        } else {
            load_case(&dir)?
        };
        let config = build_proxy_config(&case.snapshot, &case.proxy);
        assert!(
            !config.listeners.is_empty() && !config.clusters.is_empty(),
            "case {} produced no listeners or clusters",
            case.name
        );
        let bootstrap = validation_bootstrap(&case.proxy, &config);
        let path = work.path().join(format!("{}.json", case.name));
        std::fs::write(&path, serde_json::to_string_pretty(&to_json(&bootstrap)?)?)?;
        envoy_validate(&envoy, &path).with_context(|| format!("golden case {}", case.name))?;
    }
    Ok(())
}

/// The example mesh, from the productpage sidecar's point of view.
fn example_case(dir: &std::path::Path) -> Result<meshpilot_tests::GoldenCase> {
    let case = load_mesh(
        "deploy-examples",
        dir,
        dir,
        "productpage-v1-6b7f6dc5f-ccccc.default",
    )?;
    assert!(
        case.problems.is_empty(),
        "example mesh has problems: {:?}",
        case.problems
    );
    Ok(case)
}

/// The harness itself can fail: a listener with two identical filter chains is refused.
#[test]
fn envoy_refuses_a_broken_config() -> Result<()> {
    let envoy = envoy_binary()?;
    let work = tempfile::tempdir()?;
    let case = load_case(&workspace_root().join("tests/golden/bookinfo"))?;
    let mut config = build_proxy_config(&case.snapshot, &case.proxy);
    let listener = config
        .listeners
        .iter_mut()
        .find(|l| l.name == "virtualOutbound")
        .expect("virtualOutbound");
    let duplicate = listener.filter_chains[0].clone();
    listener.filter_chains.push(duplicate);
    let path = work.path().join("broken.json");
    let bootstrap = validation_bootstrap(&case.proxy, &config);
    std::fs::write(&path, serde_json::to_string_pretty(&to_json(&bootstrap)?)?)?;
    let err = envoy_validate(&envoy, &path).expect_err("envoy must refuse duplicate chains");
    assert!(err.to_string().contains("filter chain"), "{err:#}");
    Ok(())
}
