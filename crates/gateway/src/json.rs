//! JSON read strictly: a document in which one object repeats a key is refused.
//!
//! `serde_json` keeps the last of two equal keys without a word, so
//! `{"mchid":"ours","mchid":"theirs"}` reads as whichever came last, while another reader
//! (a log viewer, an auditor's tool, the gateway's own) may take the first. A signed or
//! encrypted document that says two things about one field is not evidence of either:
//! gateway documents are read with [`parse`], which builds the same [`Value`] but stops at
//! the first repeated key, at any depth.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use thiserror::Error;

use super::notice::echo;

/// Why a document was not read.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StrictJsonError {
    /// Not JSON at all (or text after the value).
    #[error("not JSON ({0})")]
    Syntax(String),
    /// One object holds this key twice.
    #[error("the key {0:?} appears twice in one object")]
    DuplicateKey(String),
}

/// Reads `text` as one JSON value, refusing any object that repeats a key.
pub fn parse(text: &[u8]) -> Result<Value, StrictJsonError> {
    let duplicate = RefCell::new(None);
    let mut reader = serde_json::Deserializer::from_slice(text);
    let read = Strict {
        duplicate: &duplicate,
    }
    .deserialize(&mut reader)
    .and_then(|value| reader.end().map(|()| value));
    match (read, duplicate.into_inner()) {
        (_, Some(key)) => Err(StrictJsonError::DuplicateKey(key)),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(StrictJsonError::Syntax(e.to_string())),
    }
}

/// One value; remembers the first repeated key (then fails the read).
#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
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

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown = echo(&key);
                let error = de::Error::custom(format_args!("duplicate key {shown:?}"));
                self.duplicate.borrow_mut().get_or_insert(shown);
                return Err(error);
            }
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        for (text, key) in [
            (r#"{"mchid":"1","mchid":"2"}"#, "mchid"),
            (r#"{"a":{"total":1,"total":2}}"#, "total"),
            (r#"{"a":[{"x":1},{"y":1,"y":1}]}"#, "y"),
            // Equal once unescaped: the same key.
            (r#"{"id":1,"\u0069d":2}"#, "id"),
        ] {
            assert_eq!(
                parse(text.as_bytes()),
                Err(StrictJsonError::DuplicateKey(key.into())),
                "{text}"
            );
        }
        let err = parse(br#"{"k\u001b[2J":1,"k\u001b[2J":2}"#).unwrap_err();
        assert!(!err.to_string().contains('\u{1b}'), "{err}");
    }

    #[test]
    fn a_document_without_repeats_reads_as_serde_json_reads_it() {
        let text =
            r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":{"d":[]},"e":18446744073709551615}"#;
        assert_eq!(
            parse(text.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        // The same key in two different objects is fine.
        assert_eq!(
            parse(br#"{"a":{"k":1},"b":{"k":2}}"#).unwrap(),
            json!({"a":{"k":1},"b":{"k":2}})
        );
        for bad in [&b"{"[..], b"{} x", b"", b"nope"] {
            assert!(matches!(parse(bad), Err(StrictJsonError::Syntax(_))));
        }
    }
}
