//! Borrowed views of JSON objects: fields as raw JSON text slices of the record, parsed only
//! when a column asks for them. The hot path never builds a `serde_json::Value` tree.
//!
//! - `FieldSlots`: the top-level fields a pipeline reads, each with a slot; a record's object is
//!   parsed once, straight into its slots (what every record goes through).
//! - `Doc`: every field of an object, in order (DMS envelopes, paths into nested objects).

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The fields of one JSON object, in document order.
#[derive(Debug, Default)]
pub struct Doc<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// An object key, borrowed from the record unless it holds escapes (serde's own `Cow<str>`
/// always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Doc<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Doc<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Doc<'a>, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(Doc { fields })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Why `text` is not a JSON object, given the error parsing it as one.
fn not_an_object(text: &str, error: serde_json::Error) -> String {
    if text.trim_start().starts_with('{') {
        return format!("payload is not json: {error}");
    }
    match serde_json::from_str::<&RawValue>(text) {
        Ok(_) => "payload is not a json object".into(),
        Err(e) => format!("payload is not json: {e}"),
    }
}

/// One raw value per wanted field, by slot; `None` where the object has no such field.
pub type Slots<'a> = Vec<Option<&'a RawValue>>;

/// The top-level fields a pipeline reads, each given a slot when the pipeline is built.
#[derive(Debug, Default)]
pub struct FieldSlots {
    /// (name, slot) by the name's length: most of a record's keys are rejected by their length
    /// alone, the others by comparing a few bytes (cheaper than hashing every key).
    by_len: Vec<Vec<(Box<str>, usize)>>,
    len: usize,
}

impl FieldSlots {
    /// The slot of a field, added if new.
    pub fn slot(&mut self, name: &str) -> usize {
        if let Some(slot) = self.find(name) {
            return slot;
        }
        if self.by_len.len() <= name.len() {
            self.by_len.resize_with(name.len() + 1, Vec::new);
        }
        self.by_len[name.len()].push((name.into(), self.len));
        self.len += 1;
        self.len - 1
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.by_len.get(name.len())?.iter().find(|(n, _)| **n == *name).map(|&(_, slot)| slot)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Parses `text` as a JSON object in one pass, each wanted field's raw value into its slot
    /// (the first one where a name repeats); the others are checked and skipped. `Err` says
    /// why the text is not an object.
    pub fn parse<'a>(&self, text: &'a str) -> Result<Slots<'a>, String> {
        struct Fill<'s, 'a> {
            wanted: &'s FieldSlots,
            slots: &'s mut Slots<'a>,
        }
        impl<'de: 'a, 'a> Visitor<'de> for Fill<'_, 'a> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match self.wanted.find(&key) {
                        Some(i) => {
                            let value: &'de RawValue = map.next_value()?;
                            self.slots[i].get_or_insert(value);
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(())
            }
        }
        let mut slots = vec![None; self.len];
        let mut de = serde_json::Deserializer::from_str(text);
        de.deserialize_map(Fill { wanted: self, slots: &mut slots })
            .and_then(|()| de.end())
            .map_err(|e| not_an_object(text, e))?;
        Ok(slots)
    }
}

impl<'a> Doc<'a> {
    /// Parses an object; `Err` says why the text is not one.
    pub fn parse(text: &'a str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| not_an_object(text, e))
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// Follows a path of field names into nested objects.
#[inline]
pub fn walk<'a>(mut at: &'a RawValue, path: &[String]) -> Option<&'a RawValue> {
    for segment in path {
        let inner: Doc<'a> = serde_json::from_str(at.get()).ok()?;
        at = inner.get(segment)?;
    }
    Some(at)
}

/// A raw JSON value's text as a string (no copy unless it holds escapes).
#[inline]
pub fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(t).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The lookup-key text of a raw value: a string's contents, or a number / boolean as written.
#[inline]
pub fn raw_key(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    match t.as_bytes().first()? {
        b'"' => raw_str(raw),
        b'{' | b'[' | b'n' => None,
        _ => Some(Cow::Borrowed(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_without_building_a_tree() {
        let text = r#"{"a": "x\"y", "b": 12, "c": {"d": [1], "e": "deep"}, "f": null, "g": "1.5"}"#;
        let doc = Doc::parse(text).unwrap();
        assert_eq!(raw_str(doc.get("a").unwrap()).unwrap(), "x\"y");
        assert_eq!(doc.get("b").unwrap().get(), "12");
        assert_eq!(raw_str(walk(doc.get("c").unwrap(), &["e".into()]).unwrap()).unwrap(), "deep");
        assert_eq!(doc.get("f").unwrap().get(), "null");
        assert!(doc.get("missing").is_none());
        assert_eq!(raw_key(doc.get("b").unwrap()).unwrap(), "12");
        assert!(Doc::parse("[1]").unwrap_err().starts_with("payload is not a json object"));
        assert!(Doc::parse("{\"a\":").unwrap_err().starts_with("payload is not json"));
    }

    #[test]
    fn slots_take_the_wanted_fields_in_one_pass() {
        let mut wanted = FieldSlots::default();
        let (b, a, z) = (wanted.slot("b"), wanted.slot("a"), wanted.slot("z"));
        assert_eq!(wanted.slot("a"), a, "a field has one slot");
        let slots = wanted
            .parse(r#"{"a": "x\"y", "skip": {"deep": [1, {"n": null}]}, "\u007a": 12, "b": 12, "a": 2}"#)
            .unwrap();
        assert_eq!(slots[a].unwrap().get(), r#""x\"y""#, "the first of a repeated name");
        assert_eq!(slots[b].unwrap().get(), "12");
        assert_eq!(slots[z].unwrap().get(), "12", "an escaped key is still its name");
        assert!(FieldSlots::default().parse("{}").unwrap().is_empty());
        for (bad, why) in [
            ("[1]", "payload is not a json object"),
            ("\"text\"", "payload is not a json object"),
            ("{\"a\":", "payload is not json"),
            ("{\"skip\": [1,], \"a\": 1}", "payload is not json"),
            ("{\"a\": 1} trailing", "payload is not json"),
            ("nope", "payload is not json"),
        ] {
            assert!(wanted.parse(bad).unwrap_err().starts_with(why), "{bad}: {:?}", wanted.parse(bad));
        }
    }
}
