//! Golden tests: mesh YAML in `tests/golden/<case>/mesh/` → the Envoy config of the proxy named
//! in `<case>/proxy`, pinned per resource type. `UPDATE_GOLDEN=1` rewrites the expectations;
//! review them as diffs.

use anyhow::Result;
use meshpilot_tests::{golden_cases, load_case};
use meshpilot_translate::{build_proxy_config, dump::to_json};
use std::path::Path;

fn render<M: prost::Message + prost::Name>(resources: &[M]) -> Result<String> {
    let values = resources
        .iter()
        .map(to_json)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_yaml_ng::to_string(&values)?)
}

/// Compares (or, with UPDATE_GOLDEN=1, rewrites) one expectation file; returns a diff on mismatch.
fn check(path: &Path, actual: &str) -> Result<Option<String>> {
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(path, actual)?;
        return Ok(None);
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return Ok(None);
    }
    let diff = similar::TextDiff::from_lines(&expected, actual)
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string();
    Ok(Some(format!("{}:\n{diff}", path.display())))
}

#[test]
fn every_golden_case_matches_its_expected_envoy_config() -> Result<()> {
    let mut mismatches = Vec::new();
    for dir in golden_cases()? {
        let case = load_case(&dir)?;
        let config = build_proxy_config(&case.snapshot, &case.proxy);
        let files = [
            ("listeners.yaml", render(&config.listeners)?),
            ("routes.yaml", render(&config.routes)?),
            ("clusters.yaml", render(&config.clusters)?),
            ("endpoints.yaml", render(&config.endpoints)?),
            ("problems.txt", {
                let mut text = case.problems.join("\n");
                text.push('\n');
                text
            }),
        ];
        for (file, actual) in files {
            if let Some(diff) = check(&case.dir.join(file), &actual)? {
                mismatches.push(format!("case {}: {diff}", case.name));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden mismatches (rerun with UPDATE_GOLDEN=1 to accept, then review the diff):\n{}",
        mismatches.join("\n")
    );
    Ok(())
}
