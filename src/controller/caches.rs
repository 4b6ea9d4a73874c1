//! The controller's watch caches of Nodes (metadata only) and of its own ResourceSlices, read by
//! the reconcile instead of a `GET` of the Node and a `LIST` of the node's slices, so that a
//! reconcile that changes nothing sends no request at all.
//!
//! A cache lags the API server by the watch's delay. For Nodes that is harmless: the Node's
//! event that changes what the reconcile reads also triggers the reconcile, after the store has
//! it. For the slices the reconcile itself writes it is not: the next reconcile of the node may
//! run before the watch delivered those writes, and would then write them again, or compute a
//! pool generation from slices that are gone. So each node's writes are remembered
//! ([`Written`]) until the cache shows them ([`cache_shows`]); until then that node's slices are
//! listed from the API server, as before. At steady state nothing is written, and nothing read.
//!
//! The slices are held by node ([`super::node_index`]), so that a reconcile reads its own
//! node's slices without looking at the others (a filter over all of them made a full publish
//! O(nodes²)). Nodes and MockAccelNodes are found by name, which is the node's name.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::{core::v1::Node, resource::v1::ResourceSlice};
use kube::{
    ResourceExt,
    api::{ObjectMeta, PartialObjectMeta},
    runtime::reflector::{ObjectRef, Store},
};

use super::node_index::{self, IndexReader, IndexWriter};

/// What the controller wrote for a node: the slices it applied, with the resourceVersion the
/// API server answered, and the slices it deleted (name, UID). Also used for what a `LIST`
/// returned (all of it "applied"), so that a cache lagging behind that read is not trusted
/// either.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub applied: Vec<(String, String)>,
    pub deleted: Vec<(String, String)>,
}

impl Written {
    /// The slices of one node as the API server listed them.
    pub fn listed(slices: &[ResourceSlice]) -> Self {
        Written {
            applied: slices
                .iter()
                .filter_map(|s| Some((s.name_any(), s.resource_version()?)))
                .collect(),
            deleted: Vec::new(),
        }
    }

    /// Adds later writes: a slice applied again expects its new resourceVersion, a deleted one
    /// is no longer expected at all.
    pub fn merge(&mut self, later: Written) {
        let replaced = |name: &String| {
            later.applied.iter().any(|(n, _)| n == name)
                || later.deleted.iter().any(|(n, _)| n == name)
        };
        self.applied.retain(|(name, _)| !replaced(name));
        self.applied.extend(later.applied);
        self.deleted.extend(later.deleted);
    }

    /// A slice deleted: remembered by name and UID.
    pub fn delete(&mut self, slice: &ResourceSlice) {
        if let Some(uid) = &slice.metadata.uid {
            self.deleted.push((slice.name_any(), uid.clone()));
        }
    }
}

/// True when `cached` (one node's slices in the cache) shows `written`: every applied slice at
/// the resourceVersion written (or listed), none of the deleted ones. A slice changed again by
/// someone else has another resourceVersion, so the cache is not trusted, the node's slices are
/// listed, and what that list returned becomes the new expectation.
pub fn cache_shows(written: &Written, cached: &[Arc<ResourceSlice>]) -> bool {
    let applied = written.applied.iter().all(|(name, rv)| {
        cached.iter().any(|s| {
            s.metadata.name.as_ref() == Some(name)
                && s.metadata.resource_version.as_ref() == Some(rv)
        })
    });
    let deleted = written
        .deleted
        .iter()
        .all(|(_, uid)| !cached.iter().any(|s| s.metadata.uid.as_ref() == Some(uid)));
    applied && deleted
}

/// The node a slice belongs to (`spec.nodeName`), its key in the slice index.
fn slice_node(slice: &ResourceSlice) -> Option<&str> {
    slice.spec.node_name.as_deref()
}

/// A slice index by node, fed by the watch of the controller's slices ([`IndexWriter`]).
pub fn slice_index() -> (IndexReader<ResourceSlice>, IndexWriter<ResourceSlice>) {
    node_index::shared(slice_node)
}

/// The stores of one leadership term, and the writes each node still waits to see in them.
pub struct Caches {
    nodes: Store<PartialObjectMeta<Node>>,
    slices: IndexReader<ResourceSlice>,
    driver: String,
    pending: Mutex<HashMap<String, Written>>,
}

impl Caches {
    /// Caches over two synced stores: the Node metadata and the slices this controller manages
    /// (by node, see [`slice_index`]).
    pub fn new(
        nodes: Store<PartialObjectMeta<Node>>,
        slices: IndexReader<ResourceSlice>,
        driver: String,
    ) -> Self {
        Caches {
            nodes,
            slices,
            driver,
            pending: Mutex::default(),
        }
    }

    /// The Node's metadata, `None` when the cache holds no Node of that name.
    pub fn node(&self, name: &str) -> Option<ObjectMeta> {
        self.nodes
            .get(&ObjectRef::new(name))
            .map(|n| n.metadata.clone())
    }

