use serde::{Deserialize, Deserializer, Serialize, de};
use std::fmt;

/// A condition on a header or query parameter value.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatch {
    Exact(String),
    Regex(String),
    Present(bool),
}

impl<'de> Deserialize<'de> for ValueMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = ValueMatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a string (exact match), {exact: ...}, {regex: ...} or {present: true|false}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<ValueMatch, A::Error> {
                let key: String = map.next_key()?.ok_or_else(|| {
                    de::Error::custom("empty condition: use exact, regex or present")
                })?;
                let m = match key.as_str() {
                    "exact" => ValueMatch::Exact(map.next_value()?),
                    "regex" => ValueMatch::Regex(map.next_value()?),
                    "present" => ValueMatch::Present(map.next_value()?),
                    other => {
                        return Err(de::Error::unknown_field(
                            other,
                            &["exact", "regex", "present"],
                        ));
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a condition takes exactly one of exact, regex, present; found also `{extra}`"
                    )));
                }
                Ok(m)
            }
        }
        d.deserialize_any(V)
    }
}
