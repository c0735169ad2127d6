//! Sharing equal values between classes of proxies.
//!
//! Resources are cached per class of proxy (namespace, own services, labels…), yet most of
//! what two classes get is byte for byte the same: every namespace's copy of a service's load
//! assignment, of the outbound clusters, of a port's route configuration. [`ContentInterner`]
//! hands out one copy of each equal resource, and one copy of each set made of the same
//! resources, so the sets' pre-encoded response entries and diffs are shared too.

use crate::resources::{Resource, ResourceSet};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// One shared copy per distinct value, found by a 64-bit key and confirmed by comparison.
/// Holds weak references: copies nobody holds any more are swept whenever the table has
/// doubled since the last sweep.
#[derive(Debug)]
pub(crate) struct WeakTable<T> {
    buckets: HashMap<u64, Vec<Weak<T>>>,
    entries: usize,
    sweep_at: usize,
}

impl<T> Default for WeakTable<T> {
    fn default() -> Self {
        WeakTable {
            buckets: HashMap::new(),
            entries: 0,
            sweep_at: 64,
        }
    }
}

impl<T> WeakTable<T> {
    /// The live value under `key` that `same` accepts.
    pub(crate) fn find(&self, key: u64, same: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.buckets
            .get(&key)?
            .iter()
            .filter_map(Weak::upgrade)
            .find(|existing| same(existing))
    }

    /// Records `value` under `key` (after [`WeakTable::find`] found no equal one).
    pub(crate) fn insert(&mut self, key: u64, value: &Arc<T>) {
        self.buckets
            .entry(key)
            .or_default()
            .push(Arc::downgrade(value));
        self.entries += 1;
        if self.entries > self.sweep_at {
            self.buckets.retain(|_, bucket| {
                bucket.retain(|w| w.strong_count() > 0);
                !bucket.is_empty()
            });
            self.entries = self.buckets.values().map(Vec::len).sum();
            self.sweep_at = (self.entries * 2).max(64);
        }
    }

    /// The shared copy equal (by `same`) to `value`, which becomes it when there is none.
    pub(crate) fn share(
        &mut self,
        key: u64,
        value: Arc<T>,
        same: impl Fn(&T, &T) -> bool,
    ) -> Arc<T> {
        if let Some(existing) = self.find(key, |e| same(e, &value)) {
            return existing;
        }
        self.insert(key, &value);
        value
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
    }
}

/// Shares equal resources, and sets of the same resources, between the classes of proxies.
#[derive(Debug, Default)]
pub(crate) struct ContentInterner {
    resources: Mutex<WeakTable<Resource>>,
    sets: Mutex<WeakTable<ResourceSet>>,
}

impl ContentInterner {
    /// The shared copy of a resource with this name and these bytes.
    pub(crate) fn resource(&self, resource: Arc<Resource>) -> Arc<Resource> {
        let key = xxhash_rust::xxh3::xxh3_64_with_seed(
            resource.name.as_bytes(),
            crate::delta_request::version_key(resource.version.as_bytes()),
        );
        self.resources
            .lock()
            .expect("resource interner lock")
            .share(key, resource, |a, b| a.name == b.name && a.any == b.any)
    }

    /// The shared set of exactly these resources (the same copies, in this order); a new one
    /// shares `like`'s index by name if it has the same names.
    pub(crate) fn set(
        &self,
        items: Vec<Arc<Resource>>,
        like: Option<&ResourceSet>,
    ) -> Arc<ResourceSet> {
        let key = items_key(&items);
        let known = self
            .sets
            .lock()
            .expect("set interner lock")
            .find(key, |set| same_copies(set.as_slice(), &items));
        if let Some(existing) = known {
            return existing;
        }
        // Indexed outside the lock; two builders of one new set both index it, the first wins.
        let built = Arc::new(ResourceSet::with_names_like(items, like));
        self.sets
            .lock()
            .expect("set interner lock")
            .share(key, built, |a, b| same_copies(a.as_slice(), b.as_slice()))
    }
}

fn same_copies(a: &[Arc<Resource>], b: &[Arc<Resource>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// A set's key: its items' addresses. Equal only for the same copies, which interned
/// resources make of equal content; a live set's items cannot be freed and their addresses
/// reused while it is compared against.
fn items_key(items: &[Arc<Resource>]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for item in items {
        hasher.update(&(Arc::as_ptr(item) as usize).to_le_bytes());
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn assignment(name: &str, factor: u32) -> Arc<Resource> {
        let message = ClusterLoadAssignment {
            cluster_name: name.into(),
            policy: Some(Policy {
                overprovisioning_factor: Some(UInt32Value { value: factor }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Resource::encode(name, &message)
    }

    #[test]
    fn equal_resources_become_one_copy_and_different_ones_stay_apart() {
        let interner = ContentInterner::default();
        let first = interner.resource(assignment("a", 1));
        let again = interner.resource(assignment("a", 1));
        assert!(Arc::ptr_eq(&first, &again));
        let other_content = interner.resource(assignment("a", 2));
        assert!(!Arc::ptr_eq(&first, &other_content));
        let other_name = interner.resource(assignment("b", 1));
        assert!(!Arc::ptr_eq(&first, &other_name));
    }

    #[test]
    fn sets_of_the_same_copies_are_one_set_and_order_matters() {
        let interner = ContentInterner::default();
        let a = interner.resource(assignment("a", 1));
        let b = interner.resource(assignment("b", 1));
        let first = interner.set(vec![a.clone(), b.clone()], None);
        let again = interner.set(vec![a.clone(), b.clone()], None);
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(
            &first,
            &interner.set(vec![b.clone(), a.clone()], None)
        ));
        assert!(!Arc::ptr_eq(&first, &interner.set(vec![a.clone()], None)));
        // An equal resource that is another copy makes another set: sets compare copies.
        let b_copy = assignment("b", 1);
        assert!(!Arc::ptr_eq(&first, &interner.set(vec![a, b_copy], None)));
    }

    #[test]
    fn copies_nobody_holds_are_swept() {
        let mut table = WeakTable::<u32>::default();
        for i in 0..1000u32 {
            let value = Arc::new(i);
            table.share(u64::from(i), value, |a, b| a == b);
        }
        // Every value was dropped at once; sweeps keep the table near what is alive.
        assert!(table.len() <= 65, "{} entries kept", table.len());
        let held: Vec<Arc<u32>> = (0..200).map(Arc::new).collect();
        for (i, value) in held.iter().enumerate() {
            table.share(i as u64 + 5000, value.clone(), |a, b| a == b);
        }
        assert!(table.len() >= 200);
        let found = table
            .find(5007, |v| *v == 7)
            .expect("a held value stays findable");
        assert!(Arc::ptr_eq(&found, &held[7]));
    }
}
