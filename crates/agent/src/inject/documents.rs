//! `kube-inject` over a multi-document YAML text: every workload's pod template gets the
//! sidecar; everything else, and every document injection leaves alone, is copied verbatim.

use super::{InjectConfig, InjectError, inject_pod_template};
use serde_yaml_ng::Value;

/// A document that could not be injected, named by its position and identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("document {index} ({what}): {reason}")]
pub struct DocumentError {
    /// 1-based, in input order (empty documents count too).
    pub index: usize,
    /// `Deployment default/web`, or where the document starts when it has no identity.
    pub what: String,
    pub reason: String,
}

/// Where a kind keeps its pod template; `None` for kinds that have none.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// One document's text as written, and the line it starts on (1-based).
struct RawDocument {
    text: String,
    first_line: usize,
}

/// Splits on `---` lines. Text after `--- ` on the marker line belongs to the new document.
fn split_documents(text: &str) -> Vec<RawDocument> {
    let mut documents = vec![RawDocument {
        text: String::new(),
        first_line: 1,
    }];
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let rest = line
            .strip_prefix("---")
            .filter(|rest| rest.trim().is_empty() || rest.starts_with([' ', '\t']));
        match rest {
            Some(rest) => documents.push(RawDocument {
                text: rest.trim_start().to_string(),
                first_line: number + 1,
            }),
            None => documents
                .last_mut()
                .expect("never empty")
                .text
                .push_str(line),
        }
    }
    documents
}

/// `Kind namespace/name`, `Kind name` or just the kind.
fn describe(doc: &Value, kind: &str) -> String {
    let metadata = &doc["metadata"];
    match (metadata["namespace"].as_str(), metadata["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_string(),
    }
}

/// Injects one object; `Ok(true)` when it changed.
fn inject_object(doc: &mut Value, config: &InjectConfig) -> Result<bool, String> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    if kind == "List" {
        let Some(items) = doc.get_mut("items").and_then(Value::as_sequence_mut) else {
            return Err("a List without an items list".into());
        };
        let mut changed = false;
        for (i, item) in items.iter_mut().enumerate() {
            let item_kind = item["kind"].as_str().unwrap_or("object").to_string();
            let what = describe(item, &item_kind);
            changed |=
                inject_object(item, config).map_err(|e| format!("items[{i}] ({what}): {e}"))?;
        }
        return Ok(changed);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(false);
    };
    let workload = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut template = &mut *doc;
    let mut walked = Vec::new();
    for key in path {
        walked.push(*key);
        template = match template.get_mut(*key) {
            Some(child) if !child.is_null() => child,
            _ => return Err(format!("{} is missing", walked.join("."))),
        };
    }
    let prefix = if walked.is_empty() {
        String::new()
    } else {
        format!("{}: ", walked.join("."))
    };
    inject_pod_template(template, &workload, config)
        .map(|outcome| outcome.changed())
        .map_err(|e: InjectError| format!("{prefix}{e}"))
}

/// `meshpilot inject`: the documents of `text` with the sidecar added to every Pod, Deployment,
/// StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob (and those inside a
/// `List`). Documents that do not change keep their exact text; changed ones are re-serialised.
/// Empty documents are dropped. The output separates documents with `---`.
pub fn inject_documents(text: &str, config: &InjectConfig) -> Result<String, DocumentError> {
    let mut output: Vec<String> = Vec::new();
    for (i, raw) in split_documents(text).into_iter().enumerate() {
        let index = i + 1;
        let at_line = || format!("starting at line {}", raw.first_line);
        let mut doc: Value = serde_yaml_ng::from_str(&raw.text).map_err(|e| DocumentError {
            index,
            what: at_line(),
            reason: format!("not valid YAML: {e}"),
        })?;
        if doc.is_null() {
            continue;
        }
        let kind = match doc.get("kind") {
            Some(Value::String(kind)) if doc.is_mapping() => kind.clone(),
            _ => {
                return Err(DocumentError {
                    index,
                    what: at_line(),
                    reason: "not a Kubernetes object: no `kind`".into(),
                });
            }
        };
        let what = describe(&doc, &kind);
        let changed = inject_object(&mut doc, config).map_err(|reason| DocumentError {
            index,
            what,
            reason,
        })?;
        let mut text = if changed {
            serde_yaml_ng::to_string(&doc).expect("YAML values serialize")
        } else {
            raw.text
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        output.push(text);
    }
    Ok(output.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx
";

    #[test]
    fn untouched_documents_keep_their_text() {
        let service = "# the front door\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n";
        let input = format!("---\n{service}---\n\n---\n{DEPLOYMENT}");
        let output = inject_documents(&input, &InjectConfig::default()).unwrap();
        let (first, second) = output.split_once("---\n").unwrap();
        assert_eq!(first, service);
        assert!(second.contains("istio-proxy"), "{second}");
        assert!(second.starts_with("apiVersion: apps/v1\nkind: Deployment\n"));
    }

    #[test]
    fn errors_name_the_document() {
        let broken = DEPLOYMENT.replace("containers:", "containers: 3\n      x:");
        let input = format!("kind: ConfigMap\nmetadata: {{name: c}}\n---\n{broken}");
        let err = inject_documents(&input, &InjectConfig::default()).unwrap_err();
        assert_eq!(err.index, 2);
        assert_eq!(err.what, "Deployment shop/web");
        assert_eq!(err.reason, "spec.template: spec.containers must be a list");

        let err = inject_documents("a: [1\n", &InjectConfig::default()).unwrap_err();
        assert_eq!(err.what, "starting at line 1");
        assert!(err.reason.starts_with("not valid YAML"), "{err}");

        let err = inject_documents(
            "kind: Deployment\nmetadata: {name: x}\n",
            &InjectConfig::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "document 1 (Deployment x): spec is missing"
        );
    }

    #[test]
    fn cron_jobs_and_lists_are_injected() {
        let cron = "apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: '@daily'
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: job, image: busybox}]
";
        let output = inject_documents(cron, &InjectConfig::default()).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&output).unwrap();
        let spec = &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][1]["name"], "istio-proxy");

        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            DEPLOYMENT.replace('\n', "\n  ")
        );
        let output = inject_documents(&list, &InjectConfig::default()).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&output).unwrap();
        assert_eq!(
            doc["items"][0]["spec"]["template"]["spec"]["initContainers"][0]["name"],
            "istio-init"
        );
    }
}
