//! A watch cache indexed by node: the objects of one watch (the controller's ResourceSlices),
//! grouped by the node they belong to, so that a reconcile reads its own node's objects
//! without looking at anyone else's.
//!
//! kube-runtime's `Store` is keyed by object name only; finding a node's slices in it means a
//! filter over every slice of the cluster, which made each reconcile O(slices) and a full
//! publish of N nodes O(N²) (BENCHMARKS.md, "The controller at scale"). [`NodeIndex`] takes
//! the place of that store for the slices: it is fed the same watch events and holds each
//! object once (an `Arc`, as the store did), under its node and under its name.
//!
//! [`NodeIndex`] is the pure structure (events in, a node's objects out), following the
//! reflector's rules: `Apply` and `Delete` change it at once; a re-list (`Init`, `InitApply`…,
//! `InitDone`) is collected aside and replaces everything at `InitDone`, which drops what
//! vanished while the watch was down, and until then reads see the old state. [`shared`] wraps
//! it for a watch task that writes and reconciles that read.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use kube::{Resource, ResourceExt, runtime::watcher};
use tokio::sync::watch;

/// The node an object belongs to; objects without one are not indexed.
pub type NodeOf<K> = fn(&K) -> Option<&str>;

/// One complete state: objects by node and name, and each name's node (to find an object's
/// entry again when it is deleted or moves to another node).
struct Entries<K> {
    by_node: HashMap<String, HashMap<String, Arc<K>>>,
    node_of_name: HashMap<String, String>,
}

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Entries {
            by_node: HashMap::new(),
            node_of_name: HashMap::new(),
        }
    }
}

impl<K> Entries<K> {
    fn insert(&mut self, name: String, node: Option<&str>, obj: Arc<K>) {
        // An update may have moved the object to another node (or taken its node away).
        self.remove(&name);
        let Some(node) = node else { return };
        self.node_of_name.insert(name.clone(), node.to_string());
        self.by_node
            .entry(node.to_string())
            .or_default()
            .insert(name, obj);
    }

    fn remove(&mut self, name: &str) {
        let Some(node) = self.node_of_name.remove(name) else {
            return;
        };
        if let Some(objects) = self.by_node.get_mut(&node) {
            objects.remove(name);
            // A node without objects leaves no entry behind (nodes come and go).
            if objects.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }
}

/// The objects of one watch by node. See the module documentation.
pub struct NodeIndex<K> {
    node_of: NodeOf<K>,
    live: Entries<K>,
    /// A re-list in progress: what it has delivered so far.
    relist: Option<Entries<K>>,
    /// A first list completed.
    synced: bool,
}

impl<K: Resource + Clone> NodeIndex<K> {
    pub fn new(node_of: NodeOf<K>) -> Self {
        NodeIndex {
            node_of,
            live: Entries::default(),
            relist: None,
            synced: false,
        }
    }

