//! Taking a few fields out of a list item without building its whole JSON tree: a serde
//! `Serializer` that walks the item's maps and structs, serialises only the values at the
//! wanted dotted paths (`messages`, `message_stats.publish_details.rate`) into `Value`s, and
//! skips every other value unserialised.
//!
//! What `sort=<field>` needs (one key per item) and what `columns=` keeps: building the tree
//! of a queue with statistics for that costs about ten times as much as picking two fields.

use serde::ser::{self, Serialize};
use serde_json::Value;

type Error = serde_json::Error;

/// The values at `paths` (dotted) in `item`, in the order of `paths`; `None` where there is
/// no such field.
pub(crate) fn pick<T: Serialize + ?Sized>(item: &T, paths: &[&str]) -> Vec<Option<Value>> {
    let split: Vec<Vec<&str>> = paths.iter().map(|p| p.split('.').collect()).collect();
    let mut out = vec![None; paths.len()];
    let wanted: Vec<(usize, &[&str])> = split
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.as_slice()))
        .collect();
    // An item that fails to serialise has nothing to pick.
    let _ = item.serialize(Picker {
        wanted: &wanted,
        out: &mut out,
    });
    out
}

/// Serialises one value, filling `out[i]` for each wanted `(i, rest-of-path)`.
struct Picker<'p, 'a> {
    wanted: &'p [(usize, &'a [&'a str])],
    out: &'p mut [Option<Value>],
}

/// A map or struct being walked.
struct Fields<'p, 'a> {
    wanted: &'p [(usize, &'a [&'a str])],
    out: &'p mut [Option<Value>],
    key: Option<String>,
}

impl Fields<'_, '_> {
    fn field<V: Serialize + ?Sized>(&mut self, key: &str, value: &V) -> Result<(), Error> {
        let here: Vec<(usize, &[&str])> = self
            .wanted
            .iter()
            .filter(|(_, p)| p.first() == Some(&key))
            .map(|(i, p)| (*i, &p[1..]))
            .collect();
        if here.is_empty() {
            return Ok(());
        }
        if here.iter().any(|(_, rest)| rest.is_empty()) {
            // The whole value is wanted (and perhaps parts of it too): build it once.
            let v = serde_json::to_value(value)?;
            for (i, rest) in here {
                self.out[i] = rest.iter().try_fold(&v, |v, k| v.get(k)).cloned();
            }
            return Ok(());
        }
        value.serialize(Picker {
            wanted: &here,
            out: self.out,
        })
    }
}

impl ser::SerializeMap for Fields<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<(), Error> {
        self.key = match serde_json::to_value(key)? {
            Value::String(s) => Some(s),
            _ => None,
        };
        Ok(())
    }
    fn serialize_value<V: Serialize + ?Sized>(&mut self, value: &V) -> Result<(), Error> {
        match self.key.take() {
            Some(k) => self.field(&k, value),
            None => Ok(()),
        }
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

impl ser::SerializeStruct for Fields<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<V: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &V,
    ) -> Result<(), Error> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

/// Anything that is not a map or struct: nothing in it can be picked.
struct Skip;

macro_rules! skip_compound {
    ($($tr:ident :: $m:ident),*) => {$(
        impl ser::$tr for Skip {
            type Ok = ();
            type Error = Error;
            fn $m<V: Serialize + ?Sized>(&mut self, _: &V) -> Result<(), Error> {
                Ok(())
            }
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )*};
}
skip_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeStructVariant for Skip {
    type Ok = ();
    type Error = Error;
    fn serialize_field<V: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        _: &V,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

macro_rules! skip_scalar {
    ($($m:ident($t:ty)),*) => {$(
        fn $m(self, _: $t) -> Result<(), Error> {
            Ok(())
        }
    )*};
}

impl<'p, 'a> ser::Serializer for Picker<'p, 'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Skip;
    type SerializeTuple = Skip;
    type SerializeTupleStruct = Skip;
    type SerializeTupleVariant = Skip;
    type SerializeMap = Fields<'p, 'a>;
    type SerializeStruct = Fields<'p, 'a>;
    type SerializeStructVariant = Skip;

    skip_scalar!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8])
    );
    fn serialize_none(self) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Error> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Skip, Error> {
        Ok(Skip)
    }
    fn serialize_tuple(self, _: usize) -> Result<Skip, Error> {
        Ok(Skip)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Skip, Error> {
        Ok(Skip)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Skip, Error> {
        Ok(Skip)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Fields<'p, 'a>, Error> {
        Ok(Fields {
            wanted: self.wanted,
            out: self.out,
            key: None,
        })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields<'p, 'a>, Error> {
        Ok(Fields {
            wanted: self.wanted,
            out: self.out,
            key: None,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Skip, Error> {
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::pick;
    use serde_json::json;

    #[test]
    fn picks_dotted_fields_and_misses_absent_ones() {
        let v = json!({
            "name": "q",
            "messages": 3,
            "list": [1, 2],
            "message_stats": {"publish": 5, "publish_details": {"rate": 1.5}},
        });
        let got = pick(
            &v,
            &[
                "messages",
                "message_stats.publish_details.rate",
                "message_stats",
                "nope",
                "list.0",
                "name",
            ],
        );
        assert_eq!(got[0], Some(json!(3)));
        assert_eq!(got[1], Some(json!(1.5)));
        assert_eq!(got[2], Some(v["message_stats"].clone()));
        assert_eq!(got[3], None);
        assert_eq!(got[4], None, "no paths into arrays, as dotted() on trees");
        assert_eq!(got[5], Some(json!("q")));
    }
}
