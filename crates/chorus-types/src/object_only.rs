//! Reading a struct from a JSON object only.
//!
//! serde's derived `Deserialize` also reads a struct from an array, field by field in
//! declaration order, so `["bob", null, 10, 20, 0]` would be an access row. That second,
//! positional form is nowhere in the contract, and a client that came to rely on it would
//! break on any field reordering; nested request objects are read through this instead.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Deserializes `T` from a map (a JSON object); anything else is a type error.
pub fn object_only<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(ObjectVisitor(PhantomData))
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// `T` read by [`object_only`], for use in collections (`Vec<ObjectOnly<StreamKey>>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object_only(d).map(ObjectOnly)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{AccessRow, StreamKey};

    #[test]
    fn structs_are_read_from_objects_only() {
        let key: ObjectOnly<StreamKey> =
            serde_json::from_str(r#"{"publisherId": "alice", "name": "Chat/a"}"#).unwrap();
        assert_eq!(key.0.name.as_str(), "Chat/a");
        assert!(serde_json::from_str::<ObjectOnly<StreamKey>>(r#"["alice", "Chat/a"]"#).is_err());
        let row: AccessRow =
            serde_json::from_str(r#"{"ofUserId": "bob", "readLevel": 10}"#).unwrap();
        assert_eq!((row.read_level, row.write_level), (10, -1));
        assert!(serde_json::from_str::<AccessRow>(r#"["bob", null, 10, 20, 0]"#).is_err());
        assert!(serde_json::from_str::<AccessRow>(r#"["bob"]"#).is_err());
    }
}