    /// Applies one watch event, as the reflector's store does.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(obj) => {
                self.live
                    .insert(obj.name_any(), (self.node_of)(obj), Arc::new(obj.clone()));
            }
            watcher::Event::Delete(obj) => self.live.remove(&obj.name_any()),
            watcher::Event::Init => self.relist = Some(Entries::default()),
            watcher::Event::InitApply(obj) => {
                let relist = self.relist.get_or_insert_with(Entries::default);
                relist.insert(obj.name_any(), (self.node_of)(obj), Arc::new(obj.clone()));
            }
            watcher::Event::InitDone => {
                self.live = self.relist.take().unwrap_or_default();
                self.synced = true;
            }
        }
    }

    /// The objects of `node` (in no particular order).
    pub fn on_node(&self, node: &str) -> Vec<Arc<K>> {
        self.live
            .by_node
            .get(node)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Objects indexed (under some node).
    pub fn len(&self) -> usize {
        self.live.node_of_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nodes with at least one object.
    pub fn nodes(&self) -> usize {
        self.live.by_node.len()
    }

    /// Whether a first list has completed (before that the index may miss objects).
    pub fn is_synced(&self) -> bool {
        self.synced
    }
}

/// Creates a shared index: the writer for the watch task, the reader for the reconciles.
pub fn shared<K: Resource + Clone>(node_of: NodeOf<K>) -> (IndexReader<K>, IndexWriter<K>) {
    let index = Arc::new(RwLock::new(NodeIndex::new(node_of)));
    let (synced, synced_rx) = watch::channel(false);
    (
        IndexReader {
            index: index.clone(),
            synced: synced_rx,
            visited: Arc::default(),
        },
        IndexWriter { index, synced },
    )
}

/// The watch task's side of a [`shared`] index.
pub struct IndexWriter<K> {
    index: Arc<RwLock<NodeIndex<K>>>,
    synced: watch::Sender<bool>,
}

impl<K: Resource + Clone> IndexWriter<K> {
    /// Applies one watch event (see [`NodeIndex::apply`]).
    pub fn apply(&self, event: &watcher::Event<K>) {
        let synced = match self.index.write() {
            Ok(mut index) => {
                index.apply(event);
                index.is_synced()
            }
            // Poisoned: a panic while applying; the reconciles then read the API server
            // (no synced index), which is slower but right.
            Err(_) => return,
        };
        if synced && !*self.synced.borrow() {
            self.synced.send_replace(true);
        }
    }
}

/// The reconciles' side of a [`shared`] index; clones read the same index.
#[derive(Clone)]
pub struct IndexReader<K> {
    index: Arc<RwLock<NodeIndex<K>>>,
    synced: watch::Receiver<bool>,
    /// Objects handed out by [`IndexReader::on_node`] so far: what reads of the index cost.
    visited: Arc<AtomicU64>,
}

impl<K: Resource + Clone> IndexReader<K> {
    /// The objects of `node`; empty while the index is poisoned.
    pub fn on_node(&self, node: &str) -> Vec<Arc<K>> {
        let objects = self
            .index
            .read()
            .map(|index| index.on_node(node))
            .unwrap_or_default();
        self.visited
            .fetch_add(objects.len() as u64, Ordering::Relaxed);
        objects
    }

    /// Objects looked at by reads so far.
    pub fn visited(&self) -> u64 {
        self.visited.load(Ordering::Relaxed)
    }

    /// Waits until a first list has completed; `Err` when the writer is gone before that.
    pub async fn wait_synced(&self) -> Result<(), watch::error::RecvError> {
        let mut synced = self.synced.clone();
        synced.wait_for(|s| *s).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::ResourceSlice;

    fn slice(name: &str, node: Option<&str>) -> ResourceSlice {
        let mut s = ResourceSlice::default();
        s.metadata.name = Some(name.into());
        s.spec.node_name = node.map(Into::into);
        s
    }

    fn node_of(s: &ResourceSlice) -> Option<&str> {
        s.spec.node_name.as_deref()
    }

    fn names(index: &NodeIndex<ResourceSlice>, node: &str) -> Vec<String> {
        let mut names: Vec<String> = index.on_node(node).iter().map(|s| s.name_any()).collect();
        names.sort();
        names
    }

    fn apply(index: &mut NodeIndex<ResourceSlice>, name: &str, node: Option<&str>) {
        index.apply(&watcher::Event::Apply(slice(name, node)));
    }

    #[test]
    fn objects_are_found_under_their_node_only() {
        let mut index = NodeIndex::new(node_of);
        apply(&mut index, "a-0", Some("a"));
        apply(&mut index, "a-1", Some("a"));
        apply(&mut index, "b-0", Some("b"));
        apply(&mut index, "pool", None);
        assert_eq!(names(&index, "a"), ["a-0", "a-1"]);
        assert_eq!(names(&index, "b"), ["b-0"]);
        assert!(names(&index, "c").is_empty());
        assert_eq!((index.len(), index.nodes()), (3, 2));
    }

    #[test]
    fn an_update_replaces_the_object_and_can_move_it_to_another_node() {
        let mut index = NodeIndex::new(node_of);
        apply(&mut index, "s", Some("a"));
        let mut changed = slice("s", Some("a"));
        changed.metadata.resource_version = Some("2".into());
        index.apply(&watcher::Event::Apply(changed));
        let on_a = index.on_node("a");
        assert_eq!(on_a.len(), 1);
        assert_eq!(on_a[0].metadata.resource_version.as_deref(), Some("2"));

        apply(&mut index, "s", Some("b"));
        assert!(names(&index, "a").is_empty());
        assert_eq!(names(&index, "b"), ["s"]);
        // Its node taken away: not indexed any more.
        apply(&mut index, "s", None);
        assert!(index.is_empty());
        assert_eq!(index.nodes(), 0, "an empty node leaves no entry");
    }

    #[test]
    fn a_delete_removes_the_object_and_an_unknown_delete_changes_nothing() {
        let mut index = NodeIndex::new(node_of);
        apply(&mut index, "a-0", Some("a"));
        apply(&mut index, "a-1", Some("a"));
        index.apply(&watcher::Event::Delete(slice("a-0", Some("a"))));
        index.apply(&watcher::Event::Delete(slice("never-seen", Some("a"))));
        assert_eq!(names(&index, "a"), ["a-1"]);
        // The delete event's copy may say another node (it is the last state the server had):
        // the object is found by name.
        index.apply(&watcher::Event::Delete(slice("a-1", Some("elsewhere"))));
        assert!(index.is_empty());
    }

    #[test]
    fn a_relist_replaces_everything_at_its_end_and_drops_what_vanished() {
        let mut index = NodeIndex::new(node_of);
        assert!(!index.is_synced());
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(slice("a-0", Some("a"))));
        index.apply(&watcher::Event::InitApply(slice("gone", Some("b"))));
        assert!(index.is_empty(), "nothing is read before the list ends");
        index.apply(&watcher::Event::InitDone);
        assert!(index.is_synced());
        assert_eq!(names(&index, "b"), ["gone"]);

        // The watch restarts: deleted meanwhile ("gone"), moved ("a-0"), new ("c-0").
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(slice("a-0", Some("c"))));
        index.apply(&watcher::Event::InitApply(slice("c-0", Some("c"))));
        assert_eq!(names(&index, "b"), ["gone"], "the old state until InitDone");
        index.apply(&watcher::Event::InitDone);
        assert!(names(&index, "a").is_empty());
        assert!(names(&index, "b").is_empty());
        assert_eq!(names(&index, "c"), ["a-0", "c-0"]);
        assert_eq!((index.len(), index.nodes()), (2, 1));
    }

    #[tokio::test]
    async fn the_reader_sees_the_writers_events_counts_what_it_read_and_waits_for_the_list() {
        let (reader, writer) = shared(node_of);
        let waiting = {
            let reader = reader.clone();
            tokio::spawn(async move { reader.wait_synced().await })
        };
        writer.apply(&watcher::Event::Init);
        for (name, node) in [("a-0", "a"), ("a-1", "a"), ("b-0", "b")] {
            writer.apply(&watcher::Event::InitApply(slice(name, Some(node))));
        }
        assert!(!waiting.is_finished());
        writer.apply(&watcher::Event::InitDone);
        waiting.await.expect("task").expect("synced");
        assert_eq!(reader.on_node("a").len(), 2);
        assert_eq!(reader.on_node("b").len(), 1);
        assert_eq!(reader.visited(), 3);

        let (never, writer) = shared::<ResourceSlice>(node_of);
        drop(writer);
        assert!(never.wait_synced().await.is_err());
    }
}
