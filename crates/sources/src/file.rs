//! Directories of YAML as a config source: every file's last good objects, merged in path order.

use crate::parse::parse_file;
use crate::{LoadError, object_ref};
use meshpilot_model::{ChangeSet, Index, Kind, Object, ObjectKey};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// File name endings read as config; anything else in the directories is left alone.
const CONFIG_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The objects of a set of directories, read recursively, kept per file.
///
/// Names starting with `.` are skipped (editor swap files, `.git`). Kubernetes' atomic-writer
/// layout (a mounted ConfigMap: `..data` and `..<timestamp>` directories behind symlinks) is read
/// through the visible symlinks only, and any change under a `..` entry rescans its directory.
#[derive(Debug)]
pub struct FileSource {
    roots: Vec<Root>,
    /// Last good objects of each file, with their document index, in path order.
    files: BTreeMap<PathBuf, Vec<(usize, Object)>>,
    /// Where each object is defined: (file, position in its objects), in path then document
    /// order, so the first entry is the copy in effect.
    owners: HashMap<ObjectIdentity, Vec<(Arc<Path>, usize)>>,
    /// Objects whose copy in effect may differ from what [`FileSource::apply_to`] last applied.
    dirty: HashSet<ObjectIdentity>,
}

type ObjectIdentity = (Kind, ObjectKey);

/// A watched directory as given, plus the other spellings a watcher may report it by.
#[derive(Debug)]
struct Root {
    path: PathBuf,
    aliases: Vec<PathBuf>,
}

impl Root {
    fn new(path: PathBuf) -> Root {
        let mut root = Root {
            path,
            aliases: Vec::new(),
        };
        root.refresh_aliases();
        root
    }

    /// Absolute and canonical forms: inotify reports absolute paths, other backends canonical.
    fn refresh_aliases(&mut self) {
        let absolute = std::env::current_dir().map(|cwd| cwd.join(&self.path)).ok();
        let canonical = fs::canonicalize(&self.path).ok();
        self.aliases = absolute
            .into_iter()
            .chain(canonical)
            .filter(|alias| *alias != self.path)
            .collect();
        self.aliases.dedup();
    }

    /// `changed` spelled under this root's own path, when it lies inside the root.
    fn localize(&self, changed: &Path) -> Option<PathBuf> {
        if changed.starts_with(&self.path) {
            return Some(changed.to_path_buf());
        }
        self.aliases
            .iter()
            .find_map(|alias| changed.strip_prefix(alias).ok())
            .map(|rest| self.path.join(rest))
    }
}

/// Work a batch of changed paths boils down to.
#[derive(Default)]
struct Plan {
    rescan: BTreeSet<PathBuf>,
    load: BTreeSet<PathBuf>,
    gone: BTreeSet<PathBuf>,
}

/// Files a scan found, and the directories it could not read (whose files must be kept).
#[derive(Default)]
struct Scan {
    files: BTreeSet<PathBuf>,
    unreadable: Vec<PathBuf>,
}

impl FileSource {
    /// Nothing is read until [`FileSource::load_all`].
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        FileSource {
            roots: dirs.into_iter().map(Root::new).collect(),
            files: BTreeMap::new(),
            owners: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().map(|r| r.path.as_path())
    }

    /// Scans every directory: new files are read, vanished ones dropped, the rest re-read.
    pub fn load_all(&mut self) -> Vec<LoadError> {
        let mut touched = BTreeSet::new();
        let mut errors = Vec::new();
        for i in 0..self.roots.len() {
            self.roots[i].refresh_aliases();
            let dir = self.roots[i].path.clone();
            self.sync_dir(&dir, &mut touched, &mut errors);
        }
        errors.extend(self.duplicate_errors(&touched));
        errors
    }

    /// Re-reads only what `changed_paths` name (files or directories, as a watcher reports
    /// them, in any spelling of the root): a deleted path drops its objects, a new one is added.
    pub fn reload(&mut self, changed_paths: &[PathBuf]) -> Vec<LoadError> {
        let plan = self.plan(changed_paths);
        let mut touched = BTreeSet::new();
        let mut errors = Vec::new();
        for dir in &plan.rescan {
            self.sync_dir(dir, &mut touched, &mut errors);
        }
        let covered = |p: &PathBuf| plan.rescan.iter().any(|dir| p.starts_with(dir));
        for path in plan.gone.iter().filter(|p| !covered(p)) {
            self.forget(path, &mut touched);
        }
        for path in plan.load.iter().filter(|p| !covered(p)) {
            self.load_file(path, &mut touched, &mut errors);
        }
        errors.extend(self.duplicate_errors(&touched));
        errors
    }