    /// This driver's slices of `node` from the cache, or `None` when the cache has not yet shown
    /// the node's last writes (the caller lists them instead, see [`Caches::wrote`]).
    pub fn node_slices(&self, node: &str) -> Option<Vec<ResourceSlice>> {
        let mut cached = self.slices.on_node(node);
        cached.retain(|s| s.spec.driver == self.driver);
        let mut pending = self.pending.lock().ok()?;
        if let Some(written) = pending.get(node) {
            if !cache_shows(written, &cached) {
                return None;
            }
            pending.remove(node);
        }
        Some(cached.iter().map(|s| (**s).clone()).collect())
    }

    /// Remembers what the API server listed for `node`: the cache is trusted again for it once
    /// it shows that much.
    pub fn listed(&self, node: &str, slices: &[ResourceSlice]) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(node.to_string(), Written::listed(slices));
        }
    }

    /// Remembers what was written for `node`, on top of what it still waits for.
    pub fn wrote(&self, node: &str, written: Written) {
        if written == Written::default() {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.entry(node.to_string()).or_default().merge(written);
        }
    }

    /// Slices handed to reconciles so far (each node's own; see [`IndexReader::visited`]).
    pub fn slices_visited(&self) -> u64 {
        self.slices.visited()
    }

    /// Forgets a node that is gone.
    pub fn forget(&self, node: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};

    fn slice(name: &str, node: &str, rv: &str) -> ResourceSlice {
        let mut s = ResourceSlice::default();
        s.metadata.name = Some(name.into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.resource_version = Some(rv.into());
        s.spec.driver = "mock-accel.example.com".into();
        s.spec.node_name = Some(node.into());
        s
    }

    fn arcs(slices: &[ResourceSlice]) -> Vec<Arc<ResourceSlice>> {
        slices.iter().cloned().map(Arc::new).collect()
    }

    #[test]
    fn the_cache_shows_a_write_once_it_has_its_resource_version_and_not_the_deleted() {
        let written = Written {
            applied: vec![("a".into(), "5".into())],
            deleted: vec![("b".into(), "uid-b".into())],
        };
        let lagging = [slice("a", "n", "4"), slice("b", "n", "3")];
        assert!(!cache_shows(&written, &arcs(&lagging)));
        let half = [slice("a", "n", "5"), slice("b", "n", "3")];
        assert!(!cache_shows(&written, &arcs(&half)));
        assert!(cache_shows(&written, &arcs(&[slice("a", "n", "5")])));
        assert!(cache_shows(&Written::default(), &[]));
    }

    #[test]
    fn a_node_with_unseen_writes_is_listed_until_the_cache_catches_up() {
        let (store, writer) = slice_index();
        let (nodes, _w) = reflector::store::<PartialObjectMeta<Node>>();
        writer.apply(&watcher::Event::Apply(slice("a", "n", "4")));
        writer.apply(&watcher::Event::Apply(slice("x", "other", "1")));
        let caches = Caches::new(nodes, store, "mock-accel.example.com".into());

        let names = |v: Option<Vec<ResourceSlice>>| {
            v.map(|v| v.iter().map(|s| s.name_any()).collect::<Vec<_>>())
        };
        assert_eq!(names(caches.node_slices("n")), Some(vec!["a".to_string()]));

        caches.wrote(
            "n",
            Written {
                applied: vec![("a".into(), "5".into())],
                deleted: vec![],
            },
        );
        assert_eq!(
            names(caches.node_slices("n")),
            None,
            "the write is not in the cache yet"
        );
        assert_eq!(
            names(caches.node_slices("other")),
            Some(vec!["x".to_string()])
        );
        writer.apply(&watcher::Event::Apply(slice("a", "n", "5")));
        assert_eq!(names(caches.node_slices("n")), Some(vec!["a".to_string()]));
        // Seen once, the expectation is gone: a later change by someone else is read as it is.
        writer.apply(&watcher::Event::Apply(slice("a", "n", "9")));
        assert!(caches.node_slices("n").is_some());
    }

    #[test]
    fn a_node_gets_its_own_slices_of_this_driver_only() {
        let (store, writer) = slice_index();
        let (nodes, _w) = reflector::store::<PartialObjectMeta<Node>>();
        let mut foreign = slice("foreign", "n", "1");
        foreign.spec.driver = "other.example.com".into();
        for s in [slice("a", "n", "1"), foreign, slice("x", "other", "1")] {
            writer.apply(&watcher::Event::Apply(s));
        }
        let caches = Caches::new(nodes, store, "mock-accel.example.com".into());
        let slices = caches.node_slices("n").expect("nothing pending");
        assert_eq!(
            slices.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn writes_after_a_list_replace_what_they_rewrote_and_drop_what_they_deleted() {
        let mut expected = Written::listed(&[
            slice("a", "n", "4"),
            slice("b", "n", "3"),
            slice("c", "n", "2"),
        ]);
        let mut later = Written {
            applied: vec![("a".into(), "6".into())],
            deleted: vec![],
        };
        later.delete(&slice("b", "n", "3"));
        expected.merge(later);
        assert_eq!(
            expected.applied,
            [("c".to_string(), "2".to_string()), ("a".into(), "6".into())]
        );
        assert!(cache_shows(
            &expected,
            &arcs(&[slice("a", "n", "6"), slice("c", "n", "2")])
        ));
        assert!(!cache_shows(
            &expected,
            &arcs(&[
                slice("a", "n", "6"),
                slice("b", "n", "3"),
                slice("c", "n", "2")
            ])
        ));
    }
}
