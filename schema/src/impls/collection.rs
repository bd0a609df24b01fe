//! Maps and sets. A hasher type parameter is not part of the name or the
//! fingerprint: rkyv archives a map with its own hasher, whatever the
//! original one was.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::generic_name;
use crate::{Fingerprint, Schema};

impl<K: Schema, V: Schema, S> Schema for HashMap<K, V, S> {
    const NAME: &'static str = generic_name!("HashMap", K, V);
    const FINGERPRINT: u64 = Fingerprint::new("HashMap")
        .u64(K::FINGERPRINT)
        .u64(V::FINGERPRINT)
        .finish();
}

impl<K: Schema, V: Schema> Schema for BTreeMap<K, V> {
    const NAME: &'static str = generic_name!("BTreeMap", K, V);
    const FINGERPRINT: u64 = Fingerprint::new("BTreeMap")
        .u64(K::FINGERPRINT)
        .u64(V::FINGERPRINT)
        .finish();
}

impl<T: Schema, S> Schema for HashSet<T, S> {
    const NAME: &'static str = generic_name!("HashSet", T);
    const FINGERPRINT: u64 = Fingerprint::new("HashSet").u64(T::FINGERPRINT).finish();
}

impl<T: Schema> Schema for BTreeSet<T> {
    const NAME: &'static str = generic_name!("BTreeSet", T);
    const FINGERPRINT: u64 = Fingerprint::new("BTreeSet").u64(T::FINGERPRINT).finish();
}