    /// Brings `index` up to date with the files: every object added, edited or removed since
    /// the last call (everything, the first time) is applied or deleted, so only what the
    /// touched files define is looked at. Unchanged objects produce no changes.
    pub fn apply_to(&mut self, index: &mut Index) -> ChangeSet {
        let mut dirty: Vec<ObjectIdentity> = self.dirty.drain().collect();
        // Kind order as a full sync applies them; within a kind, key order.
        dirty.sort_unstable();
        let mut changes = ChangeSet::default();
        for (kind, key) in dirty {
            changes.merge(match self.in_effect(kind, &key) {
                Some(object) => index.apply(object.clone()),
                None => index.delete(kind, &key),
            });
        }
        changes
    }

    /// The copy of an object in effect: the first in path order.
    fn in_effect(&self, kind: Kind, key: &ObjectKey) -> Option<&Object> {
        let (path, position) = self.owners.get(&(kind, key.clone()))?.first()?;
        self.files
            .get(&**path)
            .and_then(|objects| objects.get(*position))
            .map(|(_, object)| object)
    }

    /// Every loaded object in path order, duplicates left out.
    pub fn objects(&self) -> Vec<&Object> {
        let mut seen = HashSet::new();
        self.entries()
            .filter(|(_, _, object)| seen.insert((object.kind(), object.key())))
            .map(|(_, _, object)| object)
            .collect()
    }

    /// Replaces (or with `None` drops) one file's objects, keeping `owners` and `dirty` in step.
    fn set_file(&mut self, path: &Path, objects: Option<Vec<(usize, Object)>>) {
        if let Some(old) = self.files.remove(path) {
            for (_, object) in &old {
                let identity = (object.kind(), object.key());
                if let Some(owners) = self.owners.get_mut(&identity) {
                    owners.retain(|(p, _)| **p != *path);
                    if owners.is_empty() {
                        self.owners.remove(&identity);
                    }
                }
                self.dirty.insert(identity);
            }
        }
        let Some(mut objects) = objects else {
            return;
        };
        // Kept until the file changes: without the slack of parsing's growth (up to half).
        objects.shrink_to_fit();
        let shared: Arc<Path> = path.into();
        for (position, (_, object)) in objects.iter().enumerate() {
            let identity = (object.kind(), object.key());
            let owners = self.owners.entry(identity.clone()).or_default();
            let at = owners.partition_point(|(p, i)| (&**p, *i) < (path, position));
            owners.insert(at, (shared.clone(), position));
            self.dirty.insert(identity);
        }
        self.files.insert(path.to_path_buf(), objects);
    }

    fn entries(&self) -> impl Iterator<Item = (&Path, usize, &Object)> {
        self.files.iter().flat_map(|(path, objects)| {
            objects
                .iter()
                .map(move |(document, object)| (path.as_path(), *document, object))
        })
    }

    /// Duplicates where either copy lives in a file just touched (older ones were reported).
    fn duplicate_errors(&self, touched: &BTreeSet<PathBuf>) -> Vec<LoadError> {
        let mut reported = BTreeSet::new();
        for path in touched {
            for (_, object) in self.files.get(path).into_iter().flatten() {
                let Some(owners) = self.owners.get(&(object.kind(), object.key())) else {
                    continue;
                };
                let Some(((first, _), copies)) = owners.split_first() else {
                    continue;
                };
                for (copy, position) in copies {
                    if touched.contains(&**copy) || touched.contains(&**first) {
                        reported.insert((copy.clone(), *position));
                    }
                }
            }
        }
        reported
            .into_iter()
            .filter_map(|(path, position)| {
                let (document, object) = self.files.get(&*path)?.get(position)?;
                let (first_path, first_position) =
                    self.owners.get(&(object.kind(), object.key()))?.first()?;
                let (first_document, _) = self.files.get(&**first_path)?.get(*first_position)?;
                Some(LoadError {
                    file: path.to_path_buf(),
                    document: Some(*document),
                    object: Some(object_ref(object)),
                    field: None,
                    message: format!(
                        "duplicate of {} document {first_document}, which is used instead \
                         (the first in path order wins)",
                        first_path.display()
                    ),
                })
            })
            .collect()
    }

