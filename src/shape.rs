//! Documents must have the shape their format says: objects (JSON) and
//! tables (TOML) are read only from objects and tables.
//!
//! serde's derived `Deserialize` also reads a struct from a sequence of its
//! field values, so `["r1", "2026-…", "u1", null, "m"]` would decode as a
//! request, and `"fable-5" = [["order-2026-11"]]` as a model entry. The
//! schemas and the docs say objects and tables, and a positional form would
//! slip past every tool that reads fields by name (the dead-letter salvage
//! path, for one). [`MapOnly`] accepts a map and nothing else. No I/O.

use serde::Deserialize;

/// A `T` that must be written as a map: a JSON object when `TOML` is false,
/// a TOML table when it is true (the flag only picks the error message).
/// Derefs to `T`, so fields read through it unchanged.
#[derive(Debug)]
pub(crate) struct MapOnly<T, const TOML: bool>(pub T);

/// A `T` that must be a JSON object.
pub(crate) type ObjectOnly<T> = MapOnly<T, false>;

/// A `T` that must be a TOML table.
pub(crate) type TableOnly<T> = MapOnly<T, true>;

impl<T, const TOML: bool> std::ops::Deref for MapOnly<T, TOML> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>, const TOML: bool> Deserialize<'de> for MapOnly<T, TOML> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const TOML: bool>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const TOML: bool> serde::de::Visitor<'de> for V<T, TOML> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(if TOML { "a table" } else { "a JSON object" })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V::<T, TOML>(std::marker::PhantomData))
            .map(MapOnly)
    }
}

/// `deserialize_with` for an optional nested JSON object.
pub(crate) fn opt_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<ObjectOnly<T>>::deserialize(d)?.map(|o| o.0))
}

/// `deserialize_with` for a list of nested JSON objects.
pub(crate) fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Vec::<ObjectOnly<T>>::deserialize(d)?
        .into_iter()
        .map(|o| o.0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct P {
        a: u8,
        b: String,
    }

    #[test]
    fn maps_are_read_and_sequences_refused() {
        let ok: ObjectOnly<P> = serde_json::from_str(r#"{"a": 1, "b": "x"}"#).unwrap();
        assert_eq!(
            ok.0,
            P {
                a: 1,
                b: "x".into()
            }
        );
        // The derived impl alone takes the positional form...
        assert!(serde_json::from_str::<P>(r#"[1, "x"]"#).is_ok());
        // ...the wrapper does not.
        let e = serde_json::from_str::<ObjectOnly<P>>(r#"[1, "x"]"#).unwrap_err();
        assert!(e.to_string().contains("expected a JSON object"), "{e}");

        #[derive(Debug, Deserialize)]
        struct Doc {
            p: TableOnly<P>,
        }
        let ok: Doc = toml::from_str("[p]\na = 1\nb = \"x\"\n").unwrap();
        assert_eq!(ok.p.b, "x");
        let e = toml::from_str::<Doc>("p = [1, \"x\"]\n").unwrap_err();
        assert!(e.to_string().contains("expected a table"), "{e}");
    }
}
