//! JSON text to a [`Value`], refusing an object that names a key twice, at any depth.
//!
//! `serde_json::Value` keeps the last of duplicate keys, so `{"id": 16, "id": 17}` would be
//! read as id 17 while the HTTP bodies, deserialized into structs, refuse a duplicate field.
//! Frames are read through this instead, so both transports refuse the same input; HTTP
//! bodies, which deserialize straight into structs, run [`check_unique_keys`] for the
//! free-form values inside them (`attributes`, `instructions`, `extra`, `payload`).

use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `text`, failing on a duplicate key anywhere in it.
pub(crate) fn from_str(text: &str) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Fails on a duplicate key anywhere in `bytes` (JSON), building nothing but each object's
/// key list.
pub(crate) fn check_unique_keys(bytes: &[u8]) -> serde_json::Result<()> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_any(Unique)?;
    de.end()
}

struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            map.next_value_seed(Unique)?;
            keys.push(key);
        }
        Ok(())
    }
}

/// A [`Value`] refusing a repeated key at any depth, for a field read on its own.
pub(crate) struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let value = map.next_value_seed(Strict)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_duplicates_at_any_depth() {
        assert!(from_str(r#"{"id":16,"id":17}"#).unwrap_err().to_string().contains("`id`"));
        assert!(from_str(r#"{"s":{"name":"a","name":"b"}}"#).is_err());
        assert!(from_str(r#"[{"a":1,"a":2}]"#).is_err());
        let v = from_str(r#"{"a":[1,-2,1.5,"x",null,true,{"b":{}}]}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,-2,1.5,"x",null,true,{"b":{}}]}));
        assert!(from_str(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn the_key_check_agrees() {
        let check = |t: &str| check_unique_keys(t.as_bytes());
        assert!(check(r#"{"attributes":{"a":1,"a":2}}"#).unwrap_err().to_string().contains("`a`"));
        assert!(check(r#"[{"a":1,"a":2}]"#).is_err());
        assert!(check(r#"{"a":[1,-2,1.5,"x\"y",null,true,{"b":{},"c":{"b":1}}]}"#).is_ok());
    }
}
