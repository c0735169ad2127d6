//! Filesystem notifications for [`FileSource`](crate::FileSource) directories, as batches of
//! changed paths to pass to [`FileSource::reload`](crate::FileSource::reload).

use crate::SourceError;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Watches `dirs` recursively. Each notification becomes one batch of paths: created,
/// modified, removed, or either side of a rename, so editors that save by renaming a temporary
/// file over the original are seen. When the OS drops events the batch names the directories
/// themselves, which [`FileSource::reload`](crate::FileSource::reload) rescans.
///
/// Watching stops when the returned watcher is dropped. The caller debounces: one save may
/// produce several batches.
pub fn watch(
    dirs: &[PathBuf],
) -> Result<(RecommendedWatcher, mpsc::UnboundedReceiver<Vec<PathBuf>>), SourceError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let roots = dirs.to_vec();
    let handler = move |result: notify::Result<Event>| match result {
        Ok(event) => {
            let paths = if event.need_rescan() {
                roots.clone()
            } else if is_content_change(&event.kind) {
                event.paths
            } else {
                return;
            };
            if !paths.is_empty() {
                // The receiver is gone only when the server is shutting down.
                let _ = tx.send(paths);
            }
        }
        Err(e) => tracing::warn!(error = %e, "file watcher error"),
    };
    let to_error = |path: &PathBuf| {
        let path = path.clone();
        move |source| SourceError::Watch { path, source }
    };
    let first = dirs.first().cloned().unwrap_or_default();
    let mut watcher = notify::recommended_watcher(handler).map_err(to_error(&first))?;
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(to_error(dir))?;
    }
    Ok((watcher, rx))
}

/// Reads (opens, reads, closes without writing) cannot change config; everything else may.
fn is_content_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileSource;
    use std::fs;
    use std::time::Duration;

    fn namespace_yaml(name: &str) -> String {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
    }

    fn names(source: &FileSource) -> Vec<String> {
        source
            .objects()
            .iter()
            .map(|o| o.key().name.clone())
            .collect()
    }

    /// Feeds batches to the source until it holds `expected`, or fails after a few seconds.
    async fn reload_until(
        rx: &mut mpsc::UnboundedReceiver<Vec<PathBuf>>,
        source: &mut FileSource,
        expected: &[&str],
    ) {
        let wait = async {
            while names(source) != expected {
                let batch = rx.recv().await.expect("watcher alive");
                source.reload(&batch);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("source never reached {expected:?}: {:?}", names(source)));
    }

    #[tokio::test]
    async fn sees_create_edit_by_rename_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut source = FileSource::new(vec![root.clone()]);
        assert!(source.load_all().is_empty());
        let (_watcher, mut rx) = watch(std::slice::from_ref(&root)).unwrap();

        let file = root.join("ns.yaml");
        fs::write(&file, namespace_yaml("created")).unwrap();
        reload_until(&mut rx, &mut source, &["created"]).await;

        // vim-style: write elsewhere, then rename over the original.
        let tmp = root.join(".ns.yaml.tmp");
        fs::write(&tmp, namespace_yaml("renamed")).unwrap();
        fs::rename(&tmp, &file).unwrap();
        reload_until(&mut rx, &mut source, &["renamed"]).await;

        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/more.yaml"), namespace_yaml("nested")).unwrap();
        reload_until(&mut rx, &mut source, &["renamed", "nested"]).await;

        fs::remove_file(&file).unwrap();
        reload_until(&mut rx, &mut source, &["nested"]).await;
    }

    #[test]
    fn watching_a_missing_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = watch(std::slice::from_ref(&missing)).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
