//! Splitting a history into independently checkable parts (P-compositionality).
//!
//! Linearizability is local: a history is linearizable iff its restriction to each
//! object is. Checking each key on its own turns one exponential search into many
//! small ones, which is what makes large histories (e.g. Porcupine's 50-client kv
//! file) tractable. An operation touching several keys (a `Batch`) makes those keys
//! one object, so a union-find over keys merges them into one partition and the
//! batch is still checked atomically.

use crate::fxhash::FxMap;

use crate::error::CheckError;
use crate::model::{compile, Ctx, Interner, Model, Step};
use crate::record::{validate_record, Record};

/// One compiled operation of a partition.
#[derive(Debug)]
pub(crate) struct PartOp {
    /// Invocation time.
    pub call: u64,
    /// Return time; `None` = +infinity (unknown outcome).
    pub ret: Option<u64>,
    pub step: Step,
}

/// A set of keys closed under "touched by the same operation", with its operations.
#[derive(Debug)]
pub(crate) struct Partition {
    /// The keys, in order of first appearance in the history.
    pub keys: Vec<String>,
    pub ops: Vec<PartOp>,
    pub ctx: Ctx,
}

impl Partition {
    /// Frees what only the search needs (the values it interned) once the
    /// partition is decided or given up; the partition cannot be searched again.
    pub fn release_search_memory(&mut self) {
        self.ctx.interner = Interner::new();
        self.ops = Vec::new();
    }

    /// Human-readable name: the keys joined by ", " (`<no key>` for keyless ops).
    pub fn name(&self) -> String {
        if self.keys.is_empty() {
            "<no key>".to_string()
        } else {
            self.keys.join(", ")
        }
    }
}

struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new() -> Self {
        UnionFind { parent: Vec::new() }
    }

    fn add(&mut self) -> usize {
        self.parent.push(self.parent.len());
        self.parent.len() - 1
    }

    fn find(&mut self, mut x: usize) -> usize {
        let mut root = x;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        while self.parent[x] != root {
            let next = self.parent[x];
            self.parent[x] = root;
            x = next;
        }
        root
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // Keep the smaller id as root so the result does not depend on order.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi] = lo;
        }
    }
}

fn validate_all(records: &[Record]) -> Result<(), CheckError> {
    for (index, record) in records.iter().enumerate() {
        validate_record(record).map_err(|message| CheckError::InvalidRecord { index, message })?;
    }
    Ok(())
}

/// Splits `records` into partitions, in order of first appearance.
pub(crate) fn split(records: &[Record], model: Model) -> Result<Vec<Partition>, CheckError> {
    validate_all(records)?;
    // Nodes of the union-find: one per distinct key, plus one per keyless op.
    let mut uf = UnionFind::new();
    let mut key_node: FxMap<&str, usize> = FxMap::default();
    let mut node_key: Vec<Option<&str>> = Vec::new();
    let mut record_node: Vec<usize> = Vec::with_capacity(records.len());
    for record in records {
        let mut first: Option<usize> = None;
        let mut links: Vec<usize> = Vec::new();
        record.op.for_each_key(&mut |key| {
            let node = *key_node.entry(key).or_insert_with(|| {
                node_key.push(Some(key));
                uf.add()
            });
            match first {
                None => first = Some(node),
                Some(_) => links.push(node),
            }
        });
        let node = match first {
            Some(node) => node,
            None => {
                node_key.push(None);
                uf.add()
            }
        };
        for other in links {
            uf.union(node, other);
        }
        record_node.push(node);
    }
    // Partition index per union-find root, in order of first appearance.
    let mut part_of_root: FxMap<usize, usize> = FxMap::default();
    let mut groups: Vec<Vec<usize>> = Vec::new(); // record indices
    for (index, &node) in record_node.iter().enumerate() {
        let root = uf.find(node);
        let part = *part_of_root.entry(root).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[part].push(index);
    }
    let mut part_keys: Vec<Vec<&str>> = vec![Vec::new(); groups.len()];
    for (node, key) in node_key.iter().enumerate() {
        if let Some(key) = key {
            let root = uf.find(node);
            if let Some(&part) = part_of_root.get(&root) {
                part_keys[part].push(key);
            }
        }
    }
    let mut partitions = Vec::with_capacity(groups.len());
    for (members, keys) in groups.into_iter().zip(part_keys) {
        partitions.push(build(records, model, &members, keys)?);
    }
    Ok(partitions)
}

/// The whole history as one partition (no splitting); used by the brute-force checker.
pub(crate) fn whole(records: &[Record], model: Model) -> Result<Partition, CheckError> {
    validate_all(records)?;
    let mut keys: Vec<&str> = Vec::new();
    let mut seen: FxMap<&str, ()> = FxMap::default();
    for record in records {
        record.op.for_each_key(&mut |key| {
            if seen.insert(key, ()).is_none() {
                keys.push(key);
            }
        });
    }
    let members: Vec<usize> = (0..records.len()).collect();
    build(records, model, &members, keys)
}

fn build(
    records: &[Record],
    model: Model,
    members: &[usize],
    keys: Vec<&str>,
) -> Result<Partition, CheckError> {
    let local: FxMap<&str, u32> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, i as u32))
        .collect();
    let key_of = |key: &str| local.get(key).copied();
    let mut interner = Interner::new();
    let mut ops = Vec::with_capacity(members.len());
    for &index in members {
        let Some(record) = records.get(index) else {
            continue;
        };
        let step = compile(record, &key_of, &mut interner)
            .map_err(|message| CheckError::InvalidRecord { index, message })?;
        if let Some(step) = step {
            let ret = match record.result {
                Some(_) => record.return_ns,
                None => None,
            };
            ops.push(PartOp {
                call: record.call_ns,
                ret,
                step,
            });
        }
    }
    Ok(Partition {
        keys: keys.into_iter().map(str::to_string).collect(),
        ops,
        ctx: Ctx {
            revisions: model.checks_revisions(),
            interner,
        },
    })
}