    fn plan(&self, changed_paths: &[PathBuf]) -> Plan {
        let mut plan = Plan::default();
        for changed in changed_paths {
            let Some((root, path)) = self
                .roots
                .iter()
                .find_map(|root| root.localize(changed).map(|path| (root, path)))
            else {
                continue;
            };
            let relative = path.strip_prefix(&root.path).unwrap_or(Path::new(""));
            let names: Vec<String> = relative
                .components()
                .filter_map(|c| match c {
                    Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            if names.iter().any(|n| n.starts_with("..")) {
                // An atomic-writer swap changes files behind unchanged symlinks.
                plan.rescan.insert(root.path.clone());
            } else if names.iter().any(|n| n.starts_with('.')) {
                continue;
            } else if path.is_dir() {
                plan.rescan.insert(path);
            } else if path.exists() {
                if is_config_file(&path) {
                    plan.load.insert(path);
                }
            } else {
                plan.gone.insert(path);
            }
        }
        plan
    }

    /// Brings every file under `dir` up to date and drops files no longer there.
    fn sync_dir(
        &mut self,
        dir: &Path,
        touched: &mut BTreeSet<PathBuf>,
        errors: &mut Vec<LoadError>,
    ) {
        let mut scan = Scan::default();
        let mut visited = HashSet::new();
        scan_dir(dir, &mut scan, &mut visited, errors);
        let vanished: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| p.starts_with(dir) && !scan.files.contains(*p))
            .filter(|p| !scan.unreadable.iter().any(|u| p.starts_with(u)))
            .cloned()
            .collect();
        for path in vanished {
            self.forget(&path, touched);
        }
        for path in &scan.files {
            self.load_file(path, touched, errors);
        }
    }

    /// Drops `path` and, when it was a directory, everything under it.
    fn forget(&mut self, path: &Path, touched: &mut BTreeSet<PathBuf>) {
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in gone {
            self.set_file(&p, None);
            touched.insert(p);
        }
    }

    fn load_file(
        &mut self,
        path: &Path,
        touched: &mut BTreeSet<PathBuf>,
        errors: &mut Vec<LoadError>,
    ) {
        let text = match fs::read(path) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(path, touched);
                return;
            }
            Err(e) => Err(format!("cannot read: {e}")),
        };
        let parsed = text.and_then(|text| parse_file(path, &text));
        let previous = self.files.get(path).map_or(0, Vec::len);
        let failure = match parsed {
            Ok(parsed) if parsed.non_empty_documents == 0 && previous > 0 => {
                "the file is empty (perhaps still being written; delete it to remove its objects)"
                    .to_string()
            }
            Ok(parsed) => {
                errors.extend(parsed.errors);
                self.set_file(path, Some(parsed.objects));
                touched.insert(path.to_path_buf());
                return;
            }
            Err(message) => message,
        };
        // Half-written or unreadable: the previous version stays in effect.
        let message = if previous > 0 {
            format!("{failure}; keeping the {previous} object(s) of its last good version")
        } else {
            failure
        };
        errors.push(LoadError {
            file: path.to_path_buf(),
            document: None,
            object: None,
            field: None,
            message,
        });
    }
}

