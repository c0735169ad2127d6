//! Filesystem notifications for [`FileSource`](crate::FileSource) directories, as events
//! naming changed paths, and [`PendingPaths`] to gather them until no write is in progress.

use crate::SourceError;
use crate::file::is_config_file;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::HashSet;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Paths a filesystem notification names, and whether it may leave a write half done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEvent {
    pub paths: Vec<PathBuf>,
    /// Created or modified but not yet closed: the writer may still be writing.
    pub writing: bool,
}

/// Watches `dirs` recursively. Each notification becomes one event: created, modified,
/// closed after writing, removed, or either side of a rename, so editors that save by renaming
/// a temporary file over the original are seen. When the OS drops events the event names the
/// directories themselves, which [`FileSource::reload`](crate::FileSource::reload) rescans.
///
/// Watching stops when the returned watcher is dropped. The caller gathers events with
/// [`PendingPaths`]: one save produces several.
pub fn watch(
    dirs: &[PathBuf],
) -> Result<(RecommendedWatcher, mpsc::UnboundedReceiver<FileEvent>), SourceError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let roots = dirs.to_vec();
    let handler = move |result: notify::Result<Event>| match result {
        Ok(event) => {
            let (paths, writing) = if event.need_rescan() {
                (roots.clone(), false)
            } else if is_content_change(&event.kind) {
                let writing = is_write_in_progress(&event.kind);
                (event.paths, writing)
            } else {
                return;
            };
            if !paths.is_empty() {
                // The receiver is gone only when the server is shutting down.
                let _ = tx.send(FileEvent { paths, writing });
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

/// A file created or written to is normally followed by its close; renames, removals, new
/// directories and attribute changes are complete as reported.
fn is_write_in_progress(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(CreateKind::Folder) => false,
        EventKind::Create(_) => true,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => true,
        _ => false,
    }
}

/// Changed paths gathered from [`FileEvent`]s, and the config files among them still open for
/// writing. Reading those before their close would see them half written; files the source
/// never reads (temporaries, swap files) do not hold the batch back.
#[derive(Debug, Default)]
pub struct PendingPaths {
    paths: Vec<PathBuf>,
    being_written: HashSet<PathBuf>,
}

impl PendingPaths {
    pub fn add(&mut self, event: FileEvent) {
        for path in &event.paths {
            if event.writing {
                if is_config_file(path) {
                    self.being_written.insert(path.clone());
                }
            } else {
                self.being_written.remove(path);
            }
        }
        self.paths.extend(event.paths);
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// No config file in the batch is still being written.
    pub fn settled(&self) -> bool {
        self.being_written.is_empty()
    }

    /// The paths to [`FileSource::reload`](crate::FileSource::reload), each once.
    pub fn take(&mut self) -> Vec<PathBuf> {
        self.being_written.clear();
        let mut paths = std::mem::take(&mut self.paths);
        paths.sort();
        paths.dedup();
        paths
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
        rx: &mut mpsc::UnboundedReceiver<FileEvent>,
        source: &mut FileSource,
        expected: &[&str],
    ) {
        let wait = async {
            while names(source) != expected {
                let event = rx.recv().await.expect("watcher alive");
                source.reload(&event.paths);
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

    /// Gathers events until `pending` holds `path`, or fails after a few seconds.
    async fn gather_until_named(
        rx: &mut mpsc::UnboundedReceiver<FileEvent>,
        pending: &mut PendingPaths,
        path: &std::path::Path,
        settled: bool,
    ) {
        let wait = async {
            loop {
                let event = rx.recv().await.expect("watcher alive");
                let names_path = event.paths.iter().any(|p| p == path);
                pending.add(event);
                if names_path && pending.settled() == settled {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("no event left {path:?} settled={settled}: {pending:?}"));
    }

    #[tokio::test]
    async fn a_config_file_open_for_writing_holds_the_batch_until_closed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (_watcher, mut rx) = watch(std::slice::from_ref(&root)).unwrap();
        let mut pending = PendingPaths::default();

        let file = root.join("ns.yaml");
        let mut writer = fs::File::create(&file).unwrap();
        writer.write_all(b"apiVersion: v1\n").unwrap();
        writer.flush().unwrap();
        gather_until_named(&mut rx, &mut pending, &file, false).await;
        writer.write_all(b"kind: Namespace\n").unwrap();
        drop(writer);
        gather_until_named(&mut rx, &mut pending, &file, true).await;
        assert_eq!(pending.take(), vec![file.clone()]);
        assert!(pending.is_empty() && pending.settled());

        // Temporaries the source never reads do not hold a batch back; the rename completes it.
        let tmp = root.join(".ns.yaml.tmp");
        let mut writer = fs::File::create(&tmp).unwrap();
        writer
            .write_all(namespace_yaml("renamed").as_bytes())
            .unwrap();
        gather_until_named(&mut rx, &mut pending, &tmp, true).await;
        drop(writer);
        fs::rename(&tmp, &file).unwrap();
        gather_until_named(&mut rx, &mut pending, &file, true).await;
        assert!(pending.take().contains(&file));
    }

    #[test]
    fn watching_a_missing_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = watch(std::slice::from_ref(&missing)).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
