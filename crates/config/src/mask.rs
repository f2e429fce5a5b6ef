use serde::Serialize;
use serde_json::Value;

const SECRET_MARKERS: [&str; 7] = [
    "token",
    "password",
    "secret",
    "authorization",
    "api_key",
    "api-key",
    "cookie",
];

/// Serializes a config to JSON with values under secret-looking keys replaced by `"***"`.
pub fn masked_json<T: Serialize>(value: &T) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or(Value::Null);
    mask(&mut v);
    v
}

fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                if SECRET_MARKERS.iter().any(|m| key.contains(m)) && !child.is_null() {
                    *child = Value::String("***".into());
                } else {
                    mask(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_secret_keys_at_any_depth() {
        let v = serde_json::json!({"a": {"set": {"Authorization": "Bearer x", "x-ok": "1"}}, "list": [{"api_key": "k"}]});
        let m = masked_json(&v);
        assert_eq!(m["a"]["set"]["Authorization"], "***");
        assert_eq!(m["a"]["set"]["x-ok"], "1");
        assert_eq!(m["list"][0]["api_key"], "***");
    }
}