pub(crate) fn is_config_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Collects config files under `dir`, following symlinks but never the same directory twice.
fn scan_dir(
    dir: &Path,
    scan: &mut Scan,
    visited: &mut HashSet<PathBuf>,
    errors: &mut Vec<LoadError>,
) {
    let unreadable = |scan: &mut Scan, errors: &mut Vec<LoadError>, e: io::Error| {
        scan.unreadable.push(dir.to_path_buf());
        errors.push(LoadError {
            file: dir.to_path_buf(),
            document: None,
            object: None,
            field: None,
            message: format!("cannot read directory: {e}"),
        });
    };
    if let Ok(canonical) = fs::canonicalize(dir)
        && !visited.insert(canonical)
    {
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return unreadable(scan, errors, e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return unreadable(scan, errors, e),
        };
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks; a dangling one is simply not a file.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => scan_dir(&path, scan, visited, errors),
            Ok(meta) if meta.is_file() && is_config_file(&path) => {
                scan.files.insert(path);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpilot_model::ObjectKey;
    use std::fs;

    fn mk_namespace_yaml(name: &str) -> String {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
    }

    fn mk_service_yaml(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
             spec:\n  clusterIP: {ip}\n  selector: {{app: {name}}}\n  ports:\n  - name: http\n    port: 80\n"
        )
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn names(source: &FileSource) -> Vec<String> {
        source
            .objects()
            .iter()
            .map(|o| format!("{}:{}", o.kind().as_str(), o.key()))
            .collect()
    }

    #[test]
    fn loads_directories_recursively_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join("a.yaml"),
            &format!("{}---\n{}", mk_namespace_yaml("a"), mk_namespace_yaml("b")),
        );
        write(
            &root.join("nested/deeper/list.yml"),
            &format!(
                "apiVersion: v1\nkind: List\nitems:\n- {}",
                mk_namespace_yaml("c").replace('\n', "\n  ")
            ),
        );
        write(
            &root.join("nested/c.json"),
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"d"}}"#,
        );
        write(&root.join("README.md"), "kind: Namespace");
        write(&root.join(".a.yaml.swp"), "garbage: [");
        write(&root.join(".git/x.yaml"), &mk_namespace_yaml("hidden"));

        let mut source = FileSource::new(vec![root.to_path_buf()]);
        let errors = source.load_all();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            names(&source),
            vec![
                "Namespace:/a",
                "Namespace:/b",
                "Namespace:/d",
                "Namespace:/c"
            ]
        );
    }

    #[test]
    fn half_written_file_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svc.yaml");
        let good = format!(
            "{}---\n{}",
            mk_service_yaml("reviews", "10.96.0.1"),
            mk_namespace_yaml("x")
        );
        write(&file, &good);
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        assert!(source.load_all().is_empty());
        assert_eq!(
            names(&source),
            vec!["Service:default/reviews", "Namespace:/x"]
        );

        // Cut off mid-document: a syntax error.
        write(&file, &good[..good.find("selector").unwrap() + 14]);
        let errors = source.reload(std::slice::from_ref(&file));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("invalid YAML"), "{}", errors[0]);
        assert!(
            errors[0].message.contains("keeping the 2 object(s)"),
            "{}",
            errors[0]
        );
        assert_eq!(
            names(&source),
            vec!["Service:default/reviews", "Namespace:/x"]
        );

        // Truncated to nothing.
        write(&file, "");
        let errors = source.reload(std::slice::from_ref(&file));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("empty"), "{}", errors[0]);
        assert_eq!(names(&source).len(), 2);

        // A document-level failure only skips that document.
        write(
            &file,
            &format!(
                "{}---\n{}",
                mk_service_yaml("reviews", "not-an-ip"),
                mk_namespace_yaml("x")
            ),
        );
        let errors = source.reload(std::slice::from_ref(&file));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field.as_deref(), Some("spec.clusterIP"));
        assert_eq!(names(&source), vec!["Namespace:/x"]);

        // A new, empty file is simply empty.
        let fresh = dir.path().join("fresh.yaml");
        write(&fresh, "# nothing yet\n");
        assert!(source.reload(&[fresh]).is_empty());
    }

    #[test]
    fn deleting_a_file_removes_its_objects_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep.yaml");
        let drop = dir.path().join("sub/drop.yaml");
        write(&keep, &mk_service_yaml("reviews", "10.96.0.1"));
        write(&drop, &mk_service_yaml("ratings", "10.96.0.2"));
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        assert!(source.load_all().is_empty());

        let mut index = Index::default();
        let changes = source.apply_to(&mut index);
        assert_eq!(changes.services.len(), 2);
        assert!(
            source.apply_to(&mut index).is_empty(),
            "re-applying changes nothing"
        );

        fs::remove_file(&drop).unwrap();
        assert!(source.reload(&[drop]).is_empty());
        let changes = source.apply_to(&mut index);
        let removed: Vec<&str> = changes.services.iter().map(|h| &**h).collect();
        assert_eq!(removed, vec!["ratings.default.svc.cluster.local"]);
        assert_eq!(
            index.keys(Kind::Service),
            vec![ObjectKey::new("default", "reviews")]
        );

        // A removed directory drops everything under it.
        write(&dir.path().join("gone/x.yaml"), &mk_namespace_yaml("x"));
        source.reload(&[dir.path().join("gone")]);
        assert_eq!(names(&source).len(), 2);
        fs::remove_dir_all(dir.path().join("gone")).unwrap();
        source.reload(&[dir.path().join("gone")]);
        assert_eq!(names(&source), vec!["Service:default/reviews"]);
    }

    #[test]
    fn applying_after_a_reload_touches_only_what_the_files_changed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        write(&a, &mk_service_yaml("reviews", "10.96.0.1"));
        write(
            &b,
            &format!(
                "{}---\n{}",
                mk_service_yaml("ratings", "10.96.0.2"),
                mk_service_yaml("details", "10.96.0.3")
            ),
        );
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        assert!(source.load_all().is_empty());
        let mut index = Index::default();
        assert_eq!(source.apply_to(&mut index).services.len(), 3);

        // One object edited, one dropped from its file: exactly those two change.
        write(&b, &mk_service_yaml("ratings", "10.96.0.22"));
        assert!(source.reload(std::slice::from_ref(&b)).is_empty());
        let changes = source.apply_to(&mut index);
        let changed: Vec<&str> = changes.services.iter().map(|h| &**h).collect();
        assert_eq!(
            changed,
            [
                "details.default.svc.cluster.local",
                "ratings.default.svc.cluster.local"
            ]
        );
        assert_eq!(
            index.keys(Kind::Service),
            [
                ObjectKey::new("default", "ratings"),
                ObjectKey::new("default", "reviews")
            ]
        );

        // An object moved unchanged to another file changes nothing.
        write(&a, &mk_namespace_yaml("x"));
        write(
            &b,
            &format!(
                "{}---\n{}",
                mk_service_yaml("ratings", "10.96.0.22"),
                mk_service_yaml("reviews", "10.96.0.1")
            ),
        );
        assert!(source.reload(&[a, b]).is_empty());
        let changes = source.apply_to(&mut index);
        assert!(changes.services.is_empty() && changes.endpoints.is_empty());
        assert_eq!(changes.namespaces.len(), 1);
        assert_eq!(index.keys(Kind::Service).len(), 2);
    }

    #[test]
    fn duplicate_objects_across_files_keep_the_first_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.yaml");
        let second = dir.path().join("b.yaml");
        write(&first, &mk_service_yaml("reviews", "10.96.0.1"));
        write(
            &second,
            &format!(
                "{}---\n{}",
                mk_namespace_yaml("x"),
                mk_service_yaml("reviews", "10.96.0.9")
            ),
        );
        let mut source = FileSource::new(vec![dir.path().to_path_buf()]);
        let errors = source.load_all();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, second);
        assert_eq!(errors[0].document, Some(1));
        assert_eq!(
            errors[0].object.as_ref().unwrap().to_string(),
            "Service default/reviews"
        );
        assert!(
            errors[0].message.contains("a.yaml document 0"),
            "{}",
            errors[0]
        );

        let mut index = Index::default();
        source.apply_to(&mut index);
        let snapshot = index.snapshot();
        let svc = snapshot
            .service("reviews.default.svc.cluster.local")
            .unwrap();
        assert_eq!(svc.cluster_ips[0].to_string(), "10.96.0.1");

        // Reloading an unrelated file does not repeat the report; removing the winner promotes
        // the other copy.
        assert!(source.reload(&[dir.path().join("other.yaml")]).is_empty());
        fs::remove_file(&first).unwrap();
        assert!(source.reload(&[first]).is_empty());
        source.apply_to(&mut index);
        let snapshot = index.snapshot();
        let svc = snapshot
            .service("reviews.default.svc.cluster.local")
            .unwrap();
        assert_eq!(svc.cluster_ips[0].to_string(), "10.96.0.9");
    }

    #[cfg(unix)]
    #[test]
    fn reload_accepts_canonical_spellings_of_a_symlinked_root() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut source = FileSource::new(vec![link.clone()]);
        assert!(source.load_all().is_empty());

        let file = fs::canonicalize(&real).unwrap().join("ns.yaml");
        write(&file, &mk_namespace_yaml("x"));
        assert!(source.reload(std::slice::from_ref(&file)).is_empty());
        assert_eq!(names(&source), vec!["Namespace:/x"]);
        fs::remove_file(&file).unwrap();
        source.reload(&[file]);
        assert!(names(&source).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn follows_a_configmap_volume_swap() {
        // The kubelet's layout: files are symlinks into `..data`, itself a symlink swapped
        // atomically to a new timestamped directory.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("..2024_01/ns.yaml"), &mk_namespace_yaml("old"));
        std::os::unix::fs::symlink("..2024_01", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/ns.yaml", root.join("ns.yaml")).unwrap();
        let mut source = FileSource::new(vec![root.to_path_buf()]);
        assert!(source.load_all().is_empty());
        assert_eq!(names(&source), vec!["Namespace:/old"]);

        write(&root.join("..2024_02/ns.yaml"), &mk_namespace_yaml("new"));
        std::os::unix::fs::symlink("..2024_02", root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert!(source.reload(&[root.join("..data")]).is_empty());
        assert_eq!(names(&source), vec!["Namespace:/new"]);
    }
}
