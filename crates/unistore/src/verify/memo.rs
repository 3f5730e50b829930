//! Results per layer within one check. The images of a host share most of
//! their layers (an upgrade usually changes one), so each layer is checked
//! once per run and its result reused for every image that has it: the
//! repository's splitstream and objects, the store's layer files, and
//! whether they share their extents. A repair changes what was checked:
//! the memo is cleared after each.

use std::cell::RefCell;
use std::collections::HashMap;

use composefs::fsverity::FsVerityHashValue;

use crate::stores::composefs_repo::ObjectId;
use crate::util::short_digest;

/// What the repository check found for one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerFindings {
    pub problems: Vec<String>,
    pub bad: Vec<BadObject>,
}

/// The sharing check of one store layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerSharing {
    pub shared: u64,
    /// Files the filesystem keeps inline in their metadata (btrfs, under
    /// about 2 KiB): no extent to share, nothing to repair.
    pub inline: u64,
    pub unshared: u64,
    pub unshared_bytes: u64,
    pub unchecked: u64,
}

/// Per-run cache of layer results (see the module's doc).
#[derive(Debug, Default)]
pub struct LayerMemo {
    /// (diff-id, splitstream verity, verify contents) -> findings.
    composefs: RefCell<HashMap<(String, String, bool), LayerFindings>>,
    /// (store layer id, diff-id, verify contents) -> problem.
    store: RefCell<HashMap<(String, String, bool), Option<String>>>,
    /// Store layer id -> its sharing.
    sharing: RefCell<HashMap<String, LayerSharing>>,
}

impl LayerMemo {
    /// Forgets everything: after a repair.
    pub fn clear(&self) {
        self.composefs.borrow_mut().clear();
        self.store.borrow_mut().clear();
        self.sharing.borrow_mut().clear();
    }

    pub fn composefs_layer(
        &self,
        key: (String, String, bool),
        check: impl FnOnce() -> LayerFindings,
    ) -> LayerFindings {
        if let Some(f) = self.composefs.borrow().get(&key) {
            return f.clone();
        }
        let f = check();
        self.composefs.borrow_mut().insert(key, f.clone());
        f
    }

    pub fn store_layer(
        &self,
        key: (String, String, bool),
        check: impl FnOnce() -> Option<String>,
    ) -> Option<String> {
        if let Some(p) = self.store.borrow().get(&key) {
            return p.clone();
        }
        let p = check();
        self.store.borrow_mut().insert(key, p.clone());
        p
    }

    /// The sharing of layer `id`, or the error `check` gave (not kept).
    pub fn sharing_of<E>(
        &self,
        id: &str,
        check: impl FnOnce() -> Result<LayerSharing, E>,
    ) -> Result<LayerSharing, E> {
        if let Some(s) = self.sharing.borrow().get(id) {
            return Ok(*s);
        }
        let s = check()?;
        self.sharing.borrow_mut().insert(id.to_string(), s);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_checked_once_until_cleared() {
        let memo = LayerMemo::default();
        let calls = std::cell::Cell::new(0);
        let key = || ("sha256:a".to_string(), "v".to_string(), false);
        let check = || {
            calls.set(calls.get() + 1);
            LayerFindings {
                problems: vec!["p".into()],
                bad: vec![],
            }
        };
        assert_eq!(memo.composefs_layer(key(), check).problems, ["p"]);
        assert_eq!(memo.composefs_layer(key(), check).problems, ["p"]);
        assert_eq!(calls.get(), 1);
        // Another verify flag is another question.
        memo.composefs_layer(("sha256:a".into(), "v".into(), true), check);
        assert_eq!(calls.get(), 2);
        memo.clear();
        memo.composefs_layer(key(), check);
        assert_eq!(calls.get(), 3);
        // Errors are not kept.
        let e: Result<LayerSharing, &str> = memo.sharing_of("l", || Err("no"));
        assert!(e.is_err());
        let s = memo.sharing_of::<&str>("l", || {
            Ok(LayerSharing {
                shared: 2,
                ..Default::default()
            })
        });
        assert_eq!(s.unwrap().shared, 2);
        let s = memo.sharing_of::<&str>("l", || panic!("checked twice"));
        assert_eq!(s.unwrap().shared, 2);
    }
}

/// A referenced object that is missing or whose content is wrong.
#[derive(Debug, Clone)]
pub struct BadObject {
    pub id: ObjectId,
    /// Where the layer puts it (relative path).
    pub path: Vec<u8>,
    pub diff_id: String,
    pub size: u64,
    pub missing: bool,
}

impl BadObject {
    pub fn describe(&self) -> String {
        format!(
            "object objects/{} (/{} in layer {}) is {}",
            self.id.to_object_pathname(),
            String::from_utf8_lossy(&self.path),
            short_digest(&self.diff_id),
            if self.missing {
                "missing"
            } else {
                "damaged (its content does not match its digest)"
            }
        )
    }
}
