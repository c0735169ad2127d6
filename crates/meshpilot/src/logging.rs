//! tracing setup: human-readable or JSON, filtered per module.

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

/// Short module names accepted in `--log-level` for the crates whose targets are long:
/// `xds=debug` means `meshpilot_xds=debug`.
const SHORT_TARGETS: [(&str, &str); 6] = [
    ("xds", "meshpilot_xds"),
    ("sources", "meshpilot_sources"),
    ("translate", "meshpilot_translate"),
    ("model", "meshpilot_model"),
    ("agent", "meshpilot_agent"),
    ("api", "meshpilot_api"),
];

/// Installs the global subscriber. Logs go to stderr so command output stays clean.
pub fn init(filter: &str, format: LogFormat) {
    let expanded = expand_targets(filter);
    let filter = EnvFilter::try_new(&expanded).unwrap_or_else(|err| {
        eprintln!("warning: bad --log-level {filter:?} ({err}); using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Rewrites each directive's target from its short name (`xds`, `xds::server`) to the crate's
/// (`meshpilot_xds`, `meshpilot_xds::server`); levels, span filters and full names pass as is.
fn expand_targets(filter: &str) -> String {
    filter
        .split(',')
        .map(|directive| {
            let directive = directive.trim();
            let end = directive.find(['=', '[']).unwrap_or(directive.len());
            let (target, rest) = directive.split_at(end);
            let head = target.split("::").next().unwrap_or_default();
            match SHORT_TARGETS.iter().find(|(short, _)| *short == head) {
                Some((short, full)) => format!("{full}{}{rest}", &target[short.len()..]),
                None => directive.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_module_names_become_crate_targets() {
        assert_eq!(expand_targets("xds=debug,info"), "meshpilot_xds=debug,info");
        assert_eq!(
            expand_targets("xds::server=trace, sources=warn"),
            "meshpilot_xds::server=trace,meshpilot_sources=warn"
        );
        assert_eq!(
            expand_targets("xds[ads{node=x}]=debug"),
            "meshpilot_xds[ads{node=x}]=debug"
        );
        for unchanged in ["info", "meshpilot_xds=debug", "xdsx=debug", "tonic=warn"] {
            assert_eq!(expand_targets(unchanged), unchanged);
        }
        assert!(EnvFilter::try_new(expand_targets("xds=debug,info")).is_ok());
    }
}
