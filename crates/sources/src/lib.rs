//! Config sources: where the mesh's objects come from before they reach the model.
//!
//! Place in the flow: a source reads Kubernetes and Istio objects, converts them to model
//! [`Object`]s ([`convert`]) and hands them to the single-writer
//! [`Index`](meshpilot_model::Index), whose [`ChangeSet`](meshpilot_model::ChangeSet)s drive
//! pushes. Today the one source is a set of watched directories of YAML ([`FileSource`] plus
//! [`watch`]): the same manifests `kubectl apply` takes, or `kubectl get -o yaml` output as it
//! is. The source only checks types; the index validates VirtualService/DestinationRule semantics.
//!
//! A broken document is reported as a [`LoadError`] and skipped; a file that is not YAML at all
//! (for instance half-written) keeps its last good objects, so a save in progress never wipes
//! working config.

pub mod convert;
mod file;
pub mod kubernetes;
mod parse;
mod watch;

pub use file::FileSource;
pub use parse::{object_from_json, parse_documents};
pub use watch::{FileEvent, PendingPaths, watch};

use meshpilot_model::Object;
use std::fmt;
use std::path::PathBuf;

/// Kind and namespace/name of an object named in an error, as far as they could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    /// Empty for cluster-scoped kinds (Namespace).
    pub namespace: String,
    /// Empty when the document has no readable `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        match (self.namespace.is_empty(), self.name.is_empty()) {
            (_, true) => Ok(()),
            (true, false) => write!(f, " {}", self.name),
            (false, false) => write!(f, " {}/{}", self.namespace, self.name),
        }
    }
}

/// A document (or a whole file) that could not be loaded; everything else still loads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{message}", .file.display(), context(.document, .object, .field))]
pub struct LoadError {
    pub file: PathBuf,
    /// 0-based index of the YAML document; `None` when the file as a whole failed.
    pub document: Option<usize>,
    pub object: Option<ObjectRef>,
    /// Path of the offending field, e.g. `spec.http[0].timeout`.
    pub field: Option<String>,
    pub message: String,
}

/// `document 2 (VirtualService default/reviews): spec.http[0].timeout: `, or nothing.
fn context(document: &Option<usize>, object: &Option<ObjectRef>, field: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(document) = document {
        out.push_str(&format!("document {document}"));
    }
    if let Some(object) = object {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("({object})"));
    }
    if !out.is_empty() {
        out.push_str(": ");
    }
    if let Some(field) = field {
        out.push_str(&format!("{field}: "));
    }
    out
}

/// Failures that stop a source from running at all (unlike [`LoadError`]s, which skip a part).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("Kubernetes client configuration: {0}")]
    KubeConfig(String),
    #[error("Kubernetes API: {0}")]
    KubeApi(#[from] kube::Error),
}

/// Kind, namespace and name of a loaded object, for error messages.
fn object_ref(object: &Object) -> ObjectRef {
    let key = object.key();
    ObjectRef {
        kind: object.kind().as_str().to_string(),
        namespace: key.namespace,
        name: key.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_error_display_names_file_document_object_and_field() {
        let error = LoadError {
            file: PathBuf::from("deploy/x.yaml"),
            document: Some(2),
            object: Some(ObjectRef {
                kind: "VirtualService".into(),
                namespace: "default".into(),
                name: "reviews".into(),
            }),
            field: Some("spec.http[0].timeout".into()),
            message: "negative duration \"-1s\"".into(),
        };
        assert_eq!(
            error.to_string(),
            "deploy/x.yaml: document 2 (VirtualService default/reviews): spec.http[0].timeout: \
             negative duration \"-1s\""
        );
        let whole_file = LoadError {
            file: PathBuf::from("a.yaml"),
            document: None,
            object: None,
            field: None,
            message: "invalid YAML".into(),
        };
        assert_eq!(whole_file.to_string(), "a.yaml: invalid YAML");
    }
}
